//! Map-level state: the exact entries of the services, slots and backends maps, and the
//! translation of a [`Plan`] into them with stable ids.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
};

use ipnet::IpNet;

use svclb_common::{
    Backend, FAMILY_V4, FAMILY_V6, L3Addr, ServiceKey, ServiceValue, SlotKey,
    backend::{BE_F_LOCAL, BE_F_TERMINATING},
    service::{
        SCOPE_ALL, SCOPE_INTERNAL_VIEW, SVC_F_EXTERNAL, SVC_F_INTERNAL_VIEW, SVC_F_MAGLEV,
        SVC_F_REJECT, SVC_F_SOURCE_RANGES,
    },
};

use crate::{
    diag::Diagnostic,
    plan::{Frontend, FrontendKey, FrontendKind, Plan, PlanBackend, Protocol, WhenEmpty},
};

/// What a frontend's Maglev table was built from: its size and the backend ids it spreads
/// over, in the frontend's slot order. The table itself is a pure function of these (and the
/// seed), so the mirror keeps the recipe, not 16k entries per frontend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MaglevSpec {
    pub size: u32,
    pub backends: Vec<u32>,
}

impl MaglevSpec {
    /// A table found in the kernel whose recipe is not known (adopted from an earlier run):
    /// equal to no wanted table, so it is rebuilt.
    pub fn unknown() -> Self {
        Self::default()
    }
}

/// The exact contents of the maps the agent writes. The reconciler keeps one of these in step
/// with the kernel, write by write, so it never believes in an entry the kernel does not hold
/// (or the reverse).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapState {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub slots: BTreeMap<SlotKey, u32>,
    pub backends: BTreeMap<u32, Backend>,
    /// Maglev tables by frontend id.
    pub tables: BTreeMap<u32, MaglevSpec>,
    /// `loadBalancerSourceRanges` entries: (frontend id, allowed source prefix).
    pub source_ranges: BTreeSet<(u32, IpNet)>,
}

impl MapState {
    /// The (frontend id, backend id) pairs this state programs and `desired` does not: flows
    /// and session affinities of such a frontend must let go of such a backend, even when the
    /// backend itself stays (another frontend still uses it). A frontend whose id changes or
    /// that goes away departs from all its backends.
    pub fn departed(&self, desired: &MapState) -> BTreeSet<(u32, u32)> {
        let mut out = BTreeSet::new();
        for (key, value) in &self.services {
            let want = desired.services.get(key).filter(|want| want.id == value.id);
            // Most frontends are unchanged: compared slot by slot, without collecting them.
            let unchanged = want.is_some_and(|want| {
                want.count == value.count
                    && (0..value.count).all(|slot| {
                        let key = SlotKey {
                            svc_id: value.id,
                            slot,
                        };
                        self.slots.get(&key) == desired.slots.get(&key)
                    })
            });
            if unchanged {
                continue;
            }
            let old = self.slots_of(value);
            let kept: HashSet<u32> = want
                .map(|want| desired.slots_of(want))
                .unwrap_or_default()
                .into_iter()
                .collect();
            out.extend(
                old.into_iter()
                    .filter(|id| !kept.contains(id))
                    .map(|id| (value.id, id)),
            );
        }
        out
    }

    /// Every frontend id the maps use: of an entry, or of slots, a Maglev table or source
    /// ranges an interrupted write left without one (repeats included).
    pub fn frontend_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.services
            .values()
            .map(|v| v.id)
            .chain(self.slots.keys().map(|k| k.svc_id))
            .chain(self.tables.keys().copied())
            .chain(self.source_ranges.iter().map(|(id, _)| *id))
    }

    /// The backend ids in slots `0..count` of a frontend (a missing slot is skipped).
    pub fn slots_of(&self, value: &ServiceValue) -> Vec<u32> {
        (0..value.count)
            .filter_map(|slot| {
                self.slots
                    .get(&SlotKey {
                        svc_id: value.id,
                        slot,
                    })
                    .copied()
            })
            .collect()
    }
}

/// Map capacities (`max_entries`), and the size of each Maglev table.
#[derive(Clone, Copy, Debug)]
pub struct Capacity {
    pub services: usize,
    pub slots: usize,
    pub backends: usize,
    /// How many frontends can have a Maglev table.
    pub maglev_tables: usize,
    /// Entries of each Maglev table (M).
    pub maglev_size: u32,
    pub source_ranges: usize,
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
        scope: if key.internal_view {
            SCOPE_INTERNAL_VIEW
        } else {
            SCOPE_ALL
        },
        _pad: [0; 3],
    }
}

/// The frontend a services-map key stands for (`None` for a protocol svclb never writes).
pub fn frontend_key(key: &ServiceKey) -> Option<FrontendKey> {
    Some(FrontendKey {
        address: ip_of(&key.addr, key.family),
        port: u16::from_be(key.port_be),
        protocol: Protocol::from_number(key.proto)?,
        internal_view: key.scope == SCOPE_INTERNAL_VIEW,
    })
}

pub fn backend_entry(backend: &PlanBackend, key: &FrontendKey) -> Backend {
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
pub type BackendIdentity = (L3Addr, u16, u8, u8);

pub fn identity(backend: &Backend) -> BackendIdentity {
    (backend.addr, backend.port_be, backend.proto, backend.family)
}

/// Hands out the lowest ids that neither the current maps nor this plan use, so an id freed
/// in this sync is never reused before its old entries are gone.
struct IdAlloc {
    used: HashSet<u32>,
    next: u32,
}

impl IdAlloc {
    fn new(used: impl IntoIterator<Item = u32>) -> Self {
        Self {
            used: used.into_iter().collect(),
            next: 1,
        }
    }

    fn alloc(&mut self) -> u32 {
        while self.used.contains(&self.next) {
            self.next += 1;
        }
        self.used.insert(self.next);
        self.next
    }
}

/// Whether a frontend spreads by Maglev: every external entry with backends does, so all
/// nodes agree. The internal view of a Local-policy frontend serves pods: a random pick, like
/// a cluster IP.
pub fn wants_table(key: &FrontendKey, frontend: &Frontend) -> bool {
    frontend.kind != FrontendKind::ClusterIP && !key.internal_view && !frontend.backends.is_empty()
}

/// The services-map value of frontend `key` with id `id`; `maglev_size` when it has a
/// Maglev table of that size.
pub fn service_value(
    plan: &Plan,
    key: &FrontendKey,
    frontend: &Frontend,
    id: u32,
    maglev_size: Option<u32>,
) -> ServiceValue {
    let mut flags = match (frontend.backends.is_empty(), frontend.when_empty) {
        (true, WhenEmpty::Reject) => SVC_F_REJECT,
        _ => 0,
    };
    if frontend.kind != FrontendKind::ClusterIP {
        flags |= SVC_F_EXTERNAL;
    }
    if maglev_size.is_some() {
        flags |= SVC_F_MAGLEV;
    }
    if !frontend.source_ranges.is_empty() {
        flags |= SVC_F_SOURCE_RANGES;
    }
    let view = FrontendKey {
        internal_view: true,
        ..*key
    };
    if !key.internal_view && plan.frontends.contains_key(&view) {
        flags |= SVC_F_INTERNAL_VIEW;
    }
    ServiceValue {
        id,
        count: frontend.backends.len() as u32,
        flags,
        affinity_timeout_s: frontend.affinity_timeout_seconds,
        maglev_size: maglev_size.unwrap_or(0),
        _pad: 0,
    }
}

/// Translates `plan` into map entries, keeping the ids `current` already uses for the same
/// frontends and backends. A frontend that does not fit the maps is reported; if it is already
/// programmed it keeps its current entries, otherwise it is left out.
pub fn desired(plan: &Plan, current: &MapState, capacity: Capacity) -> (MapState, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let mut backend_ids: HashMap<_, u32> = current
        .backends
        .iter()
        .map(|(id, backend)| (identity(backend), *id))
        .collect();
    let mut svc_ids = IdAlloc::new(current.frontend_ids());
    let mut be_ids = IdAlloc::new(current.backends.keys().copied());

    let mut out = MapState::default();
    for (key, frontend) in &plan.frontends {
        let skey = service_key(key);
        let existing = current.services.get(&skey);
        let entries: Vec<(u32, Backend)> = frontend
            .backends
            .iter()
            .map(|backend| {
                let entry = backend_entry(backend, key);
                let id = *backend_ids
                    .entry(identity(&entry))
                    .or_insert_with(|| be_ids.alloc());
                (id, entry)
            })
            .collect();
        let new_backends = entries
            .iter()
            .filter(|(id, _)| !out.backends.contains_key(id))
            .count();
        let full = if out.services.len() + 1 > capacity.services {
            Some(("services", capacity.services))
        } else if out.slots.len() + entries.len() > capacity.slots {
            Some(("slots", capacity.slots))
        } else if out.backends.len() + new_backends > capacity.backends {
            Some(("backends", capacity.backends))
        } else {
            None
        };
        if let Some((map, size)) = full {
            let kept = existing.is_some_and(|value| keep_current(&mut out, current, skey, *value));
            let outcome = if kept {
                "not updated, keeps its programmed backends"
            } else {
                "skipped"
            };
            diags.push(Diagnostic::new(
                format!("Service {}", frontend.service),
                format!("frontend {key} {outcome}: the {map} map is full ({size} entries)"),
            ));
            continue;
        }
        let id = existing.map_or_else(|| svc_ids.alloc(), |value| value.id);
        for (slot, (backend_id, entry)) in entries.iter().enumerate() {
            out.slots.insert(
                SlotKey {
                    svc_id: id,
                    slot: slot as u32,
                },
                *backend_id,
            );
            out.backends.insert(*backend_id, *entry);
        }
        let mut maglev_size = None;
        if wants_table(key, frontend) {
            if out.tables.len() < capacity.maglev_tables {
                maglev_size = Some(capacity.maglev_size);
                out.tables.insert(
                    id,
                    MaglevSpec {
                        size: capacity.maglev_size,
                        backends: entries.iter().map(|(id, _)| *id).collect(),
                    },
                );
            } else {
                diags.push(Diagnostic::new(
                    format!("Service {}", frontend.service),
                    format!(
                        "frontend {key} picks backends at random, not by Maglev: the Maglev \
                         map is full ({} tables)",
                        capacity.maglev_tables
                    ),
                ));
            }
        }
        if !frontend.source_ranges.is_empty() {
            // Without room for its ranges the frontend refuses every source rather than admit
            // everyone: the ranges are a security boundary.
            if out.source_ranges.len() + frontend.source_ranges.len() <= capacity.source_ranges {
                out.source_ranges
                    .extend(frontend.source_ranges.iter().map(|net| (id, net.trunc())));
            } else {
                diags.push(Diagnostic::new(
                    format!("Service {}", frontend.service),
                    format!(
                        "frontend {key} refuses every source: its loadBalancerSourceRanges do not \
                         fit the source-ranges map ({} entries)",
                        capacity.source_ranges
                    ),
                ));
            }
        }
        out.services
            .insert(skey, service_value(plan, key, frontend, id, maglev_size));
    }
    (out, diags)
}

/// Copies a programmed frontend, with its slots and backends, into `out`. `false` when its
/// slots are incomplete in the kernel (it cannot be kept as it is).
fn keep_current(
    out: &mut MapState,
    current: &MapState,
    key: ServiceKey,
    value: ServiceValue,
) -> bool {
    let slots = current.slots_of(&value);
    if slots.len() != value.count as usize
        || slots.iter().any(|id| !current.backends.contains_key(id))
    {
        return false;
    }
    for (slot, backend_id) in slots.into_iter().enumerate() {
        out.slots.insert(
            SlotKey {
                svc_id: value.id,
                slot: slot as u32,
            },
            backend_id,
        );
        out.backends
            .insert(backend_id, current.backends[&backend_id]);
    }
    if let Some(table) = current.tables.get(&value.id) {
        out.tables.insert(value.id, table.clone());
    }
    out.source_ranges.extend(
        current
            .source_ranges
            .iter()
            .filter(|(id, _)| *id == value.id)
            .copied(),
    );
    out.services.insert(key, value);
    true
}
