//! Each lab's own cgroups, `<cgroup2 mount>/svclb-lab-<lab id>/<node>`: a lab's agents attach
//! their socket hooks there, and only the lab's clients are moved in. Nothing is ever attached
//! to the machine's cgroup2 root, whose hooks every process of the machine would go through.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};
use svclb_common::host::cgroup2_mount;

/// Prefix of every lab cgroup's name, before the lab id.
pub const CGROUP_PREFIX: &str = "svclb-lab-";

/// A lab's cgroup and its nodes' cgroups under it, removed on drop.
#[derive(Debug)]
pub struct LabCgroup {
    root: PathBuf,
    children: Vec<PathBuf>,
}

impl LabCgroup {
    pub fn create(lab_id: &str) -> Result<Self> {
        let root = cgroup2_mount()?.join(format!("{CGROUP_PREFIX}{lab_id}"));
        fs::create_dir(&root).with_context(|| format!("creating cgroup {}", root.display()))?;
        Ok(Self {
            root,
            children: Vec::new(),
        })
    }

    /// Creates the cgroup `name` under the lab's.
    pub fn child(&mut self, name: &str) -> Result<PathBuf> {
        let dir = self.root.join(name);
        fs::create_dir(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
        self.children.push(dir.clone());
        Ok(dir)
    }
}

impl Drop for LabCgroup {
    fn drop(&mut self) {
        for dir in self.children.iter().rev().chain([&self.root]) {
            if let Err(err) = fs::remove_dir(dir) {
                eprintln!("removing cgroup {}: {err}", dir.display());
            }
        }
    }
}

/// Makes `command` move into `cgroup` when it starts (between fork and exec), before it opens
/// a socket. `procs` is the cgroup's `cgroup.procs`, open for writing until the spawn.
pub fn join_on_exec(command: &mut Command, procs: &fs::File) {
    use std::os::{fd::AsRawFd as _, unix::process::CommandExt as _};
    let fd = procs.as_raw_fd();
    // SAFETY: write is async-signal-safe; "0" moves the writing process. The caller keeps the
    // descriptor open until the spawn.
    unsafe {
        command.pre_exec(move || {
            if libc::write(fd, c"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Opens `cgroup`'s `cgroup.procs` for [`join_on_exec`].
pub fn procs_of(cgroup: &Path) -> Result<fs::File> {
    let path = cgroup.join("cgroup.procs");
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))
}
