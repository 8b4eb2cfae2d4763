//! The live service table and its policy, as plain data: admission (access lists,
//! `max_children`, `per_source`), the `rate_limit` window, pauses and back-offs, counters, and
//! the stable ids the rest of the loop names services by. Methods return decisions; nothing
//! here touches a socket, a `Poll` or a process.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mio::Token;

use super::supervise::Restarts;
use crate::events;
use crate::service::{Kind, Refusal, Service, SourceRate};

/// A client or local address as rinetd judges, logs and passes it on: an IPv4-mapped IPv6
/// address (`::ffff:a.b.c.d`, from a dual-stack socket or a PROXY header) is the IPv4 address,
/// so that ACLs and per-source counts cannot be sidestepped by writing it the other way.
pub(super) fn canonical(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(address.ip().to_canonical(), address.port())
}

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
    /// The client's group (`source_prefix`), as counted for `per_source`.
    group: Option<IpAddr>,
}

impl Slot {
    pub fn service(&self) -> ServiceId {
        self.service
    }
}

/// Connections per client group within a sliding window of `per` (two fixed windows, the
/// older one weighted by how much of it still falls inside), for `per_source_rate`: constant
/// memory per group, and groups idle for two windows are forgotten.
#[derive(Debug, Default)]
struct SourceRates {
    windows: HashMap<IpAddr, RateWindow>,
    /// The number of groups after the last pruning: the next one comes at twice that.
    pruned_to: usize,
}

#[derive(Debug, Clone, Copy)]
struct RateWindow {
    start: Instant,
    current: u32,
    previous: u32,
}

impl SourceRates {
    /// Counts a connection of `group` if it stays within `rate`; false if it would not.
    fn admit(&mut self, group: IpAddr, rate: SourceRate, now: Instant) -> bool {
        self.prune(now, rate.per);
        let window = self.windows.entry(group).or_insert(RateWindow {
            start: now,
            current: 0,
            previous: 0,
        });
        let per = rate.per.max(Duration::from_millis(1));
        let elapsed = now.saturating_duration_since(window.start);
        if elapsed >= per * 2 {
            *window = RateWindow {
                start: now,
                current: 0,
                previous: 0,
            };
        } else if elapsed >= per {
            window.previous = window.current;
            window.current = 0;
            window.start += per;
        }
        let into = now.saturating_duration_since(window.start).as_secs_f64() / per.as_secs_f64();
        let estimate = f64::from(window.previous) * (1.0 - into) + f64::from(window.current);
        if estimate >= f64::from(rate.max) {
            return false;
        }
        window.current += 1;
        true
    }

    /// Forgets groups idle for two windows, once their number has doubled since the last time:
    /// the cost per connection stays constant however many clients come and go.
    fn prune(&mut self, now: Instant, per: Duration) {
        if self.windows.len() < (2 * self.pruned_to).max(1024) {
            return;
        }
        self.windows
            .retain(|_, window| now.saturating_duration_since(window.start) < per * 2);
        self.pruned_to = self.windows.len();
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
    /// TLS handshakes that failed or ran out of time (nothing was started for them).
    pub tls_handshake_failures: u64,
}

/// Every counter at zero: what a service that has counted nothing yet reads.
static ZERO: Counters = Counters {
    accepted: 0,
    refused: BTreeMap::new(),
    spawn_failures: 0,
    exits_success: 0,
    exits_failure: 0,
    exits_signal: 0,
    run_time_buckets: [0; RUN_TIME_BUCKETS.len() + 1],
    run_time_sum: 0.0,
    started: 0,
    tls_handshake_failures: 0,
};

/// A service's counters, made at its first count (184 bytes that 1,000 idle services need not
/// carry): until then they read as zero. Read and written as a `Counters`.
#[derive(Debug, Default)]
pub struct LazyCounters(Option<Box<Counters>>);

impl std::ops::Deref for LazyCounters {
    type Target = Counters;

    fn deref(&self) -> &Counters {
        self.0.as_deref().unwrap_or(&ZERO)
    }
}

impl std::ops::DerefMut for LazyCounters {
    fn deref_mut(&mut self) -> &mut Counters {
        self.0.get_or_insert_with(Box::default)
    }
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

/// A service's counts of its clients.
#[derive(Debug, Default)]
struct Clients {
    /// Slots per client group (`source_prefix`).
    per_source: HashMap<IpAddr, u32>,
    /// Recent connections per client group, for `per_source_rate`.
    source_rates: SourceRates,
    /// Accept times inside the current `rate_limit` window.
    window: VecDeque<Instant>,
}

pub struct Entry {
    pub service: Service,
    pub kind: Kind,
    /// The service's listening sockets (see `Listeners`): set whole at each load, so a boxed
    /// slice, without a vector's spare room.
    pub listeners: Box<[Token]>,
    generation: u32,
    /// Handlers, builtin connections and connections still sending their PROXY header.
    running: u32,
    /// What is counted per client, made at the service's first client: a table of 1,000
    /// idle services carries none of it.
    clients: Option<Box<Clients>>,
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
    /// Handlers that could not be started since the last one that could (a u32, to share
    /// a word with the other small fields).
    failed_spawns: u32,
    /// A `wait: true` handler's restart delay while it keeps failing.
    pub wait_restarts: Restarts,
    pub counters: LazyCounters,
    /// Removed by a reload: no listener, kept only until its last slot is given back.
    retired: bool,
}

impl Entry {
    fn new(service: Service, generation: u32) -> Entry {
        Entry {
            kind: service.kind(),
            service,
            listeners: Box::default(),
            generation,
            running: 0,
            clients: None,
            paused_until: None,
            backoff_until: None,
            full: false,
            backoff_logged: false,
            failed_spawns: 0,
            wait_restarts: Restarts::default(),
            counters: LazyCounters::default(),
            retired: false,
        }
    }

    pub fn label(&self) -> &str {
        &self.service.label
    }

    fn clients(&mut self) -> &mut Clients {
        self.clients.get_or_insert_with(Box::default)
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
    /// In one block, its room made at once for the whole table (`reserve`). Boxed one by one,
    /// each entry was made in a hole the table's loading left and split it, and the 240-byte
    /// rests stayed free between live data on every page: 237 KiB at 1,000 services, which
    /// malloc_trim cannot give back (glibc's malloc_info showed 986 of them).
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
    /// Room for `more` services, made at once.
    pub fn reserve(&mut self, more: usize) {
        self.entries.reserve_exact(more);
    }

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
            entry.listeners = Box::default();
            self.retired.push(id.index as usize);
        }
    }

    /// Takes a slot for a client of `id`: refused by the access lists, `per_source` or
    /// `per_source_rate`, or counted. `client` is None where there is no address to judge
    /// (UNIX sockets, a `wait: true` handler, a connection whose PROXY header is still to come).
    pub fn admit(
        &mut self,
        id: ServiceId,
        client: Option<IpAddr>,
        now: Instant,
    ) -> Result<Slot, Denied> {
        if let Some(client) = client {
            self.judge(id, client, now)?;
        }
        self.occupy(id, client)
    }

    /// Takes a slot for a client `judge` has let through already.
    pub fn occupy(&mut self, id: ServiceId, client: Option<IpAddr>) -> Result<Slot, Denied> {
        let entry = self.get_mut(id).ok_or(Denied::Gone)?;
        let group = client.map(|client| entry.service.limits.source_prefix.group(client));
        if let Some(group) = group {
            *entry.clients().per_source.entry(group).or_default() += 1;
        }
        entry.running += 1;
        // A wait service has one handler at a time anyway: no pause to announce.
        if !entry.below_max() && !entry.full && entry.kind != Kind::Wait {
            entry.full = true;
            events::paused_max_children(entry.label(), entry.running);
        }
        Ok(Slot { service: id, group })
    }

    /// Whether `client` may be served by `id` now: the access lists, then `per_source`, then
    /// `per_source_rate` (which counts the connection when it lets it through). It takes no
    /// slot; a refusal is counted.
    pub fn judge(&mut self, id: ServiceId, client: IpAddr, now: Instant) -> Result<(), Denied> {
        let entry = self.get_mut(id).ok_or(Denied::Gone)?;
        let limits = &entry.service.limits;
        let (per_source, per_source_rate) = (
            limits.per_source,
            limits.per_source_rate.as_deref().copied(),
        );
        let group = limits.source_prefix.group(client);
        let refusal = entry
            .service
            .access
            .refusal(client)
            .or_else(|| {
                let limit = per_source?;
                let count = entry
                    .clients
                    .as_ref()
                    .and_then(|clients| clients.per_source.get(&group).copied())
                    .unwrap_or(0);
                (count >= limit.get()).then_some(Refusal::PerSource)
            })
            .or_else(|| {
                let rate = per_source_rate?;
                let admitted = entry.clients().source_rates.admit(group, rate, now);
                (!admitted).then_some(Refusal::PerSourceRate)
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
        let Slot { service, group } = slot;
        let entry = self.get_mut(service)?;
        entry.running = entry.running.saturating_sub(1);
        if let Some(group) = group
            && let Some(clients) = entry.clients.as_mut()
            && let Some(count) = clients.per_source.get_mut(&group)
        {
            *count -= 1;
            if *count == 0 {
                clients.per_source.remove(&group);
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
        let limit = entry.service.limits.rate_limit.as_deref().copied()?;
        let window = &mut entry.clients().window;
        window.push_back(now);
        while window
            .front()
            .is_some_and(|first| now.duration_since(*first) >= limit.per)
        {
            window.pop_front();
        }
        if window.len() < limit.max as usize {
            return None;
        }
        window.clear();
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
            entry.failed_spawns = entry.failed_spawns.saturating_add(1);
        }
    }

    /// A handler was started: back-offs are worth logging again. Returns how many attempts
    /// had failed before it, if any did.
    pub fn spawned(&mut self, id: ServiceId) -> Option<u64> {
        let entry = self.get_mut(id)?;
        entry.counters.started += 1;
        entry.backoff_logged = false;
        let failed = std::mem::take(&mut entry.failed_spawns);
        (failed > 0).then_some(u64::from(failed))
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
        let first = table.admit(id, ip("192.0.2.1"), Instant::now()).unwrap();
        assert!(table.get(id).unwrap().may_accept());
        let second = table.admit(id, None, Instant::now()).unwrap();
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
            .map(|_| table.admit(id, ip("192.0.2.1"), Instant::now()).unwrap())
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
        limited.access.no_access = ["198.51.100.0/24".parse().unwrap()].into();
        let id = table.insert(limited);
        let one = table.admit(id, ip("192.0.2.1"), Instant::now()).unwrap();
        assert_eq!(
            table
                .admit(id, ip("192.0.2.1"), Instant::now())
                .unwrap_err(),
            Denied::Refused(Refusal::PerSource)
        );
        let other = table.admit(id, ip("192.0.2.2"), Instant::now()).unwrap();
        assert_eq!(
            table
                .admit(id, ip("198.51.100.1"), Instant::now())
                .unwrap_err(),
            Denied::Refused(Refusal::NoAccess)
        );
        let _ = table.release(one);
        let again = table.admit(id, ip("192.0.2.1"), Instant::now()).unwrap();
        let counters = &table.get(id).unwrap().counters;
        assert_eq!(counters.refused.get(&Refusal::PerSource), Some(&1));
        assert_eq!(counters.refused.get(&Refusal::NoAccess), Some(&1));
        let _ = (table.release(other), table.release(again));
    }

    #[test]
    fn the_rate_window_pauses_at_max_and_resumes_after_the_pause() {
        let mut table = Table::default();
        let mut limited = service("a");
        limited.limits.rate_limit = Some(Box::new(RateLimit {
            max: 3,
            per: Duration::from_secs(10),
            pause: Duration::from_secs(5),
        }));
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
    fn an_idle_service_carries_no_counters_or_client_counts_until_its_first_client() {
        let mut table = Table::default();
        let id = table.insert(service("idle"));
        let entry = table.get(id).unwrap();
        assert!(entry.counters.0.is_none() && entry.clients.is_none());
        assert_eq!(entry.counters.accepted, 0);
        assert_eq!(
            entry.counters.run_time_buckets,
            [0; RUN_TIME_BUCKETS.len() + 1]
        );
        assert_eq!(table.count_accept(id, Instant::now()), None);
        let slot = table.admit(id, ip("192.0.2.1"), Instant::now()).unwrap();
        let entry = table.get(id).unwrap();
        assert!(entry.counters.0.is_some() && entry.clients.is_some());
        assert_eq!(entry.counters.accepted, 1);
        assert_eq!(table.release(slot), None);
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
        let slot = table.admit(old, None, Instant::now()).unwrap();
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
        assert_eq!(table.get(reused).unwrap().service.name(), "newer");
        assert_eq!(
            table.admit(old, None, Instant::now()).unwrap_err(),
            Denied::Gone
        );
    }

    #[test]
    fn per_source_rate_refuses_a_client_over_its_rate_and_only_that_client() {
        let mut table = Table::default();
        let mut limited = service("a");
        limited.limits.per_source_rate = Some(Box::new(SourceRate {
            max: 3,
            per: Duration::from_secs(60),
        }));
        let id = table.insert(limited);
        let start = Instant::now();
        let client = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(table.judge(id, client, start), Ok(()));
        }
        let refused = Err(Denied::Refused(Refusal::PerSourceRate));
        assert_eq!(table.judge(id, client, start), refused);
        assert_eq!(table.judge(id, "192.0.2.2".parse().unwrap(), start), Ok(()));
        // Half a window on, half of the earlier three still count (1.5): two more fit (2.5 < 3),
        // a third does not.
        let later = start + Duration::from_secs(90);
        assert_eq!(table.judge(id, client, later), Ok(()));
        assert_eq!(table.judge(id, client, later), Ok(()));
        assert_eq!(table.judge(id, client, later), refused);
        // Two windows on, all is forgotten.
        let much_later = start + Duration::from_secs(240);
        assert_eq!(table.judge(id, client, much_later), Ok(()));
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64_unless_source_prefix_says_otherwise() {
        let mut table = Table::default();
        let mut limited = service("a");
        limited.limits.per_source = limit(1);
        let id = table.insert(limited);
        let now = Instant::now();
        let first = table.admit(id, ip("2001:db8:1:2::1"), now).unwrap();
        assert_eq!(
            table
                .admit(id, ip("2001:db8:1:2:ffff::9"), now)
                .unwrap_err(),
            Denied::Refused(Refusal::PerSource),
            "another address of the same /64"
        );
        let other = table.admit(id, ip("2001:db8:1:3::1"), now).unwrap();
        let _ = (table.release(first), table.release(other));
        let mut wide = service("b");
        wide.limits.per_source = limit(1);
        wide.limits.source_prefix = crate::service::SourcePrefix {
            ipv4: 24,
            ipv6: 128,
        };
        let id = table.insert(wide);
        let v4 = table.admit(id, ip("192.0.2.1"), now).unwrap();
        assert!(table.admit(id, ip("192.0.2.200"), now).is_err(), "same /24");
        let v6 = table.admit(id, ip("2001:db8::1"), now).unwrap();
        let v6_other = table.admit(id, ip("2001:db8::2"), now).unwrap();
        for slot in [v4, v6, v6_other] {
            let _ = table.release(slot);
        }
    }

    #[test]
    fn the_rate_of_many_clients_costs_constant_memory_per_active_one() {
        let mut rates = SourceRates::default();
        let rate = SourceRate {
            max: 10,
            per: Duration::from_secs(1),
        };
        let start = Instant::now();
        // 100,000 clients, each once, a second apart in groups: only recent ones are kept.
        for n in 0..100_000u32 {
            let at = start + Duration::from_millis(u64::from(n / 1000) * 1000);
            assert!(rates.admit(std::net::IpAddr::from(n.to_be_bytes()), rate, at));
        }
        assert!(
            rates.windows.len() < 10_000,
            "{} groups kept",
            rates.windows.len()
        );
    }
}
