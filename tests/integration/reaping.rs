//! Reaping: each handler through its own pidfd; SIGCHLD's scan for a handler started without
//! one and for the orphans rinetd adopts as a subreaper.

use std::io::Write;
use std::net::Shutdown;

use crate::harness::{
    Daemon, Service, TestDir, leave_free_descriptors, open_descriptors, process_status,
    read_to_eof, restore_nofile, wait_until, wrapped, zombie_children,
};

/// How many pidfds `pid` holds.
fn pidfds(pid: i32) -> usize {
    open_descriptors(pid)
        .into_iter()
        .filter_map(|fd| std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok())
        .filter(|target| target.to_string_lossy() == "anon_inode:[pidfd]")
        .count()
}

#[test]
fn a_handler_gets_a_pidfd_that_is_closed_when_it_is_reaped() {
    let dir = TestDir::new("pidfd");
    let echo = dir.script("echo.sh", "read line\necho \"$line\"");
    let daemon = Daemon::start(&dir, &[Service::new("echo", &echo)]);
    let mut client = daemon.connect("echo");
    let accepted = daemon.accepted("echo", &client);
    assert_eq!(pidfds(daemon.pid()), 1);
    client.write_all(b"hi\n").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_eof(&mut client), "hi\n");
    daemon.exited("echo", &accepted);
    // Closed just after the line is written.
    wait_until("the pidfd is closed", || pidfds(daemon.pid()) == 0);
    assert!(zombie_children(daemon.pid()).is_empty());
}

/// With no descriptor free for its pidfd, a handler still runs, and its exit is found by
/// SIGCHLD's scan: else it would stay a zombie and hold its place in max_children for ever.
#[test]
fn a_handler_started_without_a_pidfd_is_reaped_by_the_sigchld_scan() {
    let dir = TestDir::new("no-pidfd");
    let echo = dir.script("echo.sh", "read line\necho \"$line\"");
    let daemon = Daemon::start(
        &dir,
        &[Service::new("echo", &echo).set("max_children", "1")],
    );
    // One free, for the accepted socket (the handler's output pipe is made ahead, before the
    // connection arrives): none for the pidfd.
    let old = leave_free_descriptors(daemon.pid(), 1);
    let mut client = daemon.connect("echo");
    let accepted = daemon.accepted("echo", &client);
    restore_nofile(daemon.pid(), old);
    assert_eq!(pidfds(daemon.pid()), 0, "the handler got a pidfd after all");
    client.write_all(b"first\n").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_eof(&mut client), "first\n");
    daemon.exited("echo", &accepted);
    // Its place in max_children came back, and the next handler has a pidfd again.
    let mut next = daemon.connect("echo");
    let second = daemon.accepted("echo", &next);
    assert_eq!(pidfds(daemon.pid()), 1);
    next.write_all(b"second\n").unwrap();
    next.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_eof(&mut next), "second\n");
    daemon.exited("echo", &second);
    assert!(zombie_children(daemon.pid()).is_empty());
}

/// A subreaper (as init of a container is) adopts what its handlers leave running: those
/// orphans have no pidfd of rinetd's, and only SIGCHLD's scan reaps them.
#[test]
fn orphans_a_subreaper_rinetd_adopts_are_reaped() {
    let dir = TestDir::new("subreaper");
    let leaves = dir.script(
        "leaves.sh",
        "sleep 0.2 </dev/null >/dev/null 2>&1 &\necho $!",
    );
    let config = dir.services_config(&[Service::new("leaves", &leaves)]);
    // PR_SET_CHILD_SUBREAPER (36) is kept across execve.
    let subreaper = "import ctypes, os, sys\n\
                     assert ctypes.CDLL(None).prctl(36, 1, 0, 0, 0) == 0\n\
                     os.execv(sys.argv[1], sys.argv[1:])";
    let daemon = Daemon::spawn(wrapped(&["python3", "-c", subreaper], &config));
    let rinetd = daemon.pid();
    for _ in 0..3 {
        let orphan: i32 = daemon
            .request("leaves", "")
            .trim()
            .parse()
            .expect("the orphan's pid");
        // Sleeping as rinetd's child, then reaped; an unreaped one stays a zombie child.
        wait_until("the orphan is reaped", || {
            process_status(orphan).is_none_or(|(parent, _)| parent != rinetd)
        });
    }
    assert!(zombie_children(rinetd).is_empty());
}

/// Children rinetd inherits across the exec that started it (a shell's background job before
/// `exec rinetd`) are its to reap as well.
#[test]
fn a_child_inherited_across_exec_is_reaped() {
    let dir = TestDir::new("inherited-child");
    let config = dir.services_config(&[Service::new("hello", &dir.script("hello.sh", "echo hi"))]);
    let daemon = Daemon::spawn(wrapped(
        &[
            "sh",
            "-c",
            "sleep 1000 </dev/null >/dev/null 2>&1 & exec \"$0\" \"$@\"",
        ],
        &config,
    ));
    let rinetd = daemon.pid();
    let inherited: i32 = std::fs::read_to_string(format!("/proc/{rinetd}/task/{rinetd}/children"))
        .expect("rinetd's children")
        .split_whitespace()
        .next()
        .map(|pid| pid.parse().expect("a pid"))
        .expect("the inherited sleep");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(inherited),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the inherited sleep");
    assert_eq!(daemon.request("hello", ""), "hi\n");
    wait_until("the inherited child is reaped", || {
        process_status(inherited).is_none_or(|(parent, _)| parent != rinetd)
    });
}

/// nix's waitpid/waitid reap first and then fail on a signal they cannot name: a handler
/// killed by a real-time signal was reaped but never recorded, so its place in max_children
/// was never given back (and its pid stayed on the list of those rinetd may signal).
#[test]
fn a_handler_killed_by_a_real_time_signal_is_reaped_and_gives_its_place_back() {
    let dir = TestDir::new("rt-signal");
    let dies = dir.script("dies.sh", "echo bye\nkill -35 $$");
    let daemon = Daemon::start(
        &dir,
        &[Service::new("dies", &dies).set("max_children", "1")],
    );
    for _ in 0..2 {
        assert_eq!(daemon.request("dies", ""), "bye\n");
    }
    daemon.assert_line_count("dies/tcp: exited pid=", 2);
    for line in daemon
        .lines()
        .iter()
        .filter(|l| l.contains("dies/tcp: exited"))
    {
        assert!(line.contains(" status=signal:35 "), "{line}");
    }
    assert_eq!(daemon.count_lines("waitpid failed"), 0);
}

/// A handler can make rinetd the parent of its own child (clone with CLONE_PARENT). No pidfd
/// reports that child: SIGCHLD's scan, at most a second later, must reap it.
#[test]
fn a_child_a_handler_gives_rinetd_with_clone_parent_is_reaped() {
    let dir = TestDir::new("clone-parent");
    let gives = dir.write(
        "gives.py",
        "#!/usr/bin/python3\n\
         import ctypes, os\n\
         number = {'x86_64': 56, 'aarch64': 220}[os.uname().machine]\n\
         CLONE_PARENT, SIGCHLD = 0x8000, 17\n\
         pid = ctypes.CDLL(None, use_errno=True).syscall(number, CLONE_PARENT | SIGCHLD, 0, 0, 0, 0)\n\
         if pid == 0:\n\
         \x20   os._exit(0)\n\
         print(pid, flush=True)\n",
        0o755,
    );
    let daemon = Daemon::start(&dir, &[Service::new("gives", &gives)]);
    let rinetd = daemon.pid();
    let given: i32 = daemon
        .request("gives", "")
        .trim()
        .parse()
        .expect("the child's pid");
    wait_until("the child given to rinetd is reaped", || {
        process_status(given).is_none_or(|(parent, _)| parent != rinetd)
    });
}

/// Descriptors of rinetd's numbered `from` or above.
fn descriptors_from(pid: i32, from: i32) -> usize {
    open_descriptors(pid)
        .into_iter()
        .filter(|fd| *fd >= from)
        .count()
}

/// With many handlers running, each new one's output pipe and pidfd are moved above the
/// descriptors handlers are started with, so that a start copies few of rinetd's descriptors
/// however many handlers run. Moved, they still carry the handler's stderr and its exit.
#[test]
fn with_many_handlers_running_their_descriptors_are_moved_up_and_still_work() {
    let dir = TestDir::new("moved-up");
    let hold = dir.script("hold.sh", "echo started >&2\nread line\necho \"$line\"");
    let daemon = Daemon::start(&dir, &[Service::new("hold", &hold)]);
    let rinetd = daemon.pid();
    let limits = std::fs::read_to_string(format!("/proc/{rinetd}/limits")).expect("limits");
    let soft: u64 = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3)?.parse().ok())
        .unwrap_or(0);
    if soft <= 4096 {
        eprintln!("skipped: rinetd may open {soft} descriptors, none of them from 4096 up");
        return;
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut version = release.split('.').map(|n| n.parse::<u32>().unwrap_or(0));
    if (version.next().unwrap_or(0), version.next().unwrap_or(0)) < (6, 11) {
        eprintln!("skipped: Linux {release} is older than 6.11, where rinetd shares no table");
        return;
    }
    // The first 32 start with few handlers running; the next 8 find 32 or more.
    let mut clients: Vec<_> = (0..40).map(|_| daemon.connect("hold")).collect();
    daemon.assert_line_count("hold/tcp: stderr pid=", 40);
    assert_eq!(
        descriptors_from(rinetd, 4096),
        2 * 8,
        "output pipes and pidfds moved up"
    );
    for client in &mut clients {
        client.write_all(b"bye\n").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_to_eof(client), "bye\n");
    }
    daemon.assert_line_count("hold/tcp: exited pid=", 40);
    wait_until("the moved descriptors are closed", || {
        descriptors_from(rinetd, 4096) == 0
    });
    assert!(zombie_children(rinetd).is_empty());
}
