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

impl SyncReport {
    /// Counts a write that succeeded, or records why it failed, naming the entry with
    /// `what`; whether it succeeded.
    pub(crate) fn wrote<E: std::fmt::Display>(
        &mut self,
        result: Result<(), E>,
        what: impl FnOnce() -> String,
    ) -> bool {
        match result {
            Ok(()) => {
                self.writes += 1;
                true
            }
            Err(err) => {
                self.errors.push(format!("{}: {err}", what()));
                false
            }
        }
    }
}

pub(crate) fn frontend_name(key: &ServiceKey) -> String {
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
        if report.wrote(maps.put_backend(*id, backend), || format!("backend {id}")) {
            current.backends.insert(*id, *backend);
        } else {
            failed_backends.insert(*id);
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
            if !report.wrote(maps.put_table(want.id, spec, &backends), || {
                format!("frontend {}: Maglev table", frontend_name(key))
            }) {
                continue;
            }
            current.tables.insert(want.id, spec.clone());
        }
        let ranges: Vec<(u32, IpNet)> = desired
            .source_ranges
            .range((want.id, IpNet::V4(Default::default()))..)
            .take_while(|(id, _)| *id == want.id)
            .filter(|range| !current.source_ranges.contains(range))
            .copied()
            .collect();
        for (id, net) in ranges {
            if !report.wrote(maps.put_source_range(id, net), || {
                format!("frontend {}: source range {net}", frontend_name(key))
            }) {
                continue 'frontends;
            }
            current.source_ranges.insert((id, net));
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
            if !report.wrote(maps.put_slot(slot_key, backend_id), || {
                format!("frontend {}: slot {}", frontend_name(key), slot_key.slot)
            }) {
                continue 'frontends;
            }
            current.slots.insert(slot_key, backend_id);
        }
        if current.services.get(key) != Some(want)
            && report.wrote(maps.put_service(key, want), || {
                format!("frontend {}", frontend_name(key))
            })
        {
            current.services.insert(*key, *want);
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
        if report.wrote(maps.del_service(&key), || {
            format!("frontend {}: delete", frontend_name(&key))
        }) {
            current.services.remove(&key);
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
        if report.wrote(maps.del_slot(slot), || format!("slot {slot:?}: delete")) {
            current.slots.remove(&slot);
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
        if report.wrote(maps.del_table(id), || format!("Maglev table {id}: delete")) {
            current.tables.remove(&id);
        }
    }
    let ranges: Vec<(u32, IpNet)> = current
        .source_ranges
        .difference(&desired.source_ranges)
        .copied()
        .collect();
    for (id, net) in ranges {
        if report.wrote(maps.del_source_range(id, net), || {
            format!("source range {net} of frontend id {id}: delete")
        }) {
            current.source_ranges.remove(&(id, net));
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
        if report.wrote(maps.del_backend(id), || format!("backend {id}: delete")) {
            current.backends.remove(&id);
        }
    }
    report
}

#[cfg(test)]
#[path = "tests/reconcile_tests.rs"]
pub(crate) mod tests;
