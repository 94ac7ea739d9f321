//! The agent's Prometheus metrics: sync duration and outcome, entries written, map fill and
//! capacity, frontends and backends programmed, objects skipped by validation, errors by kind,
//! and (through [`super::traffic`]) per-frontend counters read from the datapath.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicI64},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

use super::{report::AgentStatus, traffic::TrafficCollector};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub kind: String,
}

/// The kinds of `svclb_errors_total{kind}`.
pub const ERROR_MAP_WRITE: &str = "map_write";
pub const ERROR_DEVICE: &str = "device";
pub const ERROR_WATCH: &str = "watch";
pub const ERROR_CONNTRACK: &str = "conntrack";

/// `svclb_errors_total{kind}`. Made before everything else the agent starts, so the source and
/// the device handling can be handed their kind's counter (a plain [`Counter`]) and count
/// where the errors happen, without knowing of this module.
#[derive(Clone, Debug, Default)]
pub struct ErrorCounters(Family<ErrorLabel, Counter>);

impl ErrorCounters {
    /// The counter of `kind` (one of the `ERROR_*` kinds).
    pub fn counter(&self, kind: &str) -> Counter {
        self.0
            .get_or_create(&ErrorLabel {
                kind: kind.to_owned(),
            })
            .clone()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabel {
    pub map: String,
}

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    pub sync_duration: Histogram,
    pub syncs: Counter,
    pub entries_written: Counter,
    pub write_errors: Counter,
    pub purged_flows: Counter,
    pub purged_affinities: Counter,
    pub expired_flows: Counter,
    pub frontends: Gauge,
    pub backends: Gauge,
    pub frontends_not_programmed: Gauge,
    pub objects_skipped: Gauge,
    pub device_problems: Gauge,
    pub map_entries: Family<MapLabel, Gauge>,
    pub map_capacity: Family<MapLabel, Gauge>,
    errors: ErrorCounters,
    pub ready: AtomicBool,
    /// What `/status` answers (`svclb status` reads it).
    pub status: std::sync::Mutex<AgentStatus>,
}

impl Metrics {
    /// The agent's metrics, with the error counters made before them; `traffic` adds the
    /// per-frontend counters read at each scrape.
    pub fn new(errors: ErrorCounters, traffic: Option<Arc<TrafficCollector>>) -> Arc<Self> {
        let mut registry = Registry::with_prefix("svclb");
        if let Some(traffic) = traffic {
            registry.register_collector(Box::new(traffic));
        }
        let sync_duration = Histogram::new(exponential_buckets(0.000_1, 2.0, 16));
        let syncs = Counter::default();
        let entries_written = Counter::default();
        let write_errors = Counter::default();
        let purged_flows = Counter::default();
        let purged_affinities = Counter::default();
        let expired_flows = Counter::default();
        let frontends = Gauge::<i64, AtomicI64>::default();
        let backends = Gauge::<i64, AtomicI64>::default();
        let frontends_not_programmed = Gauge::<i64, AtomicI64>::default();
        let objects_skipped = Gauge::<i64, AtomicI64>::default();
        let device_problems = Gauge::<i64, AtomicI64>::default();
        let map_entries = Family::<MapLabel, Gauge>::default();
        let map_capacity = Family::<MapLabel, Gauge>::default();
        registry.register_with_unit(
            "sync_duration",
            "Time from reading the source to the last map write of a sync",
            Unit::Seconds,
            sync_duration.clone(),
        );
        registry.register("syncs", "Syncs of the maps with the source", syncs.clone());
        registry.register(
            "map_entries_written",
            "Map entries written or deleted by syncs",
            entries_written.clone(),
        );
        registry.register(
            "map_write_errors",
            "Map writes that failed (a full map, a kernel error)",
            write_errors.clone(),
        );
        registry.register(
            "conntrack_entries_purged",
            "Conntrack entries of UDP flows removed because their backend left the service",
            purged_flows.clone(),
        );
        registry.register(
            "affinity_entries_purged",
            "Session affinities removed because their backend left the service",
            purged_affinities.clone(),
        );
        registry.register(
            "conntrack_entries_expired",
            "Conntrack entries removed by the sweep: flows that ended (FIN or RST, then 10 s idle), UDP idle 60 s, TCP idle 24 h",
            expired_flows.clone(),
        );
        registry.register(
            "errors",
            "Errors by kind: map_write (a map write the kernel refused; retried), device (a device not attached, or attached only in part), watch (a Kubernetes watch or the manifests file watcher failed; retried)",
            errors.0.clone(),
        );
        registry.register(
            "frontends",
            "Frontends programmed in the maps",
            frontends.clone(),
        );
        registry.register(
            "backends",
            "Backends programmed in the maps",
            backends.clone(),
        );
        registry.register(
            "frontends_not_programmed",
            "Frontends planned but not programmed (kinds the datapath does not serve yet)",
            frontends_not_programmed.clone(),
        );
        registry.register(
            "objects_skipped",
            "Objects (or parts of them) skipped by validation, with a logged reason",
            objects_skipped.clone(),
        );
        registry.register(
            "devices_degraded",
            "Devices attached only in part (an uplink without XDP is served through tc alone; see the log)",
            device_problems.clone(),
        );
        registry.register(
            "map_entries",
            "Entries in each pinned map",
            map_entries.clone(),
        );
        registry.register(
            "map_capacity_entries",
            "Capacity of each pinned map",
            map_capacity.clone(),
        );
        Arc::new(Self {
            registry,
            sync_duration,
            syncs,
            entries_written,
            write_errors,
            purged_flows,
            purged_affinities,
            expired_flows,
            frontends,
            backends,
            frontends_not_programmed,
            objects_skipped,
            device_problems,
            map_entries,
            map_capacity,
            errors,
            ready: AtomicBool::new(false),
            status: std::sync::Mutex::default(),
        })
    }

    pub fn set_map(&self, map: &str, entries: usize, capacity: usize) {
        let label = MapLabel {
            map: map.to_owned(),
        };
        self.map_entries.get_or_create(&label).set(entries as i64);
        self.map_capacity.get_or_create(&label).set(capacity as i64);
    }

    /// Counts `n` errors of `kind` (one of the `ERROR_*` kinds).
    pub fn count_errors(&self, kind: &str, n: u64) {
        self.errors.counter(kind).inc_by(n);
    }

    /// The attached devices, and those attached only in part (each with what is missing).
    pub fn set_devices(&self, attached: Vec<String>, problems: Vec<String>) {
        self.device_problems.set(problems.len() as i64);
        let mut status = self.status();
        status.devices = attached;
        status.device_problems = problems;
    }

    /// The agent's own status, for changing or answering.
    pub fn status(&self) -> std::sync::MutexGuard<'_, AgentStatus> {
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
