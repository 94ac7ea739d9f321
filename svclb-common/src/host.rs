//! What the agent, the lab and xtask need of the machine itself: a bpf filesystem to pin in
//! (mounted when missing, as on a fresh machine) and the cgroup v2 mount (wherever the
//! distribution put it). One implementation, so a lab prepares the machine exactly as the
//! agent does.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use nix::{
    mount::MsFlags,
    sys::statfs::{BPF_FS_MAGIC, statfs},
};

/// Where the bpf filesystem is mounted by convention.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// Whether `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> bool {
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

/// Mounts a bpf filesystem on [`BPFFS_ROOT`] unless one is there; whether it mounted one.
pub fn mount_bpffs() -> Result<bool> {
    let root = Path::new(BPFFS_ROOT);
    if is_bpffs(root) {
        return Ok(false);
    }
    nix::mount::mount(
        Some("bpf"),
        root,
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| {
        format!("mounting a bpf filesystem on {BPFFS_ROOT} (`mount -t bpf bpf {BPFFS_ROOT}`)")
    })?;
    Ok(true)
}

/// Makes sure `dir` exists on a bpf filesystem, mounting one on /sys/fs/bpf when it is missing
/// there (as on a fresh machine, or in a container without the host's bpffs); says whether it
/// mounted one and in whose mount namespace.
pub fn prepare_bpffs(dir: &Path) -> Result<Bpffs> {
    let mounted = dir.starts_with(BPFFS_ROOT) && mount_bpffs()?;
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

/// The cgroup2 mount point in a `/proc/mounts` text (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on a hybrid system).
fn cgroup2_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == "cgroup2").then(|| PathBuf::from(target))
    })
}

/// The machine's cgroup2 mount, from /proc/mounts.
pub fn cgroup2_mount() -> Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    cgroup2_in(&mounts).context(
        "no cgroup2 filesystem is mounted (socket-level load balancing needs cgroup v2; \
         mount one with `mount -t cgroup2 none /sys/fs/cgroup`, pass --cgroup-root, or run \
         with --socket-lb=false)",
    )
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::{Bpffs, HostView, cgroup2_in};

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

    #[test]
    fn the_cgroup2_mount_is_found_on_unified_and_hybrid_systems() {
        let unified = "sysfs /sys sysfs rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n";
        assert_eq!(cgroup2_in(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs ro 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n";
        assert_eq!(
            cgroup2_in(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let v1_only = "cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n";
        assert_eq!(cgroup2_in(v1_only), None);
    }
}
