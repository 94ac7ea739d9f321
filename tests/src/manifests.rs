//! Service and EndpointSlice manifests for lab tests and the demo.

use std::{borrow::Borrow, fmt::Write as _};

use crate::Pod;

/// One port of a service: name, service port, protocol; the backends listen on `target`.
#[derive(Clone, Debug)]
pub struct PortSpec {
    pub name: &'static str,
    pub port: u16,
    pub target: u16,
    pub protocol: &'static str,
    /// `nodePort` (0: none).
    pub node_port: u16,
}

impl PortSpec {
    pub const fn tcp(name: &'static str, port: u16, target: u16) -> Self {
        Self {
            name,
            port,
            target,
            protocol: "TCP",
            node_port: 0,
        }
    }

    pub const fn udp(name: &'static str, port: u16, target: u16) -> Self {
        Self {
            name,
            port,
            target,
            protocol: "UDP",
            node_port: 0,
        }
    }

    pub const fn with_node_port(mut self, node_port: u16) -> Self {
        self.node_port = node_port;
        self
    }
}

/// The lab's usual service ports: HTTP 80 and DNS 53, both onto the backends' port 8080.
pub const WEB: PortSpec = PortSpec::tcp("http", 80, 8080);
pub const DNS: PortSpec = PortSpec::udp("dns", 53, 8080);

/// A ClusterIP Service named `name` on `cluster_ip` and one EndpointSlice holding `pods`
/// (all ready).
pub fn cluster_ip_service<P: Borrow<Pod>>(
    name: &str,
    cluster_ip: &str,
    ports: &[PortSpec],
    pods: &[P],
) -> String {
    service(name, cluster_ip, ports, pods, "  type: ClusterIP\n", "")
}

/// A Service named `name` on `cluster_ip` and one EndpointSlice holding `pods` (all ready).
/// `spec` is more of the Service's spec (indented YAML lines: type, policies, affinity...);
/// `status` its status block (e.g. load-balancer ingress IPs), or "".
pub fn service<P: Borrow<Pod>>(
    name: &str,
    cluster_ip: &str,
    ports: &[PortSpec],
    pods: &[P],
    spec: &str,
    status: &str,
) -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n{spec}  clusterIP: {cluster_ip}\n  clusterIPs: [{cluster_ip}]\n  ports:\n"
    );
    for p in ports {
        let _ = writeln!(
            out,
            "  - name: {}\n    port: {}\n    targetPort: {}\n    protocol: {}",
            p.name, p.port, p.target, p.protocol
        );
        if p.node_port != 0 {
            let _ = writeln!(out, "    nodePort: {}", p.node_port);
        }
    }
    out.push_str(status);
    let _ = write!(
        out,
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-slice\n  namespace: default\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nports:\n"
    );
    for p in ports {
        let _ = writeln!(
            out,
            "- name: {}\n  port: {}\n  protocol: {}",
            p.name, p.target, p.protocol
        );
    }
    if pods.is_empty() {
        out.push_str("endpoints: []\n");
    } else {
        out.push_str("endpoints:\n");
        for pod in pods.iter().map(Borrow::borrow) {
            let _ = writeln!(
                out,
                "- addresses: [\"{}\"]\n  conditions: {{ready: true, serving: true, terminating: false}}\n  nodeName: {}\n  targetRef: {{kind: Pod, name: {}, namespace: default}}",
                pod.addr, pod.node, pod.name
            );
        }
    }
    out
}

/// The documents of a YAML manifest as JSON objects (to hand to the fake API server).
pub fn to_json_objects(yaml: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    use serde::Deserialize as _;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Ok(serde_json::to_value(serde_yaml::Value::deserialize(doc)?)?))
        .collect()
}
