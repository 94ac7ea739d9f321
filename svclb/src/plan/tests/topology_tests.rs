//! Topology as kube-proxy applies it (`topologyModeFromHints`), one table row per rule: node
//! hints before zone hints, one unhinted ready endpoint disabling its level, only the
//! Cluster-policy set filtered, the terminating fallback unfiltered; and what `svclb plan`
//! says of each level.

use super::semantics_tests::{ALL, SLICE, backend_ips, key, plan_on, service, view};
use crate::plan::{NodeInfo, Plan, Topology};

/// One endpoint's hints: the node it is hinted for and the zone ("" for none), and whether
/// it is ready (an unready one is serving and terminating).
type Hints = (&'static str, &'static str, bool);

/// The test Service (`spec` lines) over the three endpoints of `SLICE`, hinted as `hints`.
fn hinted(spec: &str, hints: [Hints; 3]) -> String {
    let mut slice = SLICE.to_owned();
    for (ip, (node, zone, ready)) in ALL.iter().zip(hints) {
        let mut extra = String::new();
        let mut hint = Vec::new();
        if !node.is_empty() {
            hint.push(format!("forNodes: [{{name: {node}}}]"));
        }
        if !zone.is_empty() {
            hint.push(format!("forZones: [{{name: {zone}}}]"));
        }
        if !hint.is_empty() {
            extra.push_str(&format!(", hints: {{{}}}", hint.join(", ")));
        }
        if !ready {
            extra.push_str(", conditions: {ready: false, serving: true, terminating: true}");
        }
        slice = slice.replace(
            &format!("{{addresses: [{ip}]"),
            &format!("{{addresses: [{ip}]{extra}"),
        );
    }
    service(spec, "{}").replace(SLICE, &slice)
}

fn topology_of(plan: &Plan, at: &crate::plan::FrontendKey) -> String {
    plan.frontends[at].topology.to_string()
}

const R: bool = true;

/// A rule, the endpoints' hints, the node planned for, the backends served, and what
/// `svclb plan` says.
type Case = (
    &'static str,
    [Hints; 3],
    &'static str,
    Vec<&'static str>,
    &'static str,
);

#[test]
fn cluster_ip_topology_by_rule() {
    let cases: [Case; 10] = [
        (
            "every ready endpoint has a node hint, one names this node: serve it",
            [("n1", "", R), ("n2", "", R), ("n2", "", R)],
            "n1",
            vec!["10.244.1.2"],
            "node hints: 1 of 3 endpoints for this node",
        ),
        (
            "several hinted for this node",
            [("n2", "", R), ("n1", "", R), ("n1", "", R)],
            "n1",
            vec!["10.244.2.2", "10.244.2.3"],
            "node hints: 2 of 3 endpoints for this node",
        ),
        (
            "node hints for other nodes only, no zone hints: no filtering",
            [("n2", "", R), ("n2", "", R), ("n2", "", R)],
            "n1",
            ALL.to_vec(),
            "node hints ignored: none for this node",
        ),
        (
            "one endpoint without a node hint disables node hints; zone hints apply",
            [("n2", "zone-a", R), ("", "zone-a", R), ("n1", "zone-b", R)],
            "n1",
            vec!["10.244.1.2", "10.244.2.2"],
            "zone hints: 2 of 3 endpoints for zone zone-a",
        ),
        (
            "node hints for other nodes, zone hints for this zone: the zone level",
            [
                ("n2", "zone-a", R),
                ("n2", "zone-b", R),
                ("n2", "zone-b", R),
            ],
            "n1",
            vec!["10.244.1.2"],
            "zone hints: 1 of 3 endpoints for zone zone-a",
        ),
        (
            "node hints win over zone hints",
            [
                ("n2", "zone-a", R),
                ("n1", "zone-b", R),
                ("n2", "zone-b", R),
            ],
            "n1",
            vec!["10.244.2.2"],
            "node hints: 1 of 3 endpoints for this node",
        ),
        (
            "one endpoint without a zone hint: no filtering, and said why",
            [("", "zone-a", R), ("", "", R), ("", "zone-b", R)],
            "n1",
            ALL.to_vec(),
            "zone hints ignored: 1 endpoint unhinted",
        ),
        (
            "both levels ignored, each reason given",
            [("n2", "zone-b", R), ("", "zone-b", R), ("n2", "", R)],
            "n1",
            ALL.to_vec(),
            "node hints ignored: 1 endpoint unhinted; zone hints ignored: 1 endpoint unhinted",
        ),
        (
            "unready endpoints do not count: the ready ones are all node-hinted",
            [("n1", "", R), ("n2", "", R), ("", "", false)],
            "n1",
            vec!["10.244.1.2"],
            "node hints: 1 of 2 endpoints for this node",
        ),
        (
            "no hints at all: nothing to say",
            [("", "", R), ("", "", R), ("", "", R)],
            "n1",
            ALL.to_vec(),
            "",
        ),
    ];
    for (rule, hints, node, want, says) in cases {
        let (plan, _) = plan_on(node, &[], &hinted("", hints));
        let at = key("10.96.0.10", 80);
        assert_eq!(backend_ips(&plan, &at), want, "{rule}");
        assert_eq!(topology_of(&plan, &at), says, "{rule}");
    }
}

#[test]
fn the_terminating_fallback_ignores_topology() {
    let hints = [
        ("n2", "zone-b", false),
        ("n2", "zone-b", false),
        ("n2", "", false),
    ];
    let (plan, _) = plan_on("n1", &[], &hinted("", hints));
    let at = key("10.96.0.10", 80);
    assert_eq!(backend_ips(&plan, &at), ALL.to_vec());
    assert_eq!(plan.frontends[&at].topology, Topology::Terminating);
}

#[test]
fn a_local_policy_is_never_topology_filtered() {
    // Hinted away from n1, yet n1's Local-policy frontends serve its own endpoint; the
    // internal view of the external frontends (a Cluster set) follows the hints.
    let hints = [("n2", "", R), ("n2", "", R), ("n2", "", R)];
    let spec = "  type: NodePort\n  externalTrafficPolicy: Local\n  internalTrafficPolicy: Local";
    let (plan, _) = plan_on("n1", &[], &hinted(spec, hints));
    assert_eq!(backend_ips(&plan, &key("10.96.0.10", 80)), ["10.244.1.2"]);
    assert_eq!(
        backend_ips(&plan, &key("172.31.0.11", 30080)),
        ["10.244.1.2"]
    );
    assert_eq!(
        plan.frontends[&key("172.31.0.11", 30080)].topology,
        Topology::Local
    );
    let hints = [("n2", "", R), ("n1", "", R), ("n2", "", R)];
    let (plan, _) = plan_on("n1", &[], &hinted(spec, hints));
    let internal_view = view("172.31.0.11", 30080);
    assert_eq!(backend_ips(&plan, &internal_view), ["10.244.2.2"]);
    assert_eq!(
        topology_of(&plan, &internal_view),
        "node hints: 1 of 3 endpoints for this node"
    );
}

#[test]
fn svclb_plan_says_which_level_applied() {
    let hints = [("n1", "", R), ("n2", "", R), ("n2", "", R)];
    let (plan, diags) = plan_on("n1", &[], &hinted("", hints));
    let node = NodeInfo::named("n1");
    let table = crate::cli::plan::render_table(&node, &plan, &diags);
    assert!(
        table.contains("; node hints: 1 of 3 endpoints for this node"),
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&crate::cli::plan::render_json(&node, &plan, None, &diags)).unwrap();
    let topology = &json["frontends"][0]["topology"];
    assert_eq!(topology["level"], "node", "{json}");
    assert_eq!(
        (topology["serving"].as_u64(), topology["ready"].as_u64()),
        (Some(1), Some(3))
    );
}
