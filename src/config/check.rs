//! Turns the raw YAML shape into a checked `Table`: every value's type, range and form, every
//! contract rule that needs no system lookup, and every message located at file:line:column.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde_saphyr::Spanned;

use super::raw::{
    NameProbe, OneOrMany, ProbeFile, RawFile, RawIncluded, RawRateLimit, RawService, Scalar,
};
use super::{
    Builtin, ConfigError, Handler, IdSpec, LimitValue, Place, PortSpec, Pos, Protocol, RateLimit,
    Resource, ServiceSpec, StderrMode, Table, UnixSocket,
};

const DEFAULT_MAX_CHILDREN: u32 = 256;
const DEFAULT_BACKLOG: u32 = 1024;
const DEFAULT_UMASK: u32 = 0o022;
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

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

/// Like `parse`, but also returns the services that passed when others did not, so that the
/// later stage (resolve) can report its errors for them in the same run.
///
/// `include` expands one `include:` entry (a path or glob, as written) into the files it names,
/// with their text, in order; it is where the filesystem is read, so this module stays pure.
pub fn parse_partial(
    file: &str,
    text: &str,
    include: &mut Includer<'_>,
) -> (Table, Vec<ConfigError>) {
    let mut table = Table {
        file: file.to_string(),
        services: Vec::new(),
    };
    let raw: RawFile = match serde_saphyr::from_str_with_options(text, yaml_options()) {
        Ok(raw) => raw,
        Err(err) => return (table, vec![syntax_error(file, text, &err)]),
    };
    let mut checker = Checker::new(file, text, file, text);
    let defaults = match raw.defaults {
        Some(defaults) => {
            checker.reject_in_defaults(&defaults);
            defaults.value
        }
        None => RawService::default(),
    };
    table.services = checker.services(raw.services, &defaults);
    let mut errors = checker.errors;
    for pattern in raw.include.iter().flat_map(|list| &list.value) {
        match include(&pattern.value) {
            Err(message) => errors.push(ConfigError {
                file: file.to_string(),
                pos: Some(pos_of(pattern)),
                service: None,
                message: format!("include \"{}\": {message}", pattern.value),
            }),
            Ok(files) => {
                for (path, included) in files {
                    let main = (file, text);
                    let (services, more) = parse_included(&path, &included, &defaults, main);
                    table.services.extend(services);
                    errors.extend(more);
                }
            }
        }
    }
    errors.extend(duplicate_names(&table.services));
    (table, without_repeats(errors))
}

/// A mistake in `defaults:` is found once per service that takes the value: report it once.
fn without_repeats(errors: Vec<ConfigError>) -> Vec<ConfigError> {
    let mut seen = std::collections::HashSet::new();
    errors
        .into_iter()
        .filter(|error| seen.insert(error.to_string()))
        .collect()
}

/// Expands an `include:` entry into (path, text) pairs, or says why it cannot.
pub type Includer<'a> = dyn FnMut(&str) -> Result<Vec<(String, String)>, String> + 'a;

fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! { strict_booleans: true }
}

/// An included file: a `services:` list and nothing else; `defaults:` of the main file apply.
fn parse_included(
    file: &str,
    text: &str,
    defaults: &RawService,
    (main_file, main_text): (&str, &str),
) -> (Vec<ServiceSpec>, Vec<ConfigError>) {
    let raw: RawIncluded = match serde_saphyr::from_str_with_options(text, yaml_options()) {
        Ok(raw) => raw,
        Err(err) => return (Vec::new(), vec![syntax_error(file, text, &err)]),
    };
    let mut checker = Checker::new(file, text, main_file, main_text);
    let services = checker.services(raw.services, defaults);
    (services, checker.errors)
}

/// Names are unique over the whole table, included files too.
fn duplicate_names(services: &[ServiceSpec]) -> Vec<ConfigError> {
    let mut first: HashMap<&str, &ServiceSpec> = HashMap::new();
    let mut errors = Vec::new();
    for service in services {
        if let Some(earlier) = first.insert(&service.name, service) {
            errors.push(ConfigError {
                file: service.file.clone(),
                pos: Some(service.pos),
                service: Some(service.name.clone()),
                message: format!(
                    "duplicate service name (first defined at {}:{})",
                    earlier.file, earlier.pos.line
                ),
            });
            first.insert(&earlier.name, earlier);
        }
    }
    errors
}

fn pos_of<T>(value: &Spanned<T>) -> Pos {
    Pos {
        line: value.referenced.line(),
        column: value.referenced.column(),
    }
}

/// A serde/YAML error rephrased for people: which service, which key, and a suggestion.
fn syntax_error(file: &str, text: &str, err: &serde_saphyr::Error) -> ConfigError {
    let pos = err.location().map(|loc| Pos {
        line: loc.line(),
        column: loc.column(),
    });
    let raw_message = err.without_snippet().to_string();
    let message = raw_message
        .rsplit_once(" at line ")
        .map_or(raw_message.as_str(), |(head, _)| head)
        .to_string();
    let service = pos.and_then(|pos| service_at(text, pos.line));
    let message = if let Some(hint) = crate::compat::hint_for_unparsable(file, text) {
        format!("{message}; {hint}")
    } else if let Some(rest) = message.strip_prefix("unknown field ") {
        unknown_key_message(rest)
    } else if let Some(rest) = message.strip_prefix("duplicate mapping key: ") {
        let key = rest.split(',').next().unwrap_or(rest).trim();
        format!("duplicate key \"{key}\"")
    } else {
        let readable = readable_type_error(&message);
        match pos.and_then(|pos| key_at(text, pos)) {
            Some(key) => format!("key \"{key}\": {readable}"),
            None => readable,
        }
    };
    ConfigError {
        file: file.to_string(),
        pos,
        service,
        message,
    }
}

/// `` `sever`, expected one of name, port `` → `unknown key "sever" (did you mean "server"?)`.
fn unknown_key_message(rest: &str) -> String {
    let (key, expected) = match rest.split_once(", expected") {
        Some((key, expected)) => (key, expected),
        None => (rest, ""),
    };
    let key = key.trim_matches(|c| c == '`' || c == '"');
    if let Some(replacement) = crate::compat::replacement_for_xinetd_key(key) {
        return format!(
            "unknown key \"{key}\" (an xinetd attribute; rinetd's key is {replacement})"
        );
    }
    let candidates: Vec<&str> = expected
        .trim_start_matches(" one of")
        .split(',')
        .map(|word| word.trim().trim_matches('`'))
        .filter(|word| !word.is_empty())
        .collect();
    // The keys serde says are valid where the mistake is (an included file takes `services`
    // only, for instance).
    let known = &candidates;
    match nearest(key, known) {
        Some(near) => format!("unknown key \"{key}\" (did you mean \"{near}\"?)"),
        None => format!("unknown key \"{key}\" (valid keys: {})", known.join(", ")),
    }
}

fn readable_type_error(message: &str) -> String {
    if message.contains("untagged enum Scalar") {
        "expected a number or a string".to_string()
    } else if message.contains("untagged enum OneOrMany") {
        "expected an IP address or a list of them".to_string()
    } else if message == "invalid boolean" {
        "expected true or false".to_string()
    } else if let Some(kind) = message.strip_prefix("invalid ") {
        if kind.starts_with('i') || kind.starts_with('u') {
            "expected an integer".to_string()
        } else {
            message.to_string()
        }
    } else {
        message.to_string()
    }
}

/// The nearest known word within a small edit distance, for "did you mean".
fn nearest<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
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

/// The mapping key that owns the value at `pos`: on the same line before the column, or on the
/// nearest line above that is indented less.
fn key_at(text: &str, pos: Pos) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let index = usize::try_from(pos.line).ok()?.checked_sub(1)?;
    let line = lines.get(index)?;
    let column = usize::try_from(pos.column).ok()?.saturating_sub(1);
    let before: String = line.chars().take(column).collect();
    if let Some(key) = key_of_line(&before) {
        return Some(key);
    }
    let indent = line.len() - line.trim_start().len();
    lines[..index]
        .iter()
        .rev()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .find(|l| l.len() - l.trim_start().len() < indent)
        .and_then(|l| key_of_line(l))
}

fn key_of_line(line: &str) -> Option<String> {
    let trimmed = line.trim_start().trim_start_matches("- ").trim_start();
    let (key, _) = trimmed.split_once(':')?;
    let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    plain.then(|| key.to_string())
}

/// The name of the service whose entry covers `line`, found by a lenient second parse.
fn service_at(text: &str, line: u64) -> Option<String> {
    let probe: ProbeFile = serde_saphyr::from_str(text).ok()?;
    let entry = probe
        .services?
        .into_iter()
        .filter(|entry| entry.referenced.line() <= line)
        .max_by_key(|entry| entry.referenced.line())?;
    match entry.value.name {
        Some(NameProbe::Text(name)) => Some(name),
        _ => None,
    }
}

struct Checker<'a> {
    file: &'a str,
    text: &'a str,
    /// The main file, where `defaults:` is written.
    defaults_file: &'a str,
    defaults_text: &'a str,
    /// The value being checked came from `defaults:`: its errors are located in the main file
    /// and belong to no one service.
    in_defaults: bool,
    errors: Vec<ConfigError>,
}

impl<'a> Checker<'a> {
    fn new(
        file: &'a str,
        text: &'a str,
        defaults_file: &'a str,
        defaults_text: &'a str,
    ) -> Checker<'a> {
        Checker {
            file,
            text,
            defaults_file,
            defaults_text,
            in_defaults: false,
            errors: Vec::new(),
        }
    }

    fn error(&mut self, pos: Pos, service: Option<&str>, message: impl Into<String>) {
        let (file, service) = if self.in_defaults {
            (self.defaults_file, None)
        } else {
            (self.file, service)
        };
        self.errors.push(ConfigError {
            file: file.to_string(),
            pos: Some(pos),
            service: service.map(str::to_string),
            message: message.into(),
        });
    }

    /// A (d) key: `check` on the service's own value, else on the one from `defaults:` (with
    /// its errors located there).
    fn pick<T, R>(
        &mut self,
        own: &Option<Spanned<T>>,
        defaults: &Option<Spanned<T>>,
        check: impl FnOnce(&mut Self, &Spanned<T>) -> R,
    ) -> Option<R> {
        match (own, defaults) {
            (Some(own), _) => Some(check(self, own)),
            (None, Some(default)) => {
                self.in_defaults = true;
                let checked = check(self, default);
                self.in_defaults = false;
                Some(checked)
            }
            (None, None) => None,
        }
    }

    /// Where a value being checked was written, for later stages' messages about it.
    fn place(&self, pos: Pos) -> Place {
        let file = if self.in_defaults {
            self.defaults_file
        } else {
            self.file
        };
        Place {
            file: file.to_string(),
            pos,
        }
    }

    /// Checks a `services:` list; a missing one is an error (an empty one is not).
    fn services(
        &mut self,
        entries: Option<Spanned<Vec<Spanned<RawService>>>>,
        defaults: &RawService,
    ) -> Vec<ServiceSpec> {
        let Some(entries) = entries else {
            self.errors.push(ConfigError {
                file: self.file.to_string(),
                pos: None,
                service: None,
                message: "missing key \"services\" (an empty list `services: []` is allowed)"
                    .to_string(),
            });
            return Vec::new();
        };
        entries
            .value
            .iter()
            .enumerate()
            .filter_map(|(index, entry)| self.service(index, entry, defaults))
            .collect()
    }

    /// Keys that describe one particular service make no sense as a default for all of them.
    fn reject_in_defaults(&mut self, defaults: &Spanned<RawService>) {
        let d = &defaults.value;
        let per_service: [(&str, Option<Pos>); 11] = [
            ("name", d.name.as_ref().map(pos_of)),
            ("protocol", d.protocol.as_ref().map(pos_of)),
            ("address", d.address.as_ref().map(pos_of)),
            ("port", d.port.as_ref().map(pos_of)),
            ("path", d.path.as_ref().map(pos_of)),
            ("socket_mode", d.socket_mode.as_ref().map(pos_of)),
            ("server", d.server.as_ref().map(pos_of)),
            ("args", d.args.as_ref().map(pos_of)),
            ("builtin", d.builtin.as_ref().map(pos_of)),
            ("wait", d.wait.as_ref().map(pos_of)),
            ("disabled", d.disabled.as_ref().map(pos_of)),
        ];
        for (key, pos) in per_service {
            if let Some(pos) = pos {
                self.error(
                    pos,
                    None,
                    format!("key \"{key}\" cannot be set in defaults (it belongs to one service)"),
                );
            }
        }
    }

    fn service(
        &mut self,
        index: usize,
        entry: &Spanned<RawService>,
        defaults: &RawService,
    ) -> Option<ServiceSpec> {
        let s = &entry.value;
        let errors_before = self.errors.len();
        let entry_pos = pos_of(entry);
        let name = match &s.name {
            Some(name) => {
                let valid = valid_name(&name.value);
                if !valid {
                    self.error(
                        pos_of(name),
                        Some(&name.value),
                        "key \"name\": must match [A-Za-z0-9][A-Za-z0-9._-]{0,63}",
                    );
                }
                name.value.clone()
            }
            None => {
                let label = format!("#{}", index + 1);
                self.error(entry_pos, Some(&label), "missing key \"name\"");
                label
            }
        };
        let svc = Some(name.as_str());

        let protocol = match &s.protocol {
            None => Protocol::Tcp,
            Some(p) => match p.value.as_str() {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                "unix" => Protocol::Unix,
                other => {
                    self.error(
                        pos_of(p),
                        svc,
                        format!("key \"protocol\": \"{other}\" is not one of tcp, udp, unix"),
                    );
                    Protocol::Tcp
                }
            },
        };
        for (key, pos) in [
            ("path", s.path.as_ref().map(pos_of)),
            ("socket_mode", s.socket_mode.as_ref().map(pos_of)),
        ] {
            if let Some(pos) = pos.filter(|_| protocol != Protocol::Unix) {
                self.error(pos, svc, format!("key \"{key}\": only for protocol unix"));
            }
        }
        let handler = self.handler(s, entry_pos, svc);
        let builtin = matches!(handler, Handler::Builtin(_));
        self.reject_inapplicable(s, svc, protocol, builtin);
        if builtin && protocol == Protocol::Unix {
            let pos = s.builtin.as_ref().map_or(entry_pos, pos_of);
            self.error(
                pos,
                svc,
                "key \"builtin\": builtins are served over tcp and udp only",
            );
        }
        let wait = match &s.wait {
            Some(wait) if wait.value && builtin => {
                self.error(
                    pos_of(wait),
                    svc,
                    "key \"wait\": a builtin is served inside rinetd; wait: true does not apply",
                );
                false
            }
            Some(wait) => wait.value,
            None => protocol == Protocol::Udp && !builtin,
        };
        // From `defaults:` it applies where it can (tcp nowait); on a service it must fit.
        let proxy_fits = protocol == Protocol::Tcp && !wait;
        let proxy_protocol = match (&s.proxy_protocol, &defaults.proxy_protocol) {
            (Some(own), _) if own.value && !proxy_fits => {
                self.error(
                    pos_of(own),
                    svc,
                    "key \"proxy_protocol\": only for tcp services with wait: false",
                );
                false
            }
            (Some(own), _) => own.value,
            (None, Some(default)) => default.value && proxy_fits,
            (None, None) => false,
        };

        let (addresses, port, port_pos, unix) = if protocol == Protocol::Unix {
            for (key, pos) in [
                ("address", s.address.as_ref().map(pos_of)),
                ("port", s.port.as_ref().map(pos_of)),
            ] {
                if let Some(pos) = pos {
                    self.error(
                        pos,
                        svc,
                        format!("key \"{key}\": not for protocol unix (use \"path\")"),
                    );
                }
            }
            let unix = self.unix_socket(s, entry_pos, svc);
            (Vec::new(), PortSpec::Number(0), entry_pos, unix)
        } else {
            let addresses = self.addresses(s, svc);
            let (port, port_pos) = match &s.port {
                Some(port) => (self.port(port, svc), pos_of(port)),
                None => (PortSpec::Name(name.clone()), entry_pos),
            };
            (addresses, port, port_pos, None)
        };

        let user = self.pick(&s.user, &defaults.user, |this, u| {
            (this.id_spec(u, svc, "user"), this.place(pos_of(u)))
        });
        let group = self.pick(&s.group, &defaults.group, |this, g| {
            (this.id_spec(g, svc, "group"), this.place(pos_of(g)))
        });
        let env = self
            .pick(&s.env, &defaults.env, |this, env| {
                for (key, value) in &env.value {
                    if key.is_empty()
                        || key.contains('=')
                        || key.contains('\0')
                        || value.contains('\0')
                    {
                        this.error(
                            pos_of(env),
                            svc,
                            format!("key \"env\": \"{key}\" is not a valid variable name"),
                        );
                    }
                }
                env.value.clone()
            })
            .unwrap_or_default();
        let pass_env = self
            .pick(&s.pass_env, &defaults.pass_env, |this, list| {
                for key in &list.value {
                    if key.is_empty() || key.contains('=') || key.contains('\0') {
                        this.error(
                            pos_of(list),
                            svc,
                            format!("key \"pass_env\": \"{key}\" is not a valid variable name"),
                        );
                    }
                }
                list.value.clone()
            })
            .unwrap_or_default();
        let cwd = self
            .pick(&s.cwd, &defaults.cwd, |this, cwd| {
                if !cwd.value.starts_with('/') {
                    this.error(pos_of(cwd), svc, "key \"cwd\": must be an absolute path");
                }
                PathBuf::from(&cwd.value)
            })
            .unwrap_or_else(|| PathBuf::from("/"));
        let stderr = self
            .pick(&s.stderr, &defaults.stderr, |this, mode| {
                match mode.value.as_deref() {
                    None | Some("null") => StderrMode::Null,
                    Some("log") => StderrMode::Log,
                    Some("socket") => StderrMode::Socket,
                    Some(other) => {
                        this.error(
                            pos_of(mode),
                            svc,
                            format!("key \"stderr\": \"{other}\" is not one of log, socket, null"),
                        );
                        StderrMode::Log
                    }
                }
            })
            .unwrap_or(StderrMode::Log);
        let max_children = self
            .pick(&s.max_children, &defaults.max_children, |this, v| {
                this.count(v, svc, "max_children")
            })
            .unwrap_or(DEFAULT_MAX_CHILDREN);
        let per_source = self
            .pick(&s.per_source, &defaults.per_source, |this, v| {
                this.count(v, svc, "per_source")
            })
            .unwrap_or(0);
        let rate_limit = self
            .pick(&s.rate_limit, &defaults.rate_limit, |this, r| {
                this.rate_limit(r, svc)
            })
            .flatten();
        let only_from = self
            .pick(&s.only_from, &defaults.only_from, |this, list| {
                this.networks(list, svc, "only_from")
            })
            .unwrap_or_default();
        let no_access = self
            .pick(&s.no_access, &defaults.no_access, |this, list| {
                this.networks(list, svc, "no_access")
            })
            .unwrap_or_default();
        let timeout = self
            .pick(&s.timeout, &defaults.timeout, |this, t| {
                this.duration(t, svc, "timeout")
            })
            .flatten()
            .filter(|t| !t.is_zero());
        let rlimits = self
            .pick(&s.rlimits, &defaults.rlimits, |this, limits| {
                this.rlimits(limits, svc)
            })
            .unwrap_or_default();
        let nice = self
            .pick(&s.nice, &defaults.nice, |this, nice| {
                if (-20..=19).contains(&nice.value) {
                    nice.value as i32
                } else {
                    this.error(
                        pos_of(nice),
                        svc,
                        "key \"nice\": must be between -20 and 19",
                    );
                    0
                }
            })
            .unwrap_or(0);
        let umask = self
            .pick(&s.umask, &defaults.umask, |this, u| {
                this.octal(u, svc, "umask")
            })
            .flatten()
            .unwrap_or(DEFAULT_UMASK);
        let backlog = self
            .pick(&s.backlog, &defaults.backlog, |this, b| {
                if (1..=65535).contains(&b.value) {
                    b.value as u32
                } else {
                    this.error(
                        pos_of(b),
                        svc,
                        "key \"backlog\": must be between 1 and 65535",
                    );
                    DEFAULT_BACKLOG
                }
            })
            .unwrap_or(DEFAULT_BACKLOG);
        let keepalive = s
            .keepalive
            .as_ref()
            .or(defaults.keepalive.as_ref())
            .is_some_and(|k| k.value);
        let disabled = s.disabled.as_ref().is_some_and(|d| d.value);

        if self.errors.len() > errors_before {
            return None;
        }
        Some(ServiceSpec {
            file: self.file.to_string(),
            name,
            pos: entry_pos,
            protocol,
            addresses,
            port,
            port_pos,
            unix,
            handler,
            wait,
            proxy_protocol,
            user,
            group,
            env,
            pass_env,
            cwd,
            stderr,
            max_children,
            per_source,
            rate_limit,
            only_from,
            no_access,
            timeout,
            rlimits,
            nice,
            umask,
            backlog,
            keepalive,
            disabled,
        })
    }

    /// Keys set on a service whose kind has nothing for them to act on: accepting them would
    /// let an operator believe, say, that a UNIX socket is access-controlled. (From
    /// `defaults:` they simply apply where they can.)
    fn reject_inapplicable(
        &mut self,
        s: &RawService,
        svc: Option<&str>,
        protocol: Protocol,
        builtin: bool,
    ) {
        let client_keys = [
            ("only_from", s.only_from.as_ref().map(pos_of)),
            ("no_access", s.no_access.as_ref().map(pos_of)),
            ("per_source", s.per_source.as_ref().map(pos_of)),
            ("keepalive", s.keepalive.as_ref().map(pos_of)),
        ];
        if protocol != Protocol::Udp && s.wait.as_ref().is_some_and(|w| w.value) {
            let why = "does not apply to wait: true (the handler accepts its clients itself)";
            self.reject_keys(svc, &client_keys, why);
            let rate_limit = [("rate_limit", s.rate_limit.as_ref().map(pos_of))];
            self.reject_keys(svc, &rate_limit, why);
        } else if protocol == Protocol::Unix {
            let why = "does not apply to protocol unix (a client has no address)";
            self.reject_keys(svc, &client_keys, why);
        }
        if protocol == Protocol::Udp {
            let keys = [
                ("keepalive", s.keepalive.as_ref().map(pos_of)),
                ("backlog", s.backlog.as_ref().map(pos_of)),
            ];
            self.reject_keys(
                svc,
                &keys,
                "does not apply to protocol udp (no connections)",
            );
        }
        if builtin {
            let keys = [
                ("user", s.user.as_ref().map(pos_of)),
                ("group", s.group.as_ref().map(pos_of)),
                ("env", s.env.as_ref().map(pos_of)),
                ("pass_env", s.pass_env.as_ref().map(pos_of)),
                ("cwd", s.cwd.as_ref().map(pos_of)),
                ("stderr", s.stderr.as_ref().map(pos_of)),
                ("rlimits", s.rlimits.as_ref().map(pos_of)),
                ("nice", s.nice.as_ref().map(pos_of)),
                ("umask", s.umask.as_ref().map(pos_of)),
                ("timeout", s.timeout.as_ref().map(pos_of)),
            ];
            let why = "does not apply to a builtin (it runs inside rinetd, no process)";
            self.reject_keys(svc, &keys, why);
        }
    }

    /// An error for each of `keys` that is set (has a position), saying `why`.
    fn reject_keys(&mut self, svc: Option<&str>, keys: &[(&str, Option<Pos>)], why: &str) {
        for (key, pos) in keys {
            if let Some(pos) = pos {
                self.error(*pos, svc, format!("key \"{key}\": {why}"));
            }
        }
    }

    /// Exactly one of `server` (with optional `args`) and `builtin`.
    fn handler(&mut self, s: &RawService, entry_pos: Pos, svc: Option<&str>) -> Handler {
        match (&s.server, &s.builtin) {
            (Some(_), Some(builtin)) => {
                self.error(
                    pos_of(builtin),
                    svc,
                    "keys \"server\" and \"builtin\": set exactly one of them",
                );
                Handler::Builtin(Builtin::Echo)
            }
            (None, Some(builtin)) => {
                if let Some(args) = &s.args {
                    self.error(pos_of(args), svc, "key \"args\": not for a builtin");
                }
                match Builtin::ALL.iter().find(|(name, _)| *name == builtin.value) {
                    Some((_, which)) => Handler::Builtin(*which),
                    None => {
                        let names: Vec<&str> = Builtin::ALL.iter().map(|(n, _)| *n).collect();
                        self.error(
                            pos_of(builtin),
                            svc,
                            format!(
                                "key \"builtin\": \"{}\" is not one of {}",
                                builtin.value,
                                names.join(", ")
                            ),
                        );
                        Handler::Builtin(Builtin::Echo)
                    }
                }
            }
            (Some(server), None) => {
                if !server.value.starts_with('/') {
                    self.error(
                        pos_of(server),
                        svc,
                        format!(
                            "key \"server\": \"{}\" is not an absolute path",
                            server.value
                        ),
                    );
                }
                let path = PathBuf::from(&server.value);
                let args = match &s.args {
                    Some(args) => {
                        if args.value.is_empty() {
                            self.error(
                                pos_of(args),
                                svc,
                                "key \"args\": must hold at least argv[0]",
                            );
                        }
                        self.no_nul(&args.value, pos_of(args), svc, "args");
                        args.value.clone()
                    }
                    None => vec![
                        path.file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                    ],
                };
                Handler::Server {
                    path,
                    pos: pos_of(server),
                    args,
                }
            }
            (None, None) => {
                self.error(entry_pos, svc, "missing key \"server\" (or \"builtin\")");
                Handler::Builtin(Builtin::Echo)
            }
        }
    }

    fn unix_socket(
        &mut self,
        s: &RawService,
        entry_pos: Pos,
        svc: Option<&str>,
    ) -> Option<UnixSocket> {
        let Some(path) = &s.path else {
            self.error(
                entry_pos,
                svc,
                "missing key \"path\" (required for protocol unix)",
            );
            return None;
        };
        if !path.value.starts_with('/') {
            self.error(pos_of(path), svc, "key \"path\": must be an absolute path");
        }
        let mode = s
            .socket_mode
            .as_ref()
            .and_then(|mode| self.octal(mode, svc, "socket_mode"))
            .unwrap_or(0o666);
        Some(UnixSocket {
            path: PathBuf::from(&path.value),
            pos: pos_of(path),
            mode,
        })
    }

    fn no_nul(&mut self, values: &[String], pos: Pos, svc: Option<&str>, key: &str) {
        if values.iter().any(|v| v.contains('\0')) {
            self.error(
                pos,
                svc,
                format!("key \"{key}\": a NUL byte cannot be passed"),
            );
        }
    }

    fn addresses(&mut self, s: &RawService, svc: Option<&str>) -> Vec<IpAddr> {
        let Some(address) = &s.address else {
            return vec![IpAddr::from([0, 0, 0, 0])];
        };
        let texts = match &address.value {
            OneOrMany::One(one) => vec![one.clone()],
            OneOrMany::Many(many) => many.clone(),
        };
        if texts.is_empty() {
            self.error(pos_of(address), svc, "key \"address\": the list is empty");
        }
        let mut addresses = Vec::new();
        for text in texts {
            let literal = text.trim_start_matches('[').trim_end_matches(']');
            match literal.parse::<IpAddr>() {
                Ok(ip) if addresses.contains(&ip) => self.error(
                    pos_of(address),
                    svc,
                    format!("key \"address\": \"{text}\" is listed twice"),
                ),
                Ok(ip) => addresses.push(ip),
                Err(_) => self.error(
                    pos_of(address),
                    svc,
                    format!("key \"address\": \"{text}\" is not an IP address literal"),
                ),
            }
        }
        addresses
    }

    fn port(&mut self, port: &Spanned<Scalar>, svc: Option<&str>) -> PortSpec {
        match &port.value {
            Scalar::Int(n) => match u16::try_from(*n) {
                Ok(n) => PortSpec::Number(n),
                Err(_) => {
                    self.error(
                        pos_of(port),
                        svc,
                        format!("key \"port\": {n} is not in 0-65535"),
                    );
                    PortSpec::Number(0)
                }
            },
            Scalar::Text(text) => match text.parse::<u16>() {
                Ok(n) => PortSpec::Number(n),
                Err(_) if text.is_empty() || text.chars().any(char::is_whitespace) => {
                    self.error(
                        pos_of(port),
                        svc,
                        format!("key \"port\": \"{text}\" is not a port"),
                    );
                    PortSpec::Number(0)
                }
                Err(_) => PortSpec::Name(text.clone()),
            },
        }
    }

    fn id_spec(&mut self, value: &Spanned<Scalar>, svc: Option<&str>, key: &str) -> IdSpec {
        match &value.value {
            Scalar::Int(n) => match u32::try_from(*n) {
                Ok(id) => IdSpec::Id(id),
                Err(_) => {
                    self.error(
                        pos_of(value),
                        svc,
                        format!("key \"{key}\": {n} is not a valid id"),
                    );
                    IdSpec::Id(0)
                }
            },
            Scalar::Text(text) => match text.parse::<u32>() {
                Ok(id) => IdSpec::Id(id),
                Err(_) => IdSpec::Name(text.clone()),
            },
        }
    }

    fn count(&mut self, value: &Spanned<i64>, svc: Option<&str>, key: &str) -> u32 {
        match u32::try_from(value.value) {
            Ok(n) => n,
            Err(_) => {
                self.error(
                    pos_of(value),
                    svc,
                    format!("key \"{key}\": must be between 0 and {}", u32::MAX),
                );
                0
            }
        }
    }

    fn rate_limit(
        &mut self,
        value: &Spanned<RawRateLimit>,
        svc: Option<&str>,
    ) -> Option<RateLimit> {
        let raw = &value.value;
        let field = |this: &mut Self, v: &Option<Spanned<Scalar>>, name: &str| match v {
            Some(v) => this.duration(v, svc, &format!("rate_limit.{name}")),
            None => {
                this.error(
                    pos_of(value),
                    svc,
                    format!("key \"rate_limit\": missing \"{name}\""),
                );
                None
            }
        };
        let per = field(self, &raw.per, "per");
        let pause = field(self, &raw.pause, "pause");
        let max = match &raw.max {
            Some(max) if max.value < 1 || max.value > i64::from(u32::MAX) => {
                self.error(
                    pos_of(max),
                    svc,
                    "key \"rate_limit.max\": must be at least 1",
                );
                None
            }
            Some(max) => Some(max.value as u32),
            None => {
                self.error(pos_of(value), svc, "key \"rate_limit\": missing \"max\"");
                None
            }
        };
        if let Some(per) = per
            && per.is_zero()
        {
            self.error(
                pos_of(value),
                svc,
                "key \"rate_limit.per\": must be more than 0",
            );
        }
        Some(RateLimit {
            max: max?,
            per: per?,
            pause: pause?,
        })
    }

    fn duration(
        &mut self,
        value: &Spanned<Scalar>,
        svc: Option<&str>,
        key: &str,
    ) -> Option<Duration> {
        let parsed = match &value.value {
            Scalar::Int(n) => u64::try_from(*n).ok().map(Duration::from_secs),
            Scalar::Text(text) => parse_duration(text),
        };
        if parsed.is_none() {
            self.error(
                pos_of(value),
                svc,
                format!("key \"{key}\": not a duration (seconds, or a number with ms, s, m or h)"),
            );
        }
        // Far beyond any sensible setting, and far below what a clock can add without overflow.
        if parsed.is_some_and(|d| d > MAX_DURATION) {
            self.error(
                pos_of(value),
                svc,
                format!("key \"{key}\": longer than 365 days"),
            );
            return None;
        }
        parsed
    }

    fn networks(
        &mut self,
        list: &Spanned<Vec<Spanned<String>>>,
        svc: Option<&str>,
        key: &str,
    ) -> Vec<IpNet> {
        let mut nets = Vec::new();
        for item in &list.value {
            match parse_network(&item.value) {
                Some(net) => nets.push(net),
                None => self.error(
                    pos_of(item),
                    svc,
                    format!(
                        "key \"{key}\": \"{}\" is not an IP address or CIDR",
                        item.value
                    ),
                ),
            }
        }
        nets
    }

    fn rlimits(
        &mut self,
        limits: &Spanned<BTreeMap<String, Spanned<Scalar>>>,
        svc: Option<&str>,
    ) -> Vec<(Resource, LimitValue)> {
        let mut out = Vec::new();
        for (name, value) in &limits.value {
            let resource = match name.as_str() {
                "nofile" => Resource::Nofile,
                "nproc" => Resource::Nproc,
                "cpu" => Resource::Cpu,
                "as" => Resource::As,
                "core" => Resource::Core,
                "fsize" => Resource::Fsize,
                "data" => Resource::Data,
                "stack" => Resource::Stack,
                other => {
                    let known = [
                        "nofile", "nproc", "cpu", "as", "core", "fsize", "data", "stack",
                    ];
                    let hint = nearest(other, &known)
                        .map(|n| format!(" (did you mean \"{n}\"?)"))
                        .unwrap_or_default();
                    self.error(
                        pos_of(value),
                        svc,
                        format!("key \"rlimits\": unknown limit \"{other}\"{hint}"),
                    );
                    continue;
                }
            };
            let limit = match &value.value {
                Scalar::Int(n) if *n >= 0 => Some(*n as u64),
                Scalar::Text(text) if text == "unlimited" => None,
                _ => {
                    self.error(
                        pos_of(value),
                        svc,
                        format!(
                            "key \"rlimits.{name}\": must be a non-negative integer or unlimited"
                        ),
                    );
                    continue;
                }
            };
            out.push((resource, limit));
        }
        out
    }

    /// An octal permission value (`umask`, `socket_mode`). It must be quoted: YAML 1.2 reads an
    /// unquoted 022 as the decimal 22, so accepting it would invite the wrong mask.
    fn octal(&mut self, value: &Spanned<String>, svc: Option<&str>, key: &str) -> Option<u32> {
        // A byte offset: the character offset is wrong after any non-ASCII text above.
        let quoted = value
            .referenced
            .span()
            .byte_offset()
            .and_then(|offset| usize::try_from(offset).ok())
            .and_then(|offset| {
                let text = if self.in_defaults {
                    self.defaults_text
                } else {
                    self.text
                };
                text.get(offset..)
            })
            .is_some_and(|rest| rest.starts_with('"') || rest.starts_with('\''));
        let text = &value.value;
        if !quoted {
            self.error(
                pos_of(value),
                svc,
                format!(
                    "key \"{key}\": quote the octal value, e.g. {key}: \"{}\" (YAML 1.2 reads an unquoted {text} as a decimal number)",
                    if text.starts_with('0') { text.clone() } else { format!("0{text}") }
                ),
            );
            return None;
        }
        match u32::from_str_radix(text, 8) {
            Ok(bits) if bits <= 0o777 => Some(bits),
            _ => {
                self.error(
                    pos_of(value),
                    svc,
                    format!("key \"{key}\": \"{text}\" is not an octal mode 000-777"),
                );
                None
            }
        }
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

    #[test]
    fn typo_gets_a_suggestion_with_location_and_service() {
        let text = "services:\n  - name: hello\n    port: 8080\n    sever: /bin/true\n";
        assert_eq!(
            errors(text),
            ["t.conf:4:5: service \"hello\": unknown key \"sever\" (did you mean \"server\"?)"]
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
}
