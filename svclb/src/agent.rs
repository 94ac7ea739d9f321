//! The agent: source -> model -> plan -> diff -> maps, and the device attachments.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use futures::StreamExt as _;
use ipnet::IpNet;
use rtnetlink::{MulticastGroup, new_multicast_connection};
use svclb_common::{
    limits::{MAP_BACKENDS, MAP_MAGLEV, MAP_SERVICES, MAP_SLOTS, MAP_SOURCE_RANGES},
    maglev::Maglev,
};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{debug, error, info, warn};

use crate::{
    delta::{self, Index},
    devices::{DeviceSelector, Devices},
    diag::Diagnostic,
    healthcheck::HealthChecks,
    kernel_maps::Maps,
    loader::{self, MapSizes},
    mapstate::{self, Capacity, MapState},
    metrics::Metrics,
    model::Planner,
    purge::Purger,
    reconcile,
    source::{Source, SourceConfig},
    status::{AgentStatus, LastSync, unix_ms},
    sweeper,
    traffic::TrafficCollector,
};

/// Changes are applied once the source has been quiet this long, so a burst of changes (an
/// editor's writes, a rollout's EndpointSlice updates) makes one sync...
const DEBOUNCE: Duration = Duration::from_millis(20);
/// ...but never later than this after the first change of the burst, however busy the source.
const MAX_DELAY: Duration = Duration::from_secs(1);
/// A sync that could not write everything is retried after this, doubling up to `RETRY_MAX`.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Devices are listed again this often, in case a link notification was lost.
const RESCAN: Duration = Duration::from_secs(10);
/// While the first lists are outstanding, say so this often.
const READY_LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node_name: String,
    /// `--nodeport-addresses`: NodePorts only on node addresses inside these.
    pub nodeport_cidrs: Vec<IpNet>,
    pub source: SourceConfig,
    pub devices: DeviceSelector,
    pub bpffs_dir: PathBuf,
    pub map_sizes: MapSizes,
    /// Table size and seed of every Maglev table.
    pub maglev: Maglev,
    /// Where `/metrics` and `/healthz` are served.
    pub metrics_addr: SocketAddr,
}

/// The programmed state and what is needed to move it.
struct Syncer {
    source: Source,
    /// The plan, kept up to date change by change.
    planner: Planner,
    maps: Maps,
    programmed: MapState,
    /// Lookups into `programmed` for O(change) syncs; rebuilt after every full sync.
    index: Index,
    /// The last sync wrote everything it planned: the next one may write only what changed.
    /// Otherwise (the first sync, a full map, a failed write) it compares everything.
    complete: bool,
    capacity: Capacity,
    /// Diagnostics already logged, so each problem is logged once, not at every sync.
    reported: BTreeSet<Diagnostic>,
    /// Frontends planned but left out of the maps at the last sync.
    not_programmed: usize,
    metrics: Arc<Metrics>,
    /// Answers the health-check node ports of Local-policy services.
    health: HealthChecks,
    /// Names the frontends whose counters `/metrics` exports.
    traffic: Option<Arc<TrafficCollector>>,
    /// Removes flows and affinities of departed backends, in the background.
    purger: Purger,
}

impl Syncer {
    fn record(&self, took: Duration, report: &reconcile::SyncReport, full: bool) {
        let m = &self.metrics;
        {
            let mut status = m.status();
            status.syncs += 1;
            status.last_sync = Some(LastSync {
                at_unix_ms: unix_ms(),
                duration_ms: took.as_secs_f64() * 1e3,
                full,
                writes: report.writes,
                errors: report.errors.len(),
            });
            status.frontends_not_programmed = self.not_programmed;
            status.objects_skipped = self.reported.len();
        }
        m.sync_duration.observe(took.as_secs_f64());
        m.syncs.inc();
        m.entries_written.inc_by(report.writes as u64);
        m.write_errors.inc_by(report.errors.len() as u64);
        crate::metrics::count_errors(crate::metrics::ERROR_MAP_WRITE, report.errors.len() as u64);
        m.frontends.set(self.programmed.services.len() as i64);
        m.backends.set(self.programmed.backends.len() as i64);
        m.frontends_not_programmed.set(self.not_programmed as i64);
        m.objects_skipped.set(self.reported.len() as i64);
        m.set_map(
            MAP_SERVICES,
            self.programmed.services.len(),
            self.capacity.services,
        );
        m.set_map(MAP_SLOTS, self.programmed.slots.len(), self.capacity.slots);
        m.set_map(
            MAP_BACKENDS,
            self.programmed.backends.len(),
            self.capacity.backends,
        );
        m.set_map(
            MAP_MAGLEV,
            self.programmed.tables.len(),
            self.capacity.maglev_tables,
        );
        m.set_map(
            MAP_SOURCE_RANGES,
            self.programmed.source_ranges.len(),
            self.capacity.source_ranges,
        );
    }

    /// Reads the sources and brings the maps in line. Returns whether something could not be
    /// written (a full map, a failed write), so the sync should be retried.
    fn sync(&mut self) -> bool {
        let started = Instant::now();
        let snapshot = self.source.snapshot();
        let read_us = started.elapsed().as_micros() as u64;
        let changed = self.planner.update(&snapshot);
        let plan = self.planner.plan();
        self.health.update(&plan.health_checks);
        let plan_us = started.elapsed().as_micros() as u64 - read_us;
        let delta = if self.complete {
            delta::sync(
                plan,
                &changed,
                &mut self.programmed,
                &mut self.index,
                self.capacity,
                &mut self.maps,
            )
        } else {
            None
        };
        let full = delta.is_none();
        let (report, departed, map_diags) = match delta {
            Some(delta) => (delta.report, delta.departed, Vec::new()),
            None => {
                let (desired, map_diags) = mapstate::desired(plan, &self.programmed, self.capacity);
                let departed = self.programmed.departed(&desired);
                let report = reconcile::sync(&mut self.programmed, &desired, &mut self.maps);
                self.index = Index::of(&self.programmed);
                (report, departed, map_diags)
            }
        };
        if let Some(traffic) = &self.traffic {
            if full {
                traffic.rebuild(plan, &self.programmed);
            } else {
                traffic.update(plan, &self.programmed, &changed);
            }
        }
        self.not_programmed = plan
            .frontends
            .len()
            .saturating_sub(self.programmed.services.len());
        let incomplete = !map_diags.is_empty() || !report.errors.is_empty();
        self.complete = !incomplete;
        self.purger.purge(departed);

        let diags: BTreeSet<Diagnostic> = snapshot
            .diagnostics
            .into_iter()
            .chain(self.planner.diagnostics().cloned())
            .chain(map_diags)
            .collect();
        for diag in diags.difference(&self.reported) {
            warn!("{diag}");
        }
        self.reported = diags;
        for err in &report.errors {
            error!("map write failed: {err}");
        }
        let took = started.elapsed();
        self.record(took, &report, full);
        let took_us = took.as_micros() as u64;
        let (frontends, backends) = (
            self.programmed.services.len(),
            self.programmed.backends.len(),
        );
        if report.writes == 0 && report.errors.is_empty() {
            debug!(frontends, backends, took_us, "synced, nothing changed");
        } else {
            info!(
                frontends,
                backends,
                changed = changed.len(),
                full,
                writes = report.writes,
                errors = report.errors.len(),
                read_us,
                plan_us,
                took_us,
                "synced"
            );
        }
        incomplete
    }
}

pub async fn run(config: AgentConfig) -> Result<()> {
    loader::require_root("svclb agent")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let source = Source::open(&config.source, &config.node_name).await?;
    let source_name = source.describe();
    loader::prepare_bpffs(&config.bpffs_dir)?;
    let mut ebpf = loader::load(&config.bpffs_dir, config.map_sizes)?;
    let maps = Maps::take(&mut ebpf, config.maglev)?;
    sweeper::install(&mut ebpf, &config.bpffs_dir)?;

    // Take over what an earlier run left: its entries are the starting point of the diff, so
    // the first sync deletes whatever is stale and rewrites nothing that is right.
    let programmed = maps.read().context("reading the pinned maps")?;
    info!(
        frontends = programmed.services.len(),
        slots = programmed.slots.len(),
        backends = programmed.backends.len(),
        pin_dir = %config.bpffs_dir.display(),
        "adopted pinned maps"
    );

    // Subscribe before listing, so a device created in between is not missed.
    let (connection, handle, mut link_events) =
        new_multicast_connection(&[MulticastGroup::Link]).context("opening an rtnetlink socket")?;
    tokio::spawn(connection);
    let mut devices = Devices::new(ebpf, config.devices.clone(), &config.bpffs_dir)?;
    if let Err(err) = devices.attach_existing(&handle).await {
        devices.abandon();
        return Err(err);
    }

    let traffic = match TrafficCollector::open(&config.bpffs_dir) {
        Ok(traffic) => Some(Arc::new(traffic)),
        Err(err) => {
            warn!("per-frontend counters are not exported: {err:#}");
            None
        }
    };
    let metrics = Metrics::new(traffic.clone());
    *metrics.status() = AgentStatus {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        node: config.node_name.clone(),
        source: source_name,
        pid: std::process::id(),
        started_unix: unix_ms() / 1000,
        ..AgentStatus::default()
    };
    metrics.set_devices(&devices);
    let _metrics_server = crate::metrics::serve(config.metrics_addr, metrics.clone()).await?;
    let mut syncer = Syncer {
        metrics: metrics.clone(),
        planner: Planner::new(&config.node_name, &config.nodeport_cidrs),
        not_programmed: 0,
        source,
        maps,
        programmed,
        index: Index::default(),
        complete: false,
        traffic,
        purger: Purger::start(&config.bpffs_dir, metrics.clone())?,
        capacity: Capacity {
            services: config.map_sizes.services as usize,
            slots: config.map_sizes.slots as usize,
            backends: config.map_sizes.backends as usize,
            maglev_tables: config.map_sizes.maglev_tables as usize,
            maglev_size: config.maglev.table_size,
            source_ranges: config.map_sizes.source_ranges as usize,
        },
        reported: BTreeSet::new(),
        health: HealthChecks::default(),
    };

    let mut rescan = tokio::time::interval_at(tokio::time::Instant::now() + RESCAN, RESCAN);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut link_events_open = true;
    let mut source_open = true;
    // The first sync waits for a complete view: programming a half-listed cluster would
    // delete the services not seen yet. Meanwhile the maps keep serving what they hold, and
    // devices keep being attached.
    let mut ready = false;
    let mut readiness = syncer.source.readiness();
    let mut waiting_log = tokio::time::interval_at(
        tokio::time::Instant::now() + READY_LOG_EVERY,
        READY_LOG_EVERY,
    );
    // When the next sync is due, and when the burst of changes it answers began.
    let mut sync_at: Option<Instant> = None;
    let mut burst_began: Option<Instant> = None;
    let mut retry_after = RETRY_MIN;
    loop {
        let due = async {
            match sync_at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break; }
            _ = sigint.recv() => { info!("interrupted: stopping"); break; }
            result = &mut readiness, if !ready => {
                result?;
                ready = true;
                sync_at = Some(Instant::now());
            }
            _ = waiting_log.tick(), if !ready => {
                warn!("{} has not listed everything yet; waiting, serving what the maps hold", syncer.source.describe());
            }
            message = link_events.next(), if link_events_open => match message {
                Some((message, _)) => {
                    devices.on_message(message);
                    metrics.set_devices(&devices);
                }
                None => {
                    link_events_open = false;
                    error!("link notifications stopped; new devices are found by the rescan every {RESCAN:?}");
                }
            },
            _ = rescan.tick() => {
                if let Err(err) = devices.rescan(&handle).await {
                    warn!("device rescan: {err:#}");
                    crate::metrics::count_errors(crate::metrics::ERROR_DEVICE, 1);
                }
                metrics.set_devices(&devices);
            }
            change = syncer.source.next_change(), if source_open => match change {
                Some(()) => {
                    let now = Instant::now();
                    let began = *burst_began.get_or_insert(now);
                    sync_at = Some((now + DEBOUNCE).min(began + MAX_DELAY));
                }
                None => {
                    source_open = false;
                    error!("{} reports no more changes; serving the last state", syncer.source.describe());
                }
            },
            () = due, if ready => {
                if burst_began.take().is_some() || !metrics.ready.load(Ordering::Relaxed) {
                    retry_after = RETRY_MIN;
                } else {
                    info!("retrying what could not be written");
                    retry_after = (retry_after * 2).min(RETRY_MAX);
                }
                let first = !metrics.ready.load(Ordering::Relaxed);
                sync_at = syncer.sync().then(|| Instant::now() + retry_after);
                if first {
                    metrics.ready.store(true, Ordering::Relaxed);
                    metrics.status().ready = true;
                    info!(
                        node = %config.node_name,
                        devices = ?devices.attached_names(),
                        source = %syncer.source.describe(),
                        "serving"
                    );
                }
            }
        }
    }
    drop(devices);
    info!(
        "stopped; the datapath stays attached, its links and maps pinned in {} (`svclb agent --cleanup` removes them)",
        config.bpffs_dir.display()
    );
    Ok(())
}
