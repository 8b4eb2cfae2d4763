//! The event loop and the live service table: listeners, limits, running handlers, their output
//! pipes and timers, all driven by one mio poll and one `match` on the token.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use socket2::Socket;

use crate::child::REPORT_PREFIX;
use crate::listener::{bind_tcp, local_address};
use crate::resolve::Service;
use crate::signals::{self, Pending, Signals};
use crate::spawn::{Endpoints, Inherited, OutputPipe, spawn};

const SIGNAL_TOKEN: Token = Token(0);
/// Between the SIGTERM of a timed-out handler's group and its SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long a stop waits for handlers before killing them.
const STOP_GRACE: Duration = Duration::from_secs(10);
const BIND_RETRY: Duration = Duration::from_secs(10);
/// After EMFILE/ENFILE/ENOBUFS/ENOMEM from accept: long enough not to spin, short enough that
/// service resumes as soon as a descriptor frees up.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
const FORK_BACKOFF: Duration = Duration::from_secs(1);
/// A handler's stderr line longer than this is logged in pieces.
const MAX_LINE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PauseReason {
    RateLimit,
    Backoff,
}

struct Listener {
    address: SocketAddr,
    token: Token,
    socket: Option<Socket>,
    /// The address really bound (port 0 resolved), once bound.
    bound: Option<SocketAddr>,
}

#[derive(Default)]
struct Counters {
    accepted: u64,
    refused: BTreeMap<&'static str, u64>,
    spawn_failures: u64,
}

struct ServiceState {
    service: Service,
    listeners: Vec<Listener>,
    running: u32,
    per_source: HashMap<IpAddr, u32>,
    /// Accept times inside the current rate_limit window.
    window: VecDeque<Instant>,
    paused: Option<(Instant, PauseReason)>,
    /// At max_children (the pause is logged once, and so is the resume).
    full: bool,
    /// A backoff has been logged and nothing has succeeded since: log the next one quietly.
    backoff_logged: bool,
    counters: Counters,
}

impl ServiceState {
    fn label(&self) -> &str {
        &self.service.label
    }

    fn can_accept(&self) -> bool {
        let max = self.service.spec.max_children;
        self.paused.is_none() && (max == 0 || self.running < max)
    }

    /// Why a client is turned away, if it is: `no_access` wins over `only_from`.
    fn refusal(&self, client: IpAddr) -> Option<&'static str> {
        let spec = &self.service.spec;
        if spec.no_access.iter().any(|net| net.contains(&client)) {
            return Some("no_access");
        }
        if !spec.only_from.is_empty() && !spec.only_from.iter().any(|net| net.contains(&client)) {
            return Some("only_from");
        }
        let per_source = spec.per_source;
        if per_source > 0 && self.per_source.get(&client).copied().unwrap_or(0) >= per_source {
            return Some("per_source");
        }
        None
    }
}

struct Child {
    service: usize,
    started: Instant,
    client: IpAddr,
}

/// The reading end of a handler's output pipe.
struct Output {
    label: String,
    pid: Pid,
    pipe: File,
    partial: Vec<u8>,
}

enum Source {
    Listener { service: usize, index: usize },
    Output(Output),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Resume { service: usize },
    Timeout { pid: i32, started: Instant },
    Kill { pid: i32, started: Instant },
    RetryBind { service: usize, index: usize },
    StopDeadline,
}

pub struct Server {
    poll: Poll,
    signals: Signals,
    services: Vec<ServiceState>,
    sources: HashMap<Token, Source>,
    next_token: usize,
    children: HashMap<Pid, Child>,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    inherited: Inherited,
    /// The output pipe for the next handler, made before its connection is accepted.
    spare_pipe: Option<OutputPipe>,
    stopping: Option<Instant>,
}

fn is_resource_exhaustion(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// A measured duration, to the millisecond: `0.004s`.
fn seconds(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

/// A configured duration as it would be written in the table: `100ms`, `10s`.
fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn describe(status: WaitStatus) -> Option<(Pid, String)> {
    match status {
        WaitStatus::Exited(pid, code) => Some((pid, code.to_string())),
        WaitStatus::Signaled(pid, signal, _) => Some((pid, format!("signal:{}", signal.as_str()))),
        _ => None,
    }
}

impl Server {
    pub fn new(services: Vec<Service>, original_nofile: (u64, u64)) -> io::Result<Server> {
        let poll = Poll::new()?;
        let signals = Signals::install(poll.registry(), SIGNAL_TOKEN)?;
        let inherited = Inherited {
            dev_null: OwnedFd::from(File::options().read(true).write(true).open("/dev/null")?),
            original_nofile,
            reset_signals: signals::to_reset_in_child(),
        };
        let mut server = Server {
            poll,
            signals,
            services: Vec::new(),
            sources: HashMap::new(),
            next_token: SIGNAL_TOKEN.0 + 1,
            children: HashMap::new(),
            timers: BinaryHeap::new(),
            inherited,
            spare_pipe: None,
            stopping: None,
        };
        for service in services {
            let listeners = service
                .listen
                .iter()
                .map(|address| Listener {
                    address: *address,
                    token: server.new_token(),
                    socket: None,
                    bound: None,
                })
                .collect();
            server.services.push(ServiceState {
                service,
                listeners,
                running: 0,
                per_source: HashMap::new(),
                window: VecDeque::new(),
                paused: None,
                full: false,
                backoff_logged: false,
                counters: Counters::default(),
            });
        }
        Ok(server)
    }

    fn new_token(&mut self) -> Token {
        let token = Token(self.next_token);
        self.next_token += 1;
        token
    }

    fn schedule(&mut self, at: Instant, timer: Timer) {
        self.timers.push(Reverse((at, timer)));
    }

    /// Binds every listener, reports ready, and serves until SIGTERM/SIGINT has been handled.
    pub fn run(mut self, on_ready: Box<dyn FnOnce() -> Result<(), String>>) -> Result<(), String> {
        for service in 0..self.services.len() {
            for index in 0..self.services[service].listeners.len() {
                self.bind(service, index);
            }
        }
        let listeners: usize = self
            .services
            .iter()
            .map(|s| s.listeners.iter().filter(|l| l.socket.is_some()).count())
            .sum();
        on_ready()?;
        info!(
            "ready services={} listeners={listeners}",
            self.services.len()
        );
        let mut events = Events::with_capacity(256);
        loop {
            let now = Instant::now();
            let timeout = self
                .timers
                .peek()
                .map(|Reverse((at, _))| at.saturating_duration_since(now));
            if let Err(err) = self.poll.poll(&mut events, timeout) {
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("poll: {err}"));
            }
            let mut signalled = false;
            let ready: Vec<Token> = events.iter().map(|e| e.token()).collect();
            for token in ready {
                if token == SIGNAL_TOKEN {
                    signalled = true;
                } else {
                    self.ready(token);
                }
            }
            if signalled {
                let pending = self.signals.drain();
                self.on_signals(pending);
            }
            self.fire_timers();
            if self.stopping.is_some() && self.children.is_empty() {
                info!("stopped");
                return Ok(());
            }
        }
    }

    fn bind(&mut self, service: usize, index: usize) {
        let state = &mut self.services[service];
        let backlog = state.service.spec.backlog;
        let listener = &mut state.listeners[index];
        let bound = bind_tcp(listener.address, backlog).and_then(|socket| {
            let bound = local_address(&socket)?;
            self.poll.registry().register(
                &mut SourceFd(&socket.as_raw_fd()),
                listener.token,
                Interest::READABLE,
            )?;
            Ok((socket, bound))
        });
        match bound {
            Ok((socket, bound)) => {
                info!("{}: listening address={bound}", state.service.label);
                listener.socket = Some(socket);
                listener.bound = Some(bound);
                self.sources
                    .insert(listener.token, Source::Listener { service, index });
                // Connections may have queued while the port was being retried.
                self.accept_from(service, index);
            }
            Err(err) => {
                warn!(
                    "{}: bind failed address={} error={err} retry={}s",
                    state.service.label,
                    listener.address,
                    BIND_RETRY.as_secs()
                );
                self.schedule(
                    Instant::now() + BIND_RETRY,
                    Timer::RetryBind { service, index },
                );
            }
        }
    }

    fn ready(&mut self, token: Token) {
        match self.sources.get(&token) {
            Some(Source::Listener { service, index }) => {
                let (service, index) = (*service, *index);
                self.accept_from(service, index);
            }
            Some(Source::Output(_)) => self.read_output(token),
            None => {}
        }
    }

    fn accept_all(&mut self, service: usize) {
        for index in 0..self.services[service].listeners.len() {
            self.accept_from(service, index);
        }
    }

    /// Accepts until the backlog is empty (edge-triggered) or a limit stops the service.
    fn accept_from(&mut self, service: usize, index: usize) {
        while self.stopping.is_none() && self.services[service].can_accept() {
            if self.spare_pipe.is_none() {
                match OutputPipe::new() {
                    Ok(pipe) => self.spare_pipe = Some(pipe),
                    Err(err) => {
                        self.back_off(service, ACCEPT_BACKOFF, "accept failed", &err);
                        return;
                    }
                }
            }
            let state = &self.services[service];
            let Some(socket) = &state.listeners[index].socket else {
                return;
            };
            match socket.accept() {
                Ok((connection, peer)) => {
                    if let Some(peer) = peer.as_socket() {
                        self.connection(service, index, connection, peer);
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err)
                    if err.kind() == io::ErrorKind::Interrupted
                        || err.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(err) if is_resource_exhaustion(&err) => {
                    self.back_off(service, ACCEPT_BACKOFF, "accept failed", &err);
                    return;
                }
                Err(err) => {
                    warn!("{}: accept failed error={err}", state.label());
                    return;
                }
            }
        }
    }

    fn back_off(&mut self, service: usize, delay: Duration, what: &str, err: &io::Error) {
        let state = &mut self.services[service];
        if !state.backoff_logged {
            warn!(
                "{}: {what} error={err} backoff={}",
                state.label(),
                human(delay)
            );
            state.backoff_logged = true;
        }
        let until = Instant::now() + delay;
        state.paused = Some((until, PauseReason::Backoff));
        self.schedule(until, Timer::Resume { service });
    }

    /// Counts an accept against `rate_limit`; the accept that fills the window starts a pause.
    fn count_for_rate_limit(&mut self, service: usize, now: Instant) {
        let state = &mut self.services[service];
        let Some(limit) = state.service.spec.rate_limit else {
            return;
        };
        state.window.push_back(now);
        while state
            .window
            .front()
            .is_some_and(|first| now.duration_since(*first) >= limit.per)
        {
            state.window.pop_front();
        }
        if state.window.len() >= limit.max as usize {
            state.window.clear();
            let until = now + limit.pause;
            state.paused = Some((until, PauseReason::RateLimit));
            info!(
                "{}: paused reason=rate_limit for={}",
                state.label(),
                human(limit.pause)
            );
            self.schedule(until, Timer::Resume { service });
        }
    }

    fn connection(&mut self, service: usize, index: usize, connection: Socket, peer: SocketAddr) {
        let now = Instant::now();
        self.count_for_rate_limit(service, now);
        let state = &mut self.services[service];
        state.counters.accepted += 1;
        let client = peer.ip();
        if let Some(reason) = state.refusal(client) {
            *state.counters.refused.entry(reason).or_default() += 1;
            info!("{}: refused client={peer} reason={reason}", state.label());
            return;
        }
        let spec = &state.service.spec;
        if spec.keepalive
            && let Err(err) = connection.set_keepalive(true)
        {
            debug!("{}: SO_KEEPALIVE error={err}", state.label());
        }
        let bound = state.listeners[index]
            .bound
            .unwrap_or(state.listeners[index].address);
        // A wildcard listener learns the local address per connection; others know it.
        let local = if bound.ip().is_unspecified() {
            connection
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .unwrap_or(bound)
        } else {
            bound
        };
        let ends = Endpoints {
            remote: peer,
            local,
        };
        // accept_from made the pipe before accepting; only a caller that skipped it lands here.
        let pipe = self.spare_pipe.take().map_or_else(OutputPipe::new, Ok);
        let spawned = pipe.and_then(|pipe| {
            spawn(
                &state.service.exec,
                &connection,
                &ends,
                &self.inherited,
                pipe,
            )
        });
        drop(connection);
        let spawned = match spawned {
            Ok(spawned) => spawned,
            Err(err) => {
                self.services[service].counters.spawn_failures += 1;
                self.back_off(service, FORK_BACKOFF, "fork failed", &err);
                return;
            }
        };
        let pid = spawned.pid;
        state.backoff_logged = false;
        state.running += 1;
        *state.per_source.entry(client).or_default() += 1;
        info!("{}: accepted client={peer} pid={pid}", state.label());
        let label = state.service.label.clone();
        let timeout = spec.timeout;
        let max = spec.max_children;
        if max > 0 && state.running >= max && !state.full {
            state.full = true;
            info!(
                "{}: paused reason=max_children running={}",
                state.label(),
                state.running
            );
        }
        self.children.insert(
            pid,
            Child {
                service,
                started: now,
                client,
            },
        );
        if let Some(timeout) = timeout {
            self.schedule(
                now + timeout,
                Timer::Timeout {
                    pid: pid.as_raw(),
                    started: now,
                },
            );
        }
        self.watch_output(label, pid, spawned.output);
    }

    fn watch_output(&mut self, label: String, pid: Pid, output: OwnedFd) {
        let token = self.new_token();
        let registered = self.poll.registry().register(
            &mut SourceFd(&output.as_raw_fd()),
            token,
            Interest::READABLE,
        );
        match registered {
            Ok(()) => {
                let output = Output {
                    label,
                    pid,
                    pipe: File::from(output),
                    partial: Vec::new(),
                };
                self.sources.insert(token, Source::Output(output));
            }
            Err(err) => warn!("{label}: cannot watch the output of pid={pid} error={err}"),
        }
    }

    /// Logs each complete line of a handler's output; at end of file, the rest, then forgets it.
    fn read_output(&mut self, token: Token) {
        let Some(Source::Output(output)) = self.sources.get_mut(&token) else {
            return;
        };
        let mut buf = [0u8; 4096];
        let finished = loop {
            match output.pipe.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => {
                    output.partial.extend_from_slice(&buf[..n]);
                    while let Some(end) = output.partial.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = output.partial.drain(..=end).collect();
                        log_output_line(output, &line[..end]);
                    }
                    if output.partial.len() > MAX_LINE {
                        let line = std::mem::take(&mut output.partial);
                        log_output_line(output, &line);
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break false,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break true,
            }
        };
        if finished {
            if !output.partial.is_empty() {
                let line = std::mem::take(&mut output.partial);
                log_output_line(output, &line);
            }
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&output.pipe.as_raw_fd()));
            self.sources.remove(&token);
        }
    }

    fn on_signals(&mut self, pending: Pending) {
        if pending.child {
            self.reap();
        }
        if pending.stop && self.stopping.is_none() {
            self.stop();
        }
        if pending.reload {
            warn!("SIGHUP: reload is not implemented yet; the table is unchanged");
        }
        if pending.status {
            self.status();
        }
    }

    fn reap(&mut self) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return,
                Ok(status) => {
                    if let Some((pid, status)) = describe(status) {
                        self.child_exited(pid, &status);
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(err) => {
                    warn!("waitpid error={err}");
                    return;
                }
            }
        }
    }

    fn child_exited(&mut self, pid: Pid, status: &str) {
        let Some(child) = self.children.remove(&pid) else {
            return;
        };
        let state = &mut self.services[child.service];
        state.running -= 1;
        if let Some(count) = state.per_source.get_mut(&child.client) {
            *count -= 1;
            if *count == 0 {
                state.per_source.remove(&child.client);
            }
        }
        info!(
            "{}: exited pid={pid} status={status} duration={}",
            state.label(),
            seconds(child.started.elapsed())
        );
        if state.full && state.can_accept() {
            state.full = false;
            info!("{}: resumed", state.label());
            self.accept_all(child.service);
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, timer))) = self.timers.peek().copied() {
            if at > now {
                return;
            }
            self.timers.pop();
            match timer {
                Timer::Resume { service } => self.resume(service, now),
                Timer::Timeout { pid, started } => self.timeout(Pid::from_raw(pid), started, now),
                Timer::Kill { pid, started } => self.kill_group(Pid::from_raw(pid), started),
                Timer::RetryBind { service, index } => {
                    if self.stopping.is_none() {
                        self.bind(service, index);
                    }
                }
                Timer::StopDeadline => self.kill_remaining(),
            }
        }
    }

    fn resume(&mut self, service: usize, now: Instant) {
        let state = &mut self.services[service];
        match state.paused {
            Some((until, reason)) if until <= now => {
                state.paused = None;
                if reason == PauseReason::RateLimit {
                    info!("{}: resumed", state.label());
                }
                self.accept_all(service);
            }
            _ => {}
        }
    }

    fn timeout(&mut self, pid: Pid, started: Instant, now: Instant) {
        let Some(child) = self.children.get(&pid).filter(|c| c.started == started) else {
            return;
        };
        let label = self.services[child.service].label().to_string();
        warn!("{label}: timeout pid={pid} signal=SIGTERM");
        let _ = killpg(pid, Signal::SIGTERM);
        self.schedule(
            now + KILL_GRACE,
            Timer::Kill {
                pid: pid.as_raw(),
                started,
            },
        );
    }

    /// SIGKILL for a timed-out handler's group: the handler if it still runs, and whatever it
    /// left behind in its process group if it does not.
    fn kill_group(&mut self, pid: Pid, started: Instant) {
        let label = match self.children.get(&pid) {
            Some(child) if child.started != started => return, // the pid was reused by a new handler
            Some(child) => Some(self.services[child.service].label().to_string()),
            None => None,
        };
        if killpg(pid, Signal::SIGKILL).is_ok()
            && let Some(label) = label
        {
            warn!("{label}: timeout pid={pid} signal=SIGKILL");
        }
    }

    /// SIGTERM/SIGINT: close every listener, SIGTERM every handler, wait up to STOP_GRACE.
    fn stop(&mut self) {
        info!("stopping handlers={}", self.children.len());
        let now = Instant::now();
        self.stopping = Some(now + STOP_GRACE);
        for state in &mut self.services {
            for listener in &mut state.listeners {
                if let Some(socket) = listener.socket.take() {
                    let _ = self
                        .poll
                        .registry()
                        .deregister(&mut SourceFd(&socket.as_raw_fd()));
                    self.sources.remove(&listener.token);
                }
            }
        }
        for pid in self.children.keys() {
            let _ = kill(*pid, Signal::SIGTERM);
        }
        self.schedule(now + STOP_GRACE, Timer::StopDeadline);
    }

    fn kill_remaining(&mut self) {
        for pid in self.children.keys() {
            warn!(
                "stop: pid={pid} still running after {}s, SIGKILL",
                STOP_GRACE.as_secs()
            );
            let _ = killpg(*pid, Signal::SIGKILL);
            let _ = kill(*pid, Signal::SIGKILL);
        }
    }

    fn status(&self) {
        info!(
            "status services={} handlers={}",
            self.services.len(),
            self.children.len()
        );
        let now = Instant::now();
        for state in &self.services {
            let bound: Vec<String> = state
                .listeners
                .iter()
                .map(|l| l.bound.unwrap_or(l.address).to_string())
                .collect();
            let phase = if state.listeners.iter().all(|l| l.socket.is_none()) {
                "failed".to_string()
            } else if let Some((until, _)) = state.paused {
                format!(
                    "paused for={}",
                    seconds(until.saturating_duration_since(now))
                )
            } else if state.full {
                "paused reason=max_children".to_string()
            } else {
                "listening".to_string()
            };
            let refused: Vec<String> = state
                .counters
                .refused
                .iter()
                .map(|(reason, n)| format!("refused_{reason}={n}"))
                .collect();
            info!(
                "{}: status state={phase} address={} running={} accepted={} spawn_failures={} {}",
                state.label(),
                bound.join(","),
                state.running,
                state.counters.accepted,
                state.counters.spawn_failures,
                refused.join(" ")
            );
        }
    }
}

fn log_output_line(output: &Output, line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    let text = text.strip_suffix('\r').unwrap_or(&text);
    match text.strip_prefix(REPORT_PREFIX) {
        Some(reason) => warn!(
            "{}: spawn failed pid={} error={reason}",
            output.label, output.pid
        ),
        None => info!("{}: stderr pid={} line={text}", output.label, output.pid),
    }
}
