//! The plan: every frontend this node serves, each with its backend set. A plan is computed
//! from Kubernetes objects by [`super::builder`] (or kept current by [`super::Planner`]) and
//! turned into map entries by the next stage; it never touches the kernel.

use std::{collections::BTreeMap, fmt, net::IpAddr};

use ipnet::IpNet;
use serde::Serialize;

use super::endpoints::Topology;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Parses a Kubernetes protocol field; absent means TCP.
    pub fn from_k8s(value: Option<&str>) -> Result<Self, String> {
        match value {
            None | Some("TCP") => Ok(Self::Tcp),
            Some("UDP") => Ok(Self::Udp),
            Some("SCTP") => Ok(Self::Sctp),
            Some(other) => Err(format!("unknown protocol {other:?}")),
        }
    }

    /// The IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => svclb_common::IPPROTO_TCP,
            Self::Udp => svclb_common::IPPROTO_UDP,
            Self::Sctp => svclb_common::IPPROTO_SCTP,
        }
    }

    pub const fn from_number(number: u8) -> Option<Self> {
        match number {
            svclb_common::IPPROTO_TCP => Some(Self::Tcp),
            svclb_common::IPPROTO_UDP => Some(Self::Udp),
            svclb_common::IPPROTO_SCTP => Some(Self::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        })
    }
}

/// Where a frontend is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum FrontendKind {
    ClusterIP,
    NodePort,
    LoadBalancer,
    ExternalIP,
}

impl fmt::Display for FrontendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
            Self::ExternalIP => "ExternalIP",
        })
    }
}

/// Who a frontend entry serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Traffic from inside the cluster (pods).
    Internal,
    /// Traffic from outside the cluster.
    External,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Internal => "internal",
            Self::External => "external",
        })
    }
}

/// What happens to a new connection when the frontend has no backend to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenEmpty {
    /// No usable endpoint anywhere: refuse at once.
    Reject,
    /// A local traffic policy leaves this node without an endpoint: drop.
    Drop,
}

impl fmt::Display for WhenEmpty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Reject => "reject",
            Self::Drop => "drop",
        })
    }
}

/// Identity of a frontend entry in the datapath.
///
/// `internal_view` marks the second entry of an external frontend (NodePort, LoadBalancer,
/// ExternalIP) whose `externalTrafficPolicy` is Local: traffic from pods to that address gets
/// the internal endpoints (as kube-proxy short-circuits pod traffic), traffic from outside
/// gets the local ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct FrontendKey {
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub internal_view: bool,
}

impl FrontendKey {
    pub const fn new(address: IpAddr, port: u16, protocol: Protocol) -> Self {
        Self {
            address,
            port,
            protocol,
            internal_view: false,
        }
    }
}

impl fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.address {
            IpAddr::V4(addr) => write!(f, "{addr}:{}/{}", self.port, self.protocol)?,
            IpAddr::V6(addr) => write!(f, "[{addr}]:{}/{}", self.port, self.protocol)?,
        }
        if self.internal_view {
            f.write_str(" (internal view)")?;
        }
        Ok(())
    }
}

/// One endpoint a frontend can send to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PlanBackend {
    pub address: IpAddr,
    pub port: u16,
    /// The node the endpoint runs on, when the EndpointSlice says.
    pub node: Option<String>,
    /// Runs on this node.
    pub local: bool,
    pub terminating: bool,
}

impl PlanBackend {
    /// A serving endpoint on another node, or on none the slice names.
    pub fn remote(address: IpAddr, port: u16) -> Self {
        Self {
            address,
            port,
            node: None,
            local: false,
            terminating: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Frontend {
    /// `namespace/name` of the Service.
    pub service: String,
    /// Name of the service port ("" when unnamed).
    pub port_name: String,
    pub kind: FrontendKind,
    pub scope: Scope,
    /// Backends sorted by address and port, each once.
    pub backends: Vec<PlanBackend>,
    /// Which topology level chose the backends, and why.
    pub topology: Topology,
    pub when_empty: WhenEmpty,
    /// `sessionAffinity: ClientIP` timeout; 0 without affinity.
    pub affinity_timeout_seconds: u32,
    /// `loadBalancerSourceRanges` (LoadBalancer frontends only); empty means any source.
    pub source_ranges: Vec<IpNet>,
}

impl Frontend {
    /// A frontend of `service` on an unnamed port, without affinity or source ranges, that
    /// rejects when it has no backends.
    pub fn new(
        service: impl Into<String>,
        kind: FrontendKind,
        scope: Scope,
        backends: Vec<PlanBackend>,
    ) -> Self {
        Self {
            service: service.into(),
            port_name: String::new(),
            kind,
            scope,
            backends,
            topology: Topology::None,
            when_empty: WhenEmpty::Reject,
            affinity_timeout_seconds: 0,
            source_ranges: Vec::new(),
        }
    }
}

/// `healthCheckNodePort` of a LoadBalancer service with `externalTrafficPolicy: Local`: the
/// agent answers on it with this node's local endpoint count.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct HealthCheck {
    pub service: String,
    pub port: u16,
    pub local_endpoints: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub frontends: BTreeMap<FrontendKey, Frontend>,
    pub health_checks: Vec<HealthCheck>,
}
