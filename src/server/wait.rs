//! `wait: true`: handing the listening (or UDP) socket itself to one handler, recognising the
//! datagram that triggered it, and what happens at the handler's exit: the socket taken back
//! (non-blocking again), an unread trigger dropped, a handler that failed at once held back.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::Token;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg};
use socket2::Socket;

use super::Server;
use super::children::Role;
use super::listeners::{Bound, stamp_arrivals};
use super::supervise::Restarts;
use super::table::canonical;
use super::table::{Denied, ServiceId};
use crate::events;
use crate::spawn::Stdio;

/// A `wait: true` stream handler that exits sooner than this with clients still waiting has
/// failed: it is restarted after a delay (doubling from 1 s up to `respawn_max_delay` while it
/// keeps failing), since the connection it left in the backlog would otherwise restart it in a
/// loop.
const WAIT_STABLE: Duration = Duration::from_secs(1);
/// Room for the control messages a datagram may carry. rinetd asks for one (the arrival time),
/// but a `wait: true` handler may turn on any option on the socket it was handed (tftpd-hpa sets
/// IP_PKTINFO), and each adds a message to every later datagram.
const CONTROL_ROOM: usize = 1024;
/// Big enough for any datagram.
const MAX_DATAGRAM: usize = 65_536;

/// A datagram as `wait: true` first saw it, to recognise it if the handler leaves it unread.
///
/// Sender, length and content are the contract's test; the kernel's arrival time (SO_TIMESTAMPNS)
/// tells a client's byte-identical retry (TFTP and DNS clients send those) from the original.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    sender: SocketAddr,
    len: usize,
    hash: u64,
    arrived: Option<(i64, i64)>,
}

impl Fingerprint {
    fn of(sender: SocketAddr, datagram: &[u8], arrived: Option<(i64, i64)>) -> Fingerprint {
        let mut hasher = DefaultHasher::new();
        datagram.hash(&mut hasher);
        Fingerprint {
            sender,
            len: datagram.len(),
            hash: hasher.finish(),
            arrived,
        }
    }

    /// Whether `other` is the same datagram. The arrival time decides only when both have one:
    /// a handler may have turned time stamps off, or filled the control buffer with messages
    /// of its own.
    fn is_same_datagram(&self, other: &Fingerprint) -> bool {
        let times_agree = match (self.arrived, other.arrived) {
            (Some(mine), Some(theirs)) => mine == theirs,
            _ => true,
        };
        self.sender == other.sender
            && self.len == other.len
            && self.hash == other.hash
            && times_agree
    }
}

/// The first datagram in the queue, as a fingerprint, without taking it (None: the queue is
/// empty). Control messages that do not fit are left out (the kernel says so with MSG_CTRUNC):
/// the fingerprint then has no arrival time, but the datagram is still there. An error is the
/// socket's pending one (an ICMP report about an earlier datagram), which the call consumed.
fn peek_fingerprint(socket: &UdpSocket) -> io::Result<Option<Fingerprint>> {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut control = vec![0u8; CONTROL_ROOM];
    let message = recvmsg::<SockaddrStorage>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut control),
        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
    );
    let message = match message {
        Ok(message) => message,
        Err(nix::errno::Errno::EAGAIN) => return Ok(None),
        Err(err) => return Err(err.into()),
    };
    let arrived = message.cmsgs().ok().and_then(|mut cmsgs| {
        cmsgs.find_map(|cmsg| match cmsg {
            ControlMessageOwned::ScmTimestampns(at) => Some((at.tv_sec(), at.tv_nsec())),
            _ => None,
        })
    });
    let sender = message
        .address
        .as_ref()
        .and_then(socket_address)
        .ok_or_else(|| io::Error::other("a datagram without a sender"))?;
    let len = message.bytes;
    Ok(Some(Fingerprint::of(
        sender,
        &buf[..len.min(MAX_DATAGRAM)],
        arrived,
    )))
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
fn discard_one(socket: &UdpSocket) -> io::Result<usize> {
    nix::sys::socket::recv(socket.as_raw_fd(), &mut [0u8; 1], MsgFlags::MSG_DONTWAIT)
        .map_err(io::Error::from)
}

/// Whether a listening socket has a connection waiting, without accepting it.
fn readable_now(socket: &Socket) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

impl Server {
    /// Hands the socket of listener `token` to a handler of `id`, if something waits on it
    /// and no handler holds it already.
    pub(super) fn hand_over(&mut self, id: ServiceId, token: Token) {
        if !self.table.get(id).is_some_and(|e| e.may_accept()) {
            return;
        }
        let Some(listener) = self.listeners.get(token) else {
            return;
        };
        let trigger = match listener.socket() {
            _ if listener.held_by.is_some() => return,
            Some(Bound::Datagram(_)) => match self.first_datagram(id, token) {
                Some(trigger) => Some(trigger),
                None => return,
            },
            Some(Bound::Stream(socket)) if readable_now(socket) => None,
            _ => return,
        };
        let Some(entry) = self.table.get(id) else {
            return;
        };
        let Some(fd) = self
            .listeners
            .get(token)
            .and_then(|l| l.socket())
            .map(AsRawFd::as_raw_fd)
        else {
            return;
        };
        let vars = [
            ("LISTEN_FDS", "1".to_string()),
            ("LISTEN_FDNAMES", entry.service.name().to_string()),
        ];
        let Some(pipe) = self.take_pipe(id) else {
            return;
        };
        // A datagram was counted when it was looked at; a connection is counted here.
        if trigger.is_none()
            && let Some(until) = self.table.count_accept(id, Instant::now())
        {
            self.timers.schedule(until, super::Timer::Resume(id));
        }
        let slot = match self.table.occupy(id, None) {
            Ok(slot) => slot,
            Err(Denied::Gone | Denied::Refused(_)) => return,
        };
        let role = Role::Wait {
            listener: token,
            trigger,
        };
        if let Some(pid) = self.start_handler(slot, pipe, Stdio::Listening(vec![fd]), &vars, role)
            && let Some(listener) = self.listeners.get_mut(token)
        {
            listener.held_by = Some(pid);
            if let Some(entry) = self.table.get(id) {
                events::handed_over(entry.label(), pid.as_raw());
            }
        }
    }

    /// `wait: true` udp: the first datagram nobody refuses (refused ones are taken and
    /// dropped, at most a turn's worth at a time: then the listener gets another turn soon).
    fn first_datagram(&mut self, id: ServiceId, token: Token) -> Option<Fingerprint> {
        for _ in 0..super::TURN {
            let socket = self.listeners.get(token)?.datagram()?;
            let fingerprint = match peek_fingerprint(socket) {
                Ok(Some(fingerprint)) => fingerprint,
                Ok(None) => return None,
                // Consumed by the look: the datagrams behind it get their turn soon, as no
                // new event would announce them.
                Err(err) => {
                    if let Some(entry) = self.table.get(id) {
                        events::receive_failed(entry.label(), &err);
                    }
                    self.runnable.push_back(token);
                    return None;
                }
            };
            let client = canonical(fingerprint.sender);
            // Only the client is judged here: the handler's slot is taken when it starts, for
            // no client in particular (it serves whoever comes).
            match self.table.judge(id, client.ip(), Instant::now()) {
                Ok(()) => {
                    if let Some(until) = self.table.count_accept(id, Instant::now()) {
                        self.timers.schedule(until, super::Timer::Resume(id));
                    }
                    return Some(fingerprint);
                }
                Err(Denied::Refused(reason)) => {
                    self.log_refusal(id, &client, reason);
                    let socket = self.listeners.get(token)?.datagram()?;
                    if discard_one(socket).is_err() {
                        self.runnable.push_back(token);
                        return None;
                    }
                }
                Err(Denied::Gone) => return None,
            }
        }
        self.runnable.push_back(token);
        None
    }

    /// A `wait: true` handler has exited: take its socket back (wherever a reload may have
    /// moved it), drop the datagram that started the handler if it left it unread, and hold
    /// back a stream handler that quit at once with clients still waiting, which would
    /// otherwise be restarted in a loop (whatever its exit status). Whoever owns the socket
    /// now is woken by the caller.
    pub(super) fn wait_ended(
        &mut self,
        token: Token,
        trigger: Option<Fingerprint>,
        lived: Duration,
    ) {
        // Gone if a reload removed it while the handler ran: nothing to take back then.
        let Some(listener) = self.listeners.get_mut(token) else {
            return;
        };
        listener.held_by = None;
        let owner = listener.service;
        // Whoever owns the socket now serves what queued meanwhile: no new edge will say so.
        self.runnable.push_back(token);
        let label = self
            .table
            .get(owner)
            .map_or_else(String::new, |e| e.label().to_string());
        let Some(socket) = self.listeners.get(token).and_then(|l| l.socket()) else {
            return;
        };
        // The handler shared the socket's file description and made it blocking; a blocking
        // listener would stall the whole (edge-triggered) loop, so one that cannot be made
        // non-blocking again is dropped and bound anew.
        if let Err(err) = socket.set_nonblocking(true) {
            events::listener_rebound(&label, &err);
            self.listeners.unbind(token, self.poll.registry());
            self.bind(token);
            return;
        }
        match socket {
            Bound::Datagram(socket) => {
                // A handler may have turned time stamps off: rinetd's fingerprints need them.
                if let Err(err) = stamp_arrivals(socket) {
                    events::timestamps_off(&label, &err);
                }
                if let Some(trigger) = trigger
                    && peek_fingerprint(socket)
                        .ok()
                        .flatten()
                        .is_some_and(|first| first.is_same_datagram(&trigger))
                {
                    let _ = discard_one(socket);
                    events::unread_datagram_dropped(&label, &canonical(trigger.sender));
                }
            }
            Bound::Stream(socket) => {
                let failed = lived < WAIT_STABLE && readable_now(socket);
                let Some(entry) = self.table.get_mut(owner) else {
                    return;
                };
                if !failed {
                    entry.wait_restarts = Restarts::default();
                    return;
                }
                let max = entry.service.restart_max_delay;
                let delay = entry.wait_restarts.after_exit(lived, WAIT_STABLE, max);
                let err = "the handler exited at once with clients waiting";
                self.back_off(owner, delay, "wait handler failed", &err);
            }
        }
    }
}
