//! The soak (issue 12, `make soak`): mixed TCP handler, TCP builtin, UDP builtin, UDP handler and
//! PROXY load on one rinetd, with a reload every second alternating between two tables that
//! differ (one service changed, one added and one removed each time, the rest kept), for
//! `SOAK_SECONDS` (default 600). It reports connections served, refused by rule and failed
//! (which must be 0), and rinetd's RSS, descriptors and CPU per connection at the start and
//! the end, which must not grow. `RINETD_BIN` picks the binary (`make soak`: the release build).

// The tests prepare the processes they start (pre_exec, pidfd_open), each with its SAFETY line.
#![allow(unsafe_code)]

#[allow(dead_code)]
#[path = "../integration/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "../faults/support.rs"]
mod support;

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use harness::{Service, TestDir, free_port_on_both_families, services_yaml};
use support::{children_of, cpu_ticks, reset, rss_kib, send_signal, ticks_per_second, try_connect};

/// How long the load runs unless `SOAK_SECONDS` says otherwise.
const DEFAULT_SECONDS: u64 = 600;
/// The CPU-per-connection windows at the start and at the end of the run.
const WINDOW: Duration = Duration::from_secs(60);
/// RSS rinetd may gain between the idle reading at the start and the one at the end: allocator
/// noise, far below what a per-connection or per-reload leak would add over a run.
const RSS_SLACK_KIB: u64 = 1024;
/// rinetd's CPU per connection at the end may be this many times the start's before it counts
/// as growth (the machine is shared: a window's figure moves with other work).
const CPU_GROWTH_FACTOR: f64 = 2.0;

/// A service's port, fixed for the whole run so that a reload keeps its socket.
struct Ports {
    hello: u16,
    echo: u16,
    uecho: u16,
    ucat: u16,
    pecho: u16,
    denied: u16,
    metrics: u16,
    extras: [u16; 2],
}

impl Ports {
    fn pick() -> Ports {
        let port = free_port_on_both_families;
        Ports {
            hello: port(),
            echo: port(),
            uecho: port(),
            ucat: port(),
            pecho: port(),
            denied: port(),
            metrics: port(),
            extras: [port(), port()],
        }
    }
}

/// Table `version` (0 or 1): `hello` changes (its environment), `extra-a` / `extra-b` come and
/// go, everything else is kept as it is.
fn table(ports: &Ports, version: usize) -> String {
    let port = |p: u16| p.to_string();
    services_yaml(&[
        Service::new("hello", Path::new("/bin/echo"))
            .set("args", "[echo, hello]")
            .set("port", &port(ports.hello))
            .set("max_children", "0")
            .set("env", &format!("{{SOAK_TABLE: \"{version}\"}}")),
        Service::builtin("echo", "echo")
            .set("port", &port(ports.echo))
            .set("max_children", "0"),
        Service::builtin("uecho", "echo")
            .set("protocol", "udp")
            .set("port", &port(ports.uecho)),
        Service::new("ucat", Path::new("/bin/cat"))
            .set("protocol", "udp")
            .set("wait", "false")
            .set("port", &port(ports.ucat)),
        Service::builtin("pecho", "echo")
            .set("port", &port(ports.pecho))
            .set("proxy_protocol", "true")
            .set("no_access", "[198.51.100.0/24]"),
        Service::builtin("denied", "daytime")
            .set("port", &port(ports.denied))
            .set("no_access", "[127.0.0.1]"),
        Service::builtin("metrics", "metrics").set("port", &port(ports.metrics)),
        Service::builtin(["extra-a", "extra-b"][version], "daytime")
            .set("port", &port(ports.extras[version])),
    ])
}

fn install(dir: &TestDir, yaml: &str) {
    let staged = dir.write("rinetd.conf.new", yaml, 0o644);
    fs::rename(staged, dir.join("rinetd.conf")).expect("install the table");
}

fn localhost(port: u16) -> SocketAddr {
    (Ipv4Addr::LOCALHOST, port).into()
}

// ---------------------------------------------------------------------------------------------
// The clients
// ---------------------------------------------------------------------------------------------

/// What happened to one connection or datagram.
enum Outcome {
    Served,
    Refused,
    Failed(String),
}

/// The kinds of client, in the order `Counts` keeps them.
const KINDS: [&str; 6] = ["hello", "echo", "uecho", "ucat", "pecho", "denied"];

/// Counts kept by the load threads: per kind, served / refused / failed.
#[derive(Default)]
struct Counts {
    by_kind: [[AtomicU64; 3]; KINDS.len()],
    /// The first failures, with when and where they happened.
    failures: Mutex<Vec<String>>,
}

const SERVED: usize = 0;
const REFUSED: usize = 1;
const FAILED: usize = 2;

impl Counts {
    fn record(&self, kind: &str, outcome: Outcome, since: Instant) {
        let index = KINDS.iter().position(|k| *k == kind).expect("a known kind");
        let column = match outcome {
            Outcome::Served => SERVED,
            Outcome::Refused => REFUSED,
            Outcome::Failed(why) => {
                let mut failures = self.failures.lock().unwrap();
                if failures.len() < 20 {
                    failures.push(format!(
                        "{:.1}s {kind}: {why}",
                        since.elapsed().as_secs_f64()
                    ));
                }
                FAILED
            }
        };
        self.by_kind[index][column].fetch_add(1, Ordering::Relaxed);
    }

    fn total(&self, column: usize) -> u64 {
        self.by_kind
            .iter()
            .map(|counts| counts[column].load(Ordering::Relaxed))
            .sum()
    }

    fn connections(&self) -> u64 {
        self.total(SERVED) + self.total(REFUSED)
    }

    /// `hello=S/R/F echo=…` for the report.
    fn by_kind(&self) -> String {
        KINDS
            .iter()
            .zip(&self.by_kind)
            .map(|(kind, counts)| {
                let [s, r, f] = counts.each_ref().map(|c| c.load(Ordering::Relaxed));
                format!("{kind}={s}/{r}/{f}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Connects, sends `request` (then half-closes) and reads to EOF: the answer, or what failed.
fn tcp_exchange(address: SocketAddr, request: &[u8]) -> Result<Vec<u8>, String> {
    let mut stream = try_connect(address).map_err(|e| format!("connect: {e}"))?;
    // A refused client may be closed (reset) before it has finished sending: nothing answered.
    let closed_early = |e: &std::io::Error| {
        use std::io::ErrorKind::{BrokenPipe, ConnectionReset, NotConnected};
        matches!(e.kind(), BrokenPipe | ConnectionReset | NotConnected)
    };
    if !request.is_empty() {
        match stream.write_all(request) {
            Err(e) if closed_early(&e) => return Ok(Vec::new()),
            written => written.map_err(|e| format!("write: {e}"))?,
        }
    }
    match stream.shutdown(Shutdown::Write) {
        Err(e) if closed_early(&e) => return Ok(Vec::new()),
        done => done.map_err(|e| format!("shutdown: {e}"))?,
    }
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    reset(stream);
    match read {
        Ok(_) => Ok(answer),
        // A refused client may see its close as a reset.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && answer.is_empty() => {
            Ok(answer)
        }
        Err(e) => Err(format!("read: {e}")),
    }
}

fn expect(answer: Result<Vec<u8>, String>, wanted: &[u8]) -> Outcome {
    match answer {
        Ok(answer) if answer == wanted => Outcome::Served,
        Ok(answer) => Outcome::Failed(format!("answer {:?}", String::from_utf8_lossy(&answer))),
        Err(e) => Outcome::Failed(e),
    }
}

fn expect_refused(answer: Result<Vec<u8>, String>) -> Outcome {
    match answer {
        Ok(answer) if answer.is_empty() => Outcome::Refused,
        Ok(answer) => Outcome::Failed(format!(
            "a refused client got {:?}",
            String::from_utf8_lossy(&answer)
        )),
        Err(e) => Outcome::Failed(e),
    }
}

fn udp_exchange(socket: &UdpSocket, address: SocketAddr, payload: &[u8]) -> Outcome {
    if let Err(e) = socket.send_to(payload, address) {
        return Outcome::Failed(format!("send: {e}"));
    }
    let mut buf = [0u8; 2048];
    match socket.recv_from(&mut buf) {
        Ok((len, from)) if from == address && &buf[..len] == payload => Outcome::Served,
        Ok((len, from)) => Outcome::Failed(format!("reply {:?} from {from}", &buf[..len])),
        Err(e) => Outcome::Failed(format!("no reply: {e}")),
    }
}

/// The load: each kind of client in its own closed loop until `stop`.
fn run_load(ports: &Ports, counts: &Counts, stop: &AtomicBool, since: Instant) {
    type Client<'a> = Box<dyn FnMut(u64) -> Outcome + Send + 'a>;
    let udp_socket = || {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        socket.set_read_timeout(Some(harness::DEADLINE)).unwrap();
        socket
    };
    let hello = || -> Client {
        Box::new(|_| expect(tcp_exchange(localhost(ports.hello), b""), b"hello\n"))
    };
    let echo = || -> Client {
        Box::new(|n| {
            let payload = format!("soak {n}\n");
            expect(
                tcp_exchange(localhost(ports.echo), payload.as_bytes()),
                payload.as_bytes(),
            )
        })
    };
    let uecho_socket = udp_socket();
    let ucat_socket = udp_socket();
    let clients: Vec<(&str, Client)> = vec![
        ("hello", hello()),
        ("hello", hello()),
        ("echo", echo()),
        ("echo", echo()),
        (
            "uecho",
            Box::new(move |n| {
                udp_exchange(
                    &uecho_socket,
                    localhost(ports.uecho),
                    format!("u{n}").as_bytes(),
                )
            }),
        ),
        (
            "ucat",
            Box::new(move |n| {
                udp_exchange(
                    &ucat_socket,
                    localhost(ports.ucat),
                    format!("c{n}").as_bytes(),
                )
            }),
        ),
        (
            "pecho",
            Box::new(|n| {
                // One in ten comes (by its header) from a network the service refuses.
                let refused = n % 10 == 9;
                let source = if refused { "198.51.100.7" } else { "192.0.2.7" };
                let line = format!("proxied {n}\n");
                let request = format!(
                    "PROXY TCP4 {source} 192.0.2.1 {} 80\r\n{line}",
                    1024 + n % 60000
                );
                let answer = tcp_exchange(localhost(ports.pecho), request.as_bytes());
                if refused {
                    expect_refused(answer)
                } else {
                    expect(answer, line.as_bytes())
                }
            }),
        ),
        (
            "denied",
            Box::new(|_| expect_refused(tcp_exchange(localhost(ports.denied), b""))),
        ),
    ];
    thread::scope(|scope| {
        for (kind, mut client) in clients {
            scope.spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    counts.record(kind, client(n), since);
                    n += 1;
                }
            });
        }
    });
}

// ---------------------------------------------------------------------------------------------
// rinetd
// ---------------------------------------------------------------------------------------------

/// rinetd in the foreground, its log in `log` (a file: a million connections are two million
/// lines, more than the tests' in-memory log should hold).
fn start_rinetd(config: &Path, log: &Path) -> Child {
    let child = Command::new(harness::rinetd_path())
        .arg("-c")
        .arg(config)
        .args(["-f", "--log", "stderr"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(log).expect("create the log"))
        .spawn()
        .expect("start rinetd");
    harness::wait_until("rinetd is ready", || {
        fs::read_to_string(log).is_ok_and(|text| text.contains("rinetd: ready services="))
    });
    child
}

/// How many lines of `log` contain each of `patterns`, in one pass.
fn count_in_log(log: &Path, patterns: &[&str]) -> Vec<u64> {
    let mut counts = vec![0; patterns.len()];
    let reader = BufReader::new(File::open(log).expect("open the log"));
    for line in reader.lines().map_while(Result::ok) {
        for (count, pattern) in counts.iter_mut().zip(patterns) {
            if line.contains(pattern) {
                *count += 1;
            }
        }
    }
    counts
}

/// rinetd idle: every handler reaped, so its descriptors and memory can be compared.
#[derive(Debug, Clone, Copy)]
struct Idle {
    fds: usize,
    rss_kib: u64,
}

fn idle(pid: i32) -> Idle {
    harness::wait_until("rinetd has no handler left", || children_of(pid).is_empty());
    Idle {
        fds: harness::open_fd_count(pid),
        rss_kib: rss_kib(pid),
    }
}

/// One reading a second during the run: connections so far, rinetd's CPU ticks and RSS.
#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    connections: u64,
    ticks: u64,
    rss_kib: u64,
}

/// Connections per second between two samples.
fn rate(from: &Sample, to: &Sample) -> f64 {
    (to.connections - from.connections) as f64 / to.at.duration_since(from.at).as_secs_f64()
}

/// rinetd's CPU per connection in µs between two samples.
fn cpu_us_per_connection(from: &Sample, to: &Sample) -> f64 {
    let connections = (to.connections - from.connections).max(1) as f64;
    (to.ticks - from.ticks) as f64 / ticks_per_second() * 1e6 / connections
}

/// The load for `seconds`, with a reload a second (alternating tables) from another thread;
/// a sample a second. Returns the samples and how many reloads were asked for.
fn load_phase(
    dir: &TestDir,
    ports: &Ports,
    pid: i32,
    counts: &Counts,
    seconds: Duration,
    since: Instant,
) -> (Vec<Sample>, u64) {
    let stop = AtomicBool::new(false);
    let reloads = AtomicU64::new(0);
    let mut samples = Vec::new();
    thread::scope(|scope| {
        // The load stops however this closure ends: a failed reading must not leave the scope
        // waiting for the load threads forever.
        let _stop_load = StopOnDrop(&stop);
        scope.spawn(|| run_load(ports, counts, &stop, since));
        scope.spawn(|| {
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                next += Duration::from_secs(1);
                // Pacing, not synchronisation: one reload a second.
                thread::sleep(next.saturating_duration_since(Instant::now()));
                let version = (reloads.load(Ordering::Relaxed) % 2) as usize;
                install(dir, &table(ports, 1 - version));
                send_signal(pid, Signal::SIGHUP);
                reloads.fetch_add(1, Ordering::Relaxed);
            }
        });
        let end = Instant::now() + seconds;
        loop {
            samples.push(Sample {
                at: Instant::now(),
                connections: counts.connections(),
                ticks: cpu_ticks(pid),
                rss_kib: rss_kib(pid),
            });
            if Instant::now() >= end {
                break;
            }
            thread::sleep(Duration::from_secs(1).min(end - Instant::now()));
        }
    });
    (samples, reloads.into_inner())
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The samples `window` from the first and to the last: the start and end windows.
fn windows(samples: &[Sample], window: Duration) -> ((Sample, Sample), (Sample, Sample)) {
    let first = samples[0];
    let last = *samples.last().unwrap();
    let start_end = *samples
        .iter()
        .find(|s| s.at.duration_since(first.at) >= window)
        .unwrap_or(&last);
    let end_start = *samples
        .iter()
        .rev()
        .find(|s| last.at.duration_since(s.at) >= window)
        .unwrap_or(&first);
    ((first, start_end), (end_start, last))
}

/// Raises this test process's own descriptor limit (root may raise the hard one too), so that
/// the clients of a flood are not limited by the test itself.
pub fn raise_nofile(wanted: u64) -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted.max(hard)).is_ok() {
        return wanted;
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit to the hard limit");
    hard
}

#[test]
#[ignore = "long: make soak (SOAK_SECONDS, default 600)"]
fn soak() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .map(|s| s.parse().expect("SOAK_SECONDS is a number of seconds"))
        .unwrap_or(DEFAULT_SECONDS);
    let run = Duration::from_secs(seconds);
    let window = WINDOW.min(run / 4);
    let warm_up = Duration::from_secs(10).min(run / 4);
    raise_nofile(65_536);

    let dir = TestDir::new("soak");
    let ports = Ports::pick();
    install(&dir, &table(&ports, 0));
    let log = dir.join("rinetd.log");
    let mut rinetd = start_rinetd(&dir.join("rinetd.conf"), &log);
    let pid = rinetd.id() as i32;
    let since = Instant::now();
    let counts = Counts::default();

    // A warm-up (both tables loaded, every kind of client served), then the start figures.
    let (_, warm_up_reloads) = load_phase(&dir, &ports, pid, &counts, warm_up, since);
    let start = idle(pid);
    let warm_connections = counts.connections();

    let (samples, main_reloads) = load_phase(&dir, &ports, pid, &counts, run, since);
    let reloads_asked = warm_up_reloads + main_reloads;
    let end = idle(pid);
    let ((w0, w1), (w2, w3)) = windows(&samples, window);
    let cpu_start = cpu_us_per_connection(&w0, &w1);
    let cpu_end = cpu_us_per_connection(&w2, &w3);
    let cpu_all = cpu_us_per_connection(&samples[0], samples.last().unwrap());
    let rss_under_load = (
        samples.iter().map(|s| s.rss_kib).min().unwrap(),
        samples.iter().map(|s| s.rss_kib).max().unwrap(),
    );

    send_signal(pid, Signal::SIGTERM);
    let status = rinetd.wait().expect("wait for rinetd");
    let [reloaded, reload_failed, refused_logged] = count_in_log(
        &log,
        &["rinetd: reloaded ", "reload failed", ": refused client="],
    )[..] else {
        unreachable!()
    };

    let served = counts.total(SERVED);
    let refused = counts.total(REFUSED);
    let failed = counts.total(FAILED);
    let failures = counts.failures.lock().unwrap().clone();
    let measured = served + refused - warm_connections;
    let elapsed = samples.last().unwrap().at.duration_since(samples[0].at);
    eprintln!(
        "SOAK binary={} seconds={seconds} warm_up={}s window={}s",
        harness::rinetd_path().display(),
        warm_up.as_secs(),
        window.as_secs()
    );
    eprintln!(
        "SOAK connections served={served} refused={refused} failed={failed} \
         (after the warm-up: {measured} in {:.0}s, {:.0}/s) refused_logged={refused_logged}",
        elapsed.as_secs_f64(),
        measured as f64 / elapsed.as_secs_f64()
    );
    eprintln!(
        "SOAK by kind (served/refused/failed): {} (hello: tcp handler, echo: tcp builtin, \
         uecho: udp builtin, ucat: udp handler, pecho: PROXY builtin, denied: tcp ACL)",
        counts.by_kind()
    );
    eprintln!(
        "SOAK reloads asked={reloads_asked} applied={reloaded} failed={reload_failed} \
         (warm-up included)"
    );
    eprintln!(
        "SOAK start: rss_kib={} fds={} cpu_us_per_connection={cpu_start:.1} (first {}s, {:.0} \
         connections/s)",
        start.rss_kib,
        start.fds,
        window.as_secs(),
        rate(&w0, &w1)
    );
    eprintln!(
        "SOAK end:   rss_kib={} fds={} cpu_us_per_connection={cpu_end:.1} (last {}s, {:.0} \
         connections/s)",
        end.rss_kib,
        end.fds,
        window.as_secs(),
        rate(&w2, &w3)
    );
    eprintln!(
        "SOAK whole run: cpu_us_per_connection={cpu_all:.1} rss_kib_under_load min={} max={} \
         rinetd_exit={status}",
        rss_under_load.0, rss_under_load.1
    );
    // Failing leaves the test folder, and rinetd's log in it, in place.
    assert!(
        failed == 0,
        "{failed} connections failed; the first: {failures:#?} (log: {})",
        log.display()
    );
    assert!(
        served > 0 && refused > 0,
        "served {served}, refused {refused}"
    );
    assert_eq!(
        refused_logged, refused,
        "every refusal the clients saw is logged as one"
    );
    assert_eq!(reload_failed, 0, "a reload was refused");
    assert!(
        reloaded + 2 >= reloads_asked && reloaded > 0,
        "{reloaded} reloads applied of {reloads_asked} asked"
    );
    assert!(status.success(), "rinetd stopped with {status}");
    assert!(
        end.fds <= start.fds,
        "rinetd's descriptors grew from {} to {}",
        start.fds,
        end.fds
    );
    assert!(
        end.rss_kib <= start.rss_kib + RSS_SLACK_KIB,
        "rinetd's RSS grew from {} KiB to {} KiB",
        start.rss_kib,
        end.rss_kib
    );
    assert!(
        cpu_end <= cpu_start * CPU_GROWTH_FACTOR,
        "rinetd's CPU per connection grew from {cpu_start:.1} µs to {cpu_end:.1} µs"
    );
}
