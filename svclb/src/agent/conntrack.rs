//! Letting go of backends that left a frontend, off the sync's path: walking a conntrack map of
//! 200k entries takes some 200 ms of syscalls, which must not hold up the next change. A
//! worker thread with its own handles on the pinned maps takes the (frontend, backend) pairs
//! each sync reports, merges whatever queued while it walked, and walks once for all.
//!
//! The same worker sweeps the conntrack every [`SWEEP_EVERY`] (`--conntrack-gc-interval`),
//! and counts its entries as it walks (`svclb_conntrack_entries`: a scrape walks nothing),
//! then walks the other LRU flow maps to count what each lost to eviction
//! (`svclb_map_evicted_entries_total`). Flows that are over (a TCP FIN or RST and 10 s of
//! quiet, UDP flows idle for 60 s and TCP flows idle for 24 h, see
//! `flow_ended`) go, both directions, so their room and SNAT ports are free again (the
//! datapath also takes over an ended flow's SNAT port by itself when it needs one). The
//! sweep program decides on each entry in the kernel (see [`crate::kernel::sweep`]).
//!
//! Connected UDP sockets that socket-level load balancing sent to a departed backend are
//! destroyed by the same worker (see [`crate::kernel::udp_sockets`]).
//!
//! A pair may reach the worker after a later sync handed its ids to other frontends or
//! backends; the worst that does is make a few UDP flows of those pick a backend again, and a
//! client lose its affinity once. Established TCP connections are never purged.

use std::{
    collections::BTreeSet,
    path::Path,
    sync::{Arc, mpsc},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use tracing::{debug, error, info};

use crate::{
    kernel::{
        maps::{Maps, Purged},
        sweep::{Sweeper, monotonic_ns},
        udp_sockets::{self, Reverse},
    },
    telemetry::metrics::{ERROR_CONNTRACK, Metrics},
};

/// How often the conntrack is swept for flows that are over, by default.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

pub struct Purger {
    tx: mpsc::Sender<BTreeSet<(u32, u32)>>,
}

/// The worker thread's state: its own handles on the pinned maps and the sweep program.
struct Worker {
    maps: Maps,
    sweeper: Sweeper,
    /// The socket hooks' reverse map.
    sockets: Reverse,
    metrics: Arc<Metrics>,
    rx: mpsc::Receiver<BTreeSet<(u32, u32)>>,
    /// Time between two sweeps (`None`: no sweep).
    sweep_every: Option<Duration>,
}

impl Worker {
    /// Sweeps every `sweep_every` and purges what syncs report, until the agent goes.
    fn run(mut self) {
        let mut next_sweep = self.sweep_every.map(|every| Instant::now() + every);
        loop {
            let received = match next_sweep {
                Some(at) => self
                    .rx
                    .recv_timeout(at.saturating_duration_since(Instant::now())),
                // No sweeps: the worker waits for pairs alone.
                None => self
                    .rx
                    .recv()
                    .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            };
            let mut departed = match received {
                Ok(departed) => departed,
                Err(mpsc::RecvTimeoutError::Timeout) => BTreeSet::new(),
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            if let (Some(at), Some(every)) = (next_sweep, self.sweep_every)
                && Instant::now() >= at
            {
                self.sweep();
                next_sweep = Some(Instant::now() + every);
            }
            if departed.is_empty() {
                continue;
            }
            while let Ok(more) = self.rx.try_recv() {
                departed.extend(more);
            }
            self.purge(&departed);
            self.destroy_sockets(&departed);
        }
    }

    fn destroy_sockets(&mut self, departed: &BTreeSet<(u32, u32)>) {
        let wanted = self.sockets.sockets_of(departed);
        if wanted.is_empty() {
            return;
        }
        let sought: usize = wanted.values().map(BTreeSet::len).sum();
        match udp_sockets::destroy(&wanted) {
            Ok(destroyed) => {
                let forgotten = self.sockets.forget(&destroyed);
                if let Err(err) = self.maps.count_socket_entries_deleted(forgotten as u64) {
                    error!("counting the socket entries deleted: {err:#}");
                }
                self.metrics
                    .destroyed_sockets
                    .inc_by(destroyed.len() as u64);
                // Said whatever the outcome: a socket not found is closed already, or in a
                // namespace the search could not enter (warned of).
                info!(
                    "destroyed {} of {sought} UDP sockets connected to removed backends",
                    destroyed.len()
                );
            }
            Err(err) => {
                self.metrics.count_errors(ERROR_CONNTRACK, 1);
                error!("destroying UDP sockets of removed backends: {err:#}");
            }
        }
    }

    fn sweep(&mut self) {
        match self.maps.sweep(&self.sweeper, monotonic_ns()) {
            Ok(swept) => {
                self.metrics.expired_flows.inc_by(swept.removed as u64);
                self.metrics.conntrack_entries.set(swept.left as i64);
                for fill in self.maps.lru_fills(swept.left) {
                    if fill.evicted() > 0 || fill.failed > 0 {
                        debug!(
                            map = fill.map,
                            evicted = fill.evicted(),
                            failed = fill.failed,
                            "map full"
                        );
                    }
                    self.metrics.set_lru(&fill);
                }
                debug!(
                    removed = swept.removed,
                    left = swept.left,
                    "conntrack swept"
                );
            }
            Err(err) => {
                self.metrics.count_errors(ERROR_CONNTRACK, 1);
                error!("sweeping the conntrack: {err:#}");
            }
        }
    }

    fn purge(&mut self, departed: &BTreeSet<(u32, u32)>) {
        match self.maps.purge(&self.sweeper, departed) {
            Ok(purged) if purged != Purged::default() => {
                self.metrics.purged_flows.inc_by(purged.flows as u64);
                self.metrics
                    .purged_affinities
                    .inc_by(purged.affinities as u64);
                info!(
                    conntrack = purged.flows,
                    affinity = purged.affinities,
                    "let go of removed backends"
                );
            }
            Ok(_) => {}
            Err(err) => {
                self.metrics.count_errors(ERROR_CONNTRACK, 1);
                error!("purging flows of removed backends: {err:#}");
            }
        }
    }
}

impl Purger {
    /// Starts the worker on the maps pinned in `dir`, sweeping every `sweep_every`.
    pub fn start(dir: &Path, metrics: Arc<Metrics>, sweep_every: Option<Duration>) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<BTreeSet<(u32, u32)>>();
        let worker = Worker {
            maps: Maps::open_pinned(dir)?,
            sweeper: Sweeper::open(dir)?,
            sockets: Reverse::open_pinned(dir)?,
            metrics,
            rx,
            sweep_every,
        };
        thread::Builder::new()
            .name("svclb-purge".into())
            .spawn(move || worker.run())
            .context("starting the purge worker")?;
        Ok(Self { tx })
    }

    /// Hands `departed` to the worker; returns at once.
    pub fn purge(&self, departed: BTreeSet<(u32, u32)>) {
        if !departed.is_empty() {
            // The worker lives as long as the process.
            let _ = self.tx.send(departed);
        }
    }
}
