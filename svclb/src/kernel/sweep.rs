//! The agent's handle on the datapath's sweep program (`svclb_sweep`), which deletes the
//! conntrack entries of flows that are over in the kernel, where it can check each one next
//! to its delete (see `svclb_common::conntrack::SweepItem`). The program is pinned beside the
//! maps, so the purge worker opens it as it opens them.

use std::{fs, path::Path};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
};
use svclb_common::{
    SweepItem,
    conntrack::{SWEEP_BATCH, SWEEP_HEADER},
};

use super::object::SWEEP_PROGRAM;

/// CLOCK_MONOTONIC in nanoseconds: the clock of the datapath's `bpf_ktime_get_ns` (and of its
/// `bpf_ktime_get_coarse_ns`, which lags it by up to a tick).
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}

pub struct Sweeper {
    program: SchedClassifier,
}

/// Loads the sweep program of a freshly loaded object and pins it in `dir`, in place of an
/// earlier run's.
pub fn install(ebpf: &mut Ebpf, dir: &Path) -> Result<()> {
    let program: &mut SchedClassifier = ebpf
        .program_mut(SWEEP_PROGRAM)
        .with_context(|| format!("the datapath object has no program {SWEEP_PROGRAM}"))?
        .try_into()?;
    program
        .load()
        .with_context(|| format!("loading program {SWEEP_PROGRAM}"))?;
    let pin = dir.join(SWEEP_PROGRAM);
    match fs::remove_file(&pin) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("removing {}", pin.display())),
    }
    program
        .pin(&pin)
        .with_context(|| format!("pinning program {SWEEP_PROGRAM} at {}", pin.display()))
}

impl Sweeper {
    /// Opens the sweep program an agent pinned in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let pin = dir.join(SWEEP_PROGRAM);
        let program = SchedClassifier::from_pin(&pin)
            .with_context(|| format!("opening pinned program {}", pin.display()))?;
        Ok(Self { program })
    }

    /// Hands `items` to the program, [`SWEEP_BATCH`] per run; returns how many entries it
    /// deleted.
    pub fn run(&self, items: &[SweepItem]) -> Result<usize> {
        let mut deleted = 0;
        let mut frame = Vec::with_capacity(SWEEP_HEADER + SWEEP_BATCH * size_of::<SweepItem>());
        for batch in items.chunks(SWEEP_BATCH) {
            frame.clear();
            frame.resize(SWEEP_HEADER, 0);
            for item in batch {
                frame.extend_from_slice(bytes_of(item));
            }
            let result = self
                .program
                .test_run(TestRunOptions {
                    data_in: Some(&frame),
                    ..TestRunOptions::default()
                })
                .with_context(|| format!("running program {SWEEP_PROGRAM}"))?;
            deleted += result.return_value as usize;
        }
        Ok(deleted)
    }
}

fn bytes_of(item: &SweepItem) -> &[u8] {
    // SAFETY: `SweepItem` is `#[repr(C)]` plain data with explicit padding: all of its bytes
    // are initialized.
    unsafe {
        std::slice::from_raw_parts(
            std::ptr::from_ref(item).cast::<u8>(),
            size_of::<SweepItem>(),
        )
    }
}
