//! TLS termination for tcp nowait handlers and builtins (the contract's "TLS" section): loading
//! a service's certificates into a `rustls::ServerConfig` (`config`, `sni`, `cert`), and the
//! per-connection engine the event loop drives (`session`), whose completed handshake becomes
//! the handler's `SSL_*` environment (`info`).
//!
//! Crypto provider: *ring*. It builds from crates.io with nothing but a C compiler (no cmake,
//! no Go, no NASM), compiles in seconds where aws-lc-sys takes minutes of C, and covers what
//! rinetd serves: TLS 1.2 and 1.3 with ECDSA, Ed25519 and RSA keys, AES-GCM and ChaCha20.
//! Neither rustls nor *ring* starts a thread, so rinetd stays single-threaded and its
//! fork/clone of handlers stays sound.

mod cert;
pub mod config;
pub mod info;
pub mod session;
mod sni;

#[cfg(test)]
mod loopback_tests;
