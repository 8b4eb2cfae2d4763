//! Running out of descriptors or processes slows rinetd down but loses nothing it has not
//! accepted, and it recovers by itself; a non-root rinetd serves handlers as its own user.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use crate::harness::{
    Daemon, PidsCgroup, Service, TestDir, is_root, read_line, wait_until, wrapped,
};

/// A handler that holds its client until the client sends a line.
fn holding_service(dir: &TestDir) -> Service {
    let script = dir.script("hold.sh", "read line\necho \"done $line\"");
    Service::new("hold", &script)
}

#[test]
fn out_of_descriptors_the_waiting_clients_stay_in_the_backlog_and_are_all_served() {
    let dir = TestDir::new("emfile");
    let config = dir.services_config(&[holding_service(&dir)]);
    // Room for a few handlers only: each running one holds its output pipe in the daemon.
    let daemon = Daemon::spawn(wrapped(&["prlimit", "--nofile=24:24"], &config));
    let mut clients: Vec<_> = (0..30).map(|_| daemon.connect("hold")).collect();
    daemon.wait_for_line("hold/tcp: accept failed error=\"Too many open files\"");
    for (n, client) in clients.iter_mut().enumerate() {
        writeln!(client, "client{n}").unwrap();
    }
    for (n, client) in clients.iter_mut().enumerate() {
        assert_eq!(read_line(client), format!("done client{n}"), "client {n}");
    }
    assert!(
        !daemon
            .lines()
            .iter()
            .any(|l| l.contains("refused") || l.contains("fork failed")),
        "{:#?}",
        daemon.lines()
    );
}

#[test]
fn when_fork_fails_the_daemon_backs_off_and_serves_again() {
    // Root only: creating a cgroup needs it (and a pids controller mounted at the v1 place).
    let cgroup = match is_root().then(|| PidsCgroup::new("fork", 3)).flatten() {
        Some(cgroup) => cgroup,
        None => {
            eprintln!("skipped: needs root and the cgroup v1 pids controller to make fork fail");
            return;
        }
    };
    let dir = TestDir::new("fork-fails");
    let daemon = Daemon::start(&dir, &[holding_service(&dir)]);
    cgroup.add(daemon.pid());
    // The daemon and two handlers fill the cgroup; the third fork fails.
    let mut first = daemon.connect("hold");
    let mut second = daemon.connect("hold");
    daemon.accepted("hold", &first);
    daemon.accepted("hold", &second);
    let mut third = daemon.connect("hold");
    writeln!(third, "z").unwrap();
    let failed = daemon.wait_for_line("hold/tcp: fork failed error=");
    for client in [&mut first, &mut second] {
        writeln!(client, "x").unwrap();
        assert_eq!(read_line(client), "done x");
    }
    // The connection fork failed for was kept, not closed: it is served once fork works again.
    assert_eq!(read_line(&mut third), "done z");
    daemon.wait_for_line_after(&failed, "hold/tcp: spawn recovered failures=");
    let mut later = daemon.connect("hold");
    writeln!(later, "y").unwrap();
    assert_eq!(
        read_line(&mut later),
        "done y",
        "served again after the backoff"
    );
}

#[test]
fn fork_failure_accepts_and_closes_a_connection_per_backoff() {
    // While fork keeps failing, the clients stay in the backlog: none is accepted only to be
    // closed, and each is served once fork works again.
    let cgroup = match is_root()
        .then(|| PidsCgroup::new("fork-backlog", 2))
        .flatten()
    {
        Some(cgroup) => cgroup,
        None => {
            eprintln!("skipped: needs root and the cgroup v1 pids controller to make fork fail");
            return;
        }
    };
    let dir = TestDir::new("fork-fails-backlog");
    let daemon = Daemon::start(&dir, &[holding_service(&dir)]);
    cgroup.add(daemon.pid());
    // The daemon and one handler fill the cgroup.
    let mut first = daemon.connect("hold");
    daemon.accepted("hold", &first);
    let mut waiting: Vec<_> = (0..5).map(|_| daemon.connect("hold")).collect();
    for (n, client) in waiting.iter_mut().enumerate() {
        writeln!(client, "w{n}").unwrap();
    }
    let mut seen = daemon.wait_for_line("hold/tcp: fork failed error=");
    // Let the back-off come round twice more while fork still fails.
    wait_until("two more spawn attempts have failed", || {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(daemon.pid()),
            nix::sys::signal::Signal::SIGUSR1,
        )
        .unwrap();
        seen = daemon.wait_for_line_after(&seen, "hold/tcp: status ");
        seen.field("spawn_failures").parse::<u64>().unwrap() >= 3
    });
    writeln!(first, "x").unwrap();
    assert_eq!(read_line(&mut first), "done x");
    for (n, client) in waiting.iter_mut().enumerate() {
        assert_eq!(read_line(client), format!("done w{n}"), "client {n}");
    }
}

#[test]
fn an_exec_that_fails_for_lack_of_processes_keeps_its_client_for_the_end_of_the_backoff() {
    // RLIMIT_NPROC for the handler's user is checked at execve: the child could not exec with
    // EAGAIN, and its client used to be closed unserved. Now it waits like a fork failure's.
    if !is_root() {
        eprintln!("skipped: needs root to run handlers as another user");
        return;
    }
    let dir = TestDir::new("exec-eagain");
    // A uid with no passwd entry and no process: RLIMIT_NPROC counts this test's handlers only.
    let service = holding_service(&dir)
        .set("user", "\"64998\"")
        .set("rlimits", "{nproc: 1}");
    let daemon = Daemon::start(&dir, &[service]);
    let mut first = daemon.connect("hold");
    daemon.accepted("hold", &first);
    // The kernel lets one more through (the count it checks at setuid leaves the new process
    // out), so two clients wait behind the first: at least one meets the limit.
    let mut waiting: Vec<_> = (0..3).map(|_| daemon.connect("hold")).collect();
    let failed = daemon.wait_for_line("hold/tcp: fork failed error=");
    assert!(
        failed.text.contains("Resource temporarily unavailable"),
        "{}",
        failed.text
    );
    for (n, client) in waiting.iter_mut().enumerate() {
        writeln!(client, "w{n}").unwrap();
    }
    writeln!(first, "x").unwrap();
    assert_eq!(read_line(&mut first), "done x");
    for (n, client) in waiting.iter_mut().enumerate() {
        assert_eq!(read_line(client), format!("done w{n}"), "client {n}");
    }
    daemon.wait_for_line_after(&failed, "hold/tcp: spawn recovered failures=");
    assert!(
        !daemon.lines().iter().any(|l| l.contains("spawn failed")),
        "{:#?}",
        daemon.lines()
    );
}

#[test]
fn a_non_root_daemon_runs_handlers_that_name_its_own_user() {
    if !is_root() {
        eprintln!("skipped: needs root to start rinetd as nobody");
        return;
    }
    let dir = TestDir::new("own-user");
    let script = dir.script("id.sh", "id -u; id -g");
    let config = dir.services_config(&[Service::new("id", &script)
        .set("user", "nobody")
        .set("group", "nogroup")]);
    let as_nobody = [
        "setpriv",
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
    ];
    let daemon = Daemon::spawn(wrapped(&as_nobody, &config));
    assert_eq!(daemon.request("id", ""), "65534\n65534\n");
}

#[test]
fn with_proxy_protocol_descriptor_exhaustion_drops_connections() {
    let dir = TestDir::new("emfile-proxy");
    let config = dir.services_config(&[holding_service(&dir).set("proxy_protocol", "true")]);
    let daemon = Daemon::spawn(wrapped(&["prlimit", "--nofile=64:64"], &config));
    let mut clients: Vec<_> = (0..120).map(|_| daemon.connect("hold")).collect();
    for (n, client) in clients.iter_mut().enumerate() {
        write!(
            client,
            "PROXY TCP4 192.0.2.1 192.0.2.2 {} 80\r\nclient{n}\n",
            1000 + n
        )
        .unwrap();
    }
    for (n, client) in clients.iter_mut().enumerate() {
        let mut answer = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(client), &mut answer).unwrap();
        assert_eq!(answer, format!("done client{n}\n"), "client {n}");
    }
}

#[test]
fn a_proxy_connection_held_across_a_fork_backoff_is_not_replaced_by_the_next_one() {
    // Two PROXY clients whose headers complete while fork fails: both are held for the end of
    // the back-off, neither is closed.
    let cgroup = match is_root()
        .then(|| PidsCgroup::new("fork-proxy-held", 2))
        .flatten()
    {
        Some(cgroup) => cgroup,
        None => {
            eprintln!("skipped: needs root and the cgroup v1 pids controller to make fork fail");
            return;
        }
    };
    let dir = TestDir::new("fork-fails-proxy");
    let daemon = Daemon::start(&dir, &[holding_service(&dir).set("proxy_protocol", "true")]);
    cgroup.add(daemon.pid());
    // The daemon and one handler fill the cgroup.
    let mut first = daemon.connect("hold");
    write!(first, "PROXY TCP4 192.0.2.1 192.0.2.2 1000 80\r\n").unwrap();
    daemon.wait_for_line("hold/tcp: accepted client=192.0.2.1:1000 pid=");
    // Both headers come in one turn of the loop: the first one's fork fails, and the second
    // comes in during the back-off.
    let mut second = daemon.connect("hold");
    let mut third = daemon.connect("hold");
    write!(second, "PROXY TCP4 192.0.2.1 192.0.2.2 1001 80\r\nb\n").unwrap();
    write!(third, "PROXY TCP4 192.0.2.1 192.0.2.2 1002 80\r\nc\n").unwrap();
    daemon.wait_for_line("hold/tcp: fork failed error=");
    writeln!(first, "a").unwrap();
    assert_eq!(read_line(&mut first), "done a");
    assert_eq!(read_line(&mut second), "done b", "{:#?}", daemon.lines());
    assert_eq!(read_line(&mut third), "done c", "{:#?}", daemon.lines());
}

#[test]
fn a_connection_held_across_a_fork_backoff_is_not_left_hanging_by_a_reload_to_wait_mode() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    use std::io::Read;
    use std::time::Duration;
    let cgroup = match is_root()
        .then(|| PidsCgroup::new("fork-held-reload", 2))
        .flatten()
    {
        Some(cgroup) => cgroup,
        None => {
            eprintln!("skipped: needs root and the cgroup v1 pids controller to make fork fail");
            return;
        }
    };
    let dir = TestDir::new("fork-held-reload");
    let daemon = Daemon::start(&dir, &[holding_service(&dir)]);
    cgroup.add(daemon.pid());
    let mut first = daemon.connect("hold");
    daemon.accepted("hold", &first);
    let mut held = daemon.connect("hold");
    writeln!(held, "h").unwrap();
    let failed = daemon.wait_for_line("hold/tcp: fork failed error=");
    // Within the back-off: the service becomes `wait: true` on the same (kept) socket.
    dir.services_config(&[holding_service(&dir).set("wait", "true")]);
    kill(Pid::from_raw(daemon.pid()), Signal::SIGHUP).unwrap();
    daemon.wait_for_line_after(&failed, "reloaded ");
    writeln!(first, "x").unwrap();
    assert_eq!(read_line(&mut first), "done x");
    // The held connection is answered or closed; it is not left open with nobody on it.
    held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    match held.read(&mut buf) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!(
            "the held connection was left hanging: {e}\n{:#?}",
            daemon.lines()
        ),
    }
}

#[test]
fn a_fork_backoff_does_not_cut_a_rate_limit_pause_short() {
    let cgroup = match is_root().then(|| PidsCgroup::new("fork-rate", 2)).flatten() {
        Some(cgroup) => cgroup,
        None => {
            eprintln!("skipped: needs root and the cgroup v1 pids controller to make fork fail");
            return;
        }
    };
    let dir = TestDir::new("fork-rate");
    let service = holding_service(&dir).set("rate_limit", "{max: 2, per: 60s, pause: 30s}");
    let daemon = Daemon::start(&dir, &[service]);
    cgroup.add(daemon.pid());
    let mut first = daemon.connect("hold");
    daemon.accepted("hold", &first);
    // The second accept fills the rate window (a 30 s pause) and its fork fails (a 1 s back-off).
    let mut second = daemon.connect("hold");
    writeln!(second, "b").unwrap();
    daemon.wait_for_line("hold/tcp: paused reason=rate_limit");
    daemon.wait_for_line("hold/tcp: fork failed error=");
    writeln!(first, "a").unwrap();
    assert_eq!(read_line(&mut first), "done a");
    assert_eq!(read_line(&mut second), "done b");
    // The back-off is over (b was served), the 30 s rate-limit pause is not.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.pid()),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .unwrap();
    let status = daemon.wait_for_line("hold/tcp: status ");
    let left: f64 = status
        .field("for")
        .trim_end_matches('s')
        .parse()
        .unwrap_or_else(|_| panic!("not paused: {}", status.text));
    assert!(left > 10.0, "the pause was cut short: {}", status.text);
}

#[test]
fn a_datagram_that_cannot_be_handed_to_its_handler_does_not_strand_the_ones_behind_it() {
    // Non-root only, with small pipes: a user over fs.pipe-user-pages-soft gets pipes of 2 pages,
    // so a 20,000-byte datagram does not fit its handler's stdin pipe and is dropped. The
    // datagram queued behind it must still be served, without a new one arriving to wake the
    // service.
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    use std::time::Duration;
    if !is_root() {
        eprintln!("skipped: needs root to run rinetd and a pipe hog as nobody");
        return;
    }
    let dir = TestDir::new("udp-small-pipes");
    let hog_script = dir.write(
        "hog.py",
        "import os, resource, sys, time\n\
         resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))\n\
         pipes = [os.pipe() for _ in range(1100)]\n\
         print('ready', flush=True)\n\
         time.sleep(60)\n",
        0o644,
    );
    let mut hog = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "/usr/bin/python3",
        ])
        .arg(&hog_script)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the pipe hog");
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(hog.stdout.as_mut().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready, "ready\n");
    let service = Service::new("cat", Path::new("/bin/cat"))
        .set("protocol", "udp")
        .set("wait", "false");
    let config = dir.services_config(&[service]);
    let as_nobody = [
        "setpriv",
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
    ];
    let daemon = Daemon::spawn(wrapped(&as_nobody, &config));
    let target = daemon.udp_address("cat");
    let client = crate::harness::udp_client();
    client
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    // Both datagrams are queued before rinetd looks at either.
    let pid = Pid::from_raw(daemon.pid());
    kill(pid, Signal::SIGSTOP).unwrap();
    client.send_to(&vec![b'x'; 20_000], target).unwrap();
    client.send_to(b"small", target).unwrap();
    kill(pid, Signal::SIGCONT).unwrap();
    daemon.wait_for_line("cat/udp: datagram dropped error=");
    let mut buf = vec![0u8; 65_536];
    let got = client.recv_from(&mut buf);
    let _ = hog.kill();
    let _ = hog.wait();
    let (len, _) = got.unwrap_or_else(|e| {
        panic!(
            "the datagram behind the dropped one was not served: {e}\n{}",
            daemon.lines().join("\n")
        )
    });
    assert_eq!(&buf[..len], b"small");
}
