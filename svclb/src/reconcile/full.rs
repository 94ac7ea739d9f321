//! The full sync: brings the maps from what they hold to a complete desired state, comparing
//! every entry. It runs at a cold start (adopting what an earlier run left), after a full map
//! and after a failed write. It writes in the one order of [`super::write`], over every
//! frontend, then deletes what no frontend owns: slots past a count or of no frontend, tables
//! and ranges of no wanted frontend, backends nothing points at (an interrupted run can leave
//! any of these).

use std::collections::HashMap;

use ipnet::IpNet;
use svclb_common::{ServiceKey, SlotKey};

use super::{Index, MapWriter, SyncReport, write::Writes};
use crate::entries::{FrontendEntries, MapState};

/// Brings the maps from `current` to `desired`, updating `current` write by write, so it
/// always holds exactly what the kernel holds, even when writes fail.
pub fn sync<W: MapWriter>(current: &mut MapState, desired: &MapState, maps: &mut W) -> SyncReport {
    let mut index = Index::of(current);
    let mut writes = Writes::new(current, &mut index, maps);
    let gone: Vec<(ServiceKey, svclb_common::ServiceValue)> = writes
        .current
        .services
        .iter()
        .filter(|(key, _)| !desired.services.contains_key(key))
        .map(|(key, value)| (*key, *value))
        .collect();
    for (key, value) in gone {
        writes.remove(key, value);
    }
    let wants: Vec<FrontendEntries> = desired
        .services
        .iter()
        .map(|(key, value)| FrontendEntries::of_state(desired, *key, *value))
        .collect();
    writes.write_all(&wants);
    delete_orphans(&mut writes, desired);
    let unused: Vec<u32> = writes
        .current
        .backends
        .keys()
        .filter(|id| !desired.backends.contains_key(id))
        .copied()
        .collect();
    writes.delete_unused(unused);
    writes.finish()
}

/// Deletes slots no programmed frontend can reach, and tables and source ranges no wanted
/// frontend uses. (Removing one from a frontend whose update failed only makes it fall back
/// to random picks, or refuse a source: never a wrong backend, never an open door.)
fn delete_orphans<W: MapWriter>(writes: &mut Writes<'_, W>, desired: &MapState) {
    let counts: HashMap<u32, u32> = writes
        .current
        .services
        .values()
        .map(|v| (v.id, v.count))
        .collect();
    let unreachable: Vec<(SlotKey, u32)> = writes
        .current
        .slots
        .iter()
        .filter(|(slot, _)| {
            counts
                .get(&slot.svc_id)
                .is_none_or(|count| slot.slot >= *count)
        })
        .map(|(slot, backend)| (*slot, *backend))
        .collect();
    for (slot, backend) in unreachable {
        writes.del_slot(slot, backend);
    }
    let tables: Vec<u32> = writes
        .current
        .tables
        .keys()
        .filter(|id| !desired.tables.contains_key(id))
        .copied()
        .collect();
    for id in tables {
        writes.drop_table(id);
    }
    let ranges: Vec<(u32, IpNet)> = writes
        .current
        .source_ranges
        .difference(&desired.source_ranges)
        .copied()
        .collect();
    for (id, net) in ranges {
        writes.del_range(id, net);
    }
}

#[cfg(test)]
#[path = "tests/full_tests.rs"]
mod tests;
