//! Endpoint selection for one service port, as kube-proxy does it.
//!
//! Conditions: a nil `ready`/`serving` is true, a nil `terminating` false. Only `addresses[0]`
//! counts. The same ip:port in several slices counts once (see [`Candidate::rank`]).
//! Ports without a name field or a number are skipped, as are slices of another address family
//! (IPv6 slices serve only IPv6 frontends, IPv4 slices only IPv4 ones) and FQDN slices.

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{
    Diagnostic, Family, NodeInfo, PlanBackend, Protocol,
    fields::{object_name, valid_port},
};

/// One endpoint of a service port, with what selection needs to know of it.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub backend: PlanBackend,
    pub ready: bool,
    pub serving: bool,
    /// Zones named by the endpoint's hints (`None`: no hints).
    pub zone_hints: Option<Vec<String>>,
}

impl Candidate {
    /// Of several copies of one ip:port the highest rank wins: not terminating, then on this
    /// node (kube-proxy keeps the local copy), then ready, then serving; the node name breaks
    /// ties, so the order of slices never matters.
    fn rank(&self) -> (bool, bool, bool, bool, Option<String>) {
        (
            !self.backend.terminating,
            self.backend.local,
            self.ready,
            self.serving,
            self.backend.node.clone(),
        )
    }
}

/// The endpoints of service port `port_name`/`protocol` across the `slices` of `family`
/// (`addressType` IPv4 or IPv6), one per ip:port.
pub fn candidates(
    port_name: &str,
    protocol: Protocol,
    family: Family,
    slices: &[&EndpointSlice],
    diags: &mut Vec<Diagnostic>,
    node: &NodeInfo,
) -> Vec<Candidate> {
    let mut by_addr: BTreeMap<(IpAddr, u16), Candidate> = BTreeMap::new();
    for slice in slices {
        if slice.address_type != family.name() {
            continue;
        }
        let object = format!("EndpointSlice {}", object_name(&slice.metadata));
        let Some(slice_port) = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref() == Some(port_name)
                && Protocol::from_k8s(p.protocol.as_deref()) == Ok(protocol)
        }) else {
            continue;
        };
        let Some(number) = slice_port.port else {
            continue;
        };
        let Some(number) = valid_port(number) else {
            diags.push(Diagnostic::new(
                &object,
                format!("port {port_name:?}: {number} is not a port number (1-65535)"),
            ));
            continue;
        };
        for endpoint in &slice.endpoints {
            let Some(first) = endpoint.addresses.first() else {
                continue;
            };
            let addr = match first.parse::<IpAddr>() {
                Ok(addr) if family.has(&addr) => addr,
                _ => {
                    diags.push(Diagnostic::new(
                        &object,
                        format!(
                            "endpoint address {first:?} is not an {} address",
                            family.name()
                        ),
                    ));
                    continue;
                }
            };
            let conditions = endpoint.conditions.as_ref();
            let candidate = Candidate {
                backend: PlanBackend {
                    address: addr,
                    port: number,
                    node: endpoint.node_name.clone(),
                    local: endpoint.node_name.as_deref() == Some(node.name.as_str()),
                    terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
                },
                ready: conditions.and_then(|c| c.ready).unwrap_or(true),
                serving: conditions.and_then(|c| c.serving).unwrap_or(true),
                zone_hints: endpoint
                    .hints
                    .as_ref()
                    .and_then(|h| h.for_zones.as_ref())
                    .map(|zones| zones.iter().map(|z| z.name.clone()).collect()),
            };
            match by_addr.get(&(addr, number)) {
                Some(existing) if existing.rank() >= candidate.rank() => {}
                _ => {
                    by_addr.insert((addr, number), candidate);
                }
            }
        }
    }
    by_addr.into_values().collect()
}

/// Ready endpoints if there are any, else the serving and terminating ones.
fn usable<'a>(endpoints: impl Iterator<Item = &'a Candidate> + Clone) -> Vec<PlanBackend> {
    let ready: Vec<PlanBackend> = endpoints
        .clone()
        .filter(|c| c.ready)
        .map(|c| c.backend.clone())
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    endpoints
        .filter(|c| c.serving && c.backend.terminating)
        .map(|c| c.backend.clone())
        .collect()
}

/// Zone hints apply only when this node has a zone, every ready endpoint carries hints, and at
/// least one hint names this node's zone.
fn topology_applies(candidates: &[Candidate], zone: Option<&str>) -> bool {
    let Some(zone) = zone else {
        return false;
    };
    let mut names_zone = false;
    for c in candidates.iter().filter(|c| c.ready) {
        match &c.zone_hints {
            Some(hints) if !hints.is_empty() => names_zone |= hints.iter().any(|h| h == zone),
            _ => return false,
        }
    }
    names_zone
}

/// The endpoint sets of one service port.
pub struct Categorized {
    /// For `Cluster` policies: every usable endpoint, zone-filtered when hints apply.
    pub cluster: Vec<PlanBackend>,
    /// For `Local` policies: this node's usable endpoints.
    pub local: Vec<PlanBackend>,
    /// Whether any endpoint anywhere is usable (else new connections are rejected).
    pub any_usable: bool,
    /// This node's ready endpoints (what a health check reports).
    pub local_ready: usize,
}

pub fn categorize(candidates: &[Candidate], zone: Option<&str>) -> Categorized {
    let all = usable(candidates.iter());
    let cluster = if topology_applies(candidates, zone) {
        let zone = zone.unwrap_or_default();
        let in_zone: Vec<PlanBackend> = candidates
            .iter()
            .filter(|c| {
                c.ready
                    && c.zone_hints
                        .as_ref()
                        .is_some_and(|h| h.iter().any(|z| z == zone))
            })
            .map(|c| c.backend.clone())
            .collect();
        in_zone
    } else {
        all.clone()
    };
    Categorized {
        cluster,
        local: usable(candidates.iter().filter(|c| c.backend.local)),
        any_usable: !all.is_empty(),
        local_ready: candidates
            .iter()
            .filter(|c| c.ready && c.backend.local)
            .count(),
    }
}
