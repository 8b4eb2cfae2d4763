//! Datagram services (udp, `wait: false`): builtins answering each datagram inline, and a
//! handler per datagram with the datagram as its stdin and its stdout sent back as the reply.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Instant, SystemTime};

use mio::{Interest, Token};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg,
};
use nix::unistd::pipe2;

use super::children::{RESOURCE_BACKOFF, Role};
use super::table::canonical;
use super::table::{Denied, ServiceId};
use super::{Server, SourceKind, Timer, is_resource_exhaustion, would_block};
use crate::builtin::{self, LOOP_PORTS};
use crate::config::Builtin;
use crate::events;
use crate::spawn::{Stdio, address_vars};

/// The largest UDP payload over IPv4, and so the largest reply a handler may send.
const MAX_REPLY: usize = 65_507;
/// Big enough for any datagram.
const MAX_DATAGRAM: usize = 65_536;
/// Datagrams a builtin takes with one recvmmsg and answers with one sendmmsg: with several
/// clients queued, a few syscalls serve the whole queue instead of two per datagram.
const BATCH: usize = 8;

/// The replies being collected, and what the datagram services reuse between turns.
pub struct Datagrams {
    replies: HashMap<Token, Reply>,
    /// Receive buffer of the datagram services, kept between turns (64 KiB).
    buffer: Vec<u8>,
    /// The builtins' batch of receive buffers (BATCH × 64 KiB, zeroed by the kernel and
    /// touched only as far as datagrams fill them), made at the first batch.
    batch: Vec<u8>,
    /// The senders and lengths of a batch, and its replies, kept between batches.
    received: Vec<(Range<usize>, SocketAddr)>,
    answers: Vec<(Vec<u8>, SocketAddr)>,
    /// The message headers of recvmmsg, one set per address family: the kernel writes each
    /// sender's address length back into them, and a socket of one family always gives the
    /// same length, so a set is reused only for sockets of its family.
    receive_headers: [Option<MultiHeaders<SockaddrStorage>>; 2],
    /// The message headers of sendmmsg (each send sets every length itself).
    send_headers: Option<MultiHeaders<SockaddrStorage>>,
    /// xorshift state for chargen's datagram lengths.
    random: u32,
}

impl Datagrams {
    pub fn new() -> Datagrams {
        Datagrams {
            replies: HashMap::new(),
            buffer: Vec::new(),
            batch: Vec::new(),
            received: Vec::new(),
            answers: Vec::new(),
            receive_headers: [None, None],
            send_headers: None,
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
        if self.admit_datagram(id, peer, loop_protection) {
            Next::Admitted(len, peer)
        } else if self.table.get(id).is_some() {
            Next::Skipped
        } else {
            Next::Empty
        }
    }

    /// Whether a datagram received from `peer` is served: with `loop_protection`, not from the
    /// port of an answering service; counted against `rate_limit`; let through by the access
    /// lists (a refusal is logged).
    fn admit_datagram(&mut self, id: ServiceId, peer: SocketAddr, loop_protection: bool) -> bool {
        if loop_protection && LOOP_PORTS.contains(&peer.port()) {
            if let Some(entry) = self.table.get(id) {
                events::loop_protection(entry.label(), peer.port());
            }
            return false;
        }
        if let Some(until) = self.table.count_accept(id, Instant::now()) {
            self.timers.schedule(until, Timer::Resume(id));
        }
        let client = canonical(peer);
        match self.table.judge(id, client.ip(), Instant::now()) {
            Ok(()) => true,
            Err(Denied::Refused(reason)) => {
                self.log_refusal(id, &client, reason);
                false
            }
            Err(Denied::Gone) => false,
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
    /// services are dropped (echo ↔ chargen loops). Without a `rate_limit` (which may pause
    /// the service between two datagrams, leaving the rest in the socket) they are read and
    /// answered in batches.
    pub(super) fn datagrams_to_builtin(&mut self, id: ServiceId, token: Token, builtin: Builtin) {
        let batched = self
            .table
            .get(id)
            .is_some_and(|entry| entry.service.limits.rate_limit.is_none());
        if batched {
            self.datagram_batches_to_builtin(id, token, builtin);
            return;
        }
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

    /// `datagrams_to_builtin` by batches: up to TURN datagrams, BATCH at a time, each batch
    /// judged datagram by datagram (loop protection, access lists) and answered with one send.
    fn datagram_batches_to_builtin(&mut self, id: ServiceId, token: Token, builtin: Builtin) {
        let mut buffers = std::mem::take(&mut self.datagrams.batch);
        if buffers.is_empty() {
            buffers = vec![0; BATCH * MAX_DATAGRAM];
        }
        let mut received = std::mem::take(&mut self.datagrams.received);
        let mut replies = std::mem::take(&mut self.datagrams.answers);
        let family = match self.listeners.get(token).and_then(|l| l.bound()) {
            Some(SocketAddr::V6(_)) => 1,
            _ => 0,
        };
        let mut receive_headers = self.datagrams.receive_headers[family]
            .take()
            .unwrap_or_else(|| MultiHeaders::preallocate(BATCH, None));
        let mut send_headers = self
            .datagrams
            .send_headers
            .take()
            .unwrap_or_else(|| MultiHeaders::preallocate(BATCH, None));
        let mut finished = false;
        let mut taken = 0;
        while taken < super::TURN {
            if !self.table.get(id).is_some_and(|e| e.may_accept()) {
                finished = true;
                break;
            }
            let Some(fd) = self
                .listeners
                .get(token)
                .and_then(|l| l.datagram())
                .map(|socket| socket.as_raw_fd())
            else {
                finished = true;
                break;
            };
            received.clear();
            // The first two reads of a turn take one datagram each the plain way: a lone
            // client has one queued at a time, and recvmmsg costs the kernel more than
            // recvfrom (a batch of one still tries the next datagram, and an empty socket
            // costs more to find). A queue still there after two is read in batches.
            let read = if taken < 2 {
                match self.listeners.get(token).and_then(|l| l.datagram()) {
                    Some(socket) => receive(socket, &mut buffers[..MAX_DATAGRAM]).map(|got| {
                        received.extend(got.map(|(len, peer)| (0..len, peer)));
                        received.len()
                    }),
                    None => Ok(0),
                }
            } else {
                receive_batch(fd, &mut receive_headers, &mut buffers, &mut received)
            };
            let count = match read {
                Ok(count) => count,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                // An error belongs to one datagram (or is an ICMP report about an earlier
                // reply): the receive consumed it, and the next datagram is unaffected.
                Err(err) => {
                    if let Some(entry) = self.table.get(id) {
                        events::receive_failed(entry.label(), &err);
                    }
                    taken += 1;
                    continue;
                }
            };
            replies.clear();
            let now = SystemTime::now();
            for (bytes, peer) in received.iter().cloned() {
                if !self.admit_datagram(id, peer, true) {
                    continue;
                }
                let request = &buffers[bytes];
                let random = self.datagrams.next_random();
                if let Some(reply) = builtin::datagram_reply(builtin, request, now, random) {
                    replies.push((reply, peer));
                }
            }
            // A full send buffer drops a reply, as the network could have.
            match replies.as_slice() {
                [(reply, peer)] => {
                    if let Some(socket) = self.listeners.get(token).and_then(|l| l.datagram()) {
                        let _ = socket.send_to(reply, *peer);
                    }
                }
                _ => send_batch(fd, &mut send_headers, &replies),
            }
            replies.clear();
            // Empty only when the socket had nothing: a batch whose datagrams all lacked a
            // sender still took them off the queue, and the next read must come.
            if count == 0 {
                finished = true;
                break;
            }
            taken += count;
        }
        self.datagrams.batch = buffers;
        self.datagrams.received = received;
        self.datagrams.answers = replies;
        self.datagrams.receive_headers[family] = Some(receive_headers);
        self.datagrams.send_headers = Some(send_headers);
        if !finished {
            self.runnable.push_back(token);
        }
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

/// Up to BATCH datagrams off `fd` with one recvmmsg, into consecutive MAX_DATAGRAM slots of
/// `buffers`: where each one's bytes are and who sent it go to `received`. Returns how many
/// the kernel gave (0 when there is nothing to read).
fn receive_batch(
    fd: RawFd,
    headers: &mut MultiHeaders<SockaddrStorage>,
    buffers: &mut [u8],
    received: &mut Vec<(Range<usize>, SocketAddr)>,
) -> io::Result<usize> {
    let mut chunks = buffers.chunks_mut(MAX_DATAGRAM);
    let mut slots: [[IoSliceMut<'_>; 1]; BATCH] =
        std::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or_default())]);
    let results = match recvmmsg(fd, headers, slots.iter_mut(), MsgFlags::MSG_DONTWAIT, None) {
        Ok(results) => results,
        Err(Errno::EAGAIN) => return Ok(0),
        Err(errno) => return Err(errno.into()),
    };
    let mut count = 0;
    for (slot, message) in results.enumerate() {
        count += 1;
        // An IP socket always names the sender; a datagram without one cannot be answered.
        if let Some(peer) = message.address.as_ref().and_then(socket_address) {
            let start = slot * MAX_DATAGRAM;
            received.push((start..start + message.bytes, peer));
        }
    }
    Ok(count)
}

fn socket_address(address: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    address
        .as_sockaddr_in6()
        .map(|v6| SocketAddr::V6((*v6).into()))
}

/// Sends each reply to its peer, with as few sendmmsg calls as the socket allows: one that
/// cannot be sent (a full buffer) is dropped and the rest still go.
fn send_batch(
    fd: RawFd,
    headers: &mut MultiHeaders<SockaddrStorage>,
    replies: &[(Vec<u8>, SocketAddr)],
) {
    if replies.is_empty() {
        return;
    }
    let count = replies.len().min(BATCH);
    let slices: [[IoSlice<'_>; 1]; BATCH] = std::array::from_fn(|index| {
        [IoSlice::new(
            replies.get(index).map_or(&[][..], |(reply, _)| reply),
        )]
    });
    let peers: [Option<SockaddrStorage>; BATCH] = std::array::from_fn(|index| {
        replies
            .get(index)
            .map(|(_, peer)| SockaddrStorage::from(*peer))
    });
    let mut start = 0;
    while start < count {
        let sent = sendmmsg(
            fd,
            &mut *headers,
            slices[start..count].iter(),
            &peers[start..count],
            [] as [ControlMessage<'_>; 0],
            MsgFlags::MSG_DONTWAIT,
        )
        .map(Iterator::count);
        match sent {
            Err(Errno::EINTR) => {}
            // The first of the rest failed: it is dropped.
            Err(_) => start += 1,
            // All sent, or the one after them failed: that one is dropped.
            Ok(count) => start += count + 1,
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
