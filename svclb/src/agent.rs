//! The agent: manifests -> model -> plan -> diff -> maps, and the device attachments.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use futures::StreamExt as _;
use notify::{EventKind, RecursiveMode, Watcher as _};
use rtnetlink::{MulticastGroup, new_multicast_connection};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tracing::{debug, error, info, warn};

use crate::{
    devices::{DeviceSelector, Devices},
    diag::Diagnostic,
    kernel_maps::Maps,
    loader::{self, MapSizes},
    manifest::ManifestSource,
    mapstate::{self, Capacity, MapState},
    model::{self, NodeInfo},
    reconcile,
};

/// Changes to the manifests are applied after the directory has been quiet this long, so an
/// editor's several writes make one sync.
const DEBOUNCE: Duration = Duration::from_millis(100);

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node_name: String,
    pub manifests: PathBuf,
    pub devices: DeviceSelector,
    pub bpffs_dir: PathBuf,
    pub map_sizes: MapSizes,
}

/// The programmed state and what is needed to move it.
struct Syncer {
    node: NodeInfo,
    source: ManifestSource,
    maps: Maps,
    programmed: MapState,
    capacity: Capacity,
    /// Diagnostics already logged, so each problem is logged once, not at every sync.
    reported: BTreeSet<Diagnostic>,
}

impl Syncer {
    fn sync(&mut self) {
        let started = Instant::now();
        let snapshot = self.source.read();
        let (plan, plan_diags) = model::plan(&self.node, &snapshot.services, &snapshot.slices);
        let (desired, map_diags) = mapstate::desired(&plan, &self.programmed, self.capacity);
        let report = reconcile::sync(&mut self.programmed, &desired, &mut self.maps);

        let diags: BTreeSet<Diagnostic> = snapshot
            .diagnostics
            .into_iter()
            .chain(plan_diags)
            .chain(map_diags)
            .collect();
        for diag in diags.difference(&self.reported) {
            warn!("{diag}");
        }
        self.reported = diags;
        for err in &report.errors {
            error!("map write failed: {err}");
        }
        let took_us = started.elapsed().as_micros() as u64;
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
                writes = report.writes,
                errors = report.errors.len(),
                took_us,
                "synced"
            );
        }
    }
}

pub async fn run(config: AgentConfig) -> Result<()> {
    loader::require_root("svclb agent")?;
    if !config.manifests.is_dir() {
        bail!(
            "manifests directory {} does not exist",
            config.manifests.display()
        );
    }
    loader::prepare_bpffs(&config.bpffs_dir)?;
    let mut ebpf = loader::load(&config.bpffs_dir, config.map_sizes)?;
    let mut maps = Maps::take(&mut ebpf)?;

    // Take over what an earlier run left: its entries are the starting point of the diff, and
    // slots no frontend owns are removed now.
    let readback = maps.read().context("reading the pinned maps")?;
    for key in &readback.orphan_slots {
        maps.delete_slot(*key)
            .with_context(|| format!("deleting stale slot {key:?}"))?;
    }
    info!(
        frontends = readback.state.services.len(),
        backends = readback.state.backends.len(),
        stale_slots = readback.orphan_slots.len(),
        pin_dir = %config.bpffs_dir.display(),
        "adopted pinned maps"
    );

    // Subscribe before listing, so a device created in between is not missed.
    let (connection, handle, mut link_events) =
        new_multicast_connection(&[MulticastGroup::Link]).context("opening an rtnetlink socket")?;
    tokio::spawn(connection);
    let mut devices = Devices::new(ebpf, config.devices.clone())?;
    if let Err(err) = devices.attach_existing(&handle).await {
        devices.detach_all();
        return Err(err);
    }

    let (tx, mut changes) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reading the files raises access events of our own; only changes matter.
        if let Ok(event) = &event
            && matches!(event.kind, EventKind::Access(_))
        {
            return;
        }
        // The receiver lives as long as the agent loop; a failed send means it is stopping.
        let _ = tx.send(event.map(|_| ()));
    })
    .context("creating a file watcher")?;
    watcher
        .watch(&config.manifests, RecursiveMode::Recursive)
        .with_context(|| format!("watching {}", config.manifests.display()))?;

    let mut syncer = Syncer {
        node: NodeInfo {
            name: config.node_name.clone(),
        },
        source: ManifestSource::new(&config.manifests),
        maps,
        programmed: readback.state,
        capacity: Capacity {
            services: config.map_sizes.services,
            backends: config.map_sizes.backends,
        },
        reported: BTreeSet::new(),
    };
    syncer.sync();
    info!(
        node = %config.node_name,
        devices = ?devices.attached_names(),
        manifests = %syncer.source.dir().display(),
        "serving"
    );

    let mut sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break; }
            _ = sigint.recv() => { info!("interrupted: stopping"); break; }
            Some((message, _)) = link_events.next() => devices.on_message(message),
            Some(event) = changes.recv() => {
                if let Err(err) = event {
                    warn!("file watcher: {err}");
                }
                // Let a burst of writes settle, then sync once.
                tokio::time::sleep(DEBOUNCE).await;
                while changes.try_recv().is_ok() {}
                syncer.sync();
            }
        }
    }
    devices.detach_all();
    info!(
        "stopped; maps stay pinned in {}",
        config.bpffs_dir.display()
    );
    Ok(())
}
