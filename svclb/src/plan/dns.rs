//! The cluster's DNS records: what each Service has (`dns_rules`: the Kubernetes DNS
//! specification's records, with CoreDNS's choices where it is silent), and the zone's
//! records kept up to date change by change, as `plan::incremental` keeps the plan: the
//! agent's syncs make again only the records of the Services that changed, and encode again
//! only the names whose records changed (`entries::dns::Table`). `svclb plan
//! --cluster-domain` shows them.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

pub use super::dns_rules::{Rdata, Record, SCHEMA_VERSION, TTL, VERSION_TTL};
use super::{
    Snapshot,
    dns_rules::{Kind, kind, service_records, slice_endpoints},
    fields::service_of,
};

/// Every record of the cluster domain `zone` (lowercased, without a final dot), sorted and
/// without duplicates.
pub fn records(snapshot: &Snapshot, zone: &str) -> Vec<Record> {
    let mut records = Records::new(zone);
    records.update(snapshot);
    records.all()
}

/// The zone's records kept up to date change by change, as the planner keeps the plan: a
/// Service's records are made again only when its object, its EndpointSlices or (headless)
/// which of its endpoints are behind a cluster IP changed. Objects are told apart by
/// allocation, and held, so an allocation is not taken for another while remembered (see
/// `plan::incremental`). [`Records::update`] says which names' records changed.
pub struct Records {
    zone: String,
    /// Every Service of the last snapshot, by allocation.
    services: HashMap<usize, Kept>,
    /// Each name's records, each with the number of Services that give it.
    names: BTreeMap<String, BTreeMap<Record, usize>>,
    /// The last snapshot's Services and slices.
    objects: Held,
    /// Names changed before the first update (`dns-version`'s), which it reports.
    pending: BTreeSet<String>,
    /// The names whose SRV records target each name, each with how many records do: their
    /// replies carry the target's addresses, so they change with them.
    srv_owners: HashMap<String, BTreeMap<String, usize>>,
}

/// What a Service's records were made from, and them.
struct Kept {
    _service: Arc<Service>,
    slices: Vec<Arc<EndpointSlice>>,
    /// Whether the Service has a cluster IP.
    cluster_ip: bool,
    /// The ready endpoints' addresses (of a Service with a cluster IP, or headless).
    endpoints: Vec<IpAddr>,
    /// Of a headless Service's endpoint addresses, those behind a cluster IP too (no PTR).
    hidden: Vec<IpAddr>,
    records: Vec<Record>,
}

impl Records {
    pub fn new(zone: &str) -> Self {
        let zone = zone.trim_end_matches('.').to_ascii_lowercase();
        let version = Record {
            name: format!("dns-version.{zone}"),
            ttl: VERSION_TTL,
            rdata: Rdata::Txt {
                text: SCHEMA_VERSION.into(),
            },
        };
        let mut names = BTreeMap::new();
        count(&mut names, &version, true);
        Self {
            zone,
            services: HashMap::new(),
            names,
            objects: Held::default(),
            pending: BTreeSet::from([version.name]),
            srv_owners: HashMap::new(),
        }
    }

    /// Brings the records to `snapshot`: the names whose records changed.
    pub fn update(&mut self, snapshot: &Snapshot) -> BTreeSet<String> {
        // The same Services and slices, by allocation: nothing to do (a sync for a Node, or
        // for the plan's own reasons).
        let mut dirty = std::mem::take(&mut self.pending);
        if self.objects.is(snapshot) {
            return dirty;
        }
        self.objects = Held::of(snapshot);
        let mut slices: BTreeMap<String, Vec<&Arc<EndpointSlice>>> = BTreeMap::new();
        for slice in snapshot.slices.iter().chain(&snapshot.dns_slices) {
            if let Some(service) = service_of(slice) {
                slices.entry(service).or_default().push(slice);
            }
        }
        let services: Vec<(&Arc<Service>, &[&Arc<EndpointSlice>])> = (snapshot.services.iter())
            .chain(&snapshot.dns_services)
            .map(|service| {
                let own = slices.get(&key_of(service)).map_or(&[][..], Vec::as_slice);
                (service, own)
            })
            .collect();
        let behind = self.behind_cluster_ips(&services);
        let mut seen = HashSet::new();
        for (service, own) in services {
            let key = Arc::as_ptr(service) as usize;
            seen.insert(key);
            let (cluster_ip, endpoints) = match self.services.get(&key) {
                Some(kept) if kept.made_from(own) => {
                    if kept.hidden == hidden(kept.cluster_ip, &kept.endpoints, &behind) {
                        continue;
                    }
                    (kept.cluster_ip, kept.endpoints.clone())
                }
                _ => (
                    matches!(kind(service), Kind::ClusterIp(_)),
                    endpoint_ips(service, own),
                ),
            };
            let hidden = hidden(cluster_ip, &endpoints, &behind);
            let kept = Kept {
                _service: Arc::clone(service),
                slices: own.iter().map(|s| Arc::clone(s)).collect(),
                records: service_records(service, own, &hidden, &self.zone),
                cluster_ip,
                endpoints,
                hidden,
            };
            self.add(&kept.records, &mut dirty);
            if let Some(old) = self.services.insert(key, kept) {
                self.remove(&old.records, &mut dirty);
            }
        }
        let gone: Vec<usize> = (self.services.keys())
            .filter(|key| !seen.contains(key))
            .copied()
            .collect();
        for key in gone {
            if let Some(old) = self.services.remove(&key) {
                self.remove(&old.records, &mut dirty);
            }
        }
        // An SRV name's replies carry its targets' addresses.
        let owners: Vec<String> = (dirty.iter())
            .filter_map(|name| self.srv_owners.get(name))
            .flat_map(|owners| owners.keys().cloned())
            .collect();
        dirty.extend(owners);
        dirty
    }

    /// The ready endpoint addresses of Services with a cluster IP (CoreDNS's PTR answers skip
    /// the others too): a Service as it was kept gives the addresses kept.
    fn behind_cluster_ips(
        &self,
        services: &[(&Arc<Service>, &[&Arc<EndpointSlice>])],
    ) -> BTreeSet<IpAddr> {
        let mut out = BTreeSet::new();
        for (service, own) in services {
            let key = Arc::as_ptr(service) as usize;
            match self.services.get(&key).filter(|kept| kept.made_from(own)) {
                Some(kept) if kept.cluster_ip => out.extend(&kept.endpoints),
                Some(_) => {}
                None if matches!(kind(service), Kind::ClusterIp(_)) => {
                    out.extend(endpoint_ips(service, own));
                }
                None => {}
            }
        }
        out
    }

    fn add(&mut self, records: &[Record], dirty: &mut BTreeSet<String>) {
        for record in records {
            if count(&mut self.names, record, true) {
                self.count_srv_owner(record, true);
                dirty.insert(record.name.clone());
            }
        }
    }

    fn remove(&mut self, records: &[Record], dirty: &mut BTreeSet<String>) {
        for record in records {
            if count(&mut self.names, record, false) {
                self.count_srv_owner(record, false);
                dirty.insert(record.name.clone());
            }
        }
    }

    /// Counts an SRV record that came or went in (`add`) or out of its target's owners.
    fn count_srv_owner(&mut self, record: &Record, add: bool) {
        let Rdata::Srv { target, .. } = &record.rdata else {
            return;
        };
        let owners = self.srv_owners.entry(target.clone()).or_default();
        let n = owners.entry(record.name.clone()).or_insert(0);
        if add {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
        }
        if *n == 0 {
            owners.remove(&record.name);
        }
        if owners.is_empty() {
            self.srv_owners.remove(target);
        }
    }

    /// The records of `name`, sorted (none: it has none).
    pub fn of(&self, name: &str) -> Vec<&Record> {
        self.names
            .get(name)
            .map_or_else(Vec::new, |records| records.keys().collect())
    }

    /// Every name that has records, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.keys().map(String::as_str)
    }

    /// Every record, sorted and without duplicates.
    pub fn all(&self) -> Vec<Record> {
        self.names
            .values()
            .flat_map(|r| r.keys().cloned())
            .collect()
    }
}

impl Kept {
    /// Whether the kept Service's slices are `slices` (the Service is the same allocation).
    fn made_from(&self, slices: &[&Arc<EndpointSlice>]) -> bool {
        self.slices.len() == slices.len()
            && self
                .slices
                .iter()
                .zip(slices)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

/// Counts `record` in (`add`) or out of `names`: whether the name's records changed (a
/// record given by a second Service changes nothing).
fn count(
    names: &mut BTreeMap<String, BTreeMap<Record, usize>>,
    record: &Record,
    add: bool,
) -> bool {
    let records = names.entry(record.name.clone()).or_default();
    let changed = if add {
        let n = records.entry(record.clone()).or_insert(0);
        *n += 1;
        *n == 1
    } else {
        match records.get_mut(record) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => records.remove(record).is_some(),
            None => false,
        }
    };
    if records.is_empty() {
        names.remove(&record.name);
    }
    changed
}

/// A snapshot's Services and slices (those the DNS records need too), held, so that an
/// allocation is not taken for another object while compared.
#[derive(Default)]
struct Held {
    services: Vec<Arc<Service>>,
    slices: Vec<Arc<EndpointSlice>>,
}

impl Held {
    fn of(snapshot: &Snapshot) -> Self {
        Self {
            services: snapshot
                .services
                .iter()
                .chain(&snapshot.dns_services)
                .cloned()
                .collect(),
            slices: snapshot
                .slices
                .iter()
                .chain(&snapshot.dns_slices)
                .cloned()
                .collect(),
        }
    }

    /// Whether `snapshot` has the same objects, in the same order.
    fn is(&self, snapshot: &Snapshot) -> bool {
        fn same<T>(held: &[Arc<T>], a: &[Arc<T>], b: &[Arc<T>]) -> bool {
            held.len() == a.len() + b.len()
                && held
                    .iter()
                    .zip(a.iter().chain(b))
                    .all(|(x, y)| Arc::ptr_eq(x, y))
        }
        same(&self.services, &snapshot.services, &snapshot.dns_services)
            && same(&self.slices, &snapshot.slices, &snapshot.dns_slices)
    }
}

/// `<namespace>/<name>`, as EndpointSlices name their Service.
fn key_of(service: &Service) -> String {
    let meta = &service.metadata;
    let ns = meta.namespace.as_deref().unwrap_or("default");
    format!("{ns}/{}", meta.name.as_deref().unwrap_or_default())
}

/// The ready endpoint addresses of a Service with a cluster IP or a headless one (none for
/// the others), sorted.
fn endpoint_ips(service: &Service, slices: &[&Arc<EndpointSlice>]) -> Vec<IpAddr> {
    if matches!(kind(service), Kind::ExternalName(_) | Kind::None) {
        return Vec::new();
    }
    let mut out: Vec<IpAddr> = slices
        .iter()
        .flat_map(|slice| slice_endpoints(slice))
        .map(|endpoint| endpoint.ip)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Of the endpoint addresses (`endpoints`) of a Service without a cluster IP, those in
/// `behind` (only a headless Service has any).
fn hidden(cluster_ip: bool, endpoints: &[IpAddr], behind: &BTreeSet<IpAddr>) -> Vec<IpAddr> {
    if cluster_ip {
        return Vec::new();
    }
    endpoints
        .iter()
        .filter(|ip| behind.contains(ip))
        .copied()
        .collect()
}

#[cfg(test)]
#[path = "tests/dns_tests.rs"]
mod tests;
