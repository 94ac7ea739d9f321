//! This node as the plan needs it: name, zone, the addresses NodePorts listen on, and those
//! externalIPs may not take.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;

use super::{
    Diagnostic, Family,
    reserved::{Reserved, reserved},
};

/// The label holding a node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The taint the cluster autoscaler puts on a node it is about to remove (KEP-3836 has load
/// balancers drain such a node).
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// Whether load balancers should send this node traffic (kube-proxy's `nodeEligible`): not
/// when its Node object is gone (`seen` before), is being deleted, or carries
/// [`TO_BE_DELETED_TAINT`]. A node whose source never had a Node object (a manifests
/// directory without one) is eligible, as kube-proxy starts out. `Err` says why not.
pub fn eligibility(node: Option<&Node>, seen: bool) -> Result<(), String> {
    let Some(node) = node else {
        return if seen {
            Err("its Node object is gone".to_owned())
        } else {
            Ok(())
        };
    };
    if node.metadata.deletion_timestamp.is_some() {
        return Err("its Node object is being deleted".to_owned());
    }
    let taints = node.spec.as_ref().and_then(|s| s.taints.as_ref());
    if taints.is_some_and(|t| t.iter().any(|t| t.key == TO_BE_DELETED_TAINT)) {
        return Err(format!(
            "its Node object carries the {TO_BE_DELETED_TAINT} taint"
        ));
    }
    Ok(())
}

/// Where NodePorts listen: `--nodeport-addresses`, and the uplinks' own addresses, which
/// serve for a family the Node object gives no address of (or when there is no Node object,
/// as on a dev box with manifests only), as kube-proxy falls back to the node's interfaces.
/// And which addresses externalIPs may not take (see `reserved`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressRule {
    /// Only addresses inside these (empty: every address).
    pub cidrs: Vec<IpNet>,
    /// The addresses of the uplink devices (`--devices`).
    pub uplinks: Vec<IpAddr>,
    /// NodePorts also on `127.0.0.1` and `::1`, for the node's own processes (served by the
    /// socket hooks: loopback traffic meets no TC program), as kube-proxy's localhost
    /// NodePorts; inside `cidrs` like every other address, and for a family with a node
    /// address only.
    pub localhost: bool,
    /// `--service-cidrs`: where cluster IPs are allocated.
    pub service_cidrs: Vec<IpNet>,
    /// `--allow-reserved-external-ips`: externalIPs may take the node's own addresses and
    /// addresses inside `service_cidrs`.
    pub allow_reserved_external_ips: bool,
}

impl AddressRule {
    /// `--nodeport-addresses` alone, no uplink addresses to fall back on.
    pub fn cidrs(cidrs: &[IpNet]) -> Self {
        Self {
            cidrs: cidrs.to_vec(),
            ..Self::default()
        }
    }

    fn wanted(&self, ip: &IpAddr) -> bool {
        self.cidrs.is_empty() || self.cidrs.iter().any(|net| net.contains(ip))
    }
}

/// The node the plan is computed for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// `topology.kubernetes.io/zone` of its Node object.
    pub zone: Option<String>,
    /// Addresses NodePort frontends are served on.
    pub nodeport_addresses: Vec<IpAddr>,
    /// Where each family's NodePort addresses came from, e.g. `IPv4: the Node object`,
    /// `IPv6: the uplinks (no Node object)`, `IPv6: none`.
    pub nodeport_origin: Vec<String>,
    /// The ranges externalIPs may not take.
    pub reserved: Vec<Reserved>,
}

impl NodeInfo {
    /// The NodePort addresses and where each family's came from: `172.31.0.11 (IPv4: the
    /// Node object; IPv6: none)`.
    pub fn nodeport_summary(&self) -> String {
        let addresses = if self.nodeport_addresses.is_empty() {
            "none".to_owned()
        } else {
            self.nodeport_addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!("{addresses} ({})", self.nodeport_origin.join("; "))
    }

    /// The families (`IPv4`, `IPv6`) with no NodePort address.
    pub fn nodeport_gaps(&self) -> Vec<&'static str> {
        [Family::V4, Family::V6]
            .into_iter()
            .filter(|f| !self.nodeport_addresses.iter().any(|a| f.has(a)))
            .map(Family::name)
            .collect()
    }

    /// A node known only by name: no zone, no NodePort addresses, only the special ranges
    /// reserved.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            reserved: reserved(&AddressRule::default(), &[]),
            ..Self::default()
        }
    }

    /// Builds the node from its Node object (`None` when the source has none). NodePorts are
    /// served on the node's InternalIP and ExternalIP addresses inside `--nodeport-addresses`
    /// (all of them when it is not given); for a family where that leaves none (or without a
    /// Node object), on the uplinks' addresses inside it.
    /// `others` are the other nodes' addresses (see [`other_node_addresses`]), which with
    /// this node's own make the reserved ranges.
    pub fn from_node(
        name: &str,
        node: Option<&Node>,
        others: &[(IpAddr, String)],
        rule: &AddressRule,
    ) -> (Self, Vec<Diagnostic>) {
        let mut info = Self::named(name);
        let (listed, diags) = node.map(|n| node_addresses(name, n)).unwrap_or_default();
        info.zone = node
            .and_then(|n| n.metadata.labels.as_ref())
            .and_then(|labels| labels.get(ZONE_LABEL))
            .cloned();
        for family in [Family::V4, Family::V6] {
            let of = |addresses: &[IpAddr]| -> Vec<IpAddr> {
                addresses
                    .iter()
                    .filter(|a| family.has(a) && rule.wanted(a))
                    .copied()
                    .collect()
            };
            let of_node = of(&listed);
            let (served, origin) = if !of_node.is_empty() {
                (of_node, "the Node object")
            } else if node.is_none() {
                (of(&rule.uplinks), "the uplinks (no Node object)")
            } else {
                (of(&rule.uplinks), "the uplinks (none of the Node object's)")
            };
            info.nodeport_origin.push(if served.is_empty() {
                format!("{}: none", family.name())
            } else {
                format!("{}: {origin}", family.name())
            });
            let loopback = family.loopback();
            if rule.localhost && !served.is_empty() && rule.wanted(&loopback) {
                info.nodeport_addresses.push(loopback);
            }
            info.nodeport_addresses.extend(served);
        }
        info.nodeport_addresses.sort();
        info.nodeport_addresses.dedup();
        let own = listed
            .iter()
            .chain(&rule.uplinks)
            .map(|a| (*a, name.to_owned()));
        let nodes: Vec<(IpAddr, String)> = own.chain(others.iter().cloned()).collect();
        info.reserved = reserved(rule, &nodes);
        (info, diags)
    }
}

/// The InternalIP and ExternalIP addresses of every Node object but `name`'s, each with its
/// node's name (those that do not parse are left out: their own agents report them).
pub fn other_node_addresses(
    name: &str,
    nodes: &[impl std::borrow::Borrow<Node>],
) -> Vec<(IpAddr, String)> {
    let mut out = Vec::new();
    for node in nodes.iter().map(std::borrow::Borrow::borrow) {
        let Some(other) = node.metadata.name.as_deref().filter(|n| *n != name) else {
            continue;
        };
        let (addresses, _) = node_addresses(other, node);
        out.extend(addresses.into_iter().map(|a| (a, other.to_owned())));
    }
    out.sort();
    out
}

/// The InternalIP and ExternalIP addresses of a Node object, each once; those that do not
/// parse are reported.
fn node_addresses(name: &str, node: &Node) -> (Vec<IpAddr>, Vec<Diagnostic>) {
    let mut out = Vec::new();
    let mut diags = Vec::new();
    let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    for address in addresses.into_iter().flatten() {
        if address.type_ != "InternalIP" && address.type_ != "ExternalIP" {
            continue;
        }
        match address.address.parse::<IpAddr>() {
            Ok(ip) if !out.contains(&ip) => out.push(ip),
            Ok(_) => {}
            Err(_) => diags.push(Diagnostic::new(
                format!("Node {name}"),
                format!("address {:?} is not an IP address", address.address),
            )),
        }
    }
    (out, diags)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};

    use super::*;

    fn node_with(addresses: &[&str]) -> Node {
        Node {
            status: Some(NodeStatus {
                addresses: Some(
                    addresses
                        .iter()
                        .map(|a| NodeAddress {
                            type_: "InternalIP".into(),
                            address: (*a).into(),
                        })
                        .collect(),
                ),
                ..NodeStatus::default()
            }),
            ..Node::default()
        }
    }

    fn rule(cidrs: &[&str], uplinks: &[&str]) -> AddressRule {
        AddressRule {
            cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            uplinks: uplinks.iter().map(|a| a.parse().unwrap()).collect(),
            ..AddressRule::default()
        }
    }

    fn with_localhost(rule: AddressRule) -> AddressRule {
        AddressRule {
            localhost: true,
            ..rule
        }
    }

    #[test]
    fn a_node_is_eligible_unless_gone_deleted_or_tainted_for_deletion() {
        use k8s_openapi::{
            api::core::v1::{NodeSpec, Taint},
            apimachinery::pkg::apis::meta::v1::Time,
        };
        let tainted = |key: &str| Node {
            spec: Some(NodeSpec {
                taints: Some(vec![Taint {
                    key: key.into(),
                    effect: "NoSchedule".into(),
                    ..Taint::default()
                }]),
                ..NodeSpec::default()
            }),
            ..Node::default()
        };
        let mut deleting = Node::default();
        deleting.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        assert_eq!(eligibility(Some(&Node::default()), true), Ok(()));
        assert_eq!(
            eligibility(Some(&tainted("node.kubernetes.io/unschedulable")), true),
            Ok(())
        );
        assert_eq!(eligibility(None, false), Ok(()), "never had a Node object");
        assert_eq!(
            eligibility(None, true),
            Err("its Node object is gone".to_owned())
        );
        assert_eq!(
            eligibility(Some(&tainted(TO_BE_DELETED_TAINT)), true),
            Err("its Node object carries the ToBeDeletedByClusterAutoscaler taint".to_owned())
        );
        assert_eq!(
            eligibility(Some(&deleting), true),
            Err("its Node object is being deleted".to_owned())
        );
    }

    #[test]
    fn node_port_addresses_and_where_they_came_from() {
        let uplinks = ["172.31.0.11", "fd00:31::11"];
        let v4_node = node_with(&["10.0.0.5"]);
        let cases: [(&str, Option<&Node>, AddressRule, &str); 8] = [
            (
                "no Node object: both families from the uplinks",
                None,
                rule(&[], &uplinks),
                "172.31.0.11, fd00:31::11 (IPv4: the uplinks (no Node object); IPv6: the uplinks (no Node object))",
            ),
            (
                "the Node object gives IPv4 only: IPv6 from the uplinks",
                Some(&v4_node),
                rule(&[], &uplinks),
                "10.0.0.5, fd00:31::11 (IPv4: the Node object; IPv6: the uplinks (none of the Node object's))",
            ),
            (
                "--nodeport-addresses filters the uplinks' addresses too",
                None,
                rule(&["172.31.0.0/24"], &uplinks),
                "172.31.0.11 (IPv4: the uplinks (no Node object); IPv6: none)",
            ),
            (
                "nothing anywhere",
                None,
                rule(&[], &[]),
                "none (IPv4: none; IPv6: none)",
            ),
            (
                "the Node object's addresses all outside --nodeport-addresses: the uplinks' inside",
                Some(&v4_node),
                rule(&["172.31.0.0/24"], &["172.31.0.11"]),
                "172.31.0.11 (IPv4: the uplinks (none of the Node object's); IPv6: none)",
            ),
            (
                "localhost NodePorts: the loopback address of each family served",
                Some(&v4_node),
                with_localhost(rule(&[], &uplinks)),
                "10.0.0.5, 127.0.0.1, ::1, fd00:31::11 (IPv4: the Node object; IPv6: the uplinks (none of the Node object's))",
            ),
            (
                "localhost NodePorts only for a family with a node address",
                None,
                with_localhost(rule(&["172.31.0.0/24", "127.0.0.0/8", "::1/128"], &uplinks)),
                "127.0.0.1, 172.31.0.11 (IPv4: the uplinks (no Node object); IPv6: none)",
            ),
            (
                "localhost NodePorts inside --nodeport-addresses only",
                None,
                with_localhost(rule(&["172.31.0.0/24"], &uplinks)),
                "172.31.0.11 (IPv4: the uplinks (no Node object); IPv6: none)",
            ),
        ];
        for (what, node, rule, want) in cases {
            let (info, diags) = NodeInfo::from_node("n1", node, &[], &rule);
            assert!(diags.is_empty(), "{what}: {diags:?}");
            assert_eq!(info.nodeport_summary(), want, "{what}");
        }
    }
}
