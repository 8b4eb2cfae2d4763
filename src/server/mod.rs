//! The event loop: one mio poll, one dispatch on the token, the timers, the run queue and the
//! stop. Only the loop serves: the rest of the wing says what became runnable (`wake`, or a
//! token pushed on `runnable`) and the loop serves it on this turn.
//!
//! The wing's jobs, a file each: `table` (the services and their policy, as plain data),
//! `listeners` (sockets by token), `stream` and `datagram` (serving each kind), `wait`
//! (`wait: true`), `children` (handler processes), `reload`, `status`, `timers`.

mod children;
mod datagram;
mod listeners;
mod metrics;
mod reload;
mod status;
mod stream;
mod supervise;
mod table;
mod timers;
mod tls;
mod tokens;
mod wait;

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::unistd::Pid;
use socket2::Socket;

use crate::events;
use crate::notify::Notifier;
use crate::service::{Kind, Refusal, Service};
use crate::signals::Signals;
use crate::spawn::Spawner;

use children::Children;
use datagram::Datagrams;
use listeners::Listeners;
pub use reload::Loader;
use stream::Streams;
use table::{ServiceId, Table};
use timers::Timers;
use tokens::{SIGNAL_TOKEN, SourceKind, Tokens, kind_of};

/// How long a stop waits for handlers before killing them.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Connections accepted or datagrams read per listener per turn, so that one busy service
/// cannot starve the others.
pub(super) const TURN: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    /// A pause or back-off is over.
    Resume(ServiceId),
    /// A handler has run for its `timeout`; `started` tells it from a later one with its pid.
    Timeout {
        pid: i32,
        started: Instant,
    },
    Kill {
        pid: i32,
        started: Instant,
    },
    RetryBind(Token),
    /// A PROXY header or an HTTP request head (the `metrics` builtin) is late.
    HeadDeadline(Token),
    StopDeadline,
    /// Time to tell the service manager's watchdog rinetd is alive.
    Watchdog,
    /// A supervised program's back-off is over.
    Respawn(ServiceId),
    /// SIGCHLD's scan for children no pidfd reports (see children.rs).
    Scan,
}

/// What the server needs from its surroundings.
pub struct Hooks {
    /// Called once every listener has been tried: writes the pidfile, releases the
    /// daemonizing parent. An error here stops rinetd.
    pub on_ready: Box<dyn FnOnce() -> Result<(), String>>,
    pub load: Loader,
    pub notifier: Notifier,
}

/// The server. Its fields are the wing's parts, each with its own face (`pub(super)` methods);
/// the files of the wing reach each other only through them.
pub struct Server {
    pub(super) poll: Poll,
    signals: Signals,
    pub(super) tokens: Tokens,
    pub(super) table: Table,
    pub(super) listeners: Listeners,
    pub(super) children: Children,
    pub(super) streams: Streams,
    pub(super) datagrams: Datagrams,
    pub(super) timers: Timers<Timer>,
    /// Sources with work that no new event will announce (a turn was over, a pause ended, a
    /// handler exited): served before the loop sleeps again.
    pub(super) runnable: VecDeque<Token>,
    stopping: Option<Instant>,
    /// The daemon's own counters, for the `metrics` builtin.
    daemon: metrics::Daemon,
    pub(super) supervisor: supervise::Supervisor,
}

pub(super) fn is_resource_exhaustion(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

pub(super) fn would_block(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::WouldBlock
}

impl Server {
    pub fn new(
        services: Vec<Service>,
        original_nofile: (u64, u64),
        inherited: Vec<Socket>,
    ) -> io::Result<Server> {
        let poll = Poll::new()?;
        let signals = Signals::install(poll.registry(), SIGNAL_TOKEN)?;
        let mut server = Server {
            poll,
            signals,
            tokens: Tokens::default(),
            table: Table::default(),
            listeners: Listeners::new(inherited),
            // After the signal handlers: they are among what a handler has reset.
            children: Children::new(Spawner::new(original_nofile)?),
            streams: Streams::default(),
            datagrams: Datagrams::new(),
            timers: Timers::new(),
            runnable: VecDeque::new(),
            stopping: None,
            daemon: metrics::Daemon::new(),
            supervisor: supervise::Supervisor::default(),
        };
        server.table.reserve(services.len());
        for service in services {
            let endpoints = service.listen.clone();
            let id = server.table.insert(service);
            let tokens = endpoints
                .into_iter()
                .map(|endpoint| {
                    let token = server.tokens.next(SourceKind::Listener);
                    server.listeners.add(token, id, endpoint);
                    token
                })
                .collect();
            if let Some(entry) = server.table.get_mut(id) {
                entry.listeners = tokens;
            }
        }
        Ok(server)
    }

    pub(super) fn register(
        &self,
        fd: &impl AsRawFd,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        self.poll
            .registry()
            .register(&mut SourceFd(&fd.as_raw_fd()), token, interest)
    }

    pub(super) fn deregister(&self, fd: &impl AsRawFd) {
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
        // Called once every `notify: true` program is ready (or has failed to start).
        let mut on_ready = Some(on_ready);
        // In the table's order, which the log shows.
        let tokens: Vec<Token> = self
            .table
            .entries()
            .flat_map(|(_, entry)| entry.listeners.clone())
            .collect();
        for token in tokens {
            self.bind(token);
        }
        for address in self.listeners.close_unclaimed() {
            events::inherited_unclaimed(&address);
        }
        // Start-up's temporary allocations are gone: the holes they left go back.
        crate::spawn::release_free_heap();
        // Before saying ready: the output pipe the first handler will get is made ahead, as
        // it is for each later one, so that running out of descriptors holds a connection
        // back instead of dropping it, and what rinetd keeps at rest is there at `ready`.
        let runs_handlers = self
            .table
            .entries()
            .find(|(_, entry)| entry.service.exec_plan().is_some())
            .map(|(id, _)| id);
        if let Some(id) = runs_handlers {
            self.prepare_pipe(id);
        }
        self.start_due_programs();
        let mut events = Events::with_capacity(256);
        loop {
            if on_ready.is_some() && self.supervisor.awaiting_ready.is_empty() {
                if let Some(on_ready) = on_ready.take() {
                    on_ready()?;
                }
                events::ready(self.table.ids().len(), self.listeners.bound_count());
                notifier.ready(&self.status_line());
                if let Some(interval) = notifier.watchdog_interval() {
                    notifier.watchdog();
                    self.timers
                        .schedule(Instant::now() + interval, Timer::Watchdog);
                }
            }
            let timeout = if self.runnable.is_empty() {
                let now = Instant::now();
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
            // Whether the peer hung up (FIN or RST) matters where data is only peeked at: the
            // queued bytes would hide the end of the stream.
            let ready: Vec<(Token, bool)> = events
                .iter()
                .map(|e| (e.token(), e.is_read_closed() || e.is_error()))
                .collect();
            let mut signalled = false;
            for (token, hung_up) in ready {
                if token == SIGNAL_TOKEN {
                    signalled = true;
                } else {
                    self.dispatch(token, hung_up);
                }
            }
            for token in std::mem::take(&mut self.runnable) {
                self.dispatch(token, false);
            }
            if signalled {
                let pending = self.signals.drain();
                if pending.child {
                    self.child_signalled();
                }
                if pending.stop && self.stopping.is_none() {
                    notifier.stopping();
                    self.stop();
                }
                if pending.reload && self.stopping.is_none() {
                    notifier.reloading();
                    self.reload(&mut load);
                    self.start_due_programs();
                    // Before the first READY=1, the one at the start says it.
                    if on_ready.is_none() {
                        notifier.ready(&self.status_line());
                    }
                }
                if pending.status {
                    self.status();
                }
            }
            self.fire_timers(&notifier);
            if self.stopping.is_some() && self.children.is_empty() {
                events::stopped();
                return Ok(());
            }
        }
    }

    /// The one place that serves: a source is ready, or its turn has come again.
    fn dispatch(&mut self, token: Token, hung_up: bool) {
        match kind_of(token) {
            Some(SourceKind::Listener) => self.serve_listener(token),
            Some(SourceKind::Output) => self.read_output(token, false),
            Some(SourceKind::Connection) => self.drive_connection(token, hung_up),
            Some(SourceKind::Reply) => self.read_reply(token),
            Some(SourceKind::Notify) => self.read_notify(token),
            Some(SourceKind::Process) => self.reap_exited(token),
            Some(SourceKind::Signal) | None => {}
        }
    }

    fn serve_listener(&mut self, token: Token) {
        if self.stopping.is_some() {
            return;
        }
        let Some(id) = self.listeners.get(token).map(|l| l.service) else {
            return;
        };
        match self.table.get(id).map(|e| e.kind) {
            Some(Kind::StreamExec | Kind::StreamBuiltin(_)) => self.accept_from(id, token),
            Some(Kind::DatagramExec) => self.datagrams_to_handlers(id, token),
            Some(Kind::DatagramBuiltin(builtin)) => self.datagrams_to_builtin(id, token, builtin),
            Some(Kind::Wait) => self.hand_over(id, token),
            // The program has the sockets; rinetd only keeps them open.
            Some(Kind::Supervised) => {}
            None => {}
        }
    }

    pub(super) fn is_stopping(&self) -> bool {
        self.stopping.is_some()
    }

    /// `id` may have clients waiting that no new event will announce: serve it this turn.
    pub(super) fn wake(&mut self, id: ServiceId) {
        if let Some(entry) = self.table.get(id) {
            self.runnable.extend(entry.listeners.iter().copied());
        }
    }

    /// Stops accepting on `id` for `delay`, logged once until something starts again.
    pub(super) fn back_off(
        &mut self,
        id: ServiceId,
        delay: Duration,
        what: &str,
        err: &dyn std::fmt::Display,
    ) {
        let (until, first) = self.table.back_off(id, Instant::now(), delay);
        if first && let Some(entry) = self.table.get(id) {
            events::backoff(entry.label(), what, err, delay);
        }
        self.timers.schedule(until, Timer::Resume(id));
    }

    pub(super) fn log_refusal(
        &self,
        id: ServiceId,
        client: &dyn std::fmt::Display,
        reason: Refusal,
    ) {
        if let Some(entry) = self.table.get(id) {
            events::refused(entry.label(), &client, reason.as_str());
        }
    }

    fn fire_timers(&mut self, notifier: &Notifier) {
        let now = Instant::now();
        while let Some(timer) = self.timers.pop_due(now) {
            match timer {
                Timer::Resume(id) => {
                    if self.table.resume(id, now) {
                        self.wake(id);
                    }
                }
                Timer::Timeout { pid, started } => self.terminate(Pid::from_raw(pid), started, now),
                Timer::Kill { pid, started } => self.kill_group(Pid::from_raw(pid), started),
                Timer::RetryBind(token) => {
                    let unbound = self.listeners.get(token).is_some_and(|l| !l.is_bound());
                    if self.stopping.is_none() && unbound {
                        self.bind(token);
                    }
                }
                Timer::HeadDeadline(token) => self.head_deadline(token),
                Timer::StopDeadline => self.children.kill_all(),
                Timer::Respawn(id) => self.respawn(id),
                Timer::Scan => self.reap_some(),
                Timer::Watchdog => {
                    notifier.watchdog();
                    if let Some(interval) = notifier.watchdog_interval() {
                        self.timers.schedule(now + interval, Timer::Watchdog);
                    }
                }
            }
        }
    }

    /// SIGTERM/SIGINT: close every listener and connection, SIGTERM every handler, wait up to
    /// STOP_GRACE for them.
    fn stop(&mut self) {
        events::stopping(self.children.len());
        let now = Instant::now();
        self.stopping = Some(now + STOP_GRACE);
        self.listeners.close_all(self.poll.registry());
        self.streams.close_all();
        self.children.terminate_all();
        self.timers.schedule(now + STOP_GRACE, Timer::StopDeadline);
    }
}
