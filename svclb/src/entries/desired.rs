//! The whole plan as map entries, with the ids the maps already use for the same frontends and
//! backends, and only what fits the maps.

use std::collections::{BTreeMap, HashMap, HashSet};

use ipnet::IpNet;
use svclb_common::{Backend, ServiceKey, ServiceValue};

use super::{Capacity, FrontendEntries, Ids, MaglevSpec, MapState, service_key, wants_table};
use crate::plan::{Diagnostic, Frontend, FrontendKey, Kind, Plan};

/// A frontend the maps had no room for (or not all the room it wanted), and its diagnostic.
pub type Refusal = (FrontendKey, Diagnostic);

/// Translates `plan` into map entries, keeping the ids `current` already uses for the same
/// frontends and backends, and only what fits the maps. Under pressure each Service gets a
/// fair share: Services get room whole, the least demanding first (see [`fair_order`]), so
/// that every Service needing no more than its share fits, and the ones refused are the most
/// demanding. A refused Service's frontends that are programmed keep their current entries
/// while those fit; the others are left out. Each refusal is reported.
pub fn desired(plan: &Plan, current: &MapState, capacity: Capacity) -> (MapState, Vec<Refusal>) {
    let mut ids = Ids::of(current);
    let mut fresh = HashMap::new();
    let mut out = MapState::default();
    let mut refusals = Vec::new();
    for service in fair_order(plan, current, capacity) {
        let planned: Vec<_> = service
            .into_iter()
            .map(|(key, frontend)| (key, frontend, ids.backends_of(key, frontend, &mut fresh)))
            .collect();
        let full = first_full(&out, planned.iter().map(|(_, _, b)| b.as_slice()), capacity);
        for (key, frontend, backends) in planned {
            let skey = service_key(key);
            let existing = current.services.get(&skey).copied();
            let mut diags = Vec::new();
            if let Some((map, size)) = full {
                let kept = existing
                    .is_some_and(|value| keep_current(&mut out, current, skey, value, capacity));
                diags.push(refusal(frontend, key, kept, map, size));
            } else {
                let id = existing.map_or_else(|| ids.frontend_pool.take(), |value| value.id);
                let table = table_if_room(&out, key, frontend, &backends, capacity, &mut diags);
                let ranges = ranges_if_room(&out, key, frontend, capacity, &mut diags);
                FrontendEntries::new(plan, key, frontend, id, backends, table, ranges)
                    .insert_into(&mut out);
            }
            refusals.extend(diags.into_iter().map(|diag| (*key, diag)));
        }
    }
    (out, refusals)
}

fn refusal(
    frontend: &Frontend,
    key: &FrontendKey,
    kept: bool,
    map: &str,
    size: usize,
) -> Diagnostic {
    let outcome = if kept {
        "not updated, keeps its programmed backends"
    } else {
        "skipped"
    };
    Diagnostic::new(
        format!("Service {}", frontend.service),
        format!("frontend {key} {outcome}: the {map} map is full ({size} entries)"),
    )
    .of(Kind::MapFull)
}

/// The Services of `plan`, each with its frontends, in the order they get room: by the
/// largest share of a map's capacity the Service needs (frontends of the services map, slots,
/// distinct backends: its dominant share), least first; then the programmed ones; then by
/// name. Admitting whole Services in this order fills the maps max-min fairly.
fn fair_order<'a>(
    plan: &'a Plan,
    current: &MapState,
    capacity: Capacity,
) -> Vec<Vec<(&'a FrontendKey, &'a Frontend)>> {
    let mut by_service: BTreeMap<&str, Vec<(&FrontendKey, &Frontend)>> = BTreeMap::new();
    for (key, frontend) in &plan.frontends {
        by_service
            .entry(&frontend.service)
            .or_default()
            .push((key, frontend));
    }
    let mut ranked: Vec<(f64, bool, &str, Vec<_>)> = by_service
        .into_iter()
        .map(|(name, frontends)| {
            let share = dominant_share(&frontends, capacity);
            let fresh = !frontends
                .iter()
                .any(|(key, _)| current.services.contains_key(&service_key(key)));
            (share, fresh, name, frontends)
        })
        .collect();
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(b.2)));
    ranked
        .into_iter()
        .map(|(.., frontends)| frontends)
        .collect()
}

/// The largest share of one map's capacity that `frontends` need.
fn dominant_share(frontends: &[(&FrontendKey, &Frontend)], capacity: Capacity) -> f64 {
    let slots: usize = frontends.iter().map(|(_, f)| f.backends.len()).sum();
    let backends: HashSet<_> = frontends
        .iter()
        .flat_map(|(_, f)| f.backends.iter().map(|b| (b.address, b.port)))
        .collect();
    let share = |need: usize, room: usize| need as f64 / room.max(1) as f64;
    share(frontends.len(), capacity.services)
        .max(share(slots, capacity.slots))
        .max(share(backends.len(), capacity.backends))
}

/// The map (and its size) that has no room for frontends with `backends` (each frontend's),
/// if any.
fn first_full<'a>(
    out: &MapState,
    backends: impl Iterator<Item = &'a [(u32, Backend)]>,
    capacity: Capacity,
) -> Option<(&'static str, usize)> {
    let (mut frontends, mut slots) = (0, 0);
    let mut new_ids = HashSet::new();
    for of_frontend in backends {
        frontends += 1;
        slots += of_frontend.len();
        new_ids.extend(
            of_frontend
                .iter()
                .map(|(id, _)| *id)
                .filter(|id| !out.backends.contains_key(id)),
        );
    }
    let new_backends = new_ids.len();
    if out.services.len() + frontends > capacity.services {
        Some(("services", capacity.services))
    } else if out.slots.len() + slots > capacity.slots {
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
    diags.push(
        Diagnostic::new(
            format!("Service {}", frontend.service),
            format!(
                "frontend {key} refuses every source: its loadBalancerSourceRanges do not fit the \
             source-ranges map ({} entries)",
                capacity.source_ranges
            ),
        )
        .of(Kind::MapFull),
    );
    Vec::new()
}

/// Copies a programmed frontend, with its slots and backends, into `out`. `false` when its
/// slots are incomplete in the kernel (it cannot be kept as it is), or do not fit any more.
fn keep_current(
    out: &mut MapState,
    current: &MapState,
    key: ServiceKey,
    value: ServiceValue,
    capacity: Capacity,
) -> bool {
    let kept = FrontendEntries::of_state(current, key, value);
    if kept.backends.len() != value.count as usize
        || first_full(out, std::iter::once(kept.backends.as_slice()), capacity).is_some()
    {
        return false;
    }
    kept.insert_into(out);
    true
}
