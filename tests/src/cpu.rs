//! One CPU's time, for benchmarks that load it: pinning to it, and how busy /proc/stat says
//! it was.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

/// Pins the calling thread (and what it starts after) to `cpu`.
pub fn pin_self(cpu: usize) -> Result<()> {
    pin(0, cpu)
}

/// Lets the calling thread (and what it starts after) run on every CPU again.
pub fn unpin_self() -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    for cpu in 0..nix::sched::CpuSet::count() {
        // (Past the machine's CPUs, a set bit is ignored.)
        let _ = set.set(cpu);
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .context("unpinning the calling thread")
}

/// Pins process (or thread) `pid` (0: the caller) to `cpu`.
pub fn pin(pid: i32, cpu: usize) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(pid), &set)
        .with_context(|| format!("pinning {pid} to CPU {cpu}"))
}

/// A CPU's busy and total jiffies, from /proc/stat.
pub fn times(cpu: usize) -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let name = format!("cpu{cpu} ");
    let line = stat
        .lines()
        .find(|l| l.starts_with(&name))
        .with_context(|| format!("no {name} in /proc/stat"))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let total: u64 = values.iter().take(8).sum();
    let idle = values[3] + values[4];
    Ok((total - idle, total))
}

/// The busy share /proc/stat shows for `cpu` while a thread spins on it for half a second:
/// what "saturated" reads on this machine.
pub fn ceiling(cpu: usize) -> Result<f64> {
    std::thread::spawn(move || -> Result<f64> {
        pin_self(cpu)?;
        let before = times(cpu)?;
        let started = Instant::now();
        let mut spins = 0u64;
        while started.elapsed() < Duration::from_millis(500) {
            spins = std::hint::black_box(spins + 1);
        }
        Ok(busy_share(before, times(cpu)?))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the calibration thread panicked"))?
}

/// The busy share of a CPU between two [`times`].
pub fn busy_share((busy0, total0): (u64, u64), (busy1, total1): (u64, u64)) -> f64 {
    (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64
}

/// Pins every thread of process `pid` to `cpu` (threads it starts later inherit the mask of
/// the thread that starts them).
pub fn pin_process(pid: u32, cpu: usize) -> Result<()> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let tid: i32 = task?.file_name().to_string_lossy().parse()?;
        pin(tid, cpu)?;
    }
    Ok(())
}
