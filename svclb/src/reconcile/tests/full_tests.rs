//! The full sync against the in-memory kernel of [`crate::reconcile::test_kernel`], which
//! checks at every single write that the datapath could never see a frontend pointing at a
//! slot or backend that is not there.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use proptest::prelude::*;
use svclb_common::{SlotKey, service::SVC_F_MAGLEV};

use super::sync;
use crate::{
    entries::{Capacity, MapState, desired, service_key},
    plan::{FrontendKey, FrontendKind, Plan, Protocol, Scope},
    reconcile::test_kernel::{CAPACITY, FakeKernel, apply, arb_plan, departed, plan},
};

#[test]
fn cold_sync_then_nothing_to_do() {
    let (mut kernel, mut programmed) = (FakeKernel::default(), MapState::default());
    let p = plan(&[(1, &[1, 2, 3]), (2, &[3, 4])]);
    // 4 backends, 5 slots, 2 services.
    assert_eq!(apply(&mut kernel, &mut programmed, &p), 11);
    assert_eq!(apply(&mut kernel, &mut programmed, &p), 0);
    assert_eq!(
        kernel.maps.backends.len(),
        4,
        "a backend shared by two frontends is stored once"
    );
}

#[test]
fn one_endpoint_change_costs_a_few_writes() {
    let (mut kernel, mut programmed) = (FakeKernel::default(), MapState::default());
    let mut frontends: Vec<(u8, Vec<u8>)> = (1..=100u8).map(|v| (v, vec![v, v + 100])).collect();
    let as_plan = |f: &[(u8, Vec<u8>)]| {
        plan(
            &f.iter()
                .map(|(v, b)| (*v, b.as_slice()))
                .collect::<Vec<_>>(),
        )
    };
    apply(&mut kernel, &mut programmed, &as_plan(&frontends));
    let ids: BTreeMap<_, _> = programmed
        .services
        .iter()
        .map(|(k, v)| (*k, v.id))
        .collect();

    frontends[49].1[1] = 250;
    // New backend, one slot, then the old backend's removal.
    assert_eq!(apply(&mut kernel, &mut programmed, &as_plan(&frontends)), 3);
    let after: BTreeMap<_, _> = programmed
        .services
        .iter()
        .map(|(k, v)| (*k, v.id))
        .collect();
    assert_eq!(ids, after, "frontend ids are stable");
}

#[test]
fn departed_pairs_name_each_frontend_and_the_backends_it_lost() {
    let (mut kernel, mut programmed) = (FakeKernel::default(), MapState::default());
    apply(
        &mut kernel,
        &mut programmed,
        &plan(&[(1, &[1, 2, 3]), (2, &[1, 4]), (3, &[5])]),
    );
    let id_of = |state: &MapState, vip: u8| {
        state.services[&service_key(&FrontendKey::new(
            IpAddr::V4(Ipv4Addr::new(10, 96, 0, vip)),
            80,
            Protocol::Tcp,
        ))]
            .id
    };
    let backend_id = |state: &MapState, octet: u8| {
        *state
            .backends
            .iter()
            .find(|(_, b)| b.addr[..4] == [10, 244, 0, octet])
            .expect("backend programmed")
            .0
    };
    let (f1, f3) = (id_of(&programmed, 1), id_of(&programmed, 3));
    let (b1, b2, b5) = (
        backend_id(&programmed, 1),
        backend_id(&programmed, 2),
        backend_id(&programmed, 5),
    );
    // Backend 1 leaves frontend 1 but stays in frontend 2; 2 goes; 3 is joined by 6;
    // frontend 3 goes away.
    let next = plan(&[(1, &[3, 6]), (2, &[1, 4])]);
    let (want, _) = desired(&next, &programmed, CAPACITY);
    let expected = BTreeSet::from([(f1, b1), (f1, b2), (f3, b5)]);
    assert_eq!(departed(&programmed, &want), expected);
    let report = sync(&mut programmed, &want, &mut kernel);
    assert_eq!(
        report.departed, expected,
        "the sync reports what the oracle says"
    );
    let (want, _) = desired(&next, &programmed, CAPACITY);
    assert!(
        departed(&programmed, &want).is_empty(),
        "nothing departs twice"
    );
    let report = sync(&mut programmed, &want, &mut kernel);
    assert!(report.departed.is_empty(), "nothing departs twice");
}

#[test]
fn shrinking_and_removing_frontends() {
    let (mut kernel, mut programmed) = (FakeKernel::default(), MapState::default());
    apply(
        &mut kernel,
        &mut programmed,
        &plan(&[(1, &[1, 2, 3]), (2, &[4])]),
    );
    apply(&mut kernel, &mut programmed, &plan(&[(1, &[1])]));
    assert_eq!(kernel.maps.slots.len(), 1);
    assert_eq!(kernel.maps.backends.len(), 1);
    apply(&mut kernel, &mut programmed, &plan(&[(1, &[])]));
    let value = kernel.maps.services.values().next().unwrap();
    assert_eq!(
        (value.count, value.flags),
        (0, svclb_common::service::SVC_F_REJECT)
    );
    apply(&mut kernel, &mut programmed, &plan(&[]));
    assert_eq!(kernel.maps, MapState::default());
}

#[test]
fn ids_freed_in_a_sync_are_not_reused_in_it() {
    let (mut kernel, mut programmed) = (FakeKernel::default(), MapState::default());
    apply(&mut kernel, &mut programmed, &plan(&[(1, &[1])]));
    let old = programmed.clone();
    apply(&mut kernel, &mut programmed, &plan(&[(2, &[2])]));
    let old_svc: BTreeSet<u32> = old.services.values().map(|v| v.id).collect();
    let new_svc: BTreeSet<u32> = programmed.services.values().map(|v| v.id).collect();
    assert!(old_svc.is_disjoint(&new_svc));
    assert!(
        old.backends
            .keys()
            .all(|id| !programmed.backends.contains_key(id))
    );
}

#[test]
fn a_failed_backend_write_keeps_the_old_frontend_and_serves_the_rest() {
    let (mut kernel, mut programmed) = (FakeKernel::default(), MapState::default());
    apply(&mut kernel, &mut programmed, &plan(&[(1, &[1]), (2, &[2])]));
    // New backend ids go out in the fair order (the least demanding Service first): 3 to
    // svc3's backend, 4 to svc1's new one. Make svc1's fail.
    kernel.fail_backends.insert(4);
    let (want, _) = desired(
        &plan(&[(1, &[1, 9]), (2, &[2]), (3, &[4])]),
        &programmed,
        CAPACITY,
    );
    let report = sync(&mut programmed, &want, &mut kernel);
    assert_eq!(report.errors.len(), 2, "{:?}", report.errors);
    assert!(
        report.errors[0].starts_with("backend 4: map full"),
        "{:?}",
        report.errors
    );
    assert!(
        report.errors[1].contains("frontend 10.96.0.1:80/TCP: not updated"),
        "{:?}",
        report.errors
    );
    assert_eq!(
        kernel.maps, programmed,
        "what failed is not recorded as programmed"
    );
    assert_eq!(
        kernel.maps.services.len(),
        3,
        "the other frontends are served"
    );
    let first = programmed.services.values().next().unwrap();
    assert_eq!(first.count, 1, "the frontend keeps its last good backends");

    // Once the map has room again, the next sync completes the change.
    kernel.fail_backends.clear();
    let report = sync(&mut programmed, &want, &mut kernel);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(programmed, want);
}

#[test]
fn a_failed_slot_write_leaves_a_working_frontend_and_truthful_state() {
    let (mut kernel, mut programmed) = (FakeKernel::default(), MapState::default());
    apply(&mut kernel, &mut programmed, &plan(&[(1, &[1, 2])]));
    let id = programmed.services.values().next().unwrap().id;
    // Backends change to [3, 4, 5]: slots 0 and 1 are rewritten in place, slot 2 fails.
    kernel.fail_slots.insert(SlotKey {
        svc_id: id,
        slot: 2,
    });
    let (want, _) = desired(&plan(&[(1, &[3, 4, 5])]), &programmed, CAPACITY);
    let report = sync(&mut programmed, &want, &mut kernel);
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    assert_eq!(
        kernel.maps, programmed,
        "the mirror holds the slots that were written"
    );
    assert_eq!(
        programmed.services.values().next().unwrap().count,
        2,
        "old count kept"
    );

    // Going back to the old backends now must rewrite the slots, not trust a stale record,
    // and must not delete backends the kernel's slots still use.
    kernel.fail_slots.clear();
    apply(&mut kernel, &mut programmed, &plan(&[(1, &[1, 2])]));
    assert_eq!(kernel.maps.backends.len(), 2);
}

#[test]
fn a_full_map_keeps_a_programmed_frontend_as_it_is() {
    let (mut kernel, mut programmed) = (FakeKernel::default(), MapState::default());
    apply(
        &mut kernel,
        &mut programmed,
        &plan(&[(1, &[1, 2]), (2, &[3])]),
    );
    let before = programmed.clone();
    let tight = Capacity {
        services: 10,
        slots: 4,
        backends: 10,
        ..CAPACITY
    };
    // Frontend 1 grows past the slots map; frontend 2 fits.
    let (want, diags) = desired(
        &plan(&[(1, &[1, 2, 4, 5, 6]), (2, &[3])]),
        &programmed,
        tight,
    );
    let shown: Vec<String> = diags.iter().map(|(_, d)| d.to_string()).collect();
    assert_eq!(
        shown,
        [
            "Service default/svc1: frontend 10.96.0.1:80/TCP not updated, keeps its programmed backends: the slots map is full (4 entries)"
        ]
    );
    let report = sync(&mut programmed, &want, &mut kernel);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(programmed, before, "nothing working was removed");
}

#[test]
fn stale_and_broken_entries_of_an_earlier_run_are_repaired() {
    let (mut kernel, mut programmed) = (FakeKernel::default(), MapState::default());
    apply(
        &mut kernel,
        &mut programmed,
        &plan(&[(1, &[1, 2, 3]), (2, &[4])]),
    );
    // What a crash could leave: a slot of a frontend that no longer exists, a hole.
    let id = programmed.services.values().next().unwrap().id;
    kernel.maps.slots.insert(
        SlotKey {
            svc_id: 999,
            slot: 0,
        },
        1,
    );
    kernel.maps.slots.remove(&SlotKey {
        svc_id: id,
        slot: 1,
    });
    // A new agent reads the kernel as it is and syncs the same plan.
    let mut adopted = kernel.maps.clone();
    let (want, _) = desired(&plan(&[(1, &[1, 2, 3]), (2, &[4])]), &adopted, CAPACITY);
    kernel.maps.services.clear(); // the fake checks reachability; start from no frontends
    adopted.services.clear();
    let report = sync(&mut adopted, &want, &mut kernel);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(adopted, want);
    assert!(
        !kernel.maps.slots.keys().any(|k| k.svc_id == 999),
        "orphan slot deleted"
    );
}

#[test]
fn full_maps_are_reported_by_service() {
    let tiny = Capacity {
        services: 2,
        slots: 10,
        backends: 2,
        ..CAPACITY
    };
    // Capacity counts entries: svc3 shares svc1's backend, so it fits; svc4 is one too many.
    let p = plan(&[(1, &[1]), (2, &[2, 3]), (3, &[1]), (4, &[1])]);
    let (want, diags) = desired(&p, &MapState::default(), tiny);
    let shown: Vec<String> = diags.iter().map(|(_, d)| d.to_string()).collect();
    // The least demanding first: svc2 wants both backends, so it comes last.
    assert_eq!(
        shown,
        [
            "Service default/svc4: frontend 10.96.0.4:80/TCP skipped: the services map is full (2 entries)",
            "Service default/svc2: frontend 10.96.0.2:80/TCP skipped: the services map is full (2 entries)",
        ]
    );
    assert_eq!(want.services.len(), 2);
}

/// Under pressure each Service gets its share: the one that wants most of a map is refused,
/// whatever its name, and every Service that wants no more than its share is served.
#[test]
fn the_most_demanding_service_is_refused_whatever_its_name() {
    let tight = Capacity {
        services: 10,
        slots: 8,
        backends: 10,
        ..CAPACITY
    };
    // svc1 (first by name) wants 6 of the 8 slots; svc2..svc4 want one each.
    let p = plan(&[(1, &[1, 2, 3, 4, 5, 6]), (2, &[7]), (3, &[8]), (4, &[9])]);
    let (want, diags) = desired(&p, &MapState::default(), tight);
    let shown: Vec<String> = diags.iter().map(|(_, d)| d.to_string()).collect();
    assert_eq!(
        shown,
        [
            "Service default/svc1: frontend 10.96.0.1:80/TCP skipped: the slots map is full (8 entries)"
        ]
    );
    assert_eq!(want.services.len(), 3);
    // A programmed hog is refused too, and loses its entries only when they do not fit.
    let (mut kernel, mut programmed) = (FakeKernel::default(), MapState::default());
    apply(
        &mut kernel,
        &mut programmed,
        &plan(&[(1, &[1, 2, 3, 4, 5, 6])]),
    );
    let (want, diags) = desired(&p, &programmed, tight);
    assert_eq!(want.services.len(), 3, "{diags:?}");
    assert!(diags[0].1.reason.contains("skipped"), "{diags:?}");
}

proptest! {
    /// Any sequence of plans: every intermediate kernel state is reachable-complete (checked
    /// inside the fake), and after each sync the kernel holds exactly the plan.
    #[test]
    fn any_sequence_of_plans_converges(plans in prop::collection::vec(arb_plan(), 1..8)) {
        let (mut kernel, mut programmed) = (FakeKernel::default(), MapState::default());
        for p in &plans {
            let p = plan(&p.iter().map(|(v, b)| (*v, b.as_slice())).collect::<Vec<_>>());
            apply(&mut kernel, &mut programmed, &p);
            prop_assert_eq!(apply(&mut kernel, &mut programmed, &p), 0);
        }
    }
}

/// `plan(frontends)` with every frontend a NodePort restricted to 172.31.0.0/24.
fn external_plan(frontends: &[(u8, &[u8])]) -> Plan {
    let mut p = plan(frontends);
    for frontend in p.frontends.values_mut() {
        frontend.kind = FrontendKind::NodePort;
        frontend.scope = Scope::External;
        frontend.source_ranges = vec!["172.31.0.0/24".parse().expect("a CIDR")];
    }
    p
}

#[test]
fn external_frontends_get_maglev_tables_and_source_ranges_before_their_entry() {
    use svclb_common::service::{SVC_F_EXTERNAL, SVC_F_SOURCE_RANGES};
    let mut kernel = FakeKernel::default();
    let mut programmed = MapState::default();
    // The fake kernel checks at every write that a Maglev frontend's table is in place.
    apply(
        &mut kernel,
        &mut programmed,
        &external_plan(&[(1, &[1, 2])]),
    );
    let (_, value) = programmed.services.iter().next().expect("one frontend");
    assert_eq!(
        value.flags,
        SVC_F_EXTERNAL | SVC_F_MAGLEV | SVC_F_SOURCE_RANGES
    );
    assert_eq!(value.maglev_size, CAPACITY.maglev_size);
    let table = &programmed.tables[&value.id];
    assert_eq!(table.backends.len(), 2);
    assert_eq!(
        programmed
            .source_ranges
            .iter()
            .map(|(id, _)| *id)
            .collect::<Vec<_>>(),
        [value.id]
    );

    // A new backend: the table is rebuilt and swapped (one write), the ranges stay.
    apply(
        &mut kernel,
        &mut programmed,
        &external_plan(&[(1, &[1, 2, 3])]),
    );
    let value = *programmed.services.values().next().expect("one frontend");
    assert_eq!(programmed.tables[&value.id].backends.len(), 3);

    // Back to a cluster IP: no table, no ranges; then gone altogether.
    apply(&mut kernel, &mut programmed, &plan(&[(1, &[1, 2, 3])]));
    assert!(programmed.tables.is_empty() && programmed.source_ranges.is_empty());
    apply(&mut kernel, &mut programmed, &plan(&[]));
    assert_eq!(programmed, MapState::default());
}

#[test]
fn a_full_maglev_map_leaves_frontends_on_random_picks() {
    let mut programmed = MapState::default();
    let small = Capacity {
        maglev_tables: 1,
        ..CAPACITY
    };
    let (want, diags) = desired(&external_plan(&[(1, &[1]), (2, &[2])]), &programmed, small);
    assert_eq!(want.tables.len(), 1);
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert!(
        diags[0].1.to_string().contains("Maglev map is full"),
        "{}",
        diags[0].1
    );
    let mut kernel = FakeKernel::default();
    let report = sync(&mut programmed, &want, &mut kernel);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(programmed.services.len(), 2, "both frontends are served");
}
