//! The `metrics` builtin's HTTP side (HTTP/1.0 and 1.1, one request per connection): read one
//! request head of at most 8 KiB, answer a `GET` with the Prometheus text exposition (format
//! 0.0.4) that the loop renders, anything else with 405 or 400, then close. Non-blocking and
//! bounded like the other builtins; the loop gives the head 5 s to arrive.

use std::io::{self, Read, Write};
use std::net::Shutdown;

use socket2::Socket;

use super::Step;

/// The most a request head may take.
pub const MAX_HEAD: usize = 8 * 1024;

/// What the client asked, as far as the head says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// The head has not ended yet.
    Incomplete,
    Get,
    /// Another method: 405.
    OtherMethod,
    /// Not an HTTP/1.x request line, or a head longer than MAX_HEAD: 400.
    Bad,
}

/// Reads the request line of `head` once the head is complete (an empty line ends it).
pub fn parse(head: &[u8]) -> Request {
    let ended = head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n");
    if !ended {
        return if head.len() >= MAX_HEAD {
            Request::Bad
        } else {
            Request::Incomplete
        };
    }
    let line_end = head.iter().position(|b| *b == b'\n').unwrap_or(head.len());
    let line = head[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&head[..line_end]);
    let mut words = line.split(|b| *b == b' ').filter(|w| !w.is_empty());
    let (Some(method), Some(_target), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Request::Bad;
    };
    if !matches!(version, b"HTTP/1.0" | b"HTTP/1.1") {
        return Request::Bad;
    }
    match method {
        b"GET" => Request::Get,
        m if m.iter().all(u8::is_ascii_uppercase) => Request::OtherMethod,
        _ => Request::Bad,
    }
}

/// A whole response: status line, headers, body; the connection closes after it.
pub fn response(request: Request, body: &str) -> Vec<u8> {
    let (status, content_type, body) = match request {
        Request::Get => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", body),
        Request::OtherMethod => ("405 Method Not Allowed", "text/plain", "only GET\n"),
        Request::Bad | Request::Incomplete => ("400 Bad Request", "text/plain", "bad request\n"),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if request == Request::OtherMethod {
        out.push_str("Allow: GET\r\n");
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}

/// One connection to the `metrics` builtin.
pub struct MetricsConnection {
    head: Vec<u8>,
    out: Vec<u8>,
    sent: usize,
    answered: bool,
}

impl Default for MetricsConnection {
    fn default() -> Self {
        Self::new()
    }
}

impl MetricsConnection {
    pub fn new() -> MetricsConnection {
        MetricsConnection {
            head: Vec::new(),
            out: Vec::new(),
            sent: 0,
            answered: false,
        }
    }

    /// Reads the head, then writes the answer. A `GET` asks for the exposition
    /// (`Step::Render`): the caller renders it, gives it to `answer` and drives on.
    pub fn drive(&mut self, socket: &Socket) -> Step {
        if !self.answered {
            match self.read_head(socket) {
                Ok(Request::Incomplete) => return Step::Wait,
                Ok(Request::Get) => return Step::Render,
                Ok(request) => self.answer_with(request, ""),
                Err(_) => return Step::Close,
            }
        }
        let mut socket = socket;
        while self.sent < self.out.len() {
            match socket.write(&self.out[self.sent..]) {
                Ok(0) => return Step::Close,
                Ok(n) => self.sent += n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Step::Wait,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Step::Close,
            }
        }
        let _ = socket.shutdown(Shutdown::Write);
        Step::Close
    }

    /// The exposition for the `GET` that `drive` reported.
    pub fn answer(&mut self, body: &str) {
        self.answer_with(Request::Get, body);
    }

    fn answer_with(&mut self, request: Request, body: &str) {
        self.out = response(request, body);
        self.answered = true;
        self.head = Vec::new();
    }

    /// Reads what is there into the head, up to MAX_HEAD; what follows the head is ignored.
    fn read_head(&mut self, mut socket: &Socket) -> io::Result<Request> {
        let mut buf = [0u8; 2048];
        loop {
            let room = MAX_HEAD.saturating_sub(self.head.len()).min(buf.len());
            if room == 0 {
                return Ok(parse(&self.head));
            }
            match socket.read(&mut buf[..room]) {
                // The client closed before the head ended.
                Ok(0) => {
                    return match parse(&self.head) {
                        Request::Incomplete => Err(io::ErrorKind::UnexpectedEof.into()),
                        request => Ok(request),
                    };
                }
                Ok(n) => {
                    self.head.extend_from_slice(&buf[..n]);
                    let request = parse(&self.head);
                    if request != Request::Incomplete {
                        return Ok(request);
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(Request::Incomplete);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads() {
        assert_eq!(
            parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"),
            Request::Incomplete
        );
        assert_eq!(
            parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Request::Get
        );
        assert_eq!(parse(b"GET / HTTP/1.0\n\n"), Request::Get);
        assert_eq!(parse(b"POST / HTTP/1.1\r\n\r\n"), Request::OtherMethod);
        assert_eq!(parse(b"GET / HTTP/2\r\n\r\n"), Request::Bad);
        assert_eq!(parse(b"GET /\r\n\r\n"), Request::Bad);
        assert_eq!(parse(b"\x16\x03\x01 garbage\r\n\r\n"), Request::Bad);
        assert_eq!(parse(&[b'x'; MAX_HEAD]), Request::Bad);
    }

    #[test]
    fn responses_say_their_length_and_close() {
        let ok = String::from_utf8(response(Request::Get, "a 1\n")).unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Length: 4\r\n"));
        assert!(ok.contains("text/plain; version=0.0.4"));
        assert!(ok.ends_with("\r\n\r\na 1\n"));
        let refused = String::from_utf8(response(Request::OtherMethod, "")).unwrap();
        assert!(refused.starts_with("HTTP/1.1 405 "), "{refused}");
        assert!(refused.contains("Allow: GET\r\n"));
    }
}
