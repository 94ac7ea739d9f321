//! The frontends of one family of a Service, port by port: the cluster IP, then the node
//! ports, LoadBalancer IPs and external IPs, each with the endpoint set its traffic policy
//! picks.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::{
    core::v1::{Service, ServicePort, ServiceSpec},
    discovery::v1::EndpointSlice,
};

use super::{
    Diagnostic, Family, Frontend, FrontendKey, FrontendKind, HealthCheck, NodeInfo, Protocol,
    Scope, WhenEmpty,
    endpoints::{self, Categorized, Topology},
    fields::{affinity_timeout, valid_port},
};

#[derive(Default)]
/// What planning one Service gives.
pub(super) struct PlannedService {
    pub(super) frontends: Vec<(FrontendKey, Frontend)>,
    pub(super) health_check: Option<HealthCheck>,
}

/// A Service being planned: what its families share.
#[derive(Clone, Copy)]
pub(super) struct ServiceCtx<'a> {
    pub(super) node: &'a NodeInfo,
    /// `namespace/name`.
    pub(super) name: &'a str,
    /// `Service namespace/name`, for diagnostics.
    pub(super) object: &'a str,
    pub(super) svc_type: &'a str,
    pub(super) svc: &'a Service,
    pub(super) spec: &'a ServiceSpec,
    pub(super) slices: &'a [&'a EndpointSlice],
}

/// What one family of a Service is served on.
pub(super) struct FamilyAddresses {
    pub(super) family: Family,
    pub(super) cluster_ip: IpAddr,
    pub(super) external_ips: Vec<IpAddr>,
    pub(super) lb_ips: Vec<IpAddr>,
    pub(super) source_ranges: Vec<IpNet>,
}

/// A port of the Service that the datapath can serve.
struct Port {
    name: String,
    protocol: Protocol,
    number: u16,
    node_port: Option<u16>,
}

/// Reads one entry of `spec.ports`; `None`, reported, when it cannot be served.
fn port_of(
    object: &str,
    svc_type: &str,
    port: &ServicePort,
    diags: &mut Vec<Diagnostic>,
) -> Option<Port> {
    let name = port.name.clone().unwrap_or_default();
    let mut report = |reason: String| {
        diags.push(Diagnostic::new(object, format!("port {name:?}: {reason}")));
    };
    let protocol = match Protocol::from_k8s(port.protocol.as_deref()) {
        Ok(Protocol::Sctp) => {
            report("SCTP is not supported by the datapath yet".to_owned());
            return None;
        }
        Ok(protocol) => protocol,
        Err(reason) => {
            report(reason);
            return None;
        }
    };
    let Some(number) = valid_port(port.port) else {
        report(format!("{} is not a port number (1-65535)", port.port));
        return None;
    };
    let node_port = match port.node_port {
        Some(p) if svc_type != "ClusterIP" => {
            let valid = valid_port(p);
            if valid.is_none() {
                report(format!("nodePort {p} is not a port number (1-65535)"));
            }
            valid
        }
        _ => None,
    };
    Some(Port {
        name,
        protocol,
        number,
        node_port,
    })
}

/// The external addresses of a port: (kind, address, port number).
fn external_addresses(
    node: &NodeInfo,
    addrs: &FamilyAddresses,
    port: &Port,
) -> Vec<(FrontendKind, IpAddr, u16)> {
    let mut out: Vec<(FrontendKind, IpAddr, u16)> = Vec::new();
    if let Some(node_port) = port.node_port {
        out.extend(
            node.nodeport_addresses
                .iter()
                .filter(|a| addrs.family.has(a))
                .map(|a| (FrontendKind::NodePort, *a, node_port)),
        );
    }
    out.extend(
        addrs
            .lb_ips
            .iter()
            .map(|a| (FrontendKind::LoadBalancer, *a, port.number)),
    );
    out.extend(
        addrs
            .external_ips
            .iter()
            .map(|a| (FrontendKind::ExternalIP, *a, port.number)),
    );
    out
}

/// The frontends of one family of a Service, on its ports.
pub(super) fn plan_family(
    ctx: &ServiceCtx<'_>,
    addrs: &FamilyAddresses,
    out: &mut PlannedService,
    diags: &mut Vec<Diagnostic>,
) {
    let affinity = affinity_timeout(ctx.object, ctx.svc, diags);
    for port in ctx.spec.ports.iter().flatten() {
        let Some(port) = port_of(ctx.object, ctx.svc_type, port, diags) else {
            continue;
        };
        let candidates = endpoints::candidates(
            &port.name,
            port.protocol,
            addrs.family,
            ctx.slices,
            diags,
            ctx.node,
        );
        let sets = endpoints::categorize(&candidates, ctx.node);
        plan_port(ctx, addrs, &port, &sets, affinity, out);
    }
}

/// The frontends of one port: its cluster IP with the internal policy's endpoints, its
/// external addresses with the external policy's, and the internal views and health check
/// of an external Local policy.
fn plan_port(
    ctx: &ServiceCtx<'_>,
    addrs: &FamilyAddresses,
    port: &Port,
    sets: &Categorized,
    affinity: u32,
    out: &mut PlannedService,
) {
    let external_local = ctx.spec.external_traffic_policy.as_deref() == Some("Local");
    let internal_local = ctx.spec.internal_traffic_policy.as_deref() == Some("Local");
    let when_empty = if sets.any_usable {
        WhenEmpty::Drop
    } else {
        WhenEmpty::Reject
    };
    // A frontend of a Local policy gets this node's endpoints; one of a Cluster policy the
    // topology-filtered set, saying which topology level chose it.
    let frontend = |kind: FrontendKind, scope: Scope, local: bool| {
        let (backends, topology) = if local {
            (&sets.local, Topology::Local)
        } else {
            (&sets.cluster, sets.topology.clone())
        };
        Frontend {
            service: ctx.name.to_owned(),
            port_name: port.name.clone(),
            kind,
            scope,
            backends: backends.clone(),
            topology,
            when_empty,
            affinity_timeout_seconds: affinity,
            source_ranges: if kind == FrontendKind::LoadBalancer {
                addrs.source_ranges.clone()
            } else {
                Vec::new()
            },
        }
    };

    let key = FrontendKey::new(addrs.cluster_ip, port.number, port.protocol);
    out.frontends.push((
        key,
        frontend(FrontendKind::ClusterIP, Scope::Internal, internal_local),
    ));
    for (kind, address, port_number) in external_addresses(ctx.node, addrs, port) {
        let key = FrontendKey::new(address, port_number, port.protocol);
        out.frontends
            .push((key, frontend(kind, Scope::External, external_local)));
        if external_local {
            // Pods reaching an external address are short-circuited to the cluster-wide
            // endpoints, as kube-proxy's pod-traffic rule for external destinations does;
            // internalTrafficPolicy does not apply there.
            let view = FrontendKey {
                internal_view: true,
                ..key
            };
            out.frontends
                .push((view, frontend(kind, Scope::Internal, false)));
        }
    }
    if ctx.svc_type == "LoadBalancer"
        && external_local
        && let Some(port) = ctx.spec.health_check_node_port.and_then(valid_port)
    {
        let local = out.health_check.as_ref().map_or(0, |h| h.local_endpoints);
        out.health_check = Some(HealthCheck {
            service: ctx.name.to_owned(),
            port,
            local_endpoints: local.max(sets.local_ready),
        });
    }
}
