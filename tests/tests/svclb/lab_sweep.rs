//! `cargo xtask sweep` after a killed run: a lab held by a process of its own (`svclb-lab`:
//! two nodes, their agents, a host-network client in a node's cgroup) is killed with SIGKILL
//! mid-lab, as a killed test run would be. A sweep must then leave none of its namespaces,
//! pins, cgroups, processes or work directory behind, and leave a live lab alone.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context as _, Result};
use svclb_common::host::{BPFFS_ROOT, cgroup2_mount};
use svclb_tests::{
    Lab, LabSpec,
    attached::attached,
    cgroup::CGROUP_PREFIX,
    netns, require_root,
    sweep::{is_running, sweep},
};

/// The pids of the processes whose command line names `needle`.
fn processes_naming(needle: &str) -> Vec<i32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

/// What is left of lab `id`, one line each.
fn leftovers(id: &str, pids: &[i32]) -> Result<Vec<String>> {
    let mut left: Vec<String> = netns::list()
        .into_iter()
        .filter(|ns| ns.starts_with(id))
        .map(|ns| format!("namespace {ns}"))
        .collect();
    let paths = [
        Path::new(BPFFS_ROOT).join(id),
        cgroup2_mount()?.join(format!("{CGROUP_PREFIX}{id}")),
        std::env::temp_dir().join(id),
    ];
    left.extend(
        paths
            .iter()
            .filter(|p| p.exists())
            .map(|p| p.display().to_string()),
    );
    left.extend(
        pids.iter()
            .filter(|&&pid| is_running(pid))
            .map(|pid| format!("process {pid}")),
    );
    Ok(left)
}

#[test]
#[ignore = "needs root"]
fn a_sweep_after_a_killed_lab_leaves_nothing_of_it() -> Result<()> {
    require_root()?;
    let live = Lab::new(LabSpec {
        nodes: 1,
        pods_per_node: 0,
        ..LabSpec::default()
    })?;
    let mut victim = Command::new(env!("CARGO_BIN_EXE_svclb-lab"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting svclb-lab")?;
    let stdout = victim.stdout.take().context("its output")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let ready = rx
        .recv_timeout(Duration::from_secs(120))
        .context("svclb-lab never got ready")?;
    let mut words = ready.split_whitespace().skip(1);
    let (id, client) = (
        words.next().context(ready.clone())?.to_owned(),
        words.next().context(ready.clone())?.parse::<i32>()?,
    );

    let mut pids = processes_naming(&format!("{BPFFS_ROOT}/{id}/"));
    assert_eq!(pids.len(), 2, "the lab's two agents: {pids:?}");
    pids.push(client);
    victim.kill()?;
    victim.wait()?;
    let before = leftovers(&id, &pids)?;
    assert!(
        before.iter().any(|l| l.starts_with("namespace")),
        "{before:?}"
    );
    assert!(
        before.iter().any(|l| l.starts_with("process")),
        "{before:?}"
    );

    let swept = sweep();
    assert_eq!(
        leftovers(&id, &pids)?,
        Vec::<String>::new(),
        "swept: {swept:?}"
    );
    assert!(swept.removed.iter().any(|l| l.contains(&id)), "{swept:?}");
    assert!(!swept.warnings.iter().any(|l| l.contains(&id)), "{swept:?}");
    assert!(
        netns::list().iter().any(|ns| ns.starts_with(&live.id)),
        "the live lab {} was swept: {swept:?}",
        live.id
    );
    Ok(())
}

/// What the sweep names on the machine itself, seen in a lab node instead (the lister reads
/// the caller's namespace and the cgroup it is given): the agent's socket hooks on the node's
/// cgroup and its tcx and XDP programs on the node's devices, each with the command that
/// detaches it through its pinned link.
#[test]
#[ignore = "needs root"]
fn attachments_are_named_with_the_command_that_detaches_them() -> Result<()> {
    require_root()?;
    let mut lab = Lab::new(LabSpec {
        nodes: 1,
        pods_per_node: 1,
        ..LabSpec::default()
    })?;
    lab.start_agents()?;
    let cgroup = lab.nodes[0].cgroup.clone();
    let found = netns::in_netns(&lab.nodes[0].ns, move || Ok(attached(&cgroup)))?;
    let line = |place: &str| found.iter().find(|l| l.contains(place)).cloned();
    let connect = line("(cgroup_inet4_connect)").context(format!("{found:#?}"))?;
    assert!(connect.contains("`bpftool link detach id "), "{connect}");
    let uplink = line("device eth0 (tcx ingress)").context(format!("{found:#?}"))?;
    assert!(
        uplink.contains("(svclb_uplink)") && uplink.contains("`bpftool link detach id "),
        "{uplink}"
    );
    let xdp = line("device eth0 (xdp)").context(format!("{found:#?}"))?;
    assert!(xdp.contains("`bpftool link detach id "), "{xdp}");
    let pod = &lab.nodes[0].pods[0].host_dev;
    assert!(
        line(&format!("device {pod} (tcx ingress)")).is_some(),
        "{found:#?}"
    );
    assert!(
        found.iter().all(|l| l.starts_with("BPF program ")),
        "{found:#?}"
    );
    Ok(())
}
