//! Kubernetes objects -> [`Plan`]: a pure function, the same for every source.
//!
//! It follows kube-proxy's rules (brief section 3):
//! - Service types: ClusterIP on every cluster IP; NodePort on this node's NodePort addresses
//!   (NodePort and LoadBalancer services with a `nodePort`); LoadBalancer on
//!   `status.loadBalancer.ingress[].ip` (not those with `ipMode: Proxy`); `externalIPs`.
//!   ExternalName and headless services get nothing.
//! - Endpoints: see [`endpoints`]. Internal traffic uses the `internalTrafficPolicy` set,
//!   external traffic the `externalTrafficPolicy` set; Cluster sets honour zone hints.
//! - A frontend without endpoints rejects when the port has no usable endpoint anywhere and
//!   drops when a Local policy leaves this node without one.
//! - `sessionAffinity: ClientIP` (timeout default 10800 s, at most 86400 s),
//!   `loadBalancerSourceRanges` on LoadBalancer frontends, `healthCheckNodePort`.

mod endpoints;
mod incremental;
mod node;

use std::{borrow::Borrow, collections::HashMap, net::IpAddr};

pub use incremental::Planner;
use ipnet::IpNet;
use k8s_openapi::{
    api::{
        core::v1::{Node, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
pub use node::{NodeInfo, ZONE_LABEL};

use crate::{
    diag::Diagnostic,
    plan::{
        Frontend, FrontendKey, FrontendKind, HealthCheck, Plan, PlanBackend, Protocol, Scope,
        WhenEmpty,
    },
};

/// The label joining an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset, and its largest value.
pub const AFFINITY_TIMEOUT_DEFAULT: u32 = 10_800;
pub const AFFINITY_TIMEOUT_MAX: u32 = 86_400;

/// Computes the plan for `node`. Objects that cannot be served are reported and skipped;
/// everything else is planned. The result does not depend on the order of the inputs.
pub fn plan(
    node: &NodeInfo,
    services: &[impl Borrow<Service>],
    slices: &[impl Borrow<EndpointSlice>],
) -> (Plan, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let slices_by_service = index_slices(slices);

    let mut ordered: Vec<&Service> = services.iter().map(Borrow::borrow).collect();
    ordered.sort_by_key(|svc| object_name(&svc.metadata));

    let mut plan = Plan::default();
    let mut previous: Option<String> = None;
    for svc in ordered {
        let name = object_name(&svc.metadata);
        if previous.as_ref() == Some(&name) {
            diags.push(duplicate(&name));
            continue;
        }
        previous = Some(name.clone());
        let svc_slices = slices_by_service
            .get(&name)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let planned = plan_service(node, &name, svc, svc_slices, &mut diags);
        for (frontend_key, frontend) in planned.frontends {
            match plan.frontends.get(&frontend_key) {
                // The same service twice (an externalIP equal to its own LoadBalancer IP).
                Some(existing) if existing.service == name => {}
                Some(existing) => diags.push(conflict(&name, &frontend_key, &existing.service)),
                None => {
                    plan.frontends.insert(frontend_key, frontend);
                }
            }
        }
        plan.health_checks.extend(planned.health_check);
    }
    plan.health_checks.sort();
    diags.sort();
    diags.dedup();
    (plan, diags)
}

/// A second Service of the same namespace and name (the same object in two manifest files).
fn duplicate(name: &str) -> Diagnostic {
    Diagnostic::new(
        format!("Service {name}"),
        "is defined more than once; only the first copy is served",
    )
}

/// Two Services claim one frontend: the first by name serves it.
fn conflict(name: &str, key: &FrontendKey, winner: &str) -> Diagnostic {
    Diagnostic::new(
        format!("Service {name}"),
        format!("frontend {key} is already served by Service {winner}; skipped"),
    )
}

/// Finds node `name` among `nodes` (its Node object gives zone and addresses) and plans for it.
pub fn plan_for_node(
    name: &str,
    nodeport_cidrs: &[IpNet],
    nodes: &[impl Borrow<Node>],
    services: &[impl Borrow<Service>],
    slices: &[impl Borrow<EndpointSlice>],
) -> (NodeInfo, Plan, Vec<Diagnostic>) {
    let object = nodes
        .iter()
        .map(Borrow::borrow)
        .find(|n| n.metadata.name.as_deref() == Some(name));
    let (node, mut diags) = NodeInfo::from_node(name, object, nodeport_cidrs);
    let (plan, plan_diags) = plan(&node, services, slices);
    diags.extend(plan_diags);
    (node, plan, diags)
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

fn valid_port(port: i32) -> Option<u16> {
    u16::try_from(port).ok().filter(|p| *p != 0)
}

/// `namespace/name` of the Service an EndpointSlice belongs to (its
/// `kubernetes.io/service-name` label, in its own namespace).
fn service_of(slice: &EndpointSlice) -> Option<String> {
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(SERVICE_NAME_LABEL))?;
    Some(format!("{}/{service}", namespace_of(&slice.metadata)))
}

fn index_slices(slices: &[impl Borrow<EndpointSlice>]) -> HashMap<String, Vec<&EndpointSlice>> {
    let mut index: HashMap<String, Vec<&EndpointSlice>> = HashMap::new();
    for slice in slices.iter().map(Borrow::borrow) {
        if let Some(service) = service_of(slice) {
            index.entry(service).or_default().push(slice);
        }
    }
    index
}

#[derive(Default)]
struct PlannedService {
    frontends: Vec<(FrontendKey, Frontend)>,
    health_check: Option<HealthCheck>,
}

/// Parses a list of IP addresses of a service field, reporting the ones that do not parse.
fn ip_addresses<'a>(
    object: &str,
    field: &str,
    values: impl IntoIterator<Item = &'a str>,
    diags: &mut Vec<Diagnostic>,
) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for value in values {
        match value.parse::<IpAddr>() {
            Ok(addr) => out.push(addr),
            Err(_) => diags.push(Diagnostic::new(
                object,
                format!("{field} {value:?} is not an IP address"),
            )),
        }
    }
    out
}

/// An IP family, as `ipFamilies` and EndpointSlices name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: &IpAddr) -> Self {
        if addr.is_ipv4() { Self::V4 } else { Self::V6 }
    }

    /// `IPv4` or `IPv6`.
    pub fn name(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }

    pub fn has(self, addr: &IpAddr) -> bool {
        Self::of(addr) == self
    }

    pub fn has_net(self, net: &IpNet) -> bool {
        matches!(
            (self, net),
            (Self::V4, IpNet::V4(_)) | (Self::V6, IpNet::V6(_))
        )
    }
}

/// The cluster IPs served, at most one per family (the first of each, as the API server
/// allows no more), restricted to `ipFamilies` when the Service lists them.
fn cluster_ips_by_family(
    object: &str,
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    cluster_ips: Vec<IpAddr>,
    diags: &mut Vec<Diagnostic>,
) -> Vec<(Family, IpAddr)> {
    let listed: Option<Vec<&str>> = spec
        .ip_families
        .as_ref()
        .filter(|f| !f.is_empty())
        .map(|f| f.iter().map(String::as_str).collect());
    let mut out: Vec<(Family, IpAddr)> = Vec::new();
    for addr in cluster_ips {
        let family = Family::of(&addr);
        if out.iter().any(|(f, _)| *f == family) {
            diags.push(Diagnostic::new(
                object,
                format!(
                    "clusterIPs has a second {} address {addr}; only the first is served",
                    family.name()
                ),
            ));
            continue;
        }
        if let Some(listed) = &listed
            && !listed.contains(&family.name())
        {
            diags.push(Diagnostic::new(
                object,
                format!(
                    "clusterIP {addr} is {} but ipFamilies lists only {}; not served",
                    family.name(),
                    listed.join(", ")
                ),
            ));
            continue;
        }
        out.push((family, addr));
    }
    out
}

fn plan_service(
    node: &NodeInfo,
    name: &str,
    svc: &Service,
    slices: &[&EndpointSlice],
    diags: &mut Vec<Diagnostic>,
) -> PlannedService {
    let object = format!("Service {name}");
    let mut out = PlannedService::default();
    let Some(spec) = &svc.spec else {
        diags.push(Diagnostic::new(object, "has no spec"));
        return out;
    };
    let svc_type = spec.type_.as_deref().unwrap_or("ClusterIP");
    if svc_type == "ExternalName" {
        return out;
    }
    if !matches!(svc_type, "ClusterIP" | "NodePort" | "LoadBalancer") {
        diags.push(Diagnostic::new(
            object,
            format!("unknown type {svc_type:?}; skipped"),
        ));
        return out;
    }
    let cluster_ips: Vec<&str> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        (_, Some(ip)) => vec![ip.as_str()],
        _ => Vec::new(),
    };
    // Headless (or not allocated yet): nothing for the datapath.
    if cluster_ips.is_empty() || cluster_ips.iter().any(|ip| *ip == "None" || ip.is_empty()) {
        return out;
    }
    let cluster_ips = ip_addresses(&object, "clusterIP", cluster_ips, diags);
    let families = cluster_ips_by_family(&object, spec, cluster_ips, diags);
    let external_ips = ip_addresses(
        &object,
        "externalIP",
        spec.external_ips.iter().flatten().map(String::as_str),
        diags,
    );
    let lb_ips = if svc_type == "LoadBalancer" {
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        let ips = ingress
            .into_iter()
            .flatten()
            // `ipMode: Proxy`: the load balancer proxies, traffic never arrives for this IP.
            .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
            .filter_map(|i| i.ip.as_deref());
        ip_addresses(&object, "loadBalancer ingress IP", ips, diags)
    } else {
        Vec::new()
    };
    // A family without a cluster IP is not served at all, its node ports and external
    // addresses neither (as kube-proxy's proxier of that family skips the service).
    for addr in external_ips.iter().chain(&lb_ips) {
        let family = Family::of(addr);
        if !families.iter().any(|(f, _)| *f == family) {
            diags.push(Diagnostic::new(
                &object,
                format!(
                    "external address {addr} skipped: the Service has no {} cluster IP",
                    family.name()
                ),
            ));
        }
    }
    let source_ranges = source_ranges(
        &object,
        spec.load_balancer_source_ranges.as_deref().unwrap_or(&[]),
        diags,
    );
    for (family, cluster_ip) in &families {
        // Each family's LoadBalancer frontends take that family's ranges. Ranges given but none
        // of this family: its LoadBalancer IPs are not served rather than open to all.
        let (ranges, lb_ips) = match &source_ranges {
            None => (Vec::new(), Vec::new()),
            Some(all) => {
                let ranges: Vec<IpNet> =
                    all.iter().filter(|n| family.has_net(n)).copied().collect();
                let lb_ips: Vec<IpAddr> =
                    lb_ips.iter().filter(|a| family.has(a)).copied().collect();
                if ranges.is_empty() && !all.is_empty() && !lb_ips.is_empty() {
                    diags.push(Diagnostic::new(
                        &object,
                        format!(
                            "no loadBalancerSourceRanges entry is {}: its {} LoadBalancer IPs are not served",
                            family.name(),
                            family.name()
                        ),
                    ));
                    (ranges, Vec::new())
                } else {
                    (ranges, lb_ips)
                }
            }
        };
        let external_ips: Vec<IpAddr> = external_ips
            .iter()
            .filter(|a| family.has(a))
            .copied()
            .collect();
        let ctx = ServiceCtx {
            node,
            name,
            object: &object,
            svc_type,
            svc,
            spec,
            slices,
        };
        plan_family(
            &ctx,
            &FamilyAddresses {
                family: *family,
                cluster_ip: *cluster_ip,
                external_ips,
                lb_ips,
                source_ranges: ranges,
            },
            &mut out,
            diags,
        );
    }
    out
}

/// A Service being planned: what its families share.
#[derive(Clone, Copy)]
struct ServiceCtx<'a> {
    node: &'a NodeInfo,
    /// `namespace/name`.
    name: &'a str,
    /// `Service namespace/name`, for diagnostics.
    object: &'a str,
    svc_type: &'a str,
    svc: &'a Service,
    spec: &'a k8s_openapi::api::core::v1::ServiceSpec,
    slices: &'a [&'a EndpointSlice],
}

/// What one family of a Service is served on.
struct FamilyAddresses {
    family: Family,
    cluster_ip: IpAddr,
    external_ips: Vec<IpAddr>,
    lb_ips: Vec<IpAddr>,
    source_ranges: Vec<IpNet>,
}

/// The frontends of one family of a Service, on its ports.
fn plan_family(
    ctx: &ServiceCtx<'_>,
    addrs: &FamilyAddresses,
    out: &mut PlannedService,
    diags: &mut Vec<Diagnostic>,
) {
    let ServiceCtx {
        node,
        name,
        object,
        svc_type,
        svc,
        spec,
        slices,
    } = *ctx;
    let family = addrs.family;
    let cluster_ips = [addrs.cluster_ip];
    let (external_ips, lb_ips, source_ranges) =
        (&addrs.external_ips, &addrs.lb_ips, &addrs.source_ranges);
    let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let affinity = affinity_timeout(object, svc, diags);
    let object = object.to_owned();

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
        let node_port = match port.node_port {
            Some(p) if svc_type != "ClusterIP" => match valid_port(p) {
                Some(p) => Some(p),
                None => {
                    diags.push(Diagnostic::new(
                        &object,
                        format!("port {port_name:?}: nodePort {p} is not a port number (1-65535)"),
                    ));
                    None
                }
            },
            _ => None,
        };
        let candidates = endpoints::candidates(&port_name, protocol, family, slices, diags, node);
        let sets = endpoints::categorize(&candidates, node.zone.as_deref());
        let when_empty = if sets.any_usable {
            WhenEmpty::Drop
        } else {
            WhenEmpty::Reject
        };
        let internal = if internal_local {
            &sets.local
        } else {
            &sets.cluster
        };
        let external = if external_local {
            &sets.local
        } else {
            &sets.cluster
        };
        let frontend = |kind: FrontendKind, scope: Scope, backends: &Vec<PlanBackend>| Frontend {
            service: name.to_owned(),
            port_name: port_name.clone(),
            kind,
            scope,
            backends: backends.clone(),
            when_empty,
            affinity_timeout_seconds: affinity,
            source_ranges: if kind == FrontendKind::LoadBalancer {
                source_ranges.clone()
            } else {
                Vec::new()
            },
        };

        for address in &cluster_ips {
            let key = FrontendKey::new(*address, number, protocol);
            out.frontends.push((
                key,
                frontend(FrontendKind::ClusterIP, Scope::Internal, internal),
            ));
        }
        let mut external_frontends: Vec<(FrontendKind, IpAddr, u16)> = Vec::new();
        if let Some(node_port) = node_port {
            external_frontends.extend(
                node.nodeport_addresses
                    .iter()
                    .filter(|a| family.has(a))
                    .map(|a| (FrontendKind::NodePort, *a, node_port)),
            );
        }
        external_frontends.extend(
            lb_ips
                .iter()
                .map(|a| (FrontendKind::LoadBalancer, *a, number)),
        );
        external_frontends.extend(
            external_ips
                .iter()
                .map(|a| (FrontendKind::ExternalIP, *a, number)),
        );
        for (kind, address, port_number) in external_frontends {
            let key = FrontendKey::new(address, port_number, protocol);
            out.frontends
                .push((key, frontend(kind, Scope::External, external)));
            if external_local {
                // Pods reaching an external address are short-circuited to the cluster-wide
                // endpoints, as kube-proxy's pod-traffic rule for external destinations does;
                // internalTrafficPolicy does not apply there.
                let view = FrontendKey {
                    internal_view: true,
                    ..key
                };
                out.frontends
                    .push((view, frontend(kind, Scope::Internal, &sets.cluster)));
            }
        }
        if svc_type == "LoadBalancer"
            && external_local
            && let Some(port) = spec.health_check_node_port.and_then(valid_port)
        {
            let local = out.health_check.as_ref().map_or(0, |h| h.local_endpoints);
            out.health_check = Some(HealthCheck {
                service: name.to_owned(),
                port,
                local_endpoints: local.max(sets.local_ready),
            });
        }
    }
}

fn affinity_timeout(object: &str, svc: &Service, diags: &mut Vec<Diagnostic>) -> u32 {
    let spec = svc.spec.as_ref();
    if spec.and_then(|s| s.session_affinity.as_deref()) != Some("ClientIP") {
        return 0;
    }
    let configured = spec
        .and_then(|s| s.session_affinity_config.as_ref())
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds);
    match configured {
        None => AFFINITY_TIMEOUT_DEFAULT,
        Some(t) if (1..=AFFINITY_TIMEOUT_MAX as i32).contains(&t) => t as u32,
        Some(t) => {
            diags.push(Diagnostic::new(
                object,
                format!("sessionAffinity timeoutSeconds {t} is outside 1-{AFFINITY_TIMEOUT_MAX}; using {AFFINITY_TIMEOUT_DEFAULT}"),
            ));
            AFFINITY_TIMEOUT_DEFAULT
        }
    }
}

/// Parses `loadBalancerSourceRanges`. An entry that does not parse is reported and left out.
/// `None` when entries were given and none parses: the LoadBalancer frontends are then not
/// served at all, since a typo must not open a service its owner meant to restrict.
fn source_ranges(
    object: &str,
    ranges: &[String],
    diags: &mut Vec<Diagnostic>,
) -> Option<Vec<IpNet>> {
    let mut out = Vec::new();
    for range in ranges {
        match range.trim().parse::<IpNet>() {
            Ok(net) => out.push(net.trunc()),
            Err(_) => diags.push(Diagnostic::new(
                object,
                format!("loadBalancerSourceRanges entry {range:?} is not a CIDR; left out"),
            )),
        }
    }
    if out.is_empty() && !ranges.is_empty() {
        diags.push(Diagnostic::new(
            object,
            "no loadBalancerSourceRanges entry is a CIDR: its LoadBalancer IPs are not served",
        ));
        return None;
    }
    out.sort();
    out.dedup();
    Some(out)
}

#[cfg(test)]
#[path = "tests/model_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "tests/semantics_tests.rs"]
mod semantics_tests;
