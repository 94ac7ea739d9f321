//! The agent's Prometheus metrics: sync duration and outcome, entries written, map fill and
//! capacity, frontends and backends programmed, objects skipped by validation, errors by kind,
//! and (through [`super::traffic`]) per-frontend counters read from the datapath.

use std::sync::{Arc, atomic::AtomicBool};

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
use crate::{kernel::maps::LruFill, plan::Diagnostic};

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// `namespace/name`.
    pub service: String,
    /// [`crate::plan::Kind::refusal`].
    pub reason: String,
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
    pub destroyed_sockets: Counter,
    pub expired_flows: Counter,
    pub conntrack_entries: Gauge,
    pub frontends: Gauge,
    pub backends: Gauge,
    pub frontends_not_programmed: Gauge,
    pub objects_skipped: Gauge,
    pub device_problems: Gauge,
    pub bpffs_private: Gauge,
    pub map_entries: Family<MapLabel, Gauge>,
    pub map_capacity: Family<MapLabel, Gauge>,
    map_evicted: Family<MapLabel, Counter>,
    map_insert_failures: Family<MapLabel, Counter>,
    refused: Family<RefusalLabels, Gauge>,
    errors: ErrorCounters,
    pub ready: AtomicBool,
    /// What `/status` answers (`svclb status` reads it).
    pub status: std::sync::Mutex<AgentStatus>,
}

impl Metrics {
    /// The agent's metrics, with the error counters made before them; `traffic` adds the
    /// per-frontend counters read at each scrape.
    pub fn new(errors: ErrorCounters, traffic: Option<Arc<TrafficCollector>>) -> Arc<Self> {
        let mut metrics = Self {
            registry: Registry::with_prefix("svclb"),
            sync_duration: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            syncs: Counter::default(),
            entries_written: Counter::default(),
            write_errors: Counter::default(),
            purged_flows: Counter::default(),
            purged_affinities: Counter::default(),
            destroyed_sockets: Counter::default(),
            expired_flows: Counter::default(),
            conntrack_entries: Gauge::default(),
            frontends: Gauge::default(),
            backends: Gauge::default(),
            frontends_not_programmed: Gauge::default(),
            objects_skipped: Gauge::default(),
            device_problems: Gauge::default(),
            bpffs_private: Gauge::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
            map_evicted: Family::default(),
            map_insert_failures: Family::default(),
            refused: Family::default(),
            errors,
            ready: AtomicBool::new(false),
            status: std::sync::Mutex::default(),
        };
        metrics.register(traffic);
        Arc::new(metrics)
    }

    /// Registers every metric (and the traffic collector) under the `svclb` prefix.
    fn register(&mut self, traffic: Option<Arc<TrafficCollector>>) {
        let registry = &mut self.registry;
        if let Some(traffic) = traffic {
            registry.register_collector(Box::new(traffic));
        }
        registry.register_with_unit(
            "sync_duration",
            "Time from reading the source to the last map write of a sync",
            Unit::Seconds,
            self.sync_duration.clone(),
        );
        let counters: [(&str, &str, &Counter); 7] = [
            ("syncs", "Syncs of the maps with the source", &self.syncs),
            (
                "map_entries_written",
                "Map entries written or deleted by syncs",
                &self.entries_written,
            ),
            (
                "map_write_errors",
                "Map writes that failed (a full map, a kernel error)",
                &self.write_errors,
            ),
            (
                "conntrack_entries_purged",
                "Conntrack entries of UDP flows removed because their backend left the service",
                &self.purged_flows,
            ),
            (
                "affinity_entries_purged",
                "Session affinities removed because their backend left the service",
                &self.purged_affinities,
            ),
            (
                "udp_sockets_destroyed",
                "Connected UDP sockets socket-level load balancing sent to a backend that left the service, destroyed so they reconnect",
                &self.destroyed_sockets,
            ),
            (
                "conntrack_entries_expired",
                "Conntrack entries removed by the sweep: flows that ended (FIN or RST, then 10 s idle), UDP idle 60 s, TCP idle 24 h",
                &self.expired_flows,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "errors",
            "Errors by kind: map_write (a map write the kernel refused; retried), device (a device not attached, or attached only in part), watch (a Kubernetes watch or the manifests file watcher failed; retried)",
            self.errors.0.clone(),
        );
        let gauges: [(&str, &str, &Gauge); 7] = [
            (
                "conntrack_entries",
                "Tracked flow directions in the conntrack map (two per flow), counted by the last sweep (every 10 s)",
                &self.conntrack_entries,
            ),
            (
                "frontends",
                "Frontends programmed in the maps",
                &self.frontends,
            ),
            (
                "backends",
                "Backends programmed in the maps",
                &self.backends,
            ),
            (
                "frontends_not_programmed",
                "Frontends planned but not programmed (kinds the datapath does not serve yet)",
                &self.frontends_not_programmed,
            ),
            (
                "objects_skipped",
                "Objects (or parts of them) skipped by validation, with a logged reason",
                &self.objects_skipped,
            ),
            (
                "devices_degraded",
                "Devices attached only in part (an uplink without XDP is served through tc alone; see the log)",
                &self.device_problems,
            ),
            (
                "bpffs_private",
                "1 when the agent mounted its own bpf filesystem in a mount namespace of its own: its pinned maps and links vanish when it exits and a restart starts from nothing",
                &self.bpffs_private,
            ),
        ];
        for (name, help, gauge) in gauges {
            registry.register(name, help, gauge.clone());
        }
        let families: [(&str, &str, &Family<MapLabel, Gauge>); 2] = [
            (
                "map_entries",
                "Entries in each pinned map",
                &self.map_entries,
            ),
            (
                "map_capacity_entries",
                "Capacity of each pinned map",
                &self.map_capacity,
            ),
        ];
        for (name, help, family) in families {
            registry.register(name, help, family.clone());
        }
        let families: [(&str, &str, &Family<MapLabel, Counter>); 2] = [
            (
                "map_evicted_entries",
                "Entries each LRU flow map (conntrack, affinity, fragments, socket reverse) lost to eviction because it was full, counted at each conntrack sweep",
                &self.map_evicted,
            ),
            (
                "map_insert_failures",
                "Inserts into each LRU flow map that failed",
                &self.map_insert_failures,
            ),
        ];
        for (name, help, family) in families {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "frontends_refused",
            "Frontends of each Service refused, by reason: conflict (another Service serves the address and port), reserved_address (an externalIP on a reserved address), map_full (no room in the maps)",
            self.refused.clone(),
        );
    }

    /// Names the Services with refused frontends among `diags`, each with how many by reason.
    pub fn set_refusals<'a>(&self, diags: impl IntoIterator<Item = &'a Diagnostic>) {
        self.refused.clear();
        for diag in diags {
            let Some(reason) = diag.kind.refusal() else {
                continue;
            };
            let service = diag.object.strip_prefix("Service ").unwrap_or(&diag.object);
            let labels = RefusalLabels {
                service: service.to_owned(),
                reason: reason.to_owned(),
            };
            self.refused.get_or_create(&labels).inc();
        }
    }

    /// An LRU flow map's fill, and its evictions and failed inserts as counted since the map
    /// was made (each counter is raised to what was counted: never lowered).
    pub fn set_lru(&self, fill: &LruFill) {
        self.set_map(&fill.map, fill.entries, fill.capacity as usize);
        let label = MapLabel {
            map: fill.map.clone(),
        };
        for (family, value) in [
            (&self.map_evicted, fill.evicted()),
            (&self.map_insert_failures, fill.failed),
        ] {
            let counter = family.get_or_create(&label);
            counter.inc_by(value.saturating_sub(counter.get()));
        }
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
