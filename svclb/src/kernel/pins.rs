//! Where attachments are pinned: every link under `<bpffs-dir>/links/`, named `tc-<ifindex>`
//! (tcx ingress), `xdp-<ifindex>-<mode>`, or `cgroup-<hook>-<cgroup id>` (socket hooks), so a restart finds and adopts them, `svclb status`
//! lists them, and `svclb agent --cleanup` removes them. This file is the one place that
//! knows the names.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::programs::{links::FdLink, xdp::XdpMode};

/// A link pinned in bpffs: it stays attached until its pin is removed and its last
/// descriptor (ours) is closed.
pub(super) struct Pinned {
    pub(super) link: FdLink,
    pub(super) path: PathBuf,
    /// Made by this run (not adopted from an earlier one).
    pub(super) fresh: bool,
}

impl Pinned {
    /// Pins `link` at `path`.
    pub(super) fn pin(link: FdLink, path: &Path) -> Result<Self> {
        let pinned = link
            .pin(path)
            .with_context(|| format!("pinning a link at {}", path.display()))?;
        Ok(Self {
            link: pinned.into(),
            path: path.to_path_buf(),
            fresh: true,
        })
    }

    /// Unpins: the link is detached once our descriptor closes too (now).
    pub(super) fn unpin(self) -> std::io::Result<()> {
        let result = fs::remove_file(&self.path);
        drop(self.link);
        result
    }
}

fn mode_name(mode: XdpMode) -> &'static str {
    if mode == XdpMode::Driver {
        "driver"
    } else {
        "skb"
    }
}

/// Where the tcx link of device `index` is pinned.
pub(super) fn tc_pin(links_dir: &Path, index: u32) -> PathBuf {
    links_dir.join(format!("tc-{index}"))
}

/// Where the XDP link of device `index` in `mode` is pinned.
pub(super) fn xdp_pin(links_dir: &Path, index: u32, mode: XdpMode) -> PathBuf {
    links_dir.join(format!("xdp-{index}-{}", mode_name(mode)))
}

/// Where the socket hook `hook` (e.g. `connect4`) on the cgroup with id `cgroup` is pinned.
pub(super) fn cgroup_pin(links_dir: &Path, hook: &str, cgroup: u64) -> PathBuf {
    links_dir.join(format!("{CGROUP_PREFIX}{hook}-{cgroup}"))
}

const CGROUP_PREFIX: &str = "cgroup-";

/// Whether `pin` is a socket hook's (not a device's).
pub(super) fn is_cgroup_pin(pin: &Path) -> bool {
    pin.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with(CGROUP_PREFIX))
}

/// The files in `dir` (the pinned links in `<bpffs-dir>/links`), sorted by name.
pub fn pins(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// Removes every link pinned under `bpffs_dir` (which detaches them), then the pinned maps
/// and the directory itself: what `svclb agent --cleanup` does. Returns how many pins it
/// removed.
pub fn cleanup(bpffs_dir: &Path) -> Result<usize> {
    let mut removed = 0;
    let links = bpffs_dir.join(LINKS_DIR);
    for pin in pins(&links) {
        fs::remove_file(&pin).with_context(|| format!("removing {}", pin.display()))?;
        removed += 1;
    }
    if links.exists() {
        fs::remove_dir(&links).with_context(|| format!("removing {}", links.display()))?;
    }
    for pin in pins(bpffs_dir) {
        if pin.is_dir() {
            bail!(
                "{} holds a directory svclb did not make: {}",
                bpffs_dir.display(),
                pin.display()
            );
        }
        fs::remove_file(&pin).with_context(|| format!("removing {}", pin.display()))?;
        removed += 1;
    }
    if bpffs_dir.exists() {
        fs::remove_dir(bpffs_dir).with_context(|| format!("removing {}", bpffs_dir.display()))?;
    }
    Ok(removed)
}

/// The subdirectory of the bpffs directory holding the links.
pub const LINKS_DIR: &str = "links";

/// What a link pin's name says: the hook, with the XDP mode, and the device index (or for a
/// socket hook, the cgroup id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinName {
    /// `tc ingress`, `xdp (<mode>)`, or `cgroup <hook>`.
    pub hook: String,
    pub ifindex: u32,
    /// The cgroup of a socket hook.
    pub cgroup: Option<u64>,
}

impl PinName {
    pub fn parse(name: &str) -> Self {
        if let Some(rest) = name.strip_prefix(CGROUP_PREFIX) {
            let (hook, id) = rest.rsplit_once('-').unwrap_or((rest, ""));
            return Self {
                hook: format!("cgroup {hook}"),
                ifindex: 0,
                cgroup: id.parse().ok(),
            };
        }
        let mut parts = name.split('-');
        let hook = parts.next().unwrap_or_default();
        let ifindex = parts.next().and_then(|i| i.parse().ok()).unwrap_or(0);
        let hook = if hook == "xdp" {
            format!("xdp ({})", parts.next().unwrap_or("?"))
        } else {
            "tc ingress".to_owned()
        };
        Self {
            hook,
            ifindex,
            cgroup: None,
        }
    }
}
