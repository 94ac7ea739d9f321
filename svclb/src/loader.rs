//! Preflight checks and loading of the datapath object with its maps pinned.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::{Ebpf, EbpfLoader};
use nix::{
    mount::MsFlags,
    sys::statfs::{BPF_FS_MAGIC, statfs},
    unistd::geteuid,
};
use svclb_common::limits::{
    MAP_AFFINITY, MAP_BACKENDS, MAP_CT, MAP_FRAGS, MAP_MAGLEV, MAP_SERVICES, MAP_SLOTS,
    MAP_SOURCE_RANGES, MAP_STATS,
};

use crate::ebpf::OBJECT;

const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// Map capacities (`max_entries`), settable from the command line.
#[derive(Clone, Copy, Debug)]
pub struct MapSizes {
    pub services: u32,
    pub backends: u32,
    pub slots: u32,
    pub conntrack: u32,
    /// Frontends with a Maglev table.
    pub maglev_tables: u32,
    pub affinity: u32,
    pub source_ranges: u32,
    /// Fragmented datagrams in flight.
    pub fragments: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        use svclb_common::limits::{
            AFFINITY_MAX, BACKENDS_MAX, CT_MAX, FRAGS_MAX, MAGLEV_MAX, SERVICES_MAX, SLOTS_MAX,
            SOURCE_RANGES_MAX,
        };
        Self {
            services: SERVICES_MAX as u32,
            backends: BACKENDS_MAX as u32,
            slots: SLOTS_MAX as u32,
            conntrack: CT_MAX as u32,
            maglev_tables: MAGLEV_MAX as u32,
            affinity: AFFINITY_MAX as u32,
            source_ranges: SOURCE_RANGES_MAX as u32,
            fragments: FRAGS_MAX as u32,
        }
    }
}

pub fn require_root(what: &str) -> Result<()> {
    let uid = geteuid();
    if !uid.is_root() {
        bail!("{what} needs root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN); running as uid {uid}");
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|fs| fs.filesystem_type() == BPF_FS_MAGIC)
}

/// Makes sure `dir` exists on a bpf filesystem, mounting one on /sys/fs/bpf when it is missing
/// there (as a container without the host's bpffs would have it).
pub fn prepare_bpffs(dir: &Path) -> Result<()> {
    let root = Path::new(BPFFS_ROOT);
    if dir.starts_with(root) && !is_bpffs(root) {
        nix::mount::mount(
            Some("bpf"),
            root,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| format!("mounting a bpf filesystem on {BPFFS_ROOT}"))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("creating pin directory {}", dir.display()))?;
    if !is_bpffs(dir) {
        bail!(
            "pin directory {} is not on a bpf filesystem (mount one with `mount -t bpf bpf {BPFFS_ROOT}`)",
            dir.display()
        );
    }
    Ok(())
}

/// Loads the datapath object. Maps already pinned in `pin_dir` by an earlier run are reused,
/// so their entries (and established flows) survive a restart; missing ones are created and
/// pinned.
pub fn load(pin_dir: &Path, sizes: MapSizes) -> Result<Ebpf> {
    if OBJECT.is_empty() {
        bail!("this svclb binary was built with AYA_BUILD_SKIP=1 and holds no eBPF programs");
    }
    let pin_dir: PathBuf = pin_dir.to_path_buf();
    EbpfLoader::new()
        .default_map_pin_directory(&pin_dir)
        .map_max_entries(MAP_SERVICES, sizes.services)
        .map_max_entries(MAP_BACKENDS, sizes.backends)
        .map_max_entries(MAP_SLOTS, sizes.slots)
        .map_max_entries(MAP_CT, sizes.conntrack)
        .map_max_entries(MAP_MAGLEV, sizes.maglev_tables)
        .map_max_entries(MAP_AFFINITY, sizes.affinity)
        .map_max_entries(MAP_SOURCE_RANGES, sizes.source_ranges)
        .map_max_entries(MAP_FRAGS, sizes.fragments)
        // Frontend ids stay below twice the services map's capacity (see `STATS_MAX`).
        .map_max_entries(MAP_STATS, sizes.services.saturating_mul(2))
        .load(OBJECT)
        .with_context(|| {
            format!(
                "loading the datapath with maps pinned in {} (maps pinned by an incompatible \
                 build or with other sizes cannot be reused: remove that directory to start afresh)",
                pin_dir.display()
            )
        })
}
