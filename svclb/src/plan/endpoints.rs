//! Endpoint selection for one service port, as kube-proxy does it.
//!
//! Conditions: a nil `ready`/`serving` is true, a nil `terminating` false. Only `addresses[0]`
//! counts. The same ip:port in several slices counts once (see [`Candidate::rank`]).
//! Ports without a name field or a number are skipped, as are slices of another address family
//! (IPv6 slices serve only IPv6 frontends, IPv4 slices only IPv4 ones) and FQDN slices.
//!
//! Topology, for the Cluster-policy set only, as kube-proxy's `topologyModeFromHints`: of the
//! ready endpoints, if every one has a node hint and one names this node, those serve; else if
//! every one has a zone hint and one names this node's zone, those serve; else no filtering.
//! One unhinted endpoint disables its level. The fallback to serving-terminating endpoints
//! ignores topology.

use std::{collections::BTreeMap, fmt, net::IpAddr};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Serialize;

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
    /// Nodes named by the endpoint's hints (`hints.forNodes`; `None`: none).
    pub node_hints: Option<Vec<String>>,
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
        // `endpoints` is optional from the 1.34 API on: none listed is an empty slice.
        for endpoint in slice.endpoints.iter().flatten() {
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
                node_hints: endpoint
                    .hints
                    .as_ref()
                    .and_then(|h| h.for_nodes.as_ref())
                    .map(|nodes| nodes.iter().map(|n| n.name.clone()).collect()),
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

/// Which topology level chose a Cluster-policy endpoint set, and why (what `svclb plan`
/// says of each frontend).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "level", rename_all = "snake_case")]
pub enum Topology {
    /// No ready endpoint carries hints (or the frontend has none to filter).
    #[default]
    None,
    /// Node hints: `serving` of the `ready` ready endpoints are hinted for this node.
    Node { serving: usize, ready: usize },
    /// Zone hints: `serving` of the `ready` ready endpoints are hinted for `zone`.
    Zone {
        zone: String,
        serving: usize,
        ready: usize,
    },
    /// Hints were there but no level applied; `reason` says why.
    Ignored { reason: String },
    /// No ready endpoint: the serving-terminating fallback, which ignores topology.
    Terminating,
    /// A Local policy: this node's endpoints, topology never applies.
    Local,
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => Ok(()),
            Self::Node { serving, ready } => {
                write!(
                    f,
                    "node hints: {serving} of {ready} endpoints for this node"
                )
            }
            Self::Zone {
                zone,
                serving,
                ready,
            } => write!(
                f,
                "zone hints: {serving} of {ready} endpoints for zone {zone}"
            ),
            Self::Ignored { reason } => f.write_str(reason),
            Self::Terminating => f.write_str("no ready endpoint: terminating ones, no topology"),
            Self::Local => f.write_str("Local policy: this node's endpoints, no topology"),
        }
    }
}

/// How many ready endpoints carry a hint of one level, and how many name this node (or zone).
#[derive(Default)]
struct HintCount {
    ready: usize,
    unhinted: usize,
    matching: usize,
}

impl HintCount {
    /// Counts `hints` of the ready `candidates` against `name`.
    fn of<'a>(
        candidates: &'a [Candidate],
        hints: impl Fn(&'a Candidate) -> Option<&'a Vec<String>>,
        name: Option<&str>,
    ) -> Self {
        let mut count = Self::default();
        for c in candidates.iter().filter(|c| c.ready) {
            count.ready += 1;
            match hints(c) {
                Some(h) if !h.is_empty() => {
                    if name.is_some_and(|n| h.iter().any(|x| x == n)) {
                        count.matching += 1;
                    }
                }
                _ => count.unhinted += 1,
            }
        }
        count
    }

    fn any_hinted(&self) -> bool {
        self.unhinted < self.ready
    }

    /// Why a level with hints on some endpoints did not apply.
    fn ignored(&self, level: &str, wanted: &str) -> String {
        match self.unhinted {
            0 => format!("{level} hints ignored: none for {wanted}"),
            1 => format!("{level} hints ignored: 1 endpoint unhinted"),
            n => format!("{level} hints ignored: {n} endpoints unhinted"),
        }
    }
}

/// The topology level for the ready `candidates` on `node` (kube-proxy's rule, above).
pub fn topology(candidates: &[Candidate], node: &NodeInfo) -> Topology {
    let nodes = HintCount::of(candidates, |c| c.node_hints.as_ref(), Some(&node.name));
    let zone = node.zone.as_deref();
    let zones = HintCount::of(candidates, |c| c.zone_hints.as_ref(), zone);
    if nodes.ready > 0 && nodes.unhinted == 0 && nodes.matching > 0 {
        return Topology::Node {
            serving: nodes.matching,
            ready: nodes.ready,
        };
    }
    if let Some(zone) = zone
        && zones.ready > 0
        && zones.unhinted == 0
        && zones.matching > 0
    {
        return Topology::Zone {
            zone: zone.to_owned(),
            serving: zones.matching,
            ready: zones.ready,
        };
    }
    let mut reasons = Vec::new();
    if nodes.any_hinted() {
        reasons.push(nodes.ignored("node", "this node"));
    }
    if zones.any_hinted() {
        reasons.push(match zone {
            Some(zone) if zones.unhinted == 0 => zones.ignored("zone", &format!("zone {zone}")),
            None if zones.unhinted == 0 => "zone hints ignored: this node has no zone".to_owned(),
            _ => zones.ignored("zone", "this zone"),
        });
    }
    if reasons.is_empty() {
        Topology::None
    } else {
        Topology::Ignored {
            reason: reasons.join("; "),
        }
    }
}

/// Whether a ready endpoint serves under `topology`.
fn available(candidate: &Candidate, topology: &Topology, node: &NodeInfo) -> bool {
    let named = |hints: &Option<Vec<String>>, name: &str| {
        hints.as_ref().is_some_and(|h| h.iter().any(|x| x == name))
    };
    match topology {
        Topology::Node { .. } => named(&candidate.node_hints, &node.name),
        Topology::Zone { zone, .. } => named(&candidate.zone_hints, zone),
        _ => true,
    }
}

/// The endpoint sets of one service port.
pub struct Categorized {
    /// For `Cluster` policies: every usable endpoint, topology-filtered when hints apply.
    pub cluster: Vec<PlanBackend>,
    /// Which topology level chose `cluster`, and why.
    pub topology: Topology,
    /// For `Local` policies: this node's usable endpoints.
    pub local: Vec<PlanBackend>,
    /// Whether any endpoint anywhere is usable (else new connections are rejected).
    pub any_usable: bool,
    /// This node's ready endpoints (what a health check reports).
    pub local_ready: usize,
}

pub fn categorize(candidates: &[Candidate], node: &NodeInfo) -> Categorized {
    let all = usable(candidates.iter());
    let any_ready = candidates.iter().any(|c| c.ready);
    let topology = if any_ready {
        topology(candidates, node)
    } else if all.is_empty() {
        Topology::None
    } else {
        Topology::Terminating
    };
    let cluster = candidates
        .iter()
        .filter(|c| c.ready && available(c, &topology, node))
        .map(|c| c.backend.clone())
        .collect();
    Categorized {
        cluster: if any_ready { cluster } else { all.clone() },
        topology,
        local: usable(candidates.iter().filter(|c| c.backend.local)),
        any_usable: !all.is_empty(),
        local_ready: candidates
            .iter()
            .filter(|c| c.ready && c.backend.local)
            .count(),
    }
}
