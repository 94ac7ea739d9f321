//! Per-frontend traffic counters, read from the pinned maps at each scrape of `/metrics` (a
//! Prometheus collector): the datapath counts per CPU, the scrape sums. A scrape reads one
//! value a frontend and walks no flow map (the conntrack fill is counted by its sweep).
//!
//! - `svclb_frontend_received_packets_total`, `svclb_frontend_received_bytes_total`: packets
//!   (and their bytes) from clients to the frontend that passed its source ranges;
//! - `svclb_frontend_new_flows_total`: new flows given a backend;
//! - `svclb_frontend_refused_flows_total`: new flows refused or dropped for want of a backend;
//! - `svclb_frontend_socket_connects_total`, `svclb_frontend_socket_datagrams_total`,
//!   `svclb_frontend_socket_refused_total`: what the socket hooks did (sockets connected to a
//!   backend, datagrams of unconnected sockets sent to one, connects and datagrams refused);
//! - `svclb_xdp_packets_total{device, action}`: what the XDP program did with each uplink's
//!   packets (`passed` to the stack and TC, `dropped`);
//! - `svclb_datapath_events_total{event}`: what the datapath refused or gave up that belongs
//!   to no frontend (see `svclb_common::events`: TCP segments of no flow, SNAT ports taken
//!   from half-open flows or short, reply tuples taken, failed conntrack inserts).
//!
//! Each frontend series has the labels `frontend` (`10.96.0.10:80/TCP`) and `service`
//! (`namespace/name`). A frontend id handed to a new frontend starts from zero.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::Path,
    sync::Mutex,
};

use anyhow::Result;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter},
    registry::Unit,
};
use svclb_common::{FrontendStats, SockStats};

use crate::{
    entries::{MapState, service_key},
    kernel::maps::Maps,
    plan::{FrontendKey, Plan},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FrontendLabels {
    pub frontend: String,
    pub service: String,
}

/// The frontends the collector names; the syncer changes them, a scrape copies them.
#[derive(Default)]
struct Names {
    /// Programmed frontends by id.
    frontends: BTreeMap<u32, FrontendLabels>,
    ids: HashMap<FrontendKey, u32>,
}

pub struct TrafficCollector {
    names: Mutex<Names>,
    /// What a scrape reads, apart from the names: handles of its own, so a scrape never holds
    /// up a sync.
    maps: Mutex<Maps>,
}

impl std::fmt::Debug for TrafficCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TrafficCollector")
    }
}

impl TrafficCollector {
    /// Opens the counters pinned in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Self {
            names: Mutex::default(),
            maps: Mutex::new(Maps::open_pinned(dir)?),
        })
    }

    fn names(&self) -> std::sync::MutexGuard<'_, Names> {
        // A panic while holding it leaves nothing half-done worth refusing the next use for.
        self.names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Names every programmed frontend of `plan` (after a full sync).
    pub fn rebuild(&self, plan: &Plan, programmed: &MapState) {
        let mut names = self.names();
        names.frontends.clear();
        names.ids.clear();
        for key in plan.frontends.keys() {
            set(&mut names, plan, programmed, key);
        }
    }

    /// Names again the frontends in `changed` (after a sync that wrote only those).
    pub fn update(&self, plan: &Plan, programmed: &MapState, changed: &BTreeSet<FrontendKey>) {
        let mut names = self.names();
        for key in changed {
            set(&mut names, plan, programmed, key);
        }
    }
}

fn set(inner: &mut Names, plan: &Plan, programmed: &MapState, key: &FrontendKey) {
    if let Some(old) = inner.ids.remove(key) {
        inner.frontends.remove(&old);
    }
    let (Some(frontend), Some(value)) = (
        plan.frontends.get(key),
        programmed.services.get(&service_key(key)),
    ) else {
        return;
    };
    inner.ids.insert(*key, value.id);
    inner.frontends.insert(
        value.id,
        FrontendLabels {
            frontend: key.to_string(),
            service: frontend.service.clone(),
        },
    );
}

type Field = fn(&FrontendStats) -> u64;

const COUNTERS: [(&str, &str, Option<Unit>, Field); 4] = [
    (
        "frontend_received_packets",
        "Packets from clients to the frontend that passed its source ranges",
        None,
        |s| s.packets,
    ),
    (
        "frontend_received",
        "Bytes of those packets",
        Some(Unit::Bytes),
        |s| s.bytes,
    ),
    (
        "frontend_new_flows",
        "New flows to the frontend given a backend",
        None,
        |s| s.new_flows,
    ),
    (
        "frontend_refused_flows",
        "New flows to the frontend refused or dropped for want of a backend",
        None,
        |s| s.refused,
    ),
];

type SockField = fn(&SockStats) -> u64;

const SOCK_COUNTERS: [(&str, &str, SockField); 3] = [
    (
        "frontend_socket_connects",
        "Sockets the socket hooks connected to a backend of the frontend",
        |s| s.connects,
    ),
    (
        "frontend_socket_datagrams",
        "Datagrams of unconnected sockets the socket hooks sent to a backend of the frontend",
        |s| s.datagrams,
    ),
    (
        "frontend_socket_refused",
        "Connects and datagrams the socket hooks refused for want of a backend",
        |s| s.refused,
    ),
];

/// A device's name in this network namespace, else `#<ifindex>`.
pub fn device_name(ifindex: u32) -> String {
    nix::net::if_::if_indextoname(ifindex).map_or_else(
        |_| format!("#{ifindex}"),
        |name| name.to_string_lossy().into_owned(),
    )
}

impl Collector for TrafficCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let frontends: Vec<(u32, FrontendLabels)> = self
            .names()
            .frontends
            .iter()
            .map(|(id, labels)| (*id, labels.clone()))
            .collect();
        let maps = self
            .maps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let read: Vec<(&FrontendLabels, FrontendStats, SockStats)> = frontends
            .iter()
            .map(|(id, labels)| {
                (
                    labels,
                    maps.stats(*id).unwrap_or_default(),
                    maps.sock_stats(*id).unwrap_or_default(),
                )
            })
            .collect();
        for (name, help, unit, field) in COUNTERS {
            let mut family =
                encoder.encode_descriptor(name, help, unit.as_ref(), MetricType::Counter)?;
            for (labels, stats, _) in &read {
                ConstCounter::new(field(stats)).encode(family.encode_family(*labels)?)?;
            }
        }
        for (name, help, field) in SOCK_COUNTERS {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, _, stats) in &read {
                ConstCounter::new(field(stats)).encode(family.encode_family(*labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "datapath_events",
            "What the datapath refused or gave up that belongs to no frontend, by event",
            None,
            MetricType::Counter,
        )?;
        for (event, n) in maps.events() {
            let labels = [("event", event)];
            ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "xdp_packets",
            "Packets of each uplink the XDP program finished (translated and sent out itself), passed to the stack (and TC) or dropped",
            None,
            MetricType::Counter,
        )?;
        for (ifindex, stats) in maps.xdp_stats() {
            let device = device_name(ifindex);
            let actions = [
                ("finished", stats.finished),
                ("passed", stats.passed),
                ("dropped", stats.dropped),
            ];
            for (action, n) in actions {
                let labels = [("device", device.clone()), ("action", action.to_owned())];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
