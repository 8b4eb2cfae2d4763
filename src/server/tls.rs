//! `tls:` services: the handshake inside the loop (bounded by `handshake_timeout`), then the
//! relay between the client's TLS stream and the service's plaintext: a handler on a UNIX
//! socketpair (its fd 0 and 1), or a builtin served in memory. The session (src/tls/session.rs)
//! decides; this file registers its sockets, starts what it asks for and closes it.

use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant, SystemTime};

use mio::{Interest, Token};
use socket2::Socket;

use super::children::{RESOURCE_BACKOFF, Role};
use super::stream::HEAD_DEADLINE;
use super::table::{ServiceId, Slot};
use super::timers::TimerId;
use super::{Server, SourceKind, Timer, is_resource_exhaustion};
use crate::builtin::plain::PlainBuiltin;
use crate::config::Builtin;
use crate::events;
use crate::service::{Kind, Tls};
use crate::spawn::{Stdio, address_vars};
use crate::tls::info::HandshakeInfo;
use crate::tls::session::{Ending, PlaintextService, Step, TlsSession, service_socketpair};

/// What a TLS client talks to once the handshake is done.
pub enum Plain {
    Handler(UnixStream),
    Builtin(PlainBuiltin),
}

impl PlaintextService for Plain {
    fn read_plaintext(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Plain::Handler(socket) => socket.read_plaintext(buf),
            Plain::Builtin(builtin) => builtin.read_plaintext(buf),
        }
    }

    fn write_plaintext(&mut self, data: &[u8]) -> std::io::Result<usize> {
        match self {
            Plain::Handler(socket) => socket.write_plaintext(data),
            Plain::Builtin(builtin) => builtin.write_plaintext(data),
        }
    }

    fn end_of_input(&mut self) -> std::io::Result<()> {
        match self {
            Plain::Handler(socket) => socket.end_of_input(),
            Plain::Builtin(builtin) => builtin.end_of_input(),
        }
    }

    fn hung_up(&self) -> bool {
        match self {
            Plain::Handler(socket) => socket.hung_up(),
            Plain::Builtin(builtin) => builtin.hung_up(),
        }
    }
}

/// One client of a `tls:` service.
pub struct TlsConnection {
    service: ServiceId,
    session: TlsSession<Plain>,
    /// Its place in `max_children`, until a handler takes it over (a builtin keeps it).
    slot: Option<Slot>,
    remote: Option<SocketAddr>,
    local: Option<SocketAddr>,
    /// The handshake's deadline, cancelled when it is done.
    deadline: Option<TimerId>,
    /// rinetd's end of the handler's socketpair, once there is one.
    service_token: Option<Token>,
    /// Served by a builtin (its close is logged; a handler's exit is).
    builtin: Option<Builtin>,
    started: Instant,
    /// `handshake_timeout`: also how long a client may take nothing of the output a handler
    /// that is gone left behind.
    stall_limit: Duration,
    /// While output waits for the client: `sent_to_client` when `deadline` was set to look
    /// again (no progress by then, and a handler gone, ends the connection).
    stall_mark: Option<u64>,
}

impl TlsConnection {
    pub fn service_token(&self) -> Option<Token> {
        self.service_token
    }
}

impl Server {
    /// Starts the handshake of an admitted client of a `tls:` service.
    pub(super) fn start_tls(
        &mut self,
        slot: Slot,
        connection: Socket,
        remote: Option<SocketAddr>,
        local: Option<SocketAddr>,
        tls: &Tls,
    ) {
        let label = self
            .table
            .get(slot.service())
            .map_or_else(String::new, |e| e.label().to_string());
        let token = self.tokens.next(SourceKind::Connection);
        let session = TlsSession::new(tls.config.clone(), TcpStream::from(connection));
        let registered = session.and_then(|session| {
            self.register(
                session.client(),
                token,
                Interest::READABLE | Interest::WRITABLE,
            )
            .map(|()| session)
        });
        let session = match registered {
            Ok(session) => session,
            Err(err) => {
                events::cannot_serve(&label, &err);
                if let Some(runnable) = self.table.release(slot) {
                    self.wake(runnable);
                }
                return;
            }
        };
        let at = Instant::now() + tls.settings.handshake_timeout;
        let connection = TlsConnection {
            service: slot.service(),
            session,
            slot: Some(slot),
            remote,
            local,
            deadline: Some(self.timers.schedule(at, Timer::HeadDeadline(token))),
            service_token: None,
            builtin: None,
            started: Instant::now(),
            stall_limit: tls.settings.handshake_timeout,
            stall_mark: None,
        };
        self.streams.insert_tls(token, connection);
        self.runnable.push_back(token);
    }

    /// Moves what can move on TLS connection `token` (its client's token).
    pub(super) fn drive_tls(&mut self, token: Token) {
        let Some(connection) = self.streams.tls_mut(token) else {
            return;
        };
        match connection.session.drive() {
            Step::Wait(_) => {}
            Step::Again => self.runnable.push_back(token),
            Step::HandshakeDone(info) => {
                if let Some(deadline) = connection.deadline.take() {
                    self.timers.cancel(deadline);
                }
                self.handshake_done(token, &info);
                self.runnable.push_back(token);
            }
            Step::Closed(ending) => self.close_tls(token, Some(ending)),
        }
        // `metrics` behind TLS: a GET is in; the exposition is rendered here, in the loop.
        let wants_render = self.streams.tls_mut(token).is_some_and(
            |c| matches!(c.session.service(), Some(Plain::Builtin(b)) if b.wants_render()),
        );
        if wants_render {
            let body = self.render_metrics();
            if let Some(connection) = self.streams.tls_mut(token)
                && let Some(Plain::Builtin(builtin)) = connection.session.service_mut()
            {
                builtin.answer(&body);
            }
            self.runnable.push_back(token);
        }
        self.watch_stall(token);
    }

    /// Output waits for the client: look again in `stall_limit` whether it took any. A handler
    /// blocked by a client that does not read is pushed back on (its `timeout` is the bound),
    /// but once the handler is gone nothing else would ever end such a connection; it no
    /// longer counts in `max_children` either (the slot left with the handler).
    fn watch_stall(&mut self, token: Token) {
        let Some(connection) = self.streams.tls_mut(token) else {
            return;
        };
        if connection.deadline.is_some() || !connection.session.output_waiting() {
            return;
        }
        let at = Instant::now() + connection.stall_limit;
        connection.stall_mark = Some(connection.session.sent_to_client());
        connection.deadline = Some(self.timers.schedule(at, Timer::HeadDeadline(token)));
    }

    /// The handshake is done: start the handler (on a socketpair) or the builtin behind it.
    fn handshake_done(&mut self, token: Token, info: &HandshakeInfo) {
        let Some(connection) = self.streams.tls_mut(token) else {
            return;
        };
        let (remote, local, id) = (connection.remote, connection.local, connection.service);
        let Some(entry) = self.table.get(id) else {
            self.close_tls(token, None);
            return;
        };
        let label = entry.label().to_string();
        let shown = events::Client(remote);
        let summary = info.log_summary();
        if let Kind::StreamBuiltin(builtin) = entry.kind {
            events::accepted_builtin_tls(&label, &shown, builtin.name(), &summary);
            if let Some(connection) = self.streams.tls_mut(token) {
                connection.builtin = Some(builtin);
                let plain = PlainBuiltin::new(builtin, SystemTime::now());
                connection.session.attach(Plain::Builtin(plain));
                // `metrics`: the request head has its 5 s, as without TLS.
                if builtin == Builtin::Metrics {
                    let at = Instant::now() + HEAD_DEADLINE;
                    let timer = self.timers.schedule(at, Timer::HeadDeadline(token));
                    connection.deadline = Some(timer);
                }
            }
            return;
        }
        let mut vars = match (remote, local) {
            (Some(remote), Some(local)) => address_vars(entry.service.protocol, remote, local),
            _ => Vec::new(),
        };
        vars.extend(info.env());
        // Each failure closes the connection with its slot still in it: close_tls gives it
        // back (a slot dropped anywhere else would hold its place in max_children for good).
        let (ours, theirs) = match service_socketpair() {
            Ok(pair) => pair,
            Err(err) => {
                if is_resource_exhaustion(&err) {
                    self.back_off(id, RESOURCE_BACKOFF, "accept failed", &err);
                } else {
                    events::cannot_serve(&label, &err);
                }
                self.close_tls(token, None);
                return;
            }
        };
        let Some(pipe) = self.take_pipe(id) else {
            self.close_tls(token, None);
            return;
        };
        let Some(slot) = self.streams.tls_mut(token).and_then(|c| c.slot.take()) else {
            self.children.put_back_pipe(pipe);
            self.close_tls(token, None);
            return;
        };
        let stdio = Stdio::Connection(theirs.as_raw_fd());
        let Some(pid) = self.start_handler(slot, pipe, stdio, &vars, Role::Connection) else {
            self.close_tls(token, None);
            return;
        };
        // The handler has its copy; with ours closed, its exit is the end of its output.
        drop(theirs);
        events::accepted_tls(&label, &shown, pid.as_raw(), &summary);
        let service_token = self.tokens.next(SourceKind::Connection);
        if let Err(err) = self.register(
            &ours,
            service_token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            events::cannot_serve(&label, &err);
            self.close_tls(token, None);
            return;
        }
        self.streams.alias(service_token, token);
        if let Some(connection) = self.streams.tls_mut(token) {
            connection.service_token = Some(service_token);
            connection.session.attach(Plain::Handler(ours));
        }
    }

    /// Ends TLS connection `token`: its sockets are deregistered and closed, its slot (if it
    /// still has it) given back, and how it ended logged.
    pub(super) fn close_tls(&mut self, token: Token, ending: Option<Ending>) {
        let Some(connection) = self.streams.remove_tls(token) else {
            return;
        };
        self.deregister(connection.session.client());
        if let Some(Plain::Handler(socket)) = connection.session.service() {
            self.deregister(socket);
        }
        if let Some(deadline) = connection.deadline {
            self.timers.cancel(deadline);
        }
        let label = self
            .table
            .get(connection.service)
            .map_or_else(String::new, |e| e.label().to_string());
        let shown = events::Client(connection.remote);
        match ending {
            Some(Ending::HandshakeFailed(reason)) => {
                events::tls_handshake_failed(&label, &shown, &reason);
                if let Some(entry) = self.table.get_mut(connection.service) {
                    entry.counters.tls_handshake_failures += 1;
                }
            }
            Some(Ending::Failed(reason)) if connection.builtin.is_none() => {
                events::tls_failed(&label, &shown, &reason);
            }
            _ if connection.builtin.is_some() => {
                events::closed(&label, &shown, connection.started.elapsed());
            }
            _ => {}
        }
        if let Some(slot) = connection.slot
            && let Some(runnable) = self.table.release(slot)
        {
            self.wake(runnable);
        }
    }

    /// The handshake did not end within `handshake_timeout`, or a `metrics` request head not
    /// within HEAD_DEADLINE.
    pub(super) fn tls_deadline(&mut self, token: Token) {
        let Some(connection) = self.streams.tls_mut(token) else {
            return;
        };
        connection.deadline = None;
        if connection.session.is_handshaking() {
            let reason = "no handshake within the handshake_timeout".to_string();
            self.close_tls(token, Some(Ending::HandshakeFailed(reason)));
        } else if matches!(
            connection.session.service(),
            Some(Plain::Builtin(builtin)) if builtin.awaits_request()
        ) {
            self.close_tls(token, None);
        } else if let Some(mark) = connection.stall_mark.take() {
            let session = &connection.session;
            let stalled = session.output_waiting() && session.sent_to_client() == mark;
            if stalled && session.service_hung_up() {
                let reason = format!(
                    "the handler is gone and the client took none of its output for {}",
                    events::Configured(connection.stall_limit)
                );
                self.close_tls(token, Some(Ending::Failed(reason)));
            } else {
                self.watch_stall(token);
            }
        }
    }
}
