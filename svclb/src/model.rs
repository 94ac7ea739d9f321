//! Kubernetes objects -> [`Plan`]: a pure function, the same for every source.
//!
//! This covers ClusterIP services served from EndpointSlices. Endpoint conditions follow
//! kube-proxy: a nil `ready`/`serving` is true, a nil `terminating` false; ready endpoints
//! serve, and only when none is ready do serving+terminating ones take over.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr},
};

use k8s_openapi::{
    api::{core::v1::Service, discovery::v1::EndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use crate::{
    diag::Diagnostic,
    plan::{Frontend, FrontendKey, FrontendKind, Plan, PlanBackend, Protocol, WhenEmpty},
};

/// The label joining an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The node the plan is computed for.
#[derive(Clone, Debug, Default)]
pub struct NodeInfo {
    pub name: String,
}

/// Computes the plan for `node`. Objects that cannot be served are reported and skipped;
/// everything else is planned. The result does not depend on the order of the inputs.
pub fn plan(
    node: &NodeInfo,
    services: &[Service],
    slices: &[EndpointSlice],
) -> (Plan, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let slices_by_service = index_slices(slices);

    let mut ordered: Vec<&Service> = services.iter().collect();
    ordered.sort_by_key(|svc| object_name(&svc.metadata));

    let mut plan = Plan::default();
    for svc in ordered {
        let name = object_name(&svc.metadata);
        let key = (
            namespace_of(&svc.metadata).to_owned(),
            svc.metadata.name.clone().unwrap_or_default(),
        );
        let svc_slices = slices_by_service
            .get(&key)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for (frontend_key, frontend) in service_frontends(node, &name, svc, svc_slices, &mut diags)
        {
            match plan.frontends.get(&frontend_key) {
                Some(existing) => diags.push(Diagnostic::new(
                    format!("Service {name}"),
                    format!(
                        "frontend {frontend_key} is already served by Service {}; skipped",
                        existing.service
                    ),
                )),
                None => {
                    plan.frontends.insert(frontend_key, frontend);
                }
            }
        }
    }
    diags.sort();
    diags.dedup();
    (plan, diags)
}

/// The namespace of an object; a manifest without one means `default`, as kubectl has it.
fn namespace_of(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

/// `namespace/name`.
fn object_name(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        namespace_of(meta),
        meta.name.as_deref().unwrap_or("")
    )
}

fn index_slices(slices: &[EndpointSlice]) -> HashMap<(String, String), Vec<&EndpointSlice>> {
    let mut index: HashMap<(String, String), Vec<&EndpointSlice>> = HashMap::new();
    for slice in slices {
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        let namespace = namespace_of(&slice.metadata).to_owned();
        index
            .entry((namespace, service.clone()))
            .or_default()
            .push(slice);
    }
    index
}

fn service_frontends(
    node: &NodeInfo,
    name: &str,
    svc: &Service,
    slices: &[&EndpointSlice],
    diags: &mut Vec<Diagnostic>,
) -> Vec<(FrontendKey, Frontend)> {
    let object = format!("Service {name}");
    let Some(spec) = &svc.spec else {
        diags.push(Diagnostic::new(object, "has no spec"));
        return Vec::new();
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    let cluster_ips: Vec<&str> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        (_, Some(ip)) => vec![ip.as_str()],
        _ => Vec::new(),
    };
    // Headless (or not yet allocated): nothing for the datapath.
    if cluster_ips.is_empty() || cluster_ips.iter().any(|ip| *ip == "None" || ip.is_empty()) {
        return Vec::new();
    }
    let mut addresses = Vec::new();
    for ip in cluster_ips {
        match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(addr)) => addresses.push(IpAddr::V4(addr)),
            Ok(IpAddr::V6(addr)) => diags.push(Diagnostic::new(
                &object,
                format!("clusterIP {addr} skipped: IPv6 is not supported yet"),
            )),
            Err(_) => diags.push(Diagnostic::new(
                &object,
                format!("clusterIP {ip:?} is not an IP address"),
            )),
        }
    }

    let mut frontends = Vec::new();
    for port in spec.ports.iter().flatten() {
        let port_name = port.name.clone().unwrap_or_default();
        let protocol = match Protocol::from_k8s(port.protocol.as_deref()) {
            Ok(Protocol::Sctp) => {
                diags.push(Diagnostic::new(
                    &object,
                    format!("port {port_name:?}: SCTP is not supported by the datapath yet"),
                ));
                continue;
            }
            Ok(protocol) => protocol,
            Err(reason) => {
                diags.push(Diagnostic::new(
                    &object,
                    format!("port {port_name:?}: {reason}"),
                ));
                continue;
            }
        };
        let Some(number) = valid_port(port.port) else {
            diags.push(Diagnostic::new(
                &object,
                format!(
                    "port {port_name:?}: {} is not a port number (1-65535)",
                    port.port
                ),
            ));
            continue;
        };
        let backends = endpoints_for_port(node, &port_name, protocol, slices, diags);
        for address in &addresses {
            frontends.push((
                FrontendKey {
                    address: *address,
                    port: number,
                    protocol,
                },
                Frontend {
                    service: name.to_owned(),
                    port_name: port_name.clone(),
                    kind: FrontendKind::ClusterIP,
                    backends: backends.clone(),
                    when_empty: WhenEmpty::Reject,
                },
            ));
        }
    }
    frontends
}

fn valid_port(port: i32) -> Option<u16> {
    u16::try_from(port).ok().filter(|p| *p != 0)
}

/// The backends of one service port: ready endpoints, or serving+terminating ones when none is
/// ready. The same ip:port in several slices counts once, the non-terminating copy winning.
fn endpoints_for_port(
    node: &NodeInfo,
    port_name: &str,
    protocol: Protocol,
    slices: &[&EndpointSlice],
    diags: &mut Vec<Diagnostic>,
) -> Vec<PlanBackend> {
    struct Candidate {
        backend: PlanBackend,
        ready: bool,
        serving: bool,
    }
    let mut by_addr: BTreeMap<(Ipv4Addr, u16), Candidate> = BTreeMap::new();

    for slice in slices {
        if slice.address_type != "IPv4" {
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
            let Ok(addr) = first.parse::<Ipv4Addr>() else {
                diags.push(Diagnostic::new(
                    &object,
                    format!("endpoint address {first:?} is not an IPv4 address"),
                ));
                continue;
            };
            let conditions = endpoint.conditions.as_ref();
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let serving = conditions.and_then(|c| c.serving).unwrap_or(true);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            let candidate = Candidate {
                backend: PlanBackend {
                    address: IpAddr::V4(addr),
                    port: number,
                    node: endpoint.node_name.clone(),
                    local: endpoint.node_name.as_deref() == Some(node.name.as_str()),
                    terminating,
                },
                ready,
                serving,
            };
            // Of several copies of one ip:port, the non-terminating one wins, then the ready,
            // then the serving one; the node name breaks ties so the order of slices never
            // matters.
            let rank = |c: &Candidate| {
                (
                    !c.backend.terminating,
                    c.ready,
                    c.serving,
                    c.backend.node.clone(),
                )
            };
            match by_addr.get(&(addr, number)) {
                Some(existing) if rank(existing) >= rank(&candidate) => {}
                _ => {
                    by_addr.insert((addr, number), candidate);
                }
            }
        }
    }

    let ready: Vec<PlanBackend> = by_addr
        .values()
        .filter(|c| c.ready)
        .map(|c| c.backend.clone())
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    by_addr
        .into_values()
        .filter(|c| c.serving && c.backend.terminating)
        .map(|c| c.backend)
        .collect()
}

#[cfg(test)]
#[path = "tests/model_tests.rs"]
mod tests;
