//! Map-level state: the exact entries of the services, slots and backends maps, and the
//! translation of a [`Plan`] into them with stable ids.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

use svclb_common::{
    Backend, FAMILY_V4, FAMILY_V6, L3Addr, ServiceKey, ServiceValue,
    backend::{BE_F_LOCAL, BE_F_TERMINATING},
    service::{SCOPE_INTERNAL, SVC_F_REJECT},
};

use crate::{
    diag::Diagnostic,
    plan::{FrontendKey, Plan, PlanBackend, WhenEmpty},
};

/// One frontend as the maps hold it: its entry and the backend id in each slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRecord {
    pub value: ServiceValue,
    pub slots: Vec<u32>,
}

/// The contents of the services, slots and backends maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapState {
    pub services: BTreeMap<ServiceKey, ServiceRecord>,
    pub backends: BTreeMap<u32, Backend>,
}

/// Map capacities, which bound the ids.
#[derive(Clone, Copy, Debug)]
pub struct Capacity {
    pub services: u32,
    pub backends: u32,
}

/// Address bytes and family of an IP address, as the maps store them.
pub fn l3(addr: IpAddr) -> (L3Addr, u8) {
    match addr {
        IpAddr::V4(v4) => (svclb_common::addr::v4(v4.octets()), FAMILY_V4),
        IpAddr::V6(v6) => (v6.octets(), FAMILY_V6),
    }
}

/// The IP address held in map bytes.
pub fn ip_of(addr: &L3Addr, family: u8) -> IpAddr {
    if family == FAMILY_V6 {
        IpAddr::from(*addr)
    } else {
        IpAddr::from(svclb_common::addr::v4_octets(addr))
    }
}

pub fn service_key(key: &FrontendKey) -> ServiceKey {
    let (addr, family) = l3(key.address);
    ServiceKey {
        addr,
        port_be: key.port.to_be(),
        proto: key.protocol.number(),
        family,
        scope: SCOPE_INTERNAL,
        _pad: [0; 3],
    }
}

fn backend_entry(backend: &PlanBackend, key: &FrontendKey) -> Backend {
    let (addr, family) = l3(backend.address);
    let mut flags = 0;
    if backend.local {
        flags |= BE_F_LOCAL;
    }
    if backend.terminating {
        flags |= BE_F_TERMINATING;
    }
    Backend {
        addr,
        port_be: backend.port.to_be(),
        proto: key.protocol.number(),
        family,
        flags,
    }
}

/// What identifies a backend across syncs: everything but its flags.
fn identity(backend: &Backend) -> (L3Addr, u16, u8, u8) {
    (backend.addr, backend.port_be, backend.proto, backend.family)
}

/// Hands out the lowest ids that neither the current maps nor this plan use, so an id freed
/// in this sync is never reused before its old entries are gone.
struct IdAlloc {
    used: HashSet<u32>,
    next: u32,
    max: u32,
}

impl IdAlloc {
    fn new(used: impl IntoIterator<Item = u32>, max: u32) -> Self {
        Self {
            used: used.into_iter().collect(),
            next: 1,
            max,
        }
    }

    fn alloc(&mut self) -> Option<u32> {
        while self.used.contains(&self.next) {
            self.next += 1;
        }
        if self.next > self.max {
            return None;
        }
        self.used.insert(self.next);
        Some(self.next)
    }
}

/// Translates `plan` into map entries, keeping the ids `current` already uses for the same
/// frontends and backends. Frontends that do not fit the maps are reported and left out.
pub fn desired(plan: &Plan, current: &MapState, capacity: Capacity) -> (MapState, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let mut backend_ids: HashMap<_, u32> = current
        .backends
        .iter()
        .map(|(id, backend)| (identity(backend), *id))
        .collect();
    let mut svc_ids = IdAlloc::new(
        current.services.values().map(|r| r.value.id),
        capacity.services,
    );
    let mut be_ids = IdAlloc::new(current.backends.keys().copied(), capacity.backends);

    let mut out = MapState::default();
    for (key, frontend) in &plan.frontends {
        let skey = service_key(key);
        let id = match current.services.get(&skey) {
            Some(record) => Some(record.value.id),
            None => svc_ids.alloc(),
        };
        let Some(id) = id else {
            diags.push(Diagnostic::new(
                format!("Service {}", frontend.service),
                format!(
                    "frontend {key} skipped: the services map is full ({} entries)",
                    capacity.services
                ),
            ));
            continue;
        };
        let mut slots = Vec::with_capacity(frontend.backends.len());
        let mut new_backends = Vec::new();
        let mut full = false;
        for backend in &frontend.backends {
            let entry = backend_entry(backend, key);
            let backend_id = match backend_ids.get(&identity(&entry)) {
                Some(id) => *id,
                None => match be_ids.alloc() {
                    Some(id) => {
                        backend_ids.insert(identity(&entry), id);
                        id
                    }
                    None => {
                        full = true;
                        break;
                    }
                },
            };
            new_backends.push((backend_id, entry));
            slots.push(backend_id);
        }
        if full {
            diags.push(Diagnostic::new(
                format!("Service {}", frontend.service),
                format!(
                    "frontend {key} skipped: the backends map is full ({} entries)",
                    capacity.backends
                ),
            ));
            continue;
        }
        out.backends.extend(new_backends);
        let flags = match (slots.is_empty(), frontend.when_empty) {
            (true, WhenEmpty::Reject) => SVC_F_REJECT,
            _ => 0,
        };
        out.services.insert(
            skey,
            ServiceRecord {
                value: ServiceValue {
                    id,
                    count: u32::try_from(slots.len()).unwrap_or(u32::MAX),
                    flags,
                    affinity_timeout_s: 0,
                },
                slots,
            },
        );
    }
    (out, diags)
}
