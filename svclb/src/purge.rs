//! Letting go of backends that left a frontend, off the sync's path: walking a conntrack map of
//! 200k entries takes some 200 ms of syscalls, which must not hold up the next change. A
//! worker thread with its own handles on the pinned maps takes the (frontend, backend) pairs
//! each sync reports, merges whatever queued while it walked, and walks once for all.
//!
//! A pair may reach the worker after a later sync handed its ids to other frontends or
//! backends; the worst that does is make a few UDP flows of those pick a backend again, and a
//! client lose its affinity once. Established TCP connections are never purged.

use std::{
    collections::BTreeSet,
    path::Path,
    sync::{Arc, mpsc},
    thread,
};

use anyhow::{Context as _, Result};
use tracing::{error, info};

use crate::{
    kernel_maps::{Maps, Purged},
    metrics::Metrics,
};

pub struct Purger {
    tx: mpsc::Sender<BTreeSet<(u32, u32)>>,
}

impl Purger {
    /// Starts the worker on the maps pinned in `dir`.
    pub fn start(dir: &Path, metrics: Arc<Metrics>) -> Result<Self> {
        let mut maps = Maps::open_pinned(dir)?;
        let (tx, rx) = mpsc::channel::<BTreeSet<(u32, u32)>>();
        thread::Builder::new()
            .name("svclb-purge".into())
            .spawn(move || {
                while let Ok(mut departed) = rx.recv() {
                    while let Ok(more) = rx.try_recv() {
                        departed.extend(more);
                    }
                    match maps.purge(&departed) {
                        Ok(purged) if purged != Purged::default() => {
                            metrics.purged_flows.inc_by(purged.flows as u64);
                            metrics.purged_affinities.inc_by(purged.affinities as u64);
                            info!(
                                conntrack = purged.flows,
                                affinity = purged.affinities,
                                "let go of removed backends"
                            );
                        }
                        Ok(_) => {}
                        Err(err) => error!("purging flows of removed backends: {err:#}"),
                    }
                }
            })
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
