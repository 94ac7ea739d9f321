//! One table-driven test per rule of the model, and a property: input order never matters.

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use proptest::prelude::*;

use super::{NodeInfo, plan};
use crate::{
    plan::{AddressRule, FrontendKey, FrontendKind, Kind, Plan, Protocol, plan_for_node},
    source::manifests::{Object, parse_documents},
};

fn objects(yaml: &str) -> (Vec<Service>, Vec<EndpointSlice>) {
    let (services, slices, _) = objects_and_nodes(yaml);
    (services, slices)
}

fn objects_and_nodes(yaml: &str) -> (Vec<Service>, Vec<EndpointSlice>, Vec<Node>) {
    let (objects, diags) = parse_documents(yaml, "test.yaml").expect("valid YAML");
    assert!(diags.is_empty(), "{diags:?}");
    let (mut services, mut slices, mut nodes) = (Vec::new(), Vec::new(), Vec::new());
    for object in objects {
        match object {
            Object::Service(s) => services.push(std::sync::Arc::unwrap_or_clone(s)),
            Object::EndpointSlice(s) => slices.push(std::sync::Arc::unwrap_or_clone(s)),
            Object::Node(n) => nodes.push(std::sync::Arc::unwrap_or_clone(n)),
        }
    }
    (services, slices, nodes)
}

fn node() -> NodeInfo {
    NodeInfo::named("n1")
}

fn key(addr: &str, port: u16, protocol: Protocol) -> FrontendKey {
    FrontendKey::new(addr.parse().unwrap(), port, protocol)
}

/// `address:port` of each backend of a frontend.
fn backends(plan: &Plan, frontend: &FrontendKey) -> Vec<String> {
    plan.frontends[frontend]
        .backends
        .iter()
        .map(|b| format!("{}:{}", b.address, b.port))
        .collect()
}

const SERVICE: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  ports:
  - {name: http, port: 80, targetPort: web, protocol: TCP}
  - {name: dns, port: 53, targetPort: 5353, protocol: UDP}
";

fn slice(name: &str, ports: &str, endpoints: &str) -> String {
    format!(
        "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: {ports}
endpoints: {endpoints}
"
    )
}

const PORTS: &str =
    "[{name: http, port: 8080, protocol: TCP}, {name: dns, port: 5353, protocol: UDP}]";

#[test]
fn rules() {
    struct Case {
        rule: &'static str,
        yaml: String,
        /// Expected backends of 10.96.0.10:80/TCP.
        http: Vec<&'static str>,
    }
    let cases = [
        Case {
            rule: "nil conditions mean ready",
            yaml: slice("a", PORTS, "[{addresses: [10.244.1.2]}]"),
            http: vec!["10.244.1.2:8080"],
        },
        Case {
            rule: "not-ready endpoints do not serve while others are ready",
            yaml: slice(
                "a",
                PORTS,
                "[{addresses: [10.244.1.2], conditions: {ready: false}}, {addresses: [10.244.1.3]}]",
            ),
            http: vec!["10.244.1.3:8080"],
        },
        Case {
            rule: "serving+terminating endpoints serve when none is ready",
            yaml: slice(
                "a",
                PORTS,
                "[{addresses: [10.244.1.2], conditions: {ready: false, serving: true, terminating: true}},
                  {addresses: [10.244.1.3], conditions: {ready: false, serving: false, terminating: true}},
                  {addresses: [10.244.1.4], conditions: {ready: false, serving: true, terminating: false}}]",
            ),
            http: vec!["10.244.1.2:8080"],
        },
        Case {
            rule: "only addresses[0] is used",
            yaml: slice("a", PORTS, "[{addresses: [10.244.1.2, 10.244.1.9]}]"),
            http: vec!["10.244.1.2:8080"],
        },
        Case {
            rule: "the same ip:port in two slices counts once",
            yaml: slice("a", PORTS, "[{addresses: [10.244.1.2]}]")
                + &slice("b", PORTS, "[{addresses: [10.244.1.2]}, {addresses: [10.244.1.3]}]"),
            http: vec!["10.244.1.2:8080", "10.244.1.3:8080"],
        },
        Case {
            rule: "the port number comes from the slice port of the same name",
            yaml: slice("a", "[{name: http, port: 9090, protocol: TCP}]", "[{addresses: [10.244.1.2]}]"),
            http: vec!["10.244.1.2:9090"],
        },
        Case {
            rule: "slice ports without a name field or number are skipped",
            yaml: slice("a", "[{port: 8080, protocol: TCP}]", "[{addresses: [10.244.1.2]}]")
                + &slice("b", "[{name: http, protocol: TCP}]", "[{addresses: [10.244.1.3]}]"),
            http: vec![],
        },
        Case {
            rule: "slices of another family and FQDN slices are ignored",
            yaml: slice("a", PORTS, "[{addresses: [10.244.1.2]}]").replace("IPv4", "IPv6")
                + &slice("b", PORTS, "[{addresses: [example.com]}]").replace("IPv4", "FQDN"),
            http: vec![],
        },
        Case {
            rule: "slices of other services are ignored",
            yaml: slice("a", PORTS, "[{addresses: [10.244.1.2]}]").replace("service-name: web", "service-name: other"),
            http: vec![],
        },
    ];
    for case in cases {
        let (services, slices) = objects(&format!("{SERVICE}{}", case.yaml));
        let (plan, _) = plan(&node(), &services, &slices);
        let http = key("10.96.0.10", 80, Protocol::Tcp);
        assert_eq!(backends(&plan, &http), case.http, "{}", case.rule);
    }
}

#[test]
fn objects_without_a_namespace_are_in_default() {
    let yaml = "
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {clusterIP: 10.96.0.50, ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.244.1.2]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-2, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.244.1.3]}]
";
    let (services, slices) = objects(yaml);
    let (plan, _) = plan(&node(), &services, &slices);
    let web = key("10.96.0.50", 80, Protocol::Tcp);
    assert_eq!(plan.frontends[&web].service, "default/web");
    assert_eq!(
        backends(&plan, &web),
        ["10.244.1.2:8080", "10.244.1.3:8080"]
    );
}

#[test]
fn multi_port_services_map_each_port_and_protocol() {
    let (services, slices) = objects(&format!(
        "{SERVICE}{}",
        slice(
            "a",
            PORTS,
            "[{addresses: [10.244.1.2], nodeName: n1}, {addresses: [10.244.2.2], nodeName: n2}]"
        )
    ));
    let (plan, diags) = plan(&node(), &services, &slices);
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(plan.frontends.len(), 2);
    let dns = &plan.frontends[&key("10.96.0.10", 53, Protocol::Udp)];
    assert_eq!(dns.service, "shop/web");
    assert_eq!(dns.port_name, "dns");
    assert_eq!(
        backends(&plan, &key("10.96.0.10", 53, Protocol::Udp)),
        ["10.244.1.2:5353", "10.244.2.2:5353"]
    );
    let local: Vec<bool> = dns.backends.iter().map(|b| b.local).collect();
    assert_eq!(
        local,
        [true, false],
        "nodeName equal to this node marks local endpoints"
    );
}

#[test]
fn duplicate_prefers_the_non_terminating_copy() {
    let yaml = format!(
        "{SERVICE}{}{}",
        slice(
            "a",
            PORTS,
            "[{addresses: [10.244.1.2], conditions: {ready: true, terminating: true}}]"
        ),
        slice(
            "b",
            PORTS,
            "[{addresses: [10.244.1.2], conditions: {ready: true}}]"
        )
    );
    let (services, slices) = objects(&yaml);
    for order in [slices.clone(), slices.iter().rev().cloned().collect()] {
        let (plan, _) = plan(&node(), &services, &order);
        let http = &plan.frontends[&key("10.96.0.10", 80, Protocol::Tcp)];
        assert_eq!(http.backends.len(), 1);
        assert!(!http.backends[0].terminating);
    }
}

#[test]
fn duplicate_prefers_the_local_copy() {
    let yaml = format!(
        "{SERVICE}{}{}",
        slice("a", PORTS, "[{addresses: [10.244.1.2], nodeName: n2}]"),
        slice("b", PORTS, "[{addresses: [10.244.1.2], nodeName: n1}]")
    );
    let (services, slices) = objects(&yaml);
    for order in [slices.clone(), slices.iter().rev().cloned().collect()] {
        let (plan, _) = plan(&node(), &services, &order);
        let http = &plan.frontends[&key("10.96.0.10", 80, Protocol::Tcp)];
        assert!(http.backends[0].local, "the copy on this node wins");
    }
}

#[test]
fn no_datapath_for_headless_and_external_name() {
    let yaml = "
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: a}
spec: {clusterIP: None, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: a}
spec: {type: ExternalName, externalName: example.com, ports: [{port: 80}]}
";
    let (services, slices) = objects(yaml);
    let (plan, diags) = plan(&node(), &services, &slices);
    assert!(plan.frontends.is_empty());
    assert!(diags.is_empty(), "{diags:?}");
}

#[test]
fn invalid_fields_are_reported_with_the_object_and_skipped() {
    let yaml = "
apiVersion: v1
kind: Service
metadata: {name: bad, namespace: a}
spec:
  clusterIP: 10.96.0.300
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: ports, namespace: a}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: zero, port: 0}, {name: big, port: 70000}, {name: ok, port: 81}, {name: weird, port: 82, protocol: ICMP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ports-1, namespace: a, labels: {kubernetes.io/service-name: ports}}
addressType: IPv4
ports: [{name: ok, port: 8080}]
endpoints: [{addresses: [10.244.1.300]}, {addresses: [10.244.1.5]}]
";
    let (services, slices) = objects(yaml);
    let (plan, diags) = plan(&node(), &services, &slices);
    let shown: Vec<String> = diags.iter().map(ToString::to_string).collect();
    for expected in [
        "Service a/bad: clusterIP \"10.96.0.300\" is not an IP address",
        "Service a/ports: port \"zero\": 0 is not a port number (1-65535)",
        "Service a/ports: port \"big\": 70000 is not a port number (1-65535)",
        "Service a/ports: port \"weird\": unknown protocol \"ICMP\"",
        "EndpointSlice a/ports-1: endpoint address \"10.244.1.300\" is not an IPv4 address",
    ] {
        assert!(
            shown.iter().any(|d| d == expected),
            "missing {expected:?} in {shown:#?}"
        );
    }
    assert_eq!(plan.frontends.len(), 1, "the valid port is still served");
    assert_eq!(
        backends(&plan, &key("10.96.0.20", 81, Protocol::Tcp)),
        ["10.244.1.5:8080"]
    );
}

#[test]
fn a_frontend_claimed_twice_goes_to_the_first_service_by_name() {
    let yaml = "
apiVersion: v1
kind: Service
metadata: {name: zz, namespace: a}
spec: {clusterIP: 10.96.0.30, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: aa, namespace: a}
spec: {clusterIP: 10.96.0.30, ports: [{port: 80}]}
";
    let (services, slices) = objects(yaml);
    let (plan, diags) = plan(&node(), &services, &slices);
    assert_eq!(
        plan.frontends[&key("10.96.0.30", 80, Protocol::Tcp)].service,
        "a/aa"
    );
    assert_eq!(
        diags.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            "Service a/zz: frontend 10.96.0.30:80/TCP is served by Service a/aa (first by name); not by this one"
        ]
    );
}

/// CVE-2020-8554: a Service in a namespace that sorts first claims the cluster DNS address
/// as an externalIP. The address stays kube-dns's, and the claim is named.
#[test]
fn an_external_ip_never_takes_another_services_cluster_ip() {
    let yaml = "
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, creationTimestamp: '2026-12-01T00:00:00Z'}
spec: {clusterIP: 10.96.0.10, ports: [{name: dns, port: 53, protocol: UDP}]}
---
apiVersion: v1
kind: Service
metadata: {name: hijack, namespace: aaa, creationTimestamp: '2020-01-01T00:00:00Z'}
spec: {clusterIP: 10.96.0.99, externalIPs: [10.96.0.10], ports: [{name: dns, port: 53, protocol: UDP}]}
";
    let (services, slices) = objects(yaml);
    let (plan, diags) = plan(&node(), &services, &slices);
    let dns = &plan.frontends[&key("10.96.0.10", 53, Protocol::Udp)];
    assert_eq!(
        (dns.service.as_str(), dns.kind),
        ("kube-system/kube-dns", FrontendKind::ClusterIP)
    );
    assert_eq!(
        diags.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            "Service aaa/hijack: frontend 10.96.0.10:53/UDP is served by Service kube-system/kube-dns (its cluster IP); not by this one"
        ]
    );
}

/// Between claims of one kind, the oldest Service wins, whatever the names.
#[test]
fn the_oldest_service_keeps_a_shared_external_ip() {
    let yaml = "
apiVersion: v1
kind: Service
metadata: {name: late, namespace: a, creationTimestamp: '2026-12-02T00:00:00Z'}
spec: {clusterIP: 10.96.0.31, externalIPs: [192.0.2.7], ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: zz-first, namespace: z, creationTimestamp: '2026-12-01T00:00:00Z'}
spec: {clusterIP: 10.96.0.32, externalIPs: [192.0.2.7], ports: [{port: 80}]}
";
    let (services, slices) = objects(yaml);
    let (plan, diags) = plan(&node(), &services, &slices);
    assert_eq!(
        plan.frontends[&key("192.0.2.7", 80, Protocol::Tcp)].service,
        "z/zz-first"
    );
    assert_eq!(
        diags.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            "Service a/late: frontend 192.0.2.7:80/TCP is served by Service z/zz-first (created earlier); not by this one"
        ]
    );
}

#[test]
fn ipv6_endpoints_serve_only_ipv6_frontends() {
    let yaml = "
apiVersion: v1
kind: Service
metadata: {name: dual, namespace: a}
spec: {clusterIP: 10.96.0.40, clusterIPs: [10.96.0.40, 'fd00::40'], ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dual-6, namespace: a, labels: {kubernetes.io/service-name: dual}}
addressType: IPv6
ports: [{name: '', port: 8080}]
endpoints: [{addresses: ['fd00:244::2']}, {addresses: [10.244.0.9]}]
";
    let (services, slices) = objects(yaml);
    let (plan, diags) = plan(&node(), &services, &slices);
    let served: Vec<(String, Vec<String>)> = plan
        .frontends
        .iter()
        .map(|(k, f)| {
            (
                k.to_string(),
                f.backends
                    .iter()
                    .map(|b| format!("{}", b.address))
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        served,
        [
            ("10.96.0.40:80/TCP".to_owned(), vec![]),
            (
                "[fd00::40]:80/TCP".to_owned(),
                vec!["fd00:244::2".to_owned()]
            ),
        ]
    );
    assert_eq!(
        diags.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["EndpointSlice a/dual-6: endpoint address \"10.244.0.9\" is not an IPv6 address"]
    );
}

proptest! {
    /// The plan is a function of the set of objects, not of their order.
    #[test]
    fn plan_ignores_object_order(seed in any::<u64>()) {
        let yaml = format!(
            "{SERVICE}{}{}{}",
            slice("a", PORTS, "[{addresses: [10.244.1.2]}, {addresses: [10.244.1.3], conditions: {ready: false}}]"),
            slice("b", PORTS, "[{addresses: [10.244.1.3], conditions: {ready: true}}, {addresses: [10.244.2.2], nodeName: n1}]"),
            "---\napiVersion: v1\nkind: Service\nmetadata: {name: other, namespace: shop}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\n",
        );
        let (services, slices) = objects(&yaml);
        let (reference, reference_diags) = plan(&node(), &services, &slices);
        let mut rng = seed;
        let mut shuffle = |n: usize| -> Vec<usize> {
            let mut idx: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                idx.swap(i, (rng >> 33) as usize % (i + 1));
            }
            idx
        };
        let services: Vec<Service> = shuffle(services.len()).into_iter().map(|i| services[i].clone()).collect();
        let slices: Vec<EndpointSlice> = shuffle(slices.len()).into_iter().map(|i| slices[i].clone()).collect();
        let (shuffled, shuffled_diags) = plan(&node(), &services, &slices);
        prop_assert_eq!(reference, shuffled);
        prop_assert_eq!(reference_diags, shuffled_diags);
    }
}

/// An externalIP on a reserved address is refused, and named as such: the special ranges
/// always; the service CIDR and every node's addresses unless the operator allows them.
#[test]
fn external_ips_on_reserved_addresses_are_refused() {
    let yaml = "
apiVersion: v1
kind: Node
metadata: {name: n1}
status: {addresses: [{type: InternalIP, address: 172.31.0.11}]}
---
apiVersion: v1
kind: Node
metadata: {name: n2}
status: {addresses: [{type: InternalIP, address: 172.31.0.12}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.50
  externalIPs: [127.0.0.1, 169.254.169.254, 10.96.0.77, 172.31.0.11, 172.31.0.12, 'fe80::1', 192.0.2.7]
  ports: [{port: 80}]
";
    let (services, _, nodes) = objects_and_nodes(yaml);
    let served = |allow: bool| {
        let rule = AddressRule {
            service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
            allow_reserved_external_ips: allow,
            ..AddressRule::default()
        };
        let (_, plan, diags) =
            plan_for_node("n1", &rule, &nodes, &services, &[] as &[EndpointSlice]);
        let addresses: std::collections::BTreeSet<String> = plan
            .frontends
            .keys()
            .map(|k| k.address.to_string())
            .collect();
        assert!(diags.iter().all(|d| d.kind == Kind::Reserved), "{diags:?}");
        let diags: Vec<String> = diags.iter().map(ToString::to_string).collect();
        (addresses, diags)
    };
    let (addresses, diags) = served(false);
    assert_eq!(Vec::from_iter(addresses), ["10.96.0.50", "192.0.2.7"]);
    assert_eq!(
        diags,
        [
            "Service shop/web: externalIP 10.96.0.77 is inside the service CIDR 10.96.0.0/12: not served (--allow-reserved-external-ips serves it)",
            "Service shop/web: externalIP 127.0.0.1 is a loopback address: not served",
            "Service shop/web: externalIP 169.254.169.254 is a link-local address: not served",
            "Service shop/web: externalIP 172.31.0.11 is an address of node n1: not served (--allow-reserved-external-ips serves it)",
            "Service shop/web: externalIP 172.31.0.12 is an address of node n2: not served (--allow-reserved-external-ips serves it)",
            "Service shop/web: externalIP fe80::1 is a link-local address: not served",
        ]
    );
    let (addresses, diags) = served(true);
    assert_eq!(
        Vec::from_iter(addresses),
        [
            "10.96.0.50",
            "10.96.0.77",
            "172.31.0.11",
            "172.31.0.12",
            "192.0.2.7"
        ]
    );
    assert_eq!(diags.len(), 3, "{diags:?}");
}
