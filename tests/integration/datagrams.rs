//! udp `wait: false`: a handler per datagram, the datagram as its whole stdin, its stdout (and
//! `stderr: socket`) sent back to the sender as one datagram when it exits.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::thread;

use crate::harness::{
    Daemon, Service, TestDir, has_datagram, receive_from, udp_client, udp_exchange, udp_sync,
    udp_sync_service,
};

/// A per-datagram service: udp with `wait: false` set explicitly (udp defaults to wait: true).
fn per_datagram(name: &str, server: &Path) -> Service {
    Service::new(name, server)
        .set("protocol", "udp")
        .set("wait", "false")
}

#[test]
fn fifty_concurrent_senders_each_get_their_own_reply() {
    let dir = TestDir::new("udp-nowait-concurrent");
    let script = dir.script("tag.sh", "cat\nprintf ' from %s' \"$REMOTE_PORT\"");
    let daemon = Daemon::start(&dir, &[per_datagram("tag", &script)]);
    let service = daemon.udp_address("tag");

    let senders: Vec<_> = (0..50)
        .map(|i| {
            thread::spawn(move || {
                let client = udp_client();
                let port = client.local_addr().unwrap().port();
                let payload = format!("payload {i} of 50");
                let reply = udp_exchange(&client, service, payload.as_bytes());
                assert_eq!(
                    String::from_utf8_lossy(&reply),
                    format!("{payload} from {port}")
                );
                assert!(!has_datagram(&client), "sender {i} got a second datagram");
            })
        })
        .collect();
    for sender in senders {
        sender.join().expect("a sender failed");
    }
    daemon.assert_line_count("tag/udp: accepted client=127.0.0.1:", 50);
}

#[test]
fn handler_gets_the_datagram_then_eof_and_the_udp_environment() {
    let dir = TestDir::new("udp-nowait-environment");
    // `wc -c` ends only at EOF; the environment follows, one variable a line.
    let script = dir.script(
        "report.sh",
        "printf 'stdin=%s\\n' \"$(wc -c)\"\ntr '\\0' '\\n' </proc/$$/environ",
    );
    let daemon = Daemon::start(&dir, &[per_datagram("report", &script)]);
    let service = daemon.udp_address("report");
    let client = udp_client();
    let local = client.local_addr().unwrap();

    let reply = udp_exchange(&client, service, b"twelve bytes");
    let reply = String::from_utf8_lossy(&reply);
    let mut lines = reply.lines();
    assert_eq!(lines.next(), Some("stdin=12"));
    let environment: BTreeMap<&str, &str> = lines
        .map(|line| line.split_once('=').expect("NAME=value"))
        .collect();
    let expected = [
        ("PROTO", "UDP".to_string()),
        ("RINETD_SERVICE", "report".to_string()),
        ("REMOTE_ADDR", local.ip().to_string()),
        ("REMOTE_PORT", local.port().to_string()),
        ("LOCAL_ADDR", service.ip().to_string()),
        ("LOCAL_PORT", service.port().to_string()),
    ];
    for (name, value) in &expected {
        assert_eq!(
            environment.get(name).copied(),
            Some(value.as_str()),
            "{name}"
        );
    }
    for name in ["TCPREMOTEIP", "TCPREMOTEPORT", "TCPLOCALIP", "TCPLOCALPORT"] {
        assert!(!environment.contains_key(name), "{name} in a UDP handler");
    }

    let accepted = daemon.wait_for_line(&format!(
        "report/udp: accepted client={local} bytes=12 pid="
    ));
    daemon.wait_for_line(&format!(
        "report/udp: exited pid={} status=0 ",
        accepted.pid()
    ));
}

#[test]
fn empty_output_sends_no_reply() {
    let dir = TestDir::new("udp-nowait-silent");
    let script = dir.script("silent.sh", "cat >/dev/null");
    let daemon = Daemon::start(&dir, &[per_datagram("silent", &script), udp_sync_service()]);
    let client = udp_client();
    let local = client.local_addr().unwrap();
    client
        .send_to(b"anyone?", daemon.udp_address("silent"))
        .unwrap();
    let accepted = daemon.wait_for_line(&format!("silent/udp: accepted client={local} "));
    daemon.wait_for_line(&format!("silent/udp: exited pid={} ", accepted.pid()));
    // A reply would have been sent before this one (`udp_exchange` checks the sender).
    udp_sync(&daemon, &client);
    assert!(!has_datagram(&client), "an empty output was sent");
}

#[test]
fn stderr_socket_goes_into_the_reply() {
    let dir = TestDir::new("udp-nowait-stderr-socket");
    let script = dir.script("both.sh", "cat\necho ' to stdout'\necho 'to stderr' >&2");
    let service = per_datagram("both", &script).set("stderr", "socket");
    let daemon = Daemon::start(&dir, &[service]);
    let reply = udp_exchange(&udp_client(), daemon.udp_address("both"), b"in");
    assert_eq!(String::from_utf8_lossy(&reply), "in to stdout\nto stderr\n");
}

#[test]
fn a_reply_longer_than_a_datagram_is_cut_to_65507_bytes() {
    let dir = TestDir::new("udp-nowait-long-reply");
    let script = dir.script("long.sh", "head -c 70000 /dev/zero | tr '\\0' x");
    let daemon = Daemon::start(&dir, &[per_datagram("long", &script)]);
    let client = udp_client();
    let reply = udp_exchange(&client, daemon.udp_address("long"), b"");
    assert_eq!(reply.len(), 65_507);
    assert!(reply.iter().all(|&byte| byte == b'x'));
    daemon.wait_for_line(&format!(
        "long/udp: reply cut client={} bytes=65507",
        client.local_addr().unwrap()
    ));
}

#[test]
fn max_children_keeps_datagrams_waiting_and_loses_none() {
    let dir = TestDir::new("udp-nowait-max-children");
    let gate = dir.join("open");
    let script = dir.script(
        "gated.sh",
        &format!(
            "while [ ! -e {} ]; do sleep 0.02; done\ncat",
            gate.display()
        ),
    );
    let service = per_datagram("gated", &script).set("max_children", "2");
    let daemon = Daemon::start(&dir, &[service]);
    let address = daemon.udp_address("gated");

    let clients: Vec<_> = (0..8).map(|_| udp_client()).collect();
    for (i, client) in clients.iter().enumerate() {
        client
            .send_to(format!("datagram {i}").as_bytes(), address)
            .unwrap();
    }
    let paused = daemon.wait_for_line("gated/udp: paused reason=max_children running=2");
    // The pause is logged as the second handler starts, just before its `accepted` line.
    daemon.wait_for_line_after(&paused, "gated/udp: accepted");
    assert_eq!(
        daemon.count_lines("gated/udp: accepted"),
        2,
        "more handlers than max_children"
    );
    std::fs::write(&gate, "").unwrap();
    for (i, client) in clients.iter().enumerate() {
        let reply = receive_from(client, address);
        assert_eq!(String::from_utf8_lossy(&reply), format!("datagram {i}"));
    }
    daemon.wait_for_line_after(&paused, "gated/udp: resumed");
    // Every reply came after its `accepted` line was written; the log reader may lag behind.
    crate::harness::wait_until("all 8 datagrams are logged as accepted", || {
        daemon.count_lines("gated/udp: accepted") == 8
    });
}

#[test]
fn refused_datagrams_are_dropped_without_a_handler() {
    let dir = TestDir::new("udp-nowait-acl");
    let script = dir.script("cat.sh", "cat");
    let daemon = Daemon::start(
        &dir,
        &[
            per_datagram("denied", &script).set("no_access", "[127.0.0.0/8]"),
            per_datagram("outsiders", &script).set("only_from", "[\"::1\", 10.0.0.0/8]"),
            per_datagram("insiders", &script).set("only_from", "[\"127.0.0.1\"]"),
            udp_sync_service(),
        ],
    );
    let client = udp_client();
    let local: SocketAddr = client.local_addr().unwrap();
    for (name, reason) in [("denied", "no_access"), ("outsiders", "only_from")] {
        client
            .send_to(b"let me in", daemon.udp_address(name))
            .unwrap();
        daemon.wait_for_line(&format!(
            "{name}/udp: refused client={local} reason={reason}"
        ));
    }
    assert_eq!(
        udp_exchange(&client, daemon.udp_address("insiders"), b"welcome"),
        b"welcome"
    );
    udp_sync(&daemon, &client);
    assert!(!has_datagram(&client), "a refused datagram was answered");
    for name in ["denied", "outsiders"] {
        let accepted = format!("{name}/udp: accepted");
        assert_eq!(
            daemon.count_lines(&accepted),
            0,
            "a refused datagram got a handler"
        );
    }
}
