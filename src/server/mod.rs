//! The event loop and the live service table: listeners, limits, running handlers and builtin
//! connections, their pipes and timers, all driven by one mio poll and one `match` on the token.
//! Stream services (accept, PROXY headers, TCP builtins) are in `stream.rs`, datagram services
//! in `datagram.rs`; handing a socket to a `wait: true` handler is here, shared by both.

mod datagram;
mod reload;
mod stream;
mod timers;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use log::{error, info, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use socket2::Socket;

use crate::child::REPORT_PREFIX;
use crate::config::{Builtin, Protocol};
use crate::listener::{bind_tcp, bind_udp, bind_unix, local_address};
use crate::notify::Notifier;
use crate::resolve::{Endpoint, Service};
use crate::signals::{self, Signals};
use crate::spawn::{Inherited, OutputPipe, Stdio, spawn};

use datagram::Reply;
use stream::{BuiltinConnection, Held, PendingProxy};
use timers::{TimerId, Timers};

const SIGNAL_TOKEN: Token = Token(0);
/// Between the SIGTERM of a timed-out handler's group and its SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long a stop waits for handlers before killing them.
const STOP_GRACE: Duration = Duration::from_secs(10);
const BIND_RETRY: Duration = Duration::from_secs(10);
/// After EMFILE/ENFILE/ENOBUFS/ENOMEM: long enough not to spin, short enough that service
/// resumes as soon as a descriptor frees up.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
const FORK_BACKOFF: Duration = Duration::from_secs(1);
/// A `wait: true` stream handler that fails sooner than this is not restarted before it has
/// passed: the connection it left in the backlog would otherwise restart it in a loop.
const WAIT_RESTART_DELAY: Duration = Duration::from_secs(1);
/// A handler's stderr line longer than this is logged in pieces.
const MAX_LINE: usize = 4096;
/// Bytes of one handler's output read per turn.
const OUTPUT_TURN: usize = 64 * 1024;
/// Connections accepted or datagrams read per listener per turn, so that one busy service
/// cannot starve the others.
const TURN: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PauseReason {
    RateLimit,
    Backoff,
}

/// How a service is served, decided once from its spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// tcp/unix nowait: a handler process per connection.
    StreamExec,
    /// tcp: a builtin per connection, inside the loop.
    StreamBuiltin(Builtin),
    /// udp nowait: a handler process per datagram.
    DatagramExec,
    /// udp: a builtin answering each datagram.
    DatagramBuiltin(Builtin),
    /// tcp/unix/udp wait: the socket itself is handed to one handler at a time.
    Wait,
}

fn kind_of(service: &Service) -> Kind {
    let stream = service.spec.protocol != Protocol::Udp;
    match (&service.exec, service.spec.handler_builtin(), stream) {
        (None, Some(builtin), true) => Kind::StreamBuiltin(builtin),
        (None, Some(builtin), false) => Kind::DatagramBuiltin(builtin),
        _ if service.spec.wait => Kind::Wait,
        (_, _, true) => Kind::StreamExec,
        (_, _, false) => Kind::DatagramExec,
    }
}

/// A bound listening socket: stream (tcp, unix) or datagram (udp).
enum Bound {
    Stream(Socket),
    Datagram(std::net::UdpSocket),
}

impl AsRawFd for Bound {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        match self {
            Bound::Stream(socket) => socket.as_raw_fd(),
            Bound::Datagram(socket) => socket.as_raw_fd(),
        }
    }
}

impl Bound {
    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Bound::Stream(socket) => socket.set_nonblocking(on),
            Bound::Datagram(socket) => socket.set_nonblocking(on),
        }
    }
}

struct Listener {
    endpoint: Endpoint,
    token: Token,
    socket: Option<Bound>,
    /// The IP address really bound (port 0 resolved), once bound.
    bound: Option<SocketAddr>,
    /// A bind failed and a retry is scheduled (so a reload does not start a second one).
    retrying: bool,
    /// Passed in by a service manager (LISTEN_FDS): its socket file is not rinetd's to remove.
    inherited: bool,
    /// The `wait: true` handler holding this socket (shared, and blocking) now. It belongs to
    /// the socket, not the service, so that a reload moving the socket to another service
    /// cannot let that service read from it meanwhile.
    held_by: Option<Pid>,
}

#[derive(Default)]
struct Counters {
    accepted: u64,
    refused: BTreeMap<&'static str, u64>,
    spawn_failures: u64,
}

struct ServiceState {
    service: Service,
    kind: Kind,
    listeners: Vec<Listener>,
    /// Handlers, builtin connections and connections still sending their PROXY header.
    running: u32,
    per_source: HashMap<IpAddr, u32>,
    /// Accept times inside the current rate_limit window.
    window: VecDeque<Instant>,
    paused: Option<(Instant, PauseReason)>,
    /// At max_children (the pause is logged once, and so is the resume).
    full: bool,
    /// A connection admitted whose handler could not be started (fork failed, or no pipe):
    /// kept, and started before anything else is accepted, once the back-off is over.
    held: Option<Held>,
    /// Handlers that could not be started since the last one that could.
    failed_spawns: u64,
    /// A backoff has been logged and nothing has succeeded since: log the next one quietly.
    backoff_logged: bool,
    counters: Counters,
    /// Removed by a reload: no listener, kept only until its last handler has exited.
    retired: bool,
}

impl Listener {
    /// Its address for the log: as bound (an ephemeral port resolved), else as configured.
    fn shown(&self) -> String {
        self.bound
            .map_or_else(|| self.endpoint.to_string(), |a| a.to_string())
    }

    /// A listener still to be bound.
    fn unbound(endpoint: Endpoint, token: Token) -> Listener {
        Listener {
            endpoint,
            token,
            socket: None,
            bound: None,
            retrying: false,
            inherited: false,
            held_by: None,
        }
    }
}

impl ServiceState {
    fn new(service: Service, listeners: Vec<Listener>) -> ServiceState {
        ServiceState {
            kind: kind_of(&service),
            service,
            listeners,
            running: 0,
            per_source: HashMap::new(),
            window: VecDeque::new(),
            paused: None,
            full: false,
            held: None,
            failed_spawns: 0,
            backoff_logged: false,
            counters: Counters::default(),
            retired: false,
        }
    }

    fn label(&self) -> &str {
        &self.service.label
    }

    fn can_accept(&self) -> bool {
        let max = self.service.spec.max_children;
        !self.retired && self.paused.is_none() && (max == 0 || self.running < max)
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

    fn refuse(&mut self, client: &str, reason: &'static str) {
        *self.counters.refused.entry(reason).or_default() += 1;
        info!("{}: refused client={client} reason={reason}", self.label());
    }
}

/// A datagram as `wait: true` first saw it, to recognise it if the handler leaves it unread.
///
/// Sender, length and content are the contract's test; the kernel's arrival time (SO_TIMESTAMPNS)
/// tells a client's byte-identical retry (TFTP and DNS clients send those) from the original.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    sender: SocketAddr,
    len: usize,
    hash: u64,
    arrived: Option<(i64, i64)>,
}

impl Fingerprint {
    fn of(sender: SocketAddr, datagram: &[u8], arrived: Option<(i64, i64)>) -> Fingerprint {
        let mut hasher = DefaultHasher::new();
        datagram.hash(&mut hasher);
        Fingerprint {
            sender,
            len: datagram.len(),
            hash: hasher.finish(),
            arrived,
        }
    }

    /// Whether `other` is the same datagram. The arrival time decides only when both have one:
    /// a handler may have turned time stamps off, or filled the control buffer with messages
    /// of its own.
    fn is_same_datagram(&self, other: &Fingerprint) -> bool {
        let times_agree = match (self.arrived, other.arrived) {
            (Some(mine), Some(theirs)) => mine == theirs,
            _ => true,
        };
        self.sender == other.sender
            && self.len == other.len
            && self.hash == other.hash
            && times_agree
    }
}

enum Role {
    /// A stream connection's handler.
    Connection,
    /// A `wait: true` handler holding listener `index`.
    /// By token, not index: a reload may reorder or remove the service's listeners meanwhile.
    Wait {
        listener: Token,
        trigger: Option<Fingerprint>,
    },
    /// A datagram's handler; its reply is collected under `reply`.
    Datagram { reply: Token },
}

struct Child {
    service: usize,
    started: Instant,
    client: Option<IpAddr>,
    role: Role,
    /// Its output pipe, closed when it is reaped.
    output: Option<Token>,
    /// Its pending `timeout` (SIGTERM) or, after that, SIGKILL timer, cancelled at its exit.
    deadline: Option<TimerId>,
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
    Builtin(BuiltinConnection),
    Proxy(PendingProxy),
    Reply(Reply),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    Resume {
        service: usize,
    },
    Timeout {
        pid: i32,
        started: Instant,
    },
    Kill {
        pid: i32,
        started: Instant,
    },
    /// Keyed by the listener's token, which survives reloads (indices may not).
    RetryBind {
        token: Token,
    },
    ProxyDeadline {
        token: Token,
    },
    StopDeadline,
}

/// Reads, checks and resolves the table again: the services, or every error as a line.
pub type Loader = Box<dyn FnMut() -> Result<Vec<Service>, Vec<String>>>;

/// What the server needs from its surroundings.
pub struct Hooks {
    /// Called once every listener has been tried: writes the pidfile, releases the
    /// daemonizing parent. An error here stops rinetd.
    pub on_ready: Box<dyn FnOnce() -> Result<(), String>>,
    pub load: Loader,
    pub notifier: Notifier,
}

pub struct Server {
    poll: Poll,
    signals: Signals,
    services: Vec<ServiceState>,
    sources: HashMap<Token, Source>,
    next_token: usize,
    children: HashMap<Pid, Child>,
    timers: Timers<Timer>,
    /// Sources that stopped only because their turn was over: served again before sleeping.
    again: VecDeque<Token>,
    inherited: Inherited,
    /// The output pipe for the next handler, made before its connection is accepted.
    spare_pipe: Option<OutputPipe>,
    /// Sockets rinetd itself was socket-activated with, until a service claims them.
    adopted: Vec<Socket>,
    /// Receive buffer of the datagram services, kept between turns (64 KiB).
    datagram_buffer: Vec<u8>,
    /// xorshift state for chargen's datagram lengths.
    random: u32,
    stopping: Option<Instant>,
}

fn is_resource_exhaustion(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

fn would_block(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::WouldBlock
}

/// A client or local address as rinetd judges, logs and passes it on: an IPv4-mapped IPv6
/// address (`::ffff:a.b.c.d`, from a dual-stack socket or a PROXY header) is the IPv4 address,
/// so that ACLs and per-source counts cannot be sidestepped by writing it the other way.
fn canonical(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(address.ip().to_canonical(), address.port())
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

/// `REMOTE_*`/`LOCAL_*` (and for TCP the UCSPI `TCP*` names) of the contract, in its order.
fn address_vars(
    protocol: Protocol,
    remote: SocketAddr,
    local: SocketAddr,
) -> Vec<(&'static str, String)> {
    let (remote_ip, remote_port) = (remote.ip().to_string(), remote.port().to_string());
    let (local_ip, local_port) = (local.ip().to_string(), local.port().to_string());
    let mut vars = vec![
        ("REMOTE_ADDR", remote_ip.clone()),
        ("REMOTE_PORT", remote_port.clone()),
        ("LOCAL_ADDR", local_ip.clone()),
        ("LOCAL_PORT", local_port.clone()),
    ];
    if protocol == Protocol::Tcp {
        vars.extend([
            ("TCPREMOTEIP", remote_ip),
            ("TCPREMOTEPORT", remote_port),
            ("TCPLOCALIP", local_ip),
            ("TCPLOCALPORT", local_port),
        ]);
    }
    vars
}

impl Server {
    pub fn new(
        services: Vec<Service>,
        original_nofile: (u64, u64),
        adopted: Vec<Socket>,
    ) -> io::Result<Server> {
        let poll = Poll::new()?;
        let signals = Signals::install(poll.registry(), SIGNAL_TOKEN)?;
        let inherited = Inherited {
            dev_null: OwnedFd::from(File::options().read(true).write(true).open("/dev/null")?),
            original_nofile,
            reset_signals: signals::to_reset_in_child(),
            child_stack: crate::spawn::ChildStack::new()?,
            dumpable: nix::sys::prctl::get_dumpable().unwrap_or(true),
            memory_sharing_is_safe: std::fs::read_to_string("/proc/sys/fs/suid_dumpable")
                .map_or(true, |value| value.trim() != "1"),
        };
        let mut server = Server {
            poll,
            signals,
            services: Vec::new(),
            sources: HashMap::new(),
            next_token: SIGNAL_TOKEN.0 + 1,
            children: HashMap::new(),
            timers: Timers::new(),
            again: VecDeque::new(),
            inherited,
            spare_pipe: None,
            adopted: Vec::new(),
            datagram_buffer: Vec::new(),
            random: std::process::id() | 1,
            stopping: None,
        };
        server.adopted = adopted;
        for service in services {
            let listeners = service
                .listen
                .iter()
                .map(|endpoint| Listener::unbound(endpoint.clone(), server.new_token()))
                .collect();
            server.services.push(ServiceState::new(service, listeners));
        }
        Ok(server)
    }

    /// The service and index of the listener with `token`, if it still exists and is unbound.
    fn unbound_listener(&self, token: Token) -> Option<(usize, usize)> {
        self.services
            .iter()
            .enumerate()
            .find_map(|(service, state)| {
                let index = state
                    .listeners
                    .iter()
                    .position(|l| l.token == token && l.socket.is_none())?;
                Some((service, index))
            })
    }

    fn new_token(&mut self) -> Token {
        let token = Token(self.next_token);
        self.next_token += 1;
        token
    }

    fn schedule(&mut self, at: Instant, timer: Timer) -> TimerId {
        self.timers.schedule(at, timer)
    }

    fn register(&self, fd: &impl AsRawFd, token: Token, interest: Interest) -> io::Result<()> {
        self.poll
            .registry()
            .register(&mut SourceFd(&fd.as_raw_fd()), token, interest)
    }

    fn deregister(&self, fd: &impl AsRawFd) {
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&fd.as_raw_fd()));
    }

    /// Binds every listener, reports ready, and serves until SIGTERM/SIGINT has been handled.
    pub fn run(mut self, hooks: Hooks) -> Result<(), String> {
        let Hooks {
            on_ready,
            mut load,
            notifier,
        } = hooks;
        for service in 0..self.services.len() {
            for index in 0..self.services[service].listeners.len() {
                self.bind(service, index);
            }
        }
        for socket in self.adopted.drain(..) {
            let address = socket.local_addr().ok().map_or_else(
                || "(unknown)".to_string(),
                |a| match (a.as_socket(), a.as_pathname()) {
                    (Some(ip), _) => ip.to_string(),
                    (None, Some(path)) => path.display().to_string(),
                    (None, None) => "(unnamed)".to_string(),
                },
            );
            warn!("inherited socket {address} matches no service; closed");
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
        notifier.ready();
        let mut events = Events::with_capacity(256);
        loop {
            let now = Instant::now();
            let timeout = if self.again.is_empty() {
                self.timers
                    .next_deadline()
                    .map(|at| at.saturating_duration_since(now))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(err) = self.poll.poll(&mut events, timeout) {
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("poll: {err}"));
            }
            let mut signalled = false;
            // Whether the peer hung up (FIN or RST) matters where data is only peeked at: the
            // queued bytes would hide the end of the stream.
            let ready: Vec<(Token, bool)> = events
                .iter()
                .map(|e| (e.token(), e.is_read_closed() || e.is_error()))
                .collect();
            for (token, hung_up) in ready {
                if token == SIGNAL_TOKEN {
                    signalled = true;
                } else {
                    self.ready(token, hung_up);
                }
            }
            for token in std::mem::take(&mut self.again) {
                self.ready(token, false);
            }
            if signalled {
                let pending = self.signals.drain();
                if pending.child {
                    self.reap();
                }
                if pending.stop && self.stopping.is_none() {
                    notifier.stopping();
                    self.stop();
                }
                if pending.reload && self.stopping.is_none() {
                    notifier.reloading();
                    self.reload(&mut load);
                    notifier.ready();
                }
                if pending.status {
                    self.status();
                }
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
        let datagram = state.service.spec.protocol == Protocol::Udp;
        let kind = state.kind;
        let listener = &mut state.listeners[index];
        let adopted = take_adopted(&mut self.adopted, &listener.endpoint, datagram);
        let inherited = adopted.is_some();
        let bound = match (adopted, &listener.endpoint) {
            (Some(socket), _) => socket.set_nonblocking(true).map(|()| socket),
            (None, Endpoint::Ip(address)) if datagram => bind_udp(*address),
            (None, Endpoint::Ip(address)) => bind_tcp(*address, backlog),
            (None, Endpoint::Unix(path)) => {
                let mode = state.service.spec.unix.as_ref().map_or(0o666, |u| u.mode);
                bind_unix(path, mode, backlog)
            }
        };
        let registered = bound.and_then(|socket| {
            let address = match listener.endpoint {
                Endpoint::Ip(_) => Some(local_address(&socket)?),
                Endpoint::Unix(_) => None,
            };
            let socket = if datagram {
                if kind == Kind::Wait {
                    datagram::stamp_arrivals(&socket)?;
                }
                Bound::Datagram(socket.into())
            } else {
                Bound::Stream(socket)
            };
            self.poll.registry().register(
                &mut SourceFd(&socket.as_raw_fd()),
                listener.token,
                Interest::READABLE,
            )?;
            Ok((socket, address))
        });
        match registered {
            Ok((socket, address)) => {
                listener.socket = Some(socket);
                listener.bound = address;
                listener.inherited = inherited;
                let how = if inherited { " inherited" } else { "" };
                info!(
                    "{}: listening address={}{how}",
                    state.service.label,
                    listener.shown()
                );
                self.sources
                    .insert(listener.token, Source::Listener { service, index });
                // Clients may have queued while the port was being retried.
                self.listener_ready(service, index);
            }
            Err(err) => {
                warn!(
                    "{}: bind failed address={} error={err} retry={}s",
                    state.service.label,
                    listener.endpoint,
                    BIND_RETRY.as_secs()
                );
                let token = listener.token;
                listener.retrying = true;
                self.schedule(Instant::now() + BIND_RETRY, Timer::RetryBind { token });
            }
        }
    }

    fn ready(&mut self, token: Token, hung_up: bool) {
        match self.sources.get(&token) {
            Some(Source::Listener { service, index }) => {
                let (service, index) = (*service, *index);
                self.listener_ready(service, index);
            }
            Some(Source::Output(_)) => self.read_output(token, false),
            Some(Source::Builtin(_)) => self.drive_builtin(token),
            Some(Source::Proxy(_)) => self.read_proxy(token, hung_up),
            Some(Source::Reply(_)) => self.read_reply(token),
            None => {}
        }
    }

    fn listener_ready(&mut self, service: usize, index: usize) {
        if self.stopping.is_some() {
            return;
        }
        match self.services[service].kind {
            Kind::StreamExec | Kind::StreamBuiltin(_) => self.accept_from(service, index),
            Kind::DatagramExec => self.datagrams_to_handlers(service, index),
            Kind::DatagramBuiltin(builtin) => self.datagrams_to_builtin(service, index, builtin),
            Kind::Wait => self.hand_over(service, index),
        }
    }

    /// Serves whatever waits on every listener of `service` (after a pause or a handler's exit).
    fn service_ready(&mut self, service: usize) {
        for index in 0..self.services[service].listeners.len() {
            self.listener_ready(service, index);
        }
    }

    fn back_off(
        &mut self,
        service: usize,
        delay: Duration,
        what: &str,
        err: &dyn std::fmt::Display,
    ) {
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

    /// The output pipe for the next handler; running out of descriptors backs the service off.
    fn take_pipe(&mut self, service: usize) -> Option<OutputPipe> {
        match self.spare_pipe.take().map_or_else(OutputPipe::new, Ok) {
            Ok(pipe) => Some(pipe),
            Err(err) => {
                self.back_off(service, ACCEPT_BACKOFF, "accept failed", &err);
                None
            }
        }
    }

    /// Makes sure a pipe is ready before a connection or datagram is taken in.
    fn prepare_pipe(&mut self, service: usize) -> bool {
        if self.spare_pipe.is_none() {
            self.spare_pipe = self.take_pipe(service);
        }
        self.spare_pipe.is_some()
    }

    /// Counts an accept against `rate_limit`; the accept that fills the window starts a pause.
    fn count_for_rate_limit(&mut self, service: usize, now: Instant) {
        let state = &mut self.services[service];
        state.counters.accepted += 1;
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

    /// One more handler or connection of `service`, from `client`.
    fn occupy(&mut self, service: usize, client: Option<IpAddr>) {
        let state = &mut self.services[service];
        state.running += 1;
        if let Some(client) = client {
            *state.per_source.entry(client).or_default() += 1;
        }
        let max = state.service.spec.max_children;
        // A wait service has one handler at a time anyway: no pause to announce.
        if max > 0 && state.running >= max && !state.full && state.kind != Kind::Wait {
            state.full = true;
            info!(
                "{}: paused reason=max_children running={}",
                state.label(),
                state.running
            );
        }
    }

    /// One handler or connection fewer; a service that was full resumes.
    fn release(&mut self, service: usize, client: Option<IpAddr>) {
        let state = &mut self.services[service];
        state.running = state.running.saturating_sub(1);
        if let Some(client) = client
            && let Some(count) = state.per_source.get_mut(&client)
        {
            *count -= 1;
            if *count == 0 {
                state.per_source.remove(&client);
            }
        }
        let max = state.service.spec.max_children;
        if state.full && (max == 0 || state.running < max) {
            state.full = false;
            info!("{}: resumed", state.label());
            self.serve_soon(service);
        }
    }

    /// Serves what waits on `service`'s listeners on the loop's next turn. Never directly: this
    /// is called from inside accept and close paths, and serving from there would recurse once
    /// per queued client (a backlog of quick clients could overflow the stack).
    fn serve_soon(&mut self, service: usize) {
        let tokens: Vec<Token> = self.services[service]
            .listeners
            .iter()
            .map(|l| l.token)
            .collect();
        self.again.extend(tokens);
    }

    /// Starts a handler of `service` with `stdio`; records it and watches its output.
    /// Starts a handler of `service` with `stdio` and its output `pipe`; records it and watches
    /// its output. None if it could not be started (the service then backs off).
    fn start_handler(
        &mut self,
        service: usize,
        pipe: OutputPipe,
        stdio: Stdio,
        vars: &[(&str, String)],
        client: Option<IpAddr>,
        role: Role,
    ) -> Option<Pid> {
        let state = &self.services[service];
        let plan = state.service.exec.as_ref()?;
        let spawned = match spawn(plan, stdio, vars, &self.inherited, pipe) {
            Ok(spawned) => spawned,
            Err(err) => {
                let state = &mut self.services[service];
                state.counters.spawn_failures += 1;
                state.failed_spawns += 1;
                self.back_off(service, FORK_BACKOFF, "fork failed", &err);
                return None;
            }
        };
        let now = Instant::now();
        let pid = spawned.pid;
        let label = state.service.label.clone();
        let timeout = state.service.spec.timeout;
        let state = &mut self.services[service];
        state.backoff_logged = false;
        if state.failed_spawns > 0 {
            info!("{label}: spawn recovered failures={}", state.failed_spawns);
            state.failed_spawns = 0;
        }
        self.occupy(service, client);
        let output = self.watch_output(label, pid, spawned.output);
        let deadline = timeout.map(|timeout| {
            let timer = Timer::Timeout {
                pid: pid.as_raw(),
                started: now,
            };
            self.schedule(now + timeout, timer)
        });
        self.children.insert(
            pid,
            Child {
                service,
                started: now,
                client,
                role,
                output,
                deadline,
            },
        );
        Some(pid)
    }

    /// `wait: true`: hands the socket of listener `index` to a handler, if something waits on it
    /// and no handler holds it already.
    fn hand_over(&mut self, service: usize, index: usize) {
        let state = &self.services[service];
        let Some(listener) = state.listeners.get(index) else {
            return;
        };
        if !state.can_accept() || listener.held_by.is_some() {
            return;
        }
        let trigger = match &listener.socket {
            Some(Bound::Datagram(_)) => match self.first_datagram(service, index) {
                Some(trigger) => Some(trigger),
                None => return,
            },
            Some(Bound::Stream(socket)) if readable_now(socket) => None,
            _ => return,
        };
        let state = &self.services[service];
        let listener = &state.listeners[index];
        let Some(socket) = &listener.socket else {
            return;
        };
        let fd = socket.as_raw_fd();
        let token = listener.token;
        let vars = [
            ("LISTEN_FDS", "1".to_string()),
            ("LISTEN_FDNAMES", state.service.spec.name.clone()),
        ];
        let role = Role::Wait {
            listener: token,
            trigger,
        };
        let Some(pipe) = self.take_pipe(service) else {
            return;
        };
        let stdio = Stdio::Listening(fd);
        if let Some(pid) = self.start_handler(service, pipe, stdio, &vars, None, role) {
            let state = &mut self.services[service];
            state.listeners[index].held_by = Some(pid);
            info!("{}: handed over pid={pid}", state.label());
        }
    }

    /// A `wait: true` handler has exited: take its socket back (wherever a reload may have
    /// moved it), drop the datagram that started the handler if it left it unread, and hold
    /// back a stream handler that quit at once with clients still waiting, which would
    /// otherwise be restarted in a loop (whatever its exit status).
    fn wait_ended(&mut self, listener: Token, trigger: Option<Fingerprint>, lived: Duration) {
        let found = self
            .services
            .iter()
            .enumerate()
            .find_map(|(service, state)| {
                let index = state.listeners.iter().position(|l| l.token == listener)?;
                Some((service, index))
            });
        // Gone if a reload removed it while the handler ran: nothing to take back then.
        let Some((service, index)) = found else {
            return;
        };
        let state = &mut self.services[service];
        let listener = &mut state.listeners[index];
        listener.held_by = None;
        // Whoever owns the socket now serves what queued meanwhile: no new edge will say so.
        self.again.push_back(listener.token);
        let Some(socket) = &listener.socket else {
            return;
        };
        // The handler shared the socket's file description and made it blocking.
        let _ = socket.set_nonblocking(true);
        match socket {
            Bound::Datagram(socket) => {
                // A handler may have turned time stamps off: rinetd's fingerprints need them.
                if let Err(err) = datagram::stamp_arrivals(socket) {
                    warn!(
                        "{}: cannot time-stamp datagrams error={err}",
                        state.service.label
                    );
                }
                if let Some(trigger) = trigger
                    && datagram::peek_fingerprint(socket)
                        .is_some_and(|first| first.is_same_datagram(&trigger))
                {
                    let _ = datagram::discard_one(socket);
                    warn!(
                        "{}: dropped the datagram from {} the handler left unread",
                        state.label(),
                        trigger.sender
                    );
                }
            }
            Bound::Stream(socket) => {
                if lived < WAIT_RESTART_DELAY && readable_now(socket) {
                    let err = "the handler exited at once with clients waiting";
                    self.back_off(service, WAIT_RESTART_DELAY, "wait handler failed", &err);
                }
            }
        }
    }

    fn watch_output(&mut self, label: String, pid: Pid, output: OwnedFd) -> Option<Token> {
        let token = self.new_token();
        match self.register(&output, token, Interest::READABLE) {
            Ok(()) => {
                let output = Output {
                    label,
                    pid,
                    pipe: File::from(output),
                    partial: Vec::new(),
                };
                self.sources.insert(token, Source::Output(output));
                Some(token)
            }
            Err(err) => {
                warn!("{label}: cannot watch the output of pid={pid} error={err}");
                None
            }
        }
    }

    /// Logs each complete line of a handler's output; at end of file, the rest, then forgets it.
    /// A turn reads at most OUTPUT_TURN bytes, so a handler flooding its stderr cannot hold the
    /// loop; with `closing` (its handler has exited) the pipe is closed after that turn whatever
    /// is left, so a grandchild keeping it open pins no descriptor of rinetd's.
    fn read_output(&mut self, token: Token, closing: bool) {
        let Some(Source::Output(output)) = self.sources.get_mut(&token) else {
            return;
        };
        let mut buf = [0u8; 4096];
        let mut budget = OUTPUT_TURN;
        let finished = loop {
            if budget == 0 {
                break closing;
            }
            match output.pipe.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => {
                    budget = budget.saturating_sub(n);
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
                Err(err) if would_block(&err) => break closing,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break true,
            }
        };
        if budget == 0 && !finished {
            self.again.push_back(token);
        }
        if finished {
            if !output.partial.is_empty() {
                let line = std::mem::take(&mut output.partial);
                log_output_line(output, &line);
            }
            if let Some(Source::Output(output)) = self.sources.remove(&token) {
                self.deregister(&output.pipe);
            }
        }
    }

    /// Reads and checks the whole table; any error keeps the running one exactly as it is.
    fn reload(&mut self, load: &mut Loader) {
        info!("reloading");
        let started = Instant::now();
        match load() {
            Ok(services) => {
                info!(
                    "reload: table read and checked in {}",
                    seconds(started.elapsed())
                );
                self.reconcile(services);
            }
            Err(errors) => {
                for error in &errors {
                    error!("reload: {error}");
                }
                error!(
                    "reload failed errors={}; the running table is unchanged",
                    errors.len()
                );
            }
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
        if let Some(deadline) = child.deadline {
            self.timers.cancel(deadline);
        }
        let elapsed = child.started.elapsed();
        info!(
            "{}: exited pid={pid} status={status} duration={}",
            self.services[child.service].label(),
            seconds(elapsed)
        );
        if let Some(output) = child.output {
            self.read_output(output, true);
        }
        let is_wait = matches!(child.role, Role::Wait { .. });
        match child.role {
            Role::Connection => {}
            Role::Wait { listener, trigger } => self.wait_ended(listener, trigger, elapsed),
            Role::Datagram { reply } => self.send_reply(reply),
        }
        self.release(child.service, child.client);
        // A datagram or wait service may have input waiting that no new event will announce
        // (and a reload may have made a wait service's socket a nowait one meanwhile).
        if is_wait || self.services[child.service].kind != Kind::StreamExec {
            self.serve_soon(child.service);
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(timer) = self.timers.pop_due(now) {
            match timer {
                Timer::Resume { service } => self.resume(service, now),
                Timer::Timeout { pid, started } => self.timeout(Pid::from_raw(pid), started, now),
                Timer::Kill { pid, started } => self.kill_group(Pid::from_raw(pid), started),
                Timer::RetryBind { token } => {
                    if self.stopping.is_none()
                        && let Some((service, index)) = self.unbound_listener(token)
                    {
                        self.bind(service, index);
                    }
                }
                Timer::ProxyDeadline { token } => self.proxy_deadline(token),
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
                self.service_ready(service);
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
        let kill = Timer::Kill {
            pid: pid.as_raw(),
            started,
        };
        let deadline = self.schedule(now + KILL_GRACE, kill);
        if let Some(child) = self.children.get_mut(&pid) {
            child.deadline = Some(deadline);
        }
    }

    /// SIGKILL for a timed-out handler's group, only while the handler is not reaped: until
    /// then its pid, and so its group id, cannot belong to anyone else. Once it has been reaped
    /// the pid may lead an unrelated group (pids wrap in seconds under load), so whatever it
    /// left in its group is not signalled.
    fn kill_group(&mut self, pid: Pid, started: Instant) {
        let Some(child) = self.children.get(&pid).filter(|c| c.started == started) else {
            return;
        };
        let label = self.services[child.service].label().to_string();
        if killpg(pid, Signal::SIGKILL).is_ok() {
            warn!("{label}: timeout pid={pid} signal=SIGKILL");
        }
    }

    /// SIGTERM/SIGINT: close every listener and builtin connection, SIGTERM every handler, wait
    /// up to STOP_GRACE.
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
                    if let (Endpoint::Unix(path), false) = (&listener.endpoint, listener.inherited)
                    {
                        let _ = std::fs::remove_file(path);
                    }
                }
            }
        }
        self.sources
            .retain(|_, source| matches!(source, Source::Output(_) | Source::Reply(_)));
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
        // A retired service is shown while handlers it started still run, then no more.
        let shown: Vec<&ServiceState> = self
            .services
            .iter()
            .filter(|s| !s.retired || s.running > 0)
            .collect();
        info!(
            "status services={} handlers={}",
            shown.len(),
            self.children.len()
        );
        let now = Instant::now();
        for state in shown {
            let bound: Vec<String> = state.listeners.iter().map(Listener::shown).collect();
            let phase = if state.retired {
                "retired".to_string()
            } else if state.listeners.iter().all(|l| l.socket.is_none()) {
                "failed".to_string()
            } else if let Some(pid) = state.listeners.iter().find_map(|l| l.held_by) {
                format!("waiting pid={pid}")
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
            let refused: String = state
                .counters
                .refused
                .iter()
                .map(|(reason, n)| format!(" refused_{reason}={n}"))
                .collect();
            info!(
                "{}: status state={phase} address={} running={} accepted={} spawn_failures={}{refused}",
                state.label(),
                bound.join(","),
                state.running,
                state.counters.accepted,
                state.counters.spawn_failures,
            );
        }
    }
}

/// Takes the inherited socket that is `endpoint` (same address or path, same type), if any.
fn take_adopted(adopted: &mut Vec<Socket>, endpoint: &Endpoint, datagram: bool) -> Option<Socket> {
    let wanted = if datagram {
        socket2::Type::DGRAM
    } else {
        socket2::Type::STREAM
    };
    let position = adopted.iter().position(|socket| {
        let Ok(local) = socket.local_addr() else {
            return false;
        };
        let same_place = match endpoint {
            Endpoint::Ip(address) => local.as_socket() == Some(*address),
            Endpoint::Unix(path) => local.as_pathname() == Some(path.as_path()),
        };
        same_place && socket.r#type().ok() == Some(wanted)
    })?;
    Some(adopted.swap_remove(position))
}

/// Whether a listening socket has a connection waiting, without accepting it.
fn readable_now(socket: &Socket) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
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
