//! Datagram services (udp, `wait: false`): builtins answering each datagram inline, and a
//! handler per datagram with the datagram as its stdin and its stdout sent back as the reply.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Instant, SystemTime};

use mio::{Interest, Token};
use nix::fcntl::OFlag;
use nix::unistd::pipe2;

use super::children::{RESOURCE_BACKOFF, Role};
use super::table::{Denied, ServiceId};
use super::{Server, SourceKind, Timer, canonical, is_resource_exhaustion, would_block};
use crate::builtin::{self, LOOP_PORTS};
use crate::config::Builtin;
use crate::events;
use crate::spawn::{Stdio, address_vars};

/// The largest UDP payload over IPv4, and so the largest reply a handler may send.
const MAX_REPLY: usize = 65_507;
/// Big enough for any datagram.
const MAX_DATAGRAM: usize = 65_536;

/// The replies being collected, and what the datagram services reuse between turns.
pub struct Datagrams {
    replies: HashMap<Token, Reply>,
    /// Receive buffer of the datagram services, kept between turns (64 KiB).
    buffer: Vec<u8>,
    /// xorshift state for chargen's datagram lengths.
    random: u32,
}

impl Datagrams {
    pub fn new() -> Datagrams {
        Datagrams {
            replies: HashMap::new(),
            buffer: Vec::new(),
            random: std::process::id() | 1,
        }
    }

    fn next_random(&mut self) -> u32 {
        self.random ^= self.random << 13;
        self.random ^= self.random >> 17;
        self.random ^= self.random << 5;
        self.random
    }
}

/// A per-datagram handler's stdout, collected until it exits and then sent to `peer`.
struct Reply {
    label: String,
    /// The listener's token: a reload may move the socket to another service meanwhile.
    listener: Token,
    /// Where the datagram came from, as received (a dual-stack socket needs the mapped form).
    peer: SocketAddr,
    /// Closed (None) at end of file or once the reply is full: a handler that writes on gets
    /// EPIPE instead of rinetd reading and dropping its output forever.
    pipe: Option<File>,
    data: Vec<u8>,
    truncated: bool,
}

/// What `next_datagram` found.
enum Next {
    Admitted(usize, SocketAddr),
    /// Dropped (loop protection) or refused: try the next one.
    Skipped,
    /// Nothing more to read now.
    Empty,
}

/// One datagram off `socket`, or None when there is none.
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

impl Server {
    /// The next datagram on listener `token` that may be served: received, counted against
    /// `rate_limit`, and checked against the access lists (refused ones are logged and skipped).
    /// With `loop_protection`, datagrams from the ports of answering services are dropped first.
    fn next_datagram(
        &mut self,
        id: ServiceId,
        token: Token,
        buf: &mut [u8],
        loop_protection: bool,
    ) -> Next {
        let Some(socket) = self.listeners.get(token).and_then(|l| l.datagram()) else {
            return Next::Empty;
        };
        let label = || {
            self.table
                .get(id)
                .map_or_else(String::new, |e| e.label().to_string())
        };
        let (len, peer) = match receive(socket, buf) {
            Ok(Some(got)) => got,
            Ok(None) => return Next::Empty,
            // An error belongs to one datagram (or is an ICMP report about an earlier reply):
            // the receive consumed it, and the next datagram is unaffected.
            Err(err) => {
                events::receive_failed(&label(), &err);
                return Next::Skipped;
            }
        };
        if loop_protection && LOOP_PORTS.contains(&peer.port()) {
            events::loop_protection(&label(), peer.port());
            return Next::Skipped;
        }
        if let Some(until) = self.table.count_accept(id, Instant::now()) {
            self.timers.schedule(until, Timer::Resume(id));
        }
        let client = canonical(peer);
        match self.table.judge(id, client.ip(), Instant::now()) {
            Ok(()) => Next::Admitted(len, peer),
            Err(Denied::Refused(reason)) => {
                self.log_refusal(id, &client, reason);
                Next::Skipped
            }
            Err(Denied::Gone) => Next::Empty,
        }
    }

    /// Runs `serve` for each admitted datagram of listener `token` until the socket is empty,
    /// the service cannot take more, or the turn is over (then it gets another turn soon).
    fn serve_datagrams(
        &mut self,
        id: ServiceId,
        token: Token,
        loop_protection: bool,
        mut serve: impl FnMut(&mut Server, &[u8], SocketAddr) -> bool,
    ) {
        let mut buf = std::mem::take(&mut self.datagrams.buffer);
        buf.resize(MAX_DATAGRAM, 0);
        let mut finished = false;
        for _ in 0..super::TURN {
            if !self.table.get(id).is_some_and(|e| e.may_accept()) {
                finished = true;
                break;
            }
            match self.next_datagram(id, token, &mut buf, loop_protection) {
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
        self.datagrams.buffer = buf;
        if !finished {
            self.runnable.push_back(token);
        }
    }

    /// Builtins answer each datagram at once; datagrams from the ports of other answering
    /// services are dropped (echo ↔ chargen loops).
    pub(super) fn datagrams_to_builtin(&mut self, id: ServiceId, token: Token, builtin: Builtin) {
        self.serve_datagrams(id, token, true, |server, request, peer| {
            let random = server.datagrams.next_random();
            let reply = builtin::datagram_reply(builtin, request, SystemTime::now(), random);
            let socket = server.listeners.get(token).and_then(|l| l.datagram());
            if let (Some(reply), Some(socket)) = (reply, socket) {
                // A full send buffer drops the reply, as the network could have.
                let _ = socket.send_to(&reply, peer);
            }
            true
        });
    }

    /// `wait: false` udp: a handler per datagram, while max_children allows (beyond it the
    /// datagrams wait in the socket's buffer).
    pub(super) fn datagrams_to_handlers(&mut self, id: ServiceId, token: Token) {
        if !self.prepare_pipe(id) {
            return;
        }
        self.serve_datagrams(id, token, false, |server, datagram, peer| {
            if let Err(err) = server.handle_datagram(id, token, datagram, peer) {
                if is_resource_exhaustion(&err) {
                    server.back_off(id, RESOURCE_BACKOFF, "datagram dropped", &err);
                    return false;
                }
                // This datagram only (it did not fit its handler's stdin, say): on to the next.
                if let Some(entry) = server.table.get(id) {
                    events::datagram_dropped(entry.label(), &err);
                }
            }
            // The next datagram's pipe, before it is read.
            server.prepare_pipe(id)
        });
    }

    /// Starts a handler with `datagram` as its whole stdin and a pipe as its stdout.
    fn handle_datagram(
        &mut self,
        id: ServiceId,
        token: Token,
        datagram: &[u8],
        peer: SocketAddr,
    ) -> io::Result<()> {
        // Non-blocking: a pipe normally holds 64 KiB, more than any datagram, but a user over
        // pipe-user-pages-soft gets smaller pipes, and a blocked write here would stop every
        // service. A datagram that does not fit is dropped (and logged by the caller).
        let (request, request_writer) = pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        nix::fcntl::fcntl(&request, nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()))?;
        File::from(request_writer).write_all(datagram)?;
        let (reply, reply_writer) = pipe2(OFlag::O_CLOEXEC)?;
        nix::fcntl::fcntl(&reply, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        let Some(entry) = self.table.get(id) else {
            return Ok(());
        };
        let label = entry.label().to_string();
        let protocol = entry.service.protocol;
        // `peer` as received is where the reply goes; the client it names is canonical.
        let client = canonical(peer);
        let local = self
            .listeners
            .get(token)
            .and_then(|l| l.bound())
            .map_or(client, canonical);
        let vars = address_vars(protocol, client, local);
        let reply_token = self.tokens.next(SourceKind::Reply);
        let stdio = Stdio::Datagram {
            request: request.as_raw_fd(),
            reply: reply_writer.as_raw_fd(),
        };
        let role = Role::Datagram { reply: reply_token };
        // The pipe was made before the datagram was read (see datagrams_to_handlers).
        let Some(pipe) = self.take_pipe(id) else {
            return Ok(());
        };
        let Ok(slot) = self.table.occupy(id, Some(client.ip())) else {
            return Ok(());
        };
        let Some(pid) = self.start_handler(slot, pipe, stdio, &vars, role) else {
            return Ok(());
        };
        drop((request, reply_writer));
        events::accepted_datagram(&label, &client, datagram.len(), pid.as_raw());
        self.register(&reply, reply_token, Interest::READABLE)?;
        let collector = Reply {
            label,
            listener: token,
            peer,
            pipe: Some(File::from(reply)),
            data: Vec::new(),
            truncated: false,
        };
        self.datagrams.replies.insert(reply_token, collector);
        Ok(())
    }

    /// Collects what the handler writes (reading as it comes, so a handler writing more than a
    /// pipe holds is not stuck).
    pub(super) fn read_reply(&mut self, token: Token) {
        let Some(reply) = self.datagrams.replies.get_mut(&token) else {
            return;
        };
        if let Some(pipe) = collect(reply) {
            self.deregister(&pipe);
        }
    }

    /// The handler has exited: send what it wrote, if anything, as one datagram.
    pub(super) fn send_reply(&mut self, token: Token) {
        let Some(mut reply) = self.datagrams.replies.remove(&token) else {
            return;
        };
        if let Some(pipe) = collect(&mut reply) {
            self.deregister(&pipe);
        }
        let label = &reply.label;
        if reply.truncated {
            events::reply_cut(label, &canonical(reply.peer), MAX_REPLY);
        }
        if reply.data.is_empty() {
            return;
        }
        // Gone if a reload closed it meanwhile; held by a wait handler if a reload gave it to
        // one: either way the reply cannot be sent.
        let socket = self
            .listeners
            .get(reply.listener)
            .and_then(|l| l.datagram());
        if let Some(socket) = socket
            && let Err(err) = socket.send_to(&reply.data, reply.peer)
        {
            events::reply_failed(label, &canonical(reply.peer), &err);
        }
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
