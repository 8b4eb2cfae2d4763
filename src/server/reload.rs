//! SIGHUP: applies a new, fully checked table to the running server. Listeners are matched by
//! identity (protocol + address + port, or path): a socket that stays is never closed or
//! re-bound, a service keeps its running handlers, counts and wait state, and a removed
//! service is retired only once its last handler has exited. Nothing is killed.

use std::collections::{HashMap, HashSet};

use log::info;

use super::{Bound, Kind, Listener, Server, ServiceState, Source, kind_of};
use crate::config::{Handler, Place, Pos, Protocol, ServiceSpec};
use crate::resolve::{Endpoint, Service};

/// What a reload did, for its log line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    pub kept: usize,
}

/// A listener's identity across reloads: protocol and address + port (or path). An ephemeral
/// port (0) says nothing about which socket it was, so such a listener also needs the same
/// service name.
type Identity = (Protocol, Endpoint, Option<String>);

fn identity(protocol: Protocol, endpoint: &Endpoint, service: &str) -> Identity {
    let ephemeral = matches!(endpoint, Endpoint::Ip(address) if address.port() == 0);
    (
        protocol,
        endpoint.clone(),
        ephemeral.then(|| service.to_string()),
    )
}

/// The settings of a service with where they were written left out: moving a service down
/// the file, or into an included file, does not change it.
fn settings(spec: &ServiceSpec) -> ServiceSpec {
    let mut spec = spec.clone();
    // The path as given at start and the canonical one a reload reads are the same file.
    spec.file.clear();
    let nowhere = Pos::default();
    spec.pos = nowhere;
    spec.port_pos = nowhere;
    if let Handler::Server { pos, .. } = &mut spec.handler {
        *pos = nowhere;
    }
    for id in [&mut spec.user, &mut spec.group].into_iter().flatten() {
        id.1 = Place {
            file: String::new(),
            pos: nowhere,
        };
    }
    if let Some(unix) = &mut spec.unix {
        unix.pos = nowhere;
    }
    spec
}

impl Server {
    /// Reconciles the live table with `services`; returns what changed.
    pub(super) fn reconcile(&mut self, services: Vec<Service>) -> Summary {
        let started = std::time::Instant::now();
        let mut summary = Summary::default();
        // Every bound socket, by identity, with the service that held it.
        let mut sockets: HashMap<Identity, (usize, Listener)> = HashMap::new();
        let previous_count = self.services.len();
        for (index, state) in self.services.iter_mut().enumerate() {
            let protocol = state.service.spec.protocol;
            for listener in state.listeners.drain(..) {
                let key = identity(protocol, &listener.endpoint, &state.service.spec.name);
                sockets.insert(key, (index, listener));
            }
        }
        let mut by_name: HashMap<String, usize> = self
            .services
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.retired)
            .map(|(i, s)| (s.service.spec.name.clone(), i))
            .collect();
        let mut carried = HashSet::new();
        for service in services {
            let protocol = service.spec.protocol;
            // The same service is the one of the same name, else the one whose socket it takes.
            let previous = by_name.remove(&service.spec.name).or_else(|| {
                service.listen.iter().find_map(|endpoint| {
                    let key = identity(protocol, endpoint, &service.spec.name);
                    let (index, _) = sockets.get(&key)?;
                    (!carried.contains(index) && !self.services[*index].retired).then_some(*index)
                })
            });
            let listeners: Vec<Listener> = service
                .listen
                .iter()
                .map(|endpoint| {
                    match sockets.remove(&identity(protocol, endpoint, &service.spec.name)) {
                        Some((_, listener)) => listener,
                        None => Listener::unbound(endpoint.clone(), self.new_token()),
                    }
                })
                .collect();
            match previous.filter(|index| carried.insert(*index)) {
                Some(index) => {
                    let state = &mut self.services[index];
                    if settings(&state.service.spec) == settings(&service.spec)
                        && state.service.listen == service.listen
                    {
                        summary.kept += 1;
                    } else {
                        summary.changed += 1;
                    }
                    state.kind = kind_of(&service);
                    state.service = service;
                    state.listeners = listeners;
                    let max = state.service.spec.max_children;
                    state.full = max > 0 && state.running >= max;
                }
                None => {
                    summary.added += 1;
                    // A retired service with nothing left running frees its slot: nothing
                    // refers to it any more (timers that still name it find it not paused).
                    let state = ServiceState::new(service, listeners);
                    let free = (0..previous_count).find(|&index| {
                        let old = &self.services[index];
                        old.retired && old.running == 0 && !carried.contains(&index)
                    });
                    match free {
                        Some(index) => {
                            carried.insert(index);
                            self.services[index] = state;
                        }
                        None => self.services.push(state),
                    }
                }
            }
        }
        for (index, state) in self.services[..previous_count].iter_mut().enumerate() {
            if !state.retired && !carried.contains(&index) {
                state.retired = true;
                summary.removed += 1;
            }
        }
        // Sockets no service wants any more.
        for (_, (_, listener)) in sockets {
            if let Some(socket) = &listener.socket {
                self.deregister(socket);
                if let (Endpoint::Unix(path), false) = (&listener.endpoint, listener.inherited) {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        self.sources
            .retain(|_, source| !matches!(source, Source::Listener { .. }));
        let mut unbound = Vec::new();
        for (service, state) in self.services.iter().enumerate() {
            for (index, listener) in state.listeners.iter().enumerate() {
                match &listener.socket {
                    Some(socket) => {
                        self.sources
                            .insert(listener.token, Source::Listener { service, index });
                        refresh(socket, &listener.endpoint, state);
                    }
                    None if !listener.retrying => unbound.push((service, index)),
                    None => {}
                }
            }
        }
        for (service, index) in unbound {
            self.bind(service, index);
        }
        for service in 0..self.services.len() {
            self.service_ready(service);
        }
        info!(
            "reloaded added={} changed={} removed={} kept={} duration={}",
            summary.added,
            summary.changed,
            summary.removed,
            summary.kept,
            super::seconds(started.elapsed())
        );
        summary
    }
}

/// A kept socket takes the settings that can change without re-binding it: the backlog
/// (listen(2) again only updates it), a UNIX socket's mode, and arrival time stamps for a
/// datagram socket that has become `wait: true` (see `Fingerprint`).
fn refresh(socket: &Bound, endpoint: &Endpoint, state: &ServiceState) {
    let spec = &state.service.spec;
    match socket {
        Bound::Stream(socket) => {
            let _ = socket.listen(spec.backlog.min(i32::MAX as u32) as i32);
        }
        Bound::Datagram(socket) => {
            if state.kind == Kind::Wait {
                let _ = super::datagram::stamp_arrivals(socket);
            }
        }
    }
    if let (Endpoint::Unix(path), Some(unix)) = (endpoint, &spec.unix) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(unix.mode));
    }
}
