//! Plan -> exact map entries: the entries of the services, slots, backends, Maglev and
//! source-ranges maps ([`MapState`]), with stable ids, within the maps' [`Capacity`]. Pure: the
//! reconciler brings the kernel to a `MapState`, the kernel module reads one back.
//!
//! - this file: [`MapState`] and the conversions between plan and map types;
//! - [`desired`]: the whole plan as map entries, reusing the ids already programmed;
//! - [`capacity`]: every map's size (one type, from the command line to the loader);
//! - [`ids`]: the one id allocator;
//! - [`dns`]: the cluster's DNS records as the responder's entries.

mod capacity;
mod desired;
pub mod dns;
mod ids;

pub use capacity::Capacity;
pub use desired::{Refusal, desired};
pub use ids::{IdPool, Ids};

use std::{
    collections::{BTreeMap, BTreeSet},
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

use svclb_common::limits::{MAP_BACKENDS, MAP_MAGLEV, MAP_SERVICES, MAP_SLOTS, MAP_SOURCE_RANGES};

use crate::plan::{Frontend, FrontendKey, FrontendKind, Plan, PlanBackend, Protocol, WhenEmpty};

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

    /// How many entries each map the agent writes holds, by map name: the one list behind
    /// the agent's map gauges and `svclb status`.
    pub fn fills(&self) -> [(&'static str, usize); 5] {
        [
            (MAP_SERVICES, self.services.len()),
            (MAP_SLOTS, self.slots.len()),
            (MAP_BACKENDS, self.backends.len()),
            (MAP_MAGLEV, self.tables.len()),
            (MAP_SOURCE_RANGES, self.source_ranges.len()),
        ]
    }

    /// Source ranges held for frontend `id`.
    pub fn ranges_of(&self, id: u32) -> Vec<IpNet> {
        self.source_ranges
            .range((id, IpNet::V4(Default::default()))..)
            .take_while(|(of, _)| *of == id)
            .map(|(_, net)| *net)
            .collect()
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

/// One frontend's entries, as the reconciler writes them: its backends, its Maglev table, its
/// source ranges, its slots (one per backend, in order), then its entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendEntries {
    pub key: ServiceKey,
    pub value: ServiceValue,
    /// Backend ids and entries, in slot order.
    pub backends: Vec<(u32, Backend)>,
    pub table: Option<MaglevSpec>,
    pub ranges: Vec<IpNet>,
}

impl FrontendEntries {
    /// Frontend `key` of `plan` under id `id`, with its backends, table and ranges.
    pub fn new(
        plan: &Plan,
        key: &FrontendKey,
        frontend: &Frontend,
        id: u32,
        backends: Vec<(u32, Backend)>,
        table: Option<MaglevSpec>,
        ranges: Vec<IpNet>,
    ) -> Self {
        let value = service_value(plan, key, frontend, id, table.as_ref().map(|t| t.size));
        Self {
            key: service_key(key),
            value,
            backends,
            table,
            ranges,
        }
    }

    /// The frontend with entry `value` as `state` holds it (a slot or backend missing from
    /// `state` is left out).
    pub fn of_state(state: &MapState, key: ServiceKey, value: ServiceValue) -> Self {
        let backends = state
            .slots_of(&value)
            .into_iter()
            .filter_map(|id| state.backends.get(&id).map(|b| (id, *b)))
            .collect();
        Self {
            key,
            value,
            backends,
            table: state.tables.get(&value.id).cloned(),
            ranges: state.ranges_of(value.id),
        }
    }

    /// Adds these entries to `state`.
    pub fn insert_into(self, state: &mut MapState) {
        let id = self.value.id;
        for (slot, (backend_id, backend)) in self.backends.into_iter().enumerate() {
            let slot = SlotKey {
                svc_id: id,
                slot: slot as u32,
            };
            state.slots.insert(slot, backend_id);
            state.backends.insert(backend_id, backend);
        }
        if let Some(table) = self.table {
            state.tables.insert(id, table);
        }
        state
            .source_ranges
            .extend(self.ranges.into_iter().map(|net| (id, net)));
        state.services.insert(self.key, self.value);
    }
}
