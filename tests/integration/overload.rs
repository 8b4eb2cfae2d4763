//! Overload control on the real daemon: `per_source_rate` on TCP handlers, per-datagram UDP and
//! builtins (refused with reason `per_source_rate`, other clients unaffected), and
//! `source_prefix` grouping an IPv6 client's /64, with the PROXY header's source.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};

use crate::harness::{
    Daemon, Service, TestDir, connect, exchange, receive_from, udp_socket_on, wait_until,
};

const RATE: &str = "{max: 3, per: 1m}";

/// The service's two addresses (each with its own ephemeral port): 127.0.0.1 and ::1.
fn both(daemon: &Daemon, name: &str) -> (SocketAddr, SocketAddr) {
    let addresses = daemon.addresses(name);
    let v4 = *addresses.iter().find(|a| a.is_ipv4()).unwrap();
    let v6 = *addresses.iter().find(|a| a.is_ipv6()).unwrap();
    (v4, v6)
}

/// Sends `input` to `to`, half-closes, and returns what came back before EOF.
fn request(to: SocketAddr, input: &str) -> String {
    exchange(connect(to), input)
}

#[test]
fn per_source_rate_refuses_a_tcp_client_past_its_rate_and_serves_another() {
    let dir = TestDir::new("rate-tcp");
    let hello = dir.script("hello.sh", "echo hello");
    let daemon = Daemon::start(
        &dir,
        &[Service::new("hello", &hello)
            .set("address", "[127.0.0.1, \"::1\"]")
            .set("per_source_rate", RATE)],
    );
    let (v4, v6) = both(&daemon, "hello");
    for _ in 0..3 {
        assert_eq!(request(v4, ""), "hello\n");
    }
    // The fourth within the minute: accepted and closed, nothing written, nothing started.
    assert_eq!(request(v4, ""), "");
    let refused = daemon.wait_for_line("hello/tcp: refused client=127.0.0.1:");
    assert_eq!(refused.field("reason"), "per_source_rate");
    // Another client has a rate of its own.
    assert_eq!(request(v6, ""), "hello\n");
    daemon.assert_line_count("hello/tcp: accepted", 4);
    assert_eq!(daemon.count_lines("reason=per_source_rate"), 1);
}

#[test]
fn per_source_rate_drops_datagrams_past_the_rate_for_per_datagram_udp() {
    let dir = TestDir::new("rate-udp");
    let echo = dir.script("echo.sh", "exec cat");
    let daemon = Daemon::start(
        &dir,
        &[Service::new("echo", &echo)
            .set("protocol", "udp")
            .set("wait", "false")
            .set("address", "[127.0.0.1, \"::1\"]")
            .set("per_source_rate", RATE)],
    );
    let addresses = daemon.addresses_of("echo", "udp");
    let v4 = *addresses.iter().find(|a| a.is_ipv4()).unwrap();
    let v6 = *addresses.iter().find(|a| a.is_ipv6()).unwrap();
    let client = udp_socket_on((Ipv4Addr::LOCALHOST, 0).into());
    for i in 0..3 {
        client.send_to(format!("d{i}").as_bytes(), v4).unwrap();
        assert_eq!(receive_from(&client, v4), format!("d{i}").as_bytes());
    }
    client.send_to(b"one too many", v4).unwrap();
    let refused = daemon.wait_for_line("echo/udp: refused client=127.0.0.1:");
    assert_eq!(refused.field("reason"), "per_source_rate");
    // The next client, from ::1, is answered; the dropped datagram never was.
    let other = udp_socket_on((Ipv6Addr::LOCALHOST, 0).into());
    other.send_to(b"from v6", v6).unwrap();
    assert_eq!(receive_from(&other, v6), b"from v6");
    client.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    assert!(
        client.recv_from(&mut buf).is_err(),
        "the refused datagram got a reply"
    );
    daemon.assert_line_count("echo/udp: accepted", 4);
}

#[test]
fn per_source_rate_applies_to_builtins() {
    let dir = TestDir::new("rate-builtin");
    let daemon = Daemon::start(
        &dir,
        &[Service::builtin("echo", "echo")
            .set("address", "[127.0.0.1, \"::1\"]")
            .set("per_source_rate", RATE)],
    );
    let (v4, v6) = both(&daemon, "echo");
    for i in 0..3 {
        assert_eq!(request(v4, &format!("{i}\n")), format!("{i}\n"));
    }
    // Refused: closed at once (nothing sent, so that the close is a FIN, not a reset).
    assert_eq!(request(v4, ""), "");
    let refused = daemon.wait_for_line("echo/tcp: refused client=127.0.0.1:");
    assert_eq!(refused.field("reason"), "per_source_rate");
    assert_eq!(request(v6, "v6\n"), "v6\n");
}

/// Connects to `port`, sends a PROXY v1 header naming `source`, then `data`; what came back.
fn proxied(port: u16, source: &str, data: &str) -> String {
    let mut client = connect((Ipv4Addr::LOCALHOST, port).into());
    client
        .write_all(format!("PROXY TCP6 {source} 2001:db8::ff 40000 7\r\n{data}").as_bytes())
        .unwrap();
    let _ = client.shutdown(std::net::Shutdown::Write);
    let mut answer = String::new();
    let _ = client.read_to_string(&mut answer);
    answer
}

#[test]
fn an_ipv6_client_cannot_evade_per_source_rate_by_moving_inside_its_64() {
    let dir = TestDir::new("rate-prefix");
    let daemon = Daemon::start(
        &dir,
        &[
            Service::builtin("grouped", "echo")
                .set("proxy_protocol", "true")
                .set("per_source_rate", "{max: 2, per: 1m}"),
            Service::builtin("single", "echo")
                .set("proxy_protocol", "true")
                .set("per_source_rate", "{max: 2, per: 1m}")
                .set("source_prefix", "{ipv4: 32, ipv6: 128}"),
        ],
    );
    let grouped = daemon.port("grouped");
    assert_eq!(proxied(grouped, "2001:db8::1", "a\n"), "a\n");
    assert_eq!(proxied(grouped, "2001:db8::2", "b\n"), "b\n");
    // A third address of the same /64 is the same client.
    assert_eq!(proxied(grouped, "2001:db8::3:4:5", "c\n"), "");
    let refused = daemon.wait_for_line("grouped/tcp: refused client=[2001:db8::3:4:5]:40000");
    assert_eq!(refused.field("reason"), "per_source_rate");
    // The next /64 is another client.
    assert_eq!(proxied(grouped, "2001:db8:0:1::1", "d\n"), "d\n");

    // With ipv6: 128 every address counts alone, as a service can choose.
    let single = daemon.port("single");
    for (i, source) in ["2001:db8::1", "2001:db8::2", "2001:db8::3"]
        .iter()
        .enumerate()
    {
        assert_eq!(proxied(single, source, &format!("{i}\n")), format!("{i}\n"));
    }
    assert_eq!(daemon.count_lines("single/tcp: refused"), 0);
}

#[test]
fn per_source_counts_a_64_as_one_client_at_a_time() {
    let dir = TestDir::new("per-source-prefix");
    // The handler holds its connection until the client half-closes.
    let hold = dir.script("hold.sh", "cat >/dev/null\necho done");
    let daemon = Daemon::start(
        &dir,
        &[Service::new("hold", &hold)
            .set("proxy_protocol", "true")
            .set("per_source", "1")],
    );
    let port = daemon.port("hold");
    let open = |source: &str| {
        let mut client = connect((Ipv4Addr::LOCALHOST, port).into());
        client
            .write_all(format!("PROXY TCP6 {source} 2001:db8::ff 40000 7\r\n").as_bytes())
            .unwrap();
        client
    };
    let first = open("2001:db8::1");
    daemon.wait_for_line("hold/tcp: accepted client=[2001:db8::1]:40000");
    let mut neighbour = open("2001:db8::2");
    let refused = daemon.wait_for_line("hold/tcp: refused client=[2001:db8::2]:40000");
    assert_eq!(refused.field("reason"), "per_source");
    let mut nothing = String::new();
    neighbour.read_to_string(&mut nothing).unwrap();
    assert_eq!(nothing, "");
    // Another /64 is served while the first still holds its place.
    let other = open("2001:db8:1::1");
    assert_eq!(finish(other), "done\n");
    assert_eq!(finish(first), "done\n");
    wait_until("both handlers are reaped", || {
        daemon.count_lines("hold/tcp: exited") == 2
    });
}

/// Half-closes `client` and reads its answer to EOF.
fn finish(mut client: TcpStream) -> String {
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    client.read_to_string(&mut answer).unwrap();
    answer
}
