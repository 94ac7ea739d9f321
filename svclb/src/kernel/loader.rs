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
    MAP_SOCK_REVERSE, MAP_SOCK_STATS, MAP_SOURCE_RANGES, MAP_STATS,
};

use super::object::OBJECT;
use crate::entries::Capacity;

const BPFFS_ROOT: &str = "/sys/fs/bpf";

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

/// How the bpf filesystem this process pins in compares with what PID 1 (the host) sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostView {
    /// This process is in PID 1's mount namespace: its pins are the host's.
    SameNamespace,
    /// Another mount namespace, but the same bpf filesystem (the host's, mounted in).
    SameFilesystem,
    /// Another mount namespace and another bpf filesystem, or none at all on the host there.
    OtherFilesystem,
    /// PID 1's namespace cannot be read (a sandbox that hides it).
    Unknown,
}

/// Where this process pins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bpffs {
    /// This process mounted the bpf filesystem (none was there).
    pub mounted: bool,
    pub host_view: HostView,
    /// This process is in the host's (the initial) PID namespace: its PID 1 is the host's.
    /// In a container it is not, and PID 1's mount namespace is the container's own.
    pub host_pids: bool,
}

impl Bpffs {
    /// The pins will not outlive this process: they are in a bpf filesystem of its own mount
    /// namespace, which goes (with every map and link pinned in it) when the namespace does,
    /// as under `ip netns exec`, which remounts /sys in a mount namespace of its own. When
    /// PID 1's namespace cannot be read, having had to mount the filesystem itself says so:
    /// a process in the host's namespace finds the host's bpffs there. In a container (not the
    /// host's PID namespace) PID 1 shares the container's mount namespace, so there too having
    /// had to mount it says so.
    pub fn private(self) -> bool {
        match self.host_view {
            HostView::SameNamespace => self.mounted && !self.host_pids,
            HostView::SameFilesystem => false,
            HostView::OtherFilesystem => true,
            HostView::Unknown => self.mounted,
        }
    }
}

/// The inode of the initial PID namespace (`PROC_PID_INIT_INO`).
const INITIAL_PID_NAMESPACE: &str = "pid:[4026531836]";

/// Whether this process is in the initial PID namespace (`false` when that cannot be told).
fn host_pids() -> bool {
    fs::read_link("/proc/self/ns/pid").is_ok_and(|ns| ns.as_os_str() == INITIAL_PID_NAMESPACE)
}

/// How `dir`'s bpf filesystem, in this process's mount namespace, compares with the one PID 1
/// sees there.
fn host_view(dir: &Path) -> HostView {
    use std::os::unix::fs::MetadataExt as _;
    let namespace = |pid: &str| fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    let (Some(mine), Some(init)) = (namespace("self"), namespace("1")) else {
        return HostView::Unknown;
    };
    if mine == init {
        return HostView::SameNamespace;
    }
    let relative = dir.strip_prefix("/").unwrap_or(dir);
    let ours = fs::metadata(dir).map(|m| m.dev());
    let hosts = fs::metadata(Path::new("/proc/1/root").join(relative)).map(|m| m.dev());
    match (ours, hosts) {
        (Ok(ours), Ok(hosts)) if ours == hosts => HostView::SameFilesystem,
        (Ok(_), _) => HostView::OtherFilesystem,
        (Err(_), _) => HostView::Unknown,
    }
}

/// Makes sure `dir` exists on a bpf filesystem, mounting one on /sys/fs/bpf when it is missing
/// there (as a container without the host's bpffs would have it); says whether it mounted one
/// and in whose mount namespace.
pub fn prepare_bpffs(dir: &Path) -> Result<Bpffs> {
    let root = Path::new(BPFFS_ROOT);
    let mounted = dir.starts_with(root) && !is_bpffs(root);
    if mounted {
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
    Ok(Bpffs {
        mounted,
        host_view: host_view(dir),
        host_pids: host_pids(),
    })
}

/// Loads the datapath object. Maps already pinned in `pin_dir` by an earlier run are reused,
/// so their entries (and established flows) survive a restart; missing ones are created and
/// pinned.
pub fn load(pin_dir: &Path, sizes: &Capacity) -> Result<Ebpf> {
    if OBJECT.is_empty() {
        bail!("this svclb binary was built with AYA_BUILD_SKIP=1 and holds no eBPF programs");
    }
    let pin_dir: PathBuf = pin_dir.to_path_buf();
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(&pin_dir);
    // Frontend ids stay below twice the services map's capacity (see `STATS_MAX`).
    let stats = sizes.services.saturating_mul(2);
    for (map, size) in [
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
    ] {
        let size = u32::try_from(size)
            .with_context(|| format!("map {map}: a size of {size} entries is too large"))?;
        loader.map_max_entries(map, size);
    }
    loader
        .load(OBJECT)
        .with_context(|| {
            format!(
                "loading the datapath with maps pinned in {} (maps pinned by an incompatible \
                 build or with other sizes cannot be reused: remove that directory to start afresh)",
                pin_dir.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::{Bpffs, HostView};

    #[test]
    fn pins_are_private_only_in_a_bpffs_the_host_does_not_share() {
        // (mounted it, how the host sees it, in the host's PID namespace, private)
        let cases = [
            (false, HostView::SameNamespace, true, false),
            (true, HostView::SameNamespace, true, false),
            (true, HostView::SameNamespace, false, true),
            (false, HostView::SameNamespace, false, false),
            (false, HostView::SameFilesystem, false, false),
            (false, HostView::OtherFilesystem, true, true),
            (true, HostView::OtherFilesystem, true, true),
            (true, HostView::Unknown, true, true),
            (false, HostView::Unknown, true, false),
        ];
        for (mounted, host_view, host_pids, private) in cases {
            let bpffs = Bpffs {
                mounted,
                host_view,
                host_pids,
            };
            assert_eq!(bpffs.private(), private, "{bpffs:?}");
        }
    }
}
