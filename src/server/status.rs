//! The SIGUSR1 status dump: one line for the daemon, one per service (a retired one while
//! handlers it started still run).

use std::time::Instant;

use crate::events;

use super::Server;

impl Server {
    pub(super) fn status(&self) {
        let shown: Vec<_> = self
            .table
            .entries()
            .filter(|(_, entry)| !entry.is_retired() || entry.running() > 0)
            .collect();
        events::status(shown.len(), self.children.len());
        let now = Instant::now();
        for (_, entry) in shown {
            let listeners: Vec<_> = entry
                .listeners
                .iter()
                .filter_map(|token| self.listeners.get(*token))
                .collect();
            let addresses: Vec<String> = listeners.iter().map(|l| l.shown()).collect();
            let phase = if entry.is_retired() {
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
