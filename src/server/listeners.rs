//! Listening sockets by token: binding (or adopting one rinetd was socket-activated with),
//! registering with the poll, the settings a kept socket takes on reload, closing, and which
//! `wait: true` handler holds one now.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::unistd::Pid;
use socket2::Socket;

use super::table::ServiceId;
use super::{Server, Timer};
use crate::bind::{bind_tcp, bind_udp, bind_unix, local_address};
use crate::config::Protocol;
use crate::events;
use crate::service::{Endpoint, Kind, Service};

/// A bound socket: stream (tcp, unix) or datagram (udp).
pub enum Bound {
    Stream(Socket),
    Datagram(UdpSocket),
}

impl AsRawFd for Bound {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Bound::Stream(socket) => socket.as_raw_fd(),
            Bound::Datagram(socket) => socket.as_raw_fd(),
        }
    }
}

impl std::os::fd::AsFd for Bound {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Bound::Stream(socket) => socket.as_fd(),
            Bound::Datagram(socket) => socket.as_fd(),
        }
    }
}

impl Bound {
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Bound::Stream(socket) => socket.set_nonblocking(on),
            Bound::Datagram(socket) => socket.set_nonblocking(on),
        }
    }
}

pub struct Listener {
    pub service: ServiceId,
    pub endpoint: Endpoint,
    socket: Option<Bound>,
    /// The IP address really bound (port 0 resolved), once bound.
    bound: Option<SocketAddr>,
    /// Passed in by a service manager (LISTEN_FDS): its socket file is not rinetd's to remove.
    inherited: bool,
    /// An inherited IPv6 wildcard socket that also takes IPv4 (IPV6_V6ONLY off: what systemd's
    /// `ListenStream=PORT` gives): it serves both families' wildcards at its port.
    both_families: bool,
    /// Served by another listener's `both_families` socket: nothing of its own to bind.
    covered: bool,
    /// The `wait: true` handler holding this socket (shared, and blocking) now. It belongs to
    /// the socket, not the service, so that a reload moving the socket to another service
    /// cannot let that service read from it meanwhile.
    pub held_by: Option<Pid>,
}

impl Listener {
    /// Its address for the log: as bound (an ephemeral port resolved), else as configured.
    pub fn shown(&self) -> String {
        self.bound
            .map_or_else(|| self.endpoint.to_string(), |a| a.to_string())
    }

    pub fn bound(&self) -> Option<SocketAddr> {
        self.bound
    }

    pub fn socket(&self) -> Option<&Bound> {
        self.socket.as_ref()
    }

    pub fn is_inherited(&self) -> bool {
        self.inherited
    }

    /// Bound: a socket of its own, or served by another listener's dual-stack socket.
    pub fn is_bound(&self) -> bool {
        self.socket.is_some() || self.covered
    }

    /// The listening socket to accept from, unless a `wait: true` handler holds it.
    pub fn stream(&self) -> Option<&Socket> {
        match (&self.socket, self.held_by) {
            (Some(Bound::Stream(socket)), None) => Some(socket),
            _ => None,
        }
    }

    /// The datagram socket to read, unless a `wait: true` handler holds it.
    pub fn datagram(&self) -> Option<&UdpSocket> {
        match (&self.socket, self.held_by) {
            (Some(Bound::Datagram(socket)), None) => Some(socket),
            _ => None,
        }
    }
}

pub struct Listeners {
    /// Boxed: the map's room (2,048 places for 1,000 listeners) then holds a pointer each,
    /// not a whole listener.
    by_token: HashMap<Token, Box<Listener>>,
    /// Sockets rinetd itself was socket-activated with, until a listener claims them.
    inherited: Vec<Socket>,
    /// How many listeners have a `both_families` socket: while none has, binding a wildcard
    /// address need not look through every listener for one (1,000 wildcard services made
    /// that half a million steps at each start).
    dual_stack: usize,
}

impl Listeners {
    pub fn new(inherited: Vec<Socket>) -> Listeners {
        Listeners {
            by_token: HashMap::new(),
            inherited,
            dual_stack: 0,
        }
    }

    /// A listener of `service` at `endpoint`, still to be bound.
    pub fn add(&mut self, token: Token, service: ServiceId, endpoint: Endpoint) {
        let listener = Listener {
            service,
            endpoint,
            socket: None,
            bound: None,
            inherited: false,
            both_families: false,
            covered: false,
            held_by: None,
        };
        self.by_token.insert(token, Box::new(listener));
    }

    pub fn get(&self, token: Token) -> Option<&Listener> {
        self.by_token.get(&token).map(|listener| &**listener)
    }

    pub fn get_mut(&mut self, token: Token) -> Option<&mut Listener> {
        self.by_token
            .get_mut(&token)
            .map(|listener| &mut **listener)
    }

    pub fn tokens(&self) -> Vec<Token> {
        self.by_token.keys().copied().collect()
    }

    pub fn bound_count(&self) -> usize {
        self.by_token
            .values()
            .filter(|l| l.socket.is_some())
            .count()
    }

    /// Binds listener `token` for `service` (or takes the matching inherited socket) and
    /// registers it. On failure the listener stays unbound.
    pub fn bind(&mut self, token: Token, service: &Service, registry: &Registry) -> io::Result<()> {
        let Some(endpoint) = self.by_token.get(&token).map(|l| l.endpoint.clone()) else {
            return Ok(());
        };
        let datagram = service.protocol == Protocol::Udp;
        let options = &service.socket;
        let inherited = take_inherited(&mut self.inherited, &endpoint, datagram);
        let is_inherited = inherited.is_some();
        // The other wildcard of a dual-stack socket already taken: that socket serves it, and
        // binding one of its own would only collide with it.
        let covered_by = match (&inherited, &endpoint) {
            (None, Endpoint::Ip(address))
                if address.ip().is_unspecified() && self.dual_stack > 0 =>
            {
                self.by_token.values().find_map(|other| {
                    let dual = other.both_families && other.bound?.port() == address.port();
                    let same_kind = matches!(other.socket, Some(Bound::Datagram(_))) == datagram;
                    (dual && same_kind && other.endpoint != endpoint).then_some(other.bound?)
                })
            }
            _ => None,
        };
        let Some(listener) = self.by_token.get_mut(&token) else {
            return Ok(());
        };
        if let Some(shared) = covered_by {
            listener.covered = true;
            listener.inherited = true;
            listener.bound = Some(shared);
            return Ok(());
        }
        let socket = match (inherited, &listener.endpoint) {
            (Some(socket), _) => socket.set_nonblocking(true).map(|()| socket),
            (None, Endpoint::Ip(address)) if datagram => bind_udp(*address),
            (None, Endpoint::Ip(address)) => bind_tcp(*address, options.backlog),
            (None, Endpoint::Unix(path)) => {
                bind_unix(path, options.unix_mode.unwrap_or(0o666), options.backlog)
            }
        }?;
        let bound = match listener.endpoint {
            // Bound here to a port of its own: that is its address (getsockname would say the
            // same, one syscall per listener later).
            Endpoint::Ip(address) if !is_inherited && address.port() != 0 => Some(address),
            Endpoint::Ip(_) => Some(local_address(&socket)?),
            Endpoint::Unix(_) => None,
        };
        let socket = if datagram {
            if service.kind() == Kind::Wait {
                stamp_arrivals(&socket)?;
            }
            Bound::Datagram(socket.into())
        } else {
            Bound::Stream(socket)
        };
        registry.register(
            &mut SourceFd(&socket.as_raw_fd()),
            token,
            Interest::READABLE,
        )?;
        let both_families = is_inherited
            && matches!(bound, Some(SocketAddr::V6(v6)) if v6.ip().is_unspecified())
            && !only_v6(&socket);
        if both_families != listener.both_families {
            listener.both_families = both_families;
            if both_families {
                self.dual_stack += 1;
            } else {
                self.dual_stack -= 1;
            }
        }
        listener.socket = Some(socket);
        listener.bound = bound;
        listener.inherited = is_inherited;
        Ok(())
    }

    /// Closes listener `token` and forgets it; a UNIX socket file rinetd made is removed.
    pub fn close(&mut self, token: Token, registry: &Registry) {
        let Some(listener) = self.by_token.remove(&token) else {
            return;
        };
        if listener.both_families {
            self.dual_stack -= 1;
        }
        if let Some(socket) = &listener.socket {
            let _ = registry.deregister(&mut SourceFd(&socket.as_raw_fd()));
            if let (Endpoint::Unix(path), false) = (&listener.endpoint, listener.inherited) {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    pub fn close_all(&mut self, registry: &Registry) {
        for token in self.tokens() {
            self.close(token, registry);
        }
    }

    /// Drops a socket that can no longer be trusted (it could not be made non-blocking again
    /// after a `wait: true` handler): the listener is unbound, for a bind retry.
    pub fn unbind(&mut self, token: Token, registry: &Registry) {
        if let Some(listener) = self.by_token.get_mut(&token)
            && let Some(socket) = listener.socket.take()
        {
            let _ = registry.deregister(&mut SourceFd(&socket.as_raw_fd()));
            listener.bound = None;
        }
    }

    /// A kept socket takes the settings that can change without re-binding it: the backlog
    /// (listen(2) again only updates it), a UNIX socket's mode, and arrival time stamps for a
    /// datagram socket that has become `wait: true`. Returns what failed (the setting and
    /// why), for the log.
    pub fn refresh(&self, token: Token, service: &Service) -> Vec<(&'static str, io::Error)> {
        let mut failures = Vec::new();
        let Some(listener) = self.by_token.get(&token) else {
            return failures;
        };
        match &listener.socket {
            Some(Bound::Stream(socket)) => {
                let backlog = service.socket.backlog.min(i32::MAX as u32) as i32;
                if let Err(err) = socket.listen(backlog) {
                    failures.push(("backlog", err));
                }
            }
            Some(Bound::Datagram(socket)) if service.kind() == Kind::Wait => {
                if let Err(err) = stamp_arrivals(socket) {
                    failures.push(("wait", err));
                }
            }
            _ => {}
        }
        if let (Endpoint::Unix(path), Some(mode), Some(_)) = (
            &listener.endpoint,
            service.socket.unix_mode,
            &listener.socket,
        ) {
            use std::os::unix::fs::PermissionsExt;
            if let Err(err) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            {
                failures.push(("socket_mode", err));
            }
        }
        failures
    }

    /// The inherited sockets no listener claimed, closed; their addresses, for the log.
    pub fn close_unclaimed(&mut self) -> Vec<String> {
        self.inherited
            .drain(..)
            .map(|socket| {
                socket.local_addr().ok().map_or_else(
                    || "(unknown)".to_string(),
                    |a| match (a.as_socket(), a.as_pathname()) {
                        (Some(ip), _) => ip.to_string(),
                        (None, Some(path)) => path.display().to_string(),
                        (None, None) => "(unnamed)".to_string(),
                    },
                )
            })
            .collect()
    }
}

/// Between two attempts to bind a socket that could not be bound.
const BIND_RETRY: Duration = Duration::from_secs(10);

impl Server {
    /// Binds listener `token`, or schedules a retry.
    pub(super) fn bind(&mut self, token: Token) {
        let Some(id) = self.listeners.get(token).map(|l| l.service) else {
            return;
        };
        let Some(entry) = self.table.get(id) else {
            return;
        };
        match self
            .listeners
            .bind(token, &entry.service, self.poll.registry())
        {
            Ok(()) => {
                if let Some(listener) = self.listeners.get(token) {
                    events::listening(
                        entry.label(),
                        listener.bound(),
                        &listener.endpoint,
                        listener.is_inherited(),
                    );
                }
                // Clients already queued (on an inherited socket, or one that took retries
                // to bind) need no turn of their own: registering a socket that is already
                // readable reports it at the next poll.
            }
            Err(err) => {
                if let Some(listener) = self.listeners.get(token) {
                    let address = listener.endpoint.to_string();
                    events::bind_failed(entry.label(), &address, &err, BIND_RETRY);
                    let at = Instant::now() + BIND_RETRY;
                    self.timers.schedule(at, Timer::RetryBind(token));
                }
            }
        }
    }
}

/// Asks the kernel to time-stamp each datagram's arrival (see `wait::Fingerprint`).
pub fn stamp_arrivals(socket: &impl std::os::fd::AsFd) -> io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    setsockopt(socket, sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)
}

fn only_v6(socket: &Bound) -> bool {
    socket2::SockRef::from(socket).only_v6().unwrap_or(true)
}

/// Takes the inherited socket that is `endpoint` (same address or path, same type), if any.
/// A wildcard address (`0.0.0.0:P` or `[::]:P`) also takes an inherited `[::]:P` socket that
/// accepts both families.
fn take_inherited(
    inherited: &mut Vec<Socket>,
    endpoint: &Endpoint,
    datagram: bool,
) -> Option<Socket> {
    let wanted = if datagram {
        socket2::Type::DGRAM
    } else {
        socket2::Type::STREAM
    };
    let ours = |socket: &Socket, place: &dyn Fn(&socket2::SockAddr) -> bool| {
        socket.r#type().ok() == Some(wanted) && socket.local_addr().is_ok_and(|local| place(&local))
    };
    let exact = |local: &socket2::SockAddr| match endpoint {
        Endpoint::Ip(address) => local.as_socket() == Some(*address),
        Endpoint::Unix(path) => local.as_pathname() == Some(path.as_path()),
    };
    let dual_stack = |local: &socket2::SockAddr| match (endpoint, local.as_socket()) {
        (Endpoint::Ip(address), Some(SocketAddr::V6(local))) => {
            address.ip().is_unspecified()
                && local.ip().is_unspecified()
                && local.port() == address.port()
        }
        _ => false,
    };
    let position = inherited
        .iter()
        .position(|socket| ours(socket, &exact))
        .or_else(|| {
            inherited.iter().position(|socket| {
                ours(socket, &dual_stack) && socket.only_v6().is_ok_and(|only| !only)
            })
        })?;
    Some(inherited.swap_remove(position))
}
