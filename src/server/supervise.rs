//! Supervised services (`respawn: true`): started when loaded, started again when they exit
//! (at once after 10 s of running, else after a delay doubling from 1 s up to
//! `respawn_max_delay`), stopped when a reload removes or changes them, with their sockets
//! kept across restarts. `notify: true` programs say they are ready through a NOTIFY_SOCKET of
//! their own (the sd_notify protocol), checked to come from their own process tree.
//!
//! `Restarts` and `Supervision` are the policy, plain data; the rest carries it out.

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddress, UnixDatagram};
use std::time::{Duration, Instant};

use mio::{Interest, Token};
use nix::sys::signal::{Signal, killpg};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixAddr, recvmsg, setsockopt, sockopt};
use nix::unistd::Pid;

use super::children::Role;
use super::table::ServiceId;
use super::{Server, SourceKind, Timer};
use crate::events;
use crate::service::Kind;
use crate::spawn::{OutputPipe, Stdio};

/// A program that has run this long is restarted at once when it exits.
const STABLE: Duration = Duration::from_secs(10);
/// The first wait before restarting a program that exited sooner.
const FIRST_DELAY: Duration = Duration::from_secs(1);
/// Between the SIGTERM of a program a reload stops and its SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// Datagrams read from one notify socket per turn.
const NOTIFY_TURN: usize = 64;

/// The restart delay policy, shared by supervised programs and `wait: true` handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restarts {
    /// The wait before the next start, should the program exit too soon again.
    next: Duration,
}

impl Default for Restarts {
    fn default() -> Self {
        Restarts { next: FIRST_DELAY }
    }
}

impl Restarts {
    /// A program that ran for `lived` has exited: how long to wait before starting it again.
    /// One that ran `stable` or longer starts again at once and resets the delay; a quicker
    /// exit waits, and doubles the wait for the next, up to `max`.
    pub fn after_exit(&mut self, lived: Duration, stable: Duration, max: Duration) -> Duration {
        if lived >= stable {
            self.next = FIRST_DELAY;
            return Duration::ZERO;
        }
        let wait = self.next.min(max);
        self.next = self.next.saturating_mul(2).min(max.max(FIRST_DELAY));
        wait
    }
}

/// Where a supervised program is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Started, with `notify: true`, and READY=1 not received yet.
    Starting {
        pid: Pid,
    },
    Running {
        pid: Pid,
    },
    /// Waiting to be started again.
    BackingOff {
        until: Instant,
    },
    /// Being stopped (a reload changed or removed it); `restart` when it is to run again.
    Stopping {
        pid: Pid,
        restart: bool,
    },
    /// Not running and not to be started (a reload removed it, or rinetd stops).
    Stopped,
}

/// A supervised service's state, for the decisions here, the status dump and the metrics.
#[derive(Debug, Clone)]
pub struct Supervision {
    pub phase: Phase,
    pub restarts: Restarts,
    /// Starts after the first.
    pub restart_count: u64,
    pub last_exit: Option<String>,
    /// The program's last `STATUS=`.
    pub status: Option<String>,
    /// When it was started last.
    pub started: Option<Instant>,
}

impl Default for Supervision {
    fn default() -> Self {
        Supervision {
            phase: Phase::Stopped,
            restarts: Restarts::default(),
            restart_count: 0,
            last_exit: None,
            status: None,
            started: None,
        }
    }
}

impl Supervision {
    pub fn pid(&self) -> Option<Pid> {
        match self.phase {
            Phase::Starting { pid } | Phase::Running { pid } | Phase::Stopping { pid, .. } => {
                Some(pid)
            }
            Phase::BackingOff { .. } | Phase::Stopped => None,
        }
    }

    /// The status dump's words for it: `running pid=N restarts=R`, `backing_off for=…`.
    pub fn describe(&self, now: Instant) -> String {
        let mut text = match self.phase {
            Phase::Starting { pid } => format!("starting pid={pid}"),
            Phase::Running { pid } => format!("running pid={pid}"),
            Phase::BackingOff { until } => format!(
                "backing_off for={}",
                events::Seconds(until.saturating_duration_since(now))
            ),
            Phase::Stopping { pid, .. } => format!("stopping pid={pid}"),
            Phase::Stopped => "stopped".to_string(),
        };
        text.push_str(&format!(" restarts={}", self.restart_count));
        if let Some(status) = &self.last_exit {
            text.push_str(&format!(" last_exit={status}"));
        }
        if let Some(status) = &self.status {
            text.push_str(&format!(" status={}", events::Value(status)));
        }
        text
    }
}

/// The notify sockets, by token, and the programs whose readiness rinetd's own waits for.
#[derive(Default)]
pub struct Supervisor {
    notify: HashMap<Token, NotifySocket>,
    by_service: HashMap<ServiceId, Token>,
    states: HashMap<ServiceId, Supervision>,
    /// Started with `notify: true` and not yet ready (nor failed): rinetd's readiness waits.
    pub awaiting_ready: std::collections::HashSet<ServiceId>,
}

struct NotifySocket {
    service: ServiceId,
    socket: UnixDatagram,
    /// `@name` for NOTIFY_SOCKET.
    name: String,
}

impl Supervisor {
    pub fn state(&self, id: ServiceId) -> Option<&Supervision> {
        self.states.get(&id)
    }

    fn state_mut(&mut self, id: ServiceId) -> &mut Supervision {
        self.states.entry(id).or_default()
    }

    /// Forgets a service that is no longer supervised.
    fn forget(&mut self, id: ServiceId, registry: &mio::Registry) {
        self.states.remove(&id);
        self.awaiting_ready.remove(&id);
        if let Some(token) = self.by_service.remove(&id)
            && let Some(notify) = self.notify.remove(&token)
        {
            let _ = registry.deregister(&mut mio::unix::SourceFd(&notify.socket.as_raw_fd()));
        }
    }
}

/// Whether `pid` is `root` or one of its descendants, by walking /proc's parent links (a
/// bounded number of steps).
fn descends_from(mut pid: i32, root: Pid) -> bool {
    for _ in 0..64 {
        if pid == root.as_raw() {
            return true;
        }
        if pid <= 1 {
            return false;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // The command name may hold spaces and parentheses: the fields resume after the last ')'.
        let parent = stat
            .rfind(')')
            .and_then(|end| stat[end + 1..].split_whitespace().nth(1))
            .and_then(|ppid| ppid.parse().ok());
        match parent {
            Some(parent) => pid = parent,
            None => return false,
        }
    }
    false
}

impl Server {
    /// Starts every supervised service that should run and does not (at start-up, after a
    /// reload, when a back-off ends).
    pub(super) fn start_due_programs(&mut self) {
        if self.is_stopping() {
            return;
        }
        let due: Vec<ServiceId> = self
            .table
            .entries()
            .filter(|(_, entry)| entry.kind == Kind::Supervised && !entry.is_retired())
            .map(|(id, _)| id)
            .filter(|id| {
                self.supervisor
                    .state(*id)
                    .is_none_or(|state| state.phase == Phase::Stopped)
            })
            .collect();
        for id in due {
            self.start_program(id);
        }
    }

    /// Starts the program of supervised service `id` with its sockets (or none).
    pub(super) fn start_program(&mut self, id: ServiceId) {
        let Some(entry) = self.table.get(id) else {
            return;
        };
        let label = entry.label().to_string();
        let name = entry.service.name().to_string();
        let notify = entry.service.supervise.is_some_and(|s| s.notify);
        let sockets: Vec<i32> = entry
            .listeners
            .iter()
            .filter_map(|token| self.listeners.get(*token)?.socket().map(AsRawFd::as_raw_fd))
            .collect();
        let socketless = entry.service.listen.is_empty();
        if !socketless && sockets.len() != entry.listeners.len() {
            // A socket not bound yet: the program starts once it is (the bind retry wakes it).
            self.supervisor.state_mut(id).phase = Phase::Stopped;
            return;
        }
        let mut vars = Vec::new();
        if !socketless {
            let names = vec![name.as_str(); sockets.len()].join(":");
            vars.push(("LISTEN_FDS", sockets.len().to_string()));
            vars.push(("LISTEN_FDNAMES", names));
        }
        if notify {
            match self.notify_socket(id, &name) {
                Ok(address) => vars.push(("NOTIFY_SOCKET", address)),
                Err(err) => events::cannot_serve(&label, &err),
            }
        }
        let Some(pipe) = self.take_pipe(id) else {
            self.program_failed_to_start(id);
            return;
        };
        // Without a socket, stdout goes to the log too, through a pipe of its own.
        let stdout = if socketless {
            match OutputPipe::new() {
                Ok(pipe) => Some(pipe),
                Err(err) => {
                    events::cannot_serve(&label, &err);
                    self.program_failed_to_start(id);
                    return;
                }
            }
        } else {
            None
        };
        let stdio = match &stdout {
            Some(stdout) => Stdio::Detached {
                stdout: stdout.writer_fd(),
            },
            None => Stdio::Listening(sockets),
        };
        let Ok(slot) = self.table.occupy(id, None) else {
            return;
        };
        let Some(pid) = self.start_handler(slot, pipe, stdio, &vars, Role::Supervised) else {
            self.program_failed_to_start(id);
            return;
        };
        if let Some(stdout) = stdout {
            self.watch_stdout(&label, pid, stdout);
        }
        let state = self.supervisor.state_mut(id);
        if state.started.is_some() {
            state.restart_count += 1;
        }
        state.started = Some(Instant::now());
        state.phase = if notify {
            Phase::Starting { pid }
        } else {
            Phase::Running { pid }
        };
        if notify {
            self.supervisor.awaiting_ready.insert(id);
        }
        events::started(&label, pid.as_raw());
    }

    /// Fork failed, or no pipe: tried again after the usual delay.
    fn program_failed_to_start(&mut self, id: ServiceId) {
        let max = self
            .table
            .get(id)
            .map_or(Duration::from_secs(60), |e| e.service.restart_max_delay);
        let now = Instant::now();
        let state = self.supervisor.state_mut(id);
        let delay = state.restarts.after_exit(Duration::ZERO, STABLE, max);
        state.phase = Phase::BackingOff { until: now + delay };
        self.supervisor.awaiting_ready.remove(&id);
        self.timers.schedule(now + delay, Timer::Respawn(id));
    }

    /// The program of `id` has exited with `status` after `lived`: what next.
    pub(super) fn program_exited(
        &mut self,
        id: ServiceId,
        pid: Pid,
        status: &str,
        lived: Duration,
    ) {
        let Some(entry) = self.table.get(id) else {
            return;
        };
        let label = entry.label().to_string();
        let supervised = entry.kind == Kind::Supervised && !entry.is_retired();
        let max = entry.service.restart_max_delay;
        let stopping = self.is_stopping();
        // A failed start counts as a start: rinetd's readiness waits no longer.
        self.supervisor.awaiting_ready.remove(&id);
        let state = self.supervisor.state_mut(id);
        state.last_exit = Some(status.to_string());
        let restart_now = matches!(state.phase, Phase::Stopping { restart: true, .. });
        let removed = matches!(state.phase, Phase::Stopping { restart: false, .. });
        if stopping || !supervised || removed {
            state.phase = Phase::Stopped;
            events::exited(&label, pid.as_raw(), status, lived);
            if !supervised || removed {
                self.supervisor.forget(id, self.poll.registry());
            }
            return;
        }
        let delay = if restart_now {
            Duration::ZERO
        } else {
            state.restarts.after_exit(lived, STABLE, max)
        };
        events::exited_restart(&label, pid.as_raw(), status, lived, delay);
        if delay.is_zero() {
            state.phase = Phase::Stopped;
            self.start_program(id);
        } else {
            let until = Instant::now() + delay;
            state.phase = Phase::BackingOff { until };
            self.timers.schedule(until, Timer::Respawn(id));
        }
    }

    /// A back-off is over.
    pub(super) fn respawn(&mut self, id: ServiceId) {
        let due = self.supervisor.state(id).is_some_and(
            |state| matches!(state.phase, Phase::BackingOff { until } if until <= Instant::now()),
        );
        if due && !self.is_stopping() {
            self.supervisor.state_mut(id).phase = Phase::Stopped;
            self.start_program(id);
        }
    }

    /// A reload changed (`restart`) or removed a supervised service, or made it on-demand: its
    /// program gets SIGTERM on its group, SIGKILL 10 s later if it still runs.
    pub(super) fn stop_program(&mut self, id: ServiceId, restart: bool) {
        let Some(state) = self.supervisor.states.get_mut(&id) else {
            return;
        };
        match state.pid() {
            Some(pid) => {
                state.phase = Phase::Stopping { pid, restart };
                let _ = killpg(pid, Signal::SIGTERM);
                if let Some(started) = self.children.started(pid) {
                    let kill = Timer::Kill {
                        pid: pid.as_raw(),
                        started,
                    };
                    self.timers.schedule(Instant::now() + STOP_GRACE, kill);
                }
            }
            // Backing off: nothing runs; a restart is a start now.
            None if restart => {
                state.phase = Phase::Stopped;
                self.start_program(id);
            }
            None => {
                state.phase = Phase::Stopped;
                self.supervisor.forget(id, self.poll.registry());
            }
        }
    }

    /// The NOTIFY_SOCKET of `id` (made at its first start, kept across restarts).
    fn notify_socket(&mut self, id: ServiceId, name: &str) -> io::Result<String> {
        if let Some(token) = self.supervisor.by_service.get(&id)
            && let Some(notify) = self.supervisor.notify.get(token)
        {
            return Ok(notify.name.clone());
        }
        static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let abstract_name = format!("rinetd/{}/{name}/{n}", std::process::id());
        let socket = UnixDatagram::bind_addr(&UnixAddress::from_abstract_name(&abstract_name)?)?;
        socket.set_nonblocking(true)?;
        setsockopt(&socket, sockopt::PassCred, &true).map_err(io::Error::from)?;
        let token = self.tokens.next(SourceKind::Notify);
        self.register(&socket, token, Interest::READABLE)?;
        let address = format!("@{abstract_name}");
        self.supervisor.notify.insert(
            token,
            NotifySocket {
                service: id,
                socket,
                name: address.clone(),
            },
        );
        self.supervisor.by_service.insert(id, token);
        Ok(address)
    }

    /// Reads what programs said on notify socket `token`: READY=1, STATUS=…, STOPPING=1.
    /// Messages from outside the program's process tree are ignored; descriptors sent along
    /// (a BARRIER=1's) are closed, which is what the sender waits for.
    pub(super) fn read_notify(&mut self, token: Token) {
        for _ in 0..NOTIFY_TURN {
            let Some(notify) = self.supervisor.notify.get(&token) else {
                return;
            };
            let id = notify.service;
            let mut buf = [0u8; 4096];
            let mut iov = [IoSliceMut::new(&mut buf)];
            let mut control = nix::cmsg_space!(libc::ucred, [std::os::fd::RawFd; 8]);
            let received = recvmsg::<UnixAddr>(
                notify.socket.as_raw_fd(),
                &mut iov,
                Some(&mut control),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
            );
            let (len, sender) = match received {
                Ok(message) => {
                    let mut sender = None;
                    for cmsg in message.cmsgs().into_iter().flatten() {
                        match cmsg {
                            ControlMessageOwned::ScmCredentials(credentials) => {
                                sender = Some(credentials.pid());
                            }
                            ControlMessageOwned::ScmRights(fds) => {
                                for fd in fds {
                                    let _ = nix::unistd::close(fd);
                                }
                            }
                            _ => {}
                        }
                    }
                    (message.bytes, sender)
                }
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return,
            };
            let text = String::from_utf8_lossy(&buf[..len]).into_owned();
            let program = self.supervisor.state(id).and_then(Supervision::pid);
            let ours = matches!((sender, program), (Some(sender), Some(program)) if descends_from(sender, program));
            if ours {
                self.notified(id, &text);
            }
        }
        self.runnable.push_back(token);
    }

    fn notified(&mut self, id: ServiceId, text: &str) {
        let label = self
            .table
            .get(id)
            .map_or_else(String::new, |e| e.label().to_string());
        let state = self.supervisor.state_mut(id);
        for line in text.lines() {
            match line.split_once('=') {
                Some(("READY", "1")) => {
                    if let Phase::Starting { pid } = state.phase {
                        state.phase = Phase::Running { pid };
                        events::program_ready(&label, pid.as_raw());
                    }
                }
                Some(("STATUS", status)) => state.status = Some(status.to_string()),
                Some(("STOPPING", "1")) => {
                    if let Some(pid) = state.pid() {
                        events::program_stopping(&label, pid.as_raw());
                    }
                }
                _ => {}
            }
        }
        if !matches!(state.phase, Phase::Starting { .. }) {
            self.supervisor.awaiting_ready.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_exits_wait_twice_as_long_each_time_up_to_the_cap_and_a_stable_run_resets() {
        let mut restarts = Restarts::default();
        let quick = Duration::from_millis(300);
        let max = Duration::from_secs(10);
        let waits: Vec<u64> = (0..6)
            .map(|_| restarts.after_exit(quick, STABLE, max).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
        assert_eq!(
            restarts.after_exit(STABLE, STABLE, max),
            Duration::ZERO,
            "at once"
        );
        assert_eq!(
            restarts.after_exit(quick, STABLE, max),
            FIRST_DELAY,
            "and the doubling starts over"
        );
    }

    #[test]
    fn a_cap_below_one_second_is_the_whole_delay() {
        let mut restarts = Restarts::default();
        let max = Duration::from_millis(200);
        for _ in 0..4 {
            assert_eq!(restarts.after_exit(Duration::ZERO, STABLE, max), max);
        }
    }

    #[test]
    fn a_process_descends_from_itself_and_from_its_ancestors_only() {
        let me = std::process::id() as i32;
        assert!(descends_from(me, Pid::from_raw(me)));
        let parent = nix::unistd::getppid();
        assert!(descends_from(me, parent));
        assert!(!descends_from(parent.as_raw(), Pid::from_raw(me)));
        assert!(!descends_from(me, Pid::from_raw(i32::MAX)));
    }
}
