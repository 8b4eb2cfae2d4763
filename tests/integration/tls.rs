//! `tls:` on the real daemon: handlers and builtins behind TLS, reached by real clients (`curl`,
//! `socat`, `openssl s_client`) and through a real `haproxy` sending PROXY headers. The engine's
//! own corner cases (half-closes, back-pressure in each direction, every load error) are tested
//! without the daemon in `src/tls/loopback_tests.rs`; these tests check the wiring: environment,
//! log lines, SNI, client certificates, handshake deadlines, reloads and large transfers.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{
    DEADLINE, Daemon, Service, TestDir, connect, established_on, leave_free_descriptors,
    read_to_eof, restore_nofile, wait_until, wait_until_stalled,
};

/// Runs the openssl CLI in `dir`; panics with its stderr when it fails.
fn openssl(dir: &TestDir, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(&dir.path)
        .stdin(Stdio::null())
        .output()
        .expect("the openssl CLI is needed by the TLS tests (make deps installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
];

/// A CA `<ca>.pem`/`<ca>.key` made fresh for the test (no key is ever committed).
fn make_ca(dir: &TestDir, ca: &str) {
    let (pem, key, subject) = (
        format!("{ca}.pem"),
        format!("{ca}.key"),
        format!("/CN=rinetd test {ca}"),
    );
    let mut args = vec!["req", "-x509", "-days", "2", "-subj", &subject];
    args.extend(EC_KEY);
    args.extend(["-keyout", &key, "-out", &pem]);
    openssl(dir, &args);
}

/// A leaf `<name>.pem`/`<name>.key` signed by `<ca>`, with `extension` (a subjectAltName for
/// servers, an extendedKeyUsage for clients: webpki takes X.509 v3 only).
fn issue(dir: &TestDir, ca: &str, name: &str, subject: &str, extension: &str) {
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    let mut req = vec![
        "req", "-new", "-subj", subject, "-keyout", &key, "-out", &csr, "-addext", extension,
    ];
    req.extend(EC_KEY);
    openssl(dir, &req);
    let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-copy_extensions",
            "copy",
            "-out",
            &pem,
        ],
    );
}

/// `ca` and a `localhost` leaf it signed.
fn make_localhost(dir: &TestDir) {
    make_ca(dir, "ca");
    issue(
        dir,
        "ca",
        "localhost",
        "/CN=localhost",
        "subjectAltName=DNS:localhost",
    );
}

/// The `tls:` value (YAML flow mapping) serving `localhost.pem`, plus `extra` keys.
fn tls_value(dir: &TestDir, extra: &str) -> String {
    let mut value = format!(
        "{{cert: {}, key: {}",
        dir.join("localhost.pem").display(),
        dir.join("localhost.key").display()
    );
    if !extra.is_empty() {
        value.push_str(", ");
        value.push_str(extra);
    }
    value.push('}');
    value
}

/// A handler printing an HTTP answer with the TLS variables it was given as its body.
fn env_over_http(dir: &TestDir) -> std::path::PathBuf {
    dir.script(
        "env.sh",
        "read request\n\
         printf 'HTTP/1.0 200 OK\\r\\nContent-Type: text/plain\\r\\n\\r\\n'\n\
         env | grep -E '^(SSL_|REMOTE_|TCPREMOTE)' | sort",
    )
}

/// `curl` to `https://<name>:<port>/` resolved to 127.0.0.1, verifying against `ca`.
fn curl(dir: &TestDir, name: &str, port: u16, ca: &str, extra: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--http1.1", "--max-time", "10", "--cacert", ca])
        .args(["--resolve", &format!("{name}:{port}:127.0.0.1")])
        .args(extra)
        .arg(format!("https://{name}:{port}/"))
        .current_dir(&dir.path)
        .stdin(Stdio::null())
        .output()
        .expect("run curl")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "the client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The value of `NAME=value` in an `env` listing.
fn var<'a>(listing: &'a str, name: &str) -> Option<&'a str> {
    listing
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
}

#[test]
fn curl_reaches_a_handler_behind_tls_which_sees_the_session_in_its_environment() {
    let dir = TestDir::new("tls-curl");
    make_localhost(&dir);
    let env = env_over_http(&dir);
    let daemon = Daemon::start(
        &dir,
        &[Service::new("https", &env).set("tls", &tls_value(&dir, "alpn: [http/1.1]"))],
    );
    let port = daemon.port("https");

    let tls13 = stdout(&curl(&dir, "localhost", port, "ca.pem", &[]));
    assert_eq!(var(&tls13, "SSL_PROTOCOL"), Some("TLSv1.3"), "{tls13}");
    assert_eq!(var(&tls13, "SSL_TLS_SNI"), Some("localhost"), "{tls13}");
    assert_eq!(var(&tls13, "SSL_ALPN"), Some("http/1.1"), "{tls13}");
    assert_eq!(var(&tls13, "SSL_CLIENT_VERIFY"), Some("NONE"), "{tls13}");
    assert!(var(&tls13, "SSL_CIPHER").is_some_and(|c| c.starts_with("TLS_")));
    assert_eq!(var(&tls13, "REMOTE_ADDR"), Some("127.0.0.1"), "{tls13}");
    assert_eq!(var(&tls13, "SSL_CLIENT_S_DN"), None, "{tls13}");

    // TLS 1.2: the cipher is named as OpenSSL (and so mod_ssl) names it.
    let tls12 = stdout(&curl(
        &dir,
        "localhost",
        port,
        "ca.pem",
        &["--tls-max", "1.2"],
    ));
    assert_eq!(var(&tls12, "SSL_PROTOCOL"), Some("TLSv1.2"), "{tls12}");
    assert!(
        var(&tls12, "SSL_CIPHER").is_some_and(|c| c.starts_with("ECDHE-")),
        "{tls12}"
    );

    let accepted = daemon.wait_for_line("https/tcp: accepted client=127.0.0.1:");
    let summary = accepted.field("tls");
    assert!(
        summary.starts_with("TLSv1.3/TLS_") && summary.contains("sni=localhost"),
        "{summary}"
    );
    daemon.exited("https", &accepted);
}

#[test]
fn min_version_13_turns_a_tls12_client_away_without_starting_the_handler() {
    let dir = TestDir::new("tls-min-version");
    make_localhost(&dir);
    let env = env_over_http(&dir);
    let daemon = Daemon::start(
        &dir,
        &[Service::new("https", &env).set("tls", &tls_value(&dir, "min_version: \"1.3\""))],
    );
    let port = daemon.port("https");
    let refused = curl(&dir, "localhost", port, "ca.pem", &["--tls-max", "1.2"]);
    assert!(!refused.status.success(), "a TLS 1.2 client got through");
    let failed = daemon.wait_for_line("https/tcp: tls handshake failed client=127.0.0.1:");
    assert!(!failed.field("error").is_empty());
    // The service still serves a TLS 1.3 client, and the refused one started nothing.
    let served = stdout(&curl(&dir, "localhost", port, "ca.pem", &[]));
    assert_eq!(var(&served, "SSL_PROTOCOL"), Some("TLSv1.3"));
    let accepted = daemon.wait_for_line("https/tcp: accepted");
    assert!(accepted.index > failed.index);
    assert_eq!(daemon.count_lines("https/tcp: accepted"), 1);
}

#[test]
fn sni_chooses_the_certificate_and_names_without_a_match_get_the_default() {
    let dir = TestDir::new("tls-sni");
    make_localhost(&dir);
    issue(
        &dir,
        "ca",
        "other",
        "/CN=other.example",
        "subjectAltName=DNS:other.example,DNS:*.other.example",
    );
    let env = env_over_http(&dir);
    let sni = format!(
        "sni: [{{names: [other.example, \"*.other.example\"], cert: {}, key: {}}}]",
        dir.join("other.pem").display(),
        dir.join("other.key").display()
    );
    let daemon = Daemon::start(
        &dir,
        &[Service::new("https", &env).set("tls", &tls_value(&dir, &sni))],
    );
    let port = daemon.port("https");
    // curl checks the certificate against the name it asked for: success is the right one.
    for name in ["other.example", "www.other.example", "localhost"] {
        let answer = stdout(&curl(&dir, name, port, "ca.pem", &[]));
        assert_eq!(var(&answer, "SSL_TLS_SNI"), Some(name), "{answer}");
    }
    // A name no entry holds gets the default certificate, which curl then refuses.
    let other_name = curl(&dir, "nothing.example", port, "ca.pem", &[]);
    assert!(!other_name.status.success());
    assert!(
        String::from_utf8_lossy(&other_name.stderr).contains("nothing.example"),
        "{}",
        String::from_utf8_lossy(&other_name.stderr)
    );
}

#[test]
fn a_client_certificate_is_required_and_its_subject_reaches_the_handler() {
    let dir = TestDir::new("tls-mutual");
    make_localhost(&dir);
    make_ca(&dir, "clients");
    issue(
        &dir,
        "clients",
        "alice",
        "/O=Example/CN=alice",
        "extendedKeyUsage=clientAuth",
    );
    make_ca(&dir, "strangers");
    issue(
        &dir,
        "strangers",
        "mallory",
        "/CN=mallory",
        "extendedKeyUsage=clientAuth",
    );
    let env = env_over_http(&dir);
    let client_ca = format!("client_ca: {}", dir.join("clients.pem").display());
    let daemon = Daemon::start(
        &dir,
        &[Service::new("mutual", &env).set("tls", &tls_value(&dir, &client_ca))],
    );
    let port = daemon.port("mutual");

    let alice = stdout(&curl(
        &dir,
        "localhost",
        port,
        "ca.pem",
        &["--cert", "alice.pem", "--key", "alice.key"],
    ));
    assert_eq!(var(&alice, "SSL_CLIENT_VERIFY"), Some("SUCCESS"), "{alice}");
    assert_eq!(var(&alice, "SSL_CLIENT_S_DN_CN"), Some("alice"), "{alice}");
    assert_eq!(var(&alice, "SSL_CLIENT_S_DN"), Some("CN=alice,O=Example"));
    assert_eq!(
        var(&alice, "SSL_CLIENT_I_DN"),
        Some("CN=rinetd test clients")
    );
    // The fingerprint and serial are the ones openssl reads from the same certificate.
    let fingerprint = Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-fingerprint",
            "-sha256",
            "-serial",
            "-in",
        ])
        .arg(dir.join("alice.pem"))
        .output()
        .expect("run openssl x509");
    let fingerprint = String::from_utf8_lossy(&fingerprint.stdout).into_owned();
    let expected_sha256 = fingerprint
        .lines()
        .find_map(|line| line.split_once("Fingerprint=").map(|(_, hex)| hex))
        .expect("openssl prints a fingerprint")
        .replace(':', "")
        .to_lowercase();
    let expected_serial = fingerprint
        .lines()
        .find_map(|line| line.strip_prefix("serial="))
        .expect("openssl prints the serial");
    assert_eq!(
        var(&alice, "SSL_CLIENT_CERT_SHA256"),
        Some(expected_sha256.as_str())
    );
    assert_eq!(var(&alice, "SSL_CLIENT_M_SERIAL"), Some(expected_serial));
    let accepted = daemon.wait_for_line("mutual/tcp: accepted");
    assert!(accepted.field("tls").ends_with("/cn=alice"), "{accepted:?}");

    // Without a certificate, or with one from another CA: no handler, a logged failure.
    let anonymous = curl(&dir, "localhost", port, "ca.pem", &[]);
    assert!(!anonymous.status.success() || anonymous.stdout.is_empty());
    daemon.wait_for_line("mutual/tcp: tls handshake failed client=127.0.0.1:");
    let stranger = curl(
        &dir,
        "localhost",
        port,
        "ca.pem",
        &["--cert", "mallory.pem", "--key", "mallory.key"],
    );
    assert!(!stranger.status.success() || stranger.stdout.is_empty());
    wait_until("both refused handshakes are logged", || {
        daemon.count_lines("mutual/tcp: tls handshake failed") == 2
    });
    assert_eq!(daemon.count_lines("mutual/tcp: accepted"), 1);
}

/// `socat` sending `input` to the service on `port` over TLS (verified against `ca.pem`),
/// half-closing, and writing what comes back to `output`.
fn tls_transfer(dir: &TestDir, port: u16, input: &Path, output: &Path) -> Child {
    Command::new("socat")
        .args(["-T", "60", "-t", "60", "-b", "65536"])
        .arg("-")
        .arg(format!(
            "OPENSSL:127.0.0.1:{port},cafile=ca.pem,commonname=localhost"
        ))
        .stdin(fs::File::open(input).expect("open the payload"))
        .stdout(fs::File::create(output).expect("create the output file"))
        .stderr(Stdio::piped())
        .current_dir(&dir.path)
        .spawn()
        .expect("the socat client is needed by the TLS tests (make deps installs it)")
}

/// `len` pseudo-random bytes in `dir/name`.
fn payload(dir: &TestDir, name: &str, len: usize) -> std::path::PathBuf {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut bytes = Vec::with_capacity(len);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    let path = dir.join(name);
    fs::write(&path, bytes).expect("write the payload");
    path
}

fn finished(mut client: Child) {
    let status = wait_child(&mut client, Duration::from_secs(60));
    let mut stderr = String::new();
    if let Some(mut pipe) = client.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    assert!(status, "the client failed: {stderr}");
}

/// Waits for `child` up to `within`; true when it exited successfully.
fn wait_child(child: &mut Child, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait for the client") {
            return status.success();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the client did not finish within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn fifty_mib_each_way_through_a_handler_and_a_builtin_arrive_byte_exact() {
    let dir = TestDir::new("tls-50mib");
    make_localhost(&dir);
    let cat = dir.script("cat.sh", "exec cat");
    let tls = tls_value(&dir, "");
    let daemon = Daemon::start(
        &dir,
        &[
            Service::new("cat", &cat).set("tls", &tls),
            Service::builtin("echo", "echo").set("tls", &tls),
        ],
    );
    let sent = payload(&dir, "sent", 50 << 20);
    let expected = fs::read(&sent).unwrap();
    for service in ["cat", "echo"] {
        let received = dir.join(&format!("received-{service}"));
        finished(tls_transfer(&dir, daemon.port(service), &sent, &received));
        let got = fs::read(&received).unwrap();
        assert_eq!(got.len(), expected.len(), "{service}: length");
        assert!(got == expected, "{service}: the bytes differ");
    }
    daemon.wait_for_line("cat/tcp: exited pid=");
    daemon.wait_for_line("echo/tcp: closed client=");
}

/// `rinetd`'s resident set in KiB.
fn resident_kib(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

#[test]
fn a_handler_that_does_not_read_pushes_back_on_the_client_instead_of_growing_rinetd() {
    let dir = TestDir::new("tls-pushback");
    make_localhost(&dir);
    // The handler reads nothing until the test creates `go`, then echoes everything.
    let go = dir.join("go");
    let slow = dir.script(
        "slow.sh",
        &format!(
            // At most a minute: a failed test must not leave it behind for ever.
            "i=0; while [ ! -e {} ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i + 1)); done\nexec cat",
            go.display()
        ),
    );
    let daemon = Daemon::start(
        &dir,
        &[Service::new("slow", &slow).set("tls", &tls_value(&dir, ""))],
    );
    let port = daemon.port("slow");
    let before = resident_kib(daemon.pid());
    let sent = payload(&dir, "sent", 50 << 20);
    let received = dir.join("received");
    let client = tls_transfer(&dir, port, &sent, &received);
    daemon.wait_for_line("slow/tcp: accepted");
    // rinetd stops reading the client once its bounded buffer toward the handler is full: the
    // kernel queue in front of it fills up instead of rinetd's memory.
    wait_until_stalled("rinetd stops reading the client", || {
        established_on(port).iter().map(|q| q.receive).sum()
    });
    let held = resident_kib(daemon.pid());
    assert!(
        held < before + 8 * 1024,
        "rinetd grew from {before} KiB to {held} KiB while the handler read nothing"
    );
    fs::write(&go, "").unwrap();
    finished(client);
    assert!(fs::read(&received).unwrap() == fs::read(&sent).unwrap());
}

#[test]
fn a_stalled_handshake_is_closed_at_handshake_timeout_while_others_are_served() {
    let dir = TestDir::new("tls-stalled");
    make_localhost(&dir);
    let env = env_over_http(&dir);
    let daemon = Daemon::start(
        &dir,
        &[Service::new("https", &env).set("tls", &tls_value(&dir, "handshake_timeout: 1s"))],
    );
    let port = daemon.port("https");
    let mut silent = connect((Ipv4Addr::LOCALHOST, port).into());
    // Half a ClientHello: a client that stalls mid-handshake.
    silent
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    let served = stdout(&curl(&dir, "localhost", port, "ca.pem", &[]));
    assert_eq!(var(&served, "SSL_PROTOCOL"), Some("TLSv1.3"));
    let started = Instant::now();
    assert_eq!(read_to_eof(&mut silent), "", "the stalled client got bytes");
    assert!(started.elapsed() < DEADLINE);
    let failed = daemon.wait_for_line("https/tcp: tls handshake failed");
    assert_eq!(
        failed.field("client"),
        silent.local_addr().unwrap().to_string()
    );
    assert_eq!(daemon.count_lines("https/tcp: accepted"), 1);
}

#[test]
fn a_reload_reads_new_certificates_and_open_connections_keep_theirs() {
    let dir = TestDir::new("tls-reload");
    make_localhost(&dir);
    let cat = dir.script("cat.sh", "exec cat");
    let env = env_over_http(&dir);
    let tls = tls_value(&dir, "");
    let services = [
        Service::new("https", &env).set("tls", &tls),
        Service::new("cat", &cat).set("tls", &tls),
    ];
    let daemon = Daemon::start(&dir, &services);
    let (https, cat_port) = (daemon.port("https"), daemon.port("cat"));

    // A connection open across the reload, to a `cat` handler, fed through a pipe.
    let mut open = Command::new("socat")
        .args(["-T", "30", "-"])
        .arg(format!(
            "OPENSSL:127.0.0.1:{cat_port},cafile=ca.pem,commonname=localhost"
        ))
        .current_dir(&dir.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run socat");
    let mut to_open = open.stdin.take().unwrap();
    let mut from_open = open.stdout.take().unwrap();
    to_open.write_all(b"before\n").unwrap();
    let mut line = [0u8; 7];
    from_open.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"before\n");

    // New CA, new leaf, same file names; the old CA no longer verifies the service.
    fs::rename(dir.join("ca.pem"), dir.join("old-ca.pem")).unwrap();
    make_localhost(&dir);
    let reloaded_before = daemon.count_lines("reloaded");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.pid()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait_until("the reload is logged", || {
        daemon.count_lines("reloaded") > reloaded_before
    });
    let fresh = stdout(&curl(&dir, "localhost", https, "ca.pem", &[]));
    assert_eq!(var(&fresh, "SSL_PROTOCOL"), Some("TLSv1.3"));
    let stale = curl(&dir, "localhost", https, "old-ca.pem", &[]);
    assert!(
        !stale.status.success(),
        "the old certificate is still served"
    );

    // The connection made before the reload still relays both ways, and ends cleanly.
    to_open.write_all(b"after!\n").unwrap();
    from_open.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"after!\n");
    drop(to_open);
    assert!(wait_child(&mut open, DEADLINE));
}

/// haproxy in the foreground, relaying `listen` to rinetd's `backend` port with a PROXY v2
/// header; None (the test skips) where haproxy is not installed.
fn haproxy(dir: &TestDir, listen: u16, backend: u16) -> Option<Child> {
    if Command::new("haproxy").arg("-v").output().is_err() {
        eprintln!("skipped: haproxy is not installed (make deps installs it)");
        return None;
    }
    let config = format!(
        "global\n  maxconn 64\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
         frontend front\n  bind 127.0.0.1:{listen}\n  default_backend back\n\
         backend back\n  server rinetd 127.0.0.1:{backend} send-proxy-v2\n"
    );
    let path = dir.write("haproxy.cfg", &config, 0o644);
    Some(
        Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy"),
    )
}

#[test]
fn behind_haproxy_the_proxy_header_comes_first_and_the_handler_sees_the_real_client() {
    let dir = TestDir::new("tls-haproxy");
    make_localhost(&dir);
    let env = env_over_http(&dir);
    let daemon = Daemon::start(
        &dir,
        &[Service::new("https", &env)
            .set("tls", &tls_value(&dir, ""))
            .set("proxy_protocol", "true")],
    );
    let front = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .unwrap()
        .port();
    let Some(mut haproxy) = haproxy(&dir, front, daemon.port("https")) else {
        return;
    };
    // Until haproxy listens, curl cannot connect (exit 7); then it must succeed.
    let mut answer = None;
    wait_until("haproxy relays a request", || {
        let output = curl(
            &dir,
            "localhost",
            front,
            "ca.pem",
            &["-w", "local_port=%{local_port}\n"],
        );
        if output.status.success() {
            answer = Some(String::from_utf8_lossy(&output.stdout).into_owned());
        }
        output.status.code() != Some(7)
    });
    let _ = haproxy.kill();
    let _ = haproxy.wait();
    let answer = answer.expect("curl through haproxy succeeded");
    let curl_port = var(&answer, "local_port").expect("curl printed its port");
    assert_eq!(var(&answer, "REMOTE_PORT"), Some(curl_port), "{answer}");
    assert_eq!(var(&answer, "SSL_PROTOCOL"), Some("TLSv1.3"), "{answer}");
    let accepted = daemon.wait_for_line("https/tcp: accepted");
    assert_eq!(accepted.field("client"), format!("127.0.0.1:{curl_port}"));
}

#[test]
fn the_metrics_builtin_behind_tls_is_scraped_by_curl_and_counts_failed_handshakes() {
    let dir = TestDir::new("tls-metrics");
    make_localhost(&dir);
    let daemon = Daemon::start(
        &dir,
        &[Service::builtin("metrics", "metrics").set("tls", &tls_value(&dir, ""))],
    );
    let port = daemon.port("metrics");
    // A client that trusts another CA gives up mid-handshake.
    make_ca(&dir, "other-ca");
    let untrusting = curl(&dir, "localhost", port, "other-ca.pem", &[]);
    assert!(!untrusting.status.success());
    daemon.wait_for_line("metrics/tcp: tls handshake failed");
    let scrape = stdout(&curl(&dir, "localhost", port, "ca.pem", &[]));
    let failures = scrape
        .lines()
        .find(|line| line.starts_with("rinetd_service_tls_handshake_failures_total{"))
        .unwrap_or_else(|| panic!("no handshake failure counter in:\n{scrape}"));
    assert!(failures.ends_with(" 1"), "{failures}");
    let accepted = daemon.wait_for_line("metrics/tcp: accepted client=127.0.0.1:");
    assert_eq!(accepted.field("builtin"), "metrics");
    assert!(accepted.field("tls").starts_with("TLSv1.3/"));
}

/// `openssl s_client` to `port`, verifying against `ca.pem`, quiet (stdout is the plaintext),
/// and ending the session (close_notify) when its stdin ends.
fn s_client(dir: &TestDir, port: u16) -> Child {
    Command::new("openssl")
        .args(["s_client", "-quiet", "-no_ign_eof", "-verify_return_error"])
        .args(["-CAfile", "ca.pem"])
        .args(["-servername", "localhost", "-verify_hostname", "localhost"])
        .args(["-connect", &format!("127.0.0.1:{port}")])
        .current_dir(&dir.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the openssl CLI is needed by the TLS tests (make deps installs it)")
}

/// One line from a child's stdout, read byte by byte (nothing after it is consumed).
fn line_from(child: &mut Child) -> String {
    let stdout = child.stdout.as_mut().expect("piped stdout");
    let mut line = Vec::new();
    let mut byte = [0u8];
    while stdout.read(&mut byte).expect("read the client's output") == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    String::from_utf8_lossy(&line).into_owned()
}

#[test]
fn openssl_s_client_talks_to_a_shell_handler_and_to_the_echo_builtin() {
    let dir = TestDir::new("tls-s-client");
    make_localhost(&dir);
    let greet = dir.script(
        "greet.sh",
        "read name\necho \"hello $name over $SSL_PROTOCOL\"",
    );
    let tls = tls_value(&dir, "");
    let daemon = Daemon::start(
        &dir,
        &[
            Service::new("greet", &greet).set("tls", &tls),
            Service::builtin("echo", "echo").set("tls", &tls),
        ],
    );

    let mut greet = s_client(&dir, daemon.port("greet"));
    greet.stdin.as_mut().unwrap().write_all(b"alice\n").unwrap();
    assert_eq!(line_from(&mut greet), "hello alice over TLSv1.3");
    // The handler exited: rinetd's close_notify ends the client with its stdin still open.
    assert!(wait_child(&mut greet, DEADLINE), "s_client failed");

    let mut echo = s_client(&dir, daemon.port("echo"));
    for word in ["one", "two", "three"] {
        echo.stdin
            .as_mut()
            .unwrap()
            .write_all(format!("{word}\n").as_bytes())
            .unwrap();
        assert_eq!(line_from(&mut echo), word);
    }
    drop(echo.stdin.take());
    assert!(wait_child(&mut echo, DEADLINE), "s_client failed");
    daemon.wait_for_line("echo/tcp: closed client=127.0.0.1:");
}

#[test]
fn a_client_that_never_reads_stops_rinetd_reading_the_handler_and_others_are_served() {
    let dir = TestDir::new("tls-never-reads");
    make_localhost(&dir);
    let flood = dir.script("flood.sh", "exec yes 'a line the client never reads'");
    let tls = tls_value(&dir, "");
    let daemon = Daemon::start(
        &dir,
        &[
            Service::new("flood", &flood).set("tls", &tls),
            Service::builtin("chargen", "chargen").set("tls", &tls),
            Service::builtin("echo", "echo"),
        ],
    );
    let before = resident_kib(daemon.pid());
    // Python's ssl: a real client that completes the handshake, then reads nothing until its
    // stdin closes.
    let idle = "import socket, ssl, sys\n\
                context = ssl.create_default_context(cafile='ca.pem')\n\
                raw = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n\
                conn = context.wrap_socket(raw, server_hostname='localhost')\n\
                print('ready', flush=True)\n\
                sys.stdin.read()\n";
    let mut clients = Vec::new();
    for service in ["flood", "chargen"] {
        let port = daemon.port(service);
        let mut client = Command::new("python3")
            .args(["-c", idle, &port.to_string()])
            .current_dir(&dir.path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run python3");
        assert_eq!(line_from(&mut client), "ready");
        // rinetd stopped writing, so it stopped reading its source (the handler, or the
        // builtin stopped producing).
        wait_until_stalled(
            &format!("rinetd stops sending to the {service} client"),
            || established_on(port).iter().map(|q| q.send).sum(),
        );
        clients.push(client);
    }
    let held = resident_kib(daemon.pid());
    assert!(
        held < before + 8 * 1024,
        "rinetd grew from {before} KiB to {held} KiB for clients that read nothing"
    );
    assert_eq!(daemon.request("echo", "still here\n"), "still here\n");
    for mut client in clients {
        drop(client.stdin.take());
        assert!(wait_child(&mut client, DEADLINE));
    }
    // The client went away: the handler's next write fails and it ends.
    daemon.wait_for_line("flood/tcp: exited pid=");
    daemon.wait_for_line("chargen/tcp: closed client=");
}

/// A Python ssl client of `port` that completes the handshake, says `ready`, then sends each
/// line of its stdin over TLS and never reads what comes back.
fn deaf_client(dir: &TestDir, port: u16) -> Child {
    let deaf = "import socket, ssl, sys\n\
                context = ssl.create_default_context(cafile='ca.pem')\n\
                raw = socket.socket()\n\
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)\n\
                raw.connect(('127.0.0.1', int(sys.argv[1])))\n\
                conn = context.wrap_socket(raw, server_hostname='localhost')\n\
                print('ready', flush=True)\n\
                for line in sys.stdin:\n\
                \x20   conn.sendall(line.encode())\n\
                \x20   print('sent', flush=True)\n";
    let mut client = Command::new("python3")
        .args(["-c", deaf, &port.to_string()])
        .current_dir(&dir.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python3");
    assert_eq!(line_from(&mut client), "ready");
    client
}

/// Once its handler was gone, a TLS connection whose client read nothing was kept for ever: no
/// timer, and no longer counted in max_children (the slot left with the handler), so such
/// connections piled up without bound. Now the client gets `handshake_timeout` to take some of
/// the output; a handler that is alive is only pushed back on.
///
/// Where the kernel's send buffer toward the client still has room for what the handler left
/// (it grows by itself, so a test cannot rule that out), rinetd hands all of it over with
/// close_notify and lets go at once; otherwise the stall ends the connection. Either way rinetd
/// must let go, and a stall must say why.
#[test]
fn a_connection_whose_handler_is_gone_and_whose_client_reads_nothing_is_not_kept_for_ever() {
    let dir = TestDir::new("tls-gone-deaf");
    make_localhost(&dir);
    let flood = dir.script("flood.sh", "exec yes 'a line the client never reads'");
    let daemon = Daemon::start(
        &dir,
        &[Service::new("flood", &flood)
            .set("tls", &tls_value(&dir, "handshake_timeout: 1s"))
            .set("max_children", "1")],
    );
    let port = daemon.port("flood");
    let mut client = deaf_client(&dir, port);
    let accepted = daemon.wait_for_line("flood/tcp: accepted client=");
    wait_until_stalled("rinetd stops sending to the client", || {
        established_on(port).iter().map(|q| q.send).sum()
    });
    // The handler dies (as at its `timeout`) with output still queued toward the client.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(accepted.pid()),
        nix::sys::signal::Signal::SIGKILL,
    );
    daemon.exited("flood", &accepted);
    wait_until("rinetd lets go of the connection", || {
        established_on(port).is_empty()
    });
    for failed in daemon
        .lines()
        .iter()
        .filter(|line| line.contains("flood/tcp: tls failed client="))
    {
        assert!(
            failed.contains(
                "error=\"the handler is gone and the client took none of its output for 1s\""
            ),
            "{failed}"
        );
    }
    drop(client.stdin.take());
    let _ = client.kill();
    let _ = client.wait();
}

#[test]
fn out_of_descriptors_for_the_socketpair_gives_the_place_back() {
    let dir = TestDir::new("tls-emfile");
    make_localhost(&dir);
    let env = env_over_http(&dir);
    let daemon = Daemon::start(
        &dir,
        &[Service::new("https", &env)
            .set("tls", &tls_value(&dir, ""))
            .set("max_children", "1")],
    );
    let port = daemon.port("https");
    // One descriptor left: enough to accept, not for the handler's socketpair.
    let old = leave_free_descriptors(daemon.pid(), 1);
    let starved = curl(&dir, "localhost", port, "ca.pem", &[]);
    restore_nofile(daemon.pid(), old);
    assert!(!starved.status.success(), "served without a socketpair?");
    // Its place in max_children is free again: the next client is served.
    let served = stdout(&curl(&dir, "localhost", port, "ca.pem", &[]));
    assert_eq!(var(&served, "SSL_PROTOCOL"), Some("TLSv1.3"));
    // And the reason it was not served is in the log.
    let failed = daemon.wait_for_line("https/tcp: accept failed error=");
    assert!(
        failed.field("error").contains("Too many open files"),
        "{}",
        failed.field("error")
    );
}

#[test]
fn a_silent_client_of_the_metrics_builtin_behind_tls_is_closed_after_5_s_as_without_tls() {
    let dir = TestDir::new("tls-metrics-silent");
    make_localhost(&dir);
    let daemon = Daemon::start(
        &dir,
        &[Service::builtin("metrics", "metrics")
            .set("tls", &tls_value(&dir, ""))
            .set("max_children", "1")],
    );
    // Completes the handshake, sends no request, and says how the wait for an answer ended.
    let silent = "import socket, ssl, sys\n\
                  context = ssl.create_default_context(cafile='ca.pem')\n\
                  raw = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n\
                  conn = context.wrap_socket(raw, server_hostname='localhost')\n\
                  print('ready', flush=True)\n\
                  conn.settimeout(9)\n\
                  try:\n\
                  \x20   print('closed' if conn.recv(1) == b'' else 'answered', flush=True)\n\
                  except (ssl.SSLEOFError, ConnectionResetError):\n\
                  \x20   print('closed', flush=True)\n\
                  except TimeoutError:\n\
                  \x20   print('still open', flush=True)\n";
    let mut client = Command::new("python3")
        .args(["-c", silent, &daemon.port("metrics").to_string()])
        .current_dir(&dir.path)
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python3");
    assert_eq!(line_from(&mut client), "ready");
    // The request head has 5 s (rinetd.conf(5), "The metrics builtin"), TLS or not.
    assert_eq!(line_from(&mut client), "closed");
    let _ = client.wait();
    daemon.wait_for_line("metrics/tcp: closed client=127.0.0.1:");
}
