//! `wait: true`: the bound socket itself (udp, tcp, unix) is handed to one handler as fd 0, 1 and
//! 3 with LISTEN_FDS=1, LISTEN_PID and LISTEN_FDNAMES (systemd socket activation); rinetd leaves
//! it alone until the handler exits, and drops a triggering datagram the handler left unread.

use std::io::{BufRead, BufReader, Write};
use std::net::UdpSocket;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use crate::harness::{
    DEADLINE, Daemon, LogLine, Service, TestDir, has_datagram, receive_from, udp_client,
    udp_exchange, udp_sync, udp_sync_service,
};

/// What a handler checks about what it was handed, as `key=value` words after its answer.
const CHECKS: &str = r#"
import os, socket, sys, time

def checks(sock, kind):
    same = all(os.fstat(fd).st_ino == os.fstat(3).st_ino for fd in (0, 1))
    return "pid_ok=%s fds=%s names=%s same=%s kind=%s" % (
        os.environ.get("LISTEN_PID") == str(os.getpid()),
        os.environ.get("LISTEN_FDS"),
        os.environ.get("LISTEN_FDNAMES"),
        same,
        sock.type == kind,
    )

def wait_for(gate):
    while gate and not os.path.exists(gate):
        time.sleep(0.02)

gate = sys.argv[1] if len(sys.argv) > 1 else None
"#;

/// What `CHECKS` reports for a handler of service `name` handed the right socket.
fn checks_pass(name: &str) -> String {
    format!("pid_ok=True fds=1 names={name} same=True kind=True")
}

/// A datagram handler: reads one datagram from fd 3, answers it, then waits for its gate (the
/// file named by its first argument, if any) before exiting.
fn udp_handler(dir: &TestDir) -> PathBuf {
    let body = r#"
sock = socket.socket(fileno=3)
data, peer = sock.recvfrom(65536)
sock.sendto(data + b" " + checks(sock, socket.SOCK_DGRAM).encode(), peer)
wait_for(gate)
"#;
    dir.write(
        "udp-wait.py",
        &format!("#!/usr/bin/env python3\n{CHECKS}{body}"),
        0o755,
    )
}

/// A stream handler: accepts one connection on fd 3, answers its first line, closes it, exits.
fn stream_handler(dir: &TestDir) -> PathBuf {
    let body = r#"
sock = socket.socket(fileno=3)
listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
connection, _ = sock.accept()
line = connection.makefile("rb").readline().strip()
report = checks(sock, socket.SOCK_STREAM) + " listening=%s" % listening
connection.sendall(line + b" " + report.encode() + b"\n")
connection.close()
"#;
    dir.write(
        "stream-wait.py",
        &format!("#!/usr/bin/env python3\n{CHECKS}{body}"),
        0o755,
    )
}

fn udp_wait(name: &str, server: &Path) -> Service {
    // No `wait:` key: udp with a server defaults to wait: true.
    Service::new(name, server).set("protocol", "udp")
}

/// A udp wait service of `udp_handler` that exits only once its gate (the returned path) exists.
fn gated_udp_wait(dir: &TestDir, name: &str) -> (Service, PathBuf) {
    let gate = dir.join("open");
    let args = format!("[udp-wait.py, \"{}\"]", gate.display());
    (udp_wait(name, &udp_handler(dir)).set("args", &args), gate)
}

/// The `handed over` lines of `label` (`name/proto`) so far.
fn handed_over(daemon: &Daemon, label: &str) -> usize {
    daemon.count_lines(&format!("{label}: handed over pid="))
}

/// After a round trip from `client` through the sync service (rinetd has handled what came
/// before), `label` has still started exactly one handler.
fn assert_one_handler_after_sync(daemon: &Daemon, client: &UdpSocket, label: &str, why: &str) {
    udp_sync(daemon, client);
    assert_eq!(handed_over(daemon, label), 1, "{why}");
}

#[test]
fn udp_wait_handler_gets_the_socket_as_fds_0_1_and_3_and_one_handler_per_trigger() {
    let dir = TestDir::new("udp-wait");
    let daemon = Daemon::start(&dir, &[udp_wait("tftp", &udp_handler(&dir))]);
    let service = daemon.udp_address("tftp");
    let mut previous: Option<LogLine> = None;
    for round in ["first", "second"] {
        let reply = udp_exchange(&udp_client(), service, round.as_bytes());
        assert_eq!(
            String::from_utf8_lossy(&reply),
            format!("{round} {}", checks_pass("tftp"))
        );
        let handed = match &previous {
            None => daemon.wait_for_line("tftp/udp: handed over pid="),
            Some(before) => daemon.wait_for_line_after(before, "tftp/udp: handed over pid="),
        };
        daemon.wait_for_line(&format!("tftp/udp: exited pid={} status=0 ", handed.pid()));
        previous = Some(handed);
    }
    assert_eq!(handed_over(&daemon, "tftp/udp"), 2);
    assert_eq!(daemon.count_lines("dropped the datagram"), 0);
}

#[test]
fn udp_wait_drops_the_trigger_a_handler_left_unread_and_is_not_restarted_for_it() {
    let dir = TestDir::new("udp-wait-unread");
    let script = dir.script("quitter.sh", "exit 1");
    let daemon = Daemon::start(&dir, &[udp_wait("quitter", &script), udp_sync_service()]);
    let service = daemon.udp_address("quitter");
    let client = udp_client();
    let local = client.local_addr().unwrap();
    let dropped =
        format!("quitter/udp: dropped the datagram the handler left unread client={local}");

    client.send_to(b"never read", service).unwrap();
    let first_drop = daemon.wait_for_line(&dropped);
    assert_one_handler_after_sync(
        &daemon,
        &client,
        "quitter/udp",
        "a handler was restarted for a datagram already dropped",
    );

    client.send_to(b"a new one", service).unwrap();
    let second_drop = daemon.wait_for_line_after(&first_drop, &dropped);
    let handed = daemon.wait_for_line_after(&first_drop, "quitter/udp: handed over pid=");
    assert!(handed.index < second_drop.index);
    assert_eq!(handed_over(&daemon, "quitter/udp"), 2);
    assert!(!has_datagram(&client), "the quitter answered");
}

#[test]
fn udp_wait_leaves_the_socket_alone_while_the_handler_runs_and_keeps_later_datagrams() {
    let dir = TestDir::new("udp-wait-busy");
    let (service, gate) = gated_udp_wait(&dir, "busy");
    let daemon = Daemon::start(&dir, &[service, udp_sync_service()]);
    let address = daemon.udp_address("busy");
    let expected = |payload: &str| format!("{payload} {}", checks_pass("busy"));

    let first = udp_client();
    let reply = udp_exchange(&first, address, b"first");
    assert_eq!(String::from_utf8_lossy(&reply), expected("first"));
    // The handler holds the socket (waiting for its gate) and reads nothing more.
    let second = udp_client();
    second.send_to(b"second", address).unwrap();
    assert_one_handler_after_sync(
        &daemon,
        &second,
        "busy/udp",
        "rinetd started a second handler while the first held the socket",
    );

    std::fs::write(&gate, "").unwrap();
    let reply = receive_from(&second, address);
    assert_eq!(String::from_utf8_lossy(&reply), expected("second"));
    daemon.assert_line_count("busy/udp: handed over pid=", 2);
    assert_eq!(
        daemon.count_lines("dropped the datagram"),
        0,
        "a datagram the handler read, or one that came later, was dropped"
    );
}

/// Sends `line` on `client` and returns the handler's one-line answer.
fn ask(mut client: impl std::io::Read + Write, line: &str) -> String {
    client.write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut answer = String::new();
    BufReader::new(client)
        .read_line(&mut answer)
        .expect("read the answer");
    answer
}

fn stream_answer(name: &str, line: &str) -> String {
    format!("{line} {} listening=True\n", checks_pass(name))
}

#[test]
fn tcp_wait_handler_accepts_on_the_handed_listening_socket_and_is_restarted() {
    let dir = TestDir::new("tcp-wait");
    let service = Service::new("stream", &stream_handler(&dir)).set("wait", "true");
    let daemon = Daemon::start(&dir, &[service]);
    for line in ["first", "second"] {
        assert_eq!(
            ask(daemon.connect("stream"), line),
            stream_answer("stream", line)
        );
    }
    assert_eq!(handed_over(&daemon, "stream/tcp"), 2);
    assert_eq!(
        daemon.count_lines("stream/tcp: accepted"),
        0,
        "rinetd accepted on a wait: true socket"
    );
}

#[test]
fn unix_wait_handler_accepts_on_the_handed_listening_socket_and_is_restarted() {
    let dir = TestDir::new("unix-wait");
    let path = dir.join("wait.sock");
    let service = Service::unix("local", &stream_handler(&dir), &path).set("wait", "true");
    let daemon = Daemon::start(&dir, &[service]);
    for line in ["first", "second"] {
        let client = UnixStream::connect(&path).expect("connect to the UNIX socket");
        client.set_read_timeout(Some(DEADLINE)).unwrap();
        assert_eq!(ask(client, line), stream_answer("local", line));
    }
    assert_eq!(handed_over(&daemon, "local/unix"), 2);
}

#[test]
fn tcp_wait_handler_failing_at_once_is_restarted_only_after_a_backoff() {
    let dir = TestDir::new("tcp-wait-failing");
    let marker = dir.join("failed-once");
    let handler = stream_handler(&dir);
    // Fails at once the first time (leaving the client in the backlog), serves the second time.
    let script = dir.script(
        "flaky.sh",
        &format!(
            "if [ ! -e {marker} ]; then touch {marker}; exit 1; fi\nexec {handler}",
            marker = marker.display(),
            handler = handler.display()
        ),
    );
    let service = Service::new("flaky", &script).set("wait", "true");
    let daemon = Daemon::start(&dir, &[service]);
    let client = daemon.connect("flaky");
    let answer = ask(client, "patience");
    assert_eq!(answer, stream_answer("flaky", "patience"));

    let failed = daemon.wait_for_line(
        "flaky/tcp: wait handler failed error=\"the handler exited at once with clients waiting\" backoff=1s",
    );
    let second = daemon.wait_for_line_after(&failed, "flaky/tcp: handed over pid=");
    daemon.wait_for_line(&format!("flaky/tcp: exited pid={} status=0 ", second.pid()));
    assert_eq!(handed_over(&daemon, "flaky/tcp"), 2, "restarted in a loop");
}

#[test]
fn tcp_wait_handler_exiting_0_without_accepting_is_not_restarted_in_a_loop() {
    let dir = TestDir::new("tcp-wait-true");
    let service = Service::new("lazy", std::path::Path::new("/bin/true")).set("wait", "true");
    let daemon = Daemon::start(&dir, &[service]);
    let _client = daemon.connect("lazy");
    // A clean exit with the client still waiting is as suspect as a failure.
    let held_back = daemon.wait_for_line("lazy/tcp: wait handler failed error=");
    assert!(held_back.text.contains("backoff=1s"), "{}", held_back.text);
    assert_eq!(
        handed_over(&daemon, "lazy/tcp"),
        1,
        "not restarted before the delay"
    );
}

#[test]
fn udp_wait_keeps_an_identical_datagram_that_arrived_later() {
    // A client retransmitting the same request (TFTP, DNS): the copy that arrived while the
    // first handler ran is a later datagram, not the trigger the handler left unread.
    let dir = TestDir::new("udp-wait-retransmit");
    let (service, gate) = gated_udp_wait(&dir, "tftp");
    let daemon = Daemon::start(&dir, &[service]);
    let address = daemon.udp_address("tftp");
    let client = udp_client();
    let expected = format!("RRQ file {}", checks_pass("tftp"));

    let reply = udp_exchange(&client, address, b"RRQ file");
    assert_eq!(String::from_utf8_lossy(&reply), expected);
    client.send_to(b"RRQ file", address).unwrap();
    std::fs::write(&gate, "").unwrap();
    let reply = receive_from(&client, address);
    assert_eq!(String::from_utf8_lossy(&reply), expected);
    assert_eq!(daemon.count_lines("dropped the datagram"), 0);
}

/// A datagram handler that turns on IP_PKTINFO on the socket it was handed (as tftpd-hpa does),
/// so that every later datagram carries a control message rinetd did not ask for. It answers
/// one datagram; with a marker path as its argument, only the first time (the marker then
/// exists), after which it exits leaving its trigger unread.
fn pktinfo_handler(dir: &TestDir) -> PathBuf {
    let body = r#"
sock = socket.socket(fileno=3)
sock.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_PKTINFO", 8), 1)
marker = sys.argv[1] if len(sys.argv) > 1 else None
if marker is None or not os.path.exists(marker):
    if marker:
        open(marker, "w").close()
    data, peer = sock.recvfrom(65536)
    sock.sendto(b"got " + data, peer)
"#;
    dir.write(
        "pktinfo.py",
        &format!("#!/usr/bin/env python3\n{CHECKS}{body}"),
        0o755,
    )
}

#[test]
fn udp_wait_service_goes_deaf_after_a_handler_turned_on_ip_pktinfo() {
    let dir = TestDir::new("udp-wait-pktinfo");
    let daemon = Daemon::start(&dir, &[udp_wait("tftp", &pktinfo_handler(&dir))]);
    let address = daemon.udp_address("tftp");
    for round in ["first", "second", "third"] {
        let reply = udp_exchange(&udp_client(), address, round.as_bytes());
        assert_eq!(String::from_utf8_lossy(&reply), format!("got {round}"));
    }
    assert_eq!(handed_over(&daemon, "tftp/udp"), 3);
}

#[test]
fn udp_wait_unread_trigger_is_dropped_after_a_handler_turned_on_ip_pktinfo() {
    let dir = TestDir::new("udp-wait-pktinfo-unread");
    let marker = dir.join("answered-once");
    let args = format!("[pktinfo.py, \"{}\"]", marker.display());
    let service = udp_wait("lazy", &pktinfo_handler(&dir)).set("args", &args);
    let daemon = Daemon::start(&dir, &[service, udp_sync_service()]);
    let address = daemon.udp_address("lazy");
    let client = udp_client();
    let local = client.local_addr().unwrap();
    // The first handler answers and leaves IP_PKTINFO on: every later datagram carries it.
    assert_eq!(udp_exchange(&client, address, b"first"), b"got first");
    client.send_to(b"never read", address).unwrap();
    daemon.wait_for_line(&format!(
        "lazy/udp: dropped the datagram the handler left unread client={local}"
    ));
    udp_sync(&daemon, &client);
    assert_eq!(
        handed_over(&daemon, "lazy/udp"),
        2,
        "a handler was restarted for a datagram already dropped"
    );
}

#[test]
fn a_wait_handler_that_keeps_failing_waits_1_then_2_then_4_seconds() {
    let dir = TestDir::new("tcp-wait-doubling");
    let service = Service::new("lazy", std::path::Path::new("/bin/false")).set("wait", "true");
    let daemon = Daemon::start(&dir, &[service]);
    let _client = daemon.connect("lazy");
    let mut after = daemon.wait_for_line("lazy/tcp: wait handler failed error=");
    let mut delays = vec![after.field("backoff")];
    for _ in 0..2 {
        after = daemon.wait_for_line_after_within(
            &after,
            "lazy/tcp: wait handler failed error=",
            std::time::Duration::from_secs(15),
        );
        delays.push(after.field("backoff"));
    }
    assert_eq!(delays, ["1s", "2s", "4s"]);
}
