//! One test per Service rule kube-proxy honours: types, traffic policies,
//! zone hints, affinity, source ranges, health checks, NodePort addresses, reject or drop.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};

use super::plan_for_node;
use crate::{
    plan::Diagnostic,
    plan::{AddressRule, FrontendKey, FrontendKind, Plan, Protocol, Scope, WhenEmpty},
    source::manifests::{Object, parse_documents},
};

struct World {
    services: Vec<Service>,
    slices: Vec<EndpointSlice>,
    nodes: Vec<Node>,
}

fn world(yaml: &str) -> World {
    let (objects, diags) = parse_documents(yaml, "test.yaml").expect("valid YAML");
    assert!(diags.is_empty(), "{diags:?}");
    let mut w = World {
        services: Vec::new(),
        slices: Vec::new(),
        nodes: Vec::new(),
    };
    for object in objects {
        match object {
            Object::Service(s) => w.services.push(std::sync::Arc::unwrap_or_clone(s)),
            Object::EndpointSlice(s) => w.slices.push(std::sync::Arc::unwrap_or_clone(s)),
            Object::Node(n) => w.nodes.push(std::sync::Arc::unwrap_or_clone(n)),
        }
    }
    w
}

pub(super) fn plan_on(node: &str, cidrs: &[&str], yaml: &str) -> (Plan, Vec<Diagnostic>) {
    let w = world(yaml);
    let cidrs: Vec<IpNet> = cidrs.iter().map(|c| c.parse().unwrap()).collect();
    let (_, plan, diags) = plan_for_node(
        node,
        &AddressRule::cidrs(&cidrs),
        &w.nodes,
        &w.services,
        &w.slices,
    );
    (plan, diags)
}

const NODES: &str = "
apiVersion: v1
kind: Node
metadata: {name: n1, labels: {topology.kubernetes.io/zone: zone-a}}
status:
  addresses:
  - {type: InternalIP, address: 172.31.0.11}
  - {type: ExternalIP, address: 203.0.113.11}
  - {type: Hostname, address: n1.example}
---
apiVersion: v1
kind: Node
metadata: {name: n2, labels: {topology.kubernetes.io/zone: zone-b}}
status:
  addresses: [{type: InternalIP, address: 172.31.0.12}]
";

/// Endpoints: 10.244.1.2 on n1, 10.244.2.2 and 10.244.2.3 on n2.
pub(super) const SLICE: &str = "
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.2], nodeName: n1}
- {addresses: [10.244.2.2], nodeName: n2}
- {addresses: [10.244.2.3], nodeName: n2}
";

pub(super) fn service(spec: &str, status: &str) -> String {
    format!(
        "{NODES}---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec:
  clusterIP: 10.96.0.10
  ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP, nodePort: 30080}}]
{spec}
status: {status}
{SLICE}"
    )
}

pub(super) fn key(addr: &str, port: u16) -> FrontendKey {
    FrontendKey::new(addr.parse::<IpAddr>().unwrap(), port, Protocol::Tcp)
}

pub(super) fn view(addr: &str, port: u16) -> FrontendKey {
    FrontendKey {
        internal_view: true,
        ..key(addr, port)
    }
}

pub(super) fn backend_ips(plan: &Plan, key: &FrontendKey) -> Vec<String> {
    let frontend = plan
        .frontends
        .get(key)
        .unwrap_or_else(|| panic!("no frontend {key} in {:#?}", plan.frontends.keys()));
    frontend
        .backends
        .iter()
        .map(|b| b.address.to_string())
        .collect()
}

fn kinds(plan: &Plan) -> Vec<(String, FrontendKind, Scope)> {
    plan.frontends
        .iter()
        .map(|(k, f)| (k.to_string(), f.kind, f.scope))
        .collect()
}

pub(super) const ALL: [&str; 3] = ["10.244.1.2", "10.244.2.2", "10.244.2.3"];

/// A rule, the service's spec lines, its status, and the frontends expected.
type Case = (
    &'static str,
    &'static str,
    &'static str,
    Vec<(&'static str, FrontendKind, Scope)>,
);

#[test]
fn service_types_give_their_frontends() {
    use FrontendKind::*;
    let cases: [Case; 6] = [
        (
            "ClusterIP",
            "  type: ClusterIP",
            "{}",
            vec![("10.96.0.10:80/TCP", ClusterIP, Scope::Internal)],
        ),
        (
            "NodePort: every InternalIP and ExternalIP of the node",
            "  type: NodePort",
            "{}",
            vec![
                ("10.96.0.10:80/TCP", ClusterIP, Scope::Internal),
                ("172.31.0.11:30080/TCP", NodePort, Scope::External),
                ("203.0.113.11:30080/TCP", NodePort, Scope::External),
            ],
        ),
        (
            "LoadBalancer: ingress IPs, not hostnames, not ipMode Proxy",
            "  type: LoadBalancer",
            "{loadBalancer: {ingress: [{ip: 198.51.100.7}, {hostname: lb.example}, {ip: 198.51.100.8, ipMode: Proxy}]}}",
            vec![
                ("10.96.0.10:80/TCP", ClusterIP, Scope::Internal),
                ("172.31.0.11:30080/TCP", NodePort, Scope::External),
                ("198.51.100.7:80/TCP", LoadBalancer, Scope::External),
                ("203.0.113.11:30080/TCP", NodePort, Scope::External),
            ],
        ),
        (
            "LoadBalancer without allocated node ports",
            "  type: LoadBalancer\n  allocateLoadBalancerNodePorts: false",
            "{loadBalancer: {ingress: [{ip: 198.51.100.7}]}}",
            vec![
                ("10.96.0.10:80/TCP", ClusterIP, Scope::Internal),
                ("198.51.100.7:80/TCP", LoadBalancer, Scope::External),
            ],
        ),
        (
            "externalIPs",
            "  externalIPs: [192.0.2.5]",
            "{}",
            vec![
                ("10.96.0.10:80/TCP", ClusterIP, Scope::Internal),
                ("192.0.2.5:80/TCP", ExternalIP, Scope::External),
            ],
        ),
        (
            "a nodePort on a ClusterIP service is ignored",
            "  type: ClusterIP",
            "{}",
            vec![("10.96.0.10:80/TCP", ClusterIP, Scope::Internal)],
        ),
    ];
    for (rule, spec, status, want) in cases {
        let mut yaml = service(spec, status);
        if rule.starts_with("LoadBalancer without") {
            yaml = yaml.replace(", nodePort: 30080", "");
        }
        let (plan, diags) = plan_on("n1", &[], &yaml);
        assert!(diags.is_empty(), "{rule}: {diags:?}");
        let want: Vec<(String, FrontendKind, Scope)> = want
            .into_iter()
            .map(|(k, kind, s)| (k.to_owned(), kind, s))
            .collect();
        assert_eq!(kinds(&plan), want, "{rule}");
        for frontend in plan.frontends.values() {
            assert_eq!(
                frontend.backends.len(),
                3,
                "{rule}: Cluster policies use every endpoint"
            );
        }
    }
}

#[test]
fn nodeport_addresses_restrict_the_node_addresses() {
    let (plan, _) = plan_on("n1", &["172.31.0.0/24"], &service("  type: NodePort", "{}"));
    let nodeports: Vec<String> = plan
        .frontends
        .iter()
        .filter(|(_, f)| f.kind == FrontendKind::NodePort)
        .map(|(k, _)| k.to_string())
        .collect();
    assert_eq!(nodeports, ["172.31.0.11:30080/TCP"]);
}

#[test]
fn internal_traffic_policy_local() {
    let (plan, _) = plan_on("n1", &[], &service("  internalTrafficPolicy: Local", "{}"));
    assert_eq!(backend_ips(&plan, &key("10.96.0.10", 80)), ["10.244.1.2"]);
    // A node without local endpoints drops: the service has endpoints elsewhere.
    let (plan, _) = plan_on("n3", &[], &service("  internalTrafficPolicy: Local", "{}"));
    let frontend = &plan.frontends[&key("10.96.0.10", 80)];
    assert!(frontend.backends.is_empty());
    assert_eq!(frontend.when_empty, WhenEmpty::Drop);
}

#[test]
fn external_traffic_policy_local_has_local_backends_and_an_internal_view() {
    let spec = "  type: NodePort\n  externalTrafficPolicy: Local";
    let (plan, _) = plan_on("n2", &[], &service(spec, "{}"));
    assert_eq!(
        backend_ips(&plan, &key("172.31.0.12", 30080)),
        ["10.244.2.2", "10.244.2.3"]
    );
    // Pods reaching the NodePort get the internal (here: Cluster) endpoints.
    assert_eq!(backend_ips(&plan, &view("172.31.0.12", 30080)), ALL);
    assert_eq!(
        plan.frontends[&view("172.31.0.12", 30080)].scope,
        Scope::Internal
    );
    // The ClusterIP is untouched by the external policy.
    assert_eq!(backend_ips(&plan, &key("10.96.0.10", 80)), ALL);

    // Both policies Local: pods reaching the NodePort still get every endpoint (kube-proxy's
    // pod-traffic short-circuit ignores internalTrafficPolicy), the ClusterIP only local ones.
    let both = "  type: NodePort\n  externalTrafficPolicy: Local\n  internalTrafficPolicy: Local";
    let (plan, _) = plan_on("n1", &[], &service(both, "{}"));
    assert_eq!(backend_ips(&plan, &view("172.31.0.11", 30080)), ALL);
    assert_eq!(backend_ips(&plan, &key("10.96.0.10", 80)), ["10.244.1.2"]);

    // Cluster policy: one entry per external frontend, no internal view.
    let (plan, _) = plan_on("n2", &[], &service("  type: NodePort", "{}"));
    assert!(!plan.frontends.contains_key(&view("172.31.0.12", 30080)));
}

#[test]
fn zone_hints() {
    let hinted = |hints: [&str; 3]| {
        let mut slice = SLICE.to_owned();
        for (ip, zone) in ALL.iter().zip(hints) {
            let with = if zone.is_empty() {
                format!("{{addresses: [{ip}]")
            } else {
                format!("{{addresses: [{ip}], hints: {{forZones: [{{name: {zone}}}]}}")
            };
            slice = slice.replace(&format!("{{addresses: [{ip}]"), &with);
        }
        service("", "{}").replace(SLICE, &slice)
    };
    let cases = [
        (
            "every endpoint hinted, one for this zone: filter",
            ["zone-a", "zone-b", "zone-b"],
            "n1",
            vec!["10.244.1.2"],
        ),
        (
            "hints for this zone on several",
            ["zone-b", "zone-b", "zone-a"],
            "n1",
            vec!["10.244.2.3"],
        ),
        (
            "one endpoint without hints: no filtering",
            ["zone-a", "", "zone-b"],
            "n1",
            ALL.to_vec(),
        ),
        (
            "no hint names this zone: no filtering",
            ["zone-b", "zone-b", "zone-b"],
            "n1",
            ALL.to_vec(),
        ),
        (
            "a node without a zone: no filtering",
            ["zone-a", "zone-b", "zone-b"],
            "n3",
            ALL.to_vec(),
        ),
    ];
    for (rule, hints, node, want) in cases {
        let (plan, _) = plan_on(node, &[], &hinted(hints));
        assert_eq!(backend_ips(&plan, &key("10.96.0.10", 80)), want, "{rule}");
    }
}

#[test]
fn session_affinity_timeouts() {
    let cases = [
        ("no affinity", "", 0, false),
        (
            "ClientIP defaults to 10800 s",
            "  sessionAffinity: ClientIP",
            10_800,
            false,
        ),
        (
            "ClientIP with a timeout",
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}",
            600,
            false,
        ),
        (
            "a timeout past 86400 s is reported and defaulted",
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 100000}}",
            10_800,
            true,
        ),
    ];
    for (rule, spec, want, reported) in cases {
        let (plan, diags) = plan_on("n1", &[], &service(spec, "{}"));
        assert_eq!(
            plan.frontends[&key("10.96.0.10", 80)].affinity_timeout_seconds,
            want,
            "{rule}"
        );
        assert_eq!(!diags.is_empty(), reported, "{rule}: {diags:?}");
    }
}

#[test]
fn load_balancer_source_ranges_apply_to_load_balancer_frontends_only() {
    let status = "{loadBalancer: {ingress: [{ip: 198.51.100.7}]}}";
    let spec =
        "  type: LoadBalancer\n  loadBalancerSourceRanges: [10.0.0.0/8, ' 192.168.1.7/24', bogus]";
    let (plan, diags) = plan_on("n1", &[], &service(spec, status));
    let ranges: Vec<String> = plan.frontends[&key("198.51.100.7", 80)]
        .source_ranges
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(ranges, ["10.0.0.0/8", "192.168.1.0/24"]);
    assert!(
        plan.frontends[&key("172.31.0.11", 30080)]
            .source_ranges
            .is_empty()
    );
    assert!(
        plan.frontends[&key("10.96.0.10", 80)]
            .source_ranges
            .is_empty()
    );
    assert_eq!(diags.len(), 1);
    assert!(diags[0].to_string().contains("\"bogus\" is not a CIDR"));

    // Nothing parses: the LoadBalancer IPs are not served at all (closed, not open).
    let spec = "  type: LoadBalancer\n  loadBalancerSourceRanges: [bogus]";
    let (plan, diags) = plan_on("n1", &[], &service(spec, status));
    assert!(!plan.frontends.contains_key(&key("198.51.100.7", 80)));
    assert!(
        diags
            .iter()
            .any(|d| d.reason.contains("LoadBalancer IPs are not served"))
    );
}

#[test]
fn health_check_node_port_counts_local_ready_endpoints() {
    let status = "{loadBalancer: {ingress: [{ip: 198.51.100.7}]}}";
    let spec = "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 31000";
    for (node, want) in [("n1", 1), ("n2", 2), ("n3", 0)] {
        let (plan, _) = plan_on(node, &[], &service(spec, status));
        assert_eq!(plan.health_checks.len(), 1);
        assert_eq!(
            (
                plan.health_checks[0].port,
                plan.health_checks[0].local_endpoints
            ),
            (31000, want),
            "{node}"
        );
    }
    // Cluster policy: no health check port.
    let (plan, _) = plan_on(
        "n1",
        &[],
        &service("  type: LoadBalancer\n  healthCheckNodePort: 31000", status),
    );
    assert!(plan.health_checks.is_empty());
}

#[test]
fn reject_when_nothing_anywhere_drop_when_local_policy_leaves_none_here() {
    let no_endpoints = service("  type: NodePort\n  externalTrafficPolicy: Local", "{}").replace(
        "endpoints:\n- {addresses: [10.244.1.2], nodeName: n1}\n- {addresses: [10.244.2.2], nodeName: n2}\n- {addresses: [10.244.2.3], nodeName: n2}\n",
        "endpoints: []\n",
    );
    let (plan, _) = plan_on("n1", &[], &no_endpoints);
    for frontend in plan.frontends.values() {
        assert_eq!(frontend.when_empty, WhenEmpty::Reject, "{frontend:?}");
    }
    let (plan, _) = plan_on(
        "n3",
        &[],
        &service("  type: NodePort\n  externalTrafficPolicy: Local", "{}"),
    );
    let n3 = &plan.frontends;
    // n3 has no Node object: no NodePort addresses; the ClusterIP keeps every endpoint.
    assert_eq!(n3.len(), 1);
    let (plan, _) = plan_on(
        "n1",
        &[],
        &service("  type: NodePort\n  externalTrafficPolicy: Local", "{}")
            .replace("nodeName: n1", "nodeName: n2"),
    );
    let nodeport = &plan.frontends[&key("172.31.0.11", 30080)];
    assert!(nodeport.backends.is_empty());
    assert_eq!(nodeport.when_empty, WhenEmpty::Drop);
}

#[test]
fn the_zone_and_addresses_come_from_the_node_object() {
    let w = world(NODES);
    let (node, _, _) = plan_for_node(
        "n1",
        &AddressRule::default(),
        &w.nodes,
        &[] as &[Service],
        &[] as &[EndpointSlice],
    );
    assert_eq!(node.zone.as_deref(), Some("zone-a"));
    let addresses: Vec<String> = node
        .nodeport_addresses
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(addresses, ["172.31.0.11", "203.0.113.11"]);
}

/// n1 with an IPv6 address too, and IPv6 endpoints: fd00:244:1::2 on n1, fd00:244:2::2 on n2.
const DUAL: &str = "
---
apiVersion: v1
kind: Node
metadata: {name: n1}
status:
  addresses:
  - {type: InternalIP, address: 172.31.0.11}
  - {type: InternalIP, address: 'fd00:31::11'}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-6, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: ['fd00:244:1::2'], nodeName: n1}
- {addresses: ['fd00:244:2::2'], nodeName: n2}
";

/// The service of `spec` over the IPv4 slice and [`DUAL`]'s node and IPv6 slice.
fn dual_service(spec: &str, status: &str) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec:
  ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP, nodePort: 30080}}]
{spec}
status: {status}
{SLICE}{DUAL}"
    )
}

#[test]
fn a_dual_stack_service_serves_each_family_from_its_own_slices() {
    let spec = "  type: NodePort\n  ipFamilyPolicy: PreferDualStack\n  ipFamilies: [IPv4, IPv6]\n  clusterIP: 10.96.0.10\n  clusterIPs: [10.96.0.10, 'fd00:96::10']\n  externalIPs: [192.0.2.5, '2001:db8::5']";
    let (plan, diags) = plan_on("n1", &[], &dual_service(spec, "{}"));
    assert!(diags.is_empty(), "{diags:?}");
    let v4 = ["10.244.1.2", "10.244.2.2", "10.244.2.3"];
    let v6 = ["fd00:244:1::2", "fd00:244:2::2"];
    assert_eq!(backend_ips(&plan, &key("10.96.0.10", 80)), v4);
    assert_eq!(backend_ips(&plan, &key("fd00:96::10", 80)), v6);
    assert_eq!(backend_ips(&plan, &key("172.31.0.11", 30080)), v4);
    assert_eq!(backend_ips(&plan, &key("fd00:31::11", 30080)), v6);
    assert_eq!(backend_ips(&plan, &key("192.0.2.5", 80)), v4);
    assert_eq!(backend_ips(&plan, &key("2001:db8::5", 80)), v6);
    assert_eq!(plan.frontends.len(), 6, "{:#?}", plan.frontends.keys());
    assert_eq!(
        key("fd00:96::10", 80).to_string(),
        "[fd00:96::10]:80/TCP",
        "IPv6 frontends print in brackets"
    );
}

#[test]
fn an_ipv6_only_service_gets_only_ipv6_frontends() {
    let spec = "  type: NodePort\n  ipFamilies: [IPv6]\n  clusterIP: 'fd00:96::10'\n  clusterIPs: ['fd00:96::10']\n  externalIPs: [192.0.2.5]";
    let (plan, diags) = plan_on("n1", &[], &dual_service(spec, "{}"));
    let keys: Vec<String> = plan.frontends.keys().map(ToString::to_string).collect();
    assert_eq!(keys, ["[fd00:31::11]:30080/TCP", "[fd00:96::10]:80/TCP"]);
    assert_eq!(
        diags.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            "Service shop/web: external address 192.0.2.5 skipped: the Service has no IPv4 cluster IP"
        ]
    );
}

#[test]
fn cluster_ips_follow_ip_families_and_one_per_family() {
    let spec = "  ipFamilies: [IPv4]\n  clusterIP: 10.96.0.10\n  clusterIPs: [10.96.0.10, 10.96.0.11, 'fd00:96::10']";
    let (plan, diags) = plan_on("n1", &[], &dual_service(spec, "{}"));
    let keys: Vec<String> = plan.frontends.keys().map(ToString::to_string).collect();
    assert_eq!(keys, ["10.96.0.10:80/TCP"]);
    let diags: Vec<String> = diags.iter().map(|d| d.reason.clone()).collect();
    assert_eq!(
        diags,
        [
            "clusterIP fd00:96::10 is IPv6 but ipFamilies lists only IPv4; not served",
            "clusterIPs has a second IPv4 address 10.96.0.11; only the first is served",
        ]
    );
}

#[test]
fn source_ranges_restrict_their_own_family_and_close_a_family_without_any() {
    let status = "{loadBalancer: {ingress: [{ip: 198.51.100.7}, {ip: '2001:db8::7'}]}}";
    let spec = "  type: LoadBalancer\n  clusterIP: 10.96.0.10\n  clusterIPs: [10.96.0.10, 'fd00:96::10']\n  loadBalancerSourceRanges: ['2001:db8:1::/48']";
    let (plan, diags) = plan_on("n1", &[], &dual_service(spec, status));
    let ranges = &plan.frontends[&key("2001:db8::7", 80)].source_ranges;
    assert_eq!(ranges, &["2001:db8:1::/48".parse::<IpNet>().unwrap()]);
    // Only IPv6 ranges: the IPv4 LoadBalancer IP is closed, not open to everyone.
    assert!(!plan.frontends.contains_key(&key("198.51.100.7", 80)));
    assert_eq!(
        diags.iter().map(|d| d.reason.clone()).collect::<Vec<_>>(),
        ["no loadBalancerSourceRanges entry is IPv4: its IPv4 LoadBalancer IPs are not served"]
    );
}

#[test]
fn an_externalip_equal_to_the_services_own_lb_ip_is_not_reported() {
    let status = "{loadBalancer: {ingress: [{ip: 198.51.100.7}]}}";
    let (plan, diags) = plan_on(
        "n1",
        &[],
        &service(
            "  type: LoadBalancer\n  externalIPs: [198.51.100.7]",
            status,
        ),
    );
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(
        plan.frontends[&key("198.51.100.7", 80)].kind,
        FrontendKind::LoadBalancer
    );
}
