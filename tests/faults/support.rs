//! What the fault tests measure besides the log: rinetd's own CPU, RSS and descriptors from
//! `/proc`, the latency of a service that must keep answering while another is under attack,
//! and the figures each test prints (`FIGURES fault=… key=value…`) for the notes to quote.

use std::fmt::Display;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::harness::{DEADLINE, Daemon, open_fd_count, wait_until, zombie_children};

/// The latency the issue promises for the services a fault does not touch.
pub const ANSWER_BOUND: Duration = Duration::from_millis(100);

/// A probe slower than `ANSWER_BOUND` is checked again this many times at once: one slow probe
/// on a machine shared with compilers is noise, a service slow on every re-check is not.
const RECHECKS: usize = 3;

/// No probe may take this long, whatever the machine's load: that would be a stalled loop.
pub const STALL_BOUND: Duration = Duration::from_secs(1);

/// rinetd's share of one core that still counts as "near zero": far below a busy loop (100 %)
/// and above what the back-off timers and the kernel's own tick accounting cost.
pub const IDLE_CPU_SHARE: f64 = 0.05;

// ---------------------------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------------------------

/// utime + stime of `pid` alone (its children excluded), in clock ticks.
pub fn cpu_ticks(pid: i32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields resume after the command name's last ')': state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("a command name") + 2..]
        .split(' ')
        .collect();
    let utime: u64 = fields[11].parse().expect("utime");
    let stime: u64 = fields[12].parse().expect("stime");
    utime + stime
}

pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the system; it has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    assert!(ticks > 0, "sysconf(_SC_CLK_TCK)");
    ticks as f64
}

/// Resident memory of `pid` in KiB (VmRSS).
pub fn rss_kib(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// The processes whose parent is `parent` (zombies included).
pub fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| crate::harness::process_status(pid).is_some_and(|(ppid, _)| ppid == parent))
        .collect()
}

/// rinetd's share of one core from now until `share` is called.
pub struct CpuMeter {
    pid: i32,
    ticks: u64,
    since: Instant,
}

impl CpuMeter {
    pub fn start(pid: i32) -> CpuMeter {
        CpuMeter {
            pid,
            ticks: cpu_ticks(pid),
            since: Instant::now(),
        }
    }

    /// CPU seconds used since the start.
    pub fn seconds(&self) -> f64 {
        (cpu_ticks(self.pid) - self.ticks) as f64 / ticks_per_second()
    }

    /// CPU seconds per wall-clock second since the start (1.0 = one core, busy).
    pub fn share(&self) -> f64 {
        self.seconds() / self.since.elapsed().as_secs_f64()
    }
}

/// Polls `condition` until it holds; fails the test with `what` after `within` (for faults
/// that take longer than the harness's `DEADLINE` on a loaded machine).
pub fn wait_until_within(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting until {what}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `count` lines of the log contain `pattern`, looking rarely: counting holds the
/// log's lock, and while it is held the harness cannot take rinetd's next lines, so with a huge
/// log, frequent counting would make rinetd wait on its own stderr and distort what is measured.
pub fn wait_for_count(daemon: &Daemon, pattern: &str, count: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let seen = daemon.count_lines(pattern);
        if seen >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {count} lines with {pattern:?} ({seen} so far)"
        );
        thread::sleep(Duration::from_millis(250));
    }
}

/// A bounded wait that proves something does *not* happen (no busy loop, no early close):
/// the only sleep the fault tests use.
pub fn watch_for(period: Duration) {
    thread::sleep(period);
}

/// What rinetd holds when nothing is going on: the reference its state must come back to.
#[derive(Clone, Copy, Debug)]
pub struct Footprint {
    pub fds: usize,
    pub rss_kib: u64,
}

impl Footprint {
    pub fn of(daemon: &Daemon) -> Footprint {
        Footprint {
            fds: open_fd_count(daemon.pid()),
            rss_kib: rss_kib(daemon.pid()),
        }
    }
}

/// Waits until rinetd has no child left (every handler reaped, none a zombie) and holds the
/// descriptors it held at `baseline`; then checks its RSS grew by at most `rss_slack_kib`.
/// Returns the footprint it came back to.
pub fn assert_back_to(daemon: &Daemon, baseline: Footprint, rss_slack_kib: u64) -> Footprint {
    let pid = daemon.pid();
    wait_until("rinetd has no handler left, running or zombie", || {
        children_of(pid).is_empty()
    });
    assert!(zombie_children(pid).is_empty(), "a zombie child is left");
    let deadline = Instant::now() + DEADLINE;
    while open_fd_count(pid) != baseline.fds && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let now = Footprint::of(daemon);
    assert_eq!(
        now.fds,
        baseline.fds,
        "rinetd's descriptors did not come back to their number before the fault: {:?}",
        fd_targets(pid)
    );
    assert!(
        now.rss_kib <= baseline.rss_kib + rss_slack_kib,
        "rinetd's RSS grew from {} KiB to {} KiB (slack {rss_slack_kib} KiB)",
        baseline.rss_kib,
        now.rss_kib
    );
    now
}

/// What each of `pid`'s descriptors points to (for a failure message).
pub fn fd_targets(pid: i32) -> Vec<String> {
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let target = fs::read_link(entry.path()).ok()?;
            Some(format!(
                "{}->{}",
                entry.file_name().to_string_lossy(),
                target.display()
            ))
        })
        .collect()
}

pub fn send_signal(pid: i32, signal: Signal) {
    kill(Pid::from_raw(pid), signal).expect("signal rinetd");
}

// ---------------------------------------------------------------------------------------------
// Figures
// ---------------------------------------------------------------------------------------------

/// One line of figures for a fault, printed to stderr as `FIGURES fault=NAME key=value…`.
pub struct Figures {
    line: String,
}

impl Figures {
    pub fn new(fault: &str) -> Figures {
        Figures {
            line: format!("FIGURES fault={fault}"),
        }
    }

    pub fn add(mut self, key: &str, value: impl Display) -> Figures {
        self.line.push_str(&format!(" {key}={value}"));
        self
    }

    pub fn print(self) {
        eprintln!("{}", self.line);
    }
}

/// A CPU share as a percentage with one decimal.
pub fn percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// Connects with the harness's timeouts, or returns the error (a fault test counts failures
/// instead of stopping at the first).
pub fn try_connect(address: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&address, DEADLINE)?;
    stream.set_read_timeout(Some(DEADLINE))?;
    stream.set_write_timeout(Some(DEADLINE))?;
    Ok(stream)
}

/// Closes `stream` with a reset (SO_LINGER 0): no TIME_WAIT left behind, so a flood of
/// connections does not run the machine out of ephemeral ports.
pub fn reset(stream: TcpStream) {
    let socket = socket2::SockRef::from(&stream);
    let _ = socket.set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Sends `payload` to an echo service, half-closes, and checks the same bytes come back
/// before EOF; the connection is then reset. Err says what went wrong.
pub fn echo_round_trip(address: SocketAddr, payload: &[u8]) -> Result<(), String> {
    let mut stream = try_connect(address).map_err(|e| format!("connect: {e}"))?;
    stream
        .write_all(payload)
        .map_err(|e| format!("write: {e}"))?;
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    reset(stream);
    if answer == payload {
        Ok(())
    } else {
        Err(format!("answer {:?}", String::from_utf8_lossy(&answer)))
    }
}

/// One line (without its newline), or what went wrong: EOF first, or an error.
pub fn try_read_line(stream: &mut TcpStream) -> Result<String, String> {
    let mut line = Vec::new();
    let mut byte = [0u8];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return Err(format!("EOF after {:?}", String::from_utf8_lossy(&line))),
            Ok(_) if byte[0] == b'\n' => return Ok(String::from_utf8_lossy(&line).into_owned()),
            Ok(_) => line.push(byte[0]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// Whether the peer has closed `stream` (EOF or reset) within `within`.
pub fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(e) => panic!("reading until the peer closes: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Latency of an unaffected service
// ---------------------------------------------------------------------------------------------

/// A thread that asks an echo service a question every `PROBE_PERIOD` while a fault runs.
pub struct LatencyProbe {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Latencies>,
}

const PROBE_PERIOD: Duration = Duration::from_millis(25);
const MIN_PROBES: usize = 20;

/// The round trips a probe measured.
#[derive(Debug, Default)]
pub struct Latencies {
    pub samples: Vec<Duration>,
    /// Slow probes whose every re-check was slow too: the service itself was slow.
    pub slow_streaks: usize,
    pub failures: Vec<String>,
}

impl LatencyProbe {
    /// Starts probing the echo service at `address`.
    pub fn start(address: SocketAddr) -> LatencyProbe {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut latencies = Latencies::default();
            // A fault shorter than MIN_PROBES probes is still judged on MIN_PROBES of them.
            while !stopping.load(Ordering::Relaxed)
                || latencies.samples.len() + latencies.failures.len() < MIN_PROBES
            {
                let first = probe_once(address, &mut latencies);
                if first.is_some_and(|took| took > ANSWER_BOUND) {
                    let rechecks: Vec<_> = (0..RECHECKS)
                        .map(|_| probe_once(address, &mut latencies))
                        .collect();
                    if rechecks.iter().all(|r| r.is_none_or(|t| t > ANSWER_BOUND)) {
                        latencies.slow_streaks += 1;
                    }
                }
                thread::sleep(PROBE_PERIOD);
            }
            latencies
        });
        LatencyProbe { stop, thread }
    }

    pub fn stop(self) -> Latencies {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("probe thread")
    }
}

fn probe_once(address: SocketAddr, latencies: &mut Latencies) -> Option<Duration> {
    let started = Instant::now();
    match echo_round_trip(address, b"probe\n") {
        Ok(()) => {
            let took = started.elapsed();
            latencies.samples.push(took);
            Some(took)
        }
        Err(e) => {
            latencies.failures.push(e);
            None
        }
    }
}

impl Latencies {
    fn sorted(&self) -> Vec<Duration> {
        let mut sorted = self.samples.clone();
        sorted.sort();
        sorted
    }

    pub fn percentile(&self, p: usize) -> Duration {
        let sorted = self.sorted();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        sorted[(sorted.len() - 1) * p / 100]
    }

    pub fn worst(&self) -> Duration {
        self.samples.iter().copied().max().unwrap_or_default()
    }

    pub fn over_bound(&self) -> usize {
        self.samples.iter().filter(|t| **t > ANSWER_BOUND).count()
    }

    /// `n=… p50=…ms p90=…ms p99=…ms max=…ms over100ms=…`
    pub fn summary(&self) -> String {
        let ms = |d: Duration| format!("{:.1}ms", d.as_secs_f64() * 1000.0);
        format!(
            "probes={} p50={} p90={} p99={} max={} over{}ms={} slow_streaks={}",
            self.samples.len(),
            ms(self.percentile(50)),
            ms(self.percentile(90)),
            ms(self.percentile(99)),
            ms(self.worst()),
            ANSWER_BOUND.as_millis(),
            self.over_bound(),
            self.slow_streaks
        )
    }

    /// The promise: every probe answered; a probe over `ANSWER_BOUND` was noise (a re-check
    /// right after it was within the bound); nothing stalled for `STALL_BOUND`.
    pub fn assert_answered_in_time(&self, while_what: &str) {
        assert!(
            self.failures.is_empty(),
            "the probed service failed {} times while {while_what}: {:?}",
            self.failures.len(),
            &self.failures[..self.failures.len().min(5)]
        );
        assert!(
            self.samples.len() >= MIN_PROBES,
            "too few probes while {while_what} to judge: {}",
            self.summary()
        );
        assert_eq!(
            self.slow_streaks,
            0,
            "the probed service stayed slower than {ANSWER_BOUND:?} over {RECHECKS} re-checks \
             while {while_what}: {}",
            self.summary()
        );
        assert!(
            self.worst() < STALL_BOUND,
            "a probe took {:?} while {while_what}: {}",
            self.worst(),
            self.summary()
        );
    }
}

/// Runs `clients` threads that each call `connection(thread, n)` `per_client` times; returns
/// every result.
pub fn run_clients<T: Send>(
    clients: usize,
    per_client: usize,
    connection: impl Fn(usize, usize) -> T + Sync,
) -> Vec<T> {
    thread::scope(|scope| {
        let connection = &connection;
        let threads: Vec<_> = (0..clients)
            .map(|t| {
                scope.spawn(move || {
                    (0..per_client)
                        .map(|n| connection(t, n))
                        .collect::<Vec<T>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|thread| thread.join().expect("client thread"))
            .collect::<Vec<T>>()
    })
}

/// How many of `results` are Ok, and the first few errors.
pub fn tally<E: std::fmt::Debug>(results: &[Result<(), E>]) -> (usize, Vec<String>) {
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let errors = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .take(5)
        .map(|e| format!("{e:?}"))
        .collect();
    (ok, errors)
}
