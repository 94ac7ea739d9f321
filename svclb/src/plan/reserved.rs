//! Addresses an externalIP may not take. `spec.externalIPs` is written by whoever may create
//! a Service, and a frontend on an address captures that address's traffic from every pod and
//! (through the socket hooks) from the node's own processes (CVE-2020-8554). So an externalIP
//! is refused when it is:
//! - special: unspecified, loopback, link-local (the cloud metadata service's
//!   `169.254.169.254`), multicast or broadcast. Never served: the API server refuses these
//!   too, and a manifests source does not check them;
//! - inside a service CIDR (`--service-cidrs`), where the API server allocates cluster IPs;
//! - an address of a node (any Node object's, this node's uplinks'), whose kubelet and host
//!   services it would capture.
//!
//! The last two are served when `--allow-reserved-external-ips` says so. (So every Node object
//! is watched, cut down to what the plan reads.) A cluster IP already
//! allocated always wins a conflict with an externalIP anyway (see `claims`).

use std::net::IpAddr;

use ipnet::IpNet;

use super::{AddressRule, Diagnostic, Kind, NodeInfo};

/// A range externalIPs may not take, and what it is, for the diagnostic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reserved {
    pub net: IpNet,
    pub what: String,
    /// `--allow-reserved-external-ips` does not open it.
    pub always: bool,
}

const SPECIAL: [(&str, &str); 9] = [
    ("0.0.0.0/8", "unspecified"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
];

/// The reserved ranges, with `nodes` the addresses of every node (this one's and the
/// others'), each with its node's name.
pub(super) fn reserved(rule: &AddressRule, nodes: &[(IpAddr, String)]) -> Vec<Reserved> {
    let special = SPECIAL.iter().map(|(net, what)| Reserved {
        net: net.parse().expect("a valid CIDR"),
        what: format!("a {what} address"),
        always: true,
    });
    let cidrs = rule.service_cidrs.iter().map(|net| Reserved {
        net: *net,
        what: format!("inside the service CIDR {net}"),
        always: false,
    });
    let nodes = nodes.iter().map(|(addr, node)| Reserved {
        net: IpNet::from(*addr),
        what: format!("an address of node {node}"),
        always: false,
    });
    special
        .chain(cidrs)
        .chain(nodes)
        .filter(|r| r.always || !rule.allow_reserved_external_ips)
        .collect()
}

/// `ips` (a Service's externalIPs) without the reserved ones, each of which is reported.
pub(super) fn refuse_reserved(
    object: &str,
    node: &NodeInfo,
    ips: Vec<IpAddr>,
    diags: &mut Vec<Diagnostic>,
) -> Vec<IpAddr> {
    ips.into_iter()
        .filter(|ip| {
            let Some(range) = node.reserved.iter().find(|r| r.net.contains(ip)) else {
                return true;
            };
            let unless = if range.always {
                ""
            } else {
                " (--allow-reserved-external-ips serves it)"
            };
            diags.push(
                Diagnostic::new(
                    object,
                    format!("externalIP {ip} is {}: not served{unless}", range.what),
                )
                .of(Kind::Reserved),
            );
            false
        })
        .collect()
}
