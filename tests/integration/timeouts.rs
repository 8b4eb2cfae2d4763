//! `timeout:` — a handler still running gets SIGTERM on its process group, SIGKILL 5 s later.

use std::net::TcpStream;
use std::process::Command;

use crate::harness::{
    Daemon, LogLine, Service, TestDir, is_not_running, is_root, read_line, read_to_eof, wait_until,
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

#[test]
fn delayed_sigkill_of_a_timeout_never_hits_a_group_that_took_the_reaped_handlers_pid() {
    // In a pid namespace of its own, rinetd's handlers' pids can be chosen (ns_last_pid): an
    // unrelated session leader takes the pid of a handler that exited at its SIGTERM, before
    // the handler's SIGKILL time. It must survive that time.
    if !is_root() || Command::new("unshare").arg("--version").output().is_err() {
        eprintln!("skipped: needs root and unshare(1) for a pid namespace");
        return;
    }
    let dir = TestDir::new("timeout-pid-reuse");
    let hang = dir.script("hang.sh", "trap 'exit 0' TERM\necho up\nsleep 1000 &\nwait");
    // Started by rinetd (so inside its namespace): takes a given pid for a new session leader,
    // or says whether that pid is alive.
    let control = dir.script(
        "control.sh",
        "read command pid
case $command in
take) echo $((pid - 1)) >/proc/sys/kernel/ns_last_pid
      setsid sleep 1000 </dev/null >/dev/null 2>&1 &
      echo $! ;;
probe) if kill -0 \"$pid\" 2>/dev/null; then echo alive; else echo gone; fi ;;
esac",
    );
    let stubborn = dir.script("stubborn.sh", "trap '' TERM\necho up\nsleep 1000");
    let config = dir.services_config(&[
        Service::new("hang", &hang).set("timeout", "1s"),
        Service::new("control", &control),
        Service::new("stubborn", &stubborn).set("timeout", "1s"),
    ]);
    let mut command = Command::new("unshare");
    command
        .args(["--pid", "--fork", "--mount-proc", "--kill-child=SIGTERM"])
        .arg(env!("CARGO_BIN_EXE_rinetd"))
        .arg("-c")
        .arg(&config)
        .args(["-f", "--log", "stderr"]);
    let daemon = Daemon::spawn(command);

    let mut client = daemon.connect("hang");
    assert_eq!(read_line(&mut client), "up");
    let pid = daemon.accepted("hang", &client).pid();
    daemon.wait_for_line(&format!("hang/tcp: timeout pid={pid} signal=SIGTERM"));
    daemon.wait_for_line(&format!("hang/tcp: exited pid={pid} status=0 "));

    let taken = daemon.request("control", &format!("take {pid}\n"));
    assert_eq!(taken.trim(), pid.to_string(), "could not reuse pid {pid}");
    // Its SIGKILL comes after the one rinetd scheduled for `hang`: once it is logged, the
    // other's time has passed too.
    let mut marker = daemon.connect("stubborn");
    assert_eq!(read_line(&mut marker), "up");
    let marker_pid = daemon.accepted("stubborn", &marker).pid();
    daemon.wait_for_line(&format!(
        "stubborn/tcp: timeout pid={marker_pid} signal=SIGKILL"
    ));
    assert_eq!(
        daemon.request("control", &format!("probe {pid}\n")),
        "alive\n",
        "rinetd killed a process group that was no longer its handler's"
    );
    // unshare ignores SIGTERM while it waits: stop rinetd itself, and unshare follows.
    let unshare = daemon.pid();
    let children = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
        .expect("unshare's children");
    let rinetd: i32 = children.trim().parse().expect("one child: rinetd");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(rinetd),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    daemon.wait_for_line("stopped");
}
