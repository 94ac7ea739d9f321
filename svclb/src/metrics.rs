//! The agent's Prometheus metrics and health endpoint (`--metrics-addr`).
//!
//! `/metrics`: sync duration and outcome, entries written, map fill and capacity, frontends
//! and backends programmed, objects skipped by validation. `/healthz`: 200 once the first full
//! sync is done, 503 before (a DaemonSet readiness probe: a rolling update waits for it).

use std::{
    net::SocketAddr,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
};

use anyhow::{Context as _, Result};
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
use tokio::net::TcpListener;
use tracing::{debug, info};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub kind: String,
}

/// `svclb_errors_total{kind}`, counted where the errors happen (watchers, device handling,
/// syncs), which run before and beside the registry.
static ERRORS: LazyLock<Family<ErrorLabel, Counter>> = LazyLock::new(Family::default);

/// The kinds of [`count_errors`].
pub const ERROR_MAP_WRITE: &str = "map_write";
pub const ERROR_DEVICE: &str = "device";
pub const ERROR_WATCH: &str = "watch";
pub const ERROR_CONNTRACK: &str = "conntrack";

/// Counts `n` errors of `kind` (one of the `ERROR_*` kinds).
pub fn count_errors(kind: &str, n: u64) {
    ERRORS
        .get_or_create(&ErrorLabel {
            kind: kind.to_owned(),
        })
        .inc_by(n);
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
    pub ready: AtomicBool,
    /// What `/status` answers (`svclb status` reads it).
    pub status: std::sync::Mutex<crate::status::AgentStatus>,
}

impl Metrics {
    /// The agent's metrics; `traffic` adds the per-frontend counters read at each scrape.
    pub fn new(traffic: Option<Arc<crate::traffic::TrafficCollector>>) -> Arc<Self> {
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
            ERRORS.clone(),
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

    /// The attached devices and those attached only in part.
    pub fn set_devices(&self, devices: &crate::devices::Devices) {
        let problems = devices.problems();
        self.device_problems.set(problems.len() as i64);
        let mut status = self.status();
        status.devices = devices.attached_names();
        status.device_problems = problems;
    }

    /// The agent's own status, for changing or answering.
    pub fn status(&self) -> std::sync::MutexGuard<'_, crate::status::AgentStatus> {
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

/// Binds `addr` and serves `/metrics` and `/healthz`; the returned task serves until aborted
/// (or the process ends).
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics endpoint on {addr} (--metrics-addr)"))?;
    info!(%addr, "metrics and health on /metrics and /healthz");
    Ok(tokio::spawn(async move {
        while let Ok((mut stream, peer)) = listener.accept().await {
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let Some(path) = crate::http::read_path(&mut stream).await else {
                    return;
                };
                let (status, content_type, body) = match path.as_str() {
                    "/metrics" => (
                        "200 OK",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        metrics.encode(),
                    ),
                    "/status" => (
                        "200 OK",
                        "application/json",
                        serde_json::to_string(&*metrics.status()).unwrap_or_default(),
                    ),
                    "/healthz" if metrics.ready.load(Ordering::Relaxed) => {
                        ("200 OK", "text/plain", "ok\n".to_owned())
                    }
                    "/healthz" => (
                        "503 Service Unavailable",
                        "text/plain",
                        "waiting for the first full sync\n".to_owned(),
                    ),
                    _ => (
                        "404 Not Found",
                        "text/plain",
                        "try /metrics, /healthz or /status\n".to_owned(),
                    ),
                };
                if let Err(err) =
                    crate::http::respond(&mut stream, status, content_type, &body).await
                {
                    debug!(%peer, %err, "metrics client went away");
                }
            });
        }
    }))
}
