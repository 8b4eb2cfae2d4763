//! The builtin services, served inside the event loop and never forked: the per-RFC answers in
//! the submodules, and here the non-blocking TCP connection (RFC 862 echo and RFC 863 discard
//! are nothing but this state machine) and the UDP replies.

mod chargen;
mod daytime;
pub mod metrics;
pub mod plain;
mod time;

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::time::SystemTime;

use socket2::Socket;

use crate::config::Builtin;

/// What echo holds for a client that sends faster than it reads: past this, rinetd stops
/// reading from it (TCP flow control pushes back on the client), so memory stays bounded.
pub(crate) const ECHO_BUFFER: usize = 64 * 1024;
/// How much chargen queues at a time.
pub(crate) const CHARGEN_CHUNK: usize = 16 * 1024;
/// Bytes moved per turn before other sources get theirs: a fast client cannot starve the loop.
/// Every busy connection gets this much in each turn of the loop, so a turn costs this times
/// their number: 100 chargen clients that never read made 25 MiB turns at 256 KiB, and other
/// services waited most of a second while the kernel's buffers filled (tests/faults,
/// `chargen_clients_that_never_read_do_not_delay_other_services_while_their_buffers_fill`).
/// 32 KiB keeps such turns short and costs a single fast client nothing measurable.
const TURN_BUDGET: usize = 32 * 1024;

/// UDP source ports of services that answer every datagram: replying to them could start an
/// endless ping-pong between two servers (echo ↔ chargen), so their datagrams are dropped.
pub const LOOP_PORTS: [u16; 6] = [0, 7, 9, 13, 19, 37];

/// What the event loop does next with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Waiting for the socket to become readable or writable.
    Wait,
    /// Its turn's budget is spent but it could go on: give it another turn soon.
    Again,
    /// Finished (or failed): close it.
    Close,
    /// (`metrics`) A request wants the exposition: render it and give it to `answer`.
    Render,
}

/// A TCP connection to a builtin: an RFC one, or `metrics`.
pub enum Machine {
    Rfc(StreamBuiltin),
    Metrics(metrics::MetricsConnection),
}

impl Machine {
    pub fn new(kind: Builtin, now: SystemTime) -> Machine {
        match kind {
            Builtin::Metrics => Machine::Metrics(metrics::MetricsConnection::new()),
            kind => Machine::Rfc(StreamBuiltin::new(kind, now)),
        }
    }

    pub fn drive(&mut self, socket: &Socket) -> Step {
        match self {
            Machine::Rfc(machine) => machine.drive(socket),
            Machine::Metrics(machine) => machine.drive(socket),
        }
    }

    /// After `Step::Render`: the exposition to send.
    pub fn answer(&mut self, body: &str) {
        if let Machine::Metrics(machine) = self {
            machine.answer(body);
        }
    }
}

/// One TCP connection to a builtin.
pub struct StreamBuiltin {
    kind: Builtin,
    out: Vec<u8>,
    sent: usize,
    chargen: chargen::Cursor,
    peer_closed: bool,
}

impl StreamBuiltin {
    pub fn new(kind: Builtin, now: SystemTime) -> StreamBuiltin {
        let out = match kind {
            Builtin::Daytime => daytime::answer(now),
            Builtin::Time => time::answer(now),
            Builtin::Echo | Builtin::Discard | Builtin::Chargen | Builtin::Metrics => Vec::new(),
        };
        StreamBuiltin {
            kind,
            out,
            sent: 0,
            chargen: chargen::Cursor::default(),
            peer_closed: false,
        }
    }

    /// Moves bytes until the socket would block either way, the turn's budget is spent, or the
    /// exchange is over. `socket` is non-blocking.
    pub fn drive(&mut self, socket: &Socket) -> Step {
        let mut moved = 0;
        loop {
            let mut progress = false;
            match self.flush(socket) {
                Ok(n) => {
                    moved += n;
                    progress |= n > 0;
                }
                Err(_) => return Step::Close,
            }
            let flushed = self.sent == self.out.len();
            match self.kind {
                Builtin::Daytime | Builtin::Time | Builtin::Metrics if flushed => {
                    return Step::Close;
                }
                Builtin::Echo if flushed && self.peer_closed => {
                    // Half-close honoured: everything the client sent has been echoed.
                    let _ = socket.shutdown(Shutdown::Write);
                    return Step::Close;
                }
                Builtin::Discard | Builtin::Chargen if self.peer_closed => return Step::Close,
                Builtin::Chargen if flushed => {
                    self.out.clear();
                    self.sent = 0;
                    self.chargen.fill(&mut self.out, CHARGEN_CHUNK);
                    progress = true;
                }
                _ => {}
            }
            match self.take_input(socket) {
                Ok(n) => {
                    moved += n;
                    progress |= n > 0;
                }
                Err(_) => return Step::Close,
            }
            if !progress {
                return Step::Wait;
            }
            if moved >= TURN_BUDGET {
                return Step::Again;
            }
        }
    }

    /// Writes what is pending; returns the bytes written (0 when it would block).
    fn flush(&mut self, mut socket: &Socket) -> io::Result<usize> {
        let mut written = 0;
        while self.sent < self.out.len() {
            match socket.write(&self.out[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.sent += n;
                    written += n;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        if self.sent == self.out.len() && self.kind == Builtin::Echo {
            self.out.clear();
            self.sent = 0;
        }
        Ok(written)
    }

    /// Reads once (echo keeps it, the others drop it: they only watch for the client's end of
    /// file); a full echo buffer reads nothing. Returns the bytes read, or 1 for end of file so
    /// that it counts as progress.
    fn take_input(&mut self, mut socket: &Socket) -> io::Result<usize> {
        if self.peer_closed {
            return Ok(0);
        }
        let mut buf = [0u8; 16 * 1024];
        let room = match self.kind {
            Builtin::Echo => ECHO_BUFFER.saturating_sub(self.out.len()).min(buf.len()),
            _ => buf.len(),
        };
        if room == 0 {
            return Ok(0);
        }
        match socket.read(&mut buf[..room]) {
            Ok(0) => {
                self.peer_closed = true;
                Ok(1)
            }
            Ok(n) => {
                if self.kind == Builtin::Echo {
                    self.out.extend_from_slice(&buf[..n]);
                }
                Ok(n)
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => Ok(1),
            Err(err) => Err(err),
        }
    }
}

/// The answer to one UDP datagram, if any. `random` picks chargen's length (0-512).
pub fn datagram_reply(
    kind: Builtin,
    request: &[u8],
    now: SystemTime,
    random: u32,
) -> Option<Vec<u8>> {
    match kind {
        Builtin::Echo => Some(request.to_vec()),
        // `metrics` is served over stream sockets only (the checker says so).
        Builtin::Discard | Builtin::Metrics => None,
        Builtin::Chargen => Some(chargen::datagram(random as usize % 513)),
        Builtin::Daytime => Some(daytime::answer(now)),
        Builtin::Time => Some(time::answer(now)),
    }
}
