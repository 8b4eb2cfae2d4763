//! A builtin behind TLS: the same services as over a plain socket, as an in-memory state machine
//! the TLS session reads from and writes to (its plaintext side), never blocking and with the
//! same bounds (echo holds at most 64 KiB the client has not read back).

use std::io;
use std::time::SystemTime;

use super::metrics::{MAX_HEAD, Request, parse, response};
use super::{CHARGEN_CHUNK, ECHO_BUFFER, chargen, daytime, time};
use crate::config::Builtin;
use crate::tls::session::PlaintextService;

pub struct PlainBuiltin {
    kind: Builtin,
    /// Bytes for the client, `sent` of them taken already.
    out: Vec<u8>,
    sent: usize,
    chargen: chargen::Cursor,
    input_ended: bool,
    /// `metrics`: the request head so far, and whether it has its answer.
    head: Vec<u8>,
    answered: bool,
    render: bool,
}

impl PlainBuiltin {
    pub fn new(kind: Builtin, now: SystemTime) -> PlainBuiltin {
        let out = match kind {
            Builtin::Daytime => daytime::answer(now),
            Builtin::Time => time::answer(now),
            _ => Vec::new(),
        };
        PlainBuiltin {
            kind,
            out,
            sent: 0,
            chargen: chargen::Cursor::default(),
            input_ended: false,
            head: Vec::new(),
            answered: false,
            render: false,
        }
    }

    /// `metrics`: a `GET` has come and waits for the exposition (`answer`).
    pub fn wants_render(&self) -> bool {
        self.render
    }

    /// `metrics`: its request head is not in yet (it has HEAD_DEADLINE for that, as without
    /// TLS).
    pub fn awaits_request(&self) -> bool {
        self.kind == Builtin::Metrics && !self.answered && !self.render
    }

    /// `metrics`: the exposition for the `GET` that came.
    pub fn answer(&mut self, body: &str) {
        self.reply(Request::Get, body);
    }

    fn reply(&mut self, request: Request, body: &str) {
        self.out = response(request, body);
        self.sent = 0;
        self.answered = true;
        self.render = false;
        self.head = Vec::new();
    }

    fn pending(&self) -> &[u8] {
        &self.out[self.sent..]
    }

    /// Whether it will write nothing more (its answer is taken, or the client left).
    fn output_done(&self) -> bool {
        match self.kind {
            Builtin::Daytime | Builtin::Time => true,
            Builtin::Metrics => self.answered || self.input_ended,
            Builtin::Echo | Builtin::Discard => self.input_ended,
            Builtin::Chargen => self.input_ended,
        }
    }
}

impl PlaintextService for PlainBuiltin {
    fn read_plaintext(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.sent == self.out.len() && self.kind == Builtin::Chargen && !self.input_ended {
            self.out.clear();
            self.sent = 0;
            self.chargen.fill(&mut self.out, CHARGEN_CHUNK);
        }
        let pending = self.pending();
        if !pending.is_empty() {
            let n = pending.len().min(buf.len());
            buf[..n].copy_from_slice(&pending[..n]);
            self.sent += n;
            if self.sent == self.out.len() {
                self.out.clear();
                self.sent = 0;
            }
            return Ok(n);
        }
        if self.output_done() {
            Ok(0)
        } else {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }

    fn write_plaintext(&mut self, data: &[u8]) -> io::Result<usize> {
        match self.kind {
            Builtin::Echo => {
                let room = ECHO_BUFFER.saturating_sub(self.pending().len());
                if room == 0 {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                let n = room.min(data.len());
                self.out.extend_from_slice(&data[..n]);
                Ok(n)
            }
            Builtin::Metrics if !self.answered && !self.render => {
                let room = MAX_HEAD.saturating_sub(self.head.len());
                let n = room.min(data.len());
                self.head.extend_from_slice(&data[..n]);
                match parse(&self.head) {
                    Request::Incomplete => {}
                    Request::Get => self.render = true,
                    request => self.reply(request, ""),
                }
                // Past the head (and past MAX_HEAD) input is read and dropped.
                Ok(data.len())
            }
            // The others only watch for the client's end of input.
            _ => Ok(data.len()),
        }
    }

    fn end_of_input(&mut self) -> io::Result<()> {
        self.input_ended = true;
        Ok(())
    }

    /// A service that answers and is done (daytime, time, metrics) does not wait for the
    /// client to close its side.
    fn hung_up(&self) -> bool {
        matches!(
            self.kind,
            Builtin::Daytime | Builtin::Time | Builtin::Metrics
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(builtin: &mut PlainBuiltin) -> Vec<u8> {
        let mut all = Vec::new();
        let mut buf = [0u8; 1000];
        while let Ok(n) = builtin.read_plaintext(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        all
    }

    #[test]
    fn echo_returns_what_it_took_and_holds_at_most_64_kib() {
        let mut echo = PlainBuiltin::new(Builtin::Echo, SystemTime::now());
        assert_eq!(echo.write_plaintext(b"hello").unwrap(), 5);
        assert_eq!(read_all(&mut echo), b"hello");
        let big = vec![b'x'; 100_000];
        assert_eq!(echo.write_plaintext(&big).unwrap(), ECHO_BUFFER);
        assert!(echo.write_plaintext(b"more").is_err(), "full");
        assert_eq!(read_all(&mut echo).len(), ECHO_BUFFER);
        echo.end_of_input().unwrap();
        let mut buf = [0u8; 10];
        assert_eq!(
            echo.read_plaintext(&mut buf).unwrap(),
            0,
            "done after input ended"
        );
    }

    #[test]
    fn daytime_answers_once_and_is_done() {
        let mut daytime = PlainBuiltin::new(Builtin::Daytime, SystemTime::now());
        let answer = read_all(&mut daytime);
        assert!(answer.ends_with(b"\r\n"));
        assert!(daytime.hung_up());
    }

    #[test]
    fn metrics_asks_for_the_exposition_after_a_get() {
        let mut metrics = PlainBuiltin::new(Builtin::Metrics, SystemTime::now());
        metrics.write_plaintext(b"GET / HTTP/1.1\r\n").unwrap();
        assert!(!metrics.wants_render());
        metrics.write_plaintext(b"\r\n").unwrap();
        assert!(metrics.wants_render());
        metrics.answer("a 1\n");
        let answer = String::from_utf8(read_all(&mut metrics)).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("a 1\n"));
    }
}
