//! Without `-f`: the starting command returns only once the daemon's listeners are bound.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::harness::{
    EX_CONFIG, Service, TestDir, connect, exchange, free_port_on_both_families, is_not_running,
    rinetd, run_to_exit, wait_until,
};

/// `rinetd -c CONFIG --log stderr --pidfile PIDFILE`: without `-f`, so it daemonizes.
fn daemonizing(config: &Path, pidfile: &Path) -> Command {
    let mut command = rinetd();
    command
        .arg("-c")
        .arg(config)
        .args(["--log", "stderr", "--pidfile"])
        .arg(pidfile);
    command
}

/// Stops the daemon named by `pidfile` when the test ends, however it ends. A daemon that
/// returned too early may write its pidfile only later: give it a moment, so none is left behind.
struct StopFromPidfile<'a>(&'a Path);

impl StopFromPidfile<'_> {
    fn pid(&self) -> Option<i32> {
        fs::read_to_string(self.0).ok()?.trim().parse().ok()
    }
}

impl Drop for StopFromPidfile<'_> {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.pid().is_none() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        if let Some(pid) = self.pid() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
}

#[test]
fn without_f_the_command_returns_once_the_daemon_serves() {
    let dir = TestDir::new("daemonize");
    let script = dir.script("hello.sh", "echo hello");
    // A fixed port: the daemon's log is not at hand to learn an ephemeral one.
    let port = free_port_on_both_families();
    let config =
        dir.services_config(&[Service::new("hello", &script).set("port", &port.to_string())]);
    let pidfile = dir.join("rinetd.pid");

    let stop = StopFromPidfile(&pidfile);
    let (status, stderr) = run_to_exit(&dir, &mut daemonizing(&config, &pidfile));
    assert_eq!(status.code(), Some(0), "{stderr}");
    // Right away: the command may only return once the pidfile is written and the listener bound.
    let pid = stop
        .pid()
        .expect("the pidfile holds a pid when the command returns");
    let client = connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    assert_eq!(exchange(client, ""), "hello\n");
    let exe = fs::read_link(format!("/proc/{pid}/exe")).expect("the daemon runs");
    assert_eq!(exe, fs::canonicalize(env!("CARGO_BIN_EXE_rinetd")).unwrap());

    drop(stop);
    wait_until("the daemon has stopped", || is_not_running(pid));
    wait_until("the pidfile is removed", || !pidfile.exists());
}

#[test]
fn a_config_error_at_start_up_exits_78_with_or_without_f() {
    let dir = TestDir::new("start-config-error");
    let config = dir.config("services:\n  - name: broken\n    port: 0\n    server: relative.sh\n");
    let pidfile = dir.join("rinetd.pid");
    for foreground in [false, true] {
        let mut command = daemonizing(&config, &pidfile);
        if foreground {
            command.arg("-f");
        }
        let (status, stderr) = run_to_exit(&dir, &mut command);
        assert_eq!(status.code(), Some(EX_CONFIG), "-f: {foreground}: {stderr}");
        assert!(
            stderr.contains("relative.sh"),
            "the error is shown: {stderr}"
        );
        assert!(!pidfile.exists(), "no pidfile without a start");
    }
}

#[test]
fn a_daemon_started_with_a_relative_table_path_reloads_that_same_table() {
    let dir = TestDir::new("daemonize-relative");
    let hello = dir.script("hello.sh", "echo hello");
    let other = dir.script("other.sh", "echo other");
    let port = free_port_on_both_families();
    let table = |server: &Path| {
        crate::harness::services_yaml(&[Service::new("svc", server).set("port", &port.to_string())])
    };
    dir.config(&table(&hello));
    let pidfile = dir.join("rinetd.pid");
    let stop = StopFromPidfile(&pidfile);
    // `-c rinetd.conf` relative to the starting directory; the daemon then works from `/`.
    let mut command = daemonizing(Path::new("rinetd.conf"), &pidfile);
    command.current_dir(&dir.path);
    let (status, stderr) = run_to_exit(&dir, &mut command);
    assert_eq!(status.code(), Some(0), "{stderr}");
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    assert_eq!(exchange(connect(address), ""), "hello\n");
    dir.config(&table(&other));
    let pid = stop.pid().expect("a pid");
    kill(Pid::from_raw(pid), Signal::SIGHUP).unwrap();
    wait_until("the reloaded handler answers", || {
        exchange(connect(address), "") == "other\n"
    });
}
