//! The SIGUSR1 status dump: one line for the daemon, one per service (a retired one while
//! handlers it started still run).

use std::time::Instant;

use crate::events;

use super::Server;

impl Server {
    /// One line for the service manager (`STATUS=`): services, sockets, and the services with
    /// a socket still to be bound, by name.
    pub(super) fn status_line(&self) -> String {
        let mut services = 0;
        let mut unbound = Vec::new();
        for (_, entry) in self.table.entries().filter(|(_, e)| !e.is_retired()) {
            services += 1;
            let bound = entry
                .listeners
                .iter()
                .all(|token| self.listeners.get(*token).is_some_and(|l| l.is_bound()));
            if !bound {
                unbound.push(entry.service.name());
            }
        }
        let mut line = format!(
            "serving {} on {}",
            events::counted(services, "service", "services"),
            events::counted(self.listeners.bound_count(), "socket", "sockets")
        );
        if !unbound.is_empty() {
            let shown = unbound.len().min(10);
            line.push_str(&format!("; not bound yet: {}", unbound[..shown].join(", ")));
            if unbound.len() > shown {
                line.push_str(&format!(" and {} more", unbound.len() - shown));
            }
        }
        line
    }

    pub(super) fn status(&self) {
        let shown: Vec<_> = self
            .table
            .entries()
            .filter(|(_, entry)| !entry.is_retired() || entry.running() > 0)
            .collect();
        events::status(shown.len(), self.children.len());
        let now = Instant::now();
        for (id, entry) in shown {
            let listeners: Vec<_> = entry
                .listeners
                .iter()
                .filter_map(|token| self.listeners.get(*token))
                .collect();
            let addresses: Vec<String> = listeners.iter().map(|l| l.shown()).collect();
            let supervised = self.supervisor.state(id).filter(|_| !entry.is_retired());
            let phase = if let Some(supervision) = supervised {
                supervision.describe(now)
            } else if entry.is_retired() {
                "retired".to_string()
            } else if !listeners.iter().any(|l| l.is_bound()) {
                "failed".to_string()
            } else if let Some(pid) = listeners.iter().find_map(|l| l.held_by) {
                format!("waiting pid={pid}")
            } else if let Some(until) = entry.paused_until() {
                format!(
                    "paused for={}",
                    events::Seconds(until.saturating_duration_since(now))
                )
            } else if entry.is_full() {
                "paused reason=max_children".to_string()
            } else {
                "listening".to_string()
            };
            let refused: String = entry
                .counters
                .refused
                .iter()
                .map(|(reason, n)| format!(" refused_{}={n}", reason.as_str()))
                .collect();
            events::service_status(
                entry.label(),
                &phase,
                &addresses.join(","),
                entry.running(),
                entry.counters.accepted,
                entry.counters.spawn_failures,
                &refused,
            );
        }
    }
}
