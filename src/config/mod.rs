//! The service table as a pure value: YAML text in, a checked `Table` (or every error, located)
//! out. No syscalls and no NSS lookups happen here; `resolve.rs` does those.

mod check;
mod raw;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

pub use check::parse_partial;

/// Where a value was written, for messages from later stages (resolve) about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: u64,
    pub column: u64,
}

/// Where a value was written, when that need not be the service's own file (a value from
/// `defaults:` is written in the main file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub file: String,
    pub pos: Pos,
}

/// One problem found in the table. `Display` gives `FILE:LINE:COL: service "NAME": message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub pos: Option<Pos>,
    pub service: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(pos) = self.pos {
            write!(f, ":{}:{}", pos.line, pos.column)?;
        }
        if let Some(service) = &self.service {
            write!(f, ": service \"{service}\"")?;
        }
        write!(f, ": {}", self.message)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Unix,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Unix => "unix",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StderrMode {
    Log,
    Socket,
    Null,
}

/// The services served inside rinetd's event loop: those RFC 862-868 define, and `metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    Echo,
    Discard,
    Chargen,
    Daytime,
    Time,
    /// rinetd's own counters over HTTP, for Prometheus.
    Metrics,
}

impl Builtin {
    pub fn name(self) -> &'static str {
        Builtin::ALL
            .iter()
            .find(|(_, builtin)| *builtin == self)
            .map_or("builtin", |(name, _)| name)
    }

    pub const ALL: [(&'static str, Builtin); 6] = [
        ("echo", Builtin::Echo),
        ("discard", Builtin::Discard),
        ("chargen", Builtin::Chargen),
        ("daytime", Builtin::Daytime),
        ("time", Builtin::Time),
        ("metrics", Builtin::Metrics),
    ];
}

/// What serves a connection or datagram: a program to exec, or a builtin.
#[derive(Debug, Clone, PartialEq)]
pub enum Handler {
    Server {
        path: PathBuf,
        pos: Pos,
        /// argv, argv[0] first.
        args: Vec<String>,
    },
    Builtin(Builtin),
}

/// A `protocol: unix` socket file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixSocket {
    pub path: PathBuf,
    pub pos: Pos,
    pub mode: u32,
}

/// `port:` as written: a number, or a name still to be looked up in /etc/services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSpec {
    Number(u16),
    Name(String),
}

/// `user:` / `group:` as written: a numeric id or a name still to be looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdSpec {
    Id(u32),
    Name(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub max: u32,
    pub per: Duration,
    pub pause: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Nofile,
    Nproc,
    Cpu,
    As,
    Core,
    Fsize,
    Data,
    Stack,
}

/// An rlimit value; `None` is `unlimited`.
pub type LimitValue = Option<u64>;

/// One service, checked but not yet resolved against the system.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSpec {
    /// The file it was written in (the main table or an included file).
    pub file: String,
    pub name: String,
    pub pos: Pos,
    pub protocol: Protocol,
    pub addresses: Vec<IpAddr>,
    pub port: PortSpec,
    pub port_pos: Pos,
    /// `protocol: unix` only (then `addresses` is empty).
    pub unix: Option<UnixSocket>,
    pub handler: Handler,
    pub wait: bool,
    pub proxy_protocol: bool,
    pub user: Option<(IdSpec, Place)>,
    pub group: Option<(IdSpec, Place)>,
    pub env: BTreeMap<String, String>,
    pub pass_env: Vec<String>,
    pub cwd: PathBuf,
    pub stderr: StderrMode,
    pub max_children: u32,
    pub per_source: u32,
    pub rate_limit: Option<RateLimit>,
    pub only_from: Vec<IpNet>,
    pub no_access: Vec<IpNet>,
    pub timeout: Option<Duration>,
    pub rlimits: Vec<(Resource, LimitValue)>,
    pub nice: i32,
    pub umask: u32,
    pub backlog: u32,
    pub keepalive: bool,
    pub disabled: bool,
}

/// The whole checked table.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub file: String,
    pub services: Vec<ServiceSpec>,
}

impl ServiceSpec {
    /// The builtin serving this service, if it is one.
    pub fn handler_builtin(&self) -> Option<Builtin> {
        match self.handler {
            Handler::Builtin(builtin) => Some(builtin),
            Handler::Server { .. } => None,
        }
    }
}
