//! Limits, refusals and per-service switches: max_children, per_source, only_from, no_access,
//! rate_limit, disabled, keepalive.

use std::io::Write;
use std::net::Shutdown;
use std::path::PathBuf;

use crate::harness::{Daemon, Service, TestDir, assert_refused, exchange, read_line, read_to_eof};

/// Blocks until the client sends a line, then answers it: the test decides when it exits.
fn line_echo(dir: &TestDir) -> PathBuf {
    dir.script("line-echo.sh", "read line\necho \"got $line\"")
}

/// Sends `line` on a connection kept open until now, and checks the handler's answer.
fn finish(mut client: std::net::TcpStream, line: &str) {
    client.write_all(format!("{line}\n").as_bytes()).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_eof(&mut client), format!("got {line}\n"));
}

#[test]
fn max_children_holds_the_next_client_in_the_backlog_until_a_handler_exits() {
    let dir = TestDir::new("max-children");
    let service = Service::new("single", &line_echo(&dir)).set("max_children", "1");
    let daemon = Daemon::start(&dir, &[service]);

    let first = daemon.connect("single");
    let first_accepted = daemon.accepted("single", &first);
    daemon.wait_for_line("single/tcp: paused reason=max_children running=1");
    // Accepted by the kernel only: it waits in the backlog while the first handler runs.
    let mut second = daemon.connect("single");
    second.write_all(b"second\n").unwrap();

    finish(first, "first");
    let first_exited = daemon.exited("single", &first_accepted);
    daemon.wait_for_line_after(&first_accepted, "single/tcp: resumed");
    assert_eq!(read_line(&mut second), "got second");
    let second_accepted = daemon.accepted("single", &second);
    assert!(
        second_accepted.index > first_exited.index,
        "the second client was served before the first handler exited"
    );
}

#[test]
fn per_source_refuses_a_second_concurrent_connection_from_the_same_address() {
    let dir = TestDir::new("per-source");
    let service = Service::new("solo", &line_echo(&dir)).set("per_source", "1");
    let daemon = Daemon::start(&dir, &[service]);

    let first = daemon.connect("solo");
    let first_accepted = daemon.accepted("solo", &first);
    assert_refused(&daemon, "solo", "per_source");

    finish(first, "first");
    daemon.exited("solo", &first_accepted);
    let again = daemon.connect("solo");
    daemon.accepted("solo", &again);
    finish(again, "again");
}

#[test]
fn only_from_admits_listed_clients_and_refuses_the_others() {
    let dir = TestDir::new("only-from");
    let script = line_echo(&dir);
    let daemon = Daemon::start(
        &dir,
        &[
            Service::new("outsiders", &script).set("only_from", "[10.0.0.0/8]"),
            Service::new("insiders", &script).set("only_from", "[10.0.0.0/8, 127.0.0.0/8]"),
        ],
    );
    assert_refused(&daemon, "outsiders", "only_from");
    finish(daemon.connect("insiders"), "welcome");
}

#[test]
fn no_access_wins_over_only_from() {
    let dir = TestDir::new("no-access");
    let script = line_echo(&dir);
    let daemon = Daemon::start(
        &dir,
        &[
            Service::new("denied", &script)
                .set("only_from", "[\"127.0.0.1\"]")
                .set("no_access", "[127.0.0.0/8]"),
            Service::new("admitted", &script)
                .set("only_from", "[\"127.0.0.1\"]")
                .set("no_access", "[10.0.0.0/8]"),
        ],
    );
    assert_refused(&daemon, "denied", "no_access");
    finish(daemon.connect("admitted"), "welcome");
}

#[test]
fn rate_limit_pauses_accepting_and_serves_the_waiting_client_after_the_pause() {
    let dir = TestDir::new("rate-limit");
    let script = dir.script("hello.sh", "echo hello");
    let service =
        Service::new("limited", &script).set("rate_limit", "{max: 2, per: 10s, pause: 1s}");
    let daemon = Daemon::start(&dir, &[service]);

    assert_eq!(daemon.request("limited", ""), "hello\n");
    assert_eq!(daemon.request("limited", ""), "hello\n");
    let paused = daemon.wait_for_line("limited/tcp: paused reason=rate_limit");
    let third = daemon.connect("limited");
    let third_address = third.local_addr().unwrap();
    assert_eq!(
        exchange(third, ""),
        "hello\n",
        "the third client waits, it is not refused"
    );
    let resumed = daemon.wait_for_line_after(&paused, "limited/tcp: resumed");
    let third_accepted =
        daemon.wait_for_line(&format!("limited/tcp: accepted client={third_address} "));
    assert!(
        third_accepted.index > resumed.index,
        "the third client was accepted during the pause"
    );
    assert!(
        !daemon.lines().iter().any(|line| line.contains("refused")),
        "rate_limit waits, it never refuses"
    );
}

#[test]
fn disabled_service_is_not_bound_while_the_others_listen() {
    let dir = TestDir::new("disabled");
    let script = dir.script("hello.sh", "echo hello");
    let daemon = Daemon::start(
        &dir,
        &[
            Service::new("on", &script),
            Service::new("off", &script).set("disabled", "true"),
        ],
    );
    // Every listener is logged before `ready`, which `start` waited for.
    assert!(
        !daemon
            .lines()
            .iter()
            .any(|line| line.contains("off/tcp: listening")),
        "a disabled service must not be bound"
    );
    assert_eq!(daemon.request("on", ""), "hello\n");
}

#[test]
fn keepalive_sets_so_keepalive_on_the_handlers_connection() {
    let dir = TestDir::new("keepalive");
    let script = dir.script(
        "keepalive.sh",
        "exec python3 -c 'import socket; s = socket.socket(fileno=0); \
         print(\"keepalive=%d\" % (s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0))'",
    );
    let daemon = Daemon::start(
        &dir,
        &[
            Service::new("alive", &script).set("keepalive", "true"),
            Service::new("plain", &script),
        ],
    );
    assert_eq!(daemon.request("alive", ""), "keepalive=1\n");
    assert_eq!(daemon.request("plain", ""), "keepalive=0\n");
}
