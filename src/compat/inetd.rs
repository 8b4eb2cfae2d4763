//! Classic inetd.conf (OpenBSD/Debian, FreeBSD and inetutils syntax) read into a YAML table
//! document: one service per entry, every value remembering its line and field. Pure: the
//! text in, the document and every located problem out.
//!
//! The grammar: `[host:]service socktype proto wait|nowait[.max][/max-child[/per-minute[/per-ip]]]
//! user[:group|.group][/class] server|internal [argv0 args…]`; a line `host:` alone sets the
//! host of the lines after it; `#` starts a comment line; a line that starts with a blank
//! continues the entry above it (as in BSD inetd).

use std::collections::HashSet;

use super::emit::{Document, Origin, ServiceDoc, Value};
use super::{Mode, Translation, builtin_named, unique_name};

/// One whitespace-separated word and where it was written.
#[derive(Debug, Clone)]
struct Field<'t> {
    text: &'t str,
    line: usize,
    column: usize,
}

/// Address families a protocol word stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tcp,
    Udp,
    Unix,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Tcp => "tcp",
            Kind::Udp => "udp",
            Kind::Unix => "unix",
        }
    }
}

/// The inetd.conf field names used in messages, as inetd.conf(5) calls them.
const SERVICE: &str = "service";
const SOCKET_TYPE: &str = "socket type";
const PROTOCOL: &str = "protocol";
const WAIT: &str = "wait/nowait";
const USER: &str = "user";
const SERVER: &str = "server program";
const ARGUMENTS: &str = "server program arguments";

/// Reads `text` (the contents of `file`, an inetd.conf).
pub fn translate(file: &str, text: &str, mode: Mode) -> Translation {
    let mut reader = Reader {
        file,
        mode,
        translation: Translation::default(),
        default_host: None,
        names: HashSet::new(),
    };
    reader.translation.doc = Document {
        header: vec![format!(
            "Converted from {file} (inetd.conf) by rinetd convert; see rinetd.conf(5)."
        )],
        ..Document::default()
    };
    for entry in entries(text) {
        reader.entry(&entry);
    }
    reader.translation
}

/// The logical entries of the file: fields of a line and of the continuation lines after it.
fn entries(text: &str) -> Vec<Vec<Field<'_>>> {
    let mut entries: Vec<Vec<Field<'_>>> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let fields = fields_of(line, index + 1);
        let continues = line.starts_with([' ', '\t']);
        match entries.last_mut() {
            Some(last) if continues => last.extend(fields),
            _ => entries.push(fields),
        }
    }
    entries
}

fn fields_of(line: &str, number: usize) -> Vec<Field<'_>> {
    let mut fields = Vec::new();
    let mut start = None;
    for (offset, c) in line.char_indices().chain([(line.len(), ' ')]) {
        match (c.is_whitespace(), start) {
            (false, None) => start = Some(offset),
            (true, Some(begin)) => {
                fields.push(Field {
                    text: &line[begin..offset],
                    line: number,
                    column: line[..begin].chars().count() + 1,
                });
                start = None;
            }
            _ => {}
        }
    }
    fields
}

struct Reader<'f> {
    file: &'f str,
    mode: Mode,
    translation: Translation,
    /// Set by a `host:` line; `None` is every address.
    default_host: Option<String>,
    names: HashSet<String>,
}

/// Why an entry cannot become a service.
enum Problem {
    /// The line is not inetd.conf as any inetd reads it.
    Syntax(String),
    /// Valid for some inetd, but rinetd has nothing to run it with.
    Unsupported(String),
}

impl Reader<'_> {
    fn origin(&self, field: &Field<'_>, name: &'static str) -> Option<Origin> {
        Some(Origin {
            file: self.file.to_string(),
            line: field.line,
            column: field.column,
            field: name,
        })
    }

    fn located(&self, field: &Field<'_>, name: &str, message: &str) -> String {
        format!(
            "{}:{}:{}: {name} field: {message}",
            self.file, field.line, field.column
        )
    }

    fn entry(&mut self, fields: &[Field<'_>]) {
        let Some(first) = fields.first() else {
            return;
        };
        // `host:` alone: the default host of the entries that follow.
        if fields.len() == 1
            && let Some(host) = first.text.strip_suffix(':')
        {
            match parse_host(host) {
                Ok(host) => self.default_host = host,
                Err(message) => {
                    let error = self.located(first, "host", &message);
                    self.translation.errors.push(error);
                }
            }
            return;
        }
        if fields.len() < 6 {
            self.translation.errors.push(format!(
                "{}:{}:{}: expected at least 6 fields (service, socket type, protocol, wait/nowait, user, server program), found {}",
                self.file,
                first.line,
                first.column,
                fields.len()
            ));
            return;
        }
        match self.service(fields) {
            Ok(service) => self.translation.doc.services.push(service),
            Err((field, Problem::Syntax(message))) => {
                let error = self.located(&fields[field], field_name(field), &message);
                self.translation.errors.push(error);
            }
            Err((field, Problem::Unsupported(message))) => {
                let located = self.located(&fields[field], field_name(field), &message);
                match self.mode {
                    Mode::Run => self.translation.errors.push(located),
                    Mode::Convert => {
                        let source: Vec<&str> = fields.iter().map(|f| f.text).collect();
                        self.translation.doc.services.push(ServiceDoc {
                            name: String::new(),
                            notes: vec![
                                format!("{}:{}: not converted: {message}", self.file, first.line),
                                format!("  {}", source.join(" ")),
                            ],
                            commented_out: true,
                            ..ServiceDoc::default()
                        });
                        self.translation.warnings.push(located);
                    }
                }
            }
        }
    }

    /// The service an entry describes, or the index of the field at fault and why.
    fn service(&mut self, fields: &[Field<'_>]) -> Result<ServiceDoc, (usize, Problem)> {
        let syntax = |index: usize, message: String| (index, Problem::Syntax(message));
        let unsupported = |index: usize, message: String| (index, Problem::Unsupported(message));

        // Protocol first: it says whether the service field is a path or [host:]service.
        let (proto_word, proto_options) = match fields[2].text.split_once(',') {
            Some((word, options)) => (word, Some(options)),
            None => (fields[2].text, None),
        };
        let (kind, family) = match proto_word {
            "tcp" | "tcp4" => (Kind::Tcp, Family::V4),
            "tcp6" => (Kind::Tcp, Family::V6),
            "tcp46" => (Kind::Tcp, Family::Both),
            "udp" | "udp4" => (Kind::Udp, Family::V4),
            "udp6" => (Kind::Udp, Family::V6),
            "udp46" => (Kind::Udp, Family::Both),
            "unix" => (Kind::Unix, Family::V4),
            rpc if rpc.starts_with("rpc/") => {
                return Err(unsupported(
                    2,
                    "RPC services (rpc/…) need a portmapper; rinetd does not register them"
                        .to_string(),
                ));
            }
            other => {
                return Err(syntax(
                    2,
                    format!(
                        "\"{other}\" is not one of tcp, tcp4, tcp6, tcp46, udp, udp4, udp6, udp46, unix"
                    ),
                ));
            }
        };
        match (fields[1].text, kind) {
            ("stream", Kind::Tcp | Kind::Unix) | ("dgram", Kind::Udp) => {}
            ("dgram", Kind::Unix) => {
                return Err(unsupported(
                    1,
                    "rinetd's unix services are stream sockets; dgram unix is not served"
                        .to_string(),
                ));
            }
            ("stream" | "dgram", _) => {
                return Err(syntax(
                    1,
                    format!(
                        "\"{}\" does not go with protocol {proto_word} (stream is tcp or unix, dgram is udp)",
                        fields[1].text
                    ),
                ));
            }
            ("raw" | "rdm" | "seqpacket", _) => {
                return Err(unsupported(
                    1,
                    format!(
                        "socket type \"{}\" is not served by rinetd (stream and dgram are)",
                        fields[1].text
                    ),
                ));
            }
            (other, _) => {
                return Err(syntax(
                    1,
                    format!("\"{other}\" is not one of stream, dgram, raw, rdm, seqpacket"),
                ));
            }
        }

        let mut doc = ServiceDoc::default();
        let mut notes = Vec::new();
        if let Some(options) = proto_options {
            notes.push(format!(
                "protocol options \"{options}\" (socket buffer sizes): no equivalent, the kernel's defaults apply"
            ));
        }

        // [host:]service, or the socket's path for unix.
        let service_field = &fields[0];
        let (host, service) = if kind == Kind::Unix {
            (None, service_field.text)
        } else {
            match split_host(service_field.text) {
                Some((host, service)) => match parse_host(host) {
                    Ok(host) => (host, service),
                    Err(message) => return Err(syntax(0, message)),
                },
                None => (self.default_host.clone(), service_field.text),
            }
        };
        if service.is_empty() {
            return Err(syntax(0, "the service name is empty".to_string()));
        }
        if service.contains('/') && kind != Kind::Unix {
            // tcpmux/+name and rpc names: inetd-specific dispatching.
            return Err(unsupported(
                0,
                format!("\"{service}\": tcpmux and RPC service names are not served by rinetd"),
            ));
        }

        // wait|nowait[.max][/max-child[/per-minute[/per-ip]]]
        let wait_field = &fields[3];
        let (head, freebsd) = match wait_field.text.split_once('/') {
            Some((head, rest)) => (head, Some(rest)),
            None => (wait_field.text, None),
        };
        let (word, spawn_max) = match head.split_once('.') {
            Some((word, max)) => match max.parse::<u32>() {
                Ok(max) => (word, Some(max)),
                Err(_) => {
                    return Err(syntax(
                        3,
                        format!("\"{max}\" after the dot is not a number of spawns per minute"),
                    ));
                }
            },
            None => (head, None),
        };
        let wait = match word {
            "wait" => true,
            "nowait" => false,
            other => {
                return Err(syntax(3, format!("\"{other}\" is not wait or nowait")));
            }
        };
        let mut limits = [None; 3];
        if let Some(rest) = freebsd {
            let parts: Vec<&str> = rest.split('/').collect();
            if parts.len() > 3 {
                return Err(syntax(
                    3,
                    "at most three /limits follow wait or nowait (max-child/per-ip-per-minute/max-child-per-ip)".to_string(),
                ));
            }
            for (slot, part) in limits.iter_mut().zip(&parts) {
                match part.parse::<u32>() {
                    Ok(n) => *slot = Some(n),
                    Err(_) => {
                        return Err(syntax(3, format!("\"{part}\" is not a number")));
                    }
                }
            }
        }

        // user[:group|.group][/login-class]
        let user_field = &fields[4];
        let (who, class) = match user_field.text.split_once('/') {
            Some((who, class)) => (who, Some(class)),
            None => (user_field.text, None),
        };
        let (user, group) = match who.split_once(':').or_else(|| who.split_once('.')) {
            Some((user, group)) => (user, Some(group)),
            None => (who, None),
        };
        if user.is_empty() || group.is_some_and(str::is_empty) {
            return Err(syntax(
                4,
                format!(
                    "\"{}\" is not user, user:group or user.group",
                    user_field.text
                ),
            ));
        }
        if let Some(class) = class {
            notes.push(format!(
                "login class \"{class}\": no equivalent; set rlimits, nice and umask instead"
            ));
        }

        let server_field = &fields[5];
        let arguments: Vec<&str> = fields[6..].iter().map(|f| f.text).collect();
        let builtin = if server_field.text == "internal" {
            let named = builtin_named(service)
                .or_else(|| arguments.first().and_then(|arg| builtin_named(arg)));
            match named {
                Some(builtin) => Some(builtin),
                None => {
                    return Err(unsupported(
                        0,
                        format!(
                            "internal service \"{service}\" is not one of rinetd's builtins (echo, discard, chargen, daytime, time); name one after \"internal\""
                        ),
                    ));
                }
            }
        } else {
            None
        };

        // The service is well formed: write it.
        let base = match kind {
            Kind::Unix => service.rsplit('/').next().unwrap_or(service),
            _ => service,
        };
        doc.name = unique_name(&mut self.names, base, proto_word, service_field.line);
        doc.origin = self.origin(service_field, SERVICE);
        let service_origin = self.origin(service_field, SERVICE);
        doc.set(
            "protocol",
            Value::Text(kind.as_str().to_string()),
            self.origin(&fields[2], PROTOCOL),
        );
        if kind == Kind::Unix {
            doc.set(
                "path",
                Value::Text(service.to_string()),
                service_origin.clone(),
            );
        } else {
            let address = match (&host, family) {
                (Some(host), _) => {
                    let v6 = host.contains(':');
                    if (v6 && family == Family::V4) || (!v6 && family == Family::V6) {
                        return Err(syntax(
                            0,
                            format!(
                                "address {host} is not of the family protocol {proto_word} listens on"
                            ),
                        ));
                    }
                    Value::Text(host.clone())
                }
                (None, Family::V4) => Value::Text("0.0.0.0".into()),
                (None, Family::V6) => Value::Text("::".into()),
                (None, Family::Both) => Value::List(vec!["0.0.0.0".into(), "::".into()]),
            };
            doc.set("address", address, service_origin.clone());
            let port = match service.parse::<i64>() {
                Ok(number) => Value::Int(number),
                Err(_) => Value::Text(service.to_string()),
            };
            doc.set("port", port, service_origin.clone());
        }
        let server_origin = self.origin(server_field, SERVER);
        if let Some(builtin) = builtin {
            doc.set("builtin", Value::Text(builtin.to_string()), server_origin);
        } else {
            doc.set(
                "server",
                Value::Text(server_field.text.to_string()),
                server_origin,
            );
            if let Some(first) = fields.get(6) {
                let args = arguments.iter().map(|a| a.to_string()).collect();
                doc.set("args", Value::List(args), self.origin(first, ARGUMENTS));
            }
            doc.set("wait", Value::Bool(wait), self.origin(wait_field, WAIT));
            let user_origin = self.origin(user_field, USER);
            doc.set("user", id_value(user), user_origin.clone());
            if let Some(group) = group {
                doc.set("group", id_value(group), user_origin);
            }
            // inetd gives a handler the connection as fd 2 as well.
            doc.set("stderr", Value::Text("socket".into()), None);
        }
        self.limits(
            &mut doc,
            &mut notes,
            wait_field,
            Limits {
                kind,
                wait: wait && builtin.is_none(),
                spawn_max,
                max_child: limits[0],
                per_minute: limits[1],
                per_ip: limits[2],
            },
        );
        doc.notes
            .push(format!("{}:{}", self.file, service_field.line));
        if self.mode == Mode::Run {
            for note in &notes {
                let warning = self.located(service_field, SERVICE, note);
                self.translation.warnings.push(warning);
            }
        }
        doc.notes
            .extend(notes.into_iter().map(|n| format!("not converted: {n}")));
        Ok(doc)
    }

    /// `.max` and FreeBSD's `/max-child/per-minute/per-ip` where rinetd can enforce them.
    fn limits(
        &self,
        doc: &mut ServiceDoc,
        notes: &mut Vec<String>,
        wait_field: &Field<'_>,
        limits: Limits,
    ) {
        let origin = self.origin(wait_field, WAIT);
        // A handler that accepts its own clients (tcp/unix wait) is never spawned per client.
        let per_client = !(limits.wait && limits.kind != Kind::Udp);
        if let Some(max) = limits.spawn_max {
            if per_client && max > 0 {
                doc.set(
                    "rate_limit",
                    Value::Inline(vec![
                        ("max", Value::Int(i64::from(max))),
                        ("per", Value::Text("60s".into())),
                        ("pause", Value::Text("10m".into())),
                    ]),
                    origin.clone(),
                );
            } else {
                notes.push(format!(
                    ".{max} (spawns per minute): no equivalent for a wait service; rinetd restarts a failing one with a growing delay"
                ));
            }
        }
        if let Some(max) = limits.max_child.filter(|_| !limits.wait) {
            doc.set("max_children", Value::Int(i64::from(max)), origin.clone());
        }
        let by_address = per_client && !limits.wait && limits.kind != Kind::Unix;
        if let Some(max) = limits.per_minute.filter(|max| *max > 0) {
            if by_address {
                doc.set(
                    "per_source_rate",
                    Value::Inline(vec![
                        ("max", Value::Int(i64::from(max))),
                        ("per", Value::Text("60s".into())),
                    ]),
                    origin.clone(),
                );
            } else {
                notes.push(format!(
                    "{max} connections per address per minute: needs a client address and a connection per handler"
                ));
            }
        }
        if let Some(max) = limits.per_ip.filter(|max| *max > 0) {
            if by_address {
                doc.set("per_source", Value::Int(i64::from(max)), origin);
            } else {
                notes.push(format!(
                    "{max} children per address: needs a client address and a connection per handler"
                ));
            }
        }
    }
}

struct Limits {
    kind: Kind,
    wait: bool,
    spawn_max: Option<u32>,
    max_child: Option<u32>,
    per_minute: Option<u32>,
    per_ip: Option<u32>,
}

fn field_name(index: usize) -> &'static str {
    [SERVICE, SOCKET_TYPE, PROTOCOL, WAIT, USER, SERVER]
        .get(index)
        .copied()
        .unwrap_or(ARGUMENTS)
}

/// `127.0.0.1:echo` → (127.0.0.1, echo); `[::1]:echo` and `::1:echo` → (::1, echo).
fn split_host(text: &str) -> Option<(&str, &str)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return Some((host, after.strip_prefix(':').unwrap_or(after)));
    }
    text.rsplit_once(':')
}

/// `*` (every address) is None; otherwise an IP literal, which is what rinetd binds.
fn parse_host(host: &str) -> Result<Option<String>, String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host == "*" {
        return Ok(None);
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(address) => Ok(Some(address.to_string())),
        Err(_) => Err(format!(
            "host \"{host}\" is not an IP address; rinetd binds addresses, write the one \"{host}\" stands for"
        )),
    }
}

/// A user or group: a number stays a number (a uid), anything else is a name.
fn id_value(text: &str) -> Value {
    match text.parse::<u32>() {
        Ok(id) => Value::Int(i64::from(id)),
        Err(_) => Value::Text(text.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compat::emit::render;

    fn yaml(text: &str) -> String {
        let translation = translate("inetd.conf", text, Mode::Run);
        assert!(
            translation.errors.is_empty(),
            "unexpected errors: {:?}",
            translation.errors
        );
        render(&translation.doc).text
    }

    fn errors(text: &str) -> Vec<String> {
        translate("inetd.conf", text, Mode::Run).errors
    }

    #[test]
    fn debian_internal_services_become_builtins() {
        let text = "# comment\necho\tstream\ttcp\tnowait\troot\tinternal\ndiscard\tdgram\tudp\twait\troot\tinternal\n";
        let out = yaml(text);
        assert!(
            out.contains(
                "  - name: echo\n    protocol: tcp\n    address: 0.0.0.0\n    port: echo\n    builtin: echo\n"
            ),
            "{out}"
        );
        assert!(
            out.contains("  - name: discard\n    protocol: udp\n"),
            "{out}"
        );
        assert!(!out.contains("wait:"), "builtins take no wait: {out}");
        assert!(!out.contains("user:"), "builtins run inside rinetd: {out}");
    }

    #[test]
    fn same_service_over_two_protocols_gets_two_names() {
        let out = yaml(
            "echo stream tcp nowait root internal\necho dgram udp wait root internal\necho stream tcp6 nowait root internal\n",
        );
        assert!(out.contains("- name: echo\n"), "{out}");
        assert!(out.contains("- name: echo-udp\n"), "{out}");
        assert!(out.contains("- name: echo-tcp6\n"), "{out}");
        assert!(out.contains("address: \"::\""), "{out}");
    }

    #[test]
    fn a_server_gets_argv_user_group_wait_and_stderr_socket() {
        let out = yaml("ftp stream tcp nowait.40 root:wheel /usr/sbin/ftpd ftpd -l\n");
        for expected in [
            "server: /usr/sbin/ftpd\n",
            "args: [ftpd, \"-l\"]\n",
            "wait: false\n",
            "user: root\n",
            "group: wheel\n",
            "stderr: socket\n",
            "rate_limit: {max: 40, per: 60s, pause: 10m}\n",
        ] {
            assert!(out.contains(expected), "{expected:?} missing in:\n{out}");
        }
        assert!(
            yaml("x stream tcp nowait nobody.nogroup /bin/cat cat\n").contains("group: nogroup")
        );
    }

    #[test]
    fn freebsd_limits_map_to_children_rate_and_per_source() {
        let out = yaml("ssh stream tcp nowait/10/20/3 root /usr/sbin/sshd sshd -i\n");
        assert!(out.contains("max_children: 10\n"), "{out}");
        assert!(
            out.contains("per_source_rate: {max: 20, per: 60s}\n"),
            "{out}"
        );
        assert!(out.contains("per_source: 3\n"), "{out}");
        let out = yaml("ssh stream tcp nowait/0 root /usr/sbin/sshd sshd -i\n");
        assert!(
            out.contains("max_children: 0\n"),
            "0 is unlimited in both: {out}"
        );
    }

    #[test]
    fn host_prefixes_and_host_lines() {
        let out = yaml(
            "127.0.0.1:\necho stream tcp nowait root internal\n*:\ndaytime stream tcp nowait root internal\n[::1]:time stream tcp6 nowait root internal\n::1:8007 stream tcp6 nowait root internal echo\n",
        );
        assert!(
            out.contains("- name: echo\n    protocol: tcp\n    address: 127.0.0.1\n"),
            "{out}"
        );
        assert!(
            out.contains("- name: daytime\n    protocol: tcp\n    address: 0.0.0.0\n"),
            "{out}"
        );
        assert!(
            out.contains("- name: time\n    protocol: tcp\n    address: \"::1\"\n"),
            "{out}"
        );
        assert!(out.contains("port: 8007\n    builtin: echo\n"), "{out}");
    }

    #[test]
    fn tcp46_binds_both_families_and_unix_takes_a_path() {
        let out = yaml(
            "8000 stream tcp46 nowait nobody /bin/cat cat\n/run/x.sock stream unix nowait nobody /bin/cat cat\n",
        );
        assert!(out.contains("address: [0.0.0.0, \"::\"]"), "{out}");
        assert!(
            out.contains("- name: x.sock\n    protocol: unix\n    path: /run/x.sock\n"),
            "{out}"
        );
    }

    #[test]
    fn continuation_lines_add_arguments() {
        let out = yaml("x stream tcp nowait nobody /bin/echo echo\n\ta b\n");
        assert!(out.contains("args: [echo, a, b]"), "{out}");
    }

    #[test]
    fn every_bad_line_is_reported_with_line_and_field() {
        let e = errors(
            "echo stream tcp nowait root\nx stream tcpx nowait root /bin/cat\ny stream tcp sometimes root /bin/cat\nz dgram tcp nowait root /bin/cat\nw stream tcp nowait.x root /bin/cat\n",
        );
        assert_eq!(e.len(), 5, "{e:?}");
        assert!(
            e[0].starts_with("inetd.conf:1:1: expected at least 6"),
            "{e:?}"
        );
        assert!(e[0].contains("at least 6 fields"), "{e:?}");
        assert!(
            e[1].starts_with("inetd.conf:2:10: protocol field: \"tcpx\""),
            "{e:?}"
        );
        assert!(
            e[2].starts_with("inetd.conf:3:14: wait/nowait field"),
            "{e:?}"
        );
        assert!(
            e[3].starts_with("inetd.conf:4:3: socket type field"),
            "{e:?}"
        );
        assert!(e[4].contains("wait/nowait field"), "{e:?}");
    }

    #[test]
    fn unsupported_services_are_errors_to_run_and_comments_to_convert() {
        let text = "rstatd/1-3 dgram rpc/udp wait root /usr/sbin/rpc.rstatd rpc.rstatd\nauth stream tcp nowait root internal\n";
        assert_eq!(errors(text).len(), 2);
        let converted = translate("inetd.conf", text, Mode::Convert);
        assert!(converted.errors.is_empty());
        let out = render(&converted.doc).text;
        assert!(out.starts_with("# Converted"), "{out}");
        assert!(out.contains("services: []"), "{out}");
        assert!(out.contains("# inetd.conf:1: not converted: RPC"), "{out}");
        assert!(
            out.contains("#   auth stream tcp nowait root internal"),
            "{out}"
        );
    }

    #[test]
    fn hostnames_and_family_mismatches_are_errors() {
        let e = errors(
            "example.org:echo stream tcp nowait root internal\n::1:echo stream tcp nowait root internal\n",
        );
        assert!(e[0].contains("is not an IP address"), "{e:?}");
        assert!(e[1].contains("not of the family"), "{e:?}");
    }

    #[test]
    fn wait_services_keep_no_per_client_limits() {
        let t = translate(
            "inetd.conf",
            "x stream tcp wait.5 nobody /bin/cat cat\n",
            Mode::Run,
        );
        let out = render(&t.doc).text;
        assert!(!out.contains("rate_limit"), "{out}");
        assert!(out.contains("not converted: .5"), "{out}");
        assert_eq!(t.warnings.len(), 1);
        let out = yaml("tftp dgram udp wait.5 nobody /usr/sbin/in.tftpd in.tftpd\n");
        assert!(
            out.contains("rate_limit: {max: 5"),
            "udp wait spawns per datagram burst: {out}"
        );
    }

    /// Found by the inetd_conf fuzzer: the note about a login class quoted a NUL as it was,
    /// and no YAML reader takes a NUL, even in a comment.
    #[test]
    fn a_control_character_quoted_in_a_note_breaks_the_yaml() {
        for mode in [Mode::Run, Mode::Convert] {
            let out = render(&translate("inetd.conf", "x stream tcp wait n/\0 h", mode).doc).text;
            assert_eq!(crate::config::syntax_error(&out), None, "{out}");
            assert!(out.contains("login class \"\\x00\""), "{out}");
        }
    }

    #[test]
    fn strange_input_never_panics() {
        for text in [
            "",
            ":",
            "[",
            "[::1",
            "a b c d e f",
            "::",
            "* stream tcp nowait r internal",
            "x stream tcp nowait. r /a",
            "x stream tcp nowait/ r /a",
            "x stream tcp nowait a: /a",
            "\u{feff}é stream tcp nowait root internal echo",
            "[]:x stream tcp nowait r /a",
        ] {
            let _ = translate("f", text, Mode::Run);
            let _ = translate("f", text, Mode::Convert);
        }
    }
}
