//! Tokens name the loop's event sources; their low bits say what kind of source, so the loop
//! dispatches an event without a lookup.

use mio::Token;

/// What kind of source a token names: its low bits, so dispatch needs no lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum SourceKind {
    Signal,
    Listener,
    /// A handler's output pipe.
    Output,
    /// A connection served inside the loop (builtin, or waiting for its PROXY header).
    Connection,
    /// A per-datagram handler's reply pipe.
    Reply,
    /// A supervised program's NOTIFY_SOCKET.
    Notify,
    /// A handler's pidfd, readable once it has exited.
    Process,
}

const KINDS: [SourceKind; 7] = [
    SourceKind::Signal,
    SourceKind::Listener,
    SourceKind::Output,
    SourceKind::Connection,
    SourceKind::Reply,
    SourceKind::Notify,
    SourceKind::Process,
];
const KIND_BITS: usize = 3;
pub const SIGNAL_TOKEN: Token = Token(0);

/// Hands out tokens, never the same twice.
#[derive(Default)]
pub struct Tokens {
    issued: usize,
}

impl Tokens {
    pub fn next(&mut self, kind: SourceKind) -> Token {
        self.issued += 1;
        Token(self.issued << KIND_BITS | kind as usize)
    }
}

pub fn kind_of(token: Token) -> Option<SourceKind> {
    KINDS.get(token.0 & ((1 << KIND_BITS) - 1)).copied()
}
