//! The service table as a pure value: YAML text in, a checked `Table` (or every error, located)
//! out. No syscalls and no NSS lookups happen here; `resolve.rs` does those. `yaml` reads the
//! text into located nodes, `check` turns them into `ServiceSpec`s, `dump` writes a table back.

mod check;
pub mod dump;
mod simple;
mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

pub use check::parse_partial;

use crate::service::{SourcePrefix, SourceRate};
use crate::tls::config::{TlsKey, TlsSettings};

/// The YAML syntax error that stops the reading of `text`, if there is one; what the checker
/// would say of the values is not asked (for the fuzzers: generated YAML must always read).
pub fn syntax_error(text: &str) -> Option<(Pos, String)> {
    yaml::read(text)
        .error
        .map(|error| (error.pos, error.message))
}

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

/// Sorts errors into the order a reader meets them: file by file in the order they were read
/// (`files`, the main table first), then by line and column. Stable, so that two messages about
/// one place keep the order they were found in.
pub fn sort_errors(errors: &mut [ConfigError], files: &[String]) {
    let order: std::collections::HashMap<&str, usize> = files
        .iter()
        .enumerate()
        .map(|(index, file)| (file.as_str(), index))
        .collect();
    errors.sort_by_key(|error| {
        let file = order
            .get(error.file.as_str())
            .copied()
            .unwrap_or(usize::MAX);
        let pos = error.pos.unwrap_or_default();
        (file, pos.line, pos.column)
    });
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Unix,
    /// No socket at all: a supervised program (`respawn: true`).
    None,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Unix => "unix",
            Protocol::None => "none",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StderrMode {
    Log,
    Socket,
    Null,
}

/// The services RFC 862-868 define, and rinetd's own counters (`metrics`), served inside
/// rinetd's event loop.
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

impl Resource {
    pub const ALL: [(&'static str, Resource); 8] = [
        ("nofile", Resource::Nofile),
        ("nproc", Resource::Nproc),
        ("cpu", Resource::Cpu),
        ("as", Resource::As),
        ("core", Resource::Core),
        ("fsize", Resource::Fsize),
        ("data", Resource::Data),
        ("stack", Resource::Stack),
    ];

    pub fn name(self) -> &'static str {
        Resource::ALL
            .iter()
            .find(|(_, resource)| *resource == self)
            .map_or("nofile", |(name, _)| name)
    }
}

/// An rlimit value; `None` is `unlimited`.
pub type LimitValue = Option<u64>;

/// `tls:` as checked: the settings the TLS engine loads, and where each was written so that
/// its load errors (`TlsKey`) can be located.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsSpec {
    pub settings: TlsSettings,
    pub places: TlsPlaces,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct TlsPlaces {
    pub tls: Pos,
    pub cert: Pos,
    pub key: Pos,
    /// Per `sni` entry: its `names`, `cert` and `key`.
    pub sni: Vec<[Pos; 3]>,
    pub client_ca: Pos,
    pub alpn: Pos,
}

impl TlsPlaces {
    /// Where the setting a load error names was written.
    pub fn pos(&self, key: TlsKey) -> Pos {
        let sni =
            |index: usize, part: usize| self.sni.get(index).map_or(self.tls, |places| places[part]);
        match key {
            TlsKey::Cert => self.cert,
            TlsKey::Key => self.key,
            TlsKey::SniNames(index) => sni(index, 0),
            TlsKey::SniCert(index) => sni(index, 1),
            TlsKey::SniKey(index) => sni(index, 2),
            TlsKey::ClientCa => self.client_ca,
            TlsKey::Alpn => self.alpn,
            TlsKey::Tls => self.tls,
        }
    }
}

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
    /// No `port:` was written: the service's name is looked up in /etc/services.
    pub port_from_name: bool,
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
    /// None: the handler keeps rinetd's own niceness.
    pub nice: Option<i32>,
    pub umask: u32,
    pub backlog: u32,
    pub keepalive: bool,
    pub disabled: bool,
    /// `respawn: true`: a supervised service.
    pub respawn: bool,
    pub notify: bool,
    pub respawn_max_delay: Duration,
    pub per_source_rate: Option<SourceRate>,
    pub source_prefix: SourcePrefix,
    pub tls: Option<TlsSpec>,
}

/// The whole checked table.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub file: String,
    /// Every file read, in order: the main table, then the included files.
    pub files: Vec<String>,
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

/// Whether the simple reader, where it reads `text`, builds the tree the general YAML parser
/// builds, positions included; true where it leaves `text` to the general parser. For the
/// `yaml_simple` fuzz target: the two readings must never disagree.
pub(crate) fn simple_reading_agrees(text: &str) -> bool {
    match simple::read(text) {
        None => true,
        Some(simple) => {
            let general = yaml::read_general(text);
            general.error.is_none() && simple.root == general.root
        }
    }
}
