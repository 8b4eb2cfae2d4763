//! The builtins (RFC 862 echo, 863 discard, 864 chargen, 867 daytime, 868 time) over TCP and
//! UDP, IPv4 and IPv6: their answers, their log lines, the limits and ACLs that apply to them,
//! loop protection, and flow control (a client that never reads stalls nothing else).

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv6Addr, Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::harness::{
    Daemon, Service, TestDir, assert_refused, connect, exchange, has_datagram, is_root, read_line,
    read_to_eof, receive_from, udp_client, udp_exchange, udp_socket_on, udp_sync, udp_sync_service,
    wait_until,
};

const BUILTINS: [&str; 5] = ["echo", "discard", "chargen", "daytime", "time"];
/// Seconds from 1900-01-01 (RFC 868's epoch) to 1970-01-01.
const FROM_1900_TO_1970: u64 = 2_208_988_800;

/// One service per builtin, named after it, on 127.0.0.1 and ::1, over `protocol`.
fn every_builtin(protocol: &str) -> Vec<Service> {
    BUILTINS
        .iter()
        .map(|builtin| {
            Service::builtin(builtin, builtin)
                .set("protocol", protocol)
                .set("address", "[\"127.0.0.1\", \"::1\"]")
        })
        .collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// The first `len` bytes of RFC 864's stream: 72 characters of the 95 printable ones starting
/// one further along the ring on each line, then CRLF.
fn chargen_stream(len: usize) -> Vec<u8> {
    let mut stream = Vec::with_capacity(len + 74);
    let mut line = 0;
    while stream.len() < len {
        stream.extend((0..72).map(|i| b' ' + ((line + i) % 95) as u8));
        stream.extend_from_slice(b"\r\n");
        line += 1;
    }
    stream.truncate(len);
    stream
}

/// Checks a daytime answer against `date -u` for every second from `before` to `after`.
fn assert_daytime(answer: &[u8], before: u64, after: u64) {
    let answer = String::from_utf8_lossy(answer);
    let candidates: Vec<String> = (before..=after)
        .map(|secs| {
            let output = Command::new("date")
                .args(["-u", "-d", &format!("@{secs}"), "+%a %b %e %H:%M:%S %Y"])
                .output()
                .expect("run date");
            format!("{}\r\n", String::from_utf8_lossy(&output.stdout).trim_end())
        })
        .collect();
    assert!(
        candidates.iter().any(|candidate| *candidate == answer),
        "daytime answered {answer:?}, expected one of {candidates:?}"
    );
}

/// Checks a time answer: 4 bytes, big-endian seconds since 1900, from `before` to `after`.
fn assert_time(answer: &[u8], before: u64, after: u64) {
    let answer: [u8; 4] = answer
        .try_into()
        .unwrap_or_else(|_| panic!("time answered {} bytes, not 4", answer.len()));
    let seconds = u32::from_be_bytes(answer);
    let expected = (before..=after).map(|secs| (secs + FROM_1900_TO_1970) as u32);
    assert!(
        expected.clone().any(|secs| secs == seconds),
        "time answered {seconds}, expected one of {:?}",
        expected.collect::<Vec<_>>()
    );
}

fn read_all(stream: &mut TcpStream) -> Vec<u8> {
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .expect("read answer until EOF");
    answer
}

/// Sends `input` on a new connection to `address`, half-closes and reads up to EOF.
fn tcp_exchange(address: SocketAddr, input: &[u8]) -> Vec<u8> {
    let mut client = connect(address);
    client.write_all(input).expect("send request");
    client.shutdown(Shutdown::Write).expect("half-close");
    read_all(&mut client)
}

/// A counting pattern that makes lost, duplicated or reordered bytes visible.
fn pattern(from: usize, len: usize) -> Vec<u8> {
    (from..from + len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn every_builtin_answers_over_tcp_on_ipv4_and_ipv6() {
    let dir = TestDir::new("builtins-tcp");
    let daemon = Daemon::start(&dir, &every_builtin("tcp"));
    for index in 0..2 {
        let at = |name: &str| daemon.addresses(name)[index];
        assert_eq!(
            at("echo").is_ipv6(),
            index == 1,
            "listening order: 127.0.0.1 then ::1"
        );
        assert_eq!(tcp_exchange(at("echo"), b"ping\r\n"), b"ping\r\n");
        assert_eq!(tcp_exchange(at("discard"), b"into the void"), b"");

        let mut chargen = connect(at("chargen"));
        let mut lines = vec![0u8; 3 * 74];
        chargen.read_exact(&mut lines).expect("read chargen lines");
        assert_eq!(lines, chargen_stream(3 * 74));

        let before = unix_now();
        let daytime = tcp_exchange(at("daytime"), b"");
        let time = tcp_exchange(at("time"), b"");
        let after = unix_now();
        assert_daytime(&daytime, before, after);
        assert_time(&time, before, after);
    }
}

#[test]
fn tcp_echo_echoes_until_the_half_close_then_sends_the_rest_and_closes() {
    let dir = TestDir::new("echo-tcp");
    let daemon = Daemon::start(&dir, &[Service::builtin("echo", "echo")]);
    let mut client = daemon.connect("echo");
    let address = client.local_addr().unwrap();
    let accepted = daemon.wait_for_line(&format!("echo/tcp: accepted client={address} builtin"));

    // Line by line while the connection stays open.
    for line in ["first", "second"] {
        client.write_all(format!("{line}\n").as_bytes()).unwrap();
        assert_eq!(read_line(&mut client), line);
    }
    // More than echo buffers, then the half-close: everything comes back, then EOF.
    let data = pattern(0, 1 << 20);
    let mut writer = client.try_clone().unwrap();
    let sent = data.clone();
    let sending = std::thread::spawn(move || {
        writer.write_all(&sent).expect("send to echo");
        writer.shutdown(Shutdown::Write).expect("half-close");
    });
    let echoed = read_all(&mut client);
    sending.join().unwrap();
    assert!(
        echoed == data,
        "echo returned {} bytes, not the 1 MiB sent",
        echoed.len()
    );

    let closed = daemon.wait_for_line(&format!("echo/tcp: closed client={address} duration="));
    assert!(closed.index > accepted.index);
    assert!(closed.field("duration").ends_with('s'));
}

#[test]
fn tcp_discard_reads_until_the_client_closes_and_answers_nothing() {
    let dir = TestDir::new("discard-tcp");
    let daemon = Daemon::start(
        &dir,
        &[
            Service::builtin("discard", "discard"),
            Service::builtin("echo", "echo"),
        ],
    );
    let mut client = daemon.connect("discard");
    let address = client.local_addr().unwrap();
    daemon.wait_for_line(&format!("discard/tcp: accepted client={address} builtin"));
    client.write_all(&pattern(0, 256 * 1024)).unwrap();
    // A round trip through another service: rinetd has had its turn at the discard connection.
    assert_eq!(daemon.request("echo", "sync"), "sync");
    let closed = format!("discard/tcp: closed client={address} ");
    assert_eq!(
        daemon.count_lines(&closed),
        0,
        "discard closed the connection before the client did"
    );
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(&mut client), b"", "discard answers nothing");
    daemon.wait_for_line(&closed);
}

#[test]
fn tcp_chargen_sends_rfc_864_lines_until_the_client_closes() {
    let dir = TestDir::new("chargen-tcp");
    let daemon = Daemon::start(&dir, &[Service::builtin("chargen", "chargen")]);
    let mut client = daemon.connect("chargen");
    let address = client.local_addr().unwrap();
    // 200 lines: the ring of 95 wraps twice.
    let mut received = vec![0u8; 200 * 74];
    client.read_exact(&mut received).expect("read chargen");
    let expected = chargen_stream(received.len());
    assert_eq!(
        &received[..74],
        b" !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefg\r\n"
    );
    assert!(received == expected, "chargen's stream is not RFC 864's");
    drop(client);
    daemon.wait_for_line(&format!("chargen/tcp: closed client={address} duration="));
}

#[test]
fn tcp_daytime_and_time_answer_once_and_close() {
    let dir = TestDir::new("daytime-time-tcp");
    let daemon = Daemon::start(
        &dir,
        &[
            Service::builtin("daytime", "daytime"),
            Service::builtin("time", "time"),
        ],
    );
    let before = unix_now();
    // The client sends nothing and never half-closes: the answer and the close come anyway.
    let mut daytime = daemon.connect("daytime");
    let daytime_answer = read_all(&mut daytime);
    let mut time = daemon.connect("time");
    let time_answer = read_all(&mut time);
    let after = unix_now();
    assert_daytime(&daytime_answer, before, after);
    assert_time(&time_answer, before, after);
    for (name, client) in [("daytime", &daytime), ("time", &time)] {
        let address = client.local_addr().unwrap();
        daemon.wait_for_line(&format!("{name}/tcp: accepted client={address} builtin"));
        daemon.wait_for_line(&format!("{name}/tcp: closed client={address} duration="));
    }
}

#[test]
fn every_builtin_answers_over_udp_on_ipv4_and_ipv6() {
    let dir = TestDir::new("builtins-udp");
    let daemon = Daemon::start(&dir, &every_builtin("udp"));
    let clients = [udp_client(), udp_socket_on((Ipv6Addr::LOCALHOST, 0).into())];
    for (index, client) in clients.iter().enumerate() {
        let at = |name: &str| daemon.addresses_of(name, "udp")[index];
        assert_eq!(at("echo").is_ipv6(), index == 1);
        client.send_to(b"into the void", at("discard")).unwrap();

        let payload = pattern(3, 1000);
        assert_eq!(udp_exchange(client, at("echo"), &payload), payload);

        let mut total = 0;
        for _ in 0..20 {
            let reply = udp_exchange(client, at("chargen"), b"");
            assert!(reply.len() <= 512, "chargen sent {} bytes", reply.len());
            assert_eq!(reply, chargen_stream(reply.len()));
            total += reply.len();
        }
        assert!(total > 0, "20 chargen replies, all empty");

        let before = unix_now();
        let daytime = udp_exchange(client, at("daytime"), b"what time is it?");
        let time = udp_exchange(client, at("time"), b"");
        let after = unix_now();
        assert_daytime(&daytime, before, after);
        assert_time(&time, before, after);

        // The discard datagram went first: a reply to it would have come before this one
        // (`udp_exchange` checks each reply's sender).
        assert_eq!(udp_exchange(client, at("echo"), b"last"), b"last");
        assert!(!has_datagram(client), "an unexpected datagram");
    }
    assert_eq!(
        daemon.count_lines("/udp: accepted"),
        0,
        "UDP builtins log nothing per datagram"
    );
}

#[test]
fn udp_builtins_drop_datagrams_from_the_ports_of_answering_services() {
    if !is_root() {
        eprintln!("skipped: binding UDP source ports 7, 19 and 37 needs root");
        return;
    }
    let dir = TestDir::new("builtins-udp-loops");
    let services: Vec<Service> = ["echo", "chargen"]
        .iter()
        .map(|name| Service::builtin(name, name).set("protocol", "udp"))
        .collect();
    let daemon = Daemon::start(&dir, &services);
    let echo = daemon.udp_address("echo");
    let chargen = daemon.udp_address("chargen");

    let mut low_ports = Vec::new();
    for port in [7, 19, 37] {
        match UdpSocket::bind(("127.0.0.1", port)) {
            Ok(socket) => low_ports.push(socket),
            Err(err) => eprintln!("127.0.0.1:{port} unavailable ({err}), not tested"),
        }
    }
    assert!(
        !low_ports.is_empty(),
        "none of the low ports could be bound"
    );
    for socket in &low_ports {
        socket.send_to(b"loop?", echo).unwrap();
        socket.send_to(b"loop?", chargen).unwrap();
    }
    // Each service reads its datagrams in order: once these are answered, the others are done.
    let client = udp_client();
    assert_eq!(udp_exchange(&client, echo, b"fine"), b"fine");
    udp_exchange(&client, chargen, b"fine");
    for socket in &low_ports {
        assert!(
            !has_datagram(socket),
            "a builtin answered source port {}",
            socket.local_addr().unwrap().port()
        );
    }
}

/// The echo builtin reads queued datagrams in batches (recvmmsg/sendmmsg): a burst from
/// several clients, more than one batch, large and small, each gets its own datagram back,
/// in order, from the service's address.
#[test]
fn udp_echo_answers_a_burst_from_several_clients_each_with_its_own_datagram() {
    let dir = TestDir::new("builtins-udp-burst");
    let daemon = Daemon::start(
        &dir,
        &[Service::builtin("echo", "echo").set("protocol", "udp")],
    );
    let echo = daemon.udp_address("echo");
    let clients: Vec<UdpSocket> = (0..4).map(|_| udp_client()).collect();
    let payload = |client: usize, round: usize| -> Vec<u8> {
        let size = match (client, round) {
            (0, 2) => 60_000,
            _ => 1 + 97 * (client * 5 + round),
        };
        (0..size).map(|i| (i + client * 7 + round) as u8).collect()
    };
    for round in 0..5 {
        for (index, client) in clients.iter().enumerate() {
            client.send_to(&payload(index, round), echo).unwrap();
        }
    }
    for round in 0..5 {
        for (index, client) in clients.iter().enumerate() {
            let reply = receive_from(client, echo);
            assert!(
                reply == payload(index, round),
                "client {index}, datagram {round}: {} bytes back for {}",
                reply.len(),
                payload(index, round).len()
            );
        }
    }
    for client in &clients {
        assert!(!has_datagram(client), "an unexpected datagram");
    }
}

#[test]
fn udp_builtin_drops_datagrams_refused_by_the_acl() {
    let dir = TestDir::new("builtins-udp-acl");
    let daemon = Daemon::start(
        &dir,
        &[
            Service::builtin("closed", "echo")
                .set("protocol", "udp")
                .set("no_access", "[127.0.0.0/8]"),
            udp_sync_service(),
        ],
    );
    let client = udp_client();
    let address = client.local_addr().unwrap();
    client
        .send_to(b"let me in", daemon.udp_address("closed"))
        .unwrap();
    daemon.wait_for_line(&format!(
        "closed/udp: refused client={address} reason=no_access"
    ));
    udp_sync(&daemon, &client);
    assert!(!has_datagram(&client), "a refused datagram was answered");
}

/// A connection to echo service `name`, shown to be served by one line echoed.
fn open_echo(daemon: &Daemon, name: &str) -> TcpStream {
    let mut client = daemon.connect(name);
    client.write_all(b"open\n").unwrap();
    assert_eq!(read_line(&mut client), "open");
    client
}

#[test]
fn tcp_builtins_obey_only_from_and_no_access() {
    let dir = TestDir::new("builtins-acl");
    let daemon = Daemon::start(
        &dir,
        &[
            Service::builtin("outsiders", "daytime").set("only_from", "[10.0.0.0/8]"),
            Service::builtin("denied", "echo").set("no_access", "[\"127.0.0.1\"]"),
            Service::builtin("insiders", "echo").set("only_from", "[127.0.0.0/8]"),
        ],
    );
    assert_refused(&daemon, "outsiders", "only_from");
    assert_refused(&daemon, "denied", "no_access");
    assert_eq!(daemon.request("insiders", "welcome"), "welcome");
}

#[test]
fn tcp_builtin_per_source_refuses_a_second_concurrent_connection() {
    let dir = TestDir::new("builtins-per-source");
    let service = Service::builtin("echo", "echo").set("per_source", "1");
    let daemon = Daemon::start(&dir, &[service]);
    let first = open_echo(&daemon, "echo");
    assert_refused(&daemon, "echo", "per_source");

    let address = first.local_addr().unwrap();
    assert_eq!(exchange(first, "bye"), "bye");
    daemon.wait_for_line(&format!("echo/tcp: closed client={address} "));
    assert_eq!(daemon.request("echo", "again"), "again");
}

#[test]
fn tcp_builtin_max_children_holds_the_next_connection_in_the_backlog() {
    let dir = TestDir::new("builtins-max-children");
    let service = Service::builtin("echo", "echo").set("max_children", "1");
    let daemon = Daemon::start(&dir, &[service]);
    let first = open_echo(&daemon, "echo");
    let paused = daemon.wait_for_line("echo/tcp: paused reason=max_children running=1");

    let mut second = daemon.connect("echo");
    second.write_all(b"two\n").unwrap();
    let first_address = first.local_addr().unwrap();
    assert_eq!(exchange(first, ""), "");
    let closed = daemon.wait_for_line(&format!("echo/tcp: closed client={first_address} "));
    assert_eq!(read_line(&mut second), "two");
    let second_address = second.local_addr().unwrap();
    let accepted = daemon.wait_for_line(&format!(
        "echo/tcp: accepted client={second_address} builtin"
    ));
    let resumed = daemon.wait_for_line_after(&paused, "echo/tcp: resumed");
    assert!(
        accepted.index > closed.index && accepted.index > resumed.index,
        "the second connection was served while the first held the only place"
    );
}

/// Writes the counting pattern to `client` without ever reading, until it accepts nothing more
/// for a while (rinetd stopped reading and every buffer on the way is full); returns what was
/// written. Fails once `limit` bytes got through: nobody pushes back.
fn write_until_stuck(client: &mut TcpStream, limit: usize) -> Vec<u8> {
    client.set_nonblocking(true).unwrap();
    let mut written = Vec::new();
    let chunk = pattern(0, 251 * 256);
    loop {
        assert!(
            written.len() < limit,
            "{limit} bytes written and echo still reads: no flow control"
        );
        let offset = written.len() % 251;
        match client.write(&chunk[offset..]) {
            Ok(n) => written.extend_from_slice(&chunk[offset..offset + n]),
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                let mut fds = [PollFd::new(client.as_fd(), PollFlags::POLLOUT)];
                if poll(&mut fds, PollTimeout::from(300u16)).expect("poll") == 0 {
                    break;
                }
            }
            Err(err) => panic!("writing to echo: {err}"),
        }
    }
    client.set_nonblocking(false).unwrap();
    written
}

/// The services a stuck client must not stall: a handler, another builtin, and another
/// connection to the builtin the stuck client uses.
fn bystanders(dir: &TestDir, stuck: Service) -> Vec<Service> {
    let hello = dir.script("hello.sh", "echo hello");
    vec![
        stuck,
        Service::new("hello", &hello),
        Service::builtin("daytime", "daytime"),
    ]
}

fn assert_bystanders_answer(daemon: &Daemon) {
    assert_eq!(daemon.request("hello", ""), "hello\n");
    let mut daytime = daemon.connect("daytime");
    assert!(read_to_eof(&mut daytime).ends_with("\r\n"));
}

#[test]
fn echo_stops_reading_from_a_client_that_never_reads_and_stalls_nothing() {
    let dir = TestDir::new("echo-flow-control");
    let daemon = Daemon::start(&dir, &bystanders(&dir, Service::builtin("echo", "echo")));
    let mut stuck = daemon.connect("echo");
    let written = write_until_stuck(&mut stuck, 256 << 20);

    assert_bystanders_answer(&daemon);
    assert_eq!(daemon.request("echo", "me too"), "me too");

    // Nothing was lost while it was stuck: all of it comes back, in order.
    stuck.shutdown(Shutdown::Write).unwrap();
    let echoed = read_all(&mut stuck);
    assert_eq!(echoed.len(), written.len(), "echo lost or added bytes");
    assert!(
        echoed == written,
        "echo returned other bytes than it was sent"
    );
}

/// Bytes received on `client` and not read yet.
fn queued_bytes(client: &TcpStream) -> usize {
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONREAD stores one c_int through the pointer, which points to one.
    let result = unsafe { libc::ioctl(client.as_raw_fd(), libc::FIONREAD, &mut queued) };
    assert_eq!(result, 0, "FIONREAD: {}", std::io::Error::last_os_error());
    queued as usize
}

#[test]
fn chargen_to_a_client_that_never_reads_stalls_nothing() {
    let dir = TestDir::new("chargen-flow-control");
    let daemon = Daemon::start(
        &dir,
        &bystanders(&dir, Service::builtin("chargen", "chargen")),
    );
    let mut stuck = daemon.connect("chargen");
    // Full: what waits for us has stopped growing.
    let mut last = 0;
    wait_until("chargen fills the client's buffer", || {
        let queued = queued_bytes(&stuck);
        let full = queued > 0 && queued == last;
        last = queued;
        full
    });

    assert_bystanders_answer(&daemon);
    let mut other = daemon.connect("chargen");
    let mut line = vec![0u8; 74];
    other.read_exact(&mut line).unwrap();
    assert_eq!(line, chargen_stream(74));
    drop(other);

    // The stuck client resumes with the stream intact.
    let mut received = vec![0u8; 2 * last];
    stuck.read_exact(&mut received).expect("read chargen");
    assert!(
        received == chargen_stream(received.len()),
        "chargen's stream broke"
    );
}

#[test]
fn stop_closes_builtin_connections_at_once() {
    let dir = TestDir::new("builtins-stop");
    let mut daemon = Daemon::start(
        &dir,
        &[
            Service::builtin("chargen", "chargen"),
            Service::builtin("echo", "echo"),
        ],
    );
    let mut chargen = daemon.connect("chargen");
    chargen.peek(&mut [0u8; 1]).expect("chargen sends");
    let mut echo = open_echo(&daemon, "echo");

    assert!(daemon.stop().success(), "rinetd did not stop cleanly");
    assert_eq!(
        read_to_eof(&mut echo),
        "",
        "the echo connection outlived rinetd"
    );
    // chargen's stream ends (EOF, or a reset once rinetd is gone).
    let mut rest = Vec::new();
    match chargen.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(err) => assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}"),
    }
}
