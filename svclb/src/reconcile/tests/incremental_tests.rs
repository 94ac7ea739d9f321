//! The incremental sync against the in-memory kernel of [`crate::reconcile::test_kernel`], which checks at
//! every write that the datapath can reach only complete frontends. After each change the full
//! reconciler must find nothing to do, and the index must equal one built from scratch.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
};

use proptest::prelude::*;

use super::{Index, sync};
use crate::{
    entries::{Capacity, MapState, desired},
    plan::{FrontendKey, FrontendKind, Plan, Protocol, Scope},
    reconcile::{
        full,
        test_kernel::{CAPACITY, FakeKernel, apply, arb_plan, departed, plan},
    },
};

/// How a generated frontend is served: a cluster IP, a NodePort with source ranges, a
/// NodePort with a Local policy (an external entry with the local backend, and an internal
/// view with all of them), or the same external entry without the view (only the view, and
/// the flag saying it exists, differ from the one before).
fn shaped(frontends: &[(u8, Vec<u8>)], shapes: &[u8]) -> Plan {
    let mut p = plan(
        &frontends
            .iter()
            .map(|(v, b)| (*v, b.as_slice()))
            .collect::<Vec<_>>(),
    );
    let keys: Vec<FrontendKey> = p.frontends.keys().copied().collect();
    for (i, key) in keys.into_iter().enumerate() {
        let shape = shapes.get(i).copied().unwrap_or(0) % 4;
        if shape == 0 {
            continue;
        }
        let frontend = p.frontends.get_mut(&key).expect("planned");
        frontend.kind = FrontendKind::NodePort;
        frontend.scope = Scope::External;
        if shape == 1 {
            frontend.source_ranges = vec!["172.31.0.0/24".parse().expect("a CIDR")];
            continue;
        }
        let mut view = frontend.clone();
        view.scope = Scope::Internal;
        frontend.backends.truncate(1);
        if shape == 3 {
            continue;
        }
        p.frontends.insert(
            FrontendKey {
                internal_view: true,
                ..key
            },
            view,
        );
    }
    p
}

fn changed_between(before: &Plan, after: &Plan) -> BTreeSet<FrontendKey> {
    before
        .frontends
        .keys()
        .chain(after.frontends.keys())
        .filter(|k| before.frontends.get(k) != after.frontends.get(k))
        .copied()
        .collect()
}

/// Syncs `after` by its changes from `before`; checks the result against the full path.
fn apply_delta(
    kernel: &mut FakeKernel,
    programmed: &mut MapState,
    index: &mut Index,
    before: &Plan,
    after: &Plan,
) -> usize {
    let writes = kernel.writes;
    let old = programmed.clone();
    let report = sync(
        after,
        &changed_between(before, after),
        programmed,
        index,
        CAPACITY,
        kernel,
    )
    .expect("fits");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.writes, kernel.writes - writes);
    assert_eq!(&kernel.maps, programmed, "programmed mirrors the kernel");
    assert_eq!(report.departed, departed(&old, programmed));

    // The full path agrees: nothing to write, nothing left over.
    let (want, diags) = desired(after, programmed, CAPACITY);
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(
        &want, programmed,
        "the change left the maps as a full sync would"
    );
    let fresh = Index::of(programmed);
    assert_eq!(index.refs, fresh.refs);
    assert_eq!(index.ids.backends, fresh.ids.backends);
    kernel.writes - writes
}

proptest! {
    #[test]
    fn changes_leave_the_maps_as_a_full_sync_would(
        plans in prop::collection::vec((arb_plan(), prop::collection::vec(0u8..4, 12)), 1..10),
    ) {
        let (mut kernel, mut programmed) = (FakeKernel::default(), MapState::default());
        let mut index = Index::default();
        let mut before = Plan::default();
        for (frontends, shapes) in &plans {
            let after = shaped(frontends, shapes);
            apply_delta(&mut kernel, &mut programmed, &mut index, &before, &after);
            prop_assert_eq!(
                apply_delta(&mut kernel, &mut programmed, &mut index, &after, &after),
                0
            );
            before = after;
        }
    }
}

#[test]
fn one_endpoint_change_costs_three_writes_and_keeps_ids() {
    let (mut kernel, mut programmed) = (FakeKernel::default(), MapState::default());
    let mut frontends: Vec<(u8, Vec<u8>)> = (1..=100u8).map(|v| (v, vec![v, v + 100])).collect();
    let before = shaped(&frontends, &[]);
    apply(&mut kernel, &mut programmed, &before);
    let mut index = Index::of(&programmed);
    let ids: Vec<u32> = programmed.services.values().map(|v| v.id).collect();

    frontends[49].1[1] = 250;
    let after = shaped(&frontends, &[]);
    // The new backend, its slot, then the old backend's removal.
    assert_eq!(
        apply_delta(&mut kernel, &mut programmed, &mut index, &before, &after),
        3
    );
    let now: Vec<u32> = programmed.services.values().map(|v| v.id).collect();
    assert_eq!(ids, now);
}

#[test]
fn a_change_that_does_not_fit_writes_nothing() {
    let (mut kernel, mut programmed) = (FakeKernel::default(), MapState::default());
    let before = shaped(&[(1, vec![1, 2])], &[]);
    apply(&mut kernel, &mut programmed, &before);
    let mut index = Index::of(&programmed);
    let after = shaped(&[(1, vec![1, 2]), (2, vec![3])], &[]);
    let small = Capacity {
        services: 1,
        ..CAPACITY
    };
    let writes = kernel.writes;
    let none = sync(
        &after,
        &changed_between(&before, &after),
        &mut programmed,
        &mut index,
        small,
        &mut kernel,
    );
    assert!(none.is_none());
    assert_eq!(kernel.writes, writes);
    assert_eq!(kernel.maps, programmed);

    // Removing one frontend to add another fits: the removal frees its room first.
    let swapped = shaped(&[(2, vec![3])], &[]);
    let report = sync(
        &swapped,
        &changed_between(&before, &swapped),
        &mut programmed,
        &mut index,
        small,
        &mut kernel,
    )
    .expect("fits once the old frontend is gone");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(programmed.services.len(), 1);
    assert_eq!(kernel.maps, programmed);
}

#[test]
fn a_failed_write_keeps_the_frontend_working_and_the_mirror_exact() {
    let (mut kernel, mut programmed) = (FakeKernel::default(), MapState::default());
    let before = shaped(&[(1, vec![1, 2]), (2, vec![3])], &[]);
    apply(&mut kernel, &mut programmed, &before);
    let mut index = Index::of(&programmed);
    let after = shaped(&[(1, vec![1, 9]), (2, vec![3, 4])], &[]);
    // The next backend id the pool hands out: the first new backend's.
    let next = programmed.backends.keys().max().expect("backends") + 1;
    kernel.fail_backends.insert(next);
    let report = sync(
        &after,
        &changed_between(&before, &after),
        &mut programmed,
        &mut index,
        CAPACITY,
        &mut kernel,
    )
    .expect("fits");
    assert!(!report.errors.is_empty());
    assert_eq!(
        kernel.maps, programmed,
        "the mirror says what the kernel holds"
    );
    let vip = |o: u8| FrontendKey::new(IpAddr::V4(Ipv4Addr::new(10, 96, 0, o)), 80, Protocol::Tcp);
    let value = programmed.services[&crate::entries::service_key(&vip(1))];
    assert_eq!(value.count, 2, "the frontend keeps its old, complete entry");

    // The full path repairs what is missing once the map takes writes again.
    kernel.fail_backends.clear();
    let (want, _) = desired(&after, &programmed, CAPACITY);
    let report = full::sync(&mut programmed, &want, &mut kernel);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(programmed, want);
}
