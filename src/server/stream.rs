//! Stream services (tcp and unix, `wait: false`): accepting, reading PROXY headers without
//! blocking the loop, admitting or refusing clients, starting their handlers (or holding a
//! connection whose handler cannot be started yet), and serving TCP builtins inline.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime};

use mio::{Interest, Token};
use socket2::Socket;

use super::children::{RESOURCE_BACKOFF, Role};
use super::table::canonical;
use super::table::{Denied, ServiceId, Slot};
use super::timers::TimerId;
use super::tls::TlsConnection;
use super::{Server, SourceKind, Timer, is_resource_exhaustion, would_block};
use crate::builtin::{Machine, Step};
use crate::config::Builtin;
use crate::events;
use crate::proxy::{self, Parsed};
use crate::service::Kind;
use crate::spawn::{OutputPipe, Stdio, address_vars};

/// How long a client behind `proxy_protocol: true` has to send its header.
const PROXY_DEADLINE: Duration = Duration::from_secs(5);
/// How long a client of the `metrics` builtin has to send its request head.
pub(super) const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// Connections one client (its `source_prefix` group) may have waiting for their PROXY header.
const WAITING_PER_SOURCE: u32 = 32;
/// Connections still sending their PROXY header may hold at most this share of a service's
/// `max_children` (or this many if it has none): silent clients cannot take every place.
const WAITING_SHARE: u32 = 2;
const WAITING_UNLIMITED: usize = 1024;
/// Most PROXY headers fit in this; only a v2 header with large TLVs needs a longer look.
const PROXY_FIRST_LOOK: usize = 536;

/// Open connections served inside the loop, and connections waiting for their handler.
#[derive(Default)]
pub struct Streams {
    connections: HashMap<Token, Connection>,
    /// Per service, the connections admitted whose handlers could not be started yet (fork
    /// failed, no pipe, or a back-off in progress), in arrival order: started before anything
    /// else is accepted, once the back-off is over.
    held: HashMap<ServiceId, VecDeque<Held>>,
    /// Per service, the connections still sending their PROXY header, oldest first.
    waiting: HashMap<ServiceId, Waiting>,
    /// The token of a TLS handler's socketpair → the token of its connection.
    aliases: HashMap<Token, Token>,
}

/// Connections waiting for their PROXY header: how many (per client group too), and their
/// tokens oldest first (finished ones are dropped from the front lazily).
#[derive(Default)]
struct Waiting {
    tokens: VecDeque<Token>,
    count: usize,
    per_source: HashMap<IpAddr, u32>,
}

impl Waiting {
    fn add(&mut self, token: Token, group: IpAddr) {
        self.tokens.push_back(token);
        self.count += 1;
        *self.per_source.entry(group).or_default() += 1;
    }

    fn remove(&mut self, group: IpAddr) {
        self.count = self.count.saturating_sub(1);
        if let Some(count) = self.per_source.get_mut(&group) {
            *count -= 1;
            if *count == 0 {
                self.per_source.remove(&group);
            }
        }
    }
}

impl Streams {
    /// Closes every connection (the stop).
    pub fn close_all(&mut self) {
        self.connections.clear();
        self.held.clear();
    }

    pub fn insert_tls(&mut self, token: Token, connection: TlsConnection) {
        self.connections
            .insert(token, Connection::Tls(Box::new(connection)));
    }

    pub fn tls_mut(&mut self, token: Token) -> Option<&mut TlsConnection> {
        match self.connections.get_mut(&token) {
            Some(Connection::Tls(connection)) => Some(connection),
            _ => None,
        }
    }

    pub fn remove_tls(&mut self, token: Token) -> Option<TlsConnection> {
        match self.connections.remove(&token) {
            Some(Connection::Tls(connection)) => {
                if let Some(service) = connection.service_token() {
                    self.aliases.remove(&service);
                }
                Some(*connection)
            }
            Some(other) => {
                self.connections.insert(token, other);
                None
            }
            None => None,
        }
    }

    /// Events on `service` (a TLS handler's socketpair) drive connection `connection`.
    pub fn alias(&mut self, service: Token, connection: Token) {
        self.aliases.insert(service, connection);
    }

    /// Drops what waits for a service that no longer starts a handler per connection (a
    /// reload removed it, or made it another kind).
    pub fn forget(&mut self, id: ServiceId) {
        self.held.remove(&id);
    }

    fn waiting(&mut self, id: ServiceId) -> &mut Waiting {
        self.waiting.entry(id).or_default()
    }

    /// Adds connection `token` to `id`'s waiting list. The tokens of connections that are over
    /// are left in the list; once they outnumber the others they are dropped, so the list
    /// stays within about twice the connections really waiting.
    fn start_waiting(&mut self, id: ServiceId, token: Token, group: IpAddr) {
        let waiting = self.waiting.entry(id).or_default();
        waiting.add(token, group);
        if waiting.tokens.len() > 2 * waiting.count + 64 {
            let connections = &self.connections;
            waiting
                .tokens
                .retain(|token| matches!(connections.get(token), Some(Connection::Proxy(_))));
        }
    }

    /// The oldest connection of `id` still waiting for its header, taken out.
    /// The oldest connection of `id` still waiting for its header.
    fn oldest_waiting(&mut self, id: ServiceId) -> Option<Token> {
        let waiting = self.waiting.get_mut(&id)?;
        while let Some(token) = waiting.tokens.front().copied() {
            if matches!(self.connections.get(&token), Some(Connection::Proxy(p)) if p.waiting) {
                return Some(token);
            }
            waiting.tokens.pop_front();
        }
        None
    }

    /// A connection of `id`'s waiting list is over (its header is in, or it was closed).
    fn stop_waiting(&mut self, id: ServiceId, pending: &PendingProxy) {
        if pending.waiting
            && let Some(waiting) = self.waiting.get_mut(&id)
        {
            waiting.remove(pending.group);
        }
    }

    fn hold(&mut self, id: ServiceId, held: Held, first: bool) {
        let queue = self.held.entry(id).or_default();
        if first {
            queue.push_front(held);
        } else {
            queue.push_back(held);
        }
    }

    fn next_held(&mut self, id: ServiceId) -> Option<Held> {
        let queue = self.held.get_mut(&id)?;
        let held = queue.pop_front();
        if queue.is_empty() {
            self.held.remove(&id);
        }
        held
    }
}

enum Connection {
    Builtin(BuiltinConnection),
    Proxy(PendingProxy),
    Tls(Box<TlsConnection>),
}

/// A TCP connection served by a builtin.
struct BuiltinConnection {
    slot: Slot,
    remote: Option<SocketAddr>,
    socket: Socket,
    machine: Machine,
    /// `metrics`: the 5 s its request head has, cancelled when it is answered.
    deadline: Option<TimerId>,
    started: Instant,
}

/// A connection that has not yet sent its whole PROXY header. Its slot counts against
/// `max_children` meanwhile, so slow proxies cannot pile up without bound.
struct PendingProxy {
    slot: Slot,
    /// The real peer's group (`source_prefix`), for the limit of waiting connections per client.
    group: IpAddr,
    /// Counted among the connections waiting for their header (it was not in at once).
    waiting: bool,
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    /// Cancelled once the header is in.
    deadline: TimerId,
    /// The handler's output pipe, made before the connection was accepted (None for builtins).
    pipe: Option<OutputPipe>,
}

/// A connection admitted whose handler could not be started yet.
struct Held {
    connection: Socket,
    remote: Option<SocketAddr>,
    local: Option<SocketAddr>,
}

impl Server {
    /// Accepts until the backlog is empty (edge-triggered), a limit stops the service, or the
    /// turn is over.
    pub(super) fn accept_from(&mut self, id: ServiceId, token: Token) {
        let Some(kind) = self.table.get(id).map(|e| e.kind) else {
            return;
        };
        // The pipe is made before the connection is accepted: out of descriptors, the client
        // then waits in the backlog instead of being accepted and dropped.
        let needs_pipe = kind == Kind::StreamExec;
        for _ in 0..super::TURN {
            // A back-off is over: first the connections that were waiting for their handlers
            // (a rate_limit pause does not hold them back: they were accepted already).
            if self.table.get(id).is_some_and(|e| e.may_start())
                && let Some(held) = self.streams.next_held(id)
            {
                self.admit(id, held.connection, held.remote, held.local, None, true);
                continue;
            }
            if !self.table.get(id).is_some_and(|e| e.may_accept()) {
                return;
            }
            if needs_pipe && !self.prepare_pipe(id) {
                return;
            }
            let Some(listener) = self.listeners.get(token) else {
                return;
            };
            let Some(socket) = listener.stream() else {
                return;
            };
            match socket.accept() {
                Ok((connection, peer)) => {
                    let bound = listener.bound();
                    if let Some(until) = self.table.count_accept(id, Instant::now()) {
                        self.timers.schedule(until, Timer::Resume(id));
                    }
                    let remote = peer.as_socket().map(canonical);
                    let local = bound.map(|bound| canonical(local_of(&connection, bound)));
                    let pipe = if needs_pipe {
                        self.children.take_spare_pipe()
                    } else {
                        None
                    };
                    let proxied = self.table.get(id).is_some_and(|e| e.service.proxy_protocol);
                    match (proxied, remote, local) {
                        (true, Some(remote), Some(local)) => {
                            self.await_proxy_header(id, connection, remote, local, pipe);
                        }
                        (true, _, _) => {}
                        (false, _, _) => self.admit(id, connection, remote, local, pipe, false),
                    }
                }
                Err(err) if would_block(&err) => return,
                // Errors of one connection (accept(2) lists them as "treat like EAGAIN and
                // retry"): the next one in the backlog is unaffected.
                Err(err) if err.kind() == io::ErrorKind::Interrupted || connection_error(&err) => {}
                Err(err) if is_resource_exhaustion(&err) => {
                    self.back_off(id, RESOURCE_BACKOFF, "accept failed", &err);
                    return;
                }
                Err(err) => {
                    if let Some(entry) = self.table.get(id) {
                        events::accept_failed(entry.label(), &err);
                    }
                    return;
                }
            }
        }
        self.runnable.push_back(token);
    }

    /// Checks the client against the access lists and `per_source`, then starts its handler
    /// (with `pipe`, or a new one) or builtin. `remote`/`local` are None for UNIX sockets. A
    /// handler that cannot be started (or not now: the service backs off) leaves the connection
    /// held for the end of the back-off: at the front of the queue if it was `held` already.
    fn admit(
        &mut self,
        id: ServiceId,
        connection: Socket,
        remote: Option<SocketAddr>,
        local: Option<SocketAddr>,
        pipe: Option<OutputPipe>,
        held: bool,
    ) {
        // A PROXY header may name a mapped address too.
        let (remote, local) = (remote.map(canonical), local.map(canonical));
        let slot = match self.table.admit(id, remote.map(|r| r.ip()), Instant::now()) {
            Ok(slot) => slot,
            Err(Denied::Refused(reason)) => {
                self.log_refusal(id, &events::Client(remote), reason);
                return;
            }
            Err(Denied::Gone) => return,
        };
        let Some(entry) = self.table.get(id) else {
            let _ = self.table.release(slot);
            return;
        };
        // A reload may have made it a service of another kind since the connection came in.
        if !matches!(entry.kind, Kind::StreamExec | Kind::StreamBuiltin(_)) {
            let _ = self.table.release(slot);
            return;
        }
        if entry.service.socket.keepalive && remote.is_some() {
            let _ = connection.set_keepalive(true);
        }
        // TLS first: the handshake, then the handler or builtin behind it.
        if let Some(tls) = entry.service.tls.clone() {
            if let Some(pipe) = pipe {
                self.children.put_back_pipe(pipe);
            }
            self.start_tls(slot, connection, remote, local, &tls);
            return;
        }
        let shown = events::Client(remote);
        if let Kind::StreamBuiltin(builtin) = entry.kind {
            events::accepted_builtin(entry.label(), &shown, builtin.name());
            self.start_builtin(slot, connection, remote, builtin);
            return;
        }
        let vars = match (remote, local) {
            (Some(remote), Some(local)) => address_vars(entry.service.protocol, remote, local),
            _ => Vec::new(),
        };
        // A proxied connection was non-blocking while its header was read.
        let _ = connection.set_nonblocking(false);
        let stdio = Stdio::Connection(connection.as_raw_fd());
        // Backing off: nothing starts until it is over, this connection behind those held.
        let pipe = if entry.is_backing_off() {
            if let Some(pipe) = pipe {
                self.children.put_back_pipe(pipe);
            }
            None
        } else {
            pipe.or_else(|| self.take_pipe(id))
        };
        let started = match pipe {
            Some(pipe) => self.start_handler(slot, pipe, stdio, &vars, Role::Connection),
            None => {
                let _ = self.table.release(slot);
                None
            }
        };
        match started {
            Some(pid) => {
                if let Some(entry) = self.table.get(id) {
                    events::accepted(entry.label(), &shown, pid.as_raw());
                }
            }
            // Backing off: retried when the back-off ends (nothing else would end it).
            None if self.table.get(id).is_some_and(|e| e.is_backing_off()) => {
                let connection = Held {
                    connection,
                    remote,
                    local,
                };
                self.streams.hold(id, connection, held);
            }
            None => {}
        }
    }

    fn start_builtin(
        &mut self,
        slot: Slot,
        socket: Socket,
        remote: Option<SocketAddr>,
        builtin: Builtin,
    ) {
        let token = self.tokens.next(SourceKind::Connection);
        let registered = socket
            .set_nonblocking(true)
            .and_then(|()| self.register(&socket, token, Interest::READABLE | Interest::WRITABLE));
        if let Err(err) = registered {
            if let Some(entry) = self.table.get(slot.service()) {
                events::cannot_serve(entry.label(), &err);
            }
            if let Some(runnable) = self.table.release(slot) {
                self.wake(runnable);
            }
            return;
        }
        let deadline = (builtin == Builtin::Metrics).then(|| {
            let at = Instant::now() + HEAD_DEADLINE;
            self.timers.schedule(at, Timer::HeadDeadline(token))
        });
        let connection = BuiltinConnection {
            slot,
            remote,
            socket,
            machine: Machine::new(builtin, SystemTime::now()),
            started: Instant::now(),
            deadline,
        };
        self.streams
            .connections
            .insert(token, Connection::Builtin(connection));
        // Daytime and time have their answer ready, and the client may have spoken already.
        self.runnable.push_back(token);
    }

    /// A connection's socket is ready (or its turn has come again). `hung_up`: the event said
    /// the peer closed or reset it.
    pub(super) fn drive_connection(&mut self, token: Token, hung_up: bool) {
        let token = self.streams.aliases.get(&token).copied().unwrap_or(token);
        match self.streams.connections.get_mut(&token) {
            Some(Connection::Builtin(connection)) => {
                match connection.machine.drive(&connection.socket) {
                    Step::Wait => {}
                    Step::Again => self.runnable.push_back(token),
                    Step::Close => self.close_builtin(token),
                    Step::Render => {
                        let body = self.render_metrics();
                        if let Some(Connection::Builtin(connection)) =
                            self.streams.connections.get_mut(&token)
                        {
                            connection.machine.answer(&body);
                            if let Some(deadline) = connection.deadline.take() {
                                self.timers.cancel(deadline);
                            }
                        }
                        self.runnable.push_back(token);
                    }
                }
            }
            Some(Connection::Proxy(_)) => self.read_proxy(token, hung_up),
            Some(Connection::Tls(_)) => self.drive_tls(token),
            None => {}
        }
    }

    fn close_builtin(&mut self, token: Token) {
        let Some(Connection::Builtin(connection)) = self.streams.connections.remove(&token) else {
            return;
        };
        self.deregister(&connection.socket);
        if let Some(deadline) = connection.deadline {
            self.timers.cancel(deadline);
        }
        let shown = events::Client(connection.remote);
        if let Some(entry) = self.table.get(connection.slot.service()) {
            events::closed(entry.label(), &shown, connection.started.elapsed());
        }
        if let Some(runnable) = self.table.release(connection.slot) {
            self.wake(runnable);
        }
    }

    /// Registers a connection whose PROXY header is still to come, and reads it if it is there
    /// already (a proxy sends it at once). Only a connection whose header is not in counts as
    /// waiting: one client may have WAITING_PER_SOURCE of those, and all of them together at
    /// most a share of `max_children`, the oldest giving way to the newest, so a flood of silent
    /// connections can neither take every place nor keep out a client that sends its header.
    fn await_proxy_header(
        &mut self,
        id: ServiceId,
        connection: Socket,
        peer: SocketAddr,
        local: SocketAddr,
        pipe: Option<OutputPipe>,
    ) {
        let Some(entry) = self.table.get(id) else {
            return;
        };
        let label = entry.label().to_string();
        let group = entry.service.limits.source_prefix.group(peer.ip());
        let cap = entry
            .service
            .limits
            .max_children
            .map_or(WAITING_UNLIMITED, |max| {
                (max.get() / WAITING_SHARE).max(1) as usize
            });
        let token = self.tokens.next(SourceKind::Connection);
        let registered = connection
            .set_nonblocking(true)
            .and_then(|()| self.register(&connection, token, Interest::READABLE));
        if let Err(err) = registered {
            events::cannot_serve(&label, &err);
            return;
        }
        let Ok(slot) = self.table.occupy(id, None) else {
            self.deregister(&connection);
            return;
        };
        let deadline = Instant::now() + PROXY_DEADLINE;
        let pending = PendingProxy {
            slot,
            group,
            waiting: false,
            stream: TcpStream::from(connection),
            peer,
            local,
            deadline: self.timers.schedule(deadline, Timer::HeadDeadline(token)),
            pipe,
        };
        self.streams
            .connections
            .insert(token, Connection::Proxy(pending));
        self.read_proxy(token, false);
        if !matches!(
            self.streams.connections.get(&token),
            Some(Connection::Proxy(_))
        ) {
            return;
        }
        // Its header is not in: it waits, within the limits.
        let waiting = self.streams.waiting(id);
        if waiting.per_source.get(&group).copied().unwrap_or(0) >= WAITING_PER_SOURCE {
            let reason = "too many connections from this client waiting for their header";
            self.drop_waiting(token, &label, reason);
            return;
        }
        while self.streams.waiting(id).count >= cap {
            let Some(oldest) = self.streams.oldest_waiting(id) else {
                break;
            };
            self.drop_waiting(
                oldest,
                &label,
                "given way to a newer connection while silent",
            );
        }
        if let Some(Connection::Proxy(pending)) = self.streams.connections.get_mut(&token) {
            pending.waiting = true;
        }
        self.streams.start_waiting(id, token, group);
    }

    /// Closes a connection still waiting for its PROXY header, for `reason`.
    fn drop_waiting(&mut self, token: Token, label: &str, reason: &str) {
        let Some(Connection::Proxy(pending)) = self.streams.connections.remove(&token) else {
            return;
        };
        self.deregister(&pending.stream);
        self.timers.cancel(pending.deadline);
        self.streams.stop_waiting(pending.slot.service(), &pending);
        events::proxy_rejected(label, &pending.peer, reason);
        if let Some(pipe) = pending.pipe {
            self.children.put_back_pipe(pipe);
        }
        if let Some(runnable) = self.table.release(pending.slot) {
            self.wake(runnable);
        }
    }

    /// Looks at what the client has sent so far (without consuming it); once a whole header is
    /// there, consumes exactly the header, so the data after it stays for the handler. A client
    /// that has `hung_up` with only part of a header sent will never complete it.
    fn read_proxy(&mut self, token: Token, hung_up: bool) {
        let Some(Connection::Proxy(pending)) = self.streams.connections.get(&token) else {
            return;
        };
        let mut buf = vec![0u8; PROXY_FIRST_LOOK];
        let verdict = loop {
            let seen = match pending.stream.peek(&mut buf) {
                Ok(0) => break Err("the connection closed before the header"),
                Ok(n) => n,
                Err(err) if would_block(&err) => return,
                Err(_) => break Err("the connection failed before the header"),
            };
            match proxy::parse(&buf[..seen]) {
                Parsed::Incomplete if seen == buf.len() && buf.len() < proxy::MAX_HEADER_LEN => {
                    buf.resize(proxy::MAX_HEADER_LEN, 0);
                }
                Parsed::Incomplete if hung_up => {
                    break Err("the connection closed before the header");
                }
                Parsed::Incomplete => return,
                Parsed::Invalid(reason) => break Err(reason),
                Parsed::Done { len, addresses } => break Ok((len, addresses)),
            }
        };
        let Some(Connection::Proxy(mut pending)) = self.streams.connections.remove(&token) else {
            return;
        };
        self.deregister(&pending.stream);
        self.timers.cancel(pending.deadline);
        let id = pending.slot.service();
        self.streams.stop_waiting(id, &pending);
        // Its place in max_children passes on to the handler or builtin it becomes (which
        // takes a slot again in admit, or leaves it free if refused).
        if let Some(runnable) = self.table.release(pending.slot) {
            self.wake(runnable);
        }
        let consumed = verdict.and_then(|(len, addresses)| {
            let mut header = vec![0u8; len];
            pending
                .stream
                .read_exact(&mut header)
                .map(|()| addresses)
                .map_err(|_| "the header could not be read")
        });
        match consumed {
            Ok(addresses) => {
                let (remote, local) = addresses.unwrap_or((pending.peer, pending.local));
                let connection = Socket::from(pending.stream);
                self.admit(
                    id,
                    connection,
                    Some(remote),
                    Some(local),
                    pending.pipe,
                    false,
                );
            }
            Err(reason) => {
                if let Some(entry) = self.table.get(id) {
                    events::proxy_rejected(entry.label(), &pending.peer, reason);
                }
            }
        }
    }

    /// A request head (a PROXY header, or the `metrics` builtin's HTTP request) is not in
    /// after its time.
    pub(super) fn head_deadline(&mut self, token: Token) {
        let pending = match self.streams.connections.remove(&token) {
            Some(Connection::Proxy(pending)) => pending,
            Some(connection @ Connection::Builtin(_)) => {
                self.streams.connections.insert(token, connection);
                self.close_builtin(token);
                return;
            }
            Some(connection @ Connection::Tls(_)) => {
                self.streams.connections.insert(token, connection);
                self.tls_deadline(token);
                return;
            }
            None => return,
        };
        self.deregister(&pending.stream);
        self.streams.stop_waiting(pending.slot.service(), &pending);
        if let Some(entry) = self.table.get(pending.slot.service()) {
            let reason = format!(
                "no complete header within {}",
                events::Configured(PROXY_DEADLINE)
            );
            events::proxy_rejected(entry.label(), &pending.peer, &reason);
        }
        if let Some(runnable) = self.table.release(pending.slot) {
            self.wake(runnable);
        }
    }
}

/// accept(2) errors that belong to the connection being accepted, not to the listener.
fn connection_error(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EPROTO
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
                | libc::EPERM
        )
    )
}

/// The local end of a connection: a wildcard listener learns it per connection; others know it.
fn local_of(connection: &Socket, bound: SocketAddr) -> SocketAddr {
    if bound.ip().is_unspecified() {
        connection
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .unwrap_or(bound)
    } else {
        bound
    }
}
