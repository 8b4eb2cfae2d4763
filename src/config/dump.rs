//! The effective table as YAML (`rinetd -T`): every service with every key that applies to its
//! kind, `defaults:` applied, includes expanded and default values written out, in a form that
//! `rinetd -t` reads back as it is (and that dumps to the very same text again).

use std::fmt::Write as _;
use std::time::Duration;

use super::check::Shape;
use super::{Handler, IdSpec, PortSpec, Protocol, ServiceSpec, StderrMode, Table};
use crate::compat::emit::scalar;
use crate::tls::config::MinVersion;

/// The first line of every dump: what it is (and no path, so that a dump of a dump is equal).
pub const HEADER: &str = "# rinetd -T: the effective table (includes expanded, defaults applied, every default written out)";

/// The table as YAML. `port_of` gives the number a `port:` name stands for (resolve has
/// checked that every one has one).
pub fn render(table: &Table, port_of: &dyn Fn(&ServiceSpec) -> Option<u16>) -> String {
    let mut out = format!("{HEADER}\n");
    if table.services.is_empty() {
        out.push_str("services: []\n");
        return out;
    }
    out.push_str("services:\n");
    for spec in &table.services {
        service(&mut out, spec, port_of);
    }
    out
}

fn service(out: &mut String, spec: &ServiceSpec, port_of: &dyn Fn(&ServiceSpec) -> Option<u16>) {
    let shape = Shape::of(spec);
    let _ = writeln!(out, "  - name: {}", scalar(&spec.name));
    let mut line = |key: &str, value: String| {
        let _ = writeln!(out, "    {key}: {value}");
    };
    line("protocol", spec.protocol.as_str().to_string());
    match spec.protocol {
        Protocol::Tcp | Protocol::Udp => {
            let addresses: Vec<String> = spec
                .addresses
                .iter()
                .map(|ip| scalar(&ip.to_string()))
                .collect();
            line("address", format!("[{}]", addresses.join(", ")));
            let port = match &spec.port {
                PortSpec::Number(n) => Some(*n),
                PortSpec::Name(_) => port_of(spec),
            };
            line("port", port.unwrap_or(0).to_string());
        }
        Protocol::Unix => {
            if let Some(unix) = &spec.unix {
                line("path", scalar(&unix.path.to_string_lossy()));
                line("socket_mode", format!("\"{:04o}\"", unix.mode));
            }
        }
        Protocol::None => {}
    }
    match &spec.handler {
        Handler::Server { path, args, .. } => {
            line("server", scalar(&path.to_string_lossy()));
            line("args", list(args.iter().map(String::as_str)));
        }
        Handler::Builtin(builtin) => line("builtin", builtin.name().to_string()),
    }
    if spec.protocol != Protocol::None {
        line("wait", spec.wait.to_string());
    }
    if shape.runs_program() {
        if let Some((user, _)) = &spec.user {
            line("user", id(user));
        }
        if let Some((group, _)) = &spec.group {
            line("group", id(group));
        }
        let env: Vec<String> = spec
            .env
            .iter()
            .map(|(name, value)| format!("{}: {}", scalar(name), scalar(value)))
            .collect();
        line("env", format!("{{{}}}", env.join(", ")));
        line("pass_env", list(spec.pass_env.iter().map(String::as_str)));
        line("cwd", scalar(&spec.cwd.to_string_lossy()));
        let stderr = match spec.stderr {
            StderrMode::Log => "log",
            StderrMode::Socket => "socket",
            StderrMode::Null => "\"null\"",
        };
        line("stderr", stderr.to_string());
    }
    if !shape.supervised {
        line("max_children", spec.max_children.to_string());
    }
    if shape.sees_clients() {
        line("per_source", spec.per_source.to_string());
    }
    if shape.rate_limited()
        && let Some(rate) = &spec.rate_limit
    {
        line(
            "rate_limit",
            format!(
                "{{max: {}, per: {}, pause: {}}}",
                rate.max,
                duration(rate.per),
                duration(rate.pause)
            ),
        );
    }
    if shape.sees_clients() {
        let nets = |nets: &[ipnet::IpNet]| {
            let texts: Vec<String> = nets.iter().map(|net| scalar(&net.to_string())).collect();
            format!("[{}]", texts.join(", "))
        };
        line("only_from", nets(&spec.only_from));
        line("no_access", nets(&spec.no_access));
    }
    if shape.runs_program() {
        if !shape.supervised
            && let Some(timeout) = spec.timeout
        {
            line("timeout", duration(timeout));
        }
        let limits: Vec<String> = spec
            .rlimits
            .iter()
            .map(|(resource, value)| {
                let value = value.map_or_else(|| "unlimited".to_string(), |n| n.to_string());
                format!("{}: {value}", resource.name())
            })
            .collect();
        line("rlimits", format!("{{{}}}", limits.join(", ")));
        if let Some(nice) = spec.nice {
            line("nice", nice.to_string());
        }
        line("umask", format!("\"{:03o}\"", spec.umask));
    }
    if shape.backlog() {
        line("backlog", spec.backlog.to_string());
    }
    if shape.keepalive() {
        line("keepalive", spec.keepalive.to_string());
    }
    if shape.tcp_nowait() {
        line("proxy_protocol", spec.proxy_protocol.to_string());
    }
    line("disabled", spec.disabled.to_string());
    line("respawn", spec.respawn.to_string());
    line("respawn_max_delay", duration(spec.respawn_max_delay));
    if shape.supervised {
        line("notify", spec.notify.to_string());
    }
    if shape.counts_sources() {
        if let Some(rate) = &spec.per_source_rate {
            line(
                "per_source_rate",
                format!("{{max: {}, per: {}}}", rate.max, duration(rate.per)),
            );
        }
        line(
            "source_prefix",
            format!(
                "{{ipv4: {}, ipv6: {}}}",
                spec.source_prefix.ipv4, spec.source_prefix.ipv6
            ),
        );
    }
    if let Some(tls) = &spec.tls {
        let settings = &tls.settings;
        let _ = writeln!(out, "    tls:");
        let mut tls_line = |key: &str, value: String| {
            let _ = writeln!(out, "      {key}: {value}");
        };
        tls_line("cert", scalar(&settings.cert.to_string_lossy()));
        tls_line("key", scalar(&settings.key.to_string_lossy()));
        let sni: Vec<String> = settings
            .sni
            .iter()
            .map(|entry| {
                format!(
                    "{{names: {}, cert: {}, key: {}}}",
                    list(entry.names.iter().map(String::as_str)),
                    scalar(&entry.cert.to_string_lossy()),
                    scalar(&entry.key.to_string_lossy())
                )
            })
            .collect();
        tls_line("sni", format!("[{}]", sni.join(", ")));
        if let Some(ca) = &settings.client_ca {
            tls_line("client_ca", scalar(&ca.to_string_lossy()));
        }
        tls_line("alpn", list(settings.alpn.iter().map(String::as_str)));
        let version = match settings.min_version {
            MinVersion::V12 => "\"1.2\"",
            MinVersion::V13 => "\"1.3\"",
        };
        tls_line("min_version", version.to_string());
        tls_line("handshake_timeout", duration(settings.handshake_timeout));
    }
}

/// A flow list of texts: `[a, "b c"]`.
fn list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let items: Vec<String> = items.map(scalar).collect();
    format!("[{}]", items.join(", "))
}

fn id(id: &IdSpec) -> String {
    match id {
        IdSpec::Id(n) => n.to_string(),
        IdSpec::Name(name) => scalar(name),
    }
}

/// In the table's own forms: the largest of `h`, `m`, `s` that is exact, else `ms`.
pub fn duration(duration: Duration) -> String {
    if duration.subsec_nanos() != 0 {
        return format!("{}ms", duration.as_millis());
    }
    let seconds = duration.as_secs();
    match seconds {
        0 => "0s".to_string(),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::check::parse;

    fn dump(text: &str) -> String {
        let table = parse("t.conf", text).unwrap_or_else(|e| panic!("{e:?}"));
        render(&table, &|_| Some(7))
    }

    #[test]
    fn durations_in_the_tables_own_forms() {
        assert_eq!(duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(duration(Duration::from_secs(90)), "90s");
        assert_eq!(duration(Duration::from_secs(300)), "5m");
        assert_eq!(duration(Duration::from_secs(7200)), "2h");
        assert_eq!(duration(Duration::ZERO), "0s");
    }

    #[test]
    fn every_default_is_written_and_the_dump_reads_back_to_itself() {
        let text = "defaults:
  user: nobody
  per_source_rate: {max: 5, per: 60s}
services:
  - name: echo
    port: echo
    builtin: echo
  - name: hello
    address: [127.0.0.1, \"::1\"]
    port: 8080
    server: /bin/cat
    env: {A: \"b c\"}
    umask: \"027\"
    rlimits: {nofile: 100, core: unlimited}
    tls: {cert: /c.pem, key: /k.pem}
  - name: sock
    protocol: unix
    path: /run/s.sock
    server: /bin/cat
  - name: keeper
    protocol: none
    respawn: true
    server: /bin/sleep
    args: [sleep, \"1000\"]
";
        let first = dump(text);
        assert!(first.contains("    port: 7\n"), "{first}");
        assert!(first.contains("    umask: \"027\"\n"), "{first}");
        assert!(first.contains("    max_children: 256\n"), "{first}");
        assert!(
            first.contains("    per_source_rate: {max: 5, per: 1m}\n"),
            "{first}"
        );
        assert!(first.contains("    socket_mode: \"0666\"\n"), "{first}");
        assert!(
            first.contains("    address: [127.0.0.1, \"::1\"]\n"),
            "{first}"
        );
        assert!(first.contains("      handshake_timeout: 10s\n"), "{first}");
        assert!(first.contains("    user: nobody\n"), "{first}");
        // A builtin has no process: no user, however defaults say.
        let echo = first.split("  - name: hello").next().unwrap_or_default();
        assert!(!echo.contains("user:"), "{echo}");
        assert_eq!(dump(&first), first);
    }

    /// Small random edits of two tables: whatever the checker accepts, its dump reads back
    /// without errors and dumps to the same text; nothing panics on the way.
    #[test]
    fn any_table_the_checker_accepts_dumps_to_a_fixed_point() {
        let seeds = [
            "defaults:\n  user: nobody\n  env: {A: b}\n  per_source_rate: {max: 2, per: 90s}\nservices:\n  - name: a\n    port: 1\n    server: /bin/true\n    args: [a, b]\n    umask: \"022\"\n    rate_limit: {max: 1, per: 1s, pause: 2s}\n  - {name: b, protocol: unix, path: /x, builtin: metrics}\n  - {name: d, port: 4, builtin: echo, tls: {cert: /c, key: /k, sni: [{names: [a], cert: /c, key: /k}]}}\n  - name: c\n    protocol: none\n    respawn: true\n    server: /x\n    env: {A: \"b c\"}\n    nice: 3\n",
            "services:\n  - {name: x, port: 1, server: /x, address: [\"::\", 1.2.3.4]}\n  - {name: y, port: 2, protocol: udp, server: /x, wait: false, rlimits: {nofile: 1, as: unlimited}, per_source_rate: {max: 1, per: 1m}, source_prefix: {ipv4: 1}, stderr: null}\n",
        ];
        // xorshift64: the same edits on every run.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as usize
        };
        let alphabet = b" \t\n:-[]{},\"'&*!#|>~%@`?0123456789abcxyz<=/.";
        let mut accepted = 0;
        for round in 0..4_000 {
            let mut bytes = seeds[round % seeds.len()].as_bytes().to_vec();
            for _ in 0..1 + next() % 2 {
                let at = next() % (bytes.len() + 1);
                let byte = alphabet[next() % alphabet.len()];
                match next() % 3 {
                    0 if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    1 => bytes.insert(at, byte),
                    _ if at < bytes.len() => bytes[at] = byte,
                    _ => {}
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            let (table, errors) = crate::config::parse_partial("t", &text, &mut |_| Ok(Vec::new()));
            let first = render(&table, &|_| Some(1));
            if errors.is_empty() {
                let (again, errors) =
                    crate::config::parse_partial("d", &first, &mut |_| Ok(Vec::new()));
                assert!(errors.is_empty(), "{text}\n{first}\n{errors:?}");
                assert_eq!(render(&again, &|_| Some(1)), first, "{text}");
                accepted += 1;
            }
        }
        assert!(
            accepted > 100,
            "only {accepted} edited tables were accepted"
        );
    }
}
