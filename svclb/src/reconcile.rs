//! Diff -> maps: writes only what differs between the programmed state and the desired one, in
//! an order that never exposes a half-written frontend: backends first, then a frontend's slots,
//! then its entry; removals in the reverse order. Every write that fails is reported and the
//! programmed state keeps describing exactly what the kernel holds.

use std::collections::HashSet;

use svclb_common::{Backend, ServiceKey, ServiceValue, SlotKey};

use crate::{
    mapstate::{MapState, ServiceRecord, ip_of},
    plan::{FrontendKey, Protocol},
};

/// The writes the reconciler needs from the maps.
pub trait MapWriter {
    type Error: std::fmt::Display;
    fn put_backend(&mut self, id: u32, backend: &Backend) -> Result<(), Self::Error>;
    fn del_backend(&mut self, id: u32) -> Result<(), Self::Error>;
    fn put_slot(&mut self, key: SlotKey, backend_id: u32) -> Result<(), Self::Error>;
    fn del_slot(&mut self, key: SlotKey) -> Result<(), Self::Error>;
    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), Self::Error>;
    fn del_service(&mut self, key: &ServiceKey) -> Result<(), Self::Error>;
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
    let port = u16::from_be(key.port_be);
    let addr = ip_of(&key.addr, key.family);
    match Protocol::from_number(key.proto) {
        Some(protocol) => FrontendKey {
            address: addr,
            port,
            protocol,
        }
        .to_string(),
        None => format!("{addr}:{port}/{}", key.proto),
    }
}

/// Brings the maps from `current` to `desired`, updating `current` as writes succeed.
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

    // 2. New and changed frontends: slots, then the entry, then slots past the new count.
    for (key, want) in &desired.services {
        let have = current.services.get(key);
        if have == Some(want) {
            continue;
        }
        if let Some(bad) = want.slots.iter().find(|id| failed_backends.contains(id)) {
            report.errors.push(format!(
                "frontend {}: not updated, backend {bad} could not be written",
                frontend_name(key)
            ));
            continue;
        }
        // `desired` keeps a frontend's id, so the old slots are this id's slots.
        let old_slots: &[u32] = have.map_or(&[], |r| &r.slots);
        let mut ok = true;
        for (slot, backend_id) in want.slots.iter().enumerate() {
            if old_slots.get(slot) == Some(backend_id) {
                continue;
            }
            let slot_key = SlotKey {
                svc_id: want.value.id,
                slot: slot as u32,
            };
            match maps.put_slot(slot_key, *backend_id) {
                Ok(()) => report.writes += 1,
                Err(err) => {
                    ok = false;
                    report.errors.push(format!(
                        "frontend {}: slot {slot}: {err}",
                        frontend_name(key)
                    ));
                    break;
                }
            }
        }
        if !ok {
            continue;
        }
        if have.map(|r| r.value) != Some(want.value) {
            if let Err(err) = maps.put_service(key, &want.value) {
                report
                    .errors
                    .push(format!("frontend {}: {err}", frontend_name(key)));
                continue;
            }
            report.writes += 1;
        }
        if let Some(old) = current.services.insert(*key, want.clone()) {
            let (from, to) = (want.slots.len(), old.slots.len());
            delete_slots(maps, key, want.value.id, from, to, &mut report);
        }
    }

    // 3. Frontends that are gone: the entry, then its slots.
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
                if let Some(ServiceRecord { value, slots }) = current.services.remove(&key) {
                    delete_slots(maps, &key, value.id, 0, slots.len(), &mut report);
                }
            }
            Err(err) => report
                .errors
                .push(format!("frontend {}: delete: {err}", frontend_name(&key))),
        }
    }

    // 4. Backends no programmed frontend uses any more.
    let referenced: HashSet<u32> = current
        .services
        .values()
        .flat_map(|r| r.slots.iter().copied())
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

fn delete_slots<W: MapWriter>(
    maps: &mut W,
    key: &ServiceKey,
    svc_id: u32,
    from: usize,
    to: usize,
    report: &mut SyncReport,
) {
    for slot in from..to {
        let slot_key = SlotKey {
            svc_id,
            slot: slot as u32,
        };
        match maps.del_slot(slot_key) {
            Ok(()) => report.writes += 1,
            // A leftover slot past the count is never read; the next start deletes it.
            Err(err) => report.errors.push(format!(
                "frontend {}: delete slot {slot}: {err}",
                frontend_name(key)
            )),
        }
    }
}

#[cfg(test)]
#[path = "tests/reconcile_tests.rs"]
mod tests;
