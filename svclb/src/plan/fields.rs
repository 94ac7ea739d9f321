//! Reading objects' fields: names, ports, addresses, families, session affinity and source
//! ranges. Every value that does not parse is reported by name and left out; nothing here
//! panics on input.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::{
    api::{
        core::v1::{Service, ServiceSpec},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use super::Diagnostic;

/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset, and its largest value.
pub const AFFINITY_TIMEOUT_DEFAULT: u32 = 10_800;
pub const AFFINITY_TIMEOUT_MAX: u32 = 86_400;
/// The label joining an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The namespace of an object; a manifest without one means `default`, as kubectl has it.
fn namespace_of(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

/// `namespace/name`.
pub(super) fn object_name(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        namespace_of(meta),
        meta.name.as_deref().unwrap_or("")
    )
}

pub(super) fn valid_port(port: i32) -> Option<u16> {
    u16::try_from(port).ok().filter(|p| *p != 0)
}

/// `namespace/name` of the Service an EndpointSlice belongs to (its
/// `kubernetes.io/service-name` label, in its own namespace).
pub(super) fn service_of(slice: &EndpointSlice) -> Option<String> {
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(SERVICE_NAME_LABEL))?;
    Some(format!("{}/{service}", namespace_of(&slice.metadata)))
}

/// Parses a list of IP addresses of a service field, reporting the ones that do not parse.
pub(super) fn ip_addresses<'a>(
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

    /// `127.0.0.1` or `::1`.
    pub fn loopback(self) -> IpAddr {
        match self {
            Self::V4 => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            Self::V6 => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        }
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
pub(super) fn cluster_ips_by_family(
    object: &str,
    spec: &ServiceSpec,
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

pub(super) fn affinity_timeout(object: &str, svc: &Service, diags: &mut Vec<Diagnostic>) -> u32 {
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
pub(super) fn source_ranges(
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
