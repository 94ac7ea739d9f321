//! O(change) syncs: the frontends the planner says changed are brought in line, and nothing
//! else is looked at. The full path ([`crate::mapstate::desired`] and
//! [`crate::reconcile::sync`]) compares every entry of the cluster; at 10k services with 10
//! endpoints each that is 100k slots per sync, for an endpoint change that writes three.
//!
//! The write order is the full path's, per frontend: its new backends, its Maglev table
//! (built aside, swapped in whole), its source ranges, its slots, then its entry; what it no
//! longer uses after its entry; backends no slot or table points at, last. Frontends that
//! went away are removed first, so their room is free for the ones that came.
//!
//! A change that would not fit the maps is not started: [`sync`] returns `None` and the
//! caller takes the full path, which decides which frontends get the room. After a write
//! fails, the caller takes the full path too, until a sync writes everything.

use std::collections::{BTreeSet, HashMap, HashSet};

use ipnet::IpNet;
use svclb_common::{Backend, ServiceKey, SlotKey};

use crate::{
    mapstate::{
        BackendIdentity, Capacity, MaglevSpec, MapState, backend_entry, identity, service_key,
        service_value, wants_table,
    },
    plan::{FrontendKey, Plan},
    reconcile::{MapWriter, SyncReport, frontend_name},
};

/// Ids handed out lowest first.
#[derive(Clone, Debug, Default)]
struct IdPool {
    /// Free ids below `next`.
    holes: BTreeSet<u32>,
    next: u32,
}

impl IdPool {
    fn of(used: impl IntoIterator<Item = u32>) -> Self {
        let used: BTreeSet<u32> = used.into_iter().collect();
        let next = used.last().map_or(1, |max| max + 1);
        Self {
            holes: (1..next).filter(|id| !used.contains(id)).collect(),
            next,
        }
    }

    fn take(&mut self) -> u32 {
        self.holes.pop_first().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        })
    }

    fn give_back(&mut self, id: u32) {
        self.holes.insert(id);
    }
}

/// What the O(change) path needs to know about the programmed state without walking it:
/// the id of each backend, how many slots and tables point at each, and the free ids.
#[derive(Clone, Debug, Default)]
pub struct Index {
    backend_ids: HashMap<BackendIdentity, u32>,
    refs: HashMap<u32, u32>,
    svc_ids: IdPool,
    be_ids: IdPool,
}

impl Index {
    /// The index of `state` (after a full sync).
    pub fn of(state: &MapState) -> Self {
        let mut refs: HashMap<u32, u32> = HashMap::new();
        for id in state
            .slots
            .values()
            .chain(state.tables.values().flat_map(|t| &t.backends))
        {
            *refs.entry(*id).or_default() += 1;
        }
        Self {
            backend_ids: state
                .backends
                .iter()
                .map(|(id, backend)| (identity(backend), *id))
                .collect(),
            refs,
            svc_ids: IdPool::of(state.frontend_ids()),
            be_ids: IdPool::of(state.backends.keys().copied()),
        }
    }

    fn add_ref(&mut self, id: u32) {
        *self.refs.entry(id).or_default() += 1;
    }

    /// Drops a reference; the backend is a candidate for removal.
    fn drop_ref(&mut self, id: u32, candidates: &mut BTreeSet<u32>) {
        if let Some(n) = self.refs.get_mut(&id) {
            *n -= 1;
            if *n == 0 {
                self.refs.remove(&id);
            }
        }
        candidates.insert(id);
    }
}

/// What an O(change) sync did.
#[derive(Debug, Default)]
pub struct Delta {
    pub report: SyncReport,
    /// (frontend id, backend id) pairs programmed before and not now, as
    /// [`MapState::departed`] gives them.
    pub departed: BTreeSet<(u32, u32)>,
}

/// One frontend to write: its key, entry, backends in slot order, table and ranges.
struct Wanted {
    key: ServiceKey,
    value: svclb_common::ServiceValue,
    backends: Vec<(u32, Backend)>,
    table: Option<MaglevSpec>,
    ranges: Vec<IpNet>,
}

/// Source ranges `current` holds for frontend `id`.
fn ranges_of(current: &MapState, id: u32) -> Vec<IpNet> {
    current
        .source_ranges
        .range((id, IpNet::V4(Default::default()))..)
        .take_while(|(of, _)| *of == id)
        .map(|(_, net)| *net)
        .collect()
}

/// Whether the maps have room for the change (counting conservatively: backends that will be
/// freed are not counted as free).
fn fits(
    plan: &Plan,
    keys: &BTreeSet<FrontendKey>,
    current: &MapState,
    index: &Index,
    capacity: Capacity,
) -> bool {
    let (mut services, mut slots, mut tables, mut ranges) = (
        current.services.len(),
        current.slots.len(),
        current.tables.len(),
        current.source_ranges.len(),
    );
    let mut new_backends: HashSet<BackendIdentity> = HashSet::new();
    for key in keys {
        let skey = service_key(key);
        if let Some(value) = current.services.get(&skey) {
            services -= 1;
            slots = slots.saturating_sub(value.count as usize);
            tables -= usize::from(current.tables.contains_key(&value.id));
            ranges -= ranges_of(current, value.id).len();
        }
        let Some(frontend) = plan.frontends.get(key) else {
            continue;
        };
        services += 1;
        slots += frontend.backends.len();
        tables += usize::from(wants_table(key, frontend));
        ranges += frontend.source_ranges.len();
        new_backends.extend(
            frontend
                .backends
                .iter()
                .map(|b| identity(&backend_entry(b, key)))
                .filter(|id| !index.backend_ids.contains_key(id)),
        );
    }
    services <= capacity.services
        && slots <= capacity.slots
        && tables <= capacity.maglev_tables
        && ranges <= capacity.source_ranges
        && current.backends.len() + new_backends.len() <= capacity.backends
}

/// Brings the frontends in `changed` from what `current` holds to what `plan` says, writing
/// through `maps` and keeping `current` and `index` exact, write by write. `None`, with
/// nothing written, when the change does not fit the maps.
pub fn sync<W: MapWriter>(
    plan: &Plan,
    changed: &BTreeSet<FrontendKey>,
    current: &mut MapState,
    index: &mut Index,
    capacity: Capacity,
    maps: &mut W,
) -> Option<Delta> {
    // A frontend's entry says whether it has an internal view: the two change together.
    let keys: BTreeSet<FrontendKey> = changed
        .iter()
        .flat_map(|key| {
            [
                *key,
                FrontendKey {
                    internal_view: !key.internal_view,
                    ..*key
                },
            ]
        })
        .collect();
    if !fits(plan, &keys, current, index, capacity) {
        return None;
    }

    let mut delta = Delta::default();
    let mut gone = Vec::new();
    let mut wanted = Vec::new();
    let mut fresh_backends: HashMap<BackendIdentity, u32> = HashMap::new();
    for key in &keys {
        let skey = service_key(key);
        let old = current.services.get(&skey).copied();
        let Some(frontend) = plan.frontends.get(key) else {
            if let Some(value) = old {
                gone.push((skey, value));
            }
            continue;
        };
        let id = old.map_or_else(|| index.svc_ids.take(), |value| value.id);
        let backends: Vec<(u32, Backend)> = frontend
            .backends
            .iter()
            .map(|b| {
                let entry = backend_entry(b, key);
                let ident = identity(&entry);
                let id = match index.backend_ids.get(&ident) {
                    Some(id) => *id,
                    None => *fresh_backends
                        .entry(ident)
                        .or_insert_with(|| index.be_ids.take()),
                };
                (id, entry)
            })
            .collect();
        let table = wants_table(key, frontend).then(|| MaglevSpec {
            size: capacity.maglev_size,
            backends: backends.iter().map(|(id, _)| *id).collect(),
        });
        let value = service_value(plan, key, frontend, id, table.as_ref().map(|t| t.size));
        if let Some(old) = old {
            let kept: HashSet<u32> = backends.iter().map(|(id, _)| *id).collect();
            delta.departed.extend(
                current
                    .slots_of(&old)
                    .into_iter()
                    .filter(|b| !kept.contains(b))
                    .map(|b| (id, b)),
            );
        }
        wanted.push(Wanted {
            key: skey,
            value,
            backends,
            table,
            ranges: frontend.source_ranges.iter().map(IpNet::trunc).collect(),
        });
    }

    let report = &mut delta.report;
    let mut candidates = BTreeSet::new();
    let mut freed_ids = Vec::new();
    for (key, value) in gone {
        delta
            .departed
            .extend(current.slots_of(&value).into_iter().map(|b| (value.id, b)));
        if !report.wrote(maps.del_service(&key), || {
            format!("frontend {}: delete", frontend_name(&key))
        }) {
            continue;
        }
        current.services.remove(&key);
        if release(
            current,
            index,
            value.id,
            0,
            None,
            &[],
            maps,
            report,
            &mut candidates,
        ) {
            freed_ids.push(value.id);
        }
    }

    'frontends: for want in wanted {
        let id = want.value.id;
        let old = current.services.get(&want.key).copied();
        for (backend_id, backend) in &want.backends {
            if current.backends.get(backend_id) == Some(backend) {
                continue;
            }
            if !report.wrote(maps.put_backend(*backend_id, backend), || {
                format!("backend {backend_id}")
            }) {
                report.errors.push(format!(
                    "frontend {}: not updated, backend {backend_id} could not be written",
                    frontend_name(&want.key)
                ));
                continue 'frontends;
            }
            current.backends.insert(*backend_id, *backend);
            index.backend_ids.insert(identity(backend), *backend_id);
        }
        if let Some(spec) = &want.table
            && current.tables.get(&id) != Some(spec)
        {
            if !report.wrote(maps.put_table(id, spec, &want.backends), || {
                format!("frontend {}: Maglev table", frontend_name(&want.key))
            }) {
                continue;
            }
            if let Some(old) = current.tables.insert(id, spec.clone()) {
                for b in old.backends {
                    index.drop_ref(b, &mut candidates);
                }
            }
            for b in &spec.backends {
                index.add_ref(*b);
            }
        }
        for net in &want.ranges {
            if current.source_ranges.contains(&(id, *net)) {
                continue;
            }
            if !report.wrote(maps.put_source_range(id, *net), || {
                format!("frontend {}: source range {net}", frontend_name(&want.key))
            }) {
                continue 'frontends;
            }
            current.source_ranges.insert((id, *net));
        }
        for (slot, (backend_id, _)) in want.backends.iter().enumerate() {
            let slot_key = SlotKey {
                svc_id: id,
                slot: slot as u32,
            };
            let before = current.slots.get(&slot_key).copied();
            if before == Some(*backend_id) {
                continue;
            }
            if !report.wrote(maps.put_slot(slot_key, *backend_id), || {
                format!("frontend {}: slot {slot}", frontend_name(&want.key))
            }) {
                continue 'frontends;
            }
            current.slots.insert(slot_key, *backend_id);
            index.add_ref(*backend_id);
            if let Some(before) = before {
                index.drop_ref(before, &mut candidates);
            }
        }
        if old != Some(want.value) {
            if !report.wrote(maps.put_service(&want.key, &want.value), || {
                format!("frontend {}", frontend_name(&want.key))
            }) {
                continue;
            }
            current.services.insert(want.key, want.value);
        }
        // What the entry no longer reaches: slots past its count, a table it lost, ranges.
        let old_count = old.map_or(0, |v| v.count);
        release(
            current,
            index,
            id,
            want.value.count,
            Some(old_count),
            &want.ranges,
            maps,
            report,
            &mut candidates,
        );
        if want.table.is_none() && current.tables.contains_key(&id) {
            drop_table(current, index, id, maps, report, &mut candidates);
        }
    }

    for backend_id in candidates {
        if index.refs.contains_key(&backend_id) {
            continue;
        }
        let Some(backend) = current.backends.get(&backend_id).copied() else {
            continue;
        };
        if report.wrote(maps.del_backend(backend_id), || {
            format!("backend {backend_id}: delete")
        }) {
            current.backends.remove(&backend_id);
            index.backend_ids.remove(&identity(&backend));
            index.be_ids.give_back(backend_id);
        }
    }
    // A frontend id is free once nothing of it is left; never within the sync that freed it.
    for id in freed_ids {
        index.svc_ids.give_back(id);
    }
    Some(delta)
}

fn drop_table<W: MapWriter>(
    current: &mut MapState,
    index: &mut Index,
    id: u32,
    maps: &mut W,
    report: &mut SyncReport,
    candidates: &mut BTreeSet<u32>,
) -> bool {
    if !report.wrote(maps.del_table(id), || format!("Maglev table {id}: delete")) {
        return false;
    }
    if let Some(old) = current.tables.remove(&id) {
        for b in old.backends {
            index.drop_ref(b, candidates);
        }
    }
    true
}

/// Deletes frontend `id`'s slots from `count` up to `old_count` (every slot it has when
/// `None`: its entry is gone), and its source ranges not in `keep`; a removed frontend's
/// table too. Whether everything was deleted.
#[allow(clippy::too_many_arguments)]
fn release<W: MapWriter>(
    current: &mut MapState,
    index: &mut Index,
    id: u32,
    count: u32,
    old_count: Option<u32>,
    keep: &[IpNet],
    maps: &mut W,
    report: &mut SyncReport,
    candidates: &mut BTreeSet<u32>,
) -> bool {
    let mut all = true;
    let end = match old_count {
        Some(old) => old,
        // A removed frontend: its slots are 0..its count, and nothing past it in a complete
        // state; look a little further for slots an interrupted write left.
        None => current
            .slots
            .range(
                SlotKey {
                    svc_id: id,
                    slot: 0,
                }..,
            )
            .take_while(|(k, _)| k.svc_id == id)
            .map(|(k, _)| k.slot + 1)
            .last()
            .unwrap_or(0),
    };
    for slot in count..end {
        let slot_key = SlotKey { svc_id: id, slot };
        let Some(backend_id) = current.slots.get(&slot_key).copied() else {
            continue;
        };
        if report.wrote(maps.del_slot(slot_key), || {
            format!("slot {slot_key:?}: delete")
        }) {
            current.slots.remove(&slot_key);
            index.drop_ref(backend_id, candidates);
        } else {
            all = false;
        }
    }
    for net in ranges_of(current, id) {
        if keep.contains(&net) {
            continue;
        }
        if report.wrote(maps.del_source_range(id, net), || {
            format!("source range {net} of frontend id {id}: delete")
        }) {
            current.source_ranges.remove(&(id, net));
        } else {
            all = false;
        }
    }
    if old_count.is_none() && current.tables.contains_key(&id) {
        all &= drop_table(current, index, id, maps, report, candidates);
    }
    all
}

#[cfg(test)]
#[path = "tests/delta_tests.rs"]
mod tests;
