//! What the `metrics` builtin serves: the Prometheus text exposition (format 0.0.4) of every
//! service's counters and of the daemon's, rendered when a scrape asks.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use super::Server;
use super::table::{Entry, RUN_TIME_BUCKETS};
use crate::service::{Kind, Refusal};

/// The daemon's own figures.
pub struct Daemon {
    pub started: SystemTime,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
}

impl Daemon {
    pub fn new() -> Daemon {
        Daemon {
            started: SystemTime::now(),
            reloads_ok: 0,
            reloads_failed: 0,
        }
    }
}

const REFUSALS: [Refusal; 4] = [
    Refusal::OnlyFrom,
    Refusal::NoAccess,
    Refusal::PerSource,
    Refusal::PerSourceRate,
];

/// A family's `# HELP` and `# TYPE` lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// `service="…",proto="…"`, escaped as the format wants.
fn labels(entry: &Entry) -> String {
    let mut name = String::new();
    for c in entry.service.name().chars() {
        match c {
            '\\' => name.push_str("\\\\"),
            '"' => name.push_str("\\\""),
            '\n' => name.push_str("\\n"),
            c => name.push(c),
        }
    }
    format!(
        "service=\"{name}\",proto=\"{}\"",
        entry.service.protocol.as_str()
    )
}

impl Server {
    /// The exposition of every service in the table (retired ones are gone) and of the daemon.
    pub(super) fn render_metrics(&self) -> String {
        let services: Vec<(String, &Entry)> = self
            .table
            .entries()
            .filter(|(_, entry)| !entry.is_retired())
            .map(|(_, entry)| (labels(entry), entry))
            .collect();
        let mut out = String::with_capacity(1024 + services.len() * 1500);
        // A family of per-service samples; `sample` gets the family's name, so that it is
        // written once.
        let mut each = |name: &str,
                        kind: &str,
                        help: &str,
                        sample: &dyn Fn(&mut String, &str, &str, &Entry)| {
            family(&mut out, name, kind, help);
            for (labels, entry) in &services {
                sample(&mut out, name, labels, entry);
            }
        };
        each(
            "rinetd_service_accepted_total",
            "counter",
            "Connections accepted (or datagrams read) by the service.",
            &|out, name, labels, entry| {
                let _ = writeln!(out, "{name}{{{labels}}} {}", entry.counters.accepted);
            },
        );
        each(
            "rinetd_service_refused_total",
            "counter",
            "Clients refused, by reason.",
            &|out, name, labels, entry| {
                for reason in REFUSALS {
                    let count = entry.counters.refused.get(&reason).copied().unwrap_or(0);
                    let reason = reason.as_str();
                    let _ = writeln!(out, "{name}{{{labels},reason=\"{reason}\"}} {count}");
                }
            },
        );
        each(
            "rinetd_service_running",
            "gauge",
            "Handlers and connections of the service now.",
            &|out, name, labels, entry| {
                let _ = writeln!(out, "{name}{{{labels}}} {}", entry.running());
            },
        );
        each(
            "rinetd_service_spawn_failures_total",
            "counter",
            "Handlers that could not be started.",
            &|out, name, labels, entry| {
                let _ = writeln!(out, "{name}{{{labels}}} {}", entry.counters.spawn_failures);
            },
        );
        each(
            "rinetd_service_tls_handshake_failures_total",
            "counter",
            "TLS handshakes that failed or passed handshake_timeout.",
            &|out, name, labels, entry| {
                let _ = writeln!(
                    out,
                    "{name}{{{labels}}} {}",
                    entry.counters.tls_handshake_failures
                );
            },
        );
        each(
            "rinetd_service_exits_total",
            "counter",
            "Handlers reaped, by outcome: exit status 0, another status, or a signal.",
            &|out, name, labels, entry| {
                let c = &entry.counters;
                for (outcome, count) in [
                    ("success", c.exits_success),
                    ("failure", c.exits_failure),
                    ("signal", c.exits_signal),
                ] {
                    let _ = writeln!(out, "{name}{{{labels},outcome=\"{outcome}\"}} {count}");
                }
            },
        );
        each(
            "rinetd_service_handler_seconds",
            "histogram",
            "How long handlers ran.",
            &|out, name, labels, entry| {
                let c = &entry.counters;
                let mut cumulative = 0;
                for (bound, count) in RUN_TIME_BUCKETS.iter().zip(&c.run_time_buckets) {
                    cumulative += count;
                    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
                }
                let total: u64 = c.run_time_buckets.iter().sum();
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {total}");
                let _ = writeln!(out, "{name}_sum{{{labels}}} {}", c.run_time_sum);
                let _ = writeln!(out, "{name}_count{{{labels}}} {total}");
            },
        );
        each(
            "rinetd_service_restarts_total",
            "counter",
            "Handlers of a supervised or wait: true service started again after the first.",
            &|out, name, labels, entry| {
                let restarts = if entry.kind == Kind::Wait || entry.service.supervise.is_some() {
                    entry.counters.started.saturating_sub(1)
                } else {
                    0
                };
                let _ = writeln!(out, "{name}{{{labels}}} {restarts}");
            },
        );
        each(
            "rinetd_service_up",
            "gauge",
            "1 while the service listens (a supervised one: while its program runs).",
            &|out, name, labels, entry| {
                let up = if entry.service.supervise.is_some() {
                    entry.running() > 0
                } else {
                    entry
                        .listeners
                        .iter()
                        .any(|token| self.listeners.get(*token).is_some_and(|l| l.is_bound()))
                };
                let _ = writeln!(out, "{name}{{{labels}}} {}", u8::from(up));
            },
        );
        family(
            &mut out,
            "rinetd_reloads_total",
            "counter",
            "Reloads, by result.",
        );
        let daemon = &self.daemon;
        let _ = writeln!(
            out,
            "rinetd_reloads_total{{result=\"ok\"}} {}",
            daemon.reloads_ok
        );
        let _ = writeln!(
            out,
            "rinetd_reloads_total{{result=\"failed\"}} {}",
            daemon.reloads_failed
        );
        family(
            &mut out,
            "rinetd_start_time_seconds",
            "gauge",
            "When rinetd started, in seconds since the Unix epoch.",
        );
        let started = daemon
            .started
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let _ = writeln!(out, "rinetd_start_time_seconds {started:.3}");
        family(
            &mut out,
            "rinetd_open_fds",
            "gauge",
            "Descriptors rinetd holds open.",
        );
        let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count().saturating_sub(1));
        let _ = writeln!(out, "rinetd_open_fds {fds}");
        family(
            &mut out,
            "rinetd_resident_memory_bytes",
            "gauge",
            "rinetd's resident memory.",
        );
        let _ = writeln!(out, "rinetd_resident_memory_bytes {}", resident_bytes());
        out
    }
}

/// Resident memory from /proc/self/statm (pages).
fn resident_bytes() -> u64 {
    let pages: u64 = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|text| text.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|size| u64::try_from(size).ok())
        .unwrap_or(4096);
    pages * page
}
