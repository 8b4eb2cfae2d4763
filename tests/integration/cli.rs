//! The command line: --pidfile, SIGTERM, -V, -h, usage errors, $RINETD_CONFIG.

use std::fs;

use crate::harness::{
    Daemon, EX_OSERR, Service, TestDir, all_output, is_not_running, read_line, read_to_eof, rinetd,
    run_to_exit, wait_until,
};

#[test]
fn pidfile_holds_the_pid_once_ready_and_is_removed_after_sigterm_with_exit_0() {
    let dir = TestDir::new("pidfile");
    let script = dir.script("hello.sh", "echo hello");
    let pidfile = dir.join("rinetd.pid");
    let mut command = Daemon::command(&dir.services_config(&[Service::new("hello", &script)]));
    command.arg("--pidfile").arg(&pidfile);
    let mut daemon = Daemon::spawn(command);

    // The contract does not order the `ready` line and the pidfile write: wait for the pid.
    let pid = daemon.pid().to_string();
    wait_until("the pidfile holds rinetd's pid", || {
        fs::read_to_string(&pidfile).is_ok_and(|written| written.trim() == pid)
    });

    let status = daemon.stop();
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean stop");
    assert!(!pidfile.exists(), "the pidfile is removed at exit");
    let stopping = daemon.wait_for_line("rinetd: stopping");
    daemon.wait_for_line_after(&stopping, "rinetd: stopped");
}

#[test]
fn an_unwritable_pidfile_is_an_operating_system_error_exit_71() {
    let dir = TestDir::new("pidfile-unwritable");
    let script = dir.script("hello.sh", "echo hello");
    let config = dir.services_config(&[Service::new("hello", &script)]);
    let pidfile = dir.join("no-such-dir/rinetd.pid");
    let (status, stderr) = run_to_exit(
        &dir,
        Daemon::command(&config).arg("--pidfile").arg(&pidfile),
    );
    assert_eq!(status.code(), Some(EX_OSERR), "{stderr}");
    assert!(
        stderr.contains("no-such-dir"),
        "the error names the pidfile: {stderr}"
    );
}

#[test]
fn sigterm_terminates_running_handlers_before_exiting() {
    let dir = TestDir::new("stop-handlers");
    let script = dir.script("hang.sh", "echo started\nexec sleep 1000");
    let mut daemon = Daemon::start(&dir, &[Service::new("hang", &script)]);
    let mut client = daemon.connect("hang");
    assert_eq!(read_line(&mut client), "started");
    let handler = daemon.accepted("hang", &client).pid();

    assert_eq!(daemon.stop().code(), Some(0));
    wait_until("the handler is gone", || is_not_running(handler));
    assert_eq!(read_to_eof(&mut client), "");
}

#[test]
fn version_flag_prints_the_version() {
    let output = rinetd().arg("-V").output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert!(
        all_output(&output).contains(env!("CARGO_PKG_VERSION")),
        "{}",
        all_output(&output)
    );
}

#[test]
fn help_flag_describes_the_options() {
    let output = rinetd().arg("-h").output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let text = all_output(&output);
    for flag in ["--config", "--foreground", "--check", "--pidfile", "--log"] {
        assert!(text.contains(flag), "{flag} missing from --help:\n{text}");
    }
}

#[test]
fn an_unknown_flag_is_a_usage_error_with_exit_2() {
    let output = rinetd().arg("--no-such-flag").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(all_output(&output).contains("--no-such-flag"));
}

#[test]
fn rinetd_config_names_the_table_unless_c_is_given() {
    let dir = TestDir::new("rinetd-config");
    let script = dir.script("hello.sh", "echo hello");
    let good = dir.services_config(&[Service::new("a", &script), Service::new("b", &script)]);
    let from_env = rinetd()
        .arg("-t")
        .env("RINETD_CONFIG", &good)
        .output()
        .unwrap();
    assert_eq!(from_env.status.code(), Some(0), "{}", all_output(&from_env));
    assert!(all_output(&from_env).contains(&format!("{}: OK, 2 services", good.display())));

    let missing = dir.join("missing.conf");
    let overridden = rinetd()
        .arg("-t")
        .arg("-c")
        .arg(&good)
        .env("RINETD_CONFIG", &missing)
        .output()
        .unwrap();
    assert_eq!(
        overridden.status.code(),
        Some(0),
        "{}",
        all_output(&overridden)
    );
    assert!(!all_output(&overridden).contains("missing.conf"));
}
