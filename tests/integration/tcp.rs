//! A shell-script handler answering over TCP: IPv4, IPv6, both on one port; argv; exec failure.

use std::net::{Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::harness::{Daemon, Service, TestDir, connect, exchange, free_port_on_both_families};

/// A handler that reads one line and greets it.
fn greeter(dir: &TestDir) -> PathBuf {
    dir.script("greet.sh", "read name\necho \"hello $name\"")
}

#[test]
fn handler_answers_over_ipv4_and_its_exit_is_logged() {
    let dir = TestDir::new("ipv4");
    let daemon = Daemon::start(&dir, &[Service::new("greet", &greeter(&dir))]);
    let client = daemon.connect("greet");
    let client_address = client.local_addr().unwrap();
    assert_eq!(exchange(client, "world\n"), "hello world\n");
    let accepted =
        daemon.wait_for_line(&format!("greet/tcp: accepted client={client_address} pid="));
    daemon.wait_for_line(&format!(
        "greet/tcp: exited pid={} status=0 duration=",
        accepted.pid()
    ));
}

#[test]
fn handler_answers_over_ipv6() {
    let dir = TestDir::new("ipv6");
    let service = Service::new("greet6", &greeter(&dir)).set("address", "\"::1\"");
    let daemon = Daemon::start(&dir, &[service]);
    let addresses = daemon.addresses("greet6");
    assert_eq!(addresses.len(), 1);
    assert_eq!(addresses[0].ip(), Ipv6Addr::LOCALHOST);
    let client = connect(addresses[0]);
    let client_address = client.local_addr().unwrap();
    assert_eq!(exchange(client, "six\n"), "hello six\n");
    daemon.wait_for_line(&format!(
        "greet6/tcp: accepted client={client_address} pid="
    ));
}

#[test]
fn one_service_serves_ipv4_and_ipv6_on_the_same_port() {
    let dir = TestDir::new("dual-stack");
    let port = free_port_on_both_families();
    let service = Service::new("dual", &greeter(&dir))
        .set("address", "[\"127.0.0.1\", \"::1\"]")
        .set("port", &port.to_string());
    let daemon = Daemon::start(&dir, &[service]);
    let mut addresses = daemon.addresses("dual");
    addresses.sort();
    let expected: Vec<SocketAddr> = vec![
        format!("127.0.0.1:{port}").parse().unwrap(),
        format!("[::1]:{port}").parse().unwrap(),
    ];
    assert_eq!(addresses, expected);
    for address in expected {
        assert_eq!(exchange(connect(address), "both\n"), "hello both\n");
    }
}

#[test]
fn args_reach_the_handler_verbatim_without_a_shell() {
    let dir = TestDir::new("args");
    let script = dir.script("args.sh", "printf '%s|' \"$#\" \"$@\"");
    let service = Service::new("args", &script).set(
        "args",
        "[args.sh, \"two  words\", \"$HOME\", \"*\", \"a;b\"]",
    );
    let daemon = Daemon::start(&dir, &[service]);
    assert_eq!(daemon.request("args", ""), "4|two  words|$HOME|*|a;b|");
}

#[test]
fn without_args_argv0_is_the_handlers_file_name() {
    // rinetd passes the tail of `server`'s path itself rather than storing a copy; bash reading
    // its commands from the connection shows what it was given as $0.
    let dir = TestDir::new("argv0");
    let daemon = Daemon::start(&dir, &[Service::new("zero", Path::new("/bin/bash"))]);
    assert_eq!(daemon.request("zero", "echo \"$0\"\n"), "bash\n");
}

#[test]
fn exec_failure_closes_the_connection_and_logs_the_reason_and_status_127() {
    let dir = TestDir::new("exec-failure");
    let broken = dir.write(
        "broken.sh",
        "#!/nonexistent/interpreter\necho unreachable\n",
        0o755,
    );
    let daemon = Daemon::start(&dir, &[Service::new("broken", &broken)]);
    assert_eq!(daemon.request("broken", ""), "");
    let accepted = daemon.wait_for_line("broken/tcp: accepted");
    let failed = daemon.wait_for_line(&format!("broken/tcp: spawn failed pid={}", accepted.pid()));
    assert!(
        failed.text.contains("No such file or directory"),
        "the reason is missing: {}",
        failed.text
    );
    daemon.wait_for_line(&format!(
        "broken/tcp: exited pid={} status=127",
        accepted.pid()
    ));
}

#[test]
fn a_script_whose_interpreter_is_missing_fails_with_no_such_file_for_a_file_that_exists() {
    let dir = TestDir::new("exec-interpreter");
    let broken = dir.write("crlf.sh", "#!/bin/sh\r\necho unreachable\r\n", 0o755);
    let daemon = Daemon::start(&dir, &[Service::new("crlf", &broken)]);
    assert_eq!(daemon.request("crlf", ""), "");
    let accepted = daemon.wait_for_line("crlf/tcp: accepted");
    let failed = daemon.wait_for_line(&format!("crlf/tcp: spawn failed pid={}", accepted.pid()));
    assert!(
        failed.text.contains("Windows line endings"),
        "the cause is not named: {}",
        failed.text
    );
}
