//! What the fuzz targets assert about a plan, whichever way its inputs were made.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use svclb::{
    entries::{self, Capacity, MapState},
    plan::{AddressRule, FrontendKind, Plan, Scope, plan_for_node},
};

fn reversed<T: Clone>(items: &[T]) -> Vec<T> {
    items.iter().rev().cloned().collect()
}

/// No two Services share a namespace and name, and no two Nodes are [`NODE`]. Only then is
/// the plan independent of input order: of two copies of one object the model serves the
/// first listed. The manifests source never lists two (`manifest::snapshot_of`); the Kubernetes
/// API cannot.
pub fn unique_names(
    nodes: &[impl std::borrow::Borrow<Node>],
    services: &[impl std::borrow::Borrow<Service>],
) -> bool {
    let names: BTreeSet<(Option<&str>, Option<&str>)> = services
        .iter()
        .map(|s| {
            let meta = &s.borrow().metadata;
            (
                Some(meta.namespace.as_deref().unwrap_or("default")),
                meta.name.as_deref(),
            )
        })
        .collect();
    let this_node = nodes
        .iter()
        .filter(|n| n.borrow().metadata.name.as_deref() == Some(NODE))
        .count();
    names.len() == services.len() && this_node <= 1
}

/// The node the targets plan for.
pub const NODE: &str = "n1";

/// Plans `services` and `slices` for [`NODE`] and checks the plan:
/// - it does not depend on the order of the inputs (when names are [`unique_names`]);
/// - every port is a port (1-65535), and backends are sorted and unique;
/// - every frontend belongs to a Service of the input;
/// - a Local traffic policy never sends off this node;
/// - its map entries fit `capacity`, and translating it again changes nothing.
///
/// Returns the plan and its diagnostics (as `object: reason` strings).
pub fn check_plan(
    nodes: &[impl std::borrow::Borrow<Node> + Clone],
    services: &[impl std::borrow::Borrow<Service> + Clone],
    slices: &[impl std::borrow::Borrow<EndpointSlice> + Clone],
    capacity: Capacity,
) -> (Plan, BTreeSet<String>) {
    let (_, plan, diags) = plan_for_node(NODE, &AddressRule::default(), nodes, services, slices);
    let diags: BTreeSet<String> = diags.iter().map(ToString::to_string).collect();
    for diag in &diags {
        assert!(
            !diag.starts_with(':'),
            "a diagnostic names no object: {diag}"
        );
    }

    if unique_names(nodes, services) {
        let (_, again, again_diags) = plan_for_node(
            NODE,
            &AddressRule::default(),
            &reversed(nodes),
            &reversed(services),
            &reversed(slices),
        );
        let again_diags: BTreeSet<String> = again_diags.iter().map(ToString::to_string).collect();
        assert_eq!(plan, again, "the plan depends on the order of the inputs");
        assert_eq!(
            diags, again_diags,
            "diagnostics depend on the order of the inputs"
        );
    }

    // Traffic policies of the copy served: the first listed.
    let mut policies: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    for svc in services {
        let svc = svc.borrow();
        let spec = svc.spec.as_ref();
        let local = |policy: Option<&String>| policy.is_some_and(|p| p == "Local");
        let name = format!(
            "{}/{}",
            svc.metadata.namespace.as_deref().unwrap_or("default"),
            svc.metadata.name.as_deref().unwrap_or("")
        );
        policies.entry(name).or_insert((
            local(spec.and_then(|s| s.internal_traffic_policy.as_ref())),
            local(spec.and_then(|s| s.external_traffic_policy.as_ref())),
        ));
    }

    for (key, frontend) in &plan.frontends {
        assert_ne!(key.port, 0, "{key}");
        let Some(&(internal_local, external_local)) = policies.get(&frontend.service) else {
            panic!(
                "{key} belongs to {}, not an input Service",
                frontend.service
            );
        };
        assert!(
            frontend.backends.windows(2).all(|w| w[0] < w[1]),
            "{key}: backends not sorted and unique"
        );
        for backend in &frontend.backends {
            assert_ne!(backend.port, 0, "{key}: backend {backend:?}");
            assert_eq!(
                backend.local,
                backend.node.as_deref() == Some(NODE),
                "{key}: backend {backend:?}"
            );
        }
        let local_only = match (frontend.kind, frontend.scope) {
            (FrontendKind::ClusterIP, _) => internal_local,
            (_, Scope::External) => external_local,
            // The internal view of an external frontend serves pods from every endpoint.
            (_, Scope::Internal) => {
                assert!(key.internal_view && external_local, "{key}");
                false
            }
        };
        if local_only {
            assert!(
                frontend.backends.iter().all(|b| b.local),
                "{key}: a Local policy sends off the node: {:?}",
                frontend.backends
            );
        }
        if frontend.kind != FrontendKind::LoadBalancer {
            assert!(frontend.source_ranges.is_empty(), "{key}");
        }
    }

    let (state, _) = entries::desired(&plan, &MapState::default(), capacity);
    assert!(state.services.len() <= capacity.services);
    assert!(state.slots.len() <= capacity.slots);
    assert!(state.backends.len() <= capacity.backends);
    assert!(state.tables.len() <= capacity.maglev_tables);
    assert!(state.source_ranges.len() <= capacity.source_ranges);
    // Every slot of every frontend is there and names a backend that is there.
    for (skey, value) in &state.services {
        for slot in 0..value.count {
            let key = svclb_common::SlotKey {
                svc_id: value.id,
                slot,
            };
            let backend = state
                .slots
                .get(&key)
                .unwrap_or_else(|| panic!("{skey:?}: slot {slot} missing"));
            assert!(
                state.backends.contains_key(backend),
                "{skey:?}: backend {backend} missing"
            );
        }
    }
    let (stable, _) = entries::desired(&plan, &state, capacity);
    assert_eq!(
        stable, state,
        "translating the same plan again changed map entries"
    );
    (plan, diags)
}
