//! `cargo xtask sweep`: removes what labs, fixtures and benches of dead processes left behind,
//! and names what is attached to the machine itself.
//!
//! Everything a lab, a fixture or a test makes is named `svl<pid>x...` after the process that
//! made it (see [`crate::LAB_PREFIX`]), so leftovers of a killed run are told from the labs of
//! a run still going (another test run, a demo), which are left alone. What is removed, in
//! order:
//! 1. processes in a dead lab's network namespaces or cgroups (its agents, its clients);
//! 2. the namespaces;
//! 3. the lab cgroups, children first;
//! 4. the pin directories under the bpf filesystem (which detaches their pinned links);
//! 5. the work directories under the temporary directory.
//!
//! Programs attached to the machine's own cgroup2 root or to a device of the machine's own
//! network namespace are never detached here: their attachments are listed with the command
//! that would detach them.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use svclb_common::host::{BPFFS_ROOT, cgroup2_mount};

use crate::{LAB_PREFIX, cgroup::CGROUP_PREFIX, netns};

/// What a sweep did and found.
#[derive(Debug, Default)]
pub struct Sweep {
    /// What was removed, one line each.
    pub removed: Vec<String>,
    /// Attachments to the machine itself, and anything that could not be removed, each with
    /// the command that would deal with it.
    pub warnings: Vec<String>,
}

impl Sweep {
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.warnings.is_empty()
    }

    fn failed(&mut self, what: String, err: impl std::fmt::Display) {
        self.warnings
            .push(format!("could not remove {what}: {err}"));
    }
}

/// The pid of the process that made `name`, if it is a lab name (`svl<pid>x...`).
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(LAB_PREFIX)?;
    let (pid, _) = rest.split_once('x')?;
    pid.parse().ok()
}

/// A name for what a test makes outside a lab (a pin directory, a namespace, a temporary
/// directory): `svl<pid>x<what>-<n>`, which a sweep removes once this process is gone. Each
/// call gives a new name (`n` counts them), so tests running at once never share one.
pub fn scratch_name(what: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{LAB_PREFIX}{}x{what}-{n}", std::process::id())
}

/// Whether `name` is a lab name whose owner is no longer running.
fn owner_is_gone(name: &str) -> bool {
    owner_pid(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// The entries of `dir` whose names are of dead labs, per `is_dead`.
fn dead_entries(dir: &Path, is_dead: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut dead: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| is_dead(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    dead.sort();
    dead
}

fn dead_cgroup(name: &str) -> bool {
    name.strip_prefix(CGROUP_PREFIX).is_some_and(owner_is_gone)
}

/// Removes everything that labs of dead processes left behind; reports it, and what is
/// attached to the machine itself.
pub fn sweep() -> Sweep {
    let mut sweep = Sweep::default();
    let namespaces: Vec<String> = netns::list()
        .into_iter()
        .filter(|ns| owner_is_gone(ns))
        .collect();
    let cgroups = cgroup2_mount()
        .map(|mount| dead_entries(&mount, dead_cgroup))
        .unwrap_or_default();
    kill_lab_processes(&mut sweep, &namespaces, &cgroups);
    for ns in namespaces {
        match netns::delete(&ns) {
            Ok(()) => sweep.removed.push(format!("network namespace {ns}")),
            Err(err) => sweep.failed(format!("network namespace {ns}"), format!("{err:#}")),
        }
    }
    for cgroup in cgroups {
        remove_cgroup(&mut sweep, &cgroup);
    }
    for dir in dead_entries(Path::new(BPFFS_ROOT), owner_is_gone) {
        remove_tree(&mut sweep, "pin directory", &dir);
    }
    for dir in dead_entries(&std::env::temp_dir(), owner_is_gone) {
        remove_tree(&mut sweep, "work directory", &dir);
    }
    let machine = crate::attached::to_the_machine().into_iter();
    sweep
        .warnings
        .extend(machine.map(|line| format!("on the machine itself: {line}")));
    sweep
}

fn remove_tree(sweep: &mut Sweep, kind: &str, path: &Path) {
    let removed = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match removed {
        Ok(()) => sweep.removed.push(format!("{kind} {}", path.display())),
        Err(err) => sweep.failed(format!("{kind} {}", path.display()), err),
    }
}

/// Removes a lab cgroup: its nodes' cgroups first (a cgroup is removed with rmdir, and only
/// once it has no children and no processes).
fn remove_cgroup(sweep: &mut Sweep, cgroup: &Path) {
    for child in fs::read_dir(cgroup).into_iter().flatten().flatten() {
        if child.path().is_dir()
            && let Err(err) = fs::remove_dir(child.path())
        {
            sweep.failed(format!("cgroup {}", child.path().display()), err);
        }
    }
    match fs::remove_dir(cgroup) {
        Ok(()) => sweep.removed.push(format!("cgroup {}", cgroup.display())),
        Err(err) => sweep.failed(format!("cgroup {}", cgroup.display()), err),
    }
}

/// The processes of the cgroup `dir` and of its child cgroups.
fn cgroup_processes(dir: &Path) -> Vec<i32> {
    let own = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    let children = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .flat_map(|e| cgroup_processes(&e.path()));
    own.lines()
        .filter_map(|pid| pid.trim().parse().ok())
        .chain(children)
        .collect()
}

/// Whether process `pid` exists and is not a zombie (a killed orphan stays one until its new
/// parent reaps it).
pub fn is_running(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // `PID (COMM) STATE ...`; COMM may hold spaces and parentheses.
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// The processes whose network namespace is one of `inodes`.
fn netns_processes(inodes: &BTreeSet<u64>) -> Vec<i32> {
    if inodes.is_empty() {
        return Vec::new();
    }
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| inodes.contains(&m.ino()))
        })
        .collect()
}

/// Kills the processes left in dead labs' namespaces and cgroups (agents, clients), and waits
/// (a few seconds at most) until they are gone, so their namespaces and cgroups can go.
fn kill_lab_processes(sweep: &mut Sweep, namespaces: &[String], cgroups: &[PathBuf]) {
    let inodes: BTreeSet<u64> = namespaces
        .iter()
        .filter_map(|ns| fs::metadata(format!("/run/netns/{ns}")).ok())
        .map(|m| m.ino())
        .collect();
    let me = std::process::id() as i32;
    let pids: BTreeSet<i32> = netns_processes(&inodes)
        .into_iter()
        .chain(cgroups.iter().flat_map(|c| cgroup_processes(c)))
        .filter(|&pid| pid != me)
        .collect();
    for &pid in &pids {
        let name = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
            sweep
                .removed
                .push(format!("lab process {pid} ({})", name.trim()));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|&pid| is_running(pid)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::owner_pid;

    #[test]
    fn lab_names_name_their_owner() {
        assert_eq!(owner_pid("svl1234x0"), Some(1234));
        assert_eq!(owner_pid("svl1234x0-fab"), Some(1234));
        assert_eq!(owner_pid("svl77xfixture-tcp"), Some(77));
        assert_eq!(owner_pid("svl77x-uplink"), Some(77));
        assert_eq!(owner_pid("svclb"), None);
        assert_eq!(owner_pid("svl-fixture-1-x"), None);
        assert_eq!(owner_pid("svl12"), None);
    }
}
