//! The live service table and its policy, as plain data: admission (access lists,
//! `max_children`, `per_source`), the `rate_limit` window, pauses and back-offs, counters, and
//! the stable ids the rest of the loop names services by. Methods return decisions; nothing
//! here touches a socket, a `Poll` or a process.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use mio::Token;

use super::supervise::Restarts;
use crate::events;
use crate::service::{Kind, Refusal, Service};

/// A service's place in the table. A slot index reused by a later service gets a new
/// generation, so an id kept by something that outlived its service finds nothing, never the
/// wrong service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServiceId {
    index: u32,
    generation: u32,
}

/// One running handler or open connection, counted against `max_children` and `per_source`
/// until it is given back with `Table::release`. Not `Clone`: each place is given back once.
#[must_use = "a slot is given back with Table::release"]
#[derive(Debug)]
pub struct Slot {
    service: ServiceId,
    client: Option<IpAddr>,
}

impl Slot {
    pub fn service(&self) -> ServiceId {
        self.service
    }
}

/// Why `Table::admit` gave no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    Refused(Refusal),
    /// The service is no longer in the table (a reload removed it and its place was reused).
    Gone,
}

/// Upper bounds (seconds) of the handler run-time histogram's buckets; +Inf is implied.
pub const RUN_TIME_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 300.0,
];

/// What the status dump and the `metrics` builtin report about a service.
#[derive(Debug, Default)]
pub struct Counters {
    pub accepted: u64,
    pub refused: BTreeMap<Refusal, u64>,
    pub spawn_failures: u64,
    /// Handlers reaped: exit status 0, another status, a signal.
    pub exits_success: u64,
    pub exits_failure: u64,
    pub exits_signal: u64,
    /// Handlers run per bucket of `RUN_TIME_BUCKETS` (not cumulative), and the total time.
    pub run_time_buckets: [u64; RUN_TIME_BUCKETS.len() + 1],
    pub run_time_sum: f64,
    /// Handlers started; for supervised and `wait: true` services, those after the first
    /// are restarts.
    pub started: u64,
}

/// How a handler ended, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    Signal,
}

impl Counters {
    pub fn exited(&mut self, outcome: Outcome, lived: Duration) {
        match outcome {
            Outcome::Success => self.exits_success += 1,
            Outcome::Failure => self.exits_failure += 1,
            Outcome::Signal => self.exits_signal += 1,
        }
        let seconds = lived.as_secs_f64();
        let bucket = RUN_TIME_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(RUN_TIME_BUCKETS.len());
        self.run_time_buckets[bucket] += 1;
        self.run_time_sum += seconds;
    }
}

pub struct Entry {
    pub service: Service,
    pub kind: Kind,
    /// The service's listening sockets (see `Listeners`).
    pub listeners: Vec<Token>,
    generation: u32,
    /// Handlers, builtin connections and connections still sending their PROXY header.
    running: u32,
    per_source: HashMap<IpAddr, u32>,
    /// Accept times inside the current `rate_limit` window.
    window: VecDeque<Instant>,
    /// The end of a `rate_limit` pause: nothing new is accepted until then.
    paused_until: Option<Instant>,
    /// The end of a back-off (out of descriptors or processes, or a `wait: true` handler that
    /// failed at once): nothing is started until then, not even a client already accepted.
    /// Kept apart from the pause, which may well last longer.
    backoff_until: Option<Instant>,
    /// At `max_children` (the pause is logged once, and so is the resume).
    full: bool,
    /// A back-off has been logged and nothing has started since: the next one is quiet.
    backoff_logged: bool,
    /// Handlers that could not be started since the last one that could.
    failed_spawns: u64,
    /// A `wait: true` handler's restart delay while it keeps failing.
    pub wait_restarts: Restarts,
    pub counters: Counters,
    /// Removed by a reload: no listener, kept only until its last slot is given back.
    retired: bool,
}

impl Entry {
    fn new(service: Service, generation: u32) -> Entry {
        Entry {
            kind: service.kind(),
            service,
            listeners: Vec::new(),
            generation,
            running: 0,
            per_source: HashMap::new(),
            window: VecDeque::new(),
            paused_until: None,
            backoff_until: None,
            full: false,
            backoff_logged: false,
            failed_spawns: 0,
            wait_restarts: Restarts::default(),
            counters: Counters::default(),
            retired: false,
        }
    }

    pub fn label(&self) -> &str {
        &self.service.label
    }

    pub fn running(&self) -> u32 {
        self.running
    }

    /// When accepting resumes, if it is paused or backing off.
    pub fn paused_until(&self) -> Option<Instant> {
        self.paused_until.max(self.backoff_until)
    }

    pub fn is_backing_off(&self) -> bool {
        self.backoff_until.is_some()
    }

    pub fn is_full(&self) -> bool {
        self.full
    }

    pub fn is_retired(&self) -> bool {
        self.retired
    }

    fn below_max(&self) -> bool {
        self.service
            .limits
            .max_children
            .is_none_or(|max| self.running < max.get())
    }

    /// Whether a connection may be accepted (or a datagram read) now.
    pub fn may_accept(&self) -> bool {
        self.may_start() && self.paused_until.is_none()
    }

    /// Whether a handler may be started now for a client already accepted (a `rate_limit`
    /// pause only holds back new ones).
    pub fn may_start(&self) -> bool {
        !self.retired && self.backoff_until.is_none() && self.below_max()
    }
}

#[derive(Default)]
pub struct Table {
    entries: Vec<Entry>,
    /// The places of retired services, to reuse once nothing counts on them: a list apart,
    /// so that loading a table does not scan every place for each service.
    retired: Vec<usize>,
}

impl Table {
    pub fn get(&self, id: ServiceId) -> Option<&Entry> {
        let entry = self.entries.get(id.index as usize)?;
        (entry.generation == id.generation).then_some(entry)
    }

    pub fn get_mut(&mut self, id: ServiceId) -> Option<&mut Entry> {
        let entry = self.entries.get_mut(id.index as usize)?;
        (entry.generation == id.generation).then_some(entry)
    }

    /// Every service in the table, retired ones included.
    pub fn ids(&self) -> Vec<ServiceId> {
        (0..self.entries.len())
            .map(|index| self.id_at(index))
            .collect()
    }

    pub fn entries(&self) -> impl Iterator<Item = (ServiceId, &Entry)> {
        (0..self.entries.len()).map(|index| (self.id_at(index), &self.entries[index]))
    }

    fn id_at(&self, index: usize) -> ServiceId {
        ServiceId {
            index: index as u32,
            generation: self.entries[index].generation,
        }
    }

    /// Adds a service, in the place of a retired one that nothing counts on any more if there
    /// is one (with a new generation), so the table does not grow with reloads.
    pub fn insert(&mut self, service: Service) -> ServiceId {
        let free = self
            .retired
            .iter()
            .position(|index| self.entries[*index].running == 0);
        match free.map(|position| self.retired.swap_remove(position)) {
            Some(index) => {
                let generation = self.entries[index].generation.wrapping_add(1);
                self.entries[index] = Entry::new(service, generation);
                self.id_at(index)
            }
            None => {
                self.entries.push(Entry::new(service, 0));
                self.id_at(self.entries.len() - 1)
            }
        }
    }

    /// New settings for a service a reload keeps; its counts, pause and counters carry over.
    pub fn update(&mut self, id: ServiceId, service: Service) {
        if let Some(entry) = self.get_mut(id) {
            entry.kind = service.kind();
            entry.service = service;
            entry.full = !entry.below_max();
        }
    }

    /// Removed by a reload: accepts nothing more; its place is reused once its last slot is
    /// given back.
    pub fn retire(&mut self, id: ServiceId) {
        if let Some(entry) = self.get_mut(id)
            && !entry.retired
        {
            entry.retired = true;
            entry.listeners.clear();
            self.retired.push(id.index as usize);
        }
    }

    /// Takes a slot for a client of `id`: refused by the access lists or `per_source`, or
    /// counted. `client` is None where there is no address to judge (UNIX sockets, a
    /// `wait: true` handler, a connection whose PROXY header is still to come).
    pub fn admit(&mut self, id: ServiceId, client: Option<IpAddr>) -> Result<Slot, Denied> {
        if let Some(client) = client {
            self.judge(id, client)?;
        }
        let entry = self.get_mut(id).ok_or(Denied::Gone)?;
        if let Some(client) = client {
            *entry.per_source.entry(client).or_default() += 1;
        }
        entry.running += 1;
        // A wait service has one handler at a time anyway: no pause to announce.
        if !entry.below_max() && !entry.full && entry.kind != Kind::Wait {
            entry.full = true;
            events::paused_max_children(entry.label(), entry.running);
        }
        Ok(Slot {
            service: id,
            client,
        })
    }

    /// Whether `client` may be served by `id` (access lists, then `per_source`), without
    /// taking a slot; a refusal is counted.
    pub fn judge(&mut self, id: ServiceId, client: IpAddr) -> Result<(), Denied> {
        let entry = self.get_mut(id).ok_or(Denied::Gone)?;
        let refusal = entry.service.access.refusal(client).or_else(|| {
            let limit = entry.service.limits.per_source?;
            let count = entry.per_source.get(&client).copied().unwrap_or(0);
            (count >= limit.get()).then_some(Refusal::PerSource)
        });
        match refusal {
            Some(reason) => {
                *entry.counters.refused.entry(reason).or_default() += 1;
                Err(Denied::Refused(reason))
            }
            None => Ok(()),
        }
    }

    /// Gives a slot back. Returns the service if it was full and may accept again: what waits
    /// on it is then to be served.
    pub fn release(&mut self, slot: Slot) -> Option<ServiceId> {
        let Slot { service, client } = slot;
        let entry = self.get_mut(service)?;
        entry.running = entry.running.saturating_sub(1);
        if let Some(client) = client
            && let Some(count) = entry.per_source.get_mut(&client)
        {
            *count -= 1;
            if *count == 0 {
                entry.per_source.remove(&client);
            }
        }
        if entry.full && entry.below_max() {
            entry.full = false;
            events::resumed(entry.label());
            return Some(service);
        }
        None
    }

    /// Counts an accept (or a datagram read) against `rate_limit`. The one that fills the
    /// window starts a pause: its end is returned, for a timer to resume the service then.
    pub fn count_accept(&mut self, id: ServiceId, now: Instant) -> Option<Instant> {
        let entry = self.get_mut(id)?;
        entry.counters.accepted += 1;
        let limit = entry.service.limits.rate_limit?;
        entry.window.push_back(now);
        while entry
            .window
            .front()
            .is_some_and(|first| now.duration_since(*first) >= limit.per)
        {
            entry.window.pop_front();
        }
        if entry.window.len() < limit.max as usize {
            return None;
        }
        entry.window.clear();
        let until = now + limit.pause;
        entry.paused_until = Some(until);
        events::paused_rate_limit(entry.label(), limit.pause);
        Some(until)
    }

    /// Stops accepting on `id` for `delay`. Returns when to resume, and whether this back-off
    /// is the first since something last started (only that one is worth a log line).
    pub fn back_off(&mut self, id: ServiceId, now: Instant, delay: Duration) -> (Instant, bool) {
        let until = now + delay;
        let Some(entry) = self.get_mut(id) else {
            return (until, false);
        };
        entry.backoff_until = Some(entry.backoff_until.map_or(until, |old| old.max(until)));
        let first = !entry.backoff_logged;
        entry.backoff_logged = true;
        (until, first)
    }

    /// A pause's or back-off's time may be up: true if something ended (its waiting clients
    /// are then to be served).
    pub fn resume(&mut self, id: ServiceId, now: Instant) -> bool {
        let Some(entry) = self.get_mut(id) else {
            return false;
        };
        let mut ended = false;
        if entry.paused_until.is_some_and(|until| until <= now) {
            entry.paused_until = None;
            events::resumed(entry.label());
            ended = true;
        }
        if entry.backoff_until.is_some_and(|until| until <= now) {
            entry.backoff_until = None;
            ended = true;
        }
        ended
    }

    /// A handler could not be started.
    pub fn spawn_failed(&mut self, id: ServiceId) {
        if let Some(entry) = self.get_mut(id) {
            entry.counters.spawn_failures += 1;
            entry.failed_spawns += 1;
        }
    }

    /// A handler was started: back-offs are worth logging again. Returns how many attempts
    /// had failed before it, if any did.
    pub fn spawned(&mut self, id: ServiceId) -> Option<u64> {
        let entry = self.get_mut(id)?;
        entry.counters.started += 1;
        entry.backoff_logged = false;
        let failed = std::mem::take(&mut entry.failed_spawns);
        (failed > 0).then_some(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateLimit;
    use crate::service::limit;

    fn service(name: &str) -> Service {
        Service::example(name, &[])
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn max_children_stops_accepting_and_a_release_makes_it_runnable() {
        let mut table = Table::default();
        let mut limited = service("a");
        limited.limits.max_children = limit(2);
        let id = table.insert(limited);
        let first = table.admit(id, ip("192.0.2.1")).unwrap();
        assert!(table.get(id).unwrap().may_accept());
        let second = table.admit(id, None).unwrap();
        assert!(!table.get(id).unwrap().may_accept());
        assert!(table.get(id).unwrap().is_full());
        assert_eq!(
            table.release(second),
            Some(id),
            "the release that frees a place"
        );
        assert!(table.get(id).unwrap().may_accept());
        assert_eq!(table.release(first), None, "was not full");
        assert_eq!(table.get(id).unwrap().running(), 0);
    }

    #[test]
    fn zero_means_unlimited() {
        let mut table = Table::default();
        let mut unlimited = service("a");
        unlimited.limits.max_children = limit(0);
        unlimited.limits.per_source = limit(0);
        let id = table.insert(unlimited);
        let slots: Vec<Slot> = (0..1000)
            .map(|_| table.admit(id, ip("192.0.2.1")).unwrap())
            .collect();
        assert!(table.get(id).unwrap().may_accept());
        for slot in slots {
            assert_eq!(table.release(slot), None);
        }
    }

    #[test]
    fn per_source_counts_each_client_and_access_lists_come_first() {
        let mut table = Table::default();
        let mut limited = service("a");
        limited.limits.per_source = limit(1);
        limited.access.no_access = vec!["198.51.100.0/24".parse().unwrap()];
        let id = table.insert(limited);
        let one = table.admit(id, ip("192.0.2.1")).unwrap();
        assert_eq!(
            table.admit(id, ip("192.0.2.1")).unwrap_err(),
            Denied::Refused(Refusal::PerSource)
        );
        let other = table.admit(id, ip("192.0.2.2")).unwrap();
        assert_eq!(
            table.admit(id, ip("198.51.100.1")).unwrap_err(),
            Denied::Refused(Refusal::NoAccess)
        );
        let _ = table.release(one);
        let again = table.admit(id, ip("192.0.2.1")).unwrap();
        let counters = &table.get(id).unwrap().counters;
        assert_eq!(counters.refused.get(&Refusal::PerSource), Some(&1));
        assert_eq!(counters.refused.get(&Refusal::NoAccess), Some(&1));
        let _ = (table.release(other), table.release(again));
    }

    #[test]
    fn the_rate_window_pauses_at_max_and_resumes_after_the_pause() {
        let mut table = Table::default();
        let mut limited = service("a");
        limited.limits.rate_limit = Some(RateLimit {
            max: 3,
            per: Duration::from_secs(10),
            pause: Duration::from_secs(5),
        });
        let id = table.insert(limited);
        let start = Instant::now();
        assert_eq!(table.count_accept(id, start), None);
        // The first accept has left the window by the time of the third.
        let later = start + Duration::from_secs(11);
        assert_eq!(table.count_accept(id, later), None);
        assert_eq!(table.count_accept(id, later), None);
        let until = table
            .count_accept(id, later)
            .expect("the third in the window pauses");
        assert_eq!(until, later + Duration::from_secs(5));
        assert!(!table.get(id).unwrap().may_accept());
        assert!(!table.resume(id, later), "too early");
        assert!(table.resume(id, until));
        assert!(table.get(id).unwrap().may_accept());
        assert_eq!(table.get(id).unwrap().counters.accepted, 4);
    }

    #[test]
    fn back_offs_are_logged_once_until_something_starts() {
        let mut table = Table::default();
        let id = table.insert(service("a"));
        let now = Instant::now();
        let delay = Duration::from_secs(1);
        assert!(table.back_off(id, now, delay).1);
        assert!(table.resume(id, now + delay));
        table.spawn_failed(id);
        assert!(!table.back_off(id, now, delay).1);
        table.spawn_failed(id);
        assert_eq!(table.spawned(id), Some(2));
        assert_eq!(table.spawned(id), None);
        assert!(table.back_off(id, now, delay).1);
    }

    #[test]
    fn a_retired_place_is_reused_only_once_empty_and_old_ids_find_nothing() {
        let mut table = Table::default();
        let old = table.insert(service("old"));
        let slot = table.admit(old, None).unwrap();
        table.retire(old);
        assert!(!table.get(old).unwrap().may_accept());
        let busy = table.insert(service("new"));
        assert_ne!(
            busy.index, old.index,
            "a retired service still counting was reused"
        );
        assert_eq!(table.release(slot), None);
        let reused = table.insert(service("newer"));
        assert_eq!(reused.index, old.index);
        assert!(table.get(old).is_none(), "a stale id found the new service");
        assert_eq!(table.get(reused).unwrap().service.name, "newer");
        assert_eq!(table.admit(old, None).unwrap_err(), Denied::Gone);
    }
}
