//! `proxy_protocol: true`: a PROXY v1 or v2 header names the client and the local address for
//! the environment, the log, ACLs and per_source; the bytes after it reach the handler intact; a
//! missing, bad or late header closes the connection with nothing started. The 192.0.2.0/24 and
//! 2001:db8::/32 (documentation) addresses only ever appear inside the headers: every real
//! socket is on 127.0.0.1.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv6Addr, Shutdown, TcpStream};

use crate::harness::{Daemon, Service, TestDir, read_line, read_to_eof, read_until_closed};

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V1_TCP4: &[u8] = b"PROXY TCP4 192.0.2.1 192.0.2.2 1111 2222\r\n";

/// A handler that prints its environment, a `---` line, then its stdin.
fn reporter(dir: &TestDir) -> Service {
    let script = dir.script(
        "report.sh",
        "tr '\\0' '\\n' </proc/$$/environ\necho ---\ncat",
    );
    Service::new("web", &script).set("proxy_protocol", "true")
}

/// Sends `bytes` (header and data) in one write, half-closes, and returns the handler's
/// environment and what it read on stdin.
fn send_proxied(client: TcpStream, bytes: &[u8]) -> (BTreeMap<String, String>, String) {
    let mut client = client;
    client.write_all(bytes).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let answer = read_to_eof(&mut client);
    let (environment, stdin) = answer
        .split_once("---\n")
        .unwrap_or_else(|| panic!("not a report: {answer:?}"));
    let environment = environment
        .lines()
        .map(|line| {
            let (name, value) = line.split_once('=').expect("NAME=value");
            (name.to_string(), value.to_string())
        })
        .collect();
    (environment, stdin.to_string())
}

/// Checks the address variables a handler got, TCP and UCSPI names alike.
fn assert_addresses(
    environment: &BTreeMap<String, String>,
    remote: (&str, u16),
    local: (&str, u16),
) {
    let expected = [
        ("REMOTE_ADDR", remote.0.to_string()),
        ("REMOTE_PORT", remote.1.to_string()),
        ("LOCAL_ADDR", local.0.to_string()),
        ("LOCAL_PORT", local.1.to_string()),
        ("TCPREMOTEIP", remote.0.to_string()),
        ("TCPREMOTEPORT", remote.1.to_string()),
        ("TCPLOCALIP", local.0.to_string()),
        ("TCPLOCALPORT", local.1.to_string()),
    ];
    for (name, value) in expected {
        assert_eq!(environment.get(name), Some(&value), "{name}");
    }
}

/// A PROXY v2 header: `command` 0 = LOCAL, 1 = PROXY; `family` e.g. 0x11 = TCP over IPv4.
fn v2_header(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
    let mut header = V2_SIGNATURE.to_vec();
    header.push(0x20 | command);
    header.push(family);
    header.extend_from_slice(&(body.len() as u16).to_be_bytes());
    header.extend_from_slice(body);
    header
}

fn v2_addresses(source: &[u8], destination: &[u8], ports: (u16, u16)) -> Vec<u8> {
    let mut body = [source, destination].concat();
    body.extend_from_slice(&ports.0.to_be_bytes());
    body.extend_from_slice(&ports.1.to_be_bytes());
    body
}

fn with_data(header: &[u8], data: &str) -> Vec<u8> {
    [header, data.as_bytes()].concat()
}

#[test]
fn v1_tcp4_header_names_the_client_and_the_data_after_it_reaches_the_handler() {
    let dir = TestDir::new("proxy-v1-tcp4");
    let daemon = Daemon::start(&dir, &[reporter(&dir)]);
    let client = daemon.connect("web");
    let real = client.local_addr().unwrap();
    let (environment, stdin) = send_proxied(client, &with_data(V1_TCP4, "GET / HTTP/1.0\r\n\r\n"));
    assert_addresses(&environment, ("192.0.2.1", 1111), ("192.0.2.2", 2222));
    assert_eq!(stdin, "GET / HTTP/1.0\r\n\r\n");

    let accepted = daemon.wait_for_line("web/tcp: accepted client=192.0.2.1:1111 pid=");
    daemon.wait_for_line(&format!("web/tcp: exited pid={} status=0 ", accepted.pid()));
    assert_eq!(
        daemon.count_lines(&format!("client={real}")),
        0,
        "the proxy's own address was logged as the client"
    );
}

#[test]
fn v1_tcp6_header_names_an_ipv6_client() {
    let dir = TestDir::new("proxy-v1-tcp6");
    let daemon = Daemon::start(&dir, &[reporter(&dir)]);
    let header = b"PROXY TCP6 2001:db8::1 2001:db8::2 1111 2222\r\n";
    let (environment, stdin) = send_proxied(daemon.connect("web"), &with_data(header, "six"));
    assert_addresses(&environment, ("2001:db8::1", 1111), ("2001:db8::2", 2222));
    assert_eq!(stdin, "six");
    daemon.wait_for_line("web/tcp: accepted client=[2001:db8::1]:1111 pid=");
}

#[test]
fn v1_unknown_and_v2_local_keep_the_real_addresses() {
    let dir = TestDir::new("proxy-unknown-local");
    let daemon = Daemon::start(&dir, &[reporter(&dir)]);
    let unknown = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n".to_vec();
    let local = v2_header(0, 0x00, b"");
    for header in [unknown, local] {
        let client = daemon.connect("web");
        let (remote, service) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
        let (environment, stdin) = send_proxied(client, &with_data(&header, "as is"));
        assert_addresses(
            &environment,
            ("127.0.0.1", remote.port()),
            ("127.0.0.1", service.port()),
        );
        assert_eq!(stdin, "as is");
        daemon.wait_for_line(&format!("web/tcp: accepted client={remote} pid="));
    }
}

#[test]
fn v2_headers_name_the_client_and_their_tlvs_are_skipped() {
    let dir = TestDir::new("proxy-v2");
    let daemon = Daemon::start(&dir, &[reporter(&dir)]);
    let mut tcp4 = v2_addresses(&[192, 0, 2, 1], &[192, 0, 2, 2], (1111, 2222));
    // A PP2_TYPE_NOOP TLV, counted in the length: not data.
    tcp4.extend_from_slice(&[0x04, 0x00, 0x03, b'x', b'y', b'z']);
    let tcp6 = v2_addresses(
        &"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets(),
        &"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets(),
        (1111, 2222),
    );
    let cases = [
        (
            v2_header(1, 0x11, &tcp4),
            ("192.0.2.1", "192.0.2.2"),
            "192.0.2.1:1111",
        ),
        (
            v2_header(1, 0x21, &tcp6),
            ("2001:db8::1", "2001:db8::2"),
            "[2001:db8::1]:1111",
        ),
    ];
    for (header, (remote, local), shown) in cases {
        // Binary data right behind the header, NUL and CR LF included.
        let (environment, stdin) =
            send_proxied(daemon.connect("web"), &with_data(&header, "\0data\r\n"));
        assert_addresses(&environment, (remote, 1111), (local, 2222));
        assert_eq!(stdin, "\0data\r\n");
        daemon.wait_for_line(&format!("web/tcp: accepted client={shown} pid="));
    }
}

#[test]
fn a_header_split_over_several_writes_is_awaited() {
    let dir = TestDir::new("proxy-split");
    let daemon = Daemon::start(&dir, &[reporter(&dir), Service::builtin("sync", "echo")]);
    let mut client = daemon.connect("web");
    let (start, rest) = V1_TCP4.split_at(17);
    client.write_all(start).unwrap();
    // A round trip elsewhere gives rinetd its look at the first part.
    assert_eq!(daemon.request("sync", "sync"), "sync");
    let (environment, stdin) = send_proxied(client, &with_data(rest, "late data"));
    assert_addresses(&environment, ("192.0.2.1", 1111), ("192.0.2.2", 2222));
    assert_eq!(stdin, "late data");
}

#[test]
fn acls_apply_to_the_header_source_not_the_proxy() {
    let dir = TestDir::new("proxy-acl");
    let script = dir.script("hello.sh", "echo hello");
    let daemon = Daemon::start(
        &dir,
        &[
            Service::new("denied", &script)
                .set("proxy_protocol", "true")
                .set("no_access", "[192.0.2.0/24]"),
            Service::new("admitted", &script)
                .set("proxy_protocol", "true")
                .set("only_from", "[192.0.2.0/24]"),
        ],
    );
    let mut denied = daemon.connect("denied");
    denied.write_all(V1_TCP4).unwrap();
    assert_eq!(
        read_until_closed(&mut denied),
        "",
        "a refused client gets nothing"
    );
    daemon.wait_for_line("denied/tcp: refused client=192.0.2.1:1111 reason=no_access");
    assert_eq!(daemon.count_lines("denied/tcp: accepted"), 0);

    // 127.0.0.1 is outside only_from; the header's 192.0.2.1 is inside.
    let mut admitted = daemon.connect("admitted");
    admitted.write_all(V1_TCP4).unwrap();
    admitted.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_eof(&mut admitted), "hello\n");
    daemon.wait_for_line("admitted/tcp: accepted client=192.0.2.1:1111 pid=");
}

#[test]
fn builtins_read_the_header_and_per_source_counts_the_header_source() {
    let dir = TestDir::new("proxy-builtin");
    let service = Service::builtin("echo", "echo")
        .set("proxy_protocol", "true")
        .set("per_source", "1");
    let daemon = Daemon::start(&dir, &[service]);
    let open = |header: &str| {
        let mut client = daemon.connect("echo");
        client.write_all(header.as_bytes()).unwrap();
        client
    };
    let mut first = open("PROXY TCP4 192.0.2.1 192.0.2.2 1111 7\r\nfirst\n");
    assert_eq!(read_line(&mut first), "first", "the header reached echo");
    daemon.wait_for_line("echo/tcp: accepted client=192.0.2.1:1111 builtin");

    // Same real peer, another proxied source: admitted.
    let mut other = open("PROXY TCP4 192.0.2.9 192.0.2.2 9999 7\r\nother\n");
    assert_eq!(read_line(&mut other), "other");
    // The same proxied source again: refused.
    let mut again = open("PROXY TCP4 192.0.2.1 192.0.2.2 1112 7\r\nagain\n");
    assert_eq!(
        read_until_closed(&mut again),
        "",
        "per_source let a second one in"
    );
    daemon.wait_for_line("echo/tcp: refused client=192.0.2.1:1112 reason=per_source");

    drop(first);
    daemon.wait_for_line("echo/tcp: closed client=192.0.2.1:1111 duration=");
}

#[test]
fn missing_malformed_and_cut_short_headers_close_the_connection_with_nothing_started() {
    let dir = TestDir::new("proxy-rejected");
    let daemon = Daemon::start(&dir, &[reporter(&dir)]);
    let mut bad_v2 = v2_header(
        1,
        0x11,
        &v2_addresses(&[192, 0, 2, 1], &[192, 0, 2, 2], (1, 2)),
    );
    bad_v2[12] = 0x31; // version 3
    let cases: [&[u8]; 6] = [
        b"GET / HTTP/1.0\r\n\r\n",
        b"PROXY TCP4 192.0.2.999 192.0.2.2 1111 2222\r\n",
        b"PROXY TCP4 192.0.2.1 192.0.2.2 1111\r\n",
        b"PROXY TCP4 192.0.2.1 192.0.2.2 1111 2222\n",
        &bad_v2,
        // The client closes before a whole header.
        b"PROXY TCP4 192.0.2.1",
    ];
    for bytes in cases {
        let mut client = daemon.connect("web");
        let real = client.local_addr().unwrap();
        client.write_all(bytes).unwrap();
        // rinetd may have reset the connection already.
        let _ = client.shutdown(Shutdown::Write);
        assert_eq!(
            read_until_closed(&mut client),
            "",
            "answered {:?}",
            String::from_utf8_lossy(bytes)
        );
        daemon.wait_for_line(&format!(
            "web/tcp: proxy header rejected client={real} error="
        ));
    }
    assert_eq!(daemon.count_lines(" pid="), 0, "a handler was started");
}

#[test]
fn a_header_not_complete_within_5s_is_rejected() {
    let dir = TestDir::new("proxy-deadline");
    let daemon = Daemon::start(&dir, &[reporter(&dir)]);
    let mut client = daemon.connect("web");
    let real = client.local_addr().unwrap();
    client.write_all(b"PROXY TCP4 192.0.2.1 ").unwrap();
    // Kept open: rinetd gives up by itself (the read fails after 10 s otherwise).
    assert_eq!(read_until_closed(&mut client), "");
    daemon.wait_for_line(&format!(
        "web/tcp: proxy header rejected client={real} error=\"no complete header within 5s\""
    ));
    assert_eq!(daemon.count_lines(" pid="), 0, "a handler was started");
}

#[test]
fn a_client_refused_after_its_header_frees_its_place_for_the_next() {
    let dir = TestDir::new("proxy-refused-frees");
    let service = reporter(&dir)
        .set("max_children", "1")
        .set("only_from", "[192.0.2.0/24]");
    let daemon = Daemon::start(&dir, &[service]);
    // The first client takes the only place while its header is still to come.
    let mut first = daemon.connect("web");
    // The second waits in the backlog with a good header and its data.
    let mut second = daemon.connect("web");
    second.write_all(&with_data(V1_TCP4, "waited\n")).unwrap();
    second.shutdown(Shutdown::Write).unwrap();
    // The first then names a client only_from refuses: its place must go to the second.
    first
        .write_all(b"PROXY TCP4 198.51.100.7 192.0.2.2 1111 2222\r\n")
        .unwrap();
    daemon.wait_for_line("web/tcp: refused client=198.51.100.7:1111 reason=only_from");
    let answer = read_to_eof(&mut second);
    assert!(answer.ends_with("---\nwaited\n"), "{answer:?}");
}

#[test]
fn ipv4_mapped_ipv6_sources_get_past_acls_and_limits() {
    // `::ffff:a.b.c.d` is the IPv4 client a.b.c.d for ACLs, per_source, logs and environment.
    let dir = TestDir::new("proxy-mapped");
    let hold = dir.script("hold.sh", "echo \"$REMOTE_ADDR\"\nread line");
    let daemon = Daemon::start(
        &dir,
        &[
            Service::new("denied", &hold)
                .set("proxy_protocol", "true")
                .set("no_access", "[192.0.2.0/24]"),
            Service::new("admitted", &hold)
                .set("proxy_protocol", "true")
                .set("only_from", "[192.0.2.0/24]"),
            Service::new("limited", &hold)
                .set("proxy_protocol", "true")
                .set("per_source", "1"),
        ],
    );
    let mapped = b"PROXY TCP6 ::ffff:192.0.2.1 ::ffff:192.0.2.2 1111 2222\r\n";

    let mut denied = daemon.connect("denied");
    denied.write_all(mapped).unwrap();
    assert_eq!(read_until_closed(&mut denied), "", "no_access let it in");
    daemon.wait_for_line("denied/tcp: refused client=192.0.2.1:1111 reason=no_access");

    let mut admitted = daemon.connect("admitted");
    admitted.write_all(mapped).unwrap();
    assert_eq!(
        read_line(&mut admitted),
        "192.0.2.1",
        "only_from refused it"
    );
    daemon.wait_for_line("admitted/tcp: accepted client=192.0.2.1:1111 pid=");

    let mut plain = daemon.connect("limited");
    plain
        .write_all(b"PROXY TCP4 192.0.2.1 192.0.2.2 1111 2222\r\n")
        .unwrap();
    assert_eq!(read_line(&mut plain), "192.0.2.1");
    let mut same_client = daemon.connect("limited");
    same_client.write_all(mapped).unwrap();
    assert_eq!(
        read_until_closed(&mut same_client),
        "",
        "per_source counted the mapped address as another client"
    );
    daemon.wait_for_line("limited/tcp: refused client=192.0.2.1:1111 reason=per_source");
}

#[test]
fn a_partial_header_followed_by_fin_is_held_for_the_full_5s() {
    let dir = TestDir::new("proxy-partial-fin");
    let daemon = Daemon::start(&dir, &[reporter(&dir)]);
    let mut client = daemon.connect("web");
    let real = client.local_addr().unwrap();
    client.write_all(b"PROXY TCP4 192.0.2.1 ").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_until_closed(&mut client), "");
    let rejected = daemon.wait_for_line(&format!(
        "web/tcp: proxy header rejected client={real} error="
    ));
    assert!(
        rejected
            .text
            .contains("the connection closed before the header"),
        "the hang-up was not noticed: {}",
        rejected.text
    );
}

#[test]
fn a_partial_header_followed_by_rst_is_held_for_the_full_5s() {
    let dir = TestDir::new("proxy-partial-rst");
    let daemon = Daemon::start(&dir, &[reporter(&dir)]);
    let mut client = daemon.connect("web");
    let real = client.local_addr().unwrap();
    client.write_all(b"PROXY TCP4 192.0.2.1 ").unwrap();
    // A zero linger time makes the close a reset.
    socket2::SockRef::from(&client)
        .set_linger(Some(std::time::Duration::ZERO))
        .unwrap();
    drop(client);
    let rejected = daemon.wait_for_line(&format!(
        "web/tcp: proxy header rejected client={real} error="
    ));
    assert!(
        !rejected.text.contains("within 5s"),
        "the reset was not noticed: {}",
        rejected.text
    );
}

#[test]
fn silent_connections_held_a_services_slots_and_a_real_client_waited() {
    // 200 connections that never send their header, against a service of 40 places: they may
    // hold only a share of them, the oldest giving way to the newest, and a client that sends
    // its header is served while they are all still open.
    let dir = TestDir::new("proxy-silent-flood");
    let hello = dir.script("hello.sh", "echo hello");
    let service = Service::new("web", &hello)
        .set("proxy_protocol", "true")
        .set("max_children", "40");
    let daemon = Daemon::start(&dir, &[service]);
    let silent: Vec<TcpStream> = (0..200).map(|_| daemon.connect("web")).collect();
    daemon.wait_for_line("web/tcp: proxy header rejected client=127.0.0.1:");
    let mut client = daemon.connect("web");
    client.write_all(V1_TCP4).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_eof(&mut client), "hello\n");
    let accepted = daemon.wait_for_line("web/tcp: accepted client=192.0.2.1:1111 pid=");
    let lines = daemon.lines();
    assert!(
        !lines[..accepted.index]
            .iter()
            .any(|line| line.contains("within 5s")),
        "the client was served only once silent connections timed out"
    );
    assert!(
        lines
            .iter()
            .any(|line| line.contains("given way to a newer connection")
                || line.contains("too many connections from this client")),
        "{lines:#?}"
    );
    drop(silent);
}
