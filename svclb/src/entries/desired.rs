//! The whole plan as map entries, with the ids the maps already use for the same frontends and
//! backends, and only what fits the maps.

use std::collections::HashMap;

use ipnet::IpNet;
use svclb_common::{Backend, ServiceKey, ServiceValue};

use super::{Capacity, FrontendEntries, Ids, MaglevSpec, MapState, service_key, wants_table};
use crate::plan::{Diagnostic, Frontend, FrontendKey, Plan};

/// Translates `plan` into map entries, keeping the ids `current` already uses for the same
/// frontends and backends. A frontend that does not fit the maps is reported; if it is already
/// programmed it keeps its current entries, otherwise it is left out.
pub fn desired(plan: &Plan, current: &MapState, capacity: Capacity) -> (MapState, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let mut ids = Ids::of(current);
    let mut fresh = HashMap::new();
    let mut out = MapState::default();
    for (key, frontend) in &plan.frontends {
        let skey = service_key(key);
        let existing = current.services.get(&skey).copied();
        let backends = ids.backends_of(key, frontend, &mut fresh);
        if let Some((map, size)) = first_full(&out, &backends, capacity) {
            let kept = existing.is_some_and(|value| keep_current(&mut out, current, skey, value));
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
        let id = existing.map_or_else(|| ids.frontend_pool.take(), |value| value.id);
        let table = table_if_room(&out, key, frontend, &backends, capacity, &mut diags);
        let ranges = ranges_if_room(&out, key, frontend, capacity, &mut diags);
        FrontendEntries::new(plan, key, frontend, id, backends, table, ranges)
            .insert_into(&mut out);
    }
    (out, diags)
}

/// The map (and its size) that has no room for a frontend with `backends`, if any.
fn first_full(
    out: &MapState,
    backends: &[(u32, Backend)],
    capacity: Capacity,
) -> Option<(&'static str, usize)> {
    let new_backends = backends
        .iter()
        .filter(|(id, _)| !out.backends.contains_key(id))
        .count();
    if out.services.len() + 1 > capacity.services {
        Some(("services", capacity.services))
    } else if out.slots.len() + backends.len() > capacity.slots {
        Some(("slots", capacity.slots))
    } else if out.backends.len() + new_backends > capacity.backends {
        Some(("backends", capacity.backends))
    } else {
        None
    }
}

/// The Maglev table of a frontend that wants one, if the Maglev map has room; without room it
/// picks at random, which is reported.
fn table_if_room(
    out: &MapState,
    key: &FrontendKey,
    frontend: &Frontend,
    backends: &[(u32, Backend)],
    capacity: Capacity,
    diags: &mut Vec<Diagnostic>,
) -> Option<MaglevSpec> {
    if !wants_table(key, frontend) {
        return None;
    }
    if out.tables.len() >= capacity.maglev_tables {
        diags.push(Diagnostic::new(
            format!("Service {}", frontend.service),
            format!(
                "frontend {key} picks backends at random, not by Maglev: the Maglev map is full \
                 ({} tables)",
                capacity.maglev_tables
            ),
        ));
        return None;
    }
    Some(MaglevSpec {
        size: capacity.maglev_size,
        backends: backends.iter().map(|(id, _)| *id).collect(),
    })
}

/// A frontend's source ranges, if they fit. Without room the frontend refuses every source
/// rather than admit everyone (its entry still says it has ranges): the ranges are a security
/// boundary.
fn ranges_if_room(
    out: &MapState,
    key: &FrontendKey,
    frontend: &Frontend,
    capacity: Capacity,
    diags: &mut Vec<Diagnostic>,
) -> Vec<IpNet> {
    if out.source_ranges.len() + frontend.source_ranges.len() <= capacity.source_ranges {
        return frontend.source_ranges.iter().map(IpNet::trunc).collect();
    }
    diags.push(Diagnostic::new(
        format!("Service {}", frontend.service),
        format!(
            "frontend {key} refuses every source: its loadBalancerSourceRanges do not fit the \
             source-ranges map ({} entries)",
            capacity.source_ranges
        ),
    ));
    Vec::new()
}

/// Copies a programmed frontend, with its slots and backends, into `out`. `false` when its
/// slots are incomplete in the kernel (it cannot be kept as it is).
fn keep_current(
    out: &mut MapState,
    current: &MapState,
    key: ServiceKey,
    value: ServiceValue,
) -> bool {
    let kept = FrontendEntries::of_state(current, key, value);
    if kept.backends.len() != value.count as usize {
        return false;
    }
    kept.insert_into(out);
    true
}
