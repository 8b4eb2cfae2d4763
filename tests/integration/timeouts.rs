//! `timeout:` — a handler still running gets SIGTERM on its process group, SIGKILL 5 s later.

use std::net::TcpStream;

use crate::harness::{
    Daemon, LogLine, Service, TestDir, is_not_running, read_line, read_to_eof, wait_until,
};

/// A handler of a `timeout: 1s` service, started and still running, with a background child.
struct HangingHandler {
    daemon: Daemon,
    pid: i32,
    child: i32,
    client: TcpStream,
    _dir: TestDir,
}

/// Starts a `timeout: 1s` service whose handler runs `body`; the body prints its background
/// child's pid first. The client stays connected.
fn start_hanging_handler(test: &str, body: &str) -> HangingHandler {
    let dir = TestDir::new(test);
    let script = dir.script("hang.sh", body);
    let daemon = Daemon::start(&dir, &[Service::new("hang", &script).set("timeout", "1s")]);
    let mut client = daemon.connect("hang");
    let child = read_line(&mut client).parse().expect("the child's pid");
    let pid = daemon.accepted("hang", &client).pid();
    HangingHandler {
        daemon,
        pid,
        child,
        client,
        _dir: dir,
    }
}

/// `duration=6.012s` → 6.012
fn duration_secs(exited: &LogLine) -> f64 {
    let duration = exited.field("duration");
    duration
        .strip_suffix('s')
        .and_then(|secs| secs.parse().ok())
        .unwrap_or_else(|| panic!("duration= is seconds: {}", exited.text))
}

#[test]
fn timeout_terminates_the_handler_and_its_children() {
    // The child reports SIGTERM on the connection: proof the whole group got it, not just
    // the handler (leftovers would otherwise only die by the SIGKILL 5 s later).
    let mut hang = start_hanging_handler(
        "timeout-term",
        "sh -c 'trap \"echo child got SIGTERM; exit\" TERM; sleep 1000 & wait' &
echo $!
sleep 1000
wait",
    );
    let (daemon, pid, child) = (&hang.daemon, hang.pid, hang.child);
    daemon.wait_for_line(&format!("hang/tcp: timeout pid={pid} signal=SIGTERM"));
    let exited = daemon.wait_for_line(&format!("hang/tcp: exited pid={pid} status=signal:SIGTERM"));
    assert!(
        duration_secs(&exited) >= 0.9,
        "killed before its timeout: {}",
        exited.text
    );
    wait_until("the handler and its child are gone", || {
        is_not_running(pid) && is_not_running(child)
    });
    assert_eq!(read_to_eof(&mut hang.client), "child got SIGTERM\n");
}

#[test]
fn timeout_kills_a_handler_that_ignores_sigterm_5s_later() {
    let hang = start_hanging_handler("timeout-kill", "trap '' TERM\nsleep 1000 &\necho $!\nwait");
    let (daemon, pid, child) = (&hang.daemon, hang.pid, hang.child);
    let term = daemon.wait_for_line(&format!("hang/tcp: timeout pid={pid} signal=SIGTERM"));
    let kill = daemon.wait_for_line_after(
        &term,
        &format!("hang/tcp: timeout pid={pid} signal=SIGKILL"),
    );
    let exited = daemon.wait_for_line_after(
        &kill,
        &format!("hang/tcp: exited pid={pid} status=signal:SIGKILL"),
    );
    let duration = duration_secs(&exited);
    assert!(
        (5.5..9.0).contains(&duration),
        "expected about 1 s timeout + 5 s grace: {}",
        exited.text
    );
    wait_until("the handler and its child are gone", || {
        is_not_running(pid) && is_not_running(child)
    });
}
