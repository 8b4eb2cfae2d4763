//! `stderr:` — where a handler's fd 2 goes: the log (default), the connection, or nowhere.

use std::path::PathBuf;

use crate::harness::{Daemon, Service, TestDir};

/// Writes two lines to stderr, then one to stdout.
fn complainer(dir: &TestDir) -> PathBuf {
    dir.script(
        "complain.sh",
        "printf 'oops\\nsecond  line\\n' >&2\necho out",
    )
}

#[test]
fn stderr_log_sends_each_line_to_the_log_tagged_with_the_pid() {
    let dir = TestDir::new("stderr-log");
    let daemon = Daemon::start(&dir, &[Service::new("complain", &complainer(&dir))]);
    assert_eq!(daemon.request("complain", ""), "out\n");
    let pid = daemon.wait_for_line("complain/tcp: accepted").pid();
    let first = daemon.wait_for_line(&format!("complain/tcp: stderr pid={pid} line=oops"));
    assert_eq!(
        first.text,
        format!("rinetd: complain/tcp: stderr pid={pid} line=oops")
    );
    assert_eq!(first.field("line"), "oops");
    let second = daemon.wait_for_line_after(&first, &format!("complain/tcp: stderr pid={pid} "));
    assert_eq!(second.field("line"), "second  line");
}

#[test]
fn stderr_socket_sends_stderr_to_the_client() {
    let dir = TestDir::new("stderr-socket");
    let service = Service::new("complain", &complainer(&dir)).set("stderr", "socket");
    let daemon = Daemon::start(&dir, &[service]);
    assert_eq!(daemon.request("complain", ""), "oops\nsecond  line\nout\n");
    let pid = daemon.wait_for_line("complain/tcp: accepted").pid();
    daemon.wait_for_line(&format!("complain/tcp: exited pid={pid}"));
    assert!(
        !daemon.lines().iter().any(|line| line.contains("line=oops")),
        "stderr: socket must not log the handler's stderr"
    );
}

#[test]
fn stderr_null_bare_or_quoted_discards_stderr() {
    let dir = TestDir::new("stderr-null");
    let script = complainer(&dir);
    let daemon = Daemon::start(
        &dir,
        &[
            Service::new("bare", &script).set("stderr", "null"),
            Service::new("quoted", &script).set("stderr", "\"null\""),
        ],
    );
    for name in ["bare", "quoted"] {
        assert_eq!(daemon.request(name, ""), "out\n", "service {name}");
        let pid = daemon.wait_for_line(&format!("{name}/tcp: accepted")).pid();
        daemon.wait_for_line(&format!("{name}/tcp: exited pid={pid} status=0"));
    }
    assert!(
        !daemon.lines().iter().any(|line| line.contains("line=oops")),
        "stderr: null must not log the handler's stderr"
    );
}
