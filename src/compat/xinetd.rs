//! xinetd configuration (xinetd.conf(5)) read into a YAML table document: `defaults` and
//! `service` blocks, `include`/`includedir`, the `=`/`+=`/`-=` operators and every attribute
//! that has a rinetd key; the others become comments naming them. Pure: files are read through
//! the caller's `Reader`.

use std::collections::{BTreeMap, HashSet};

use super::emit::{Document, Origin, ServiceDoc, Value};
use super::{Translation, builtin_named, unique_name};

/// Reads what an `include` (a file) or `includedir` (a folder: the files in it, sorted, less
/// those whose name holds a dot or ends in `~`, as xinetd skips them) names, relative to the
/// including file. Each result is (path as shown, text).
pub type Reader<'a> = dyn FnMut(&str, Include<'_>) -> Result<Vec<(String, String)>, String> + 'a;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include<'p> {
    File(&'p str),
    Dir(&'p str),
}

/// Said of a service written `disabled: true` because converting it would have widened access.
const REVIEW: &str = "review, then enable";

/// Nested includes deeper than this are a loop.
const MAX_INCLUDE_DEPTH: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Set,
    Add,
    Remove,
}

/// One `name op values…` line.
#[derive(Debug, Clone)]
struct Attr {
    name: String,
    op: Op,
    values: Vec<String>,
    origin: Origin,
}

#[derive(Debug, Clone)]
struct Block {
    /// None for `defaults`.
    service: Option<String>,
    attrs: Vec<Attr>,
    origin: Origin,
}

/// Reads `text` (the contents of `file`) and what it includes.
pub fn translate(file: &str, text: &str, read: &mut Reader<'_>) -> Translation {
    let mut parser = Parser {
        blocks: Vec::new(),
        errors: Vec::new(),
    };
    parser.file(file, text, read, 0);
    let mut translation = Translation {
        errors: parser.errors,
        ..Translation::default()
    };
    convert(file, parser.blocks, &mut translation);
    translation
}

struct Parser {
    blocks: Vec<Block>,
    errors: Vec<String>,
}

fn origin(file: &str, line: usize, column: usize, field: &'static str) -> Origin {
    Origin {
        file: file.to_string(),
        line,
        column,
        field,
    }
}

impl Parser {
    fn error(&mut self, file: &str, line: usize, message: impl Into<String>) {
        self.errors
            .push(format!("{file}:{line}: {}", message.into()));
    }

    fn file(&mut self, file: &str, text: &str, read: &mut Reader<'_>, depth: usize) {
        let mut open: Option<Block> = None;
        // A `service NAME` or `defaults` line waiting for its `{`.
        let mut pending: Option<Block> = None;
        for (index, raw) in text.lines().enumerate() {
            let number = index + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(block) = open.as_mut() {
                if line == "}" {
                    self.blocks.extend(open.take());
                } else if line == "{" {
                    self.error(
                        file,
                        number,
                        "a \"{\" inside a block (a \"}\" is missing above)",
                    );
                } else {
                    match attribute(file, number, raw) {
                        Ok(attr) => block.attrs.push(attr),
                        Err(message) => self.error(file, number, message),
                    }
                }
                continue;
            }
            let (line, opens) = match line.strip_suffix('{') {
                Some(head) => (head.trim_end(), true),
                None => (line, false),
            };
            if line.is_empty() && opens {
                match pending.take() {
                    Some(block) => open = Some(block),
                    None => self.error(
                        file,
                        number,
                        "a \"{\" without \"service NAME\" or \"defaults\" before it",
                    ),
                }
                continue;
            }
            if let Some(block) = pending.take() {
                let what = block.service.as_deref().unwrap_or("defaults");
                self.error(
                    file,
                    block.origin.line,
                    format!("\"{what}\" is not followed by \"{{\""),
                );
            }
            let mut words = line.split_whitespace();
            let keyword = words.next().unwrap_or_default();
            let rest: Vec<&str> = words.collect();
            let block = |service: Option<String>| Block {
                service,
                attrs: Vec::new(),
                origin: origin(file, number, 1, "service"),
            };
            match (keyword, rest.as_slice()) {
                ("defaults", []) => pending = Some(block(None)),
                ("service", [name]) => pending = Some(block(Some((*name).to_string()))),
                ("service", _) => self.error(file, number, "write \"service NAME\" (one name)"),
                ("include" | "includedir", [path]) if !opens => {
                    if depth >= MAX_INCLUDE_DEPTH {
                        self.error(file, number, "includes nested too deep (a loop?)");
                        continue;
                    }
                    let include = if keyword == "include" {
                        Include::File(path)
                    } else {
                        Include::Dir(path)
                    };
                    match read(file, include) {
                        Ok(files) => {
                            for (path, text) in files {
                                self.file(&path, &text, read, depth + 1);
                            }
                        }
                        Err(message) => self.error(file, number, format!("{keyword} {path}: {message}")),
                    }
                }
                _ => self.error(
                    file,
                    number,
                    format!("\"{line}\" is not \"service NAME\", \"defaults\", \"include FILE\" or \"includedir DIR\""),
                ),
            }
            if opens && let Some(block) = pending.take() {
                open = Some(block);
            }
        }
        if let Some(block) = open.or(pending) {
            let what = block.service.as_deref().unwrap_or("defaults");
            self.error(
                file,
                block.origin.line,
                format!("the block of \"{what}\" is not closed with \"}}\""),
            );
        }
    }
}

/// `name = values`, `name += values`, `name -= values`.
fn attribute(file: &str, number: usize, raw: &str) -> Result<Attr, String> {
    let Some(equals) = raw.find('=') else {
        return Err(format!("\"{}\" is not \"attribute = value\"", raw.trim()));
    };
    let (head, values) = (&raw[..equals], &raw[equals + 1..]);
    let (name, op) = match head.trim_end().strip_suffix('+') {
        Some(name) => (name, Op::Add),
        None => match head.trim_end().strip_suffix('-') {
            Some(name) => (name, Op::Remove),
            None => (head, Op::Set),
        },
    };
    let name = name.trim();
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(format!("\"{}\" is not \"attribute = value\"", raw.trim()));
    }
    let column = raw.len() - raw.trim_start().len() + 1;
    Ok(Attr {
        name: name.to_string(),
        op,
        values: values.split_whitespace().map(str::to_string).collect(),
        origin: origin(file, number, column, "attribute"),
    })
}

/// The attributes of one block after `=`, `+=` and `-=`: name → (values, where set).
type Effective = BTreeMap<String, (Vec<String>, Origin)>;

/// Applies a block's lines in order on top of `base` (the defaults, for `+=` and `-=`).
fn effective(attrs: &[Attr], base: &Effective) -> Effective {
    let mut own = Effective::new();
    for attr in attrs {
        let previous = own
            .get(&attr.name)
            .or_else(|| base.get(&attr.name))
            .map(|(values, _)| values.clone())
            .unwrap_or_default();
        let values = match attr.op {
            Op::Set => attr.values.clone(),
            Op::Add => {
                let mut values = previous;
                values.extend(attr.values.iter().cloned());
                values
            }
            Op::Remove => {
                // A set, so that a long list minus a long list stays linear.
                let removed: HashSet<&String> = attr.values.iter().collect();
                previous
                    .into_iter()
                    .filter(|value| !removed.contains(value))
                    .collect()
            }
        };
        own.insert(attr.name.clone(), (values, attr.origin.clone()));
    }
    own
}

/// The xinetd attributes that rinetd has no key for, and why that is fine (or what to do).
const NO_EQUIVALENT: &[(&str, &str)] = &[
    (
        "log_type",
        "rinetd logs every event to syslog or stderr (--log)",
    ),
    (
        "log_on_success",
        "rinetd logs every accept and exit with client, pid, status and duration",
    ),
    (
        "log_on_failure",
        "rinetd logs every refusal with the client and the reason",
    ),
    ("access_times", "no time-of-day access control"),
    (
        "redirect",
        "no built-in TCP redirection; run a forwarder as the server",
    ),
    ("banner", "no banners; a handler can print one"),
    ("banner_success", "no banners; a handler can print one"),
    ("banner_fail", "no banners"),
    (
        "max_load",
        "no load-average limit; max_children and rate_limit bound the work",
    ),
    ("deny_time", "no timed blacklisting"),
    (
        "groups",
        "rinetd always gives the handler its user's supplementary groups (initgroups)",
    ),
    ("mdns", "no mDNS announcement"),
    ("libwrap", "no TCP wrappers; use only_from and no_access"),
    ("rlimit_rss", "RLIMIT_RSS has no effect on Linux"),
    ("rpc_version", "RPC services are not supported"),
    ("rpc_number", "RPC services are not supported"),
    ("bind_ipv6", "use address"),
    (
        "enabled",
        "handled: services it leaves out get disabled: true",
    ),
    (
        "disabled",
        "handled: the services it names get disabled: true",
    ),
];

/// Defaults that become keys of the YAML `defaults:` (an own value replaces them there as in
/// xinetd; a `+=`/`-=` is written merged on the service).
const DEFAULT_KEYS: &[&str] = &[
    "instances",
    "per_source",
    "cps",
    "only_from",
    "no_access",
    "passenv",
    "env",
    "umask",
    "nice",
    "rlimit_as",
    "rlimit_cpu",
    "rlimit_data",
    "rlimit_files",
    "rlimit_stack",
    "rlimit_core",
    "user",
    "group",
];

fn convert(file: &str, blocks: Vec<Block>, t: &mut Translation) {
    t.doc = Document {
        header: vec![format!(
            "Converted from {file} (xinetd) by rinetd convert; see rinetd.conf(5)."
        )],
        ..Document::default()
    };
    let mut defaults_attrs = Vec::new();
    let mut services = Vec::new();
    for block in blocks {
        match block.service {
            None => defaults_attrs.extend(block.attrs),
            Some(_) => services.push(block),
        }
    }
    let defaults = effective(&defaults_attrs, &Effective::new());
    let listed = |name: &str| -> Option<HashSet<String>> {
        defaults
            .get(name)
            .map(|(values, _)| values.iter().cloned().collect())
    };
    let disabled_ids = listed("disabled").unwrap_or_default();
    let enabled_ids = listed("enabled");

    let mut defaults_doc = ServiceDoc::default();
    for (name, (values, origin)) in &defaults {
        match name.as_str() {
            key if DEFAULT_KEYS.contains(&key) => {
                let mut notes = Vec::new();
                map_common(name, values, origin, &mut defaults_doc, &mut notes, true);
                t.doc.defaults_notes.extend(notes);
            }
            // Per-service keys, applied to each service below, and the lists of ids.
            "bind" | "interface" | "flags" | "v6only" | "enabled" | "disabled" => {}
            other => {
                let why = NO_EQUIVALENT
                    .iter()
                    .find(|(n, _)| *n == other)
                    .map_or("not an xinetd attribute rinetd knows", |(_, why)| why);
                t.doc.defaults_notes.push(format!(
                    "not converted: {name} = {} ({why})",
                    values.join(" ")
                ));
            }
        }
    }
    t.doc.defaults = defaults_doc.entries;

    // An ACL of the defaults that named hosts could not be converted: nothing may start open.
    let review_all = t.doc.defaults_notes.iter().any(|n| n.contains(REVIEW));
    let mut names = HashSet::new();
    for block in services {
        let service = block.service.clone().unwrap_or_default();
        let own = effective(&block.attrs, &defaults);
        // Per-service keys that xinetd lets `defaults` set.
        let mut attrs = own;
        for key in ["bind", "interface", "flags", "v6only"] {
            if let (false, Some(value)) = (attrs.contains_key(key), defaults.get(key)) {
                attrs.insert(key.to_string(), value.clone());
            }
        }
        let mut doc = service_doc(&service, &block, &attrs, &mut names, t);
        let id = attrs
            .get("id")
            .and_then(|(values, _)| values.first().cloned())
            .unwrap_or_else(|| service.clone());
        let off_by_defaults = disabled_ids.contains(&id)
            || disabled_ids.contains(&service)
            || enabled_ids
                .as_ref()
                .is_some_and(|ids| !ids.contains(&id) && !ids.contains(&service));
        if review_all && !doc.commented_out {
            doc.set("disabled", Value::Bool(true), None);
        }
        if off_by_defaults && doc.get("disabled").is_none() {
            doc.notes
                .push("disabled by the defaults' enabled/disabled list".to_string());
            doc.set("disabled", Value::Bool(true), None);
        }
        t.doc.services.push(doc);
    }
}

/// The first value of an attribute, if set.
fn first<'e>(attrs: &'e Effective, name: &str) -> Option<(&'e str, &'e Origin)> {
    let (values, origin) = attrs.get(name)?;
    Some((values.first().map_or("", String::as_str), origin))
}

fn service_doc(
    service: &str,
    block: &Block,
    attrs: &Effective,
    names: &mut HashSet<String>,
    t: &mut Translation,
) -> ServiceDoc {
    let mut doc = ServiceDoc {
        origin: Some(block.origin.clone()),
        ..ServiceDoc::default()
    };
    let mut notes = vec![format!(
        "{}:{}: service {service}",
        block.origin.file, block.origin.line
    )];
    let mut problems: Vec<String> = Vec::new();
    let error = |t: &mut Translation, origin: &Origin, message: String| {
        t.errors.push(format!(
            "{}:{}: service \"{service}\": {message}",
            origin.file, origin.line
        ));
    };

    let types: Vec<String> = attrs
        .get("type")
        .map(|(values, _)| values.iter().map(|v| v.to_ascii_uppercase()).collect())
        .unwrap_or_default();
    let flags: Vec<String> = attrs
        .get("flags")
        .map(|(values, _)| values.clone())
        .unwrap_or_default();
    let has_flag = |flag: &str| flags.iter().any(|f| f.eq_ignore_ascii_case(flag));

    // socket_type and protocol → protocol.
    let socket_type = first(attrs, "socket_type");
    let protocol = first(attrs, "protocol");
    let kind = match (socket_type.map(|(s, _)| s), protocol.map(|(p, _)| p)) {
        (Some("stream"), None | Some("tcp")) | (None, Some("tcp")) => Some("tcp"),
        (Some("dgram"), None | Some("udp")) | (None, Some("udp")) => Some("udp"),
        (Some(s @ ("raw" | "seqpacket" | "rdm")), _) => {
            problems.push(format!(
                "socket_type = {s}: rinetd serves stream and dgram sockets"
            ));
            None
        }
        (Some(s @ ("stream" | "dgram")), Some(p)) => {
            let (_, origin) = protocol.unwrap_or(("", &block.origin));
            error(
                t,
                origin,
                format!("protocol = {p} does not go with socket_type = {s}"),
            );
            None
        }
        (None, None) => {
            error(
                t,
                &block.origin,
                "socket_type is missing (stream or dgram)".to_string(),
            );
            None
        }
        (None, Some(p)) => {
            problems.push(format!("protocol = {p}: rinetd serves tcp and udp"));
            None
        }
        (Some(s), _) => {
            let (_, origin) = socket_type.unwrap_or(("", &block.origin));
            error(
                t,
                origin,
                format!("socket_type = {s} is not stream, dgram, raw or seqpacket"),
            );
            None
        }
    };
    let kind = kind.unwrap_or("tcp");

    let id = first(attrs, "id").map_or(service, |(id, _)| id);
    doc.name = unique_name(names, id, kind, block.origin.line);
    doc.set(
        "protocol",
        Value::Text(kind.to_string()),
        socket_type.map(|(_, o)| o.clone()),
    );

    // The address: bind/interface, else by the IPv4/IPv6 flags.
    let bind = first(attrs, "bind").or_else(|| first(attrs, "interface"));
    let v6only = first(attrs, "v6only").is_some_and(|(v, _)| v.eq_ignore_ascii_case("yes"));
    let address = match bind {
        Some((host, origin)) => match host.parse::<std::net::IpAddr>() {
            Ok(ip) => Some((Value::Text(ip.to_string()), Some(origin.clone()))),
            Err(_) => {
                problems.push(format!(
                    "bind = {host}: rinetd binds IP addresses; write the address"
                ));
                None
            }
        },
        None if has_flag("IPv6") && v6only => Some((Value::Text("::".into()), None)),
        None if has_flag("IPv6") => Some((Value::List(vec!["0.0.0.0".into(), "::".into()]), None)),
        None => Some((Value::Text("0.0.0.0".into()), None)),
    };
    if let Some((address, origin)) = address {
        doc.set("address", address, origin);
    }

    // The port: given, else the service's name in /etc/services.
    match first(attrs, "port") {
        Some((port, origin)) => match port.parse::<u16>() {
            Ok(n) => doc.set("port", Value::Int(i64::from(n)), Some(origin.clone())),
            Err(_) => error(t, origin, format!("port = {port} is not a port number")),
        },
        None if types.iter().any(|t| t == "UNLISTED") => {
            error(t, &block.origin, "type = UNLISTED needs a port".to_string())
        }
        None => doc.set(
            "port",
            Value::Text(service.to_string()),
            Some(block.origin.clone()),
        ),
    }

    let internal = types.iter().any(|t| t == "INTERNAL");
    for kind_word in ["RPC", "TCPMUX", "TCPMUXPLUS"] {
        if types.iter().any(|t| t == kind_word) {
            problems.push(format!("type = {kind_word}: not supported by rinetd"));
        }
    }
    if internal {
        match builtin_named(service) {
            Some(builtin) => doc.set(
                "builtin",
                Value::Text(builtin.to_string()),
                attrs.get("type").map(|(_, o)| o.clone()),
            ),
            None => problems.push(format!(
                "xinetd's internal service \"{service}\" has no rinetd builtin (rinetd has echo, discard, chargen, daytime, time)"
            )),
        }
    } else {
        match first(attrs, "server") {
            Some((server, origin)) => {
                doc.set(
                    "server",
                    Value::Text(server.to_string()),
                    Some(origin.clone()),
                );
                if let Some((values, origin)) = attrs.get("server_args") {
                    // xinetd's server_args leaves out argv[0] unless NAMEINARGS says it is there.
                    let mut args = Vec::new();
                    if !has_flag("NAMEINARGS") {
                        args.push(server.rsplit('/').next().unwrap_or(server).to_string());
                    }
                    args.extend(values.iter().cloned());
                    doc.set("args", Value::List(args), Some(origin.clone()));
                }
            }
            None => error(
                t,
                &block.origin,
                "server is missing (and type is not INTERNAL)".to_string(),
            ),
        }
        if let Some((wait, origin)) = first(attrs, "wait") {
            match yes_no(wait) {
                Some(wait) => doc.set("wait", Value::Bool(wait), Some(origin.clone())),
                None => error(t, origin, format!("wait = {wait} is not yes or no")),
            }
        }
    }

    for (name, (values, origin)) in attrs {
        let name = name.as_str();
        match name {
            "id" | "type" | "socket_type" | "protocol" | "port" | "bind" | "interface"
            | "server" | "server_args" | "wait" | "v6only" => {}
            "disable" => match values.first().map(String::as_str).and_then(yes_no) {
                Some(off) => doc.set("disabled", Value::Bool(off), Some(origin.clone())),
                None => error(
                    t,
                    origin,
                    format!("disable = {} is not yes or no", values.join(" ")),
                ),
            },
            "flags" => {
                for flag in values {
                    match flag.to_ascii_uppercase().as_str() {
                        "KEEPALIVE" => {
                            doc.set("keepalive", Value::Bool(true), Some(origin.clone()))
                        }
                        // Handled above, or what rinetd does anyway (SO_REUSEADDR).
                        "NAMEINARGS" | "IPV4" | "IPV6" | "REUSE" => {}
                        "NOLIBWRAP" => {}
                        other => {
                            notes.push(format!("not converted: flags {other} (no equivalent)"))
                        }
                    }
                }
            }
            // Settings of the handler process mean nothing to a builtin, which never forks.
            "user" | "group" | "env" | "passenv" | "nice" | "umask" if internal => {}
            _ if name.starts_with("rlimit_") && internal => {}
            // `attrs` holds defaults only for the per-service keys above: the others are the
            // service's own (merged with the defaults for += and -=).
            _ => map_common(name, values, origin, &mut doc, &mut notes, false),
        }
    }

    if !problems.is_empty() {
        doc.commented_out = true;
        notes.extend(problems.iter().map(|p| format!("not converted: {p}")));
    }
    if doc.get("disabled").is_none() && notes.iter().any(|n| n.contains(REVIEW)) {
        doc.set("disabled", Value::Bool(true), None);
    }
    doc.notes = notes;
    // A service left out of the table is not a silent loss: say so on stderr too.
    if doc.commented_out {
        t.warnings.push(format!(
            "{}:{}: service \"{service}\" not converted: {}",
            block.origin.file,
            block.origin.line,
            problems.join("; ")
        ));
    }
    doc
}

fn yes_no(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "yes" => Some(true),
        "no" => Some(false),
        _ => None,
    }
}

/// Maps an attribute that may appear in `defaults` as well as in a service.
fn map_common(
    name: &str,
    values: &[String],
    origin: &Origin,
    doc: &mut ServiceDoc,
    notes: &mut Vec<String>,
    in_defaults: bool,
) {
    let at = Some(origin.clone());
    let joined = values.join(" ");
    let count = |text: &str| -> Option<i64> {
        if text.eq_ignore_ascii_case("UNLIMITED") {
            Some(0)
        } else {
            text.parse::<u32>().ok().map(i64::from)
        }
    };
    match name {
        "instances" | "per_source" => {
            let key = if name == "instances" { "max_children" } else { "per_source" };
            match values.first().and_then(|v| count(v)) {
                Some(n) => doc.set(key, Value::Int(n), at),
                None => notes.push(format!("not converted: {name} = {joined} (not a number or UNLIMITED)")),
            }
        }
        "cps" => match values {
            [max, wait] => match (max.parse::<u32>(), wait.parse::<u32>()) {
                (Ok(max), Ok(wait)) if max > 0 => doc.set(
                    "rate_limit",
                    Value::Inline(vec![
                        ("max", Value::Int(i64::from(max))),
                        ("per", Value::Text("1s".into())),
                        ("pause", Value::Text(format!("{wait}s"))),
                    ]),
                    at,
                ),
                _ => notes.push(format!("not converted: cps = {joined} (two numbers: connections per second, seconds to pause)")),
            },
            _ => notes.push(format!("not converted: cps = {joined} (two numbers: connections per second, seconds to pause)")),
        },
        "only_from" | "no_access" => {
            let mut networks = Vec::new();
            let mut unconverted = Vec::new();
            for value in values {
                match networks_of(value) {
                    Some(found) => networks.extend(found),
                    None => unconverted.push(value.clone()),
                }
            }
            if name == "only_from" && values.is_empty() {
                // xinetd: an empty only_from lets nobody in; rinetd's empty list is everyone.
                doc.set("no_access", Value::List(vec!["0.0.0.0/0".into(), "::/0".into()]), at);
                notes.push("only_from is empty: nobody may connect (written as no_access: everything)".into());
                return;
            }
            if !unconverted.is_empty() {
                notes.push(format!(
                    "{name}: host or domain names {} have no equivalent (rinetd matches addresses); {REVIEW}",
                    unconverted.join(" ")
                ));
                if in_defaults {
                    notes.push("every service is disabled until then".into());
                }
            }
            doc.set(if name == "only_from" { "only_from" } else { "no_access" }, Value::List(networks), at);
        }
        "env" => {
            let mut pairs = Vec::new();
            for value in values {
                match value.split_once('=') {
                    Some((key, value)) if !key.is_empty() => {
                        pairs.push((key.to_string(), Value::Text(value.to_string())))
                    }
                    _ => notes.push(format!("not converted: env {value} (not NAME=value)")),
                }
            }
            doc.set("env", Value::Map(pairs), at);
        }
        "passenv" => doc.set("pass_env", Value::List(values.to_vec()), at),
        "nice" => match values.first().and_then(|v| v.parse::<i64>().ok()) {
            Some(n) => doc.set("nice", Value::Int(n), at),
            None => notes.push(format!("not converted: nice = {joined} (not a number)")),
        },
        "umask" => match values.first() {
            Some(mask) if !mask.is_empty() && mask.chars().all(|c| ('0'..='7').contains(&c)) => {
                doc.set("umask", Value::Text(mask.clone()), at)
            }
            _ => notes.push(format!("not converted: umask = {joined} (not an octal mask)")),
        },
        "user" | "group" => {
            let value = values.first().cloned().unwrap_or_default();
            let value = match value.parse::<u32>() {
                Ok(id) => Value::Int(i64::from(id)),
                Err(_) => Value::Text(value),
            };
            doc.set(if name == "user" { "user" } else { "group" }, value, at);
        }
        rlimit if rlimit.starts_with("rlimit_") => {
            let resource = match rlimit {
                "rlimit_as" => "as",
                "rlimit_cpu" => "cpu",
                "rlimit_data" => "data",
                "rlimit_files" => "nofile",
                "rlimit_stack" => "stack",
                "rlimit_core" => "core",
                _ => {
                    let why = NO_EQUIVALENT
                        .iter()
                        .find(|(n, _)| *n == rlimit)
                        .map_or("no equivalent", |(_, why)| why);
                    notes.push(format!("not converted: {rlimit} = {joined} ({why})"));
                    return;
                }
            };
            let Some(value) = values.first().and_then(|v| limit_value(v)) else {
                notes.push(format!("not converted: {rlimit} = {joined} (a number, with K or M, or UNLIMITED)"));
                return;
            };
            let mut pairs = match doc.remove("rlimits").map(|entry| entry.value) {
                Some(Value::Map(pairs)) => pairs,
                _ => Vec::new(),
            };
            pairs.push((resource.to_string(), value));
            doc.set("rlimits", Value::Map(pairs), at);
        }
        other => {
            let why = NO_EQUIVALENT
                .iter()
                .find(|(n, _)| *n == other)
                .map_or("not an xinetd attribute rinetd knows", |(_, why)| why);
            notes.push(format!("not converted: {other} = {joined} ({why})"));
        }
    }
}

/// `8M`, `512K`, `1024`, `UNLIMITED`.
fn limit_value(text: &str) -> Option<Value> {
    if text.eq_ignore_ascii_case("UNLIMITED") {
        return Some(Value::Text("unlimited".into()));
    }
    let (digits, factor) = match text.char_indices().last()? {
        (at, 'k' | 'K') => (&text[..at], 1024u64),
        (at, 'm' | 'M') => (&text[..at], 1024 * 1024),
        _ => (text, 1),
    };
    let n = digits.parse::<u64>().ok()?.checked_mul(factor)?;
    i64::try_from(n).ok().map(Value::Int)
}

/// xinetd's address forms as CIDR networks: `10.0.0.1`, `10.0.0.0/8`, `::1`, `2001:db8::/32`,
/// `128.138.0.0` (trailing zero octets are wildcards), `128.138.{193,194}` (factorized), and
/// `0.0.0.0` (everyone). None for host and domain names.
fn networks_of(text: &str) -> Option<Vec<String>> {
    if let Some((prefix, list)) = text.split_once(".{") {
        let list = list.strip_suffix('}')?;
        let mut out = Vec::new();
        for part in list.split(',') {
            out.extend(networks_of(&format!("{prefix}.{}", part.trim()))?);
        }
        return Some(out);
    }
    if text.contains('/') {
        let (address, bits) = text.split_once('/')?;
        address.parse::<std::net::IpAddr>().ok()?;
        bits.parse::<u8>().ok()?;
        return Some(vec![text.to_string()]);
    }
    if text.contains(':') {
        return text
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .map(|ip| vec![ip.to_string()]);
    }
    let octets: Vec<&str> = text.split('.').collect();
    if octets.is_empty() || octets.len() > 4 || octets.iter().any(|o| o.parse::<u8>().is_err()) {
        return None;
    }
    if text == "0.0.0.0" {
        return Some(vec!["0.0.0.0/0".into(), "::/0".into()]);
    }
    // A short form (`128.138.12`) or trailing zeros name a network of the octets given.
    let mut given = octets.len();
    if given == 4 {
        while given > 0 && octets[given - 1] == "0" {
            given -= 1;
        }
    }
    let mut full: Vec<&str> = octets[..given].to_vec();
    full.resize(4, "0");
    Some(vec![if given == 4 {
        full.join(".")
    } else {
        format!("{}/{}", full.join("."), given * 8)
    }])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compat::emit::render;

    fn no_includes() -> impl FnMut(&str, Include<'_>) -> Result<Vec<(String, String)>, String> {
        |_, _| Err("no includes in this test".to_string())
    }

    fn yaml(text: &str) -> String {
        let t = translate("x.conf", text, &mut no_includes());
        assert!(t.errors.is_empty(), "{:?}", t.errors);
        render(&t.doc).text
    }

    const DEBIAN_ECHO: &str = "# default: off\nservice echo\n{\n\tdisable\t\t= yes\n\ttype\t\t= INTERNAL\n\tid\t\t= echo-stream\n\tsocket_type\t= stream\n\tprotocol\t= tcp\n\tuser\t\t= root\n\twait\t\t= no\n}\n\nservice echo\n{\n\tdisable\t\t= yes\n\ttype\t\t= INTERNAL\n\tid\t\t= echo-dgram\n\tsocket_type\t= dgram\n\tprotocol\t= udp\n\tuser\t\t= root\n\twait\t\t= yes\n}\n";

    #[test]
    fn debian_internal_services_become_disabled_builtins() {
        let out = yaml(DEBIAN_ECHO);
        assert!(
            out.contains("  - name: echo-stream\n    protocol: tcp\n    address: 0.0.0.0\n    port: echo\n    builtin: echo\n    disabled: true\n"),
            "{out}"
        );
        assert!(
            out.contains("  - name: echo-dgram\n    protocol: udp\n"),
            "{out}"
        );
        assert!(!out.contains("user:") && !out.contains("wait:"), "{out}");
    }

    #[test]
    fn server_args_get_argv0_unless_nameinargs() {
        let out = yaml(
            "service ftp\n{\n socket_type = stream\n wait = no\n user = root\n server = /usr/sbin/in.ftpd\n server_args = -l -a\n}\nservice telnet\n{\n socket_type = stream\n wait = no\n user = root\n flags = NAMEINARGS KEEPALIVE\n server = /usr/sbin/tcpd\n server_args = /usr/sbin/in.telnetd -h\n}\n",
        );
        assert!(out.contains("args: [in.ftpd, \"-l\", \"-a\"]"), "{out}");
        assert!(
            out.contains("args: [/usr/sbin/in.telnetd, \"-h\"]"),
            "{out}"
        );
        assert!(out.contains("keepalive: true"), "{out}");
        assert!(out.contains("wait: false"), "{out}");
    }

    #[test]
    fn defaults_and_operators() {
        let out = yaml(
            "defaults\n{\n instances = 60\n only_from = 10.0.0.0/8\n cps = 25 30\n log_type = SYSLOG daemon info\n}\nservice a\n{\n socket_type = stream\n wait = no\n server = /bin/cat\n only_from += 192.168.1.0\n instances = UNLIMITED\n per_source = 5\n}\nservice b\n{\n socket_type = stream\n wait = no\n server = /bin/cat\n port = 9000\n only_from -= 10.0.0.0/8\n only_from += 127.0.0.1\n}\n",
        );
        assert!(out.contains("defaults:\n"), "{out}");
        assert!(out.contains("  max_children: 60\n"), "{out}");
        assert!(
            out.contains("  rate_limit: {max: 25, per: 1s, pause: 30s}\n"),
            "{out}"
        );
        assert!(out.contains("  only_from: [10.0.0.0/8]\n"), "{out}");
        assert!(out.contains("not converted: log_type"), "{out}");
        assert!(
            out.contains("only_from: [10.0.0.0/8, 192.168.1.0/24]"),
            "{out}"
        );
        assert!(out.contains("max_children: 0\n"), "{out}");
        assert!(out.contains("per_source: 5\n"), "{out}");
        assert!(out.contains("only_from: [127.0.0.1]"), "{out}");
        assert!(out.contains("port: 9000"), "{out}");
    }

    #[test]
    fn environment_limits_and_process_settings() {
        let out = yaml(
            "service x\n{\n socket_type = stream\n wait = no\n server = /bin/cat\n env = A=1 B=two\n env += C=3\n passenv = PATH TZ\n nice = 5\n umask = 027\n rlimit_as = 8M\n rlimit_cpu = 20\n rlimit_files = UNLIMITED\n rlimit_rss = 1M\n group = daemon\n bind = 127.0.0.1\n}\n",
        );
        assert!(
            out.contains("    env:\n      A: \"1\"\n      B: two\n      C: \"3\"\n"),
            "{out}"
        );
        assert!(out.contains("pass_env: [PATH, TZ]"), "{out}");
        assert!(out.contains("nice: 5"), "{out}");
        assert!(out.contains("umask: \"027\""), "{out}");
        assert!(
            out.contains("rlimits:\n      as: 8388608\n      cpu: 20\n      nofile: unlimited\n"),
            "{out}"
        );
        assert!(out.contains("not converted: rlimit_rss"), "{out}");
        assert!(out.contains("group: daemon"), "{out}");
        assert!(out.contains("address: 127.0.0.1"), "{out}");
    }

    #[test]
    fn address_forms() {
        assert_eq!(
            networks_of("128.138.0.0"),
            Some(vec!["128.138.0.0/16".into()])
        );
        assert_eq!(
            networks_of("128.138.{193,194}"),
            Some(vec!["128.138.193.0/24".into(), "128.138.194.0/24".into()])
        );
        assert_eq!(networks_of("10.1.2.3"), Some(vec!["10.1.2.3".into()]));
        assert_eq!(networks_of("::1"), Some(vec!["::1".into()]));
        assert_eq!(networks_of("fe80::/10"), Some(vec!["fe80::/10".into()]));
        assert_eq!(networks_of("host.example.org"), None);
        assert_eq!(networks_of(".example.org"), None);
        assert_eq!(networks_of("0.0.0.0").map(|v| v.len()), Some(2));
    }

    #[test]
    fn hostnames_in_acls_disable_the_service_for_review() {
        let out = yaml(
            "service x\n{\n socket_type = stream\n wait = no\n server = /bin/cat\n only_from = localhost 127.0.0.1\n}\n",
        );
        assert!(out.contains("review, then enable"), "{out}");
        assert!(out.contains("disabled: true"), "{out}");
        let out = yaml(
            "service x\n{\n socket_type = stream\n wait = no\n server = /bin/cat\n only_from =\n}\n",
        );
        assert!(out.contains("no_access: [0.0.0.0/0, \"::/0\"]"), "{out}");
    }

    #[test]
    fn xinetd_only_internals_and_rpc_are_commented_out() {
        let t = translate(
            "x",
            "service servers\n{\n type = INTERNAL UNLISTED\n port = 9099\n socket_type = stream\n wait = no\n}\n",
            &mut no_includes(),
        );
        let out = render(&t.doc).text;
        assert!(out.contains("services: []"), "{out}");
        assert!(out.contains("# - name: servers"), "{out}");
        assert_eq!(t.warnings.len(), 1);
    }

    #[test]
    fn defaults_enabled_and_disabled_lists() {
        let out = yaml(
            "defaults\n{\n disabled = b\n}\nservice a\n{\n socket_type = stream\n wait = no\n server = /bin/cat\n}\nservice b\n{\n socket_type = stream\n wait = no\n server = /bin/cat\n}\n",
        );
        let b = out.split("- name: b").nth(1).unwrap();
        assert!(b.contains("disabled: true"), "{out}");
        assert!(
            !out.split("- name: b")
                .next()
                .unwrap()
                .contains("disabled: true"),
            "{out}"
        );
    }

    #[test]
    fn includes_are_read_through_the_reader() {
        let mut read = |from: &str, include: Include<'_>| {
            assert_eq!(from, "main");
            assert_eq!(include, Include::Dir("/etc/xinetd.d"));
            Ok(vec![(
                "/etc/xinetd.d/echo".to_string(),
                DEBIAN_ECHO.to_string(),
            )])
        };
        let t = translate(
            "main",
            "defaults\n{\n}\nincludedir /etc/xinetd.d\n",
            &mut read,
        );
        assert!(t.errors.is_empty(), "{:?}", t.errors);
        assert_eq!(t.doc.services.len(), 2);
        assert!(
            render(&t.doc)
                .text
                .contains("# /etc/xinetd.d/echo:2: service echo")
        );
    }

    #[test]
    fn every_error_is_reported_with_its_line() {
        let t = translate(
            "x",
            "service a\n{\n socket_type = stream\n wait = maybe\n}\nbogus line\nservice b\n{\n nothing here\n",
            &mut no_includes(),
        );
        let e = t.errors;
        assert!(
            e.iter()
                .any(|m| m.starts_with("x:4:") && m.contains("wait = maybe")),
            "{e:?}"
        );
        assert!(e.iter().any(|m| m.starts_with("x:6:")), "{e:?}");
        assert!(e.iter().any(|m| m.starts_with("x:9:")), "{e:?}");
        assert!(
            e.iter()
                .any(|m| m.starts_with("x:7:") && m.contains("not closed")),
            "{e:?}"
        );
        assert!(e.iter().any(|m| m.contains("server is missing")), "{e:?}");
    }

    #[test]
    fn an_include_loop_ends() {
        let mut read =
            |_: &str, _: Include<'_>| Ok(vec![("x".to_string(), "include x\n".to_string())]);
        let t = translate("x", "include x\n", &mut read);
        assert!(
            t.errors.iter().any(|e| e.contains("too deep")),
            "{:?}",
            t.errors
        );
    }

    /// Found by the xinetd_conf fuzzer: an attribute rinetd does not know was quoted in its
    /// "not converted" note as it was, NUL and all, and no YAML reader takes a NUL.
    #[test]
    fn a_control_character_quoted_in_a_note_breaks_the_yaml() {
        let out = yaml("service x{\n socket_type = stream\n\nserver = \n\0=\0\n}\n");
        assert_eq!(crate::config::syntax_error(&out), None, "{out}");
        assert!(out.contains("not converted: \\x00"), "{out}");
    }

    #[test]
    fn strange_input_never_panics() {
        for text in [
            "{",
            "}",
            "service",
            "service a {",
            "defaults {\n=\n}",
            "service a\n{\n+= x\n -= \n a -=\n}",
            "service a\n{\n cps = 1\n rlimit_as = 99999999999999999999K\n port = x\n}",
        ] {
            let _ = translate("f", text, &mut no_includes());
        }
    }
}
