//! This node as the plan needs it: name, zone, and the addresses NodePorts listen on.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;

use super::Diagnostic;

/// The label holding a node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The node the plan is computed for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// `topology.kubernetes.io/zone` of its Node object.
    pub zone: Option<String>,
    /// Addresses NodePort frontends are served on.
    pub nodeport_addresses: Vec<IpAddr>,
}

impl NodeInfo {
    /// A node known only by name: no zone, no NodePort addresses.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Builds the node from its Node object (`None` when the source has none). NodePorts are
    /// served on the node's InternalIP and ExternalIP addresses, or only on those inside
    /// `nodeport_cidrs` when that is not empty (kube-proxy's `--nodeport-addresses`).
    pub fn from_node(
        name: &str,
        node: Option<&Node>,
        nodeport_cidrs: &[IpNet],
    ) -> (Self, Vec<Diagnostic>) {
        let mut diags = Vec::new();
        let mut info = Self::named(name);
        // Without its Node object (a dev box with manifests only) the node has no zone and
        // serves no NodePort; `svclb plan` shows that.
        let Some(node) = node else {
            return (info, diags);
        };
        info.zone = node
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(ZONE_LABEL))
            .cloned();
        let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
        for address in addresses.into_iter().flatten() {
            if address.type_ != "InternalIP" && address.type_ != "ExternalIP" {
                continue;
            }
            let Ok(ip) = address.address.parse::<IpAddr>() else {
                diags.push(Diagnostic::new(
                    format!("Node {name}"),
                    format!("address {:?} is not an IP address", address.address),
                ));
                continue;
            };
            let wanted =
                nodeport_cidrs.is_empty() || nodeport_cidrs.iter().any(|net| net.contains(&ip));
            if wanted && !info.nodeport_addresses.contains(&ip) {
                info.nodeport_addresses.push(ip);
            }
        }
        info.nodeport_addresses.sort();
        (info, diags)
    }
}
