//! Many connections and badly behaved handlers leave no zombie and no leaked descriptor.

use std::io::Write;
use std::thread;

use crate::harness::{
    Daemon, Service, TestDir, is_not_running, open_fd_count, read_line, wait_until, zombie_children,
};

/// Runs `clients` threads that each call `connection` `per_client` times; returns every result.
fn run_clients<T: Send>(
    clients: usize,
    per_client: usize,
    connection: impl Fn() -> T + Sync,
) -> Vec<T> {
    thread::scope(|scope| {
        let threads: Vec<_> = (0..clients)
            .map(|_| scope.spawn(|| (0..per_client).map(|_| connection()).collect::<Vec<T>>()))
            .collect();
        threads
            .into_iter()
            .flat_map(|thread| thread.join().expect("client thread"))
            .collect()
    })
}

/// Waits until `count` handlers of `service` have been logged as exited, then until the daemon
/// has no zombie child and holds exactly `baseline_fds` descriptors.
fn assert_all_reaped_and_no_fd_leaked(
    daemon: &Daemon,
    service: &str,
    count: usize,
    baseline_fds: usize,
) {
    let exited = format!("{service}/tcp: exited pid=");
    wait_until(&format!("{count} exits of {service} are logged"), || {
        daemon
            .lines()
            .iter()
            .filter(|line| line.contains(&exited))
            .count()
            == count
    });
    let pid = daemon.pid();
    wait_until("rinetd has no zombie child", || {
        zombie_children(pid).is_empty()
    });
    wait_until("rinetd holds as many descriptors as after start-up", || {
        open_fd_count(pid) == baseline_fds
    });
}

#[test]
fn two_thousand_connections_leave_no_zombie_and_no_leaked_descriptor() {
    let dir = TestDir::new("many-connections");
    let script = dir.script("hello.sh", "echo hello");
    let daemon = Daemon::start(&dir, &[Service::new("hello", &script)]);
    let baseline_fds = open_fd_count(daemon.pid());

    run_clients(8, 250, || {
        assert_eq!(daemon.request("hello", ""), "hello\n")
    });

    assert_all_reaped_and_no_fd_leaked(&daemon, "hello", 2000, baseline_fds);
}

#[test]
fn a_handler_that_exits_without_reading_leaks_nothing() {
    let dir = TestDir::new("exit-at-once");
    let script = dir.script("quit.sh", "exit 3");
    let daemon = Daemon::start(&dir, &[Service::new("quit", &script)]);
    let baseline_fds = open_fd_count(daemon.pid());

    run_clients(4, 50, || {
        let mut client = daemon.connect("quit");
        // The handler may be gone already: a reset is as good as an answer here.
        let _ = client.write_all(&[b'x'; 4096]);
    });

    assert_all_reaped_and_no_fd_leaked(&daemon, "quit", 200, baseline_fds);
    assert!(
        daemon
            .lines()
            .iter()
            .filter(|line| line.contains("quit/tcp: exited pid="))
            .all(|line| line.contains("status=3")),
        "every exit is logged with its status"
    );
}

#[test]
fn a_handler_whose_grandchild_keeps_the_connection_leaks_nothing() {
    let dir = TestDir::new("grandchild");
    // The grandchild outlives the handler, holding fds 0, 1 and 2; it reports its pid.
    let script = dir.script("fork.sh", "sleep 1 &\necho $!");
    let daemon = Daemon::start(&dir, &[Service::new("fork", &script)]);
    let baseline_fds = open_fd_count(daemon.pid());

    let grandchildren = run_clients(4, 25, || {
        let mut client = daemon.connect("fork");
        read_line(&mut client)
            .parse::<i32>()
            .expect("the grandchild's pid")
    });

    // Whoever inherits the orphans (rinetd too, if it is a subreaper) must reap them.
    wait_until("every grandchild has ended", || {
        grandchildren.iter().all(|&pid| is_not_running(pid))
    });
    assert_all_reaped_and_no_fd_leaked(&daemon, "fork", 100, baseline_fds);
}

#[test]
fn grandchildren_still_running_pin_no_descriptor_of_the_daemon() {
    let dir = TestDir::new("grandchild-pipes");
    // The grandchild keeps the stderr pipe (stderr: log) open for far longer than the test.
    let script = dir.script("fork.sh", "sleep 60 &\necho $!");
    let daemon = Daemon::start(
        &dir,
        &[Service::new("fork", &script).set("max_children", "2")],
    );
    let baseline_fds = open_fd_count(daemon.pid());
    let grandchildren = run_clients(2, 20, || {
        let mut client = daemon.connect("fork");
        read_line(&mut client)
            .parse::<i32>()
            .expect("the grandchild's pid")
    });
    assert_all_reaped_and_no_fd_leaked(&daemon, "fork", 40, baseline_fds);
    assert!(
        grandchildren.iter().all(|&pid| !is_not_running(pid)),
        "the grandchildren were still running when the descriptors were counted"
    );
    for pid in grandchildren {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[test]
fn a_backlog_of_quick_clients_at_max_children_does_not_exhaust_the_stack() {
    let dir = TestDir::new("deep-backlog");
    let daemon = Daemon::start(
        &dir,
        &[Service::builtin("day", "daytime")
            .set("max_children", "1")
            .set("backlog", "4096")],
    );
    let address = daemon.addresses("day")[0];
    // Stopped, rinetd cannot accept: every client queues, and each one it then accepts
    // closes at once, freeing the single place for the next.
    let pid = nix::unistd::Pid::from_raw(daemon.pid());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    for _ in 0..3000 {
        drop(std::net::TcpStream::connect(address).expect("queued"));
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    wait_until("the queued clients are all served", || {
        daemon
            .lines()
            .iter()
            .filter(|l| l.contains("day/tcp: closed"))
            .count()
            >= 3000
    });
    assert!(daemon.request("day", "").ends_with("\r\n"), "still serving");
}
