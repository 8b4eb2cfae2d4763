//! Datagram services (udp): builtins answering each datagram inline, a handler per datagram with
//! the datagram as its stdin and its stdout sent back as the reply, and the first-datagram
//! bookkeeping of `wait: true`.

use std::fs::File;
use std::io::IoSliceMut;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Instant, SystemTime};

use log::{debug, info, warn};
use mio::{Interest, Token};
use nix::fcntl::OFlag;
use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, setsockopt, sockopt,
};
use nix::unistd::pipe2;

use super::{
    ACCEPT_BACKOFF, Bound, Fingerprint, Role, Server, Source, address_vars, canonical,
    is_resource_exhaustion, would_block,
};
use crate::builtin::{self, LOOP_PORTS};
use crate::config::Builtin;
use crate::spawn::Stdio;

/// The largest UDP payload over IPv4, and so the largest reply a handler may send.
pub(super) const MAX_REPLY: usize = 65_507;
/// Big enough for any datagram.
const MAX_DATAGRAM: usize = 65_536;

/// What `next_datagram` found.
enum Next {
    Admitted(usize, SocketAddr),
    /// Dropped (loop protection) or refused: try the next one.
    Skipped,
    /// Nothing more to read now.
    Empty,
}

/// A per-datagram handler's stdout, collected until it exits and then sent to `peer`.
pub(super) struct Reply {
    service: usize,
    /// The listener's token: a reload may reorder or remove the service's listeners.
    listener: Token,
    peer: SocketAddr,
    /// Closed (None) at end of file or once the reply is full: a handler that writes on gets
    /// EPIPE instead of rinetd reading and dropping its output forever.
    pipe: Option<File>,
    data: Vec<u8>,
    truncated: bool,
}

/// One datagram off `socket`, or None when there is none (or it failed: logged by the caller's
/// next attempt).
fn receive(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<Option<(usize, SocketAddr)>> {
    loop {
        match socket.recv_from(buf) {
            Ok(got) => return Ok(Some(got)),
            Err(err) if would_block(&err) => return Ok(None),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}

/// Asks the kernel to time-stamp each datagram's arrival (see `Fingerprint`).
pub(super) fn stamp_arrivals(socket: &impl AsFd) -> io::Result<()> {
    setsockopt(socket, sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)
}

/// Room for the control messages a datagram may carry. rinetd asks for one (the arrival time),
/// but a `wait: true` handler may turn on any option on the socket it was handed (tftpd-hpa sets
/// IP_PKTINFO), and each adds a message to every later datagram.
const CONTROL_ROOM: usize = 1024;

/// The first datagram in the queue, as a fingerprint, without taking it. Control messages that
/// do not fit are left out (the kernel says so with MSG_CTRUNC): the fingerprint then has no
/// arrival time, but the datagram is still there.
pub(super) fn peek_fingerprint(socket: &UdpSocket) -> Option<Fingerprint> {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut control = vec![0u8; CONTROL_ROOM];
    let message = recvmsg::<SockaddrStorage>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut control),
        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
    )
    .ok()?;
    let arrived = message.cmsgs().ok().and_then(|mut cmsgs| {
        cmsgs.find_map(|cmsg| match cmsg {
            ControlMessageOwned::ScmTimestampns(at) => Some((at.tv_sec(), at.tv_nsec())),
            _ => None,
        })
    });
    let sender = message.address.as_ref().and_then(socket_address)?;
    let len = message.bytes;
    Some(Fingerprint::of(
        sender,
        &buf[..len.min(MAX_DATAGRAM)],
        arrived,
    ))
}

fn socket_address(storage: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = storage.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    storage
        .as_sockaddr_in6()
        .map(|v6| SocketAddr::V6((*v6).into()))
}

/// Takes the first datagram off the queue; never blocks, whatever mode a handler left.
pub(super) fn discard_one(socket: &UdpSocket) -> io::Result<usize> {
    nix::sys::socket::recv(socket.as_raw_fd(), &mut [0u8; 1], MsgFlags::MSG_DONTWAIT)
        .map_err(io::Error::from)
}

impl Server {
    /// The UDP socket of listener `index`, unless a `wait: true` handler holds it.
    fn udp_socket(&self, service: usize, index: usize) -> Option<&UdpSocket> {
        let listener = self.services[service].listeners.get(index)?;
        match (listener.socket.as_ref()?, listener.held_by) {
            (Bound::Datagram(socket), None) => Some(socket),
            _ => None,
        }
    }

    /// The next datagram on listener `index` that may be served: received, counted against
    /// `rate_limit`, and checked against the access lists (refused ones are logged and skipped).
    /// With `loop_protection`, datagrams from the ports of answering services are dropped first.
    fn next_datagram(
        &mut self,
        service: usize,
        index: usize,
        buf: &mut [u8],
        loop_protection: bool,
    ) -> Next {
        let Some(socket) = self.udp_socket(service, index) else {
            return Next::Empty;
        };
        let (len, peer) = match receive(socket, buf) {
            Ok(Some(got)) => got,
            Ok(None) => return Next::Empty,
            Err(err) => {
                let label = self.services[service].label();
                warn!("{label}: receive failed error={err}");
                return Next::Empty;
            }
        };
        if loop_protection && LOOP_PORTS.contains(&peer.port()) {
            let label = self.services[service].label();
            debug!(
                "{label}: dropped a datagram from port {} (loop protection)",
                peer.port()
            );
            return Next::Skipped;
        }
        self.count_for_rate_limit(service, Instant::now());
        let state = &mut self.services[service];
        let client = canonical(peer);
        match state.refusal(client.ip()) {
            Some(reason) => {
                state.refuse(&client.to_string(), reason);
                Next::Skipped
            }
            None => Next::Admitted(len, peer),
        }
    }

    /// Runs `serve` for each admitted datagram of listener `index` until the socket is empty,
    /// the service cannot take more, or the turn is over (then it gets another turn soon).
    fn serve_datagrams(
        &mut self,
        service: usize,
        index: usize,
        loop_protection: bool,
        mut serve: impl FnMut(&mut Server, &[u8], SocketAddr) -> bool,
    ) {
        let mut buf = std::mem::take(&mut self.datagram_buffer);
        buf.resize(MAX_DATAGRAM, 0);
        let mut finished = false;
        for _ in 0..super::TURN {
            if self.stopping.is_some() || !self.services[service].can_accept() {
                finished = true;
                break;
            }
            match self.next_datagram(service, index, &mut buf, loop_protection) {
                Next::Admitted(len, peer) => {
                    if !serve(self, &buf[..len], peer) {
                        finished = true;
                        break;
                    }
                }
                Next::Skipped => {}
                Next::Empty => {
                    finished = true;
                    break;
                }
            }
        }
        self.datagram_buffer = buf;
        if !finished {
            let token = self.services[service].listeners[index].token;
            self.again.push_back(token);
        }
    }

    /// Builtins answer each datagram at once; datagrams from the ports of other answering
    /// services are dropped (echo ↔ chargen loops).
    pub(super) fn datagrams_to_builtin(&mut self, service: usize, index: usize, builtin: Builtin) {
        self.serve_datagrams(service, index, true, |server, request, peer| {
            server.random ^= server.random << 13;
            server.random ^= server.random >> 17;
            server.random ^= server.random << 5;
            let reply = builtin::datagram_reply(builtin, request, SystemTime::now(), server.random);
            if let (Some(reply), Some(socket)) = (reply, server.udp_socket(service, index)) {
                // A full send buffer drops the reply, as the network could have.
                let _ = socket.send_to(&reply, peer);
            }
            true
        });
    }

    /// `wait: false` udp: a handler per datagram, while max_children allows (beyond it the
    /// datagrams wait in the socket's buffer).
    pub(super) fn datagrams_to_handlers(&mut self, service: usize, index: usize) {
        if !self.prepare_pipe(service) {
            return;
        }
        self.serve_datagrams(service, index, false, |server, datagram, peer| {
            let local = server.services[service].listeners[index]
                .bound
                .unwrap_or(peer);
            if let Err(err) = server.handle_datagram(service, index, datagram, peer, local) {
                if is_resource_exhaustion(&err) {
                    server.back_off(service, ACCEPT_BACKOFF, "datagram dropped", &err);
                } else {
                    let label = server.services[service].label();
                    warn!("{label}: datagram dropped error={err}");
                }
                return false;
            }
            // The next datagram's pipe, before it is read.
            server.prepare_pipe(service)
        });
    }

    /// Starts a handler with `datagram` as its whole stdin and a pipe as its stdout.
    fn handle_datagram(
        &mut self,
        service: usize,
        index: usize,
        datagram: &[u8],
        peer: SocketAddr,
        local: SocketAddr,
    ) -> io::Result<()> {
        // A pipe holds 64 KiB, more than any datagram: the write cannot block.
        // Non-blocking: a pipe normally holds 64 KiB, more than any datagram, but a user over
        // pipe-user-pages-soft gets smaller pipes, and a blocked write here would stop every
        // service. A datagram that does not fit is dropped (and logged by the caller).
        let (request, request_writer) = pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        nix::fcntl::fcntl(&request, nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()))?;
        File::from(request_writer).write_all(datagram)?;
        let (reply, reply_writer) = pipe2(OFlag::O_CLOEXEC)?;
        nix::fcntl::fcntl(&reply, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        let token = self.new_token();
        // `peer` as received is where the reply goes; the client it names is canonical.
        let client = canonical(peer);
        let local = canonical(local);
        let vars = address_vars(self.services[service].service.spec.protocol, client, local);
        let stdio = Stdio::Datagram {
            request: request.as_raw_fd(),
            reply: reply_writer.as_raw_fd(),
        };
        let role = Role::Datagram { reply: token };
        // Made before the datagram was read (see datagrams_to_handlers).
        let Some(pipe) = self.take_pipe(service) else {
            return Ok(());
        };
        let Some(pid) = self.start_handler(service, pipe, stdio, &vars, Some(client.ip()), role)
        else {
            return Ok(());
        };
        drop((request, reply_writer));
        info!(
            "{}: accepted client={client} bytes={} pid={pid}",
            self.services[service].label(),
            datagram.len()
        );
        self.register(&reply, token, Interest::READABLE)?;
        let collector = Reply {
            service,
            listener: self.services[service].listeners[index].token,
            peer,
            pipe: Some(File::from(reply)),
            data: Vec::new(),
            truncated: false,
        };
        self.sources.insert(token, Source::Reply(collector));
        Ok(())
    }

    /// Collects what the handler writes (reading as it comes, so a handler writing more than a
    /// pipe holds is not stuck); beyond MAX_REPLY it is read and dropped.
    /// Collects what the handler writes (reading as it comes, so a handler writing more than a
    /// pipe holds is not stuck).
    pub(super) fn read_reply(&mut self, token: Token) {
        let Some(Source::Reply(reply)) = self.sources.get_mut(&token) else {
            return;
        };
        if let Some(pipe) = collect(reply) {
            self.deregister(&pipe);
        }
    }

    /// The handler has exited: send what it wrote, if anything, as one datagram.
    pub(super) fn send_reply(&mut self, token: Token) {
        let Some(Source::Reply(mut reply)) = self.sources.remove(&token) else {
            return;
        };
        if let Some(pipe) = collect(&mut reply) {
            self.deregister(&pipe);
        }
        let label = self.services[reply.service].label().to_string();
        if reply.truncated {
            warn!("{label}: reply to {} cut to {MAX_REPLY} bytes", reply.peer);
        }
        if reply.data.is_empty() {
            return;
        }
        let index = self.services[reply.service]
            .listeners
            .iter()
            .position(|l| l.token == reply.listener);
        if let Some(socket) = index.and_then(|index| self.udp_socket(reply.service, index))
            && let Err(err) = socket.send_to(&reply.data, reply.peer)
        {
            warn!("{label}: reply to {} failed error={err}", reply.peer);
        }
    }

    /// `wait: true` udp: the first datagram nobody refuses (refused ones are taken and
    /// dropped, at most a turn's worth at a time: then the listener gets another turn soon).
    pub(super) fn first_datagram(&mut self, service: usize, index: usize) -> Option<Fingerprint> {
        for _ in 0..super::TURN {
            let fingerprint = peek_fingerprint(self.udp_socket(service, index)?)?;
            let state = &mut self.services[service];
            let client = canonical(fingerprint.sender);
            match state.refusal(client.ip()) {
                None => {
                    self.count_for_rate_limit(service, Instant::now());
                    return Some(fingerprint);
                }
                Some(reason) => {
                    state.refuse(&client.to_string(), reason);
                    discard_one(self.udp_socket(service, index)?).ok()?;
                }
            }
        }
        let token = self.services[service].listeners[index].token;
        self.again.push_back(token);
        None
    }
}

/// Reads what is there, up to MAX_REPLY; at end of file or once the reply is full, takes the
/// pipe out (for the caller to deregister, then close).
fn collect(reply: &mut Reply) -> Option<File> {
    let mut buf = [0u8; 16 * 1024];
    let pipe = reply.pipe.as_mut()?;
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let room = MAX_REPLY - reply.data.len();
                reply.data.extend_from_slice(&buf[..n.min(room)]);
                if n > room {
                    reply.truncated = true;
                    break;
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    reply.pipe.take()
}
