//! Kubernetes objects -> [`Plan`]: a pure function, the same for every source.
//!
//! It follows kube-proxy's rules:
//! - Service types: ClusterIP on every cluster IP; NodePort on this node's NodePort addresses
//!   (NodePort and LoadBalancer services with a `nodePort`); LoadBalancer on
//!   `status.loadBalancer.ingress[].ip` (not those with `ipMode: Proxy`); `externalIPs`, but
//!   not on reserved addresses (see `reserved`).
//!   ExternalName and headless services get nothing.
//! - Endpoints: see [`super::endpoints`]. Internal traffic uses the `internalTrafficPolicy` set,
//!   external traffic the `externalTrafficPolicy` set; Cluster sets honour zone hints.
//! - A frontend without endpoints rejects when the port has no usable endpoint anywhere and
//!   drops when a Local policy leaves this node without one.
//! - `sessionAffinity: ClientIP` (timeout default 10800 s, at most 86400 s),
//!   `loadBalancerSourceRanges` on LoadBalancer frontends, `healthCheckNodePort`.

use std::{borrow::Borrow, collections::HashMap, net::IpAddr};

use ipnet::IpNet;
use k8s_openapi::api::{
    core::v1::{Node, Service, ServiceSpec},
    discovery::v1::EndpointSlice,
};

use super::{
    AddressRule, Diagnostic, Family, Frontend, FrontendKey, NodeInfo, Plan,
    claims::{Claim, conflict, created},
    fields::{cluster_ips_by_family, ip_addresses, object_name, service_of, source_ranges},
    node::other_node_addresses,
    ports::{FamilyAddresses, PlannedService, ServiceCtx, plan_family},
    reserved::refuse_reserved,
};

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
    let mut claims: HashMap<FrontendKey, Vec<(Claim, Frontend)>> = HashMap::new();
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
        let created = created(svc);
        for (frontend_key, frontend) in planned.frontends {
            let claimants = claims.entry(frontend_key).or_default();
            // The same service twice (an externalIP equal to its own LoadBalancer IP): its
            // first frontend stands.
            if !claimants.iter().any(|(c, _)| c.service == name) {
                claimants.push((Claim::new(&frontend, created), frontend));
            }
        }
        plan.health_checks.extend(planned.health_check);
    }
    for (key, mut claimants) in claims {
        claimants.sort_by(|a, b| a.0.cmp(&b.0));
        let mut claimants = claimants.into_iter();
        let (winner, frontend) = claimants.next().expect("a claim per key");
        diags.extend(claimants.map(|(loser, _)| conflict(&loser, &key, &winner)));
        plan.frontends.insert(key, frontend);
    }
    plan.health_checks.sort();
    diags.sort();
    diags.dedup();
    (plan, diags)
}

/// A second Service of the same namespace and name (the same object in two manifest files).
pub(super) fn duplicate(name: &str) -> Diagnostic {
    Diagnostic::new(
        format!("Service {name}"),
        "is defined more than once; only the first copy is served",
    )
}

/// Finds node `name` among `nodes` (its Node object gives zone and addresses) and plans for it.
pub fn plan_for_node(
    name: &str,
    nodeports: &AddressRule,
    nodes: &[impl Borrow<Node>],
    services: &[impl Borrow<Service>],
    slices: &[impl Borrow<EndpointSlice>],
) -> (NodeInfo, Plan, Vec<Diagnostic>) {
    let object = nodes
        .iter()
        .map(Borrow::borrow)
        .find(|n| n.metadata.name.as_deref() == Some(name));
    let others = other_node_addresses(name, nodes);
    let (node, mut diags) = NodeInfo::from_node(name, object, &others, nodeports);
    let (plan, plan_diags) = plan(&node, services, slices);
    diags.extend(plan_diags);
    (node, plan, diags)
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

/// The type of a Service the datapath serves (`None` for ExternalName, and for an unknown
/// type, which is reported).
fn served_type<'a>(
    object: &str,
    spec: &'a ServiceSpec,
    diags: &mut Vec<Diagnostic>,
) -> Option<&'a str> {
    let svc_type = spec.type_.as_deref().unwrap_or("ClusterIP");
    match svc_type {
        "ClusterIP" | "NodePort" | "LoadBalancer" => Some(svc_type),
        "ExternalName" => None,
        _ => {
            diags.push(Diagnostic::new(
                object,
                format!("unknown type {svc_type:?}; skipped"),
            ));
            None
        }
    }
}

/// The cluster IPs as written; `None` for a headless Service (or one not allocated yet),
/// which has nothing for the datapath.
fn cluster_ip_fields(spec: &ServiceSpec) -> Option<Vec<&str>> {
    let ips: Vec<&str> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        (_, Some(ip)) => vec![ip.as_str()],
        _ => Vec::new(),
    };
    let headless = ips.is_empty() || ips.iter().any(|ip| *ip == "None" || ip.is_empty());
    (!headless).then_some(ips)
}

/// `status.loadBalancer.ingress[].ip` of a LoadBalancer Service, except `ipMode: Proxy` ones
/// (the load balancer proxies: traffic never arrives for that IP).
fn lb_ingress_ips(
    object: &str,
    svc: &Service,
    svc_type: &str,
    diags: &mut Vec<Diagnostic>,
) -> Vec<IpAddr> {
    if svc_type != "LoadBalancer" {
        return Vec::new();
    }
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    let ips = ingress
        .into_iter()
        .flatten()
        .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
        .filter_map(|i| i.ip.as_deref());
    ip_addresses(object, "loadBalancer ingress IP", ips, diags)
}

/// A family without a cluster IP is not served at all, its node ports and external addresses
/// neither (as kube-proxy's proxier of that family skips the service): say so for each.
fn report_unserved_families(
    object: &str,
    external: &[IpAddr],
    families: &[(Family, IpAddr)],
    diags: &mut Vec<Diagnostic>,
) {
    for addr in external {
        let family = Family::of(addr);
        if !families.iter().any(|(f, _)| *f == family) {
            diags.push(Diagnostic::new(
                object,
                format!(
                    "external address {addr} skipped: the Service has no {} cluster IP",
                    family.name()
                ),
            ));
        }
    }
}

/// Each family's LoadBalancer frontends take that family's ranges. Ranges given but none of
/// this family: its LoadBalancer IPs are not served rather than open to all. Returns the
/// family's ranges and the LoadBalancer IPs it serves.
fn family_ranges(
    object: &str,
    family: Family,
    ranges: Option<&[IpNet]>,
    lb_ips: &[IpAddr],
    diags: &mut Vec<Diagnostic>,
) -> (Vec<IpNet>, Vec<IpAddr>) {
    let Some(all) = ranges else {
        return (Vec::new(), Vec::new());
    };
    let ranges: Vec<IpNet> = all.iter().filter(|n| family.has_net(n)).copied().collect();
    let lb_ips: Vec<IpAddr> = lb_ips.iter().filter(|a| family.has(a)).copied().collect();
    if ranges.is_empty() && !all.is_empty() && !lb_ips.is_empty() {
        diags.push(Diagnostic::new(
            object,
            format!(
                "no loadBalancerSourceRanges entry is {}: its {} LoadBalancer IPs are not served",
                family.name(),
                family.name()
            ),
        ));
        return (ranges, Vec::new());
    }
    (ranges, lb_ips)
}

/// Plans one Service: each of its families on each of its ports.
pub(super) fn plan_service(
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
    let Some(svc_type) = served_type(&object, spec, diags) else {
        return out;
    };
    let Some(cluster_ips) = cluster_ip_fields(spec) else {
        return out;
    };
    let cluster_ips = ip_addresses(&object, "clusterIP", cluster_ips, diags);
    let families = cluster_ips_by_family(&object, spec, cluster_ips, diags);
    let external_ips = ip_addresses(
        &object,
        "externalIP",
        spec.external_ips.iter().flatten().map(String::as_str),
        diags,
    );
    let external_ips = refuse_reserved(&object, node, external_ips, diags);
    let lb_ips = lb_ingress_ips(&object, svc, svc_type, diags);
    let external: Vec<IpAddr> = external_ips.iter().chain(&lb_ips).copied().collect();
    report_unserved_families(&object, &external, &families, diags);
    let ranges = source_ranges(
        &object,
        spec.load_balancer_source_ranges.as_deref().unwrap_or(&[]),
        diags,
    );
    let ctx = ServiceCtx {
        node,
        name,
        object: &object,
        svc_type,
        svc,
        spec,
        slices,
    };
    for (family, cluster_ip) in &families {
        let (source_ranges, lb_ips) =
            family_ranges(&object, *family, ranges.as_deref(), &lb_ips, diags);
        let addrs = FamilyAddresses {
            family: *family,
            cluster_ip: *cluster_ip,
            external_ips: external_ips
                .iter()
                .filter(|a| family.has(a))
                .copied()
                .collect(),
            lb_ips,
            source_ranges,
        };
        plan_family(&ctx, &addrs, &mut out, diags);
    }
    out
}
