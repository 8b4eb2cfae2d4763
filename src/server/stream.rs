//! Stream services (tcp and unix, `wait: false`): accepting, reading PROXY headers without
//! blocking the loop, admitting or refusing clients, and serving TCP builtins inline.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime};

use log::{info, warn};
use mio::{Interest, Token};
use socket2::Socket;

use super::timers::TimerId;
use super::{
    ACCEPT_BACKOFF, Bound, Kind, Role, Server, Source, Timer, address_vars, canonical,
    is_resource_exhaustion, seconds, would_block,
};
use crate::builtin::{Step, StreamBuiltin};
use crate::proxy::{self, Parsed};
use crate::spawn::{OutputPipe, Stdio};

/// How long a client behind `proxy_protocol: true` has to send its header.
const PROXY_DEADLINE: Duration = Duration::from_secs(5);
/// Most PROXY headers fit in this; only a v2 header with large TLVs needs a longer look.
const PROXY_FIRST_LOOK: usize = 536;

/// A TCP connection served by a builtin.
pub(super) struct BuiltinConnection {
    service: usize,
    remote: Option<SocketAddr>,
    socket: Socket,
    machine: StreamBuiltin,
    started: Instant,
}

/// A connection that has not yet sent its whole PROXY header.
pub(super) struct PendingProxy {
    service: usize,
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    /// Cancelled once the header is in.
    deadline: TimerId,
    /// The handler's output pipe, made before the connection was accepted (None for builtins).
    pipe: Option<OutputPipe>,
}

/// A connection admitted whose handler could not be started yet.
pub(super) struct Held {
    connection: Socket,
    remote: Option<SocketAddr>,
    local: Option<SocketAddr>,
}

impl Server {
    /// Accepts until the backlog is empty (edge-triggered), a limit stops the service, or the
    /// turn is over.
    pub(super) fn accept_from(&mut self, service: usize, index: usize) {
        // The pipe is made before the connection is accepted: out of descriptors, the client
        // then waits in the backlog instead of being accepted and dropped.
        let needs_pipe = self.services[service].kind == Kind::StreamExec;
        for _ in 0..super::TURN {
            if self.stopping.is_some() || !self.services[service].can_accept() {
                return;
            }
            // A back-off is over: first the connection that was waiting for its handler.
            if let Some(held) = self.services[service].held.take() {
                self.admit(service, held.connection, held.remote, held.local, None);
                continue;
            }
            if needs_pipe && !self.prepare_pipe(service) {
                return;
            }
            let state = &self.services[service];
            let Some(listener) = state.listeners.get(index) else {
                return;
            };
            let (Some(Bound::Stream(socket)), None) = (&listener.socket, listener.held_by) else {
                return;
            };
            match socket.accept() {
                Ok((connection, peer)) => {
                    let bound = listener.bound;
                    self.count_for_rate_limit(service, Instant::now());
                    let remote = peer.as_socket().map(canonical);
                    let local = bound.map(|bound| canonical(local_of(&connection, bound)));
                    let pipe = if needs_pipe {
                        self.spare_pipe.take()
                    } else {
                        None
                    };
                    if self.services[service].service.spec.proxy_protocol {
                        if let (Some(remote), Some(local)) = (remote, local) {
                            self.await_proxy_header(service, connection, remote, local, pipe);
                        }
                    } else {
                        self.admit(service, connection, remote, local, pipe);
                    }
                }
                Err(err) if would_block(&err) => return,
                // Errors of one connection (accept(2) lists them as "treat like EAGAIN and
                // retry"): the next one in the backlog is unaffected.
                Err(err) if err.kind() == io::ErrorKind::Interrupted || connection_error(&err) => {}
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
        let token = self.services[service].listeners[index].token;
        self.again.push_back(token);
    }

    /// Checks the client against the ACLs and per_source, then starts its handler (with `pipe`,
    /// or a new one) or builtin. `remote`/`local` are None for UNIX sockets. A handler that
    /// cannot be started leaves the connection held for the end of the back-off.
    fn admit(
        &mut self,
        service: usize,
        connection: Socket,
        remote: Option<SocketAddr>,
        local: Option<SocketAddr>,
        pipe: Option<OutputPipe>,
    ) {
        // A PROXY header may name a mapped address too.
        let (remote, local) = (remote.map(canonical), local.map(canonical));
        let state = &mut self.services[service];
        if let Some(remote) = remote
            && let Some(reason) = state.refusal(remote.ip())
        {
            state.refuse(&remote.to_string(), reason);
            return;
        }
        let spec = &state.service.spec;
        if spec.keepalive && remote.is_some() {
            let _ = connection.set_keepalive(true);
        }
        let client = remote.map(|r| r.ip());
        let shown = remote.map_or_else(|| "unix".to_string(), |r| r.to_string());
        if let Kind::StreamBuiltin(builtin) = state.kind {
            info!("{}: accepted client={shown} builtin", state.label());
            self.start_builtin(service, connection, remote, builtin);
            return;
        }
        let vars = match (remote, local) {
            (Some(remote), Some(local)) => address_vars(spec.protocol, remote, local),
            _ => Vec::new(),
        };
        // A proxied connection was non-blocking while its header was read.
        let _ = connection.set_nonblocking(false);
        let fd = connection.as_raw_fd();
        let started = pipe.or_else(|| self.take_pipe(service)).and_then(|pipe| {
            let stdio = Stdio::Connection(fd);
            self.start_handler(service, pipe, stdio, &vars, client, Role::Connection)
        });
        match started {
            Some(pid) => info!(
                "{}: accepted client={shown} pid={pid}",
                self.services[service].label()
            ),
            // Backing off: retried when the back-off ends (nothing else would end it).
            None if self.services[service].paused.is_some() => {
                self.services[service].held = Some(Held {
                    connection,
                    remote,
                    local,
                });
            }
            None => {}
        }
    }

    fn start_builtin(
        &mut self,
        service: usize,
        socket: Socket,
        remote: Option<SocketAddr>,
        builtin: crate::config::Builtin,
    ) {
        if socket.set_nonblocking(true).is_err() {
            return;
        }
        let token = self.new_token();
        if let Err(err) = self.register(&socket, token, Interest::READABLE | Interest::WRITABLE) {
            warn!(
                "{}: cannot serve error={err}",
                self.services[service].label()
            );
            return;
        }
        self.occupy(service, remote.map(|r| r.ip()));
        let connection = BuiltinConnection {
            service,
            remote,
            socket,
            machine: StreamBuiltin::new(builtin, SystemTime::now()),
            started: Instant::now(),
        };
        self.sources.insert(token, Source::Builtin(connection));
        self.drive_builtin(token);
    }

    pub(super) fn drive_builtin(&mut self, token: Token) {
        let Some(Source::Builtin(connection)) = self.sources.get_mut(&token) else {
            return;
        };
        match connection.machine.drive(&connection.socket) {
            Step::Wait => {}
            Step::Again => self.again.push_back(token),
            Step::Close => {
                if let Some(Source::Builtin(connection)) = self.sources.remove(&token) {
                    self.deregister(&connection.socket);
                    let shown = connection
                        .remote
                        .map_or_else(|| "unix".to_string(), |r| r.to_string());
                    info!(
                        "{}: closed client={shown} duration={}",
                        self.services[connection.service].label(),
                        seconds(connection.started.elapsed())
                    );
                    self.release(connection.service, connection.remote.map(|r| r.ip()));
                }
            }
        }
    }

    /// Registers a connection whose PROXY header is still to come; it counts against
    /// max_children meanwhile, so that slow proxies cannot pile up without bound.
    fn await_proxy_header(
        &mut self,
        service: usize,
        connection: Socket,
        peer: SocketAddr,
        local: SocketAddr,
        pipe: Option<OutputPipe>,
    ) {
        if connection.set_nonblocking(true).is_err() {
            return;
        }
        let token = self.new_token();
        if let Err(err) = self.register(&connection, token, Interest::READABLE) {
            warn!(
                "{}: cannot serve error={err}",
                self.services[service].label()
            );
            return;
        }
        self.occupy(service, None);
        let pending = PendingProxy {
            service,
            stream: TcpStream::from(connection),
            peer,
            local,
            deadline: self.schedule(
                Instant::now() + PROXY_DEADLINE,
                Timer::ProxyDeadline { token },
            ),
            pipe,
        };
        self.sources.insert(token, Source::Proxy(pending));
        self.read_proxy(token, false);
    }

    /// Looks at what the client has sent so far (without consuming it); once a whole header is
    /// there, consumes exactly the header, so the data after it stays for the handler. A client
    /// that has `hung_up` with only part of a header sent will never complete it.
    pub(super) fn read_proxy(&mut self, token: Token, hung_up: bool) {
        let Some(Source::Proxy(pending)) = self.sources.get(&token) else {
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
        let Some(Source::Proxy(mut pending)) = self.sources.remove(&token) else {
            return;
        };
        self.deregister(&pending.stream);
        self.timers.cancel(pending.deadline);
        let service = pending.service;
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
                // Its place in max_children passes on to the handler or builtin it becomes
                // (which takes it again in admit, or leaves it free if refused).
                self.release(service, None);
                let (remote, local) = addresses.unwrap_or((pending.peer, pending.local));
                self.admit(
                    service,
                    Socket::from(pending.stream),
                    Some(remote),
                    Some(local),
                    pending.pipe,
                );
            }
            Err(reason) => {
                warn!(
                    "{}: proxy header rejected client={} error={reason}",
                    self.services[service].label(),
                    pending.peer
                );
                self.release(service, None);
            }
        }
    }

    pub(super) fn proxy_deadline(&mut self, token: Token) {
        if let Some(Source::Proxy(pending)) = self.sources.remove(&token) {
            self.deregister(&pending.stream);
            warn!(
                "{}: proxy header rejected client={} error=no complete header within {}s",
                self.services[pending.service].label(),
                pending.peer,
                PROXY_DEADLINE.as_secs()
            );
            self.release(pending.service, None);
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
