//! Per-CPU counters as the agent reads them: the datapath's events (a per-CPU array of a few
//! slots) and each frontend's counters (`SVCLB_STATS`, `SVCLB_SOCK_STATS`: per-CPU hashes
//! without preallocation, holding an entry for each programmed frontend only, so their memory
//! is the frontends programmed times the CPUs, not the capacity times the CPUs).

use std::collections::BTreeSet;

use anyhow::{Context as _, Result};
use aya::maps::{Map, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues};
use svclb_common::{FrontendStats, SockStats};

/// Per-CPU counters whose CPUs add up.
pub(super) trait Counters: aya::Pod + Default {
    fn plus(self, other: Self) -> Self;
}

impl Counters for u64 {
    fn plus(self, other: Self) -> Self {
        self.wrapping_add(other)
    }
}

impl Counters for FrontendStats {
    fn plus(self, other: Self) -> Self {
        Self::plus(self, other)
    }
}

impl Counters for SockStats {
    fn plus(self, other: Self) -> Self {
        Self::plus(self, other)
    }
}

fn sum<T: Counters>(values: &PerCpuValues<T>) -> T {
    values.iter().fold(T::default(), |sum, cpu| sum.plus(*cpu))
}

fn possible_cpus() -> Result<usize> {
    Ok(aya::util::nr_cpus()
        .map_err(|(what, err)| anyhow::anyhow!("{what}: {err}"))?
        .get() as usize)
}

/// Counters in the slots of a per-CPU array (`SVCLB_EVENTS`).
pub(super) struct Slots<T: Counters> {
    map: PerCpuArray<MapData, T>,
}

impl<T: Counters> Slots<T> {
    pub(super) fn new(map: Map, name: &str) -> Result<Self> {
        Ok(Self {
            map: PerCpuArray::try_from(map).with_context(|| format!("map {name}"))?,
        })
    }

    /// Slot `index`, summed over the CPUs (`None` past the array).
    pub(super) fn get(&self, index: u32) -> Option<T> {
        Some(sum(&self.map.get(&index, 0).ok()?))
    }
}

impl Slots<u64> {
    /// Adds `n` to slot `index` (on the first CPU's value): for counters only the agent
    /// writes, so nothing else changes them between the read and the write.
    pub(super) fn add(&mut self, index: u32, n: u64) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let mut values: Vec<u64> = self.map.get(&index, 0)?.iter().copied().collect();
        if let Some(first) = values.first_mut() {
            *first = first.wrapping_add(n);
        }
        self.map.set(index, PerCpuValues::try_from(values)?, 0)?;
        Ok(())
    }
}

/// Each programmed frontend's counters, by frontend id. The datapath counts only into an
/// entry that is there: the agent makes it with the frontend, and removes it with it.
pub(super) struct PerFrontend<T: Counters> {
    map: PerCpuHashMap<MapData, u32, T>,
    cpus: usize,
}

/// `BPF_NOEXIST`.
const NOEXIST: u64 = 1;

impl<T: Counters> PerFrontend<T> {
    pub(super) fn new(map: Map, name: &str) -> Result<Self> {
        Ok(Self {
            map: PerCpuHashMap::try_from(map).with_context(|| format!("map {name}"))?,
            cpus: possible_cpus()?,
        })
    }

    /// Frontend `id`'s counters, summed over the CPUs (`None` for a frontend without).
    pub(super) fn get(&self, id: u32) -> Option<T> {
        Some(sum(&self.map.get(&id, 0).ok()?))
    }

    /// Gives frontend `id` counters from zero, unless it has some.
    pub(super) fn open(&mut self, id: u32) -> Result<()> {
        let zeros = PerCpuValues::try_from(vec![T::default(); self.cpus])?;
        match self.map.insert(&id, zeros, NOEXIST) {
            Err(MapError::SyscallError(err))
                if err.io_error.raw_os_error() == Some(libc::EEXIST) =>
            {
                Ok(())
            }
            other => Ok(other?),
        }
    }

    /// Removes frontend `id`'s counters (its frontend is gone, and the id may go to a new one).
    pub(super) fn close(&mut self, id: u32) -> Result<()> {
        match self.map.remove(&id) {
            Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(err))
                if err.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            other => Ok(other?),
        }
    }

    /// Removes the counters of every id not in `ids`.
    pub(super) fn retain(&mut self, ids: &BTreeSet<u32>) -> Result<()> {
        let stale: Vec<u32> = self
            .map
            .keys()
            .flatten()
            .filter(|id| !ids.contains(id))
            .collect();
        for id in stale {
            self.close(id)?;
        }
        Ok(())
    }
}
