//! The TLS engine driven for real on 127.0.0.1, without the daemon: a small test loop accepts
//! connections and runs `TlsSession`s against real handler processes (over a socketpair) or an
//! in-loop echo, while real clients (`openssl s_client`, `curl`, `socat`, Python's ssl) talk to
//! it. Certificates are made per test with the `openssl` CLI in a temporary folder.

use std::fs;
use std::io::{self, Read};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use rustls::ServerConfig;

use super::config::{self, MinVersion, SniEntry, TlsKey, TlsSettings};
use super::session::{
    Buffered, Ending, PlaintextService, Step, TLS_SEND_LIMIT, TOWARD_SERVICE_LIMIT, TlsSession,
    Want, service_socketpair,
};

/// No test may take longer than this, whatever goes wrong.
const TEST_DEADLINE: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------------
// Certificates

/// A temporary folder, removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rinetd-tls-{}-{}-{name}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("the openssl CLI is needed by the TLS tests (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA and leaves signed by it: `localhost` (the default), `other` (other.example and
/// *.other.example), `client` (CN=client one, O=Example), plus a self-signed `stranger`.
fn make_pki(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "3", "-subj", "/CN=rinetd test CA"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(dir, &ca);
    let leaves = [
        (
            "localhost",
            "/CN=localhost",
            Some("subjectAltName=DNS:localhost"),
        ),
        (
            "other",
            "/CN=other.example",
            Some("subjectAltName=DNS:other.example,DNS:*.other.example"),
        ),
        // An extension makes it X.509 v3, the only version webpki accepts.
        (
            "client",
            "/O=Example/CN=client one",
            Some("extendedKeyUsage=clientAuth"),
        ),
    ];
    for (name, subject, extension) in leaves {
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        let mut req = vec![
            "req", "-new", "-subj", subject, "-keyout", &key, "-out", &csr,
        ];
        req.extend(ec);
        if let Some(extension) = extension {
            req.extend(["-addext", extension]);
        }
        openssl(dir, &req);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "3",
                "-copy_extensions",
                "copy",
                "-out",
                &pem,
            ],
        );
    }
    let mut stranger = vec!["req", "-x509", "-days", "3", "-subj", "/CN=stranger"];
    stranger.extend(ec);
    stranger.extend(["-keyout", "stranger.key", "-out", "stranger.pem"]);
    openssl(dir, &stranger);
}

fn settings(dir: &TempDir) -> TlsSettings {
    TlsSettings {
        cert: dir.path("localhost.pem"),
        key: dir.path("localhost.key"),
        sni: Vec::new(),
        client_ca: None,
        alpn: Vec::new(),
        min_version: MinVersion::V12,
        handshake_timeout: config::DEFAULT_HANDSHAKE_TIMEOUT,
    }
}

fn load(settings: &TlsSettings) -> Arc<ServerConfig> {
    config::load(settings, SystemTime::now()).unwrap_or_else(|errors| {
        panic!(
            "{}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

// ---------------------------------------------------------------------------------------------
// The services behind TLS

/// An in-loop echo, the shape a builtin takes behind TLS: what the client sends comes back;
/// the client's end of input ends the output once everything is echoed.
#[derive(Default)]
struct EchoService {
    pending: Vec<u8>,
    input_ended: bool,
}

const ECHO_LIMIT: usize = 64 * 1024;

impl PlaintextService for EchoService {
    fn read_plaintext(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pending.is_empty() {
            return if self.input_ended {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Ok(n)
    }

    fn write_plaintext(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(ECHO_LIMIT - self.pending.len());
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.pending.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn end_of_input(&mut self) -> io::Result<()> {
        self.input_ended = true;
        Ok(())
    }
}

enum Service {
    Handler(UnixStream),
    Echo(EchoService),
}

impl PlaintextService for Service {
    fn read_plaintext(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Service::Handler(s) => s.read_plaintext(buf),
            Service::Echo(s) => s.read_plaintext(buf),
        }
    }
    fn write_plaintext(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Service::Handler(s) => s.write_plaintext(data),
            Service::Echo(s) => s.write_plaintext(data),
        }
    }
    fn end_of_input(&mut self) -> io::Result<()> {
        match self {
            Service::Handler(s) => s.end_of_input(),
            Service::Echo(s) => s.end_of_input(),
        }
    }
    fn hung_up(&self) -> bool {
        match self {
            Service::Handler(s) => s.hung_up(),
            Service::Echo(s) => s.hung_up(),
        }
    }
}

#[derive(Clone)]
enum Backend {
    /// `sh -c SCRIPT` with fd 0 and 1 on the socketpair and the handshake's environment.
    Shell(String),
    Echo,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Poller {
    /// poll(2) with the interests the session asks for.
    Level,
    /// mio, edge-triggered, both sockets registered READABLE | WRITABLE once: the event
    /// loop's way.
    Edge,
}

#[derive(Clone)]
struct Plan {
    backend: Backend,
    poller: Poller,
    connections: usize,
    handshake_timeout: Duration,
    /// Return once nothing has moved for this long (for the tests of a side that stops
    /// reading) instead of waiting for the session to end.
    stop_when_stalled: Option<Duration>,
}

impl Plan {
    fn new(backend: Backend) -> Plan {
        Plan {
            backend,
            poller: Poller::Level,
            connections: 1,
            handshake_timeout: config::DEFAULT_HANDSHAKE_TIMEOUT,
            stop_when_stalled: None,
        }
    }
}

/// What happened to one connection.
#[derive(Debug, Default)]
struct Served {
    ending: Option<Ending>,
    handshake_timed_out: bool,
    started: bool,
    env: Vec<(&'static str, String)>,
    log: String,
    peak: Buffered,
    stalled: Option<Want>,
    from_service: u64,
}

struct Server {
    port: u16,
    thread: JoinHandle<Vec<Served>>,
}

impl Server {
    fn start(config: Arc<ServerConfig>, plan: Plan) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let thread = thread::spawn(move || {
            let deadline = Instant::now() + TEST_DEADLINE;
            (0..plan.connections)
                .map_while(|_| {
                    let client = accept(&listener, deadline)?;
                    Some(relay(&config, client, &plan, deadline))
                })
                .collect()
        });
        Server { port, thread }
    }

    fn finish(self) -> Vec<Served> {
        self.thread.join().expect("the test loop panicked")
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

fn accept(listener: &TcpListener, deadline: Instant) -> Option<TcpStream> {
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    let left = deadline.saturating_duration_since(Instant::now());
    let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
    match poll(&mut fds, timeout) {
        Ok(1) => listener.accept().ok().map(|(stream, _)| stream),
        _ => None,
    }
}

fn start_handler(script: &str, env: &[(&'static str, String)]) -> (UnixStream, Child) {
    let (ours, theirs) = service_socketpair().unwrap();
    let stdin = theirs.try_clone().unwrap();
    let child = Command::new("sh")
        .args(["-c", script])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(theirs))
        .spawn()
        .unwrap();
    // The Command (and its copies of the handler's end) is gone here: only the child holds
    // that end, so its exit is our end of file.
    (ours, child)
}

/// Runs one session to its end (or stall, or deadline) the way the event loop would.
fn relay(config: &Arc<ServerConfig>, client: TcpStream, plan: &Plan, deadline: Instant) -> Served {
    let mut served = Served::default();
    let mut session: TlsSession<Service> = TlsSession::new(Arc::clone(config), client).unwrap();
    let handshake_deadline = Instant::now() + plan.handshake_timeout;
    let mut child: Option<Child> = None;
    let mut mio_poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(8);
    if plan.poller == Poller::Edge {
        let fd = session.client().as_raw_fd();
        mio_poll
            .registry()
            .register(
                &mut SourceFd(&fd),
                Token(0),
                Interest::READABLE | Interest::WRITABLE,
            )
            .unwrap();
    }
    loop {
        match session.drive() {
            Step::Again => {}
            Step::HandshakeDone(info) => {
                served.env = info.env();
                served.log = info.log_summary();
                served.started = true;
                let service = match &plan.backend {
                    Backend::Shell(script) => {
                        let (ours, process) = start_handler(script, &served.env);
                        child = Some(process);
                        if plan.poller == Poller::Edge {
                            let fd = ours.as_raw_fd();
                            mio_poll
                                .registry()
                                .register(
                                    &mut SourceFd(&fd),
                                    Token(1),
                                    Interest::READABLE | Interest::WRITABLE,
                                )
                                .unwrap();
                        }
                        Service::Handler(ours)
                    }
                    Backend::Echo => Service::Echo(EchoService::default()),
                };
                session.attach(service);
            }
            Step::Closed(ending) => {
                served.ending = Some(ending);
                break;
            }
            Step::Wait(want) => {
                let buffered = session.buffered();
                served.peak.toward_service =
                    served.peak.toward_service.max(buffered.toward_service);
                served.peak.toward_client = served.peak.toward_client.max(buffered.toward_client);
                let now = Instant::now();
                let limit = if session.is_handshaking() {
                    handshake_deadline.min(deadline)
                } else {
                    deadline
                };
                if now >= limit {
                    served.handshake_timed_out = session.is_handshaking();
                    break;
                }
                let mut wait = limit - now;
                if let Some(stall) = plan.stop_when_stalled {
                    wait = wait.min(stall);
                }
                let woke = match plan.poller {
                    Poller::Level => wait_level(&session, want, wait),
                    Poller::Edge => {
                        mio_poll.poll(&mut events, Some(wait)).unwrap();
                        !events.is_empty()
                    }
                };
                if !woke && plan.stop_when_stalled.is_some() && Instant::now() < limit {
                    served.stalled = Some(want);
                    break;
                }
            }
        }
    }
    served.from_service = session.transferred().from_service;
    drop(session);
    if let Some(mut child) = child {
        if served.stalled.is_some() {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
    served
}

/// poll(2) on the sockets for what `want` asks; true when one is ready.
fn wait_level(session: &TlsSession<Service>, want: Want, wait: Duration) -> bool {
    let flags = |read: bool, write: bool| {
        let mut flags = PollFlags::empty();
        flags.set(PollFlags::POLLIN, read);
        flags.set(PollFlags::POLLOUT, write);
        flags
    };
    let client = session.client().as_fd();
    let mut fds = vec![PollFd::new(
        client,
        flags(want.client.read, want.client.write),
    )];
    if let Some(Service::Handler(handler)) = session.service() {
        // Registered even with no interest: POLLHUP (the handler gone) is always reported.
        fds.push(PollFd::new(
            handler.as_fd(),
            flags(want.service.read, want.service.write),
        ));
    }
    let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
    matches!(poll(&mut fds, timeout), Ok(n) if n > 0)
}

// ---------------------------------------------------------------------------------------------
// Clients

/// Runs a client to completion (killed after a minute by `timeout`), stdin from `input`.
fn client(dir: &TempDir, args: &[&str], input: Option<&Path>) -> Output {
    let stdin = match input {
        Some(path) => Stdio::from(fs::File::open(path).unwrap()),
        None => Stdio::null(),
    };
    Command::new("timeout")
        .arg("60")
        .args(args)
        .current_dir(&dir.0)
        .stdin(stdin)
        .output()
        .unwrap()
}

/// `openssl s_client` that sends its stdin, ignores its end, and prints what it receives
/// until the server's close_notify.
fn s_client_args<'a>(address: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "openssl",
        "s_client",
        "-connect",
        address,
        "-CAfile",
        "ca.pem",
        "-verify_return_error",
        "-quiet",
    ];
    args.extend(extra);
    args
}

/// `socat` as a TLS client that half-closes: at the end of its stdin it sends close_notify
/// and FIN and keeps reading until the server closes.
fn socat_args(address: &str) -> Vec<String> {
    vec![
        "socat".into(),
        "-t".into(),
        "30".into(),
        "-".into(),
        format!("OPENSSL:{address},cafile=ca.pem,commonname=localhost"),
    ]
}

/// Deterministic pseudo-random bytes (xorshift), so that a shifted or repeated block shows.
fn payload(dir: &TempDir, name: &str, len: usize) -> (PathBuf, Vec<u8>) {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15 ^ len as u64;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    let path = dir.path(name);
    fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

fn var<'a>(served: &'a Served, name: &str) -> Option<&'a str> {
    served
        .env
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The handshake failed: no handler started, nothing reached the client.
fn assert_refused(served: &Served, out: &Output) {
    assert!(!served.started, "a handler was started");
    assert!(
        matches!(&served.ending, Some(Ending::HandshakeFailed(_))),
        "{served:?}"
    );
    assert!(stdout(out).is_empty(), "{}", stdout(out));
}

// ---------------------------------------------------------------------------------------------
// Relaying

fn echo_through_a_handler(poller: Poller, len: usize) {
    let dir = TempDir::new("echo");
    make_pki(&dir.0);
    let (input, bytes) = payload(&dir, "payload", len);
    let mut plan = Plan::new(Backend::Shell(format!("head -c {len}")));
    plan.poller = poller;
    let server = Server::start(load(&settings(&dir)), plan);
    let address = server.address();
    let out = client(&dir, &s_client_args(&address, &[]), Some(&input));
    let served = server.finish();
    assert_eq!(
        out.stdout.len(),
        len,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == bytes, "the echo differs from what was sent");
    assert!(
        matches!(served[0].ending, Some(Ending::Finished { .. })),
        "{served:?}"
    );
    assert!(served[0].peak.toward_service <= TOWARD_SERVICE_LIMIT);
}

#[test]
fn a_handler_echoes_megabytes_byte_exact_under_level_polling() {
    echo_through_a_handler(Poller::Level, 4 * 1024 * 1024);
}

#[test]
fn a_handler_echoes_50_mib_byte_exact_under_edge_triggered_mio() {
    echo_through_a_handler(Poller::Edge, 50 * 1024 * 1024);
}

#[test]
fn the_client_half_closes_and_still_reads_the_answer() {
    let dir = TempDir::new("half-client");
    make_pki(&dir.0);
    let (input, _) = payload(&dir, "payload", 1024 * 1024);
    let server = Server::start(
        load(&settings(&dir)),
        Plan::new(Backend::Shell("n=$(wc -c); echo \"got $n\"".into())),
    );
    let args = socat_args(&server.address());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = client(&dir, &args, Some(&input));
    let served = server.finish();
    assert_eq!(
        stdout(&out),
        "got 1048576\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        served[0].ending,
        Some(Ending::Finished { unclean: false }),
        "socat sends close_notify at its end of input"
    );
}

#[test]
fn the_handler_closes_its_output_and_still_reads_the_client() {
    let dir = TempDir::new("half-handler");
    make_pki(&dir.0);
    let (input, _) = payload(&dir, "payload", 1024 * 1024);
    let count = dir.path("count");
    let script = format!(
        "exec /usr/bin/python3 -c '
import os, socket, sys
out = socket.socket(fileno=os.dup(1))
out.sendall(b\"hello\\n\")
out.shutdown(socket.SHUT_WR)
n = 0
while True:
    block = os.read(0, 65536)
    if not block:
        break
    n += len(block)
open(sys.argv[1], \"w\").write(str(n))
' {}",
        count.display()
    );
    let server = Server::start(load(&settings(&dir)), Plan::new(Backend::Shell(script)));
    let args = socat_args(&server.address());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = client(&dir, &args, Some(&input));
    let served = server.finish();
    assert_eq!(
        stdout(&out),
        "hello\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read_to_string(&count).unwrap(), "1048576");
    assert!(
        matches!(served[0].ending, Some(Ending::Finished { .. })),
        "{served:?}"
    );
}

#[test]
fn an_in_loop_echo_builtin_behind_tls() {
    let dir = TempDir::new("builtin");
    make_pki(&dir.0);
    let (input, bytes) = payload(&dir, "payload", 2 * 1024 * 1024);
    let server = Server::start(load(&settings(&dir)), Plan::new(Backend::Echo));
    let args = socat_args(&server.address());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = client(&dir, &args, Some(&input));
    let served = server.finish();
    assert!(
        out.stdout == bytes,
        "the echo differs ({} bytes back)",
        out.stdout.len()
    );
    assert_eq!(served[0].ending, Some(Ending::Finished { unclean: false }));
}

#[test]
fn curl_gets_an_answer_with_the_tls_environment() {
    let dir = TempDir::new("curl");
    make_pki(&dir.0);
    let script = "read -r request; printf 'HTTP/1.0 200 OK\\r\\nContent-Type: text/plain\\r\\n\\r\\n%s %s %s\\n' \"$SSL_PROTOCOL\" \"$SSL_TLS_SNI\" \"$SSL_CLIENT_VERIFY\"";
    let server = Server::start(
        load(&settings(&dir)),
        Plan::new(Backend::Shell(script.into())),
    );
    let resolve = format!("localhost:{}:127.0.0.1", server.port);
    let url = format!("https://localhost:{}/", server.port);
    let out = client(
        &dir,
        &[
            "curl",
            "-sS",
            "--cacert",
            "ca.pem",
            "--resolve",
            &resolve,
            &url,
        ],
        None,
    );
    let served = server.finish();
    assert_eq!(
        stdout(&out),
        "TLSv1.3 localhost NONE\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        served[0].log.starts_with("TLSv1.3/TLS_"),
        "{}",
        served[0].log
    );
    assert!(
        served[0].log.ends_with("/sni=localhost"),
        "{}",
        served[0].log
    );
}

#[test]
fn tls12_cipher_and_alpn_match_what_the_client_saw() {
    let dir = TempDir::new("tls12");
    make_pki(&dir.0);
    let mut tls = settings(&dir);
    tls.alpn = vec!["http/1.1".into()];
    let server = Server::start(
        load(&tls),
        Plan::new(Backend::Shell(
            "echo \"$SSL_PROTOCOL $SSL_CIPHER $SSL_ALPN\"".into(),
        )),
    );
    let address = server.address();
    // Without -quiet s_client also prints the session it negotiated.
    let out = client(
        &dir,
        &[
            "openssl",
            "s_client",
            "-connect",
            &address,
            "-CAfile",
            "ca.pem",
            "-tls1_2",
            "-alpn",
            "h2,http/1.1",
            "-ign_eof",
        ],
        None,
    );
    server.finish();
    let text = stdout(&out);
    let cipher = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Cipher    : "))
        .expect("s_client shows its cipher");
    assert!(
        text.contains(&format!("TLSv1.2 {cipher} http/1.1\n")),
        "{text}"
    );
}

#[test]
fn min_version_13_refuses_a_tls12_client() {
    let dir = TempDir::new("min13");
    make_pki(&dir.0);
    let mut tls = settings(&dir);
    tls.min_version = MinVersion::V13;
    let server = Server::start(load(&tls), Plan::new(Backend::Shell("echo no".into())));
    let address = server.address();
    let out = client(&dir, &s_client_args(&address, &["-tls1_2"]), None);
    assert_refused(&server.finish()[0], &out);
}

// ---------------------------------------------------------------------------------------------
// Certificates chosen and required

#[test]
fn sni_picks_the_certificate() {
    let dir = TempDir::new("sni");
    make_pki(&dir.0);
    let mut tls = settings(&dir);
    tls.sni = vec![SniEntry {
        names: vec!["other.example".into(), "*.other.example".into()],
        cert: dir.path("other.pem"),
        key: dir.path("other.key"),
    }];
    let cases = [
        (Some("other.example"), "CN = other.example"),
        (Some("a.other.example"), "CN = other.example"),
        (Some("a.b.other.example"), "CN = localhost"),
        (Some("localhost"), "CN = localhost"),
        (None, "CN = localhost"),
    ];
    let mut plan = Plan::new(Backend::Shell("true".into()));
    plan.connections = cases.len();
    let server = Server::start(load(&tls), plan);
    let address = server.address();
    for (name, subject) in cases {
        let name_args = match name {
            Some(name) => vec!["-servername", name],
            None => vec!["-noservername"],
        };
        let mut args = vec!["openssl", "s_client", "-connect", &address];
        args.extend(name_args);
        let shown = client(&dir, &args, None);
        let pem = dir.path("served.pem");
        fs::write(&pem, &shown.stdout).unwrap();
        let subject_line = client(
            &dir,
            &["openssl", "x509", "-noout", "-subject", "-in", "served.pem"],
            None,
        );
        assert_eq!(
            stdout(&subject_line).trim(),
            format!("subject={subject}"),
            "SNI {name:?}"
        );
    }
    let served = server.finish();
    assert_eq!(var(&served[0], "SSL_TLS_SNI"), Some("other.example"));
    assert_eq!(var(&served[4], "SSL_TLS_SNI"), None);
}

fn mutual_tls_server(dir: &TempDir) -> Server {
    make_pki(&dir.0);
    let mut tls = settings(dir);
    tls.client_ca = Some(dir.path("ca.pem"));
    Server::start(
        load(&tls),
        Plan::new(Backend::Shell(
            "echo \"$SSL_CLIENT_VERIFY|$SSL_CLIENT_S_DN|$SSL_CLIENT_S_DN_CN|$SSL_CLIENT_I_DN|$SSL_CLIENT_M_SERIAL|$SSL_CLIENT_CERT_SHA256\"".into(),
        )),
    )
}

#[test]
fn mutual_tls_accepts_a_good_client_and_shows_its_certificate() {
    let dir = TempDir::new("mtls-good");
    let server = mutual_tls_server(&dir);
    let address = server.address();
    let out = client(
        &dir,
        &s_client_args(&address, &["-cert", "client.pem", "-key", "client.key"]),
        None,
    );
    let served = server.finish();
    let serial = stdout(&client(
        &dir,
        &["openssl", "x509", "-noout", "-serial", "-in", "client.pem"],
        None,
    ));
    let serial = serial.trim().trim_start_matches("serial=").to_string();
    let fingerprint = stdout(&client(
        &dir,
        &[
            "openssl",
            "x509",
            "-noout",
            "-fingerprint",
            "-sha256",
            "-in",
            "client.pem",
        ],
        None,
    ));
    let fingerprint = fingerprint
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_ascii_lowercase();
    assert_eq!(
        stdout(&out),
        format!(
            "SUCCESS|CN=client one,O=Example|client one|CN=rinetd test CA|{serial}|{fingerprint}\n"
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        served[0].log.ends_with("/cn=client_one"),
        "{}",
        served[0].log
    );
}

#[test]
fn mutual_tls_refuses_a_client_without_a_certificate() {
    let dir = TempDir::new("mtls-none");
    let server = mutual_tls_server(&dir);
    let address = server.address();
    let out = client(&dir, &s_client_args(&address, &[]), None);
    assert_refused(&server.finish()[0], &out);
}

#[test]
fn mutual_tls_refuses_a_certificate_from_another_ca() {
    let dir = TempDir::new("mtls-stranger");
    let server = mutual_tls_server(&dir);
    let address = server.address();
    let out = client(
        &dir,
        &s_client_args(&address, &["-cert", "stranger.pem", "-key", "stranger.key"]),
        None,
    );
    assert_refused(&server.finish()[0], &out);
}

// ---------------------------------------------------------------------------------------------
// Deadlines and bounds

#[test]
fn a_client_speaking_something_else_fails_the_handshake_cleanly() {
    let dir = TempDir::new("garbage");
    make_pki(&dir.0);
    let inputs: [&[u8]; 4] = [
        b"GET / HTTP/1.0\r\n\r\n",
        b"\x16\x03\x01\x00\x05hello",
        &[0x16, 0x03, 0x03, 0xff, 0xff],
        &[0u8; 4096],
    ];
    let mut plan = Plan::new(Backend::Shell("echo never".into()));
    plan.connections = inputs.len();
    let server = Server::start(load(&settings(&dir)), plan);
    for input in inputs {
        let mut stream = TcpStream::connect(server.address()).unwrap();
        let _ = io::Write::write_all(&mut stream, input);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        // Whatever the server answers (an alert, or nothing), it then closes.
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        assert!(answer.len() < 64, "{answer:?}");
    }
    for served in server.finish() {
        assert!(!served.started);
        assert!(
            matches!(served.ending, Some(Ending::HandshakeFailed(_))),
            "{served:?}"
        );
    }
}

#[test]
fn a_stalled_handshake_is_closed_at_the_deadline() {
    let dir = TempDir::new("stall");
    make_pki(&dir.0);
    let mut plan = Plan::new(Backend::Shell("echo never".into()));
    plan.handshake_timeout = Duration::from_millis(300);
    let server = Server::start(load(&settings(&dir)), plan);
    let began = Instant::now();
    let mut silent = TcpStream::connect(server.address()).unwrap();
    let served = server.finish();
    assert!(served[0].handshake_timed_out);
    assert!(!served[0].started);
    let waited = began.elapsed();
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    // The session is dropped: the client sees the connection end.
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(silent.read(&mut buf), Ok(0) | Err(_)));
}

/// A real TLS client (Python's ssl, OpenSSL underneath) that completes the handshake and then
/// neither reads nor closes until its stdin closes.
fn lazy_client(dir: &TempDir, port: u16) -> Child {
    Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', int(sys.argv[1]))), server_hostname='localhost')
sys.stdin.read()",
            &port.to_string(),
            dir.path("ca.pem").to_str().unwrap(),
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_handler_that_exits_ends_the_session_though_the_client_stays() {
    let dir = TempDir::new("hangup");
    make_pki(&dir.0);
    let server = Server::start(
        load(&settings(&dir)),
        Plan::new(Backend::Shell("echo bye".into())),
    );
    let mut lazy = lazy_client(&dir, server.port);
    let served = server.finish();
    drop(lazy.stdin.take());
    let _ = lazy.wait();
    assert!(served[0].started);
    assert_eq!(served[0].ending, Some(Ending::Finished { unclean: false }));
}

#[test]
fn a_client_that_never_reads_stops_rinetd_reading_the_handler() {
    let dir = TempDir::new("slow-client");
    make_pki(&dir.0);
    let mut plan = Plan::new(Backend::Shell("exec cat /dev/zero".into()));
    plan.stop_when_stalled = Some(Duration::from_secs(1));
    let server = Server::start(load(&settings(&dir)), plan);
    let mut lazy = lazy_client(&dir, server.port);
    let served = server.finish();
    drop(lazy.stdin.take());
    let _ = lazy.kill();
    let _ = lazy.wait();
    let served = &served[0];
    let want = served.stalled.expect("the relay never stalled");
    assert!(!want.service.read, "still reading the handler: {want:?}");
    assert!(want.client.write, "not waiting for the client: {want:?}");
    assert!(served.peak.toward_client <= 16 * 1024, "{:?}", served.peak);
    // What left the handler sits in kernel socket buffers (both ends of the TCP connection:
    // about 4 MiB on loopback here, 10 MiB at Linux's default maxima) and rustls' capped
    // buffer, not in rinetd.
    assert!(
        served.from_service < 16 * 1024 * 1024 + TLS_SEND_LIMIT as u64,
        "{} bytes taken from the handler",
        served.from_service
    );
}

#[test]
fn a_handler_that_never_reads_stops_rinetd_reading_the_client() {
    let dir = TempDir::new("slow-handler");
    make_pki(&dir.0);
    let mut plan = Plan::new(Backend::Shell("exec sleep 600".into()));
    plan.stop_when_stalled = Some(Duration::from_secs(1));
    let server = Server::start(load(&settings(&dir)), plan);
    let address = server.address();
    let mut flood = Command::new("openssl")
        .args(s_client_args(&address, &[]).into_iter().skip(1))
        .current_dir(&dir.0)
        .stdin(Stdio::from(fs::File::open("/dev/zero").unwrap()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let served = server.finish();
    let _ = flood.kill();
    let _ = flood.wait();
    let served = &served[0];
    let want = served.stalled.expect("the relay never stalled");
    assert!(!want.client.read, "still reading the client: {want:?}");
    assert!(want.service.write, "not waiting for the handler: {want:?}");
    assert_eq!(served.peak.toward_service, TOWARD_SERVICE_LIMIT);
}

// ---------------------------------------------------------------------------------------------
// Loading

fn load_errors(settings: &TlsSettings, now: SystemTime) -> Vec<String> {
    match config::load(settings, now) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn every_load_problem_is_reported_with_its_setting_and_file() {
    let dir = TempDir::new("load");
    make_pki(&dir.0);
    let mut tls = settings(&dir);
    tls.key = dir.path("other.key");
    tls.client_ca = Some(dir.path("client.key"));
    tls.sni = vec![
        SniEntry {
            names: vec!["other.example".into(), "bad name".into()],
            cert: dir.path("missing.pem"),
            key: dir.path("other.key"),
        },
        SniEntry {
            names: vec!["OTHER.example".into()],
            cert: dir.path("other.pem"),
            key: dir.path("other.key"),
        },
    ];
    let errors = config::load(&tls, SystemTime::now()).unwrap_err();
    let keys: Vec<TlsKey> = errors.iter().map(|e| e.key).collect();
    assert_eq!(
        keys,
        vec![
            TlsKey::Key,
            TlsKey::SniNames(0),
            TlsKey::SniCert(0),
            TlsKey::SniNames(1),
            TlsKey::ClientCa,
        ],
        "{errors:#?}"
    );
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let other_key = dir.path("other.key").display().to_string();
    assert_eq!(
        text[0],
        format!(
            "tls.key: {other_key}: this private key does not match the certificate in {}",
            dir.path("localhost.pem").display()
        )
    );
    assert!(text[1].contains("\"bad name\""), "{}", text[1]);
    assert!(
        text[2].contains("missing.pem: cannot read it: No such file"),
        "{}",
        text[2]
    );
    assert!(text[3].contains("already given"), "{}", text[3]);
    assert!(
        text[4].contains("client.key: no certificate in it"),
        "{}",
        text[4]
    );
}

#[test]
fn an_expired_or_not_yet_valid_leaf_is_an_error() {
    let dir = TempDir::new("dates");
    make_pki(&dir.0);
    let tls = settings(&dir);
    let later = SystemTime::now() + Duration::from_secs(10 * 86400);
    let errors = load_errors(&tls, later);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with(&format!(
            "tls.cert: {}: the certificate (CN=localhost) expired on ",
            tls.cert.display()
        )),
        "{}",
        errors[0]
    );
    let errors = load_errors(&tls, SystemTime::UNIX_EPOCH);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("is not valid before"), "{}", errors[0]);
}

#[test]
fn a_good_configuration_loads_and_a_reload_reads_the_files_again() {
    let dir = TempDir::new("reload");
    make_pki(&dir.0);
    let tls = settings(&dir);
    let first = load(&tls);
    // Replace the files: the next load sees the new ones; `first` is untouched.
    fs::copy(dir.path("other.pem"), dir.path("localhost.pem")).unwrap();
    fs::copy(dir.path("other.key"), dir.path("localhost.key")).unwrap();
    let second = load(&tls);
    assert!(!Arc::ptr_eq(&first, &second));
    fs::write(dir.path("localhost.key"), "gone").unwrap();
    let errors = load_errors(&tls, SystemTime::now());
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("no private key in it"), "{}", errors[0]);
}

#[test]
fn rsa_keys_in_pkcs1_and_pkcs8_load() {
    let dir = TempDir::new("rsa");
    make_pki(&dir.0);
    openssl(
        &dir.0,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=rsa",
            "-keyout", "rsa8.key", "-out", "rsa.pem",
        ],
    );
    openssl(
        &dir.0,
        &[
            "pkey",
            "-in",
            "rsa8.key",
            "-traditional",
            "-out",
            "rsa1.key",
        ],
    );
    assert!(
        fs::read_to_string(dir.path("rsa1.key"))
            .unwrap()
            .contains("BEGIN RSA PRIVATE KEY")
    );
    for key in ["rsa8.key", "rsa1.key"] {
        let mut tls = settings(&dir);
        tls.cert = dir.path("rsa.pem");
        tls.key = dir.path(key);
        assert_eq!(
            load_errors(&tls, SystemTime::now()),
            Vec::<String>::new(),
            "{key}"
        );
    }
    openssl(
        &dir.0,
        &[
            "pkey",
            "-in",
            "localhost.key",
            "-traditional",
            "-out",
            "sec1.key",
        ],
    );
    let mut tls = settings(&dir);
    tls.key = dir.path("sec1.key");
    assert_eq!(load_errors(&tls, SystemTime::now()), Vec::<String>::new());
}
