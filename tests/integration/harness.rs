//! Shared machinery for driving the built `rinetd` binary: temporary directories, handler
//! scripts, configs, a running daemon whose log is collected line by line, client helpers and
//! `/proc` inspection. Every wait here is a poll against a deadline, never a bare sleep.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long any single expected event may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The exit status of a configuration error (EX_CONFIG).
pub const EX_CONFIG: i32 = 78;

/// The exit status of an operating-system error at start-up (EX_OSERR).
pub const EX_OSERR: i32 = 71;

/// The binary under test: `RINETD_BIN` when set (`make test-long` and `make soak` measure the
/// release build), else the one cargo built for these tests.
pub fn rinetd_path() -> PathBuf {
    std::env::var_os("RINETD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_rinetd")))
}

pub fn rinetd() -> Command {
    Command::new(rinetd_path())
}

/// Runs `rinetd -t -c CONFIG` and returns its output.
pub fn check_config(config: &Path) -> Output {
    rinetd()
        .args(["-t", "-c"])
        .arg(config)
        .output()
        .expect("run rinetd -t")
}

/// stdout and stderr of a finished command, as one text for searching.
pub fn all_output(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs a command that must exit by itself within `DEADLINE` (it is killed and the test fails
/// otherwise), and returns the moment it exits: its status, and its stderr, which goes through a
/// file in `dir` because a daemonized child may keep that descriptor open.
pub fn run_to_exit(dir: &TestDir, command: &mut Command) -> (ExitStatus, String) {
    let stderr_path = dir.join("command.stderr");
    let stderr = fs::File::create(&stderr_path).expect("create stderr file");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start rinetd");
    if !exits_within_deadline(&child) {
        let _ = child.kill();
        let _ = child.wait();
        panic!("rinetd did not return within {DEADLINE:?}");
    }
    let status = child.wait().expect("wait for rinetd");
    (status, fs::read_to_string(&stderr_path).unwrap_or_default())
}

/// Waits on a pidfd, which becomes readable the instant the process exits (no polling delay:
/// what happens right after the exit is what callers want to see).
fn exits_within_deadline(child: &Child) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id(), 0) };
    assert!(raw >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
    // SAFETY: `raw` is a descriptor just opened for us and owned by nothing else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw as RawFd) };
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    let timeout = PollTimeout::try_from(DEADLINE).expect("DEADLINE fits poll");
    poll(&mut fds, timeout).expect("poll the pidfd") > 0
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Polls `condition` until it holds; fails the test with `what` after `DEADLINE`.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// Temporary directories, scripts and configs
// ---------------------------------------------------------------------------------------------

/// A fresh directory per test, removed at the end unless the test failed (kept for debugging).
pub struct TestDir {
    pub path: PathBuf,
}

impl TestDir {
    pub fn new(test: &str) -> TestDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "rinetd-test-{test}-{}-{unique}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create test dir");
        // Handlers may run as `nobody`: they must be able to reach their scripts.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod test dir");
        TestDir { path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes a file with the given mode and returns its path.
    pub fn write(&self, name: &str, contents: &str, mode: u32) -> PathBuf {
        let path = self.join(name);
        fs::write(&path, contents).expect("write test file");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod test file");
        path
    }

    /// A `#!/bin/sh` handler script with `body` (mode 0755).
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        self.write(name, &format!("#!/bin/sh\n{body}\n"), 0o755)
    }

    /// `rinetd.conf` holding exactly `yaml` (mode 0644: rinetd refuses group/other-writable).
    pub fn config(&self, yaml: &str) -> PathBuf {
        self.write("rinetd.conf", yaml, 0o644)
    }

    /// `rinetd.conf` serving `services`.
    pub fn services_config(&self, services: &[Service]) -> PathBuf {
        self.config(&services_yaml(services))
    }
}

/// A self-signed certificate for `localhost` and its key (`cert.pem`, `key.pem` in `dir`), made
/// with the openssl CLI so that no private key is ever committed; None without openssl.
pub fn self_signed_certificate(dir: &TestDir) -> Option<(PathBuf, PathBuf)> {
    let made = Command::new("openssl")
        .current_dir(&dir.path)
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .output()
        .ok()?;
    made.status
        .success()
        .then(|| (dir.join("cert.pem"), dir.join("key.pem")))
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("test files kept in {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// One entry of `services:`, on 127.0.0.1 and an ephemeral port unless overridden.
#[derive(Clone)]
pub struct Service {
    name: String,
    keys: Vec<(String, String)>,
}

impl Service {
    pub fn new(name: &str, server: &Path) -> Service {
        Service {
            name: name.to_string(),
            keys: vec![
                ("address".into(), "127.0.0.1".into()),
                ("port".into(), "0".into()),
                ("server".into(), server.display().to_string()),
            ],
        }
    }

    /// Sets `key: value` (`value` is YAML, written as is), replacing an earlier value.
    pub fn set(mut self, key: &str, value: &str) -> Service {
        self.keys.retain(|(k, _)| k != key);
        self.keys.push((key.to_string(), value.to_string()));
        self
    }
}

pub fn services_yaml(services: &[Service]) -> String {
    let mut yaml = String::from("services:\n");
    for service in services {
        yaml.push_str(&format!("  - name: {}\n", service.name));
        for (key, value) in &service.keys {
            yaml.push_str(&format!("    {key}: {value}\n"));
        }
    }
    yaml
}

// ---------------------------------------------------------------------------------------------
// The daemon and its log
// ---------------------------------------------------------------------------------------------

/// The daemon's stderr, one entry per line, shared with the thread that reads it.
#[derive(Default)]
struct Log {
    state: Mutex<LogState>,
    grown: Condvar,
}

#[derive(Default)]
struct LogState {
    lines: Vec<String>,
    /// When each line arrived (for tests that measure delays between events).
    arrived: Vec<Instant>,
    closed: bool,
}

impl Log {
    fn lock(&self) -> MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A line of the daemon's log and its position (for "this happened before that").
#[derive(Debug, Clone)]
pub struct LogLine {
    pub index: usize,
    pub text: String,
    /// When the test read it.
    pub at: Instant,
}

impl LogLine {
    /// The value of `key=value` in this line, a quoted one unquoted (logfmt).
    pub fn field(&self, key: &str) -> String {
        let marker = format!(" {key}=");
        let start = self
            .text
            .find(&marker)
            .unwrap_or_else(|| panic!("no {key}= in log line {:?}", self.text))
            + marker.len();
        let rest = &self.text[start..];
        let Some(quoted) = rest.strip_prefix('"') else {
            return rest.split(' ').next().unwrap_or_default().to_string();
        };
        let mut value = String::new();
        let mut chars = quoted.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => return value,
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some('r') => value.push('\r'),
                    Some('t') => value.push('\t'),
                    Some(other) => value.push(other),
                    None => break,
                },
                c => value.push(c),
            }
        }
        panic!("unterminated value of {key}= in log line {:?}", self.text)
    }

    pub fn pid(&self) -> i32 {
        self.field("pid").parse().expect("pid= is a number")
    }
}

/// A running `rinetd -f --log stderr`; SIGTERMed and reaped when dropped.
pub struct Daemon {
    child: Child,
    log: Arc<Log>,
    reaped: Option<ExitStatus>,
}

/// `rinetd -f` for `config` behind a wrapper command (prlimit, setpriv) that execs it.
pub fn wrapped(wrapper: &[&str], config: &Path) -> Command {
    let mut command = Command::new(wrapper[0]);
    command
        .args(&wrapper[1..])
        .arg(rinetd_path())
        .arg("-c")
        .arg(config)
        .args(["-f", "--log", "stderr"]);
    command
}

impl Daemon {
    /// `rinetd -c CONFIG -f --log stderr`, ready for `Daemon::spawn` (tests may add env/args).
    pub fn command(config: &Path) -> Command {
        let mut command = rinetd();
        command
            .arg("-c")
            .arg(config)
            .args(["-f", "--log", "stderr"]);
        command
    }

    /// Writes a config serving `services` in `dir`, starts the daemon and waits until ready.
    pub fn start(dir: &TestDir, services: &[Service]) -> Daemon {
        Daemon::spawn(Daemon::command(&dir.services_config(services)))
    }

    /// Starts `command` with stderr collected, and waits for the `ready` log line.
    pub fn spawn(command: Command) -> Daemon {
        let daemon = Daemon::start_command(command);
        daemon.wait_for_line("ready services=");
        daemon
    }

    /// Starts `command` with stderr collected, without waiting for anything.
    pub fn start_command(mut command: Command) -> Daemon {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start rinetd");
        let log = Arc::new(Log::default());
        let stderr = child.stderr.take().expect("piped stderr");
        let shared = Arc::clone(&log);
        thread::spawn(move || collect_lines(stderr, &shared));
        Daemon {
            child,
            log,
            reaped: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Every line logged so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.lock().lines.clone()
    }

    /// The first log line containing `pattern`, waiting for it up to `DEADLINE`.
    pub fn wait_for_line(&self, pattern: &str) -> LogLine {
        self.wait_for(pattern, |line| line.contains(pattern))
    }

    /// The first log line after `after` containing `pattern`.
    pub fn wait_for_line_after(&self, after: &LogLine, pattern: &str) -> LogLine {
        self.wait_for_nth(pattern, after.index + 1, DEADLINE, |line| {
            line.contains(pattern)
        })
    }

    /// The first log line after `after` containing `pattern`, waiting up to `within` (for
    /// events slower than `DEADLINE` by design).
    pub fn wait_for_line_after_within(
        &self,
        after: &LogLine,
        pattern: &str,
        within: Duration,
    ) -> LogLine {
        self.wait_for_nth(pattern, after.index + 1, within, |line| {
            line.contains(pattern)
        })
    }

    /// The first line containing `pattern`, waiting up to `within` (for events slower than
    /// `DEADLINE` by design, such as a bind retry).
    pub fn wait_for_line_within(&self, pattern: &str, within: Duration) -> LogLine {
        self.wait_for_nth(pattern, 0, within, |line| line.contains(pattern))
    }

    /// The first log line satisfying `matches`; `what` describes it in the failure message.
    pub fn wait_for(&self, what: &str, matches: impl Fn(&str) -> bool) -> LogLine {
        self.wait_for_nth(what, 0, DEADLINE, matches)
    }

    fn wait_for_nth(
        &self,
        what: &str,
        from: usize,
        within: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> LogLine {
        let deadline = Instant::now() + within;
        let mut state = self.log.lock();
        loop {
            let found = state
                .lines
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, line)| matches(line));
            if let Some((index, text)) = found {
                return LogLine {
                    index,
                    text: text.clone(),
                    at: state.arrived[index],
                };
            }
            let now = Instant::now();
            if state.closed || now >= deadline {
                let why = if state.closed {
                    "rinetd closed its log"
                } else {
                    "timed out"
                };
                // Unlocked before panicking: a poisoned log would abort the cleanup in `Drop`.
                let lines = state.lines.join("\n");
                drop(state);
                panic!("{why} waiting for a log line with {what:?}; log so far:\n{lines}");
            }
            state = self
                .log
                .grown
                .wait_timeout(state, deadline - now)
                .unwrap()
                .0;
        }
    }

    /// The addresses service `name` listens on, from its `listening address=` lines.
    pub fn addresses(&self, name: &str) -> Vec<SocketAddr> {
        self.addresses_of(name, "tcp")
    }

    /// The addresses service `name` listens on for `proto` (`tcp` or `udp`).
    pub fn addresses_of(&self, name: &str, proto: &str) -> Vec<SocketAddr> {
        // Anchored: `time/tcp` must not match `daytime/tcp`'s line.
        let prefix = format!("rinetd: {name}/{proto}: listening address=");
        let addresses: Vec<SocketAddr> = self
            .lines()
            .iter()
            .filter_map(|line| line.strip_prefix(&prefix))
            .map(|address| address.split(' ').next().unwrap_or_default())
            .map(|address| address.parse().expect("listening address parses"))
            .collect();
        assert!(
            !addresses.is_empty(),
            "no listening line for {name}:\n{}",
            self.lines().join("\n")
        );
        addresses
    }

    /// The port service `name` listens on (the ephemeral one when configured with `port: 0`).
    pub fn port(&self, name: &str) -> u16 {
        self.addresses(name)[0].port()
    }

    /// Connects to service `name` on 127.0.0.1.
    pub fn connect(&self, name: &str) -> TcpStream {
        connect((Ipv4Addr::LOCALHOST, self.port(name)).into())
    }

    /// The `accepted` log line of `client`'s connection to service `name`.
    pub fn accepted(&self, name: &str, client: &TcpStream) -> LogLine {
        let client = client.local_addr().expect("client address");
        self.wait_for_line(&format!("{name}/tcp: accepted client={client} pid="))
    }

    /// Waits for the handler `accepted` started to exit and be logged.
    pub fn exited(&self, name: &str, accepted: &LogLine) -> LogLine {
        self.wait_for_line(&format!("{name}/tcp: exited pid={} ", accepted.pid()))
    }

    /// Connects to service `name`, sends `input`, half-closes and returns everything it answered.
    pub fn request(&self, name: &str, input: &str) -> String {
        exchange(self.connect(name), input)
    }

    /// SIGTERM, then wait for the exit (at most `DEADLINE`).
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(status) = self.reaped {
            return status;
        }
        let _ = kill(Pid::from_raw(self.pid()), Signal::SIGTERM);
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for rinetd") {
                self.reaped = Some(status);
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let status = self.child.wait().expect("wait for killed rinetd");
                self.reaped = Some(status);
                panic!("rinetd did not stop within {DEADLINE:?} of SIGTERM");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        keep_log(self.pid(), &self.lines());
        if thread::panicking() {
            eprintln!("rinetd log:\n{}", self.lines().join("\n"));
            let _ = self.child.kill();
            let _ = self.child.wait();
        } else if self.reaped.is_none() {
            self.stop();
        }
    }
}

/// With RINETD_TEST_LOGS set (`make test` sets it), every daemon's log is kept there, one file
/// each, for tests/logfmt_check.py to check every line against docs/log-events.md.
fn keep_log(pid: i32, lines: &[String]) {
    let Some(folder) = std::env::var_os("RINETD_TEST_LOGS") else {
        return;
    };
    static KEPT: AtomicUsize = AtomicUsize::new(0);
    let n = KEPT.fetch_add(1, Ordering::Relaxed);
    let path = Path::new(&folder).join(format!("{}-{pid}-{n}.log", std::process::id()));
    // Only rinetd's own lines: a wrapper (systemd-socket-activate) may write to the same stderr.
    let mut text = String::new();
    for line in lines.iter().filter(|line| line.starts_with("rinetd: ")) {
        text.push_str(line);
        text.push('\n');
    }
    let _ = fs::create_dir_all(&folder);
    let _ = fs::write(path, text);
}

fn collect_lines(stderr: impl Read, log: &Log) {
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        let mut state = log.lock();
        state.lines.push(line);
        state.arrived.push(Instant::now());
        drop(state);
        log.grown.notify_all();
    }
    log.lock().closed = true;
    log.grown.notify_all();
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// A connection whose reads and writes fail after `DEADLINE` instead of hanging the suite.
pub fn connect(address: SocketAddr) -> TcpStream {
    let stream =
        TcpStream::connect(address).unwrap_or_else(|e| panic!("connect to {address}: {e}"));
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.set_write_timeout(Some(DEADLINE)).unwrap();
    stream
}

/// Sends `input`, half-closes, and reads the answer up to EOF.
pub fn exchange(mut stream: TcpStream, input: &str) -> String {
    stream.write_all(input.as_bytes()).expect("send request");
    let _ = stream.shutdown(Shutdown::Write);
    read_to_eof(&mut stream)
}

/// Everything until the peer closes.
pub fn read_to_eof(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .expect("read answer until EOF");
    String::from_utf8_lossy(&answer).into_owned()
}

/// One line (without its newline), read byte by byte so that nothing after it is consumed.
pub fn read_line(stream: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => panic!(
                "EOF before a full line (got {:?})",
                String::from_utf8_lossy(&line)
            ),
            Ok(_) if byte[0] == b'\n' => return String::from_utf8_lossy(&line).into_owned(),
            Ok(_) => line.push(byte[0]),
            Err(e) => panic!("reading a line: {e}"),
        }
    }
}

/// A port that is free on both 127.0.0.1 and ::1 right now (for fixed-port configs).
pub fn free_port_on_both_families() -> u16 {
    for _ in 0..100 {
        let v4 = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        let port = v4.local_addr().unwrap().port();
        if TcpListener::bind((Ipv6Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free on both 127.0.0.1 and ::1");
}

// ---------------------------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------------------------

/// `(ppid, state)` of a process, or `None` once it no longer exists.
pub fn process_status(pid: i32) -> Option<(i32, char)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields resume after the last ')'.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let mut fields = after_name.split(' ');
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((ppid, state))
}

/// Gone, or a zombie nobody has reaped yet (orphans may outlive us in a container without init).
pub fn is_not_running(pid: i32) -> bool {
    process_status(pid).is_none_or(|(_, state)| state == 'Z')
}

/// The zombie children of `parent`.
pub fn zombie_children(parent: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| process_status(pid) == Some((parent, 'Z')))
        .collect()
}

/// A cgroup limiting how many processes rinetd and its handlers may have: the v1 pids
/// controller where it is mounted, else cgroup v2's when its root offers the pids controller.
pub struct PidsCgroup {
    path: PathBuf,
}

impl PidsCgroup {
    pub fn new(test: &str, max: u32) -> Option<PidsCgroup> {
        let name = format!("rinetd-test-{test}-{}", std::process::id());
        let v1 = Path::new("/sys/fs/cgroup/pids");
        let v2 = Path::new("/sys/fs/cgroup");
        let path = if v1.join("cgroup.procs").exists() {
            v1.join(name)
        } else {
            let controllers = fs::read_to_string(v2.join("cgroup.controllers")).ok()?;
            if !controllers.split_whitespace().any(|c| c == "pids") {
                return None;
            }
            fs::write(v2.join("cgroup.subtree_control"), "+pids").ok()?;
            v2.join(name)
        };
        fs::create_dir(&path).ok()?;
        fs::write(path.join("pids.max"), max.to_string()).ok()?;
        Some(PidsCgroup { path })
    }

    pub fn add(&self, pid: i32) {
        fs::write(self.path.join("cgroup.procs"), pid.to_string()).expect("join the cgroup");
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.path);
    }
}

/// The kernel's queues of one established IPv4 TCP socket (`/proc/net/tcp`).
pub struct Queues {
    /// Written by its owner, not yet taken by the peer.
    pub send: u64,
    /// Arrived, not yet read by its owner.
    pub receive: u64,
}

/// The established IPv4 TCP sockets whose local port is `port`: for a service's port, rinetd's
/// ends of its connections.
pub fn established_on(port: u16) -> Vec<Queues> {
    let table = fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()?;
            let (send, receive) = fields.get(4)?.split_once(':')?;
            let queues = Queues {
                send: u64::from_str_radix(send, 16).ok()?,
                receive: u64::from_str_radix(receive, 16).ok()?,
            };
            (local_port == port && fields.get(3) == Some(&"01")).then_some(queues)
        })
        .collect()
}

/// Waits until `queued()` holds more than 16 KiB and the same on two looks in a row: a queue
/// that nobody drains (the side that should read it has stopped reading).
pub fn wait_until_stalled(what: &str, mut queued: impl FnMut() -> u64) {
    let mut last = 0;
    wait_until(what, || {
        let now = queued();
        let still = now == last && now > 16 << 10;
        last = now;
        still
    });
}

/// Lowers rinetd's soft RLIMIT_NOFILE to leave exactly `free` descriptors it can open (its
/// open ones counted by number); returns the limit it had, for `restore_nofile`.
pub fn leave_free_descriptors(pid: i32, free: usize) -> libc::rlimit {
    let mut open: Vec<usize> = open_descriptors(pid)
        .into_iter()
        .filter_map(|fd| usize::try_from(fd).ok())
        .collect();
    open.sort_unstable();
    let mut limit = 0;
    let mut available = 0;
    while available < free || open.contains(&limit) {
        if !open.contains(&limit) {
            available += 1;
        }
        limit += 1;
    }
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit reads `new` and writes `old`, both valid for the call.
    let ok = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(ok, 0, "prlimit: {}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: limit as libc::rlim_t,
        rlim_max: old.rlim_max,
    };
    // SAFETY: as above.
    let ok = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
    assert_eq!(ok, 0, "prlimit: {}", std::io::Error::last_os_error());
    old
}

pub fn restore_nofile(pid: i32, old: libc::rlimit) {
    // SAFETY: prlimit reads `old`, valid for the call.
    let ok = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &old, std::ptr::null_mut()) };
    assert_eq!(ok, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// The numbers of the descriptors `pid` has open (/proc/PID/fd).
pub fn open_descriptors(pid: i32) -> Vec<i32> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

pub fn open_fd_count(pid: i32) -> usize {
    open_descriptors(pid).len()
}

// ---------------------------------------------------------------------------------------------
// Builtins, datagrams and UNIX sockets
// ---------------------------------------------------------------------------------------------

impl Service {
    /// A service answered by `builtin` (`echo`, `chargen`…), tcp on 127.0.0.1 and an ephemeral
    /// port unless overridden (`.set("protocol", "udp")`).
    pub fn builtin(name: &str, builtin: &str) -> Service {
        Service {
            name: name.to_string(),
            keys: vec![
                ("address".into(), "127.0.0.1".into()),
                ("port".into(), "0".into()),
                ("builtin".into(), builtin.to_string()),
            ],
        }
    }

    /// A `protocol: unix` service listening on `path`, served by `server`.
    pub fn unix(name: &str, server: &Path, path: &Path) -> Service {
        Service::new(name, server)
            .unset("address")
            .unset("port")
            .set("protocol", "unix")
            .set("path", &path.display().to_string())
    }

    /// Removes `key` (for keys `new` writes that a service must not have).
    pub fn unset(mut self, key: &str) -> Service {
        self.keys.retain(|(k, _)| k != key);
        self
    }
}

impl Daemon {
    /// The first address UDP service `name` listens on.
    pub fn udp_address(&self, name: &str) -> SocketAddr {
        self.addresses_of(name, "udp")[0]
    }

    /// How many log lines so far contain `pattern`.
    pub fn count_lines(&self, pattern: &str) -> usize {
        self.log
            .lock()
            .lines
            .iter()
            .filter(|line| line.contains(pattern))
            .count()
    }

    /// Asserts that `count` lines contain `pattern`, once the log reader has caught up: a reply
    /// the client already holds may have been sent before its line reached the reader.
    pub fn assert_line_count(&self, pattern: &str, count: usize) {
        wait_until(&format!("{count} lines with {pattern:?}"), || {
            self.count_lines(pattern) >= count
        });
        assert_eq!(self.count_lines(pattern), count, "{:#?}", self.lines());
    }
}

/// A UDP socket on `address` whose receives fail after `DEADLINE` instead of hanging the suite.
pub fn udp_socket_on(address: SocketAddr) -> UdpSocket {
    let socket = UdpSocket::bind(address).unwrap_or_else(|e| panic!("bind {address}: {e}"));
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    socket
}

/// A UDP client on 127.0.0.1 and an ephemeral port.
pub fn udp_client() -> UdpSocket {
    udp_socket_on((Ipv4Addr::LOCALHOST, 0).into())
}

/// The next datagram `socket` receives, which must come from `sender`. A receive with a time
/// limit fails with EINTR when the test process is stopped and continued (as when the machine
/// is checkpointed): that is tried again, not a test failure.
pub fn receive_from(socket: &UdpSocket, sender: SocketAddr) -> Vec<u8> {
    let mut buf = vec![0u8; 65_536];
    let (len, from) = loop {
        match socket.recv_from(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            received => break received,
        }
    }
    .unwrap_or_else(|e| panic!("no datagram from {sender}: {e}"));
    assert_eq!(from, sender, "a datagram from the wrong sender");
    buf.truncate(len);
    buf
}

/// Sends `payload` from `socket` to `service` and returns the reply.
pub fn udp_exchange(socket: &UdpSocket, service: SocketAddr, payload: &[u8]) -> Vec<u8> {
    socket.send_to(payload, service).expect("send datagram");
    receive_from(socket, service)
}

/// Whether a datagram is queued on `socket` right now (without waiting or taking it).
pub fn has_datagram(socket: &UdpSocket) -> bool {
    socket.set_nonblocking(true).unwrap();
    let queued = socket.peek_from(&mut [0u8; 1]).is_ok();
    socket.set_nonblocking(false).unwrap();
    queued
}

/// What the peer sent before it closed the connection, by FIN or by RST (a peer that closes
/// with unread input resets the connection: "closed, nothing written" either way).
pub fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(err) => panic!("read until the connection closes: {err}"),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// A UDP echo builtin named `sync`, to run next to services under test (see `udp_sync`).
pub fn udp_sync_service() -> Service {
    Service::builtin("sync", "echo").set("protocol", "udp")
}

/// A round trip from `client` through `udp_sync_service`: everything `client` sent before has
/// been handled, and any reply to it is already queued on `client`, ahead of this one
/// (`receive_from` checks each reply's sender).
pub fn udp_sync(daemon: &Daemon, client: &UdpSocket) {
    let sync = daemon.udp_address("sync");
    assert_eq!(udp_exchange(client, sync, b"sync"), b"sync");
}

/// Connects to `name` and checks the connection is closed at once with nothing written, the
/// refusal logged with the client's address and `reason`, and no handler started for it.
pub fn assert_refused(daemon: &Daemon, name: &str, reason: &str) -> LogLine {
    let mut client = daemon.connect(name);
    let client_address = client.local_addr().unwrap();
    assert_eq!(
        read_to_eof(&mut client),
        "",
        "a refused client gets nothing"
    );
    let refused = daemon.wait_for_line(&format!(
        "{name}/tcp: refused client={client_address} reason={reason}"
    ));
    let accepted = format!("accepted client={client_address} ");
    assert!(
        !daemon.lines().iter().any(|line| line.contains(&accepted)),
        "a refused client must not get a handler"
    );
    refused
}
