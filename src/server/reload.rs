//! SIGHUP: a new, fully checked table applied to the running server. `plan` (pure) matches old
//! and new services by name and listening sockets by identity (protocol + address + port, or
//! path): a socket that stays is never closed or re-bound, a service keeps its running
//! handlers, counts and wait state, and a removed service is retired (its handlers run on).
//! `apply` carries the plan out; nothing is killed.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use mio::Token;

use super::table::ServiceId;
use super::{Server, SourceKind};
use crate::config::Protocol;
use crate::events;
use crate::service::{Endpoint, Kind, Service};

/// Reads, checks and resolves the table again: the services, or every error as a line.
pub type Loader = Box<dyn FnMut() -> Result<Vec<Service>, Vec<String>>>;

/// A listener's identity across reloads: protocol and address + port (or path). An ephemeral
/// port (0) says nothing about which socket it was, so such a listener also needs the same
/// service name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity(Protocol, Endpoint, Option<String>);

impl Identity {
    pub fn of(protocol: Protocol, endpoint: &Endpoint, service: &str) -> Identity {
        let ephemeral = matches!(endpoint, Endpoint::Ip(address) if address.port() == 0);
        Identity(
            protocol,
            endpoint.clone(),
            ephemeral.then(|| service.to_string()),
        )
    }
}

/// A service of the running table, as `plan` sees it.
pub struct Current<'a> {
    pub id: ServiceId,
    pub service: &'a Service,
    pub retired: bool,
    pub listeners: Vec<(Token, Identity)>,
}

/// Where a service of the new table goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    /// The running service it continues; `changed` if any setting differs.
    Existing {
        id: ServiceId,
        changed: bool,
    },
    New,
}

/// Each listening socket of a service of the new table.
#[derive(Debug, PartialEq, Eq)]
pub enum Socket {
    /// The running socket with this token, kept as it is (it may come from another service).
    Keep(Token),
    Bind(Endpoint),
}

#[derive(Debug, PartialEq, Eq)]
pub struct Placement {
    pub target: Target,
    pub sockets: Vec<Socket>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// One per service of the new table, in its order.
    pub placements: Vec<Placement>,
    /// Running services the new table does not have.
    pub retire: Vec<ServiceId>,
    /// Running sockets no service wants any more.
    pub close: Vec<Token>,
}

/// Matches the new table against the running one. The same service is the one of the same
/// name, else the one whose socket it takes over; each is continued by at most one.
pub fn plan(current: &[Current<'_>], new: &[Service]) -> Plan {
    // Every map sized at once: growing them by doubling cost more than filling them.
    let listeners = current.iter().map(|old| old.listeners.len()).sum();
    let mut sockets: HashMap<&Identity, (ServiceId, Token)> = HashMap::with_capacity(listeners);
    for old in current {
        for (token, identity) in &old.listeners {
            sockets.insert(identity, (old.id, *token));
        }
    }
    let mut live: HashMap<ServiceId, &Current<'_>> = HashMap::with_capacity(current.len());
    live.extend(
        current
            .iter()
            .filter(|old| !old.retired)
            .map(|old| (old.id, old)),
    );
    let mut by_name: HashMap<&str, ServiceId> = HashMap::with_capacity(live.len());
    by_name.extend(live.values().map(|old| (old.service.name(), old.id)));
    // Names first, for the whole table: a service listed later keeps its own state even if an
    // earlier one takes over its socket.
    let mut continued: HashSet<ServiceId> = HashSet::with_capacity(new.len());
    continued.extend(
        new.iter()
            .filter_map(|service| by_name.get(service.name()).copied()),
    );
    let mut plan = Plan {
        placements: Vec::with_capacity(new.len()),
        ..Plan::default()
    };
    for service in new {
        let identities: Vec<Identity> = service
            .listen
            .iter()
            .map(|endpoint| Identity::of(service.protocol, endpoint, service.name()))
            .collect();
        let previous = by_name.get(service.name()).copied().or_else(|| {
            identities.iter().find_map(|identity| {
                let (id, _) = sockets.get(identity)?;
                (live.contains_key(id) && !continued.contains(id)).then_some(*id)
            })
        });
        let sockets_of_service = service
            .listen
            .iter()
            .zip(&identities)
            .map(|(endpoint, identity)| match sockets.remove(identity) {
                Some((_, token)) => Socket::Keep(token),
                None => Socket::Bind(endpoint.clone()),
            })
            .collect();
        let target = match previous {
            Some(id) => {
                continued.insert(id);
                let changed = live.get(&id).is_some_and(|old| old.service != service);
                Target::Existing { id, changed }
            }
            None => Target::New,
        };
        plan.placements.push(Placement {
            target,
            sockets: sockets_of_service,
        });
    }
    plan.retire = current
        .iter()
        .filter(|old| !old.retired && !continued.contains(&old.id))
        .map(|old| old.id)
        .collect();
    plan.close = sockets.into_values().map(|(_, token)| token).collect();
    plan
}

/// What a reload did, for its log line: the services added, changed and removed by name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub kept: usize,
}

impl Server {
    /// Reads and checks the whole table; any error keeps the running one exactly as it is.
    pub(super) fn reload(&mut self, load: &mut Loader) {
        events::reloading();
        let started = Instant::now();
        match load() {
            Ok(services) => {
                events::reload_checked(started.elapsed());
                self.apply(services);
                self.daemon.reloads_ok += 1;
                // The old table and the plan are dropped by now: their pages go back.
                crate::spawn::release_free_heap();
            }
            Err(errors) => {
                self.daemon.reloads_failed += 1;
                for error in &errors {
                    events::reload_error(error);
                }
                events::reload_failed(errors.len());
            }
        }
    }

    /// Carries out the plan for `services`: the table and the listeners take their new shape,
    /// kept sockets their new settings, new ones are bound; every service is then woken.
    fn apply(&mut self, services: Vec<Service>) -> Summary {
        let started = Instant::now();
        let current: Vec<Current<'_>> = self
            .table
            .entries()
            .map(|(id, entry)| Current {
                id,
                service: &entry.service,
                retired: entry.is_retired(),
                listeners: entry
                    .listeners
                    .iter()
                    .filter_map(|token| {
                        let listener = self.listeners.get(*token)?;
                        let identity = Identity::of(
                            entry.service.protocol,
                            &listener.endpoint,
                            entry.service.name(),
                        );
                        Some((*token, identity))
                    })
                    .collect(),
            })
            .collect();
        let plan = plan(&current, &services);
        let mut summary = Summary::default();
        for id in &plan.retire {
            if let Some(entry) = self.table.get(*id) {
                summary.removed.push(entry.service.name().to_string());
            }
            self.table.retire(*id);
            self.streams.forget(*id);
            self.stop_program(*id, false);
        }
        for token in &plan.close {
            self.listeners.close(*token, self.poll.registry());
        }
        let mut to_bind = Vec::new();
        let mut kept = Vec::new();
        // Services whose settings or sockets changed: only they can have clients waiting that
        // no event will announce, or kept sockets with settings to refresh. A reload of one
        // changed service out of 1,000 made 2,000 syscalls (a listen(2) and an accept4(2) per
        // service) when it woke and refreshed every one.
        let mut touched = Vec::new();
        for (service, placement) in services.into_iter().zip(plan.placements) {
            let unchanged = matches!(placement.target, Target::Existing { changed: false, .. });
            let id = match placement.target {
                Target::Existing { id, changed } => {
                    if changed {
                        summary.changed.push(service.name().to_string());
                    } else {
                        summary.kept += 1;
                    }
                    // A supervised program runs on untouched if nothing changed; otherwise it
                    // is stopped, and started again with the new settings if it is still one.
                    let was_supervised = self
                        .table
                        .get(id)
                        .is_some_and(|e| e.kind == Kind::Supervised);
                    if was_supervised && changed {
                        self.stop_program(id, service.supervise.is_some());
                    }
                    self.table.update(id, service);
                    // A connection held for a handler the service no longer starts.
                    if !self
                        .table
                        .get(id)
                        .is_some_and(|e| e.kind == Kind::StreamExec)
                    {
                        self.streams.forget(id);
                    }
                    id
                }
                Target::New => {
                    summary.added.push(service.name().to_string());
                    self.table.insert(service)
                }
            };
            let mut tokens = Vec::new();
            let mut kept_here = Vec::new();
            for socket in placement.sockets {
                let token = match socket {
                    Socket::Keep(token) => {
                        kept_here.push(token);
                        token
                    }
                    Socket::Bind(endpoint) => {
                        let token = self.tokens.next(SourceKind::Listener);
                        self.listeners.add(token, id, endpoint);
                        to_bind.push(token);
                        token
                    }
                };
                if let Some(listener) = self.listeners.get_mut(token) {
                    listener.service = id;
                }
                tokens.push(token);
            }
            if let Some(entry) = self.table.get_mut(id) {
                if unchanged && *entry.listeners == *tokens {
                    continue;
                }
                entry.listeners = tokens.into_boxed_slice();
            }
            kept.extend(kept_here);
            touched.push(id);
        }
        for token in kept {
            let owner = self.listeners.get(token).map(|l| l.service);
            if let Some(entry) = owner.and_then(|id| self.table.get(id)) {
                for (setting, err) in self.listeners.refresh(token, &entry.service) {
                    events::reload_setting_failed(entry.label(), setting, &err);
                }
            }
        }
        for token in to_bind {
            self.bind(token);
        }
        for id in touched {
            self.wake(id);
        }
        events::reloaded(
            &summary.added.join(","),
            &summary.changed.join(","),
            &summary.removed.join(","),
            summary.kept,
            started.elapsed(),
        );
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::table::Table;

    /// The running table of `services` as `plan` sees it, each listener's token its position
    /// in the list (from 1), with the given services retired.
    fn running(table: &mut Table, services: &[Service], retired: &[&str]) -> Vec<ServiceId> {
        let ids: Vec<ServiceId> = services.iter().map(|s| table.insert(s.clone())).collect();
        for (id, service) in ids.iter().zip(services) {
            if retired.contains(&service.name()) {
                table.retire(*id);
            }
        }
        ids
    }

    fn current<'a>(table: &'a Table, ids: &[ServiceId]) -> Vec<Current<'a>> {
        let mut next_token = 0;
        ids.iter()
            .map(|id| {
                let entry = table.get(*id).unwrap();
                let service = &entry.service;
                let listeners = service
                    .listen
                    .iter()
                    .map(|endpoint| {
                        next_token += 1;
                        let identity = Identity::of(service.protocol, endpoint, service.name());
                        (Token(next_token), identity)
                    })
                    .collect();
                Current {
                    id: *id,
                    service,
                    retired: entry.is_retired(),
                    listeners,
                }
            })
            .collect()
    }

    #[test]
    fn unchanged_services_keep_everything_and_changed_ones_keep_their_sockets() {
        let old = [
            Service::example("a", &["127.0.0.1:7001"]),
            Service::example("b", &["127.0.0.1:7002"]),
        ];
        let mut table = Table::default();
        let ids = running(&mut table, &old, &[]);
        let mut changed = old[1].clone();
        changed.limits.per_source = crate::service::limit(3);
        let plan = plan(&current(&table, &ids), &[old[0].clone(), changed]);
        assert_eq!(
            plan.placements,
            [
                Placement {
                    target: Target::Existing {
                        id: ids[0],
                        changed: false
                    },
                    sockets: vec![Socket::Keep(Token(1))],
                },
                Placement {
                    target: Target::Existing {
                        id: ids[1],
                        changed: true
                    },
                    sockets: vec![Socket::Keep(Token(2))],
                },
            ]
        );
        assert!(plan.retire.is_empty() && plan.close.is_empty());
    }

    #[test]
    fn same_name_with_a_different_socket_continues_the_service_on_a_new_socket() {
        let old = [Service::example("a", &["127.0.0.1:7001"])];
        let mut table = Table::default();
        let ids = running(&mut table, &old, &[]);
        let moved = Service::example("a", &["127.0.0.1:7009"]);
        let plan = plan(&current(&table, &ids), &[moved]);
        assert_eq!(
            plan.placements[0],
            Placement {
                target: Target::Existing {
                    id: ids[0],
                    changed: true
                },
                sockets: vec![Socket::Bind(Endpoint::Ip(
                    "127.0.0.1:7009".parse().unwrap()
                ))],
            }
        );
        assert_eq!(plan.close, [Token(1)]);
    }

    #[test]
    fn a_renamed_service_takes_over_the_socket_and_the_old_name_is_removed() {
        let old = [Service::example("old", &["127.0.0.1:7001"])];
        let mut table = Table::default();
        let ids = running(&mut table, &old, &[]);
        let plan = plan(
            &current(&table, &ids),
            &[Service::example("new", &["127.0.0.1:7001"])],
        );
        assert_eq!(
            plan.placements[0].target,
            Target::Existing {
                id: ids[0],
                changed: true
            }
        );
        assert_eq!(plan.placements[0].sockets, [Socket::Keep(Token(1))]);
        assert!(
            plan.retire.is_empty(),
            "the service continues under its new name"
        );
    }

    #[test]
    fn ephemeral_ports_are_matched_by_service_name_too() {
        // Two services on port 0 share a configured identity; each keeps its own socket.
        let old = [
            Service::example("a", &["127.0.0.1:0"]),
            Service::example("b", &["127.0.0.1:0"]),
        ];
        let mut table = Table::default();
        let ids = running(&mut table, &old, &[]);
        let swapped = [old[1].clone(), old[0].clone()];
        let plan = plan(&current(&table, &ids), &swapped);
        assert_eq!(plan.placements[0].sockets, [Socket::Keep(Token(2))]);
        assert_eq!(plan.placements[1].sockets, [Socket::Keep(Token(1))]);
        // A new service on port 0 never takes another's ephemeral socket.
        let plan = plan_for(&table, &ids, &[Service::example("c", &["127.0.0.1:0"])]);
        assert_eq!(plan.placements[0].target, Target::New);
        assert_eq!(plan.close.len(), 2);
        assert_eq!(plan.retire.len(), 2);
    }

    fn plan_for(table: &Table, ids: &[ServiceId], new: &[Service]) -> Plan {
        plan(&current(table, ids), new)
    }

    #[test]
    fn retired_services_are_not_continued_and_their_places_are_reused_by_new_ones() {
        let old = [
            Service::example("gone", &[]),
            Service::example("kept", &["127.0.0.1:7002"]),
        ];
        let mut table = Table::default();
        let ids = running(&mut table, &old, &["gone"]);
        // A service of the retired one's name is a new service, not the retired one back.
        let plan = plan_for(
            &table,
            &ids,
            &[Service::example("gone", &[]), old[1].clone()],
        );
        assert_eq!(plan.placements[0].target, Target::New);
        assert!(plan.retire.is_empty(), "already retired");
        // The table gives the new service the retired place (nothing counts on it).
        let id = table.insert(Service::example("gone", &[]));
        assert!(table.get(ids[0]).is_none());
        assert_eq!(table.get(id).unwrap().service.name(), "gone");
    }

    #[test]
    fn a_socket_held_by_a_wait_handler_follows_its_identity_to_the_new_owner() {
        // The socket (and with it, in Listeners, the pid holding it) moves with its token: the
        // new owner gets the very socket the handler holds, never a second one.
        let mut waiting = Service::example("tftp", &["127.0.0.1:6969"]);
        waiting.wait = true;
        let mut table = Table::default();
        let ids = running(&mut table, &[waiting.clone()], &[]);
        let mut successor = waiting.clone();
        successor.label = Service::label_of("tftp2", successor.protocol);
        let plan = plan_for(&table, &ids, &[Service::example("other", &[]), successor]);
        assert_eq!(plan.placements[1].sockets, [Socket::Keep(Token(1))]);
        assert!(plan.close.is_empty());
    }
    #[test]
    fn a_service_of_the_same_name_is_continued_even_if_a_new_one_listed_first_takes_its_socket() {
        let old = [Service::example("a", &["127.0.0.1:7001"])];
        let mut table = Table::default();
        let ids = running(&mut table, &old, &[]);
        // "x" takes a's socket; "a" itself moves to another port, and comes later in the file.
        let new = [
            Service::example("x", &["127.0.0.1:7001"]),
            Service::example("a", &["127.0.0.1:7009"]),
        ];
        let plan = plan_for(&table, &ids, &new);
        assert_eq!(plan.placements[0].target, Target::New);
        assert_eq!(plan.placements[0].sockets, [Socket::Keep(Token(1))]);
        assert_eq!(
            plan.placements[1].target,
            Target::Existing {
                id: ids[0],
                changed: true
            },
            "a keeps its running handlers, counts and pauses"
        );
    }
}
