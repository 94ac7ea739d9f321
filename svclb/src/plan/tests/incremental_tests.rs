//! The incremental planner against the from-scratch plan: after any sequence of changes to
//! Services, EndpointSlices and the Node, it holds the same plan and the same diagnostics,
//! and it names exactly the frontends that changed.

use std::{collections::BTreeSet, sync::Arc};

use proptest::prelude::*;

use super::Planner;
use crate::{
    plan::Snapshot,
    plan::plan_for_node,
    plan::{AddressRule, FrontendKey},
    source::manifests::{Object, parse_documents},
};

/// One object, in the variants a step may pick; `None` in a step means it is absent.
struct Universe {
    objects: Vec<Vec<Object>>,
}

fn parse(yaml: &str) -> Object {
    let (mut objects, diags) = parse_documents(yaml, "t.yaml").expect("valid YAML");
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(objects.len(), 1, "{yaml}");
    objects.remove(0)
}

fn service(name: &str, spec: &str, status: &str) -> Object {
    parse(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: x}}\nspec: {spec}\n{status}"
    ))
}

fn slice(name: &str, service: &str, endpoints: &str) -> Object {
    parse(&format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: x, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}, {{name: dns, port: 5353, protocol: UDP}}, {{name: '', port: 8081}}]\nendpoints: {endpoints}\n"
    ))
}

fn node(labels: &str, addresses: &str) -> Object {
    parse(&format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: n1, labels: {{{labels}}}}}\nstatus: {{addresses: [{addresses}]}}\n"
    ))
}

const LB: &str = "status: {loadBalancer: {ingress: [{ip: 172.31.0.200}]}}\n";

fn universe() -> Universe {
    let objects = vec![
        vec![
            service(
                "a",
                "{clusterIP: 10.96.0.1, ports: [{name: http, port: 80}]}",
                "",
            ),
            service(
                "a",
                "{clusterIP: 10.96.0.1, ports: [{name: http, port: 80}, {name: dns, port: 53, protocol: UDP}]}",
                "",
            ),
            service(
                "a",
                "{type: NodePort, clusterIP: 10.96.0.1, externalTrafficPolicy: Local, ports: [{name: http, port: 80, nodePort: 30080}]}",
                "",
            ),
            service(
                "a",
                "{type: LoadBalancer, clusterIP: 10.96.0.2, externalTrafficPolicy: Local, healthCheckNodePort: 31000, externalIPs: [172.31.0.200], loadBalancerSourceRanges: [172.31.0.0/24], ports: [{name: http, port: 80, nodePort: 30081}]}",
                LB,
            ),
        ],
        vec![
            service(
                "b",
                "{clusterIP: 10.96.0.1, ports: [{name: http, port: 80}]}",
                "",
            ),
            service(
                "b",
                "{clusterIP: 10.96.0.3, sessionAffinity: ClientIP, ports: [{port: 80}]}",
                "",
            ),
            service(
                "b",
                "{type: LoadBalancer, clusterIP: 10.96.0.4, ports: [{name: http, port: 80, nodePort: 30082}]}",
                LB,
            ),
            service(
                "b",
                "{clusterIP: 'bad', ports: [{name: http, port: 80}]}",
                "",
            ),
            // Older than a: its claim on a's cluster IP wins.
            parse(
                "apiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: x, creationTimestamp: '2020-01-01T00:00:00Z'}\nspec: {clusterIP: 10.96.0.1, ports: [{name: http, port: 80}]}\n",
            ),
        ],
        vec![
            service("c", "{clusterIP: None, ports: [{port: 80}]}", ""),
            service(
                "c",
                "{clusterIP: 10.96.0.5, internalTrafficPolicy: Local, ports: [{name: http, port: 80}]}",
                "",
            ),
            // An externalIP on a's and b's cluster IP, and on their load-balancer IP.
            service(
                "c",
                "{clusterIP: 10.96.0.5, externalIPs: [10.96.0.1, 172.31.0.200], ports: [{name: http, port: 80}]}",
                "",
            ),
        ],
        vec![
            slice("a-1", "a", "[{addresses: [10.244.1.2], nodeName: n1}]"),
            slice(
                "a-1",
                "a",
                "[{addresses: [10.244.1.2], nodeName: n1, conditions: {ready: false, serving: true, terminating: true}}, {addresses: [10.244.2.2], nodeName: n2}]",
            ),
            slice(
                "a-1",
                "a",
                "[{addresses: [10.244.2.3], nodeName: n2, zone: zone-a, hints: {forZones: [{name: zone-a}]}}]",
            ),
        ],
        vec![
            slice("a-2", "a", "[{addresses: [10.244.2.2], nodeName: n2}]"),
            slice("a-2", "b", "[{addresses: [10.244.1.4], nodeName: n1}]"),
        ],
        vec![
            slice("b-1", "b", "[{addresses: [10.244.1.5], nodeName: n1}]"),
            slice("b-1", "b", "[]"),
        ],
        vec![slice(
            "c-1",
            "c",
            "[{addresses: [10.244.2.6], nodeName: n2}]",
        )],
        vec![
            node(
                "topology.kubernetes.io/zone: zone-a",
                "{type: InternalIP, address: 172.31.0.11}",
            ),
            node(
                "topology.kubernetes.io/zone: zone-b",
                "{type: InternalIP, address: 172.31.0.12}",
            ),
        ],
    ];
    Universe { objects }
}

/// Each step: per object, absent or one variant; and whether an unchanged object is handed
/// out again in a fresh allocation (which the planner must take as unchanged content, or as
/// a change it plans to the same result).
fn steps() -> impl Strategy<Value = Vec<Vec<(Option<usize>, bool)>>> {
    let u = universe();
    let per_object: Vec<_> = u
        .objects
        .iter()
        .map(|variants| {
            (
                prop::option::of(0..variants.len()),
                prop::bool::weighted(0.2),
            )
        })
        .collect();
    prop::collection::vec(per_object, 1..12)
}

fn fresh(object: &Object) -> Object {
    match object {
        Object::Service(s) => Object::Service(Arc::new((**s).clone())),
        Object::EndpointSlice(s) => Object::EndpointSlice(Arc::new((**s).clone())),
        Object::Node(n) => Object::Node(Arc::new((**n).clone())),
    }
}

proptest! {
    #[test]
    fn incremental_plan_equals_the_plan_from_scratch(steps in steps(), rotate in 0usize..8) {
        let u = universe();
        let mut planner = Planner::new("n1", AddressRule::default());
        // What each object was at the last step: (variant, the allocation handed out).
        let mut current: Vec<Option<(usize, Object)>> = vec![None; u.objects.len()];
        let mut before = planner.plan().clone();
        for step in steps {
            let mut snapshot = Snapshot::default();
            for (i, (pick, realloc)) in step.into_iter().enumerate() {
                current[i] = pick.map(|v| match &current[i] {
                    Some((was, object)) if *was == v && !realloc => (v, object.clone()),
                    _ => (v, fresh(&u.objects[i][v])),
                });
            }
            // Sources list objects in any order.
            let mut listed: Vec<&Object> = current.iter().flatten().map(|(_, o)| o).collect();
            let len = listed.len().max(1);
            listed.rotate_left(rotate % len);
            for object in listed {
                match object {
                    Object::Service(s) => snapshot.services.push(s.clone()),
                    Object::EndpointSlice(s) => snapshot.slices.push(s.clone()),
                    Object::Node(n) => snapshot.nodes.push(n.clone()),
                }
            }

            let changed = planner.update(&snapshot);
            let (node, reference, reference_diags) = plan_for_node(
                "n1", &AddressRule::default(), &snapshot.nodes, &snapshot.services, &snapshot.slices,
            );
            prop_assert_eq!(planner.node(), &node);
            prop_assert_eq!(planner.plan(), &reference);
            let diags: BTreeSet<_> = planner.diagnostics().cloned().collect();
            let reference_diags: BTreeSet<_> = reference_diags.into_iter().collect();
            prop_assert_eq!(diags, reference_diags);
            let differ: BTreeSet<FrontendKey> = before
                .frontends
                .keys()
                .chain(reference.frontends.keys())
                .filter(|k| before.frontends.get(k) != reference.frontends.get(k))
                .copied()
                .collect();
            prop_assert_eq!(changed, differ);
            before = reference;
        }
    }
}

#[test]
fn an_unchanged_snapshot_changes_nothing() {
    let u = universe();
    let mut snapshot = Snapshot::default();
    for variants in &u.objects {
        match &variants[0] {
            Object::Service(s) => snapshot.services.push(s.clone()),
            Object::EndpointSlice(s) => snapshot.slices.push(s.clone()),
            Object::Node(n) => snapshot.nodes.push(n.clone()),
        }
    }
    let mut planner = Planner::new("n1", AddressRule::default());
    assert!(!planner.update(&snapshot).is_empty());
    assert!(planner.update(&snapshot).is_empty());
    assert!(!planner.plan().frontends.is_empty());
}

#[test]
fn new_uplink_addresses_replan_the_node_ports_they_serve() {
    let mut snapshot = Snapshot::default();
    let Object::Service(svc) = service(
        "np",
        "{type: NodePort, clusterIP: 10.96.0.9, ports: [{name: http, port: 80, nodePort: 30009}]}",
        "",
    ) else {
        unreachable!("a Service");
    };
    snapshot.services.push(svc);
    let mut planner = Planner::new("n1", AddressRule::default());
    planner.update(&snapshot);
    let nodeport =
        |addr: &str| FrontendKey::new(addr.parse().unwrap(), 30009, crate::plan::Protocol::Tcp);
    assert!(
        !planner
            .plan()
            .frontends
            .contains_key(&nodeport("172.31.0.11"))
    );

    // No Node object: the uplinks' addresses serve, taken in at the next update even though
    // no object changed, exactly as a plan from scratch has them.
    let uplinks: Vec<std::net::IpAddr> = vec!["172.31.0.11".parse().unwrap()];
    assert!(planner.set_uplink_addresses(uplinks.clone()));
    assert!(
        !planner.set_uplink_addresses(uplinks.clone()),
        "no change, nothing to do"
    );
    let changed = planner.update(&snapshot);
    assert!(changed.contains(&nodeport("172.31.0.11")), "{changed:?}");
    let rule = AddressRule {
        uplinks,
        ..AddressRule::default()
    };
    let (node, reference, _) = plan_for_node(
        "n1",
        &rule,
        &snapshot.nodes,
        &snapshot.services,
        &snapshot.slices,
    );
    assert_eq!(planner.node(), &node);
    assert_eq!(planner.plan(), &reference);
    assert!(planner.update(&snapshot).is_empty(), "then nothing more");

    // The address goes: so do its NodePorts.
    assert!(planner.set_uplink_addresses(Vec::new()));
    let changed = planner.update(&snapshot);
    assert!(changed.contains(&nodeport("172.31.0.11")));
    assert!(
        !planner
            .plan()
            .frontends
            .contains_key(&nodeport("172.31.0.11"))
    );
}
