//! Diff -> maps: writes only what differs between the programmed state and the desired one, in
//! an order that never exposes a half-written frontend: backends first, then a frontend's
//! Maglev table (built aside and swapped in whole), source ranges and slots, then its entry;
//! removals in the reverse order. Every write that fails is reported and the
//! programmed state keeps describing exactly what the kernel holds.

use std::collections::{HashMap, HashSet};

use ipnet::IpNet;
use svclb_common::{Backend, ServiceKey, ServiceValue, SlotKey};

use crate::mapstate::{MaglevSpec, MapState, frontend_key};

/// The writes the reconciler needs from the maps.
pub trait MapWriter {
    type Error: std::fmt::Display;
    fn put_backend(&mut self, id: u32, backend: &Backend) -> Result<(), Self::Error>;
    fn del_backend(&mut self, id: u32) -> Result<(), Self::Error>;
    fn put_slot(&mut self, key: SlotKey, backend_id: u32) -> Result<(), Self::Error>;
    fn del_slot(&mut self, key: SlotKey) -> Result<(), Self::Error>;
    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), Self::Error>;
    fn del_service(&mut self, key: &ServiceKey) -> Result<(), Self::Error>;
    /// Builds frontend `id`'s Maglev table over `backends` (id and entry, in slot order) and
    /// puts it in place of the old one in one step.
    fn put_table(
        &mut self,
        id: u32,
        spec: &MaglevSpec,
        backends: &[(u32, Backend)],
    ) -> Result<(), Self::Error>;
    fn del_table(&mut self, id: u32) -> Result<(), Self::Error>;
    fn put_source_range(&mut self, id: u32, net: IpNet) -> Result<(), Self::Error>;
    fn del_source_range(&mut self, id: u32, net: IpNet) -> Result<(), Self::Error>;
}

/// What one sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Map entries written or deleted.
    pub writes: usize,
    /// Writes that failed, each naming the entry and the cause.
    pub errors: Vec<String>,
}

fn frontend_name(key: &ServiceKey) -> String {
    match frontend_key(key) {
        Some(frontend) => frontend.to_string(),
        None => format!("{key:?}"),
    }
}

/// Brings the maps from `current` to `desired`, updating `current` write by write, so it
/// always holds exactly what the kernel holds, even when writes fail.
pub fn sync<W: MapWriter>(current: &mut MapState, desired: &MapState, maps: &mut W) -> SyncReport {
    let mut report = SyncReport::default();

    // 1. New and changed backends.
    let mut failed_backends = HashSet::new();
    for (id, backend) in &desired.backends {
        if current.backends.get(id) == Some(backend) {
            continue;
        }
        match maps.put_backend(*id, backend) {
            Ok(()) => {
                report.writes += 1;
                current.backends.insert(*id, *backend);
            }
            Err(err) => {
                failed_backends.insert(*id);
                report.errors.push(format!("backend {id}: {err}"));
            }
        }
    }

    // 2. New and changed frontends: their table, source ranges and slots, then their entry.
    //    A frontend whose writes fail keeps its old entry; what was already rewritten points
    //    at live backends.
    'frontends: for (key, want) in &desired.services {
        if let Some(spec) = desired.tables.get(&want.id)
            && current.tables.get(&want.id) != Some(spec)
        {
            let backends: Vec<(u32, Backend)> = spec
                .backends
                .iter()
                .filter_map(|id| current.backends.get(id).map(|b| (*id, *b)))
                .collect();
            if backends.len() != spec.backends.len() {
                report.errors.push(format!(
                    "frontend {}: not updated, a backend of its Maglev table could not be written",
                    frontend_name(key)
                ));
                continue;
            }
            match maps.put_table(want.id, spec, &backends) {
                Ok(()) => {
                    report.writes += 1;
                    current.tables.insert(want.id, spec.clone());
                }
                Err(err) => {
                    report.errors.push(format!(
                        "frontend {}: Maglev table: {err}",
                        frontend_name(key)
                    ));
                    continue;
                }
            }
        }
        let ranges: Vec<(u32, IpNet)> = desired
            .source_ranges
            .range((want.id, IpNet::V4(Default::default()))..)
            .take_while(|(id, _)| *id == want.id)
            .filter(|range| !current.source_ranges.contains(range))
            .copied()
            .collect();
        for (id, net) in ranges {
            match maps.put_source_range(id, net) {
                Ok(()) => {
                    report.writes += 1;
                    current.source_ranges.insert((id, net));
                }
                Err(err) => {
                    report.errors.push(format!(
                        "frontend {}: source range {net}: {err}",
                        frontend_name(key)
                    ));
                    continue 'frontends;
                }
            }
        }
        let slots: Vec<(SlotKey, u32)> = (0..want.count)
            .map(|slot| SlotKey {
                svc_id: want.id,
                slot,
            })
            .map(|slot_key| (slot_key, desired.slots[&slot_key]))
            .collect();
        if let Some((_, bad)) = slots.iter().find(|(_, id)| failed_backends.contains(id)) {
            report.errors.push(format!(
                "frontend {}: not updated, backend {bad} could not be written",
                frontend_name(key)
            ));
            continue;
        }
        for (slot_key, backend_id) in slots {
            if current.slots.get(&slot_key) == Some(&backend_id) {
                continue;
            }
            match maps.put_slot(slot_key, backend_id) {
                Ok(()) => {
                    report.writes += 1;
                    current.slots.insert(slot_key, backend_id);
                }
                Err(err) => {
                    report.errors.push(format!(
                        "frontend {}: slot {}: {err}",
                        frontend_name(key),
                        slot_key.slot
                    ));
                    continue 'frontends;
                }
            }
        }
        if current.services.get(key) != Some(want) {
            match maps.put_service(key, want) {
                Ok(()) => {
                    report.writes += 1;
                    current.services.insert(*key, *want);
                }
                Err(err) => report
                    .errors
                    .push(format!("frontend {}: {err}", frontend_name(key))),
            }
        }
    }

    // 3. Frontends that are gone.
    let gone: Vec<ServiceKey> = current
        .services
        .keys()
        .filter(|key| !desired.services.contains_key(key))
        .copied()
        .collect();
    for key in gone {
        match maps.del_service(&key) {
            Ok(()) => {
                report.writes += 1;
                current.services.remove(&key);
            }
            Err(err) => report
                .errors
                .push(format!("frontend {}: delete: {err}", frontend_name(&key))),
        }
    }

    // 4. Slots no programmed frontend can reach (past a shrunk count, of a removed frontend, or
    //    left by an earlier run).
    let counts: HashMap<u32, u32> = current.services.values().map(|v| (v.id, v.count)).collect();
    let unreachable: Vec<SlotKey> = current
        .slots
        .keys()
        .filter(|slot| {
            counts
                .get(&slot.svc_id)
                .is_none_or(|count| slot.slot >= *count)
        })
        .copied()
        .collect();
    for slot in unreachable {
        match maps.del_slot(slot) {
            Ok(()) => {
                report.writes += 1;
                current.slots.remove(&slot);
            }
            Err(err) => report.errors.push(format!("slot {slot:?}: delete: {err}")),
        }
    }

    // 5. Tables and source ranges no wanted frontend uses. (Removing one from a frontend
    //    whose update failed only makes it fall back to random picks, or refuse a source:
    //    never a wrong backend, never an open door.)
    let tables: Vec<u32> = current
        .tables
        .keys()
        .filter(|id| !desired.tables.contains_key(id))
        .copied()
        .collect();
    for id in tables {
        match maps.del_table(id) {
            Ok(()) => {
                report.writes += 1;
                current.tables.remove(&id);
            }
            Err(err) => report
                .errors
                .push(format!("Maglev table {id}: delete: {err}")),
        }
    }
    let ranges: Vec<(u32, IpNet)> = current
        .source_ranges
        .difference(&desired.source_ranges)
        .copied()
        .collect();
    for (id, net) in ranges {
        match maps.del_source_range(id, net) {
            Ok(()) => {
                report.writes += 1;
                current.source_ranges.remove(&(id, net));
            }
            Err(err) => report.errors.push(format!(
                "source range {net} of frontend id {id}: delete: {err}"
            )),
        }
    }

    // 6. Backends no slot or table in the kernel points at any more.
    let referenced: HashSet<u32> = current
        .slots
        .values()
        .chain(current.tables.values().flat_map(|t| &t.backends))
        .copied()
        .collect();
    let unused: Vec<u32> = current
        .backends
        .keys()
        .filter(|id| !referenced.contains(id) && !desired.backends.contains_key(id))
        .copied()
        .collect();
    for id in unused {
        match maps.del_backend(id) {
            Ok(()) => {
                report.writes += 1;
                current.backends.remove(&id);
            }
            Err(err) => report.errors.push(format!("backend {id}: delete: {err}")),
        }
    }
    report
}

#[cfg(test)]
#[path = "tests/reconcile_tests.rs"]
mod tests;
