//! `svclb plan`: what the agent would program for a node, as a table or JSON.

use std::net::IpAddr;

use serde::Serialize;

use crate::{
    cli::list::backend_label,
    plan::Diagnostic,
    plan::NodeInfo,
    plan::dns::Record,
    plan::{Frontend, FrontendKey, HealthCheck, Plan, Topology},
};

/// One frontend in the JSON output: its key's fields and the frontend's, side by side.
#[derive(Serialize)]
struct Row<'a> {
    #[serde(flatten)]
    key: &'a FrontendKey,
    #[serde(flatten)]
    frontend: &'a Frontend,
}

#[derive(Serialize)]
struct Output<'a> {
    node: &'a str,
    zone: Option<&'a str>,
    nodeport_addresses: &'a [IpAddr],
    /// Where each family's NodePort addresses came from.
    nodeport_origin: &'a [String],
    frontends: Vec<Row<'a>>,
    health_checks: &'a [HealthCheck],
    /// The cluster's DNS records (`--cluster-domain`), when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    dns_records: Option<&'a [Record]>,
    diagnostics: Vec<String>,
}

pub fn render_json(
    node: &NodeInfo,
    plan: &Plan,
    dns: Option<&[Record]>,
    diags: &[Diagnostic],
) -> String {
    let output = Output {
        node: &node.name,
        zone: node.zone.as_deref(),
        nodeport_addresses: &node.nodeport_addresses,
        nodeport_origin: &node.nodeport_origin,
        frontends: plan
            .frontends
            .iter()
            .map(|(key, frontend)| Row { key, frontend })
            .collect(),
        health_checks: &plan.health_checks,
        dns_records: dns,
        diagnostics: diags.iter().map(ToString::to_string).collect(),
    };
    serde_json::to_string_pretty(&output).expect("plan output is plain data")
}

fn backends_cell(frontend: &Frontend) -> String {
    if frontend.backends.is_empty() {
        return format!("(none: {})", frontend.when_empty);
    }
    frontend
        .backends
        .iter()
        .map(|b| backend_label(b.address, b.port, b.local, b.terminating))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn render_table(node: &NodeInfo, plan: &Plan, diags: &[Diagnostic]) -> String {
    let mut rows: Vec<[String; 5]> = vec![[
        "FRONTEND".into(),
        "KIND".into(),
        "SCOPE".into(),
        "SERVICE".into(),
        "BACKENDS".into(),
    ]];
    for (key, f) in &plan.frontends {
        let mut backends = backends_cell(f);
        if f.affinity_timeout_seconds > 0 {
            backends.push_str(&format!("; affinity {}s", f.affinity_timeout_seconds));
        }
        if !f.source_ranges.is_empty() {
            let ranges: Vec<String> = f.source_ranges.iter().map(ToString::to_string).collect();
            backends.push_str(&format!("; from {}", ranges.join(",")));
        }
        let topology = f.topology.to_string();
        if !topology.is_empty() && f.topology != Topology::Local {
            backends.push_str(&format!("; {topology}"));
        }
        let service = if f.port_name.is_empty() {
            f.service.clone()
        } else {
            format!("{}:{}", f.service, f.port_name)
        };
        rows.push([
            key.to_string(),
            f.kind.to_string(),
            f.scope.to_string(),
            service,
            backends,
        ]);
    }
    let widths: Vec<usize> = (0..4)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = format!(
        "node {} (zone {}, NodePort addresses: {})\n",
        node.name,
        node.zone.as_deref().unwrap_or("none"),
        node.nodeport_summary(),
    );
    for row in &rows {
        out.push_str(&format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {}\n",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        ));
    }
    for hc in &plan.health_checks {
        out.push_str(&format!(
            "health check {}: port {}, {} local endpoints\n",
            hc.service, hc.port, hc.local_endpoints
        ));
    }
    for diag in diags {
        out.push_str(&format!("warning: {diag}\n"));
    }
    out
}

/// The cluster's DNS records as zone file lines, after a heading.
pub fn render_dns(records: &[Record]) -> String {
    let mut out = format!("DNS records ({}):\n", records.len());
    for record in records {
        out.push_str(&format!("{record}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::{plan::plan_for_node, source::manifests::parse_documents};

    #[test]
    fn json_has_the_documented_schema() {
        let yaml = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  externalTrafficPolicy: Local
  healthCheckNodePort: 31000
  sessionAffinity: ClientIP
  loadBalancerSourceRanges: [10.0.0.0/8]
  ports: [{name: http, port: 80, nodePort: 30080}]
status: {loadBalancer: {ingress: [{ip: 198.51.100.7}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.244.1.2], nodeName: n1}]
";
        let (objects, _) = parse_documents(yaml, "t.yaml").unwrap();
        let mut services = Vec::new();
        let mut slices = Vec::new();
        for o in objects {
            match o {
                crate::source::manifests::Object::Service(s) => {
                    services.push(std::sync::Arc::unwrap_or_clone(s))
                }
                crate::source::manifests::Object::EndpointSlice(s) => {
                    slices.push(std::sync::Arc::unwrap_or_clone(s))
                }
                crate::source::manifests::Object::Node(_) => {}
            }
        }
        let (node, plan, diags) = plan_for_node(
            "n1",
            &crate::plan::AddressRule::default(),
            &[] as &[k8s_openapi::api::core::v1::Node],
            &services,
            &slices,
        );
        let json: serde_json::Value =
            serde_json::from_str(&super::render_json(&node, &plan, None, &diags)).unwrap();
        assert_eq!(json["node"], "n1");
        let lb = json["frontends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["kind"] == "LoadBalancer" && f["scope"] == "external")
            .expect("the LoadBalancer frontend");
        for field in [
            "service",
            "port_name",
            "kind",
            "address",
            "port",
            "protocol",
            "scope",
            "backends",
            "when_empty",
            "affinity_timeout_seconds",
            "source_ranges",
            "topology",
        ] {
            assert!(lb.get(field).is_some(), "missing {field} in {lb}");
        }
        assert_eq!(lb["service"], "shop/web");
        assert_eq!(lb["address"], "198.51.100.7");
        assert_eq!(lb["protocol"], "TCP");
        assert_eq!(lb["when_empty"], "drop");
        assert_eq!(lb["affinity_timeout_seconds"], 10800);
        assert_eq!(lb["source_ranges"][0], "10.0.0.0/8");
        assert_eq!(
            lb["topology"]["level"], "local",
            "an external Local policy: {lb}"
        );
        let backend = &lb["backends"][0];
        for field in ["address", "port", "node", "local", "terminating"] {
            assert!(backend.get(field).is_some(), "missing backend {field}");
        }
        assert_eq!(backend["local"], true);
        assert_eq!(json["health_checks"][0]["port"], 31000);
    }
}
