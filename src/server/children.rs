//! Running handlers: starting them (with the output pipe made ahead), their output read line by
//! line into the log, reaping, and what follows an exit; `timeout` and the stop's signals.
//! A process is only ever signalled while it is in `running`, that is, not yet reaped: until
//! then its pid, and so its process group id, cannot belong to anyone else.
//! Each handler is reaped through its pidfd (waitid on it alone), not by `waitpid(-1)`, which
//! scans every child and so cost each reap in proportion to the handlers running. SIGCHLD's
//! scan remains for what no pidfd reports: at once for a handler without one and when rinetd
//! may have children it did not start, else at most once a second (a handler's CLONE_PARENT
//! child, say, is rinetd's to reap).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use mio::{Interest, Token};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use super::table::{Outcome, ServiceId, Slot};
use super::timers::TimerId;
use super::wait::Fingerprint;
use super::{Server, SourceKind, Timer, would_block};
use crate::events;
use crate::exec::REPORT_PREFIX;
use crate::service::Kind;
use crate::spawn::{self, Ending, OutputPipe, Spawner, Stdio};

/// Between the SIGTERM of a timed-out handler's group and its SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// After a failed fork: long enough not to spin.
const FORK_BACKOFF: Duration = Duration::from_secs(1);
/// After EMFILE/ENFILE/ENOBUFS/ENOMEM: long enough not to spin, short enough that service
/// resumes as soon as a descriptor frees up.
pub const RESOURCE_BACKOFF: Duration = Duration::from_millis(100);
/// The least time between two of SIGCHLD's scans when no handler needs them.
const SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// Children such a scan reaps at most. Each waitpid(-1) walks every child, and handlers that
/// have just ended (their pidfds not read yet) are found too: an unbounded scan reaped dozens
/// of them a second under load, each walk costing in proportion to the handlers running. The
/// kernel walks children oldest first, so a child no pidfd reports has before it only those
/// that ended before the scan, not those started after it: a few scans reap it.
const SCAN_REAPS: usize = 4;
/// Running handlers from which a new one's output pipe and pidfd, which live as long as it
/// does, are moved above the descriptors handlers are started with (`spawn::move_up`): below
/// this, rinetd's table is small enough to copy whole.
const MOVE_UP_FROM: usize = 32;
/// A handler's stderr line longer than this is logged in pieces.
const MAX_LINE: usize = 4096;
/// Bytes of one handler's output read per turn.
const OUTPUT_TURN: usize = 64 * 1024;

/// What a handler is for.
pub enum Role {
    /// A stream connection's handler.
    Connection,
    /// A `wait: true` handler holding the listener with this token (by token: a reload may
    /// move the socket to another service meanwhile).
    Wait {
        listener: Token,
        trigger: Option<Fingerprint>,
    },
    /// A datagram's handler; its reply is collected under `reply`.
    Datagram { reply: Token },
    /// A supervised service's program.
    Supervised,
}

pub struct Child {
    pub service: ServiceId,
    slot: Slot,
    pub started: Instant,
    pub role: Role,
    /// Its output pipe (stderr, or the report of a failed exec), closed when it is reaped.
    output: Option<Token>,
    /// A supervised program's stdout pipe, when it has no socket.
    stdout: Option<Token>,
    /// Its pending `timeout` (SIGTERM) or, after that, SIGKILL timer, cancelled at its exit.
    deadline: Option<TimerId>,
    /// Its pidfd and the token it is registered under; None when it has none (SIGCHLD's scan
    /// reaps it). Closing it at the reap also takes it out of the poll.
    pidfd: Option<(Token, OwnedFd)>,
}

/// The reading end of a handler's output pipe.
struct Output {
    label: String,
    pid: Pid,
    pipe: File,
    partial: Vec<u8>,
    /// A supervised program's stdout (else stderr).
    stdout: bool,
    /// What is wrong with the handler's script, if resolve saw something (a missing `#!`
    /// interpreter): exec says only "No such file or directory" of a file that exists.
    script_problem: Option<Box<str>>,
}

pub struct Children {
    running: HashMap<Pid, Child>,
    /// The handler behind each pidfd token.
    pidfds: HashMap<Token, Pid>,
    /// Handlers running without a pidfd: while there are any, SIGCHLD scans.
    without_pidfd: usize,
    /// Children rinetd did not start may exit: orphans it adopts (as init, or a subreaper), or
    /// children it inherited across the exec that started it. SIGCHLD scans for them.
    foreign_children: bool,
    /// Whether waitid(P_PIDFD) works here; once refused, handlers are reaped by the scan.
    pidfd_reaping: bool,
    last_scan: Instant,
    /// The one scheduled scan (SCAN_INTERVAL after the last), if any.
    scan_timer: Option<TimerId>,
    outputs: HashMap<Token, Output>,
    spawner: Spawner,
    /// The output pipe for the next handler, made before its connection is accepted.
    spare_pipe: Option<OutputPipe>,
}

impl Children {
    pub fn new(spawner: Spawner) -> Children {
        Children {
            running: HashMap::new(),
            pidfds: HashMap::new(),
            without_pidfd: 0,
            foreign_children: may_have_foreign_children(),
            pidfd_reaping: true,
            last_scan: Instant::now(),
            scan_timer: None,
            outputs: HashMap::new(),
            spawner,
            spare_pipe: None,
        }
    }

    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Whether a SIGCHLD may stand for a child that no pidfd reports.
    pub fn scans(&self) -> bool {
        self.foreign_children || self.without_pidfd > 0
    }

    /// Takes the pipe made ahead, if there is one.
    pub fn take_spare_pipe(&mut self) -> Option<OutputPipe> {
        self.spare_pipe.take()
    }

    /// Keeps a pipe made for a handler that is not started now, for the next one.
    pub fn put_back_pipe(&mut self, pipe: OutputPipe) {
        if self.spare_pipe.is_none() {
            self.spare_pipe = Some(pipe);
        }
    }

    /// When handler `pid` was started, while it runs.
    pub fn started(&self, pid: Pid) -> Option<Instant> {
        self.running.get(&pid).map(|child| child.started)
    }

    /// SIGTERM to every handler (the stop).
    pub fn terminate_all(&self) {
        for pid in self.running.keys() {
            let _ = kill(*pid, Signal::SIGTERM);
        }
    }

    /// SIGKILL to every handler still running at the end of the stop's grace, and its group.
    pub fn kill_all(&self) {
        for pid in self.running.keys() {
            events::stop_kill(pid.as_raw(), super::STOP_GRACE);
            let _ = killpg(*pid, Signal::SIGKILL);
            let _ = kill(*pid, Signal::SIGKILL);
        }
    }
}

/// Whether children that rinetd does not start may exit: it adopts orphans (process 1 of a pid
/// namespace, or a subreaper), or the program that exec'd it had children (a shell's
/// background jobs, say). Where /proc cannot say, assume so.
fn may_have_foreign_children() -> bool {
    let pid = nix::unistd::getpid();
    pid.as_raw() == 1
        || nix::sys::prctl::get_child_subreaper().unwrap_or(true)
        || std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .map_or(true, |children| !children.trim().is_empty())
}

/// The status as logged, and the outcome as counted, of an end: `signal:N` for a signal
/// without a name (a real-time one).
fn describe(ending: Ending) -> (String, Outcome) {
    match ending {
        Ending::Exited(0) => ("0".to_string(), Outcome::Success),
        Ending::Exited(code) => (code.to_string(), Outcome::Failure),
        Ending::Signaled(number) => {
            let name =
                Signal::try_from(number).map_or_else(|_| number.to_string(), |s| s.to_string());
            (format!("signal:{name}"), Outcome::Signal)
        }
    }
}

impl Server {
    /// The output pipe for the next handler of `id`; running out of descriptors backs the
    /// service off.
    pub(super) fn take_pipe(&mut self, id: ServiceId) -> Option<OutputPipe> {
        match self
            .children
            .spare_pipe
            .take()
            .map_or_else(OutputPipe::new, Ok)
        {
            Ok(pipe) => Some(pipe),
            Err(err) => {
                self.back_off(id, RESOURCE_BACKOFF, "accept failed", &err);
                None
            }
        }
    }

    /// Makes sure a pipe is ready before a connection or datagram is taken in.
    pub(super) fn prepare_pipe(&mut self, id: ServiceId) -> bool {
        if self.children.spare_pipe.is_none() {
            self.children.spare_pipe = self.take_pipe(id);
        }
        self.children.spare_pipe.is_some()
    }

    /// Starts a handler for `slot` with `stdio` and its output `pipe`; records it and watches
    /// its output. None if it could not be started: the slot is given back and the service
    /// backs off.
    pub(super) fn start_handler(
        &mut self,
        slot: Slot,
        pipe: OutputPipe,
        stdio: Stdio,
        vars: &[(&str, String)],
        role: Role,
    ) -> Option<Pid> {
        let id = slot.service();
        let Some(entry) = self.table.get(id) else {
            let _ = self.table.release(slot);
            return None;
        };
        let label = entry.service.label.to_string();
        let timeout = entry.service.limits.timeout;
        let spawned = entry
            .service
            .exec_plan()
            .ok_or_else(|| io::Error::other("not a handler service"))
            .and_then(|plan| {
                self.children
                    .spawner
                    .spawn(plan, entry.service.name(), stdio, vars, pipe)
            });
        let spawned = match spawned {
            Ok(spawned) => spawned,
            Err(err) => {
                self.table.spawn_failed(id);
                self.back_off(id, FORK_BACKOFF, "fork failed", &err);
                if let Some(runnable) = self.table.release(slot) {
                    self.wake(runnable);
                }
                return None;
            }
        };
        if let Some(failures) = self.table.spawned(id) {
            events::spawn_recovered(&label, failures);
        }
        let now = Instant::now();
        let pid = spawned.pid;
        // Only where a start copies no more than the descriptors it uses: elsewhere (fork, or no
        // table sharing) descriptors up there would make every start copy up to them.
        let many = self.children.running.len() >= MOVE_UP_FROM
            && self.children.spawner.starts_on_shared_table();
        let lasting = |fd| if many { spawn::move_up(fd) } else { fd };
        let output = self.watch_output(label, pid, lasting(spawned.output), false);
        let script_problem = self
            .table
            .get(id)
            .and_then(|entry| entry.service.exec_plan()?.script_problem.clone());
        if let Some(output) = output.and_then(|token| self.children.outputs.get_mut(&token)) {
            output.script_problem = script_problem;
        }
        let deadline = timeout.map(|timeout| {
            let timer = Timer::Timeout {
                pid: pid.as_raw(),
                started: now,
            };
            self.timers.schedule(now + timeout, timer)
        });
        let pidfd = spawned
            .pidfd
            .filter(|_| self.children.pidfd_reaping)
            .map(lasting);
        let pidfd = pidfd.and_then(|pidfd| {
            let token = self.tokens.next(SourceKind::Process);
            // Registered after the start: a handler that has exited already is reported at once.
            self.register(&pidfd, token, Interest::READABLE)
                .ok()
                .map(|()| (token, pidfd))
        });
        match &pidfd {
            Some((token, _)) => {
                self.children.pidfds.insert(*token, pid);
            }
            None => self.children.without_pidfd += 1,
        }
        let child = Child {
            service: id,
            slot,
            started: now,
            role,
            output,
            stdout: None,
            deadline,
            pidfd,
        };
        self.children.running.insert(pid, child);
        Some(pid)
    }

    /// Logs the lines of a supervised program's stdout (`pipe` from its start).
    pub(super) fn watch_stdout(&mut self, label: &str, pid: Pid, pipe: OutputPipe) {
        let (reader, writer) = pipe.into_ends();
        drop(writer);
        let token = self.watch_output(label.to_string(), pid, reader, true);
        if let Some(child) = self.children.running.get_mut(&pid) {
            child.stdout = token;
        }
    }

    fn watch_output(
        &mut self,
        label: String,
        pid: Pid,
        output: OwnedFd,
        stdout: bool,
    ) -> Option<Token> {
        let token = self.tokens.next(SourceKind::Output);
        match self.register(&output, token, Interest::READABLE) {
            Ok(()) => {
                let output = Output {
                    label,
                    pid,
                    pipe: File::from(output),
                    partial: Vec::new(),
                    stdout,
                    script_problem: None,
                };
                self.children.outputs.insert(token, output);
                Some(token)
            }
            Err(err) => {
                events::output_unwatched(&label, pid.as_raw(), &err);
                None
            }
        }
    }

    /// Logs each complete line of a handler's output; at end of file, the rest, then forgets it.
    /// A turn reads at most OUTPUT_TURN bytes, so a handler flooding its stderr cannot hold the
    /// loop; with `closing` (its handler has exited) the pipe is closed after that turn whatever
    /// is left, so a grandchild keeping it open pins no descriptor of rinetd's.
    pub(super) fn read_output(&mut self, token: Token, closing: bool) {
        let Some(output) = self.children.outputs.get_mut(&token) else {
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
            self.runnable.push_back(token);
        }
        if finished {
            if !output.partial.is_empty() {
                let line = std::mem::take(&mut output.partial);
                log_output_line(output, &line);
            }
            if let Some(output) = self.children.outputs.remove(&token) {
                self.deregister(&output.pipe);
            }
        }
    }

    /// Reaps the handler whose pidfd is `token`, if it has ended.
    pub(super) fn reap_exited(&mut self, token: Token) {
        let Some(&pid) = self.children.pidfds.get(&token) else {
            return;
        };
        let Some((_, pidfd)) = self
            .children
            .running
            .get(&pid)
            .and_then(|child| child.pidfd.as_ref())
        else {
            return;
        };
        match spawn::reap_pidfd(pidfd.as_fd()) {
            Ok(None) => {}
            Ok(Some(ending)) => self.child_exited(pid, ending),
            Err(err) => {
                // Refused for every pidfd alike: from now on the scan reaps them all.
                events::waitpid_failed(&err);
                self.children.pidfd_reaping = false;
                for child in self.children.running.values_mut() {
                    if child.pidfd.take().is_some() {
                        self.children.without_pidfd += 1;
                    }
                }
                self.children.pidfds.clear();
                self.reap();
            }
        }
    }

    /// SIGCHLD. Handlers are reaped through their pidfds; the scan, which costs in proportion to
    /// the children, runs at once only when some child has no pidfd to report it, else at most
    /// every SCAN_INTERVAL.
    pub(super) fn child_signalled(&mut self) {
        if self.children.scans() {
            self.reap();
        } else if self.children.scan_timer.is_none() {
            let at = self.children.last_scan + SCAN_INTERVAL;
            if at <= Instant::now() {
                self.reap_some();
            } else {
                self.children.scan_timer = Some(self.timers.schedule(at, Timer::Scan));
            }
        }
    }

    /// Reaps every child that has ended (SIGCHLD coalesces: one signal may stand for many).
    pub(super) fn reap(&mut self) {
        self.scan(usize::MAX);
    }

    /// The periodic scan: a few of the children that have ended (see SCAN_REAPS).
    pub(super) fn reap_some(&mut self) {
        self.scan(SCAN_REAPS);
    }

    fn scan(&mut self, most: usize) {
        let now = Instant::now();
        self.children.last_scan = now;
        if let Some(timer) = self.children.scan_timer.take() {
            // Whether it is this scan's own or still to come, it is the only one.
            self.timers.cancel(timer);
        }
        for _ in 0..most {
            match spawn::reap_any() {
                Ok(Some((pid, ending))) => self.child_exited(pid, ending),
                Ok(None) => return,
                Err(err) => {
                    events::waitpid_failed(&err);
                    return;
                }
            }
        }
        // There may be more, and their SIGCHLDs have come already.
        self.children.scan_timer = Some(self.timers.schedule(now + SCAN_INTERVAL, Timer::Scan));
    }

    fn child_exited(&mut self, pid: Pid, ending: Ending) {
        let (status, outcome) = describe(ending);
        let status = status.as_str();
        // Not ours (an orphan adopted as init of a pid namespace, say): nothing to do.
        let Some(child) = self.children.running.remove(&pid) else {
            return;
        };
        match &child.pidfd {
            Some((token, _)) => {
                self.children.pidfds.remove(token);
            }
            None => self.children.without_pidfd -= 1,
        }
        if let Some(deadline) = child.deadline {
            self.timers.cancel(deadline);
        }
        let lived = child.started.elapsed();
        let id = child.service;
        let supervised = matches!(child.role, Role::Supervised);
        if let Some(entry) = self.table.get_mut(id) {
            // A supervised program's exit is logged with what comes next (program_exited).
            if !supervised {
                events::exited(entry.label(), pid.as_raw(), status, lived);
            }
            entry.counters.exited(outcome, lived);
        }
        for output in [child.output, child.stdout].into_iter().flatten() {
            self.read_output(output, true);
        }
        match child.role {
            Role::Connection => {}
            Role::Wait { listener, trigger } => self.wait_ended(listener, trigger, lived),
            Role::Datagram { reply } => self.send_reply(reply),
            Role::Supervised => self.program_exited(id, pid, status, lived),
        }
        if let Some(runnable) = self.table.release(child.slot) {
            self.wake(runnable);
        }
        // A datagram or wait service may have input waiting that no new event will announce
        // (and a reload may have made a wait service's socket a nowait one meanwhile).
        if self
            .table
            .get(id)
            .is_some_and(|e| e.kind != Kind::StreamExec)
        {
            self.wake(id);
        }
    }

    /// A handler has run for its `timeout`: SIGTERM to its group, SIGKILL planned.
    pub(super) fn terminate(&mut self, pid: Pid, started: Instant, now: Instant) {
        let Some(child) = self.children.running.get(&pid) else {
            return;
        };
        if child.started != started {
            return;
        }
        if let Some(entry) = self.table.get(child.service) {
            events::timeout(entry.label(), pid.as_raw(), "SIGTERM");
        }
        let _ = killpg(pid, Signal::SIGTERM);
        let kill = Timer::Kill {
            pid: pid.as_raw(),
            started,
        };
        let deadline = self.timers.schedule(now + KILL_GRACE, kill);
        if let Some(child) = self.children.running.get_mut(&pid) {
            child.deadline = Some(deadline);
        }
    }

    /// SIGKILL for a timed-out handler's group, only while the handler is not reaped (see the
    /// module's note). Once it has been reaped the pid may lead an unrelated group (pids wrap
    /// in seconds under load), so whatever it left in its group is not signalled.
    pub(super) fn kill_group(&mut self, pid: Pid, started: Instant) {
        let Some(child) = self.children.running.get(&pid) else {
            return;
        };
        if child.started != started {
            return;
        }
        let label = self.table.get(child.service).map(|e| e.label().to_string());
        let supervised = matches!(child.role, Role::Supervised);
        if killpg(pid, Signal::SIGKILL).is_ok()
            && let Some(label) = label
        {
            // A supervised program's grace was the one of a reload's stop, not a timeout.
            if supervised {
                events::program_killed(&label, pid.as_raw(), super::supervise::STOP_GRACE);
            } else {
                events::timeout(&label, pid.as_raw(), "SIGKILL");
            }
        }
    }
}

fn log_output_line(output: &Output, line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    let text = text.strip_suffix('\r').unwrap_or(&text);
    match text.strip_prefix(REPORT_PREFIX) {
        Some(reason) => match &output.script_problem {
            Some(problem) if reason.ends_with("No such file or directory") => {
                let reason = format!("{reason} ({problem})");
                events::spawn_failed(&output.label, output.pid.as_raw(), &reason);
            }
            _ => events::spawn_failed(&output.label, output.pid.as_raw(), reason),
        },
        None if output.stdout => events::stdout_line(&output.label, output.pid.as_raw(), text),
        None => events::stderr_line(&output.label, output.pid.as_raw(), text),
    }
}
