//! The incremental sync: the frontends the planner says changed are brought in line, and
//! nothing else is looked at. The full sync ([`super::full`]) compares every entry of the
//! cluster; at 10k services with 10 endpoints each that is 100k slots per sync, for an
//! endpoint change that writes three. Both write in the one order of [`super::write`];
//! frontends that went away are removed first, so their room is free for the ones that came.
//!
//! A change that would not fit the maps is not started: [`sync`] returns `None` and the
//! caller takes the full path, which decides which frontends get the room. After a write
//! fails, the caller takes the full path too, until a sync writes everything.

use std::collections::{BTreeSet, HashMap, HashSet};

use ipnet::IpNet;

use super::{Index, MapWriter, SyncReport, write::Writes};
use crate::{
    entries::{
        BackendIdentity, Capacity, FrontendEntries, MaglevSpec, MapState, backend_entry, identity,
        service_key, wants_table,
    },
    plan::{FrontendKey, Plan},
};

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
            ranges -= current.ranges_of(value.id).len();
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
                .filter(|id| !index.ids.backends.contains_key(id)),
        );
    }
    services <= capacity.services
        && slots <= capacity.slots
        && tables <= capacity.maglev_tables
        && ranges <= capacity.source_ranges
        && current.backends.len() + new_backends.len() <= capacity.backends
}

/// The changed keys with their partners: a frontend's entry says whether it has an internal
/// view, so the two change together.
fn with_views(changed: &BTreeSet<FrontendKey>) -> BTreeSet<FrontendKey> {
    changed
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
        .collect()
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
) -> Option<SyncReport> {
    let keys = with_views(changed);
    if !fits(plan, &keys, current, index, capacity) {
        return None;
    }
    let mut gone = Vec::new();
    let mut wanted = Vec::new();
    let mut fresh: HashMap<BackendIdentity, u32> = HashMap::new();
    for key in &keys {
        let skey = service_key(key);
        let old = current.services.get(&skey).copied();
        let Some(frontend) = plan.frontends.get(key) else {
            gone.extend(old.map(|value| (skey, value)));
            continue;
        };
        let id = old.map_or_else(|| index.ids.frontend_pool.take(), |value| value.id);
        let backends = index.ids.backends_of(key, frontend, &mut fresh);
        let table = wants_table(key, frontend).then(|| MaglevSpec {
            size: capacity.maglev_size,
            backends: backends.iter().map(|(id, _)| *id).collect(),
        });
        let ranges = frontend.source_ranges.iter().map(IpNet::trunc).collect();
        wanted.push(FrontendEntries::new(
            plan, key, frontend, id, backends, table, ranges,
        ));
    }
    let mut writes = Writes::new(current, index, maps);
    for (key, value) in gone {
        writes.remove(key, value);
    }
    writes.write_all(&wanted);
    Some(writes.finish())
}

#[cfg(test)]
#[path = "tests/incremental_tests.rs"]
mod tests;
