//! The cluster's DNS records, as the Kubernetes DNS specification (kubernetes/dns,
//! docs/specification.md, schema 1.1.0) defines them and CoreDNS's `kubernetes` plugin serves
//! them, computed from the same Services and EndpointSlices as the plan (`svclb plan
//! --cluster-domain` shows them); the datapath answers from them (`entries::dns`). Pod
//! records, ExternalName targets' addresses and everything not listed here are the cluster's
//! DNS server's to answer.
//!
//! - A Service with a cluster IP: A/AAAA `<svc>.<ns>.svc.<zone>` for each of its cluster IPs;
//!   SRV `_<port>._<proto>.<svc>.<ns>.svc.<zone>` for each named port, targeting the Service's
//!   name, and the cluster IPs' A/AAAA at that name too; PTR for each cluster IP.
//! - A headless Service: A/AAAA of its ready endpoints (ready, or without the condition, as
//!   CoreDNS reads them), each also under `<hostname>.<svc>...` (the endpoint's hostname, or
//!   its address with dashes); SRV per named port and endpoint, targeting that name, with the
//!   EndpointSlice's port, and the endpoints' A/AAAA at the SRV name too; PTR for each
//!   endpoint address, unless the address is also an endpoint of a Service with a cluster IP
//!   (CoreDNS then answers a PTR per Service, named by the address: the server's to answer).
//!   One with no ready endpoint has no records.
//! - An ExternalName Service: CNAME to its target, unless the target is an IP address.
//! - The TXT record `dns-version.<zone>`.
//!
//! TTLs are CoreDNS's default: 5 s, and 28,800 s for `dns-version`. SRV records have priority 0
//! and weight 100/N, at least 1, N the records of the name before duplicates are removed
//! (CoreDNS's: a dual-stack cluster IP's SRV has weight 50).

use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde::Serialize;

/// The TTL of every record but `dns-version`'s.
pub const TTL: u32 = 5;
/// The schema version `dns-version` answers, and its TTL.
pub const SCHEMA_VERSION: &str = "1.1.0";
pub const VERSION_TTL: u32 = 28_800;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "type", rename_all = "UPPERCASE")]
pub enum Rdata {
    A {
        address: Ipv4Addr,
    },
    Aaaa {
        address: Ipv6Addr,
    },
    Cname {
        target: String,
    },
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
    Ptr {
        target: String,
    },
    Txt {
        text: String,
    },
}

/// One record: a lowercase name without the final dot.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Record {
    pub name: String,
    pub ttl: u32,
    #[serde(flatten)]
    pub rdata: Rdata,
}

impl fmt::Display for Record {
    /// The record as a zone file line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, data) = match &self.rdata {
            Rdata::A { address } => ("A", address.to_string()),
            Rdata::Aaaa { address } => ("AAAA", address.to_string()),
            Rdata::Cname { target } => ("CNAME", format!("{target}.")),
            Rdata::Srv {
                priority,
                weight,
                port,
                target,
            } => ("SRV", format!("{priority} {weight} {port} {target}.")),
            Rdata::Ptr { target } => ("PTR", format!("{target}.")),
            Rdata::Txt { text } => ("TXT", format!("\"{text}\"")),
        };
        write!(f, "{}.\t{}\tIN\t{kind}\t{data}", self.name, self.ttl)
    }
}

/// One Service's records; a headless Service's endpoint addresses in `hidden` get no PTR.
pub(super) fn service_records(
    service: &Service,
    slices: &[&Arc<EndpointSlice>],
    hidden: &[IpAddr],
    zone: &str,
) -> Vec<Record> {
    let Some(name) = ServiceName::of(service, zone) else {
        return Vec::new();
    };
    let mut out = BTreeSet::new();
    match kind(service) {
        Kind::ClusterIp(ips) => cluster_ip(&name, service, &ips, &mut out),
        Kind::Headless => {
            let slices: Vec<&EndpointSlice> = slices.iter().map(|s| s.as_ref()).collect();
            let ptr = |ip: &IpAddr| !hidden.contains(ip);
            headless(&name, service, &slices, &ptr, &mut out);
        }
        Kind::ExternalName(target) => {
            out.insert(name.record(&name.fqdn(), Rdata::Cname { target }));
        }
        Kind::None => {}
    }
    out.into_iter().collect()
}

/// A Service's names.
struct ServiceName {
    namespace: String,
    service: String,
    zone: String,
}

impl ServiceName {
    fn of(service: &Service, zone: &str) -> Option<Self> {
        let meta = &service.metadata;
        Some(Self {
            namespace: meta
                .namespace
                .as_deref()
                .unwrap_or("default")
                .to_ascii_lowercase(),
            service: meta.name.as_deref()?.to_ascii_lowercase(),
            zone: zone.to_owned(),
        })
    }

    /// `<svc>.<ns>.svc.<zone>`.
    fn fqdn(&self) -> String {
        format!("{}.{}.svc.{}", self.service, self.namespace, self.zone)
    }

    fn record(&self, name: &str, rdata: Rdata) -> Record {
        Record {
            name: name.to_owned(),
            ttl: TTL,
            rdata,
        }
    }
}

pub(super) enum Kind {
    ClusterIp(Vec<IpAddr>),
    Headless,
    ExternalName(String),
    /// No records: an ExternalName whose target is an address, a Service without a cluster
    /// IP yet.
    None,
}

pub(super) fn kind(service: &Service) -> Kind {
    let Some(spec) = &service.spec else {
        return Kind::None;
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return match spec.external_name.as_deref() {
            Some(target) if !target.is_empty() && target.parse::<IpAddr>().is_err() => {
                Kind::ExternalName(target.trim_end_matches('.').to_ascii_lowercase())
            }
            _ => Kind::None,
        };
    }
    let ips: Vec<&str> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => spec.cluster_ip.as_deref().into_iter().collect(),
    };
    if ips.first() == Some(&"None") {
        return Kind::Headless;
    }
    let ips: Vec<IpAddr> = ips.iter().filter_map(|ip| ip.parse().ok()).collect();
    if ips.is_empty() {
        Kind::None
    } else {
        Kind::ClusterIp(ips)
    }
}

fn address(ip: IpAddr) -> Rdata {
    match ip {
        IpAddr::V4(address) => Rdata::A { address },
        IpAddr::V6(address) => Rdata::Aaaa { address },
    }
}

fn cluster_ip(name: &ServiceName, service: &Service, ips: &[IpAddr], out: &mut BTreeSet<Record>) {
    let fqdn = name.fqdn();
    for ip in ips {
        out.insert(name.record(&fqdn, address(*ip)));
        out.insert(name.record(
            &reverse_name(*ip),
            Rdata::Ptr {
                target: fqdn.clone(),
            },
        ));
    }
    // One SRV per port: CoreDNS makes one per cluster IP, all alike, and keeps one, whose
    // weight still counts them all.
    for (port_name, proto, port) in named_ports(service) {
        let srv = format!("_{port_name}._{proto}.{fqdn}");
        out.insert(name.record(
            &srv,
            Rdata::Srv {
                priority: 0,
                weight: weight(ips.len()),
                port,
                target: fqdn.clone(),
            },
        ));
        for ip in ips {
            out.insert(name.record(&srv, address(*ip)));
        }
    }
}

/// One ready endpoint address of a headless Service, and its name under the Service.
pub(super) struct Endpoint {
    pub(super) ip: IpAddr,
    host: String,
}

/// A headless Service's records; PTR records for the endpoint addresses `ptr` takes.
fn headless(
    name: &ServiceName,
    service: &Service,
    slices: &[&EndpointSlice],
    ptr: &dyn Fn(&IpAddr) -> bool,
    out: &mut BTreeSet<Record>,
) {
    let fqdn = name.fqdn();
    let endpoints = ready_endpoints(slices);
    for endpoint in &endpoints {
        let host = format!("{}.{fqdn}", endpoint.host);
        out.insert(name.record(&fqdn, address(endpoint.ip)));
        out.insert(name.record(&host, address(endpoint.ip)));
        if ptr(&endpoint.ip) {
            out.insert(name.record(&reverse_name(endpoint.ip), Rdata::Ptr { target: host }));
        }
    }
    for (port_name, proto, _) in named_ports(service) {
        let srv = format!("_{port_name}._{proto}.{fqdn}");
        let ports = slice_ports(slices, &port_name, &proto);
        let n = ports.iter().map(|(_, eps)| eps.len()).sum();
        for (port, eps) in ports {
            for endpoint in eps {
                out.insert(name.record(
                    &srv,
                    Rdata::Srv {
                        priority: 0,
                        weight: weight(n),
                        port,
                        target: format!("{}.{fqdn}", endpoint.host),
                    },
                ));
                out.insert(name.record(&srv, address(endpoint.ip)));
            }
        }
    }
}

/// The ready endpoints of `slices` (ready, or without the condition).
fn ready_endpoints(slices: &[&EndpointSlice]) -> Vec<Endpoint> {
    slices
        .iter()
        .flat_map(|slice| slice_endpoints(slice))
        .collect()
}

pub(super) fn slice_endpoints(slice: &EndpointSlice) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for endpoint in slice.endpoints.iter().flatten() {
        let ready = endpoint
            .conditions
            .as_ref()
            .and_then(|c| c.ready)
            .unwrap_or(true);
        if !ready {
            continue;
        }
        for ip in endpoint.addresses.iter().filter_map(|a| a.parse().ok()) {
            let host = endpoint
                .hostname
                .as_deref()
                .map_or_else(|| dashed(ip), str::to_ascii_lowercase);
            out.push(Endpoint { ip, host });
        }
    }
    out
}

/// The endpoints of `slices` by the port they give the Service port named `port_name` of
/// protocol `proto`.
fn slice_ports(
    slices: &[&EndpointSlice],
    port_name: &str,
    proto: &str,
) -> Vec<(u16, Vec<Endpoint>)> {
    let mut out = Vec::new();
    for slice in slices {
        let port = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == port_name
                && p.protocol
                    .as_deref()
                    .unwrap_or("TCP")
                    .eq_ignore_ascii_case(proto)
        });
        if let Some(port) = port
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        {
            out.push((port, slice_endpoints(slice)));
        }
    }
    out
}

/// A Service's named ports: name, protocol (lowercase) and port.
fn named_ports(service: &Service) -> Vec<(String, String, u16)> {
    let ports = service.spec.as_ref().and_then(|s| s.ports.as_ref());
    ports
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let name = p.name.as_deref().filter(|n| !n.is_empty())?;
            let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
            Some((
                name.to_ascii_lowercase(),
                proto,
                u16::try_from(p.port).ok()?,
            ))
        })
        .collect()
}

fn weight(n: usize) -> u16 {
    (100 / n.max(1)).max(1) as u16
}

/// An address with dashes for dots or colons (`10-244-1-5`; IPv6 compressed, a trailing dash
/// followed by 0), as CoreDNS names an endpoint without a hostname.
fn dashed(ip: IpAddr) -> String {
    let text = ip.to_string().replace(['.', ':'], "-");
    if text.ends_with('-') {
        format!("{text}0")
    } else {
        text
    }
}

/// The PTR name of `ip`: `d.c.b.a.in-addr.arpa`, or the nibbles of an IPv6 address under
/// `ip6.arpa`.
fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa")
        }
        IpAddr::V6(v6) => {
            let mut labels: Vec<String> = v6
                .octets()
                .iter()
                .flat_map(|byte| [byte >> 4, byte & 0xf])
                .map(|nibble| format!("{nibble:x}"))
                .collect();
            labels.reverse();
            format!("{}.ip6.arpa", labels.join("."))
        }
    }
}
