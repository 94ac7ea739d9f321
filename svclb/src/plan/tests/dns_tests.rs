//! The records of each kind of Service, as the DNS specification and CoreDNS give them.

use std::path::Path;

use super::records;
use crate::{
    plan::Snapshot,
    source::manifests::{parse_documents, snapshot_of},
};

fn snapshot(yaml: &str) -> Snapshot {
    let (objects, diags) = parse_documents(yaml, "test.yaml").expect("valid YAML");
    assert!(diags.is_empty(), "{diags:?}");
    let snapshot = snapshot_of([(Path::new("test.yaml"), objects.as_slice())]);
    assert!(
        snapshot.diagnostics.is_empty(),
        "{:?}",
        snapshot.diagnostics
    );
    snapshot
}

/// The records as zone file lines, `dns-version` left out.
fn zone(yaml: &str) -> Vec<String> {
    records(&snapshot(yaml), "Cluster.Local.")
        .iter()
        .map(ToString::to_string)
        .filter(|r| !r.starts_with("dns-version."))
        .collect()
}

#[test]
fn a_cluster_ip_service_has_its_addresses_srv_per_named_port_and_ptr() {
    // The SRV names have the cluster IPs' addresses too, as CoreDNS answers them.
    let lines = zone(
        "
apiVersion: v1
kind: Service
metadata: {name: Web, namespace: shop}
spec:
  clusterIPs: [10.96.0.10, 'fd00:96::a']
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: dns, port: 53, protocol: UDP}
  - {port: 9000}
",
    );
    assert_eq!(
        lines,
        [
            "10.0.96.10.in-addr.arpa.\t5\tIN\tPTR\tweb.shop.svc.cluster.local.",
            "_dns._udp.web.shop.svc.cluster.local.\t5\tIN\tA\t10.96.0.10",
            "_dns._udp.web.shop.svc.cluster.local.\t5\tIN\tAAAA\tfd00:96::a",
            "_dns._udp.web.shop.svc.cluster.local.\t5\tIN\tSRV\t0 50 53 web.shop.svc.cluster.local.",
            "_http._tcp.web.shop.svc.cluster.local.\t5\tIN\tA\t10.96.0.10",
            "_http._tcp.web.shop.svc.cluster.local.\t5\tIN\tAAAA\tfd00:96::a",
            "_http._tcp.web.shop.svc.cluster.local.\t5\tIN\tSRV\t0 50 80 web.shop.svc.cluster.local.",
            "a.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.0.d.f.ip6.arpa.\t5\tIN\tPTR\tweb.shop.svc.cluster.local.",
            "web.shop.svc.cluster.local.\t5\tIN\tA\t10.96.0.10",
            "web.shop.svc.cluster.local.\t5\tIN\tAAAA\tfd00:96::a",
        ]
    );
}

const HEADLESS: &str = "
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  clusterIP: None
  ports: [{name: pg, port: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-1, namespace: shop, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: pg, port: 15432, protocol: TCP}]
endpoints:
- addresses: [10.244.1.5]
  hostname: db-0
  conditions: {ready: true}
- addresses: [10.244.2.6]
- addresses: [10.244.3.7]
  conditions: {ready: false}
";

#[test]
fn a_headless_service_has_its_ready_endpoints_by_hostname_or_address() {
    assert_eq!(
        zone(HEADLESS),
        [
            "10-244-2-6.db.shop.svc.cluster.local.\t5\tIN\tA\t10.244.2.6",
            "5.1.244.10.in-addr.arpa.\t5\tIN\tPTR\tdb-0.db.shop.svc.cluster.local.",
            "6.2.244.10.in-addr.arpa.\t5\tIN\tPTR\t10-244-2-6.db.shop.svc.cluster.local.",
            "_pg._tcp.db.shop.svc.cluster.local.\t5\tIN\tA\t10.244.1.5",
            "_pg._tcp.db.shop.svc.cluster.local.\t5\tIN\tA\t10.244.2.6",
            "_pg._tcp.db.shop.svc.cluster.local.\t5\tIN\tSRV\t0 50 15432 10-244-2-6.db.shop.svc.cluster.local.",
            "_pg._tcp.db.shop.svc.cluster.local.\t5\tIN\tSRV\t0 50 15432 db-0.db.shop.svc.cluster.local.",
            "db-0.db.shop.svc.cluster.local.\t5\tIN\tA\t10.244.1.5",
            "db.shop.svc.cluster.local.\t5\tIN\tA\t10.244.1.5",
            "db.shop.svc.cluster.local.\t5\tIN\tA\t10.244.2.6",
        ]
    );
}

/// An address that is also an endpoint of a Service with a cluster IP has no PTR here: CoreDNS
/// answers one PTR per Service holding it, which the server does.
#[test]
fn a_headless_endpoint_behind_a_cluster_ip_too_has_no_ptr() {
    let lines = zone(&format!(
        "{HEADLESS}---
apiVersion: v1
kind: Service
metadata: {{name: pg, namespace: shop}}
spec: {{clusterIP: 10.96.0.30, ports: [{{port: 5432}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: pg-1, namespace: shop, labels: {{kubernetes.io/service-name: pg}}}}
addressType: IPv4
ports: [{{port: 5432}}]
endpoints:
- addresses: [10.244.1.5]
"
    ));
    let ptrs: Vec<&String> = lines.iter().filter(|l| l.contains("\tPTR\t")).collect();
    assert_eq!(
        ptrs,
        [
            "30.0.96.10.in-addr.arpa.\t5\tIN\tPTR\tpg.shop.svc.cluster.local.",
            "6.2.244.10.in-addr.arpa.\t5\tIN\tPTR\t10-244-2-6.db.shop.svc.cluster.local.",
        ]
    );
}

/// Weight 100/N rounds down, but never to 0 (which RFC 2782 gives a meaning of its own).
#[test]
fn srv_weights_are_at_least_one() {
    let endpoints: String = (0..150)
        .map(|i| format!("- addresses: [10.244.{}.{}]\n", i / 100, i % 100 + 1))
        .collect();
    let lines = zone(&format!(
        "
apiVersion: v1
kind: Service
metadata: {{name: big, namespace: shop}}
spec: {{clusterIP: None, ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: big-1, namespace: shop, labels: {{kubernetes.io/service-name: big}}}}
addressType: IPv4
ports: [{{name: http, port: 80, protocol: TCP}}]
endpoints:
{endpoints}"
    ));
    let weights: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.split_once("\tSRV\t0 "))
        .map(|(_, rest)| rest.split(' ').next().unwrap_or_default())
        .collect();
    assert_eq!(weights.len(), 150);
    assert!(weights.iter().all(|w| *w == "1"), "{weights:?}");
}

#[test]
fn a_headless_service_without_ready_endpoints_has_no_records() {
    let lines = zone(
        "
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec: {clusterIP: None, ports: [{name: pg, port: 5432}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-1, namespace: shop, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: pg, port: 5432}]
endpoints:
- addresses: [10.244.3.7]
  conditions: {ready: false}
",
    );
    assert_eq!(lines, Vec::<String>::new());
}

#[test]
fn an_external_name_is_a_cname_unless_its_target_is_an_address() {
    let lines = zone(
        "
apiVersion: v1
kind: Service
metadata: {name: mail, namespace: shop}
spec: {type: ExternalName, externalName: Mail.Example.COM.}
---
apiVersion: v1
kind: Service
metadata: {name: byip, namespace: shop}
spec: {type: ExternalName, externalName: 192.0.2.1}
",
    );
    assert_eq!(
        lines,
        ["mail.shop.svc.cluster.local.\t5\tIN\tCNAME\tmail.example.com."]
    );
}

#[test]
fn the_schema_version_is_a_txt_record_and_ipv6_endpoints_get_dashed_names() {
    let all = records(
        &snapshot(
            "
apiVersion: v1
kind: Service
metadata: {name: six, namespace: default}
spec: {clusterIP: None}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: six-1, labels: {kubernetes.io/service-name: six}}
addressType: IPv6
endpoints:
- addresses: ['fd00:244::']
",
        ),
        "cluster.local",
    );
    let lines: Vec<String> = all.iter().map(ToString::to_string).collect();
    assert!(lines.contains(&"dns-version.cluster.local.\t28800\tIN\tTXT\t\"1.1.0\"".to_owned()));
    assert!(
        lines.contains(
            &"fd00-244--0.six.default.svc.cluster.local.\t5\tIN\tAAAA\tfd00:244::".to_owned()
        ),
        "{lines:#?}"
    );
}

#[test]
fn the_records_do_not_depend_on_the_order_of_the_objects() {
    let yaml = format!("{HEADLESS}---\n{}", HEADLESS.replace("db", "cache"));
    let mut reversed = snapshot(&yaml);
    reversed.slices.reverse();
    reversed.services.reverse();
    assert_eq!(
        records(&reversed, "cluster.local"),
        records(&snapshot(&yaml), "cluster.local")
    );
}
