//! One TLS connection inside the event loop: the handshake, then the relay between the client's
//! TLS stream and the service's plaintext (a handler's socketpair or a builtin in the loop),
//! with bounded buffers both ways and end of file carried both ways.
//!
//! The session decides; the loop only waits. Each call to [`TlsSession::drive`] moves what can
//! move without blocking, at most [`TURN_BUDGET`] bytes, and returns a [`Step`]:
//! - `Wait(want)`: nothing more can move until a socket is ready. With mio's edge-triggered
//!   polling, register both sockets once for READABLE | WRITABLE and call `drive` on any event
//!   of either: every stop is either a `WouldBlock` on one of them (so an event will come) or
//!   a full buffer that only such an event can empty. `want` says which readiness matters, for
//!   level-triggered pollers (and tests).
//! - `Again`: the budget is spent and more could move; no event will say so: call again on the
//!   next turn.
//! - `HandshakeDone(info)`: start the service (its environment from `info`), [`attach`] it,
//!   then call `drive` again. Until then client data is held, bounded.
//! - `Closed(ending)`: drop the session; both sockets close.
//!
//! Memory per connection is bounded: at most [`TOWARD_SERVICE_LIMIT`] bytes of plaintext wait
//! for the service, rustls holds at most 16 KiB of decrypted and [`TLS_SEND_LIMIT`] of
//! encrypted bytes, and at most one read chunk waits for rustls. A side that stops reading
//! stops rinetd reading the other side, so TCP flow control (or the socketpair's) pushes back.
//!
//! End of file: the client's close_notify, or its FIN without one (logged as unclean), becomes
//! `end_of_input` (for a socketpair: `shutdown(SHUT_WR)`, EOF on the handler's stdin) once all
//! pending plaintext is delivered; the service's end of output (EOF on the socketpair: the
//! handler closed every copy of its stdout, or exited) becomes close_notify then FIN. The
//! session is over when both directions are, or on any error.
//!
//! [`attach`]: TlsSession::attach

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use rustls::ServerConfig;
use rustls::server::ServerConnection;

use super::info::HandshakeInfo;

/// Plaintext from the client waiting for the service; past it rinetd stops reading the client.
pub const TOWARD_SERVICE_LIMIT: usize = 64 * 1024;
/// rustls' buffer of encrypted bytes not yet written to the client; past it rinetd stops
/// reading the service.
pub const TLS_SEND_LIMIT: usize = 64 * 1024;
/// Bytes moved per `drive` call before other connections get their turn (the same as the
/// plain builtins' turn).
pub const TURN_BUDGET: usize = 256 * 1024;
/// One read from either side: a TLS record's worth of plaintext.
const CHUNK: usize = 16 * 1024;

/// The plaintext side of a TLS session: what the client talks to. A handler's socketpair is
/// one ([`UnixStream`]); a builtin served inside the loop implements it as a state machine.
/// All calls must return at once: `WouldBlock` means "not now".
pub trait PlaintextService {
    /// What the service has for the client: `Ok(0)` means it will send nothing more.
    fn read_plaintext(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Offers the client's bytes; returns how many were taken. `WouldBlock` when full; any
    /// other error means the service takes no more input (it is gone).
    fn write_plaintext(&mut self, data: &[u8]) -> io::Result<usize>;
    /// The client will send nothing more (everything offered has been taken).
    fn end_of_input(&mut self) -> io::Result<()>;
    /// Whether the service is gone altogether although it was never told that input ended
    /// (a handler that exited): asked only once its output has ended, so that a client that
    /// keeps its side open does not keep the connection after the handler is gone.
    fn hung_up(&self) -> bool {
        false
    }
}

/// rinetd's end of a handler's socketpair (non-blocking).
impl PlaintextService for UnixStream {
    fn read_plaintext(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read(buf)
    }

    fn write_plaintext(&mut self, data: &[u8]) -> io::Result<usize> {
        self.write(data)
    }

    fn end_of_input(&mut self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }

    /// The kernel reports POLLHUP on a UNIX stream socket once the other end is closed.
    fn hung_up(&self) -> bool {
        let mut fds = [PollFd::new(self.as_fd(), PollFlags::empty())];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(1))
            && fds[0]
                .revents()
                .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR))
    }
}

/// A UNIX stream socketpair for a handler: rinetd's end (non-blocking, for
/// [`TlsSession::attach`]) and the handler's (blocking, to become its fd 0 and fd 1). Both are
/// close-on-exec; dup2 onto 0 and 1 clears that for the handler's copies.
pub fn service_socketpair() -> io::Result<(UnixStream, OwnedFd)> {
    let (ours, theirs) = UnixStream::pair()?;
    ours.set_nonblocking(true)?;
    Ok((ours, OwnedFd::from(theirs)))
}

/// Which readiness of a socket would let the session move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Readiness {
    pub read: bool,
    pub write: bool,
}

/// What a waiting session waits for, on each of its sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Want {
    pub client: Readiness,
    /// Always empty before [`TlsSession::attach`].
    pub service: Readiness,
}

/// How a session ended, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Both directions ended. `unclean` when the client closed TCP without close_notify.
    Finished { unclean: bool },
    /// The handshake failed or the client left during it; nothing was started.
    HandshakeFailed(String),
    /// A TLS or socket error after the handshake.
    Failed(String),
}

/// What the loop does next with a session; see the module doc.
#[derive(Debug)]
pub enum Step {
    // The loop is edge-triggered and needs no `want`; level-triggered pollers (the tests) do.
    Wait(#[cfg_attr(not(test), allow(dead_code))] Want),
    Again,
    HandshakeDone(Box<HandshakeInfo>),
    Closed(Ending),
}

/// Bytes held by the session itself (rustls' own buffers are capped separately).
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Buffered {
    pub toward_service: usize,
    pub toward_client: usize,
}

/// Plaintext bytes relayed so far, for the close log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Transferred {
    pub from_client: u64,
    pub from_service: u64,
}

/// Bytes waiting to be written, consumed from the front; bounded by its users.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    start: usize,
}

impl Pending {
    fn len(&self) -> usize {
        self.bytes.len() - self.start
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn front(&self) -> &[u8] {
        self.bytes.get(self.start..).unwrap_or_default()
    }

    fn push(&mut self, data: &[u8]) {
        if self.start > 0 {
            self.bytes.drain(..self.start);
            self.start = 0;
        }
        self.bytes.extend_from_slice(data);
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.bytes.len());
        if self.start == self.bytes.len() {
            // Idle connections should not keep their high-water mark of memory.
            *self = Pending::default();
        }
    }
}

/// What one `drive` call has done so far.
#[derive(Default)]
struct Turn {
    moved: usize,
    progress: bool,
}

impl Turn {
    fn moved(&mut self, n: usize) {
        self.moved += n;
        self.progress |= n > 0;
    }

    fn spent(&self) -> bool {
        self.moved >= TURN_BUDGET
    }
}

/// One client connection under TLS; `S` is its plaintext service.
pub struct TlsSession<S> {
    tls: ServerConnection,
    client: TcpStream,
    service: Option<S>,
    handshake_reported: bool,
    toward_service: Pending,
    toward_client: Pending,
    /// read(2) on the client returned end of file.
    client_eof: bool,
    /// rustls will yield no more plaintext (close_notify or EOF seen, all of it taken).
    client_input_done: bool,
    unclean_eof: bool,
    /// The service was told that input ended.
    input_ended: bool,
    service_output_done: bool,
    /// The service takes no more input (write failed, or it hung up).
    service_gone: bool,
    close_notify_queued: bool,
    client_write_shut: bool,
    transferred: Transferred,
    /// TLS bytes written to the client so far: whether a client that has output waiting takes
    /// any of it.
    sent_to_client: u64,
}

impl<S: PlaintextService> TlsSession<S> {
    /// Starts the server side of a handshake on an accepted connection (made non-blocking
    /// here). `config` is the service's configuration as loaded; the session keeps it.
    pub fn new(config: Arc<ServerConfig>, client: TcpStream) -> io::Result<TlsSession<S>> {
        client.set_nonblocking(true)?;
        let mut tls = ServerConnection::new(config).map_err(io::Error::other)?;
        tls.set_buffer_limit(Some(TLS_SEND_LIMIT));
        Ok(TlsSession {
            tls,
            client,
            service: None,
            handshake_reported: false,
            toward_service: Pending::default(),
            toward_client: Pending::default(),
            client_eof: false,
            client_input_done: false,
            unclean_eof: false,
            input_ended: false,
            service_output_done: false,
            service_gone: false,
            close_notify_queued: false,
            client_write_shut: false,
            transferred: Transferred::default(),
            sent_to_client: 0,
        })
    }

    /// Connects the service once the handshake is done (after `Step::HandshakeDone`).
    pub fn attach(&mut self, service: S) {
        self.service = Some(service);
    }

    /// True until the handshake completes: the loop closes a session still handshaking at its
    /// `handshake_timeout`.
    pub fn is_handshaking(&self) -> bool {
        !self.handshake_reported
    }

    /// The client's socket, to register with the poller.
    pub fn client(&self) -> &TcpStream {
        &self.client
    }

    /// The service, to register its socket (if it has one) with the poller.
    pub fn service(&self) -> Option<&S> {
        self.service.as_ref()
    }

    /// The service, for the loop to give a builtin what it asked for.
    pub fn service_mut(&mut self) -> Option<&mut S> {
        self.service.as_mut()
    }

    /// TLS bytes written to the client so far.
    pub fn sent_to_client(&self) -> u64 {
        self.sent_to_client
    }

    /// Output for the client is waiting (in the session or in rustls) after the handshake.
    pub fn output_waiting(&self) -> bool {
        self.handshake_reported && (!self.toward_client.is_empty() || self.tls.wants_write())
    }

    /// The service is gone altogether (a handler whose every copy of the socketpair closed).
    pub fn service_hung_up(&self) -> bool {
        self.service.as_ref().is_some_and(PlaintextService::hung_up)
    }

    #[cfg(test)]
    pub fn buffered(&self) -> Buffered {
        Buffered {
            toward_service: self.toward_service.len(),
            toward_client: self.toward_client.len(),
        }
    }

    #[cfg(test)]
    pub fn transferred(&self) -> Transferred {
        self.transferred
    }

    /// Moves bytes until nothing more can move now, the budget is spent, the handshake has
    /// just completed or the session is over. Never blocks; never panics.
    pub fn drive(&mut self) -> Step {
        let mut turn = Turn::default();
        loop {
            turn.progress = false;
            if let Err(ending) = self.flush_to_client(&mut turn) {
                return Step::Closed(ending);
            }
            if !self.handshake_reported && !self.tls.is_handshaking() {
                self.handshake_reported = true;
                return Step::HandshakeDone(Box::new(HandshakeInfo::of(&self.tls)));
            }
            if let Err(ending) = self.client_to_service(&mut turn) {
                return Step::Closed(ending);
            }
            if let Err(ending) = self.service_to_client(&mut turn) {
                return Step::Closed(ending);
            }
            if self.finished() {
                return Step::Closed(Ending::Finished {
                    unclean: self.unclean_eof,
                });
            }
            if !turn.progress {
                return Step::Wait(self.want());
            }
            if turn.spent() {
                return Step::Again;
            }
        }
    }

    /// What would let a waiting session move (see `Step::Wait`).
    pub fn want(&self) -> Want {
        let attached = self.service.is_some();
        Want {
            client: Readiness {
                read: self.may_read_client() && self.tls.wants_read(),
                write: self.tls.wants_write(),
            },
            service: Readiness {
                read: attached && !self.service_output_done && self.toward_client.is_empty(),
                write: attached && !self.service_gone && !self.toward_service.is_empty(),
            },
        }
    }

    fn may_read_client(&self) -> bool {
        !self.client_eof && !self.service_gone && self.toward_service.len() < TOWARD_SERVICE_LIMIT
    }

    fn finished(&self) -> bool {
        self.service.is_some()
            && (self.input_ended || self.service_gone)
            && self.close_notify_queued
            && self.client_write_shut
    }

    /// The ending for an error, by phase.
    fn failure(&self, reason: String) -> Ending {
        if self.handshake_reported {
            Ending::Failed(reason)
        } else {
            Ending::HandshakeFailed(reason)
        }
    }

    /// Writes rustls' pending records to the client; once close_notify is out, sends FIN.
    fn flush_to_client(&mut self, turn: &mut Turn) -> Result<(), Ending> {
        while self.tls.wants_write() && !turn.spent() {
            match self.tls.write_tls(&mut self.client) {
                Ok(0) => break,
                Ok(n) => {
                    self.sent_to_client += n as u64;
                    turn.moved(n);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(self.failure(format!("writing to the client: {err}"))),
            }
        }
        if self.close_notify_queued && !self.tls.wants_write() && !self.client_write_shut {
            // The client may already be gone; the session ends either way.
            let _ = self.client.shutdown(Shutdown::Write);
            self.client_write_shut = true;
            turn.progress = true;
        }
        Ok(())
    }

    /// Client → service: pending plaintext to the service, end of input, then more plaintext
    /// out of rustls and more records from the client, as far as the bounds allow.
    fn client_to_service(&mut self, turn: &mut Turn) -> Result<(), Ending> {
        if let Some(service) = self.service.as_mut()
            && !self.service_gone
        {
            while !self.toward_service.is_empty() && !turn.spent() {
                match service.write_plaintext(self.toward_service.front()) {
                    Ok(0) => {
                        self.service_gone = true;
                        break;
                    }
                    Ok(n) => {
                        self.toward_service.consume(n);
                        self.transferred.from_client += n as u64;
                        turn.moved(n);
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    // EPIPE, ECONNRESET: the handler is gone; what it did not take is lost,
                    // as it would be with a plain TCP handler.
                    Err(_) => {
                        self.service_gone = true;
                        break;
                    }
                }
            }
            if self.service_gone {
                self.toward_service = Pending::default();
                turn.progress = true;
            } else if self.client_input_done && self.toward_service.is_empty() && !self.input_ended
            {
                // An error here means the handler is gone already: nothing left to tell it.
                let _ = service.end_of_input();
                self.input_ended = true;
                turn.progress = true;
            }
        }
        if self.service_gone {
            return Ok(());
        }
        let mut chunk = [0u8; CHUNK];
        while !self.client_input_done && self.toward_service.len() < TOWARD_SERVICE_LIMIT {
            let room = (TOWARD_SERVICE_LIMIT - self.toward_service.len()).min(CHUNK);
            match self.tls.reader().read(&mut chunk[..room]) {
                Ok(0) => {
                    self.client_input_done = true;
                    turn.progress = true;
                }
                Ok(n) => {
                    self.toward_service.push(&chunk[..n]);
                    turn.progress = true;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
                    self.client_input_done = true;
                    self.unclean_eof = true;
                    turn.progress = true;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(self.failure(format!("reading plaintext: {err}"))),
            }
        }
        if !self.may_read_client() || !self.tls.wants_read() || turn.spent() {
            return Ok(());
        }
        match self.tls.read_tls(&mut self.client) {
            Ok(0) => {
                self.client_eof = true;
                turn.progress = true;
                if !self.handshake_reported {
                    return Err(Ending::HandshakeFailed(
                        "the client closed the connection during the handshake".to_string(),
                    ));
                }
            }
            Ok(n) => turn.moved(n),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {
                turn.progress = true;
                return Ok(());
            }
            Err(err) => return Err(self.failure(format!("reading from the client: {err}"))),
        }
        if let Err(err) = self.tls.process_new_packets() {
            // rustls has queued an alert that tells the client why; one try to send it.
            let _ = self.tls.write_tls(&mut self.client);
            return Err(self.failure(err.to_string()));
        }
        Ok(())
    }

    /// Service → client: plaintext into rustls while it takes it, close_notify at the
    /// service's end of output, and the hang-up check.
    fn service_to_client(&mut self, turn: &mut Turn) -> Result<(), Ending> {
        let Some(service) = self.service.as_mut() else {
            return Ok(());
        };
        let mut chunk = [0u8; CHUNK];
        while !turn.spent() {
            if !self.toward_client.is_empty() {
                let taken = self
                    .tls
                    .writer()
                    .write(self.toward_client.front())
                    .map_err(|err| Ending::Failed(format!("encrypting: {err}")))?;
                self.toward_client.consume(taken);
                turn.progress |= taken > 0;
                if !self.toward_client.is_empty() {
                    // rustls is full: its records must reach the client first.
                    break;
                }
                continue;
            }
            if self.service_output_done {
                break;
            }
            match service.read_plaintext(&mut chunk) {
                Ok(0) => {
                    self.service_output_done = true;
                    turn.progress = true;
                }
                Ok(n) => {
                    let read = chunk.get(..n).unwrap_or_default();
                    self.toward_client.push(read);
                    self.transferred.from_service += n as u64;
                    turn.moved(n);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                // ECONNRESET: the handler exited leaving input unread; its output is over.
                Err(_) => {
                    self.service_output_done = true;
                    self.service_gone = true;
                    turn.progress = true;
                }
            }
        }
        if self.service_output_done && self.toward_client.is_empty() && !self.close_notify_queued {
            self.tls.send_close_notify();
            self.close_notify_queued = true;
            turn.progress = true;
        }
        if self.service_output_done && !self.input_ended && !self.service_gone && service.hung_up()
        {
            self.service_gone = true;
            turn.progress = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_consumes_from_the_front_and_frees_when_empty() {
        let mut pending = Pending::default();
        pending.push(b"hello");
        pending.consume(2);
        assert_eq!(pending.front(), b"llo");
        pending.push(b"!");
        assert_eq!(pending.front(), b"llo!");
        assert_eq!(pending.len(), 4);
        pending.consume(10);
        assert!(pending.is_empty());
        assert_eq!(pending.bytes.capacity(), 0);
    }
}
