//! Turns the YAML node tree (`yaml.rs`) into a checked `Table`: every key known or reported
//! (with "did you mean"), every value's type, range and form, every contract rule that needs no
//! system lookup, each message located at file:line:column in the user's words. A mistake in
//! one service never hides another's: each service, `defaults:` and each included file is
//! checked whole, and only a YAML syntax error stops the reading of its file, at that point.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::yaml::{self, Map, Node, Value};
use super::{
    Builtin, ConfigError, Handler, IdSpec, LimitValue, Place, PortSpec, Pos, Protocol, RateLimit,
    Resource, ServiceSpec, StderrMode, Table, TlsPlaces, TlsSpec, UnixSocket,
};
use crate::compat::emit::scalar as yaml_scalar;
use crate::service::{RESTART_MAX_DELAY, SourcePrefix, SourceRate};
use crate::tls::config::{DEFAULT_HANDSHAKE_TIMEOUT, MinVersion, SniEntry, TlsSettings};

const DEFAULT_MAX_CHILDREN: u32 = 256;
const DEFAULT_BACKLOG: u32 = 1024;
const DEFAULT_UMASK: u32 = 0o022;
const DEFAULT_SOCKET_MODE: u32 = 0o666;
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

const TOP_KEYS: &[&str] = &["defaults", "include", "services"];
const INCLUDED_KEYS: &[&str] = &["services"];
/// The keys that describe one service only, and so cannot be set in `defaults:`.
const OWN_KEYS: &[&str] = &[
    "name",
    "protocol",
    "address",
    "port",
    "path",
    "socket_mode",
    "server",
    "args",
    "builtin",
    "wait",
    "disabled",
    "respawn",
    "notify",
    "tls",
];
/// The contract's (d) keys: a service's own value, else the one in `defaults:`.
const DEFAULT_KEYS: &[&str] = &[
    "user",
    "group",
    "env",
    "pass_env",
    "cwd",
    "stderr",
    "max_children",
    "per_source",
    "per_source_rate",
    "source_prefix",
    "rate_limit",
    "only_from",
    "no_access",
    "timeout",
    "rlimits",
    "nice",
    "umask",
    "backlog",
    "keepalive",
    "proxy_protocol",
    "respawn_max_delay",
];
/// A service's keys: its own first, so that "did you mean" prefers them.
const SERVICE_KEYS: [&str; OWN_KEYS.len() + DEFAULT_KEYS.len()] = joined(OWN_KEYS, DEFAULT_KEYS);
/// The keys `defaults:` knows: the (d) keys, then the own keys it refuses by name.
const DEFAULTS_KEYS: [&str; OWN_KEYS.len() + DEFAULT_KEYS.len()] = joined(DEFAULT_KEYS, OWN_KEYS);

/// `first` then `second`, at compile time (not a vector per service).
const fn joined<const N: usize>(
    first: &[&'static str],
    second: &[&'static str],
) -> [&'static str; N] {
    let mut keys = [""; N];
    let mut at = 0;
    while at < N {
        keys[at] = if at < first.len() {
            first[at]
        } else {
            second[at - first.len()]
        };
        at += 1;
    }
    keys
}
const RATE_LIMIT_KEYS: &[&str] = &["max", "per", "pause"];
const SOURCE_RATE_KEYS: &[&str] = &["max", "per"];
const SOURCE_PREFIX_KEYS: &[&str] = &["ipv4", "ipv6"];
const TLS_KEYS: &[&str] = &[
    "cert",
    "key",
    "sni",
    "client_ca",
    "alpn",
    "min_version",
    "handshake_timeout",
];
const SNI_KEYS: &[&str] = &["names", "cert", "key"];

/// Parses and checks `text`, read from `file`. Returns the table or every error found.
#[cfg(test)]
pub fn parse(file: &str, text: &str) -> Result<Table, Vec<ConfigError>> {
    let (table, errors) = parse_partial(file, text, &mut |_| Ok(Vec::new()));
    if errors.is_empty() {
        Ok(table)
    } else {
        Err(errors)
    }
}

/// Expands an `include:` entry into (path, text) pairs, or says why it cannot.
pub type Includer<'a> = dyn FnMut(&str) -> Result<Vec<(String, String)>, String> + 'a;

/// Parses and checks a table, and returns the services that passed even when others did not,
/// so that the later stage (resolve) can report its errors for them in the same run. Errors
/// come in file and line order. Pure: `include` expands one `include:` entry (a path or glob,
/// as written) into the files it names, with their text, in order; it is where the filesystem
/// is read. Never panics, whatever the text (the fuzzers' entry point).
pub fn parse_partial(
    file: &str,
    text: &str,
    include: &mut Includer<'_>,
) -> (Table, Vec<ConfigError>) {
    let mut table = Table {
        file: file.to_string(),
        files: vec![file.to_string()],
        services: Vec::new(),
    };
    let mut checker = Checker::new(file, 0);
    let document = checker.document(text);
    let (top, complete) = checker.top(&document, text, TOP_KEYS);
    let defaults = match top.get("defaults") {
        Some(node) => checker.defaults(node),
        None => Common::default(),
    };
    // `service:` said "did you mean services": "missing key services" would say it twice.
    let complete = complete && !top.misspelt("services");
    table.services = checker.services(top.get("services"), complete, &defaults);
    let mut errors = checker.errors;
    let mut names = checker.names;
    let patterns = match top.get("include") {
        Some(node) => {
            let mut list_checker = Checker::new(file, 0);
            let patterns = list_checker.texts(node, None, "include");
            errors.extend(list_checker.errors);
            patterns.unwrap_or_default()
        }
        None => Vec::new(),
    };
    for (pattern, pos) in patterns {
        match include(&pattern) {
            Err(message) => errors.push(ConfigError {
                file: file.to_string(),
                pos: Some(pos),
                service: None,
                message: format!("include \"{pattern}\": {message}"),
            }),
            Ok(files) => {
                for (path, included) in files {
                    let mut checker = Checker::new(&path, table.files.len());
                    let services = checker.included(&included, &defaults);
                    table.services.extend(services);
                    errors.extend(checker.errors);
                    names.extend(checker.names);
                    table.files.push(path);
                }
            }
        }
    }
    errors.extend(duplicate_names(&names, &table.files));
    super::sort_errors(&mut errors, &table.files);
    (table, errors)
}

/// Names are unique over the whole table, included files too.
fn duplicate_names(names: &[Named], files: &[String]) -> Vec<ConfigError> {
    let mut first: HashMap<&str, &Named> = HashMap::with_capacity(names.len());
    let file = |named: &Named| files.get(named.file).map_or("", String::as_str);
    let mut errors = Vec::new();
    for named in names {
        match first.get(named.name.as_str()) {
            Some(earlier) => errors.push(ConfigError {
                file: file(named).to_string(),
                pos: Some(named.pos),
                service: Some(named.name.clone()),
                message: format!(
                    "duplicate service name (first defined at {}:{})",
                    file(earlier),
                    earlier.pos.line
                ),
            }),
            None => {
                first.insert(&named.name, named);
            }
        }
    }
    errors
}

/// The nearest known word within a small edit distance, for "did you mean".
fn nearest<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    // Far longer than any key: not worth comparing (and the comparison is quadratic).
    if word.len() > 64 {
        return None;
    }
    known
        .iter()
        .map(|candidate| (edit_distance(word, candidate), *candidate))
        .filter(|(distance, candidate)| *distance <= 2.max(candidate.len() / 3))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

fn key_text<'n>(key: &'n Node<'_>) -> Option<&'n str> {
    key.scalar().map(|scalar| &*scalar.text)
}

/// The keys of one mapping that the checker knows, each with its key and value nodes; `null`
/// values read as absent (`max_children: ~` is no setting at all).
struct Fields<'n> {
    found: Vec<(&'static str, &'n Node<'n>, &'n Node<'n>)>,
    /// Known keys that an unknown one was taken for ("did you mean"): that such a key is
    /// missing has been said already.
    suggested: Vec<&'static str>,
}

impl<'n> Fields<'n> {
    fn get(&self, key: &str) -> Option<&'n Node<'n>> {
        self.get_even_null(key).filter(|value| !value.is_null())
    }

    /// `stderr: null` is a setting (/dev/null), not an absence.
    fn get_even_null(&self, key: &str) -> Option<&'n Node<'n>> {
        self.found
            .iter()
            .find(|(name, _, _)| *name == key)
            .map(|(_, _, value)| *value)
    }

    fn pos(&self, key: &str) -> Option<Pos> {
        self.get(key).map(|value| value.pos)
    }

    fn without(self, keys: &[&str]) -> Fields<'n> {
        if keys.is_empty() {
            return self;
        }
        Fields {
            found: self
                .found
                .into_iter()
                .filter(|(name, _, _)| !keys.contains(name))
                .collect(),
            suggested: self.suggested,
        }
    }

    /// Whether "missing key" would repeat a "did you mean" said about a misspelt one.
    fn misspelt(&self, key: &str) -> bool {
        self.suggested.contains(&key)
    }
}

/// The (d) keys as given, for a service or for `defaults:`. A value given but wrong is None
/// (and reported): the table fails anyway, and nothing else is said about it.
#[derive(Debug, Clone, Default)]
struct Common {
    user: Option<(IdSpec, Place)>,
    group: Option<(IdSpec, Place)>,
    env: Option<BTreeMap<String, String>>,
    pass_env: Option<Vec<String>>,
    cwd: Option<PathBuf>,
    stderr: Option<StderrMode>,
    max_children: Option<u32>,
    per_source: Option<u32>,
    per_source_rate: Option<SourceRate>,
    source_prefix: Option<SourcePrefix>,
    rate_limit: Option<RateLimit>,
    only_from: Option<Vec<IpNet>>,
    no_access: Option<Vec<IpNet>>,
    /// `Some(None)`: given as 0, no timeout.
    timeout: Option<Option<Duration>>,
    rlimits: Option<Vec<(Resource, LimitValue)>>,
    nice: Option<i32>,
    umask: Option<u32>,
    backlog: Option<u32>,
    keepalive: Option<bool>,
    proxy_protocol: Option<bool>,
    respawn_max_delay: Option<Duration>,
}

impl Common {
    /// A service's own values, and `defaults:` where it has none.
    fn over(self, defaults: &Common) -> Common {
        Common {
            user: self.user.or_else(|| defaults.user.clone()),
            group: self.group.or_else(|| defaults.group.clone()),
            env: self.env.or_else(|| defaults.env.clone()),
            pass_env: self.pass_env.or_else(|| defaults.pass_env.clone()),
            cwd: self.cwd.or_else(|| defaults.cwd.clone()),
            stderr: self.stderr.or(defaults.stderr),
            max_children: self.max_children.or(defaults.max_children),
            per_source: self.per_source.or(defaults.per_source),
            per_source_rate: self.per_source_rate.or(defaults.per_source_rate),
            source_prefix: self.source_prefix.or(defaults.source_prefix),
            rate_limit: self.rate_limit.or(defaults.rate_limit),
            only_from: self.only_from.or_else(|| defaults.only_from.clone()),
            no_access: self.no_access.or_else(|| defaults.no_access.clone()),
            timeout: self.timeout.or(defaults.timeout),
            rlimits: self.rlimits.or_else(|| defaults.rlimits.clone()),
            nice: self.nice.or(defaults.nice),
            umask: self.umask.or(defaults.umask),
            backlog: self.backlog.or(defaults.backlog),
            keepalive: self.keepalive.or(defaults.keepalive),
            proxy_protocol: self.proxy_protocol.or(defaults.proxy_protocol),
            respawn_max_delay: self.respawn_max_delay.or(defaults.respawn_max_delay),
        }
    }
}

/// What a service is, which decides the keys that apply to it (the checker refuses the others
/// when set on the service, and `dump` writes only these).
#[derive(Debug, Clone, Copy)]
pub(super) struct Shape {
    pub(super) protocol: Protocol,
    pub(super) builtin: bool,
    pub(super) wait: bool,
    pub(super) supervised: bool,
}

impl Shape {
    pub(super) fn of(spec: &ServiceSpec) -> Shape {
        Shape {
            protocol: spec.protocol,
            builtin: matches!(spec.handler, Handler::Builtin(_)),
            wait: spec.wait,
            supervised: spec.respawn,
        }
    }

    /// Keys that act on the handler process.
    pub(super) fn runs_program(self) -> bool {
        !self.builtin
    }

    /// `only_from`, `no_access`, `per_source`: rinetd sees each client's address.
    pub(super) fn sees_clients(self) -> bool {
        !self.supervised
            && match self.protocol {
                Protocol::Tcp => !self.wait,
                Protocol::Udp => true,
                Protocol::Unix | Protocol::None => false,
            }
    }

    /// `per_source_rate`, `source_prefix`: a connection or datagram per handler, with an address.
    pub(super) fn counts_sources(self) -> bool {
        !self.supervised && !self.wait && matches!(self.protocol, Protocol::Tcp | Protocol::Udp)
    }

    pub(super) fn rate_limited(self) -> bool {
        !self.supervised
            && match self.protocol {
                Protocol::Tcp | Protocol::Unix => !self.wait,
                Protocol::Udp => true,
                Protocol::None => false,
            }
    }

    pub(super) fn keepalive(self) -> bool {
        self.protocol == Protocol::Tcp && !self.wait
    }

    pub(super) fn backlog(self) -> bool {
        matches!(self.protocol, Protocol::Tcp | Protocol::Unix)
    }

    /// `proxy_protocol` and `tls`: rinetd reads the connection before the handler does.
    pub(super) fn tcp_nowait(self) -> bool {
        self.protocol == Protocol::Tcp && !self.wait && !self.supervised
    }
}

struct Checker<'a> {
    file: &'a str,
    /// Where `file` is in the table's `files`.
    file_index: usize,
    errors: Vec<ConfigError>,
    /// Every service entry's name and place, those with mistakes too: a duplicate name is
    /// reported in the same run as the mistakes of either entry.
    names: Vec<Named>,
}

/// A service name as written, and where: `file` is its index in the table's `files`.
struct Named {
    name: String,
    file: usize,
    pos: Pos,
}

impl<'a> Checker<'a> {
    fn new(file: &'a str, file_index: usize) -> Checker<'a> {
        Checker {
            file,
            file_index,
            errors: Vec::new(),
            names: Vec::new(),
        }
    }

    fn error(&mut self, pos: Pos, service: Option<&str>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            pos: Some(pos),
            service: service.map(str::to_string),
            message: message.into(),
        });
    }

    fn place(&self, pos: Pos) -> Place {
        Place {
            file: self.file.to_string(),
            pos,
        }
    }

    /// Reads `text`; a syntax error is reported, named after the service it is in, with the
    /// convert hint when the file is really an inetd.conf or an xinetd file.
    fn document<'t>(&mut self, text: &'t str) -> yaml::Document<'t> {
        let document = yaml::read(text);
        if let Some(error) = &document.error {
            let service = document
                .root
                .as_ref()
                .and_then(|root| service_at(root, error.pos.line));
            let message = match crate::compat::hint_for_unparsable(self.file, text) {
                Some(hint) => format!("{}; {hint}", error.message),
                None => error.message.clone(),
            };
            self.error(error.pos, service.as_deref(), message);
        }
        document
    }

    /// The top of a file must be a mapping.
    fn root<'n>(&mut self, root: &'n Node<'n>, text: &str) -> Option<&'n Map<'n>> {
        match &root.value {
            Value::Map(map) => Some(map),
            _ if root.is_null() => None,
            _ => {
                let hint = crate::compat::hint_for_unparsable(self.file, text)
                    .map(|hint| format!("; {hint}"))
                    .unwrap_or_default();
                self.error(
                    root.pos,
                    None,
                    format!(
                        "the table is a mapping with a \"services:\" list, not {}{hint}",
                        root.described()
                    ),
                );
                None
            }
        }
    }

    /// The known keys of `map`; an unknown key or one given twice is reported at the key.
    /// `within` names the enclosing key for nested mappings (`rate_limit`).
    fn fields<'n>(
        &mut self,
        map: &'n Map<'n>,
        known: &[&'static str],
        svc: Option<&str>,
        within: &str,
    ) -> Fields<'n> {
        let mut found: Vec<(&'static str, &'n Node, &'n Node)> =
            Vec::with_capacity(map.entries.len());
        let mut suggested = Vec::new();
        let prefix = if within.is_empty() {
            String::new()
        } else {
            format!("key \"{within}\": ")
        };
        for (key, value) in &map.entries {
            let Some(text) = key_text(key) else {
                self.error(
                    key.pos,
                    svc,
                    format!("{prefix}a key must be a word, not {}", key.described()),
                );
                continue;
            };
            match known.iter().find(|k| **k == text) {
                Some(name) => {
                    if let Some((_, first, _)) = found.iter().find(|(n, _, _)| n == name) {
                        let line = first.pos.line;
                        self.error(
                            key.pos,
                            svc,
                            format!(
                                "{prefix}duplicate key \"{text}\" (first given on line {line})"
                            ),
                        );
                    } else {
                        found.push((name, key, value));
                    }
                }
                None => {
                    let (message, near) = unknown_key(text, known);
                    suggested.extend(near);
                    self.error(key.pos, svc, format!("{prefix}{message}"));
                }
            }
        }
        Fields { found, suggested }
    }

    /// `defaults:`: the (d) keys, checked once, located in the main file.
    fn defaults(&mut self, node: &Node) -> Common {
        let Value::Map(map) = &node.value else {
            if !node.is_null() {
                self.error(
                    node.pos,
                    None,
                    format!(
                        "key \"defaults\": write a mapping of keys (defaults: {{user: nobody}}), not {}",
                        node.described()
                    ),
                );
            }
            return Common::default();
        };
        let fields = self.fields(map, &DEFAULTS_KEYS, None, "");
        for key in OWN_KEYS {
            if let Some(value) = fields.get_even_null(key) {
                self.error(
                    value.pos,
                    None,
                    format!("key \"{key}\" cannot be set in defaults (it belongs to one service)"),
                );
            }
        }
        self.common(&fields, None)
    }

    /// An included file: a `services:` list and nothing else; `defaults:` of the main file apply.
    fn included(&mut self, text: &str, defaults: &Common) -> Vec<ServiceSpec> {
        let document = self.document(text);
        let (fields, complete) = self.top(&document, text, INCLUDED_KEYS);
        let complete = complete && !fields.misspelt("services");
        self.services(fields.get("services"), complete, defaults)
    }

    /// The top-level keys of a file, and whether its mapping was read whole (a syntax error
    /// cuts it short: a key it lacks may simply come later).
    fn top<'d>(
        &mut self,
        document: &'d yaml::Document<'d>,
        text: &str,
        known: &[&'static str],
    ) -> (Fields<'d>, bool) {
        static EMPTY: Map = Map {
            entries: Vec::new(),
            complete: true,
        };
        let root = document.root.as_ref();
        // After a syntax error, that error is the complaint: not also "not a mapping".
        let map = match root {
            Some(root) if document.error.is_none() => self.root(root, text),
            Some(Node {
                value: Value::Map(map),
                ..
            }) => Some(map),
            _ => None,
        };
        match map {
            Some(map) => (self.fields(map, known, None, ""), map.complete),
            // An empty file lacks `services:`; one that is not a mapping was said to be so.
            None => (
                self.fields(&EMPTY, known, None, ""),
                document.error.is_none() && root.is_none_or(Node::is_null),
            ),
        }
    }

    /// A `services:` list; a missing one is an error (an empty one is not).
    fn services(
        &mut self,
        list: Option<&Node>,
        complete: bool,
        defaults: &Common,
    ) -> Vec<ServiceSpec> {
        let Some(list) = list else {
            if complete {
                self.errors.push(ConfigError {
                    file: self.file.to_string(),
                    pos: None,
                    service: None,
                    message: "missing key \"services\" (an empty list `services: []` is allowed)"
                        .to_string(),
                });
            }
            return Vec::new();
        };
        let Value::List(entries) = &list.value else {
            self.error(
                list.pos,
                None,
                format!(
                    "key \"services\": write a list of services (services: [] or lines starting with \"- name:\"), not {}",
                    list.described()
                ),
            );
            return Vec::new();
        };
        entries
            .iter()
            .enumerate()
            .filter_map(|(index, entry)| self.service(index, entry, defaults))
            .collect()
    }

    fn service(&mut self, index: usize, entry: &Node, defaults: &Common) -> Option<ServiceSpec> {
        // What messages call an entry without a name; made only when one is needed.
        let label = || format!("#{}", index + 1);
        let Value::Map(map) = &entry.value else {
            self.error(
                entry.pos,
                Some(&label()),
                format!(
                    "each service is a mapping of keys (- name: hello, port: …), not {}",
                    entry.described()
                ),
            );
            return None;
        };
        let errors_before = self.errors.len();
        let complete = map.complete;
        let entry_pos = entry.pos;
        // The name first, so that every message about this entry can carry it.
        let name_node = map
            .entries
            .iter()
            .find(|(key, value)| key_text(key) == Some("name") && !value.is_null())
            .map(|(_, value)| value);
        let name: Cow<'_, str> = match name_node {
            Some(node) => match node.scalar() {
                Some(scalar) => {
                    let name = &*scalar.text;
                    if !valid_name(name) {
                        self.error(
                            node.pos,
                            Some(name),
                            "key \"name\": must match [A-Za-z0-9][A-Za-z0-9._-]{0,63}",
                        );
                    }
                    self.names.push(Named {
                        name: name.to_string(),
                        file: self.file_index,
                        pos: entry_pos,
                    });
                    Cow::Borrowed(name)
                }
                None => {
                    let label = label();
                    // Says what the name should have been.
                    self.text(node, Some(&label), "name");
                    Cow::Owned(label)
                }
            },
            None => Cow::Owned(label()),
        };
        let svc = Some(&*name);
        let fields = self.fields(map, &SERVICE_KEYS, svc, "");
        if name_node.is_none() && complete && !fields.misspelt("name") {
            self.error(entry_pos, svc, "missing key \"name\"");
        }

        let protocol = match fields.get("protocol") {
            None => Protocol::Tcp,
            Some(node) => match self.text(node, svc, "protocol") {
                Some("tcp") | None => Protocol::Tcp,
                Some("udp") => Protocol::Udp,
                Some("unix") => Protocol::Unix,
                Some("none") => Protocol::None,
                Some(other) => {
                    self.error(
                        node.pos,
                        svc,
                        format!("key \"protocol\": \"{other}\" is not one of tcp, udp, unix, none"),
                    );
                    Protocol::Tcp
                }
            },
        };
        let respawn = self.flag(&fields, "respawn", svc).unwrap_or(false);
        if protocol == Protocol::None
            && !respawn
            && let Some(pos) = fields.pos("protocol")
        {
            self.error(
                pos,
                svc,
                "key \"protocol\": none is for supervised services (add respawn: true)",
            );
        }
        let handler = self.handler(&fields, entry_pos, svc, complete);
        let builtin = handler_builtin(&handler);
        if let (Some(which), Some(pos)) = (builtin, fields.pos("builtin")) {
            match (which, protocol) {
                _ if respawn => self.error(
                    pos,
                    svc,
                    "key \"builtin\": a supervised service (respawn: true) runs a program: set \"server\"",
                ),
                (Builtin::Metrics, Protocol::Udp) => self.error(
                    pos,
                    svc,
                    "key \"builtin\": metrics is served over tcp and unix only",
                ),
                (Builtin::Metrics, _) => {}
                (_, Protocol::Unix | Protocol::None) => self.error(
                    pos,
                    svc,
                    "key \"builtin\": builtins are served over tcp and udp only (metrics: tcp and unix)",
                ),
                _ => {}
            }
        }
        let given_wait = self.flag(&fields, "wait", svc);
        let wait_pos = fields.pos("wait");
        let wait = if protocol == Protocol::None {
            false
        } else if respawn {
            if let (Some(false), Some(pos)) = (given_wait, wait_pos) {
                self.error(
                    pos,
                    svc,
                    "key \"wait\": a supervised service with a socket is wait: true (its program accepts the clients itself)",
                );
            }
            true
        } else if builtin.is_some() {
            if let (Some(true), Some(pos)) = (given_wait, wait_pos) {
                self.error(
                    pos,
                    svc,
                    "key \"wait\": a builtin is served inside rinetd; wait: true does not apply",
                );
            }
            false
        } else {
            given_wait.unwrap_or(protocol == Protocol::Udp)
        };
        let shape = Shape {
            protocol,
            builtin: builtin.is_some(),
            wait,
            supervised: respawn,
        };
        let refused = self.reject_inapplicable(&fields, svc, shape);
        // A key refused for this kind of service is not checked further: one message about it.
        let fields = fields.without(&refused);
        let notify = self.flag(&fields, "notify", svc).unwrap_or(false);
        if notify
            && !respawn
            && let Some(pos) = fields.pos("notify")
        {
            self.error(
                pos,
                svc,
                "key \"notify\": only for supervised services (respawn: true)",
            );
        }

        let (addresses, port, port_pos, port_from_name, unix) = match protocol {
            Protocol::Unix => {
                let unix = self.unix_socket(&fields, entry_pos, svc, complete);
                (Vec::new(), PortSpec::Number(0), entry_pos, false, unix)
            }
            Protocol::None => (Vec::new(), PortSpec::Number(0), entry_pos, false, None),
            Protocol::Tcp | Protocol::Udp => {
                let addresses = self.addresses(fields.get("address"), svc);
                match fields.get("port") {
                    Some(node) => (addresses, self.port(node, svc), node.pos, false, None),
                    None => (
                        addresses,
                        PortSpec::Name(name.to_string()),
                        entry_pos,
                        true,
                        None,
                    ),
                }
            }
        };

        let own = self.common(&fields, svc);
        if own.stderr == Some(StderrMode::Socket)
            && protocol == Protocol::None
            && let Some(pos) = fields.pos("stderr")
        {
            self.error(
                pos,
                svc,
                "key \"stderr\": protocol none has no socket (log or null)",
            );
        }
        if own.proxy_protocol == Some(true)
            && !shape.tcp_nowait()
            && !shape.supervised
            && let Some(pos) = fields.pos("proxy_protocol")
        {
            self.error(
                pos,
                svc,
                "key \"proxy_protocol\": only for tcp services with wait: false",
            );
        }
        let tls = match fields.get("tls") {
            Some(node) if shape.tcp_nowait() => self.tls(node, svc),
            Some(node) => {
                if !shape.supervised {
                    self.error(
                        node.pos,
                        svc,
                        "key \"tls\": only for tcp services with wait: false",
                    );
                }
                None
            }
            None => None,
        };
        let disabled = self.flag(&fields, "disabled", svc).unwrap_or(false);
        let given = own.over(defaults);

        if self.errors.len() > errors_before || !complete {
            return None;
        }
        let program = shape.runs_program();
        let stderr = match given.stderr.unwrap_or(StderrMode::Log) {
            StderrMode::Socket if protocol == Protocol::None => StderrMode::Log,
            mode if program => mode,
            _ => StderrMode::Log,
        };
        Some(ServiceSpec {
            file: self.file.to_string(),
            name: name.into_owned(),
            pos: entry_pos,
            protocol,
            addresses,
            port,
            port_pos,
            port_from_name,
            unix,
            handler,
            wait,
            proxy_protocol: shape.tcp_nowait() && given.proxy_protocol.unwrap_or(false),
            user: given.user.filter(|_| program),
            group: given.group.filter(|_| program),
            env: given.env.filter(|_| program).unwrap_or_default(),
            pass_env: given.pass_env.filter(|_| program).unwrap_or_default(),
            cwd: given
                .cwd
                .filter(|_| program)
                .unwrap_or_else(|| PathBuf::from("/")),
            stderr,
            max_children: if shape.supervised {
                0
            } else {
                given.max_children.unwrap_or(DEFAULT_MAX_CHILDREN)
            },
            per_source: given
                .per_source
                .filter(|_| shape.sees_clients())
                .unwrap_or(0),
            rate_limit: given.rate_limit.filter(|_| shape.rate_limited()),
            only_from: given
                .only_from
                .filter(|_| shape.sees_clients())
                .unwrap_or_default(),
            no_access: given
                .no_access
                .filter(|_| shape.sees_clients())
                .unwrap_or_default(),
            timeout: given
                .timeout
                .flatten()
                .filter(|_| program && !shape.supervised),
            rlimits: given.rlimits.filter(|_| program).unwrap_or_default(),
            nice: given.nice.filter(|_| program),
            umask: given.umask.filter(|_| program).unwrap_or(DEFAULT_UMASK),
            backlog: given.backlog.unwrap_or(DEFAULT_BACKLOG),
            keepalive: shape.keepalive() && given.keepalive.unwrap_or(false),
            disabled,
            respawn,
            notify: respawn && notify,
            respawn_max_delay: given.respawn_max_delay.unwrap_or(RESTART_MAX_DELAY),
            per_source_rate: given.per_source_rate.filter(|_| shape.counts_sources()),
            source_prefix: given
                .source_prefix
                .filter(|_| shape.counts_sources())
                .unwrap_or_default(),
            tls,
        })
    }

    /// Keys set on a service whose kind has nothing for them to act on: accepting them would
    /// let an operator believe, say, that a UNIX socket is access-controlled. (From
    /// `defaults:` they simply apply where they can.) Each key is refused once, for the first
    /// reason that fits.
    fn reject_inapplicable(
        &mut self,
        fields: &Fields<'_>,
        svc: Option<&str>,
        shape: Shape,
    ) -> Vec<&'static str> {
        let mut refused: Vec<&'static str> = Vec::new();
        let mut refuse = |this: &mut Self, keys: &[&'static str], why: &str| {
            for key in keys {
                // `disabled: false`-style nulls were dropped by `pos`; `stderr: null` is a value.
                let pos = if *key == "stderr" {
                    fields.get_even_null(key).map(|value| value.pos)
                } else {
                    fields.pos(key)
                };
                if let Some(pos) = pos
                    && !refused.contains(key)
                {
                    refused.push(key);
                    this.error(pos, svc, format!("key \"{key}\": {why}"));
                }
            }
        };
        let client_keys = ["only_from", "no_access", "per_source", "keepalive"];
        let source_keys = ["per_source_rate", "source_prefix"];
        if shape.protocol == Protocol::None {
            refuse(
                self,
                &[
                    "address",
                    "port",
                    "path",
                    "socket_mode",
                    "wait",
                    "backlog",
                    "keepalive",
                ],
                "not for protocol none (it has no socket)",
            );
        }
        if shape.supervised {
            refuse(
                self,
                &[
                    "max_children",
                    "per_source",
                    "per_source_rate",
                    "source_prefix",
                    "rate_limit",
                    "only_from",
                    "no_access",
                    "proxy_protocol",
                    "tls",
                    "timeout",
                ],
                "does not apply to a supervised service (respawn: true)",
            );
        }
        if matches!(shape.protocol, Protocol::Tcp | Protocol::Unix) && shape.wait {
            let why = "does not apply to wait: true (the handler accepts its clients itself)";
            refuse(self, &client_keys, why);
            refuse(self, &["rate_limit"], why);
            refuse(self, &source_keys, why);
        } else if shape.protocol == Protocol::Unix {
            let why = "does not apply to protocol unix (a client has no address)";
            refuse(self, &client_keys, why);
            refuse(self, &source_keys, why);
        }
        if shape.protocol == Protocol::Udp {
            refuse(
                self,
                &["keepalive", "backlog"],
                "does not apply to protocol udp (no connections)",
            );
            if shape.wait {
                refuse(
                    self,
                    &source_keys,
                    "does not apply to wait: true (the handler receives the datagrams itself)",
                );
            }
        }
        if shape.builtin {
            refuse(
                self,
                &[
                    "user", "group", "env", "pass_env", "cwd", "stderr", "rlimits", "nice",
                    "umask", "timeout",
                ],
                "does not apply to a builtin (it runs inside rinetd, no process)",
            );
        }
        if shape.protocol != Protocol::Unix {
            let why = if shape.protocol == Protocol::None {
                "not for protocol none (it has no socket)"
            } else {
                "only for protocol unix"
            };
            refuse(self, &["path", "socket_mode"], why);
        } else {
            refuse(
                self,
                &["address", "port"],
                "not for protocol unix (use \"path\")",
            );
        }
        refused
    }

    /// Exactly one of `server` (with optional `args`) and `builtin`.
    fn handler(
        &mut self,
        fields: &Fields<'_>,
        entry_pos: Pos,
        svc: Option<&str>,
        complete: bool,
    ) -> Handler {
        let fallback = Handler::Builtin(Builtin::Echo);
        match (fields.get("server"), fields.get("builtin")) {
            (Some(_), Some(builtin)) => {
                self.error(
                    builtin.pos,
                    svc,
                    "keys \"server\" and \"builtin\": set exactly one of them",
                );
                fallback
            }
            (None, Some(node)) => {
                if let Some(args) = fields.get("args") {
                    self.error(args.pos, svc, "key \"args\": not for a builtin");
                }
                let Some(name) = self.text(node, svc, "builtin") else {
                    return fallback;
                };
                match Builtin::ALL.iter().find(|(known, _)| *known == name) {
                    Some((_, which)) => Handler::Builtin(*which),
                    None => {
                        let names: Vec<&str> = Builtin::ALL.iter().map(|(n, _)| *n).collect();
                        self.error(
                            node.pos,
                            svc,
                            format!(
                                "key \"builtin\": \"{name}\" is not one of {}",
                                names.join(", ")
                            ),
                        );
                        fallback
                    }
                }
            }
            (Some(node), None) => {
                let Some(server) = self.text(node, svc, "server") else {
                    return fallback;
                };
                if !server.starts_with('/') {
                    self.error(
                        node.pos,
                        svc,
                        format!("key \"server\": \"{server}\" is not an absolute path"),
                    );
                } else if server.contains('\0') {
                    self.error(node.pos, svc, "key \"server\": a NUL byte cannot be passed");
                }
                let path = PathBuf::from(&server);
                let args = match fields.get("args") {
                    Some(list) => {
                        let args = self.texts(list, svc, "args").unwrap_or_default();
                        if args.is_empty()
                            && matches!(&list.value, Value::List(items) if items.is_empty())
                        {
                            self.error(list.pos, svc, "key \"args\": must hold at least argv[0]");
                        }
                        if args.iter().any(|(arg, _)| arg.contains('\0')) {
                            self.error(list.pos, svc, "key \"args\": a NUL byte cannot be passed");
                        }
                        args.into_iter().map(|(arg, _)| arg).collect()
                    }
                    None => vec![
                        path.file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                    ],
                };
                Handler::Server {
                    path,
                    pos: node.pos,
                    args,
                }
            }
            (None, None) => {
                if complete && !fields.misspelt("server") && !fields.misspelt("builtin") {
                    self.error(entry_pos, svc, "missing key \"server\" (or \"builtin\")");
                }
                fallback
            }
        }
    }

    fn unix_socket(
        &mut self,
        fields: &Fields<'_>,
        entry_pos: Pos,
        svc: Option<&str>,
        complete: bool,
    ) -> Option<UnixSocket> {
        let Some(node) = fields.get("path") else {
            if complete && !fields.misspelt("path") {
                self.error(
                    entry_pos,
                    svc,
                    "missing key \"path\" (required for protocol unix)",
                );
            }
            return None;
        };
        let path = self.text(node, svc, "path")?;
        if !path.starts_with('/') {
            self.error(node.pos, svc, "key \"path\": must be an absolute path");
        }
        let mode = fields
            .get("socket_mode")
            .and_then(|mode| self.octal(mode, svc, "socket_mode"))
            .unwrap_or(DEFAULT_SOCKET_MODE);
        Some(UnixSocket {
            path: PathBuf::from(path),
            pos: node.pos,
            mode,
        })
    }

    /// Every (d) key present in `fields`, each checked.
    fn common(&mut self, fields: &Fields<'_>, svc: Option<&str>) -> Common {
        let mut common = Common::default();
        if let Some(node) = fields.get("user") {
            common.user = self
                .id_spec(node, svc, "user")
                .map(|id| (id, self.place(node.pos)));
        }
        if let Some(node) = fields.get("group") {
            common.group = self
                .id_spec(node, svc, "group")
                .map(|id| (id, self.place(node.pos)));
        }
        if let Some(node) = fields.get("env") {
            common.env = self.env(node, svc);
        }
        if let Some(node) = fields.get("pass_env") {
            common.pass_env = self.texts(node, svc, "pass_env").map(|names| {
                for (name, pos) in &names {
                    if name.is_empty() || name.contains('=') || name.contains('\0') {
                        self.error(
                            *pos,
                            svc,
                            format!("key \"pass_env\": \"{name}\" is not a valid variable name"),
                        );
                    }
                }
                names.into_iter().map(|(name, _)| name).collect()
            });
        }
        if let Some(node) = fields.get("cwd") {
            common.cwd = self.text(node, svc, "cwd").and_then(|cwd| {
                if cwd.starts_with('/') && !cwd.contains('\0') {
                    Some(PathBuf::from(cwd))
                } else {
                    self.error(node.pos, svc, "key \"cwd\": must be an absolute path");
                    None
                }
            });
        }
        if let Some(node) = fields.get_even_null("stderr") {
            common.stderr = match node.scalar().map(|s| &*s.text) {
                _ if node.is_null() => Some(StderrMode::Null),
                Some("null") => Some(StderrMode::Null),
                Some("log") => Some(StderrMode::Log),
                Some("socket") => Some(StderrMode::Socket),
                _ => {
                    self.error(
                        node.pos,
                        svc,
                        format!(
                            "key \"stderr\": {} is not one of log, socket, null",
                            node.described()
                        ),
                    );
                    None
                }
            };
        }
        if let Some(node) = fields.get("max_children") {
            common.max_children = self.count(node, svc, "max_children");
        }
        if let Some(node) = fields.get("per_source") {
            common.per_source = self.count(node, svc, "per_source");
        }
        if let Some(node) = fields.get("per_source_rate") {
            common.per_source_rate = self.source_rate(node, svc);
        }
        if let Some(node) = fields.get("source_prefix") {
            common.source_prefix = self.source_prefix(node, svc);
        }
        if let Some(node) = fields.get("rate_limit") {
            common.rate_limit = self.rate_limit(node, svc);
        }
        if let Some(node) = fields.get("only_from") {
            common.only_from = self.networks(node, svc, "only_from");
        }
        if let Some(node) = fields.get("no_access") {
            common.no_access = self.networks(node, svc, "no_access");
        }
        if let Some(node) = fields.get("timeout") {
            common.timeout = self
                .duration(node, svc, "timeout")
                .map(|t| Some(t).filter(|t| !t.is_zero()));
        }
        if let Some(node) = fields.get("rlimits") {
            common.rlimits = self.rlimits(node, svc);
        }
        if let Some(node) = fields.get("nice") {
            common.nice = self.int(node, svc, "nice").and_then(|nice| {
                if (-20..=19).contains(&nice) {
                    Some(nice as i32)
                } else {
                    self.error(node.pos, svc, "key \"nice\": must be between -20 and 19");
                    None
                }
            });
        }
        if let Some(node) = fields.get("umask") {
            common.umask = self.octal(node, svc, "umask");
        }
        if let Some(node) = fields.get("backlog") {
            common.backlog = self.int(node, svc, "backlog").and_then(|backlog| {
                if (1..=65535).contains(&backlog) {
                    Some(backlog as u32)
                } else {
                    self.error(
                        node.pos,
                        svc,
                        "key \"backlog\": must be between 1 and 65535",
                    );
                    None
                }
            });
        }
        if let Some(node) = fields.get("keepalive") {
            common.keepalive = self.boolean(node, svc, "keepalive");
        }
        if let Some(node) = fields.get("proxy_protocol") {
            common.proxy_protocol = self.boolean(node, svc, "proxy_protocol");
        }
        if let Some(node) = fields.get("respawn_max_delay") {
            common.respawn_max_delay =
                self.duration(node, svc, "respawn_max_delay")
                    .and_then(|delay| {
                        if delay.is_zero() {
                            self.error(
                                node.pos,
                                svc,
                                "key \"respawn_max_delay\": must be more than 0",
                            );
                            None
                        } else {
                            Some(delay)
                        }
                    });
        }
        common
    }

    // ----- values ------------------------------------------------------------------------

    /// A boolean key of `fields`, if set.
    fn flag(&mut self, fields: &Fields<'_>, key: &str, svc: Option<&str>) -> Option<bool> {
        let node = fields.get(key)?;
        self.boolean(node, svc, key)
    }

    /// Any scalar, as text (`name: 12` is the name "12"), borrowed: most values are read
    /// and checked, not kept.
    fn text<'n>(&mut self, node: &'n Node<'_>, svc: Option<&str>, key: &str) -> Option<&'n str> {
        match &node.value {
            Value::Scalar(scalar) => Some(&scalar.text),
            _ => {
                self.error(
                    node.pos,
                    svc,
                    format!(
                        "key \"{key}\": expected a single value, not {}",
                        node.described()
                    ),
                );
                None
            }
        }
    }

    fn int(&mut self, node: &Node, svc: Option<&str>, key: &str) -> Option<i64> {
        let parsed = node.scalar().and_then(|scalar| parse_int(&scalar.text));
        if parsed.is_none() {
            self.error(
                node.pos,
                svc,
                format!(
                    "key \"{key}\": expected an integer, not {}",
                    node.described()
                ),
            );
        }
        parsed
    }

    fn boolean(&mut self, node: &Node, svc: Option<&str>, key: &str) -> Option<bool> {
        let text = node.scalar().map(|scalar| &*scalar.text);
        match text {
            Some("true" | "True" | "TRUE") => Some(true),
            Some("false" | "False" | "FALSE") => Some(false),
            _ => {
                let why = match text {
                    Some("yes" | "no" | "on" | "off" | "y" | "n" | "Yes" | "No" | "On" | "Off") => {
                        " (YAML 1.2 reads yes, no, on and off as text)"
                    }
                    _ => "",
                };
                self.error(
                    node.pos,
                    svc,
                    format!(
                        "key \"{key}\": expected true or false, not {}{why}",
                        node.described()
                    ),
                );
                None
            }
        }
    }

    /// A list; text where a list belongs gets the list it probably meant, ready to paste.
    fn list<'n>(
        &mut self,
        node: &'n Node<'n>,
        svc: Option<&str>,
        key: &str,
    ) -> Option<&'n [Node<'n>]> {
        match &node.value {
            Value::List(items) => Some(items),
            Value::Scalar(scalar) => {
                let items: Vec<String> = scalar
                    .text
                    .split(|c: char| c.is_whitespace() || c == ',')
                    .filter(|word| !word.is_empty())
                    .map(yaml_scalar)
                    .collect();
                self.error(
                    node.pos,
                    svc,
                    format!("key \"{key}\": write a list: {key}: [{}]", items.join(", ")),
                );
                None
            }
            Value::Map(_) => {
                self.error(
                    node.pos,
                    svc,
                    format!("key \"{key}\": write a list: {key}: [a, b], not a mapping"),
                );
                None
            }
        }
    }

    /// A list of texts, each with its position.
    fn texts(&mut self, node: &Node, svc: Option<&str>, key: &str) -> Option<Vec<(String, Pos)>> {
        let items = self.list(node, svc, key)?;
        let mut texts = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            match item.scalar() {
                Some(scalar) if !item.is_null() => texts.push((scalar.text.to_string(), item.pos)),
                _ => {
                    self.error(
                        item.pos,
                        svc,
                        format!(
                            "key \"{key}\": each entry is a single value, not {}",
                            item.described()
                        ),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(texts)
    }

    fn mapping<'n>(
        &mut self,
        node: &'n Node<'n>,
        svc: Option<&str>,
        key: &str,
        example: &str,
    ) -> Option<&'n Map<'n>> {
        match &node.value {
            Value::Map(map) => Some(map),
            _ => {
                self.error(
                    node.pos,
                    svc,
                    format!(
                        "key \"{key}\": write a mapping: {key}: {example}, not {}",
                        node.described()
                    ),
                );
                None
            }
        }
    }

    /// `env`: a mapping of NAME: value. `FOO=bar` (shell style) gets the YAML form to write.
    fn env(&mut self, node: &Node, svc: Option<&str>) -> Option<BTreeMap<String, String>> {
        let shell_style = |this: &mut Self, text: &str, pos: Pos| {
            let (name, value) = text.split_once('=').unwrap_or((text, ""));
            this.error(
                pos,
                svc,
                format!(
                    "key \"env\": write {}: {}, not {text} (env is a mapping of NAME: value)",
                    yaml_scalar(name.trim()),
                    yaml_scalar(value.trim())
                ),
            );
        };
        let map = match &node.value {
            Value::Map(map) => map,
            Value::List(items) => {
                for item in items {
                    match item.scalar() {
                        Some(scalar) if scalar.text.contains('=') => {
                            shell_style(self, &scalar.text, item.pos)
                        }
                        _ => self.error(
                            item.pos,
                            svc,
                            "key \"env\": env is a mapping of NAME: value, not a list",
                        ),
                    }
                }
                return None;
            }
            Value::Scalar(scalar) if scalar.text.contains('=') => {
                shell_style(self, &scalar.text, node.pos);
                return None;
            }
            Value::Scalar(_) => {
                self.mapping(node, svc, "env", "{NAME: value}");
                return None;
            }
        };
        let mut env = BTreeMap::new();
        let mut ok = true;
        for (key, value) in &map.entries {
            let name = key_text(key).unwrap_or_default();
            if value.is_null() && name.contains('=') {
                shell_style(self, name, key.pos);
                ok = false;
                continue;
            }
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                self.error(
                    key.pos,
                    svc,
                    format!("key \"env\": \"{name}\" is not a valid variable name"),
                );
                ok = false;
                continue;
            }
            match value.scalar() {
                Some(_) if value.is_null() => {
                    self.error(
                        value.pos,
                        svc,
                        format!(
                            "key \"env\": \"{name}\" has no value (write {name}: \"\" for an empty one)"
                        ),
                    );
                    ok = false;
                }
                Some(scalar) if scalar.text.contains('\0') => {
                    self.error(value.pos, svc, "key \"env\": a NUL byte cannot be passed");
                    ok = false;
                }
                Some(scalar) => {
                    if env
                        .insert(name.to_string(), scalar.text.to_string())
                        .is_some()
                    {
                        self.error(
                            key.pos,
                            svc,
                            format!("key \"env\": \"{name}\" is given twice"),
                        );
                        ok = false;
                    }
                }
                None => {
                    self.error(
                        value.pos,
                        svc,
                        format!(
                            "key \"env\": the value of \"{name}\" is a single value, not {}",
                            value.described()
                        ),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(env)
    }

    /// `address`: one IP literal or a list of them.
    fn addresses(&mut self, node: Option<&Node>, svc: Option<&str>) -> Vec<IpAddr> {
        let Some(node) = node else {
            return vec![IpAddr::from([0, 0, 0, 0])];
        };
        let items: &[Node] = match &node.value {
            Value::List(items) => items,
            _ => std::slice::from_ref(node),
        };
        if items.is_empty() {
            self.error(node.pos, svc, "key \"address\": the list is empty");
        }
        // `[0.0.0.0, ::]` reads `::` as a mapping: say what to write instead.
        let misread = items.iter().any(|item| double_colon_key(item).is_some());
        if misread {
            let written: Vec<String> = items
                .iter()
                .map(|item| match (double_colon_key(item), item.scalar()) {
                    (Some(literal), _) => yaml_scalar(&literal),
                    (None, Some(scalar)) => yaml_scalar(&scalar.text),
                    (None, None) => "…".to_string(),
                })
                .collect();
            self.error(
                node.pos,
                svc,
                format!(
                    "key \"address\": quote IPv6 addresses that start with \":\": address: [{}] (unquoted, YAML reads :: as a key)",
                    written.join(", ")
                ),
            );
            return Vec::new();
        }
        let mut addresses = Vec::with_capacity(items.len());
        // A set beside the list: checking the list for repeats would be quadratic. One address
        // (nearly every service) cannot repeat: no set to make.
        let mut seen = HashSet::new();
        let single = items.len() == 1;
        for item in items {
            let Some(scalar) = item.scalar().filter(|_| !item.is_null()) else {
                self.error(
                    item.pos,
                    svc,
                    format!(
                        "key \"address\": expected an IP address, not {}",
                        item.described()
                    ),
                );
                continue;
            };
            let text = &scalar.text;
            let literal = text.trim_start_matches('[').trim_end_matches(']');
            match literal.parse::<IpAddr>() {
                Ok(ip) if !single && !seen.insert(ip) => self.error(
                    item.pos,
                    svc,
                    format!("key \"address\": \"{text}\" is listed twice"),
                ),
                Ok(ip) => addresses.push(ip),
                Err(_) => self.error(
                    item.pos,
                    svc,
                    format!("key \"address\": \"{text}\" is not an IP address literal"),
                ),
            }
        }
        addresses
    }

    fn port(&mut self, node: &Node, svc: Option<&str>) -> PortSpec {
        let Some(text) = self.text(node, svc, "port") else {
            return PortSpec::Number(0);
        };
        match parse_int(text) {
            Some(n) => match u16::try_from(n) {
                Ok(n) => PortSpec::Number(n),
                Err(_) => {
                    self.error(
                        node.pos,
                        svc,
                        format!("key \"port\": {n} is not in 0-65535"),
                    );
                    PortSpec::Number(0)
                }
            },
            None if text.is_empty()
                || text.chars().any(char::is_whitespace)
                || text.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '+') =>
            {
                self.error(
                    node.pos,
                    svc,
                    format!("key \"port\": \"{text}\" is not a port (0-65535 or a name in /etc/services)"),
                );
                PortSpec::Number(0)
            }
            None => PortSpec::Name(text.to_string()),
        }
    }

    fn id_spec(&mut self, node: &Node, svc: Option<&str>, key: &str) -> Option<IdSpec> {
        let text = self.text(node, svc, key)?;
        match parse_int(text) {
            Some(n) => match u32::try_from(n) {
                Ok(id) => Some(IdSpec::Id(id)),
                Err(_) => {
                    self.error(
                        node.pos,
                        svc,
                        format!("key \"{key}\": {n} is not a valid id"),
                    );
                    None
                }
            },
            None if text.is_empty() || text.contains('\0') => {
                self.error(
                    node.pos,
                    svc,
                    format!("key \"{key}\": \"{text}\" is not a name"),
                );
                None
            }
            None => Some(IdSpec::Name(text.to_string())),
        }
    }

    fn count(&mut self, node: &Node, svc: Option<&str>, key: &str) -> Option<u32> {
        let n = self.int(node, svc, key)?;
        match u32::try_from(n) {
            Ok(n) => Some(n),
            Err(_) => {
                self.error(
                    node.pos,
                    svc,
                    format!("key \"{key}\": must be between 0 and {}", u32::MAX),
                );
                None
            }
        }
    }

    /// `max` of `rate_limit` and `per_source_rate`: at least 1.
    fn at_least_one(&mut self, node: &Node, svc: Option<&str>, key: &str) -> Option<u32> {
        let n = self.int(node, svc, key)?;
        match u32::try_from(n) {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                self.error(node.pos, svc, format!("key \"{key}\": must be at least 1"));
                None
            }
        }
    }

    fn rate_limit(&mut self, node: &Node, svc: Option<&str>) -> Option<RateLimit> {
        let example = "{max: 10, per: 1s, pause: 10s}";
        let map = self.mapping(node, svc, "rate_limit", example)?;
        let fields = self.fields(map, RATE_LIMIT_KEYS, svc, "rate_limit");
        let part = |this: &mut Self, name: &str| match fields.get(name) {
            Some(value) => Some(value),
            None if fields.misspelt(name) => None,
            None => {
                this.error(
                    node.pos,
                    svc,
                    format!("key \"rate_limit\": missing \"{name}\" (rate_limit: {example})"),
                );
                None
            }
        };
        let max = part(self, "max");
        let per = part(self, "per");
        let pause = part(self, "pause");
        let max = max.and_then(|max| self.at_least_one(max, svc, "rate_limit.max"));
        let per = per.and_then(|per| self.positive_duration(per, svc, "rate_limit.per"));
        let pause = pause.and_then(|pause| self.duration(pause, svc, "rate_limit.pause"));
        Some(RateLimit {
            max: max?,
            per: per?,
            pause: pause?,
        })
    }

    fn source_rate(&mut self, node: &Node, svc: Option<&str>) -> Option<SourceRate> {
        let example = "{max: 20, per: 1m}";
        let map = self.mapping(node, svc, "per_source_rate", example)?;
        let fields = self.fields(map, SOURCE_RATE_KEYS, svc, "per_source_rate");
        let part = |this: &mut Self, name: &str| match fields.get(name) {
            Some(value) => Some(value),
            None if fields.misspelt(name) => None,
            None => {
                this.error(
                    node.pos,
                    svc,
                    format!(
                        "key \"per_source_rate\": missing \"{name}\" (per_source_rate: {example})"
                    ),
                );
                None
            }
        };
        let max = part(self, "max");
        let per = part(self, "per");
        let max = max.and_then(|max| self.at_least_one(max, svc, "per_source_rate.max"));
        let per = per.and_then(|per| self.positive_duration(per, svc, "per_source_rate.per"));
        Some(SourceRate {
            max: max?,
            per: per?,
        })
    }

    fn source_prefix(&mut self, node: &Node, svc: Option<&str>) -> Option<SourcePrefix> {
        let map = self.mapping(node, svc, "source_prefix", "{ipv4: 32, ipv6: 64}")?;
        let fields = self.fields(map, SOURCE_PREFIX_KEYS, svc, "source_prefix");
        let mut prefix = SourcePrefix::default();
        let mut ok = true;
        for (name, most, slot) in [
            ("ipv4", 32, &mut prefix.ipv4),
            ("ipv6", 128, &mut prefix.ipv6),
        ] {
            let Some(value) = fields.get(name) else {
                continue;
            };
            let key = format!("source_prefix.{name}");
            match self.int(value, svc, &key) {
                Some(n) if (0..=most).contains(&n) => *slot = n as u8,
                Some(_) => {
                    self.error(
                        value.pos,
                        svc,
                        format!("key \"{key}\": must be between 0 and {most}"),
                    );
                    ok = false;
                }
                None => ok = false,
            }
        }
        ok.then_some(prefix)
    }

    fn duration(&mut self, node: &Node, svc: Option<&str>, key: &str) -> Option<Duration> {
        let parsed = node
            .scalar()
            .and_then(|scalar| match parse_int(&scalar.text) {
                Some(n) => u64::try_from(n).ok().map(Duration::from_secs),
                None => parse_duration(&scalar.text),
            });
        let Some(parsed) = parsed else {
            self.error(
                node.pos,
                svc,
                format!(
                    "key \"{key}\": not a duration (seconds, or a number with ms, s, m or h), but {}",
                    node.described()
                ),
            );
            return None;
        };
        // Far beyond any sensible setting, and far below what a clock can add without overflow.
        if parsed > MAX_DURATION {
            self.error(
                node.pos,
                svc,
                format!("key \"{key}\": longer than 365 days"),
            );
            return None;
        }
        Some(parsed)
    }

    fn positive_duration(&mut self, node: &Node, svc: Option<&str>, key: &str) -> Option<Duration> {
        let duration = self.duration(node, svc, key)?;
        if duration.is_zero() {
            self.error(node.pos, svc, format!("key \"{key}\": must be more than 0"));
            return None;
        }
        Some(duration)
    }

    fn networks(&mut self, node: &Node, svc: Option<&str>, key: &str) -> Option<Vec<IpNet>> {
        let items = self.texts(node, svc, key)?;
        let mut nets = Vec::with_capacity(items.len());
        let mut ok = true;
        for (text, pos) in items {
            match parse_network(&text) {
                Some(net) => nets.push(net),
                None => {
                    self.error(
                        pos,
                        svc,
                        format!("key \"{key}\": \"{text}\" is not an IP address or CIDR"),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(nets)
    }

    fn rlimits(&mut self, node: &Node, svc: Option<&str>) -> Option<Vec<(Resource, LimitValue)>> {
        let map = self.mapping(node, svc, "rlimits", "{nofile: 1024, core: 0}")?;
        let names: Vec<&'static str> = Resource::ALL.iter().map(|(name, _)| *name).collect();
        let fields = self.fields(map, &names, svc, "rlimits");
        let mut limits = Vec::new();
        let mut ok = true;
        for (name, _, value) in &fields.found {
            let Some((_, resource)) = Resource::ALL.iter().find(|(n, _)| n == name) else {
                continue;
            };
            let limit = match value.scalar().map(|s| &*s.text) {
                Some("unlimited") => Some(None),
                Some(text) => parse_int(text)
                    .and_then(|n| u64::try_from(n).ok())
                    .map(Some),
                None => None,
            };
            match limit {
                Some(limit) => limits.push((*resource, limit)),
                None => {
                    self.error(
                        value.pos,
                        svc,
                        format!(
                            "key \"rlimits.{name}\": must be a non-negative integer or unlimited"
                        ),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(limits)
    }

    /// An octal permission value (`umask`, `socket_mode`). It must be quoted: YAML 1.2 reads an
    /// unquoted 022 as the decimal 22, so accepting it would invite the wrong mask.
    fn octal(&mut self, node: &Node, svc: Option<&str>, key: &str) -> Option<u32> {
        let scalar = match node.scalar() {
            Some(scalar) => scalar,
            None => {
                self.text(node, svc, key);
                return None;
            }
        };
        let text = &scalar.text;
        if !scalar.quoted && text.chars().all(|c| c.is_ascii_digit()) {
            self.error(
                node.pos,
                svc,
                format!(
                    "key \"{key}\": quote the octal value, e.g. {key}: \"{}\" (YAML 1.2 reads an unquoted {text} as a decimal number)",
                    if text.starts_with('0') { text.to_string() } else { format!("0{text}") }
                ),
            );
            return None;
        }
        match u32::from_str_radix(text, 8) {
            Ok(bits) if bits <= 0o777 && !text.is_empty() && !text.starts_with('+') => Some(bits),
            _ => {
                self.error(
                    node.pos,
                    svc,
                    format!("key \"{key}\": \"{text}\" is not an octal mode 000-777"),
                );
                None
            }
        }
    }

    /// `tls:` (the contract's "TLS"); its files are read by resolve, not here.
    fn tls(&mut self, node: &Node, svc: Option<&str>) -> Option<TlsSpec> {
        let map = self.mapping(node, svc, "tls", "{cert: /etc/rinetd/tls/host.pem, key: …}")?;
        let errors_before = self.errors.len();
        let fields = self.fields(map, TLS_KEYS, svc, "tls");
        let mut places = TlsPlaces {
            tls: node.pos,
            ..TlsPlaces::default()
        };
        let cert = self.required_path(&fields, "cert", "tls", node.pos, svc);
        let key = self.required_path(&fields, "key", "tls", node.pos, svc);
        places.cert = fields.pos("cert").unwrap_or(node.pos);
        places.key = fields.pos("key").unwrap_or(node.pos);
        let mut sni = Vec::new();
        if let Some(list) = fields.get("sni") {
            places.sni = Vec::new();
            for (index, entry) in self
                .list(list, svc, "tls.sni")
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                let key_name = format!("tls.sni[{index}]");
                let Some(entry_map) = self.mapping(
                    entry,
                    svc,
                    &key_name,
                    "{names: [host.example], cert: …, key: …}",
                ) else {
                    continue;
                };
                let entry_fields = self.fields(entry_map, SNI_KEYS, svc, &key_name);
                let names = match entry_fields.get("names") {
                    Some(names) => self
                        .texts(names, svc, &format!("{key_name}.names"))
                        .map(|names| names.into_iter().map(|(name, _)| name).collect()),
                    None => {
                        if !entry_fields.misspelt("names") {
                            self.error(
                                entry.pos,
                                svc,
                                format!("key \"{key_name}\": missing \"names\""),
                            );
                        }
                        None
                    }
                };
                let cert = self.required_path(&entry_fields, "cert", &key_name, entry.pos, svc);
                let key = self.required_path(&entry_fields, "key", &key_name, entry.pos, svc);
                places.sni.push([
                    entry_fields.pos("names").unwrap_or(entry.pos),
                    entry_fields.pos("cert").unwrap_or(entry.pos),
                    entry_fields.pos("key").unwrap_or(entry.pos),
                ]);
                if let (Some(names), Some(cert), Some(key)) = (names, cert, key) {
                    sni.push(SniEntry { names, cert, key });
                }
            }
        }
        let client_ca = fields
            .get("client_ca")
            .and_then(|ca| self.absolute_path(ca, svc, "tls.client_ca"));
        places.client_ca = fields.pos("client_ca").unwrap_or(node.pos);
        let alpn = match fields.get("alpn") {
            Some(list) => self
                .texts(list, svc, "tls.alpn")
                .map(|names| names.into_iter().map(|(name, _)| name).collect())
                .unwrap_or_default(),
            None => Vec::new(),
        };
        places.alpn = fields.pos("alpn").unwrap_or(node.pos);
        let min_version = match fields.get("min_version") {
            None => MinVersion::V12,
            Some(version) => {
                match self.text(version, svc, "tls.min_version") {
                    Some("1.2") | None => MinVersion::V12,
                    Some("1.3") => MinVersion::V13,
                    Some(other) => {
                        self.error(
                        version.pos,
                        svc,
                        format!("key \"tls.min_version\": \"{other}\" is not one of \"1.2\", \"1.3\""),
                    );
                        MinVersion::V12
                    }
                }
            }
        };
        let handshake_timeout = match fields.get("handshake_timeout") {
            Some(timeout) => self.positive_duration(timeout, svc, "tls.handshake_timeout"),
            None => Some(DEFAULT_HANDSHAKE_TIMEOUT),
        };
        if self.errors.len() > errors_before {
            return None;
        }
        Some(TlsSpec {
            settings: TlsSettings {
                cert: cert?,
                key: key?,
                sni,
                client_ca,
                alpn,
                min_version,
                handshake_timeout: handshake_timeout?,
            },
            places,
        })
    }

    fn required_path(
        &mut self,
        fields: &Fields<'_>,
        name: &str,
        within: &str,
        pos: Pos,
        svc: Option<&str>,
    ) -> Option<PathBuf> {
        match fields.get(name) {
            Some(node) => self.absolute_path(node, svc, &format!("{within}.{name}")),
            None if fields.misspelt(name) => None,
            None => {
                self.error(pos, svc, format!("key \"{within}\": missing \"{name}\""));
                None
            }
        }
    }

    fn absolute_path(&mut self, node: &Node, svc: Option<&str>, key: &str) -> Option<PathBuf> {
        let text = self.text(node, svc, key)?;
        if text.starts_with('/') && !text.contains('\0') {
            Some(PathBuf::from(text))
        } else {
            self.error(
                node.pos,
                svc,
                format!("key \"{key}\": must be an absolute path"),
            );
            None
        }
    }
}

/// The message for a key `known` does not hold: an xinetd attribute gets the rinetd key that
/// replaces it, a typo the nearest key (also returned).
fn unknown_key(key: &str, known: &[&'static str]) -> (String, Option<&'static str>) {
    if let Some(replacement) = crate::compat::replacement_for_xinetd_key(key) {
        let message =
            format!("unknown key \"{key}\" (an xinetd attribute; rinetd's key is {replacement})");
        return (message, None);
    }
    match nearest(key, known) {
        Some(near) => (
            format!("unknown key \"{key}\" (did you mean \"{near}\"?)"),
            Some(near),
        ),
        None => (
            format!("unknown key \"{key}\" (valid keys: {})", known.join(", ")),
            None,
        ),
    }
}

fn handler_builtin(handler: &Handler) -> Option<Builtin> {
    match handler {
        Handler::Builtin(builtin) => Some(*builtin),
        Handler::Server { .. } => None,
    }
}

/// `::` in a flow list reads as the mapping `{":": null}` (and `::x` as `{":": "x"}`): the
/// address that was meant, if `item` is one of those.
fn double_colon_key(item: &Node) -> Option<String> {
    let Value::Map(map) = &item.value else {
        return None;
    };
    let [(key, value)] = map.entries.as_slice() else {
        return None;
    };
    let key = key_text(key).filter(|key| key.starts_with(':'))?;
    Some(match value.scalar() {
        Some(rest) if !value.is_null() => format!("{key}:{}", rest.text),
        _ => format!("{key}:"),
    })
}

/// The name of the service whose entry covers `line` in a (possibly partial) main or included
/// file, for a syntax error inside it.
fn service_at(root: &Node, line: u64) -> Option<String> {
    let Value::Map(map) = &root.value else {
        return None;
    };
    let (_, services) = map
        .entries
        .iter()
        .find(|(key, _)| key_text(key) == Some("services"))?;
    let Value::List(entries) = &services.value else {
        return None;
    };
    let entry = entries.iter().rev().find(|entry| entry.pos.line <= line)?;
    let Value::Map(fields) = &entry.value else {
        return None;
    };
    fields
        .entries
        .iter()
        .find(|(key, _)| key_text(key) == Some("name"))
        .and_then(|(_, value)| value.scalar())
        // A name the error cut short reads as empty: better no name than `service ""`.
        .filter(|name| !name.text.is_empty())
        .map(|name| name.text.to_string())
}

/// YAML 1.2's integers: decimal with an optional sign, `0x…` and `0o…`.
fn parse_int(text: &str) -> Option<i64> {
    if let Some(hex) = text.strip_prefix("0x") {
        i64::from_str_radix(hex, 16).ok()
    } else if let Some(octal) = text.strip_prefix("0o") {
        i64::from_str_radix(octal, 8).ok()
    } else {
        text.parse().ok()
    }
}

pub(crate) fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    first_ok
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// `30`, `500ms`, `10s`, `5m`, `1h`.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    match unit.trim() {
        "" | "s" => Some(Duration::from_secs(n)),
        "ms" => Some(Duration::from_millis(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        _ => None,
    }
}

/// `10.0.0.0/8`, `::1`, `192.168.1.7` (a bare address is a /32 or /128).
pub(crate) fn parse_network(text: &str) -> Option<IpNet> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Some(net.trunc());
    }
    text.parse::<IpAddr>().ok().map(IpNet::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match parse("t.conf", text) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    /// The errors of `text`, each starting as `expected` says, in that order.
    fn assert_errors_start_with(text: &str, expected: &[&str]) {
        let e = errors(text);
        assert_eq!(e.len(), expected.len(), "{e:#?}");
        for (got, want) in e.iter().zip(expected) {
            assert!(got.starts_with(want), "{got}\n  wanted {want}");
        }
    }

    #[test]
    fn typo_gets_a_suggestion_with_location_and_service() {
        let text = "services:\n  - name: hello\n    port: 8080\n    sever: /bin/true\n";
        assert_eq!(
            errors(text),
            ["t.conf:4:5: service \"hello\": unknown key \"sever\" (did you mean \"server\"?)"]
        );
    }

    #[test]
    fn a_misspelt_key_is_not_also_reported_missing() {
        assert_eq!(
            errors("service: []\n"),
            ["t.conf:1:1: unknown key \"service\" (did you mean \"services\"?)"]
        );
        assert_eq!(
            errors("services:\n  - name: a\n    port: 1\n    buitlin: echo\n"),
            ["t.conf:4:5: service \"a\": unknown key \"buitlin\" (did you mean \"builtin\"?)"]
        );
    }

    #[test]
    fn a_table_that_is_not_a_mapping_is_one_mistake() {
        let e = errors("echo stream tcp nowait root internal\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("t.conf:1:1: the table is a mapping"),
            "{e:?}"
        );
        assert!(e[0].contains("looks like an inetd.conf"), "{e:?}");
        assert_eq!(
            errors(""),
            ["t.conf: missing key \"services\" (an empty list `services: []` is allowed)"]
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("2x"), None);
    }

    #[test]
    fn unquoted_umask_is_refused() {
        let text = "services:\n  - name: a\n    port: 1\n    server: /bin/true\n    umask: 022\n";
        let e = errors(text);
        assert!(
            e[0].contains("t.conf:5:12") && e[0].contains("quote"),
            "{e:?}"
        );
    }

    #[test]
    fn stderr_null_in_service_beats_defaults() {
        let text = "defaults:\n  stderr: socket\nservices:\n  - name: a\n    port: 1\n    server: /bin/true\n    stderr: null\n";
        let table = parse("t.conf", text).unwrap();
        assert_eq!(table.services[0].stderr, StderrMode::Null);
    }

    #[test]
    fn type_error_names_the_key() {
        let text = "services:\n  - name: a\n    port: 1\n    server: /bin/true\n    keepalive: 3\n";
        let e = errors(text);
        assert!(e[0].contains("service \"a\": key \"keepalive\""), "{e:?}");
    }

    #[test]
    fn a_yaml_level_mistake_in_one_service_hides_nothing_in_the_others() {
        // serde stopped at the first of these: each is reported, in line order.
        let text = "services:
  - name: a
    port: 1
    server: /bin/true
    keepalive: on
  - name: b
    port: 2
    port: 3
    server: /bin/true
  - name: c
    port: 4
    sever: /bin/true
";
        let e = errors(text);
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e[0].starts_with(
                "t.conf:5:16: service \"a\": key \"keepalive\": expected true or false"
            ),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("t.conf:8:5: service \"b\": duplicate key \"port\""),
            "{e:?}"
        );
        assert!(
            e[2].starts_with("t.conf:12:5: service \"c\": unknown key \"sever\""),
            "{e:?}"
        );
    }

    #[test]
    fn a_string_where_a_list_belongs_says_which_list_to_write() {
        let text =
            "services:\n  - name: a\n    port: 1\n    server: /bin/sh\n    args: sh -c true\n";
        assert_eq!(
            errors(text),
            [
                "t.conf:5:11: service \"a\": key \"args\": write a list: args: [sh, \"-c\", \"true\"]"
            ]
        );
    }

    #[test]
    fn shell_style_env_says_to_write_a_mapping() {
        for env in ["[FOO=bar]", "FOO=bar", "\n      - FOO=bar"] {
            let text = format!(
                "services:\n  - name: a\n    port: 1\n    server: /bin/true\n    env: {env}\n"
            );
            let e = errors(&text);
            assert_eq!(e.len(), 1, "{env}: {e:?}");
            assert!(
                e[0].contains("key \"env\": write FOO: bar, not FOO=bar"),
                "{env}: {e:?}"
            );
        }
    }

    #[test]
    fn an_unquoted_ipv6_wildcard_in_a_list_says_to_quote_it() {
        let text =
            "services:\n  - name: a\n    address: [0.0.0.0, ::]\n    port: 1\n    builtin: echo\n";
        assert_eq!(
            errors(text),
            [
                "t.conf:3:14: service \"a\": key \"address\": quote IPv6 addresses that start with \":\": address: [0.0.0.0, \"::\"] (unquoted, YAML reads :: as a key)"
            ]
        );
    }

    #[test]
    fn a_syntax_error_stops_its_file_there_but_what_came_before_is_checked() {
        let text = "services:
  - name: a
    port: 1
    builtin: echo
    wait: maybe
  - name: b
    port: 2
    args: [x,
";
        let e = errors(text);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("t.conf:5:11: service \"a\": key \"wait\""),
            "{e:?}"
        );
        assert!(e[1].contains("service \"b\""), "{e:?}");
    }

    #[test]
    fn a_defaults_mistake_is_reported_once_however_many_services_take_it() {
        let mut text = String::from("defaults:\n  nice: 40\nservices:\n");
        for n in 0..5 {
            text.push_str(&format!(
                "  - {{name: s{n}, port: {n}, server: /bin/true}}\n"
            ));
        }
        assert_eq!(
            errors(&text),
            ["t.conf:2:9: key \"nice\": must be between -20 and 19"]
        );
    }

    #[test]
    fn new_keys_reach_the_spec() {
        let text = "defaults:
  per_source_rate: {max: 5, per: 1m}
  source_prefix: {ipv6: 56}
  respawn_max_delay: 2m
services:
  - name: web
    port: 1
    server: /bin/true
    nice: 0
    tls: {cert: /c.pem, key: /k.pem, alpn: [h2], min_version: 1.3, sni: [{names: [a.example], cert: /a.pem, key: /a.key}]}
  - name: keeper
    protocol: none
    respawn: true
    notify: true
    server: /bin/true
  - name: scrape
    protocol: unix
    path: /run/m.sock
    builtin: metrics
";
        let table = parse("t.conf", text).unwrap();
        let web = &table.services[0];
        assert_eq!(web.nice, Some(0));
        assert_eq!(
            web.per_source_rate,
            Some(SourceRate {
                max: 5,
                per: Duration::from_secs(60)
            })
        );
        assert_eq!(web.source_prefix, SourcePrefix { ipv4: 32, ipv6: 56 });
        assert_eq!(web.respawn_max_delay, Duration::from_secs(120));
        let tls = web.tls.as_ref().unwrap();
        assert_eq!(tls.settings.min_version, MinVersion::V13);
        assert_eq!(
            tls.places.pos(crate::tls::config::TlsKey::SniKey(0)).line,
            10
        );
        let keeper = &table.services[1];
        assert!(keeper.respawn && keeper.notify && keeper.protocol == Protocol::None);
        // A (d) key that does not apply to a kind is simply not taken by it.
        assert_eq!(keeper.per_source_rate, None);
        assert_eq!(keeper.nice, None);
        assert_eq!(
            table.services[2].handler,
            Handler::Builtin(Builtin::Metrics)
        );
    }

    #[test]
    fn supervised_services_refuse_what_does_not_apply() {
        let text = "services:
  - name: a
    respawn: true
    port: 1
    server: /bin/true
    wait: false
    max_children: 3
    tls: {cert: /c, key: /k}
  - name: b
    protocol: none
    address: 127.0.0.1
    server: /bin/true
  - name: c
    port: 2
    builtin: metrics
    protocol: udp
  - name: d
    port: 3
    server: /bin/true
    notify: true
";
        assert_errors_start_with(
            text,
            &[
                "t.conf:6:11: service \"a\": key \"wait\": a supervised service with a socket is wait: true",
                "t.conf:7:19: service \"a\": key \"max_children\": does not apply to a supervised service",
                "t.conf:8:10: service \"a\": key \"tls\": does not apply to a supervised service",
                "t.conf:10:15: service \"b\": key \"protocol\": none is for supervised services",
                "t.conf:11:14: service \"b\": key \"address\": not for protocol none",
                "t.conf:15:14: service \"c\": key \"builtin\": metrics is served over tcp and unix only",
                "t.conf:20:13: service \"d\": key \"notify\": only for supervised services",
            ],
        );
    }

    #[test]
    fn tls_keys_are_checked_where_written() {
        let text = "services:
  - name: a
    port: 1
    server: /bin/true
    tls:
      cert: relative.pem
      min_version: \"1.1\"
      handshake_timeout: 0
      sni:
        - {names: host.example, cert: /c, key: /k}
  - name: b
    protocol: udp
    port: 2
    server: /bin/true
    tls: {cert: /c, key: /k}
";
        assert_errors_start_with(
            text,
            &[
                "t.conf:6:7: service \"a\": key \"tls\": missing \"key\"",
                "t.conf:6:13: service \"a\": key \"tls.cert\": must be an absolute path",
                "t.conf:7:20: service \"a\": key \"tls.min_version\": \"1.1\" is not one of",
                "t.conf:8:26: service \"a\": key \"tls.handshake_timeout\": must be more than 0",
                "t.conf:10:19: service \"a\": key \"tls.sni[0].names\": write a list: tls.sni[0].names: [host.example]",
                "t.conf:15:10: service \"b\": key \"tls\": only for tcp services with wait: false",
            ],
        );
    }

    #[test]
    fn a_large_table_is_read_in_linear_time() {
        // Each service with a mistake: the errors must not cost more than the services.
        let mut text = String::from("services:\n");
        for n in 0..20_000 {
            text.push_str(&format!(
                "  - {{name: s{n}, port: {n}, builtin: echo, sever: x}}\n"
            ));
        }
        let started = std::time::Instant::now();
        assert_eq!(errors(&text).len(), 20_000);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn strange_tables_never_panic() {
        for text in [
            "services:",
            "services: 3",
            "services: [3]",
            "services: [{}]",
            "defaults: 1\nservices: []",
            "include: 3\nservices: []",
            "services: [{name: [a]}]",
            "services: [{name: a, env: {=: 1}}]",
            "services: [{name: a, rlimits: [1]}]",
            "services: [{name: a, tls: {sni: [1]}}]",
            "services: [{name: a, tls: {sni: 1}}]",
            "services: [{? [a] : b}]",
            "[1, 2]",
            "~",
            "services: [{name: a, port: 99999999999999999999999}]",
            "services: [{name: a, address: [{: }]}]",
        ] {
            let _ = parse("t.conf", text);
        }
    }
}
