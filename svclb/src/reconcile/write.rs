//! The one write order, shared by the full and the incremental sync. Per frontend: its new
//! backends, its Maglev table (built aside, swapped in whole), its source ranges, its slots,
//! then its entry; after the entry, what it no longer reaches (slots past its count, ranges,
//! a table it lost). A frontend that goes away loses its entry first, then the rest. Backends
//! nothing points at any more go last.
//!
//! Every write updates the programmed state and the index only when it succeeded, so both
//! always describe exactly what the kernel holds. A frontend whose write fails keeps its old
//! entry, and whatever was already rewritten for it points at live backends.

use std::collections::{BTreeSet, HashSet};

use ipnet::IpNet;
use svclb_common::{ServiceKey, ServiceValue, SlotKey};

use super::{Index, MapWriter, SyncReport, TableWrite, frontend_name};
use crate::entries::{FrontendEntries, MaglevSpec, MapState, identity};

/// Frontends whose tables [`Writes::write_all`] puts in one call.
const TABLE_BATCH: usize = 256;

/// One sync's writes through `maps`, keeping `current` and `index` exact.
pub(super) struct Writes<'a, W> {
    pub(super) current: &'a mut MapState,
    pub(super) index: &'a mut Index,
    maps: &'a mut W,
    pub(super) report: SyncReport,
    /// Backends that lost a reference in this sync: deleted at the end if nothing points at
    /// them.
    candidates: BTreeSet<u32>,
    /// Backends whose write failed in this sync (not tried again within it).
    failed_backends: HashSet<u32>,
    /// Frontend ids freed in this sync, given back only at its end.
    freed_ids: Vec<u32>,
}

impl<'a, W: MapWriter> Writes<'a, W> {
    pub(super) fn new(current: &'a mut MapState, index: &'a mut Index, maps: &'a mut W) -> Self {
        Self {
            current,
            index,
            maps,
            report: SyncReport::default(),
            candidates: BTreeSet::new(),
            failed_backends: HashSet::new(),
            freed_ids: Vec::new(),
        }
    }

    /// Removes a frontend that went away: its entry, then its slots, ranges and table.
    pub(super) fn remove(&mut self, key: ServiceKey, value: ServiceValue) {
        let departed = self.current.slots_of(&value);
        self.report
            .departed
            .extend(departed.into_iter().map(|b| (value.id, b)));
        let deleted = self.maps.del_service(&key);
        if !self.report.wrote(deleted, || {
            format!("frontend {}: delete", frontend_name(&key))
        }) {
            return;
        }
        self.current.services.remove(&key);
        if self.release(value.id, 0, None, &[]) {
            self.freed_ids.push(value.id);
        }
    }

    /// Writes a new or changed frontend in the one order; what is already right is not
    /// written again.
    pub(super) fn write(&mut self, want: &FrontendEntries) {
        let id = want.value.id;
        let old = self.current.services.get(&want.key).copied();
        if let Some(old) = old {
            let kept: HashSet<u32> = want.backends.iter().map(|(b, _)| *b).collect();
            let departed = self.current.slots_of(&old);
            self.report.departed.extend(
                departed
                    .into_iter()
                    .filter(|b| !kept.contains(b))
                    .map(|b| (id, b)),
            );
        }
        if !(self.put_backends(want)
            && self.put_table(want)
            && self.put_ranges(want)
            && self.put_slots(want)
            && self.put_entry(want, old))
        {
            return;
        }
        // What the entry no longer reaches: slots past its count, ranges, a table it lost.
        let old_count = old.map_or(0, |v| v.count);
        self.release(id, want.value.count, Some(old_count), &want.ranges);
        if want.table.is_none() && self.current.tables.contains_key(&id) {
            self.drop_table(id);
        }
    }

    /// Writes new or changed frontends as [`Self::write`] does, their tables put together
    /// first, [`TABLE_BATCH`] frontends at a time (each with its backends, so a table swapped
    /// in under a live entry points at backends that exist).
    pub(super) fn write_all(&mut self, wants: &[FrontendEntries]) {
        for chunk in wants.chunks(TABLE_BATCH) {
            self.put_tables(chunk);
            for want in chunk {
                self.write(want);
            }
        }
    }

    /// Puts the tables of `wants` that need writing, in one call of the writer. A frontend
    /// whose backends or table fail here is left to [`Self::write`], which tries again and
    /// names the failure.
    fn put_tables(&mut self, wants: &[FrontendEntries]) {
        let mut tables = Vec::new();
        for want in wants {
            let id = want.value.id;
            if let Some(spec) = &want.table
                && self.current.tables.get(&id) != Some(spec)
                && self.put_backends(want)
            {
                tables.push(TableWrite {
                    id,
                    spec,
                    backends: &want.backends,
                });
            }
        }
        if tables.is_empty() {
            return;
        }
        let results = self.maps.put_tables(&tables);
        for (table, result) in tables.into_iter().zip(results) {
            if result.is_ok() {
                self.report.writes += 1;
                self.table_written(table.id, table.spec);
            }
        }
    }

    /// Deletes the backends among `ids` that no slot or table points at any more.
    pub(super) fn delete_unused(&mut self, ids: impl IntoIterator<Item = u32>) {
        for backend_id in ids {
            if self.index.is_referenced(backend_id) {
                continue;
            }
            let Some(backend) = self.current.backends.get(&backend_id).copied() else {
                continue;
            };
            let deleted = self.maps.del_backend(backend_id);
            if self
                .report
                .wrote(deleted, || format!("backend {backend_id}: delete"))
            {
                self.current.backends.remove(&backend_id);
                self.index.ids.backends.remove(&identity(&backend));
                self.index.ids.backend_pool.give_back(backend_id);
            }
        }
    }

    /// Deletes the backends that lost their last reference in this sync, frees the frontend
    /// ids of removed frontends (never within the sync that freed them), and says what the
    /// sync did.
    pub(super) fn finish(mut self) -> SyncReport {
        let candidates = std::mem::take(&mut self.candidates);
        self.delete_unused(candidates);
        for id in self.freed_ids {
            self.index.ids.frontend_pool.give_back(id);
        }
        self.report
    }

    /// Deletes slot `slot_key`, which points at `backend_id`.
    pub(super) fn del_slot(&mut self, slot_key: SlotKey, backend_id: u32) -> bool {
        let deleted = self.maps.del_slot(slot_key);
        if !self
            .report
            .wrote(deleted, || format!("slot {slot_key:?}: delete"))
        {
            return false;
        }
        self.current.slots.remove(&slot_key);
        self.drop_ref(backend_id);
        true
    }

    /// Deletes frontend `id`'s source range `net`.
    pub(super) fn del_range(&mut self, id: u32, net: IpNet) -> bool {
        let deleted = self.maps.del_source_range(id, net);
        if !self.report.wrote(deleted, || {
            format!("source range {net} of frontend id {id}: delete")
        }) {
            return false;
        }
        self.current.source_ranges.remove(&(id, net));
        true
    }

    /// Deletes frontend `id`'s Maglev table.
    pub(super) fn drop_table(&mut self, id: u32) -> bool {
        let deleted = self.maps.del_table(id);
        if !self
            .report
            .wrote(deleted, || format!("Maglev table {id}: delete"))
        {
            return false;
        }
        if let Some(old) = self.current.tables.remove(&id) {
            for b in old.backends {
                self.drop_ref(b);
            }
        }
        true
    }

    fn drop_ref(&mut self, backend_id: u32) {
        self.index.drop_ref(backend_id);
        self.candidates.insert(backend_id);
    }

    fn put_backends(&mut self, want: &FrontendEntries) -> bool {
        for (backend_id, backend) in &want.backends {
            if self.current.backends.get(backend_id) == Some(backend) {
                continue;
            }
            let written = !self.failed_backends.contains(backend_id) && {
                let put = self.maps.put_backend(*backend_id, backend);
                self.report.wrote(put, || format!("backend {backend_id}"))
            };
            if !written {
                self.failed_backends.insert(*backend_id);
                self.report.errors.push(format!(
                    "frontend {}: not updated, backend {backend_id} could not be written",
                    frontend_name(&want.key)
                ));
                return false;
            }
            self.current.backends.insert(*backend_id, *backend);
            self.index
                .ids
                .backends
                .insert(identity(backend), *backend_id);
        }
        true
    }

    fn put_table(&mut self, want: &FrontendEntries) -> bool {
        let id = want.value.id;
        let Some(spec) = &want.table else {
            return true;
        };
        if self.current.tables.get(&id) == Some(spec) {
            return true;
        }
        let put = self.maps.put_table(id, spec, &want.backends);
        if !self.report.wrote(put, || {
            format!("frontend {}: Maglev table", frontend_name(&want.key))
        }) {
            return false;
        }
        self.table_written(id, spec);
        true
    }

    /// Records frontend `id`'s table as `spec`, written.
    fn table_written(&mut self, id: u32, spec: &MaglevSpec) {
        if let Some(old) = self.current.tables.insert(id, spec.clone()) {
            for b in old.backends {
                self.drop_ref(b);
            }
        }
        for b in &spec.backends {
            self.index.add_ref(*b);
        }
    }

    fn put_ranges(&mut self, want: &FrontendEntries) -> bool {
        let id = want.value.id;
        for net in &want.ranges {
            if self.current.source_ranges.contains(&(id, *net)) {
                continue;
            }
            let put = self.maps.put_source_range(id, *net);
            if !self.report.wrote(put, || {
                format!("frontend {}: source range {net}", frontend_name(&want.key))
            }) {
                return false;
            }
            self.current.source_ranges.insert((id, *net));
        }
        true
    }

    fn put_slots(&mut self, want: &FrontendEntries) -> bool {
        let id = want.value.id;
        for (slot, (backend_id, _)) in want.backends.iter().enumerate() {
            let slot_key = SlotKey {
                svc_id: id,
                slot: slot as u32,
            };
            let before = self.current.slots.get(&slot_key).copied();
            if before == Some(*backend_id) {
                continue;
            }
            let put = self.maps.put_slot(slot_key, *backend_id);
            if !self.report.wrote(put, || {
                format!("frontend {}: slot {slot}", frontend_name(&want.key))
            }) {
                return false;
            }
            self.current.slots.insert(slot_key, *backend_id);
            self.index.add_ref(*backend_id);
            if let Some(before) = before {
                self.drop_ref(before);
            }
        }
        true
    }

    fn put_entry(&mut self, want: &FrontendEntries, old: Option<ServiceValue>) -> bool {
        if old == Some(want.value) {
            return true;
        }
        let put = self.maps.put_service(&want.key, &want.value);
        if !self
            .report
            .wrote(put, || format!("frontend {}", frontend_name(&want.key)))
        {
            return false;
        }
        self.current.services.insert(want.key, want.value);
        true
    }

    /// Deletes frontend `id`'s slots from `count` up to `old_count` (every slot it has when
    /// `None`: its entry is gone), and its source ranges not in `keep`; a removed frontend's
    /// table too. Whether everything was deleted.
    fn release(&mut self, id: u32, count: u32, old_count: Option<u32>, keep: &[IpNet]) -> bool {
        let mut all = true;
        let end = old_count.unwrap_or_else(|| self.slot_end(id));
        for slot in count..end {
            let slot_key = SlotKey { svc_id: id, slot };
            if let Some(backend_id) = self.current.slots.get(&slot_key).copied() {
                all &= self.del_slot(slot_key, backend_id);
            }
        }
        for net in self.current.ranges_of(id) {
            if !keep.contains(&net) {
                all &= self.del_range(id, net);
            }
        }
        if old_count.is_none() && self.current.tables.contains_key(&id) {
            all &= self.drop_table(id);
        }
        all
    }

    /// One past the last slot frontend `id` has. A removed frontend's slots are 0..its count,
    /// and nothing past it in a complete state; this also finds slots an interrupted write
    /// left further out.
    fn slot_end(&self, id: u32) -> u32 {
        self.current
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
            .unwrap_or(0)
    }
}
