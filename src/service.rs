//! The runtime service: what `resolve` makes of a checked table entry, and all the event loop
//! knows about it. It carries no file, line or column (those stay in `config`), so two loads
//! of the same settings compare equal wherever the entries were written.

use std::borrow::Cow;
use std::ffi::{CStr, CString};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use crate::config::{Builtin, Protocol, RateLimit, Resource, StderrMode};

/// A service ready to be bound and run.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// `name/proto` (`label_of`), the prefix of every log line about this service; the name
    /// is its head (`name()`): one string, not two, in each of a table's services.
    pub label: Box<str>,
    pub protocol: Protocol,
    /// A boxed slice: fixed once loaded (8 bytes less in each table entry than a vector).
    pub listen: Box<[Endpoint]>,
    pub socket: SocketOptions,
    pub handler: Handler,
    pub wait: bool,
    pub proxy_protocol: bool,
    pub limits: Limits,
    pub access: Access,
    /// `respawn: true`: started at load and kept running; None for on-demand services.
    pub supervise: Option<Supervise>,
    /// `respawn_max_delay`: the longest wait before restarting a supervised or `wait: true`
    /// handler that keeps failing.
    pub restart_max_delay: Duration,
    /// `tls:`: rinetd terminates TLS itself. Boxed, as the exec plan: most services have
    /// none, and every service of a table pays for what the struct holds inline.
    pub tls: Option<Box<Tls>>,
}

/// A supervised service's own settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Supervise {
    /// `notify: true`: started means READY=1 received on its NOTIFY_SOCKET.
    pub notify: bool,
}

/// `tls:`, with its certificates loaded (at each load: a reload reads them again).
#[derive(Debug, Clone)]
pub struct Tls {
    pub settings: crate::tls::config::TlsSettings,
    pub config: std::sync::Arc<rustls::ServerConfig>,
}

/// Two loads of the same settings are the same service; the certificates they read are
/// taken anew by every load anyway.
impl PartialEq for Tls {
    fn eq(&self, other: &Tls) -> bool {
        self.settings == other.settings
    }
}

/// Where a service listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Ip(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Ip(address) => write!(f, "{address}"),
            Endpoint::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Settings of the listening socket and of the connections accepted from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketOptions {
    pub backlog: u32,
    pub keepalive: bool,
    /// A UNIX socket file's permissions.
    pub unix_mode: Option<u32>,
}

/// What serves a connection or datagram.
#[derive(Debug, Clone, PartialEq)]
pub enum Handler {
    /// Boxed: a builtin (and the table's entry of every service) need not carry its room.
    Exec(Box<ExecPlan>),
    Builtin(Builtin),
}

/// Everything the child needs to exec a handler that does not depend on the connection.
///
/// A table carries one plan per service, so what most services have alike costs them nothing:
/// lists are boxed slices (fixed once made, no capacity field), the usual argv and environment
/// are not stored at all, and the default cwd is a static.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecPlan {
    pub path: CString,
    pub argv: Argv,
    /// `NAME=value` entries fixed for the service, `pass_env` and `env` already applied;
    /// `RINETD_SERVICE` is added at each start, from the service's name. A service without
    /// `user`, `env` or `pass_env` has the default `PATH=` and its `PROTO=` alone: a static list.
    pub fixed_env: Cow<'static, [Cow<'static, CStr>]>,
    /// Names `env`/`pass_env` set, so the per-connection variables do not duplicate them;
    /// sorted, for a binary search.
    pub overridden: Box<[String]>,
    /// The default `/` is a shared static, as the common environment entries are.
    pub cwd: Cow<'static, CStr>,
    pub credentials: Option<Credentials>,
    pub rlimits: Box<[(Resource, Option<u64>)]>,
    /// `nice:` applied as an absolute value; None keeps rinetd's own niceness.
    pub nice: Option<i32>,
    pub umask: u32,
    pub stderr: StderrMode,
    /// Why exec of this script is bound to fail although the file exists (its `#!` interpreter
    /// is missing or ends in a carriage return), for the `spawn failed` line when execve says
    /// ENOENT; checked at each load.
    pub script_problem: Option<Box<str>>,
}

/// A handler's argument list.
#[derive(Debug, Clone, PartialEq)]
pub enum Argv {
    /// The default without `args`: argv[0] alone, the path's file name (its tail, passed
    /// from `path` itself).
    FileName,
    /// `args` as written, argv[0] first.
    Given(Box<[CString]>),
}

/// The identity a handler switches to before exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    /// The supplementary groups besides `gid` (which the child's list always starts with):
    /// most users have none, and then nothing is stored.
    pub other_groups: Box<[u32]>,
}

/// How much a service may take on. `None` is unlimited (the table's `0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_children: Option<NonZeroU32>,
    pub per_source: Option<NonZeroU32>,
    /// Boxed, as `per_source_rate`: few services set them, and inline the two took 64 of
    /// every service's bytes.
    pub rate_limit: Option<Box<RateLimit>>,
    /// `per_source_rate`: at most `max` per client within any `per` window.
    pub per_source_rate: Option<Box<SourceRate>>,
    /// How clients are grouped for `per_source` and `per_source_rate`.
    pub source_prefix: SourcePrefix,
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceRate {
    pub max: u32,
    pub per: Duration,
}

/// Prefix lengths that group client addresses: an IPv6 client usually holds a whole /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourcePrefix {
    pub ipv4: u8,
    pub ipv6: u8,
}

impl Default for SourcePrefix {
    fn default() -> SourcePrefix {
        SourcePrefix { ipv4: 32, ipv6: 64 }
    }
}

impl SourcePrefix {
    /// The group `client` is counted in: its address with the bits past the prefix cleared.
    pub fn group(self, client: IpAddr) -> IpAddr {
        match client {
            IpAddr::V4(address) => {
                let keep = u32::MAX
                    .checked_shl(32 - u32::from(self.ipv4.min(32)))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(address) & keep).into())
            }
            IpAddr::V6(address) => {
                let keep = u128::MAX
                    .checked_shl(128 - u32::from(self.ipv6.min(128)))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(address) & keep).into())
            }
        }
    }
}

/// The default `respawn_max_delay`.
pub const RESTART_MAX_DELAY: Duration = Duration::from_secs(60);

/// A count from the table where `0` means unlimited: the one place that rule is written.
pub fn limit(count: u32) -> Option<NonZeroU32> {
    NonZeroU32::new(count)
}

/// Who may connect. Boxed slices: fixed once loaded, and most services have neither list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Access {
    pub only_from: Box<[IpNet]>,
    pub no_access: Box<[IpNet]>,
}

/// Why a client is turned away; the name is the `reason=` of the log and the status dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    NoAccess,
    OnlyFrom,
    PerSource,
    PerSourceRate,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NoAccess => "no_access",
            Refusal::OnlyFrom => "only_from",
            Refusal::PerSource => "per_source",
            Refusal::PerSourceRate => "per_source_rate",
        }
    }
}

impl Access {
    /// Why `client` is turned away by the access lists, if it is: `no_access` wins.
    pub fn refusal(&self, client: IpAddr) -> Option<Refusal> {
        if self.no_access.iter().any(|net| net.contains(&client)) {
            return Some(Refusal::NoAccess);
        }
        let listed = self.only_from.iter().any(|net| net.contains(&client));
        (!self.only_from.is_empty() && !listed).then_some(Refusal::OnlyFrom)
    }
}

/// How a service is served, decided by its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// tcp/unix nowait: a handler process per connection.
    StreamExec,
    /// tcp: a builtin per connection, inside the loop.
    StreamBuiltin(Builtin),
    /// udp nowait: a handler process per datagram.
    DatagramExec,
    /// udp: a builtin answering each datagram.
    DatagramBuiltin(Builtin),
    /// tcp/unix/udp wait: the socket itself is handed to one handler at a time.
    Wait,
    /// `respawn: true`: one program kept running, with the sockets (if any) handed over.
    Supervised,
}

impl Service {
    /// `name/proto`, the label of `name`'s log lines.
    pub fn label_of(name: &str, protocol: Protocol) -> Box<str> {
        // Concatenated, not format!: the formatting machinery costs ~800 instructions a string.
        [name, "/", protocol.as_str()].concat().into_boxed_str()
    }

    /// The label up to its last `/` (a protocol's name has none).
    pub fn name(&self) -> &str {
        self.label
            .rsplit_once('/')
            .map_or(&self.label, |(name, _)| name)
    }

    pub fn kind(&self) -> Kind {
        if self.supervise.is_some() {
            return Kind::Supervised;
        }
        let stream = self.protocol != Protocol::Udp;
        match (&self.handler, stream) {
            (Handler::Builtin(builtin), true) => Kind::StreamBuiltin(*builtin),
            (Handler::Builtin(builtin), false) => Kind::DatagramBuiltin(*builtin),
            _ if self.wait => Kind::Wait,
            (Handler::Exec(_), true) => Kind::StreamExec,
            (Handler::Exec(_), false) => Kind::DatagramExec,
        }
    }

    pub fn exec_plan(&self) -> Option<&ExecPlan> {
        match &self.handler {
            Handler::Exec(plan) => Some(plan),
            Handler::Builtin(_) => None,
        }
    }
}

#[cfg(test)]
impl Service {
    /// A TCP echo builtin named `name` listening on `listen`, with the table's defaults.
    pub fn example(name: &str, listen: &[&str]) -> Service {
        Service {
            label: Service::label_of(name, Protocol::Tcp),
            protocol: Protocol::Tcp,
            listen: listen
                .iter()
                .map(|address| Endpoint::Ip(address.parse().expect("an address:port")))
                .collect(),
            socket: SocketOptions {
                backlog: 1024,
                keepalive: false,
                unix_mode: None,
            },
            handler: Handler::Builtin(Builtin::Echo),
            wait: false,
            proxy_protocol: false,
            limits: Limits {
                max_children: limit(256),
                per_source: None,
                rate_limit: None,
                per_source_rate: None,
                source_prefix: SourcePrefix::default(),
                timeout: None,
            },
            access: Access::default(),
            supervise: None,
            restart_max_delay: RESTART_MAX_DELAY,
            tls: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_access_wins_over_only_from_and_empty_lists_admit_everyone() {
        let net = |text: &str| text.parse::<IpNet>().unwrap();
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        let open = Access::default();
        assert_eq!(open.refusal(ip("192.0.2.1")), None);
        let access = Access {
            only_from: [net("192.0.2.0/24")].into(),
            no_access: [net("192.0.2.128/25")].into(),
        };
        assert_eq!(access.refusal(ip("192.0.2.1")), None);
        assert_eq!(access.refusal(ip("192.0.2.200")), Some(Refusal::NoAccess));
        assert_eq!(access.refusal(ip("198.51.100.1")), Some(Refusal::OnlyFrom));
    }

    #[test]
    fn zero_is_unlimited() {
        assert_eq!(limit(0), None);
        assert_eq!(limit(3).map(NonZeroU32::get), Some(3));
    }
}
