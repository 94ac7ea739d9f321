//! Preflight checks and loading of the datapath object with its maps pinned.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use aya::{Ebpf, EbpfLoader};
use nix::unistd::geteuid;
use svclb_common::limits::{
    MAP_AFFINITY, MAP_BACKENDS, MAP_CT, MAP_FRAGS, MAP_MAGLEV, MAP_SERVICES, MAP_SLOTS,
    MAP_SOCK_REVERSE, MAP_SOCK_STATS, MAP_SOURCE_RANGES, MAP_STATS,
};

use super::{
    migrate::{self, Migration},
    object::OBJECT,
};
use crate::entries::Capacity;

pub fn require_root(what: &str) -> Result<()> {
    let uid = geteuid();
    if !uid.is_root() {
        bail!("{what} needs root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN); running as uid {uid}");
    }
    Ok(())
}

/// Each map's `max_entries` as `sizes` gives it. Frontend ids stay below twice the services
/// map's capacity (see `STATS_MAX`).
fn max_entries(sizes: &Capacity) -> Result<Vec<(&'static str, u32)>> {
    let stats = sizes.services.saturating_mul(2);
    [
        (MAP_SERVICES, sizes.services),
        (MAP_BACKENDS, sizes.backends),
        (MAP_SLOTS, sizes.slots),
        (MAP_CT, sizes.conntrack),
        (MAP_MAGLEV, sizes.maglev_tables),
        (MAP_AFFINITY, sizes.affinity),
        (MAP_SOURCE_RANGES, sizes.source_ranges),
        (MAP_FRAGS, sizes.fragments),
        (MAP_STATS, stats),
        (MAP_SOCK_STATS, stats),
        (MAP_SOCK_REVERSE, sizes.sock_reverse),
    ]
    .into_iter()
    .map(|(map, size)| {
        let size = u32::try_from(size)
            .with_context(|| format!("map {map}: a size of {size} entries is too large"))?;
        Ok((map, size))
    })
    .collect()
}

/// Loads the datapath object. Maps already pinned in `pin_dir` by an earlier run are reused,
/// so their entries (and established flows) survive a restart; missing ones are created and
/// pinned; those this build defines differently are migrated (see `migrate`): their entries
/// are carried over, and the returned migration is finished once the new programs are
/// attached.
pub fn load(pin_dir: &Path, sizes: &Capacity) -> Result<(Ebpf, Migration)> {
    if OBJECT.is_empty() {
        bail!("this svclb binary was built with AYA_BUILD_SKIP=1 and holds no eBPF programs");
    }
    let sizes = max_entries(sizes)?;
    let expected = migrate::expected(&sizes)?;
    let migration = migrate::prepare(pin_dir, &expected)?;
    let pin_dir: PathBuf = pin_dir.to_path_buf();
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(&pin_dir);
    for (map, size) in sizes {
        loader.map_max_entries(map, size);
    }
    let ebpf = loader.load(OBJECT).with_context(|| {
        format!(
            "loading the datapath with maps pinned in {}",
            pin_dir.display()
        )
    })?;
    migration.carry()?;
    Ok((ebpf, migration))
}
