//! The chart's capability list, proven: the agents run with exactly the capabilities the
//! rendered chart gives the agent's container (read from `helm template`, not copied), serve
//! every path (TC, socket hooks, XDP) and destroy the connected UDP sockets of a backend
//! that left; without CAP_SYS_ADMIN, CAP_NET_ADMIN or CAP_SYS_PTRACE they cannot do the
//! last, and say so. (CAP_BPF and CAP_PERFMON are implied by CAP_SYS_ADMIN on this kernel,
//! so taking them away alone proves nothing; the chart keeps them so they stay when
//! CAP_SYS_ADMIN can go.)

use std::{fs, time::Duration};

use anyhow::{Context as _, Result, bail, ensure};
use svclb_tests::{
    Lab, LabSpec,
    client::{parse_reply, replies},
    manifests::{DNS, WEB, cluster_ip_service},
    require_root,
};

use crate::helm_chart::render;

/// The agent container's `capabilities.add`, as `setpriv` names them.
fn chart_capabilities() -> Result<Vec<String>> {
    let daemonset = render("")?.daemonset.context("DaemonSet")?;
    let pod = daemonset.spec.template.spec.context("pod")?;
    let agent = pod.containers.first().context("agent container")?;
    let add = agent
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.add.clone())
        .context("capabilities.add")?;
    Ok(add.iter().map(|c| c.to_lowercase()).collect())
}

/// The effective capabilities of process `pid`, as a mask.
fn effective(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .context("CapEff")?;
    Ok(u64::from_str_radix(hex.trim(), 16)?)
}

/// Capability numbers (linux/capability.h) of the names the chart uses.
fn mask(names: &[String]) -> Result<u64> {
    names.iter().try_fold(0u64, |mask, name| {
        let bit = match name.as_str() {
            "net_admin" => 12,
            "sys_ptrace" => 19,
            "sys_admin" => 21,
            "perfmon" => 38,
            "bpf" => 39,
            other => bail!("capability {other} is not one the test knows"),
        };
        Ok(mask | 1 << bit)
    })
}

/// A lab whose agents have only `caps`, serving a DNS service on two pods.
fn lab_with(caps: Vec<String>) -> Result<Lab> {
    let mut lab = Lab::new(LabSpec {
        agent_capabilities: Some(caps.clone()),
        ..LabSpec::default()
    })?;
    let pods = [lab.pod("n1-pod2").clone(), lab.pod("n2-pod1").clone()];
    lab.write_manifest(
        "dns.yaml",
        &cluster_ip_service("dns", "10.96.0.95", &[DNS, WEB], &pods),
    )?;
    lab.start_agents()?;
    let pid = lab.agent_pid(0).context("agent pid")?;
    ensure!(
        effective(pid)? == mask(&caps)?,
        "the agent runs with exactly {caps:?}"
    );
    Ok(lab)
}

/// A pod's connected UDP socket to the service; its backend leaves the service: whether
/// the agent destroyed the socket, or failed to and logged why (waits for one or the other).
fn udp_socket_destroyed(lab: &mut Lab) -> Result<bool> {
    let client = lab.pod("n1-pod1").ns.clone();
    let mut session =
        lab.spawn_client(0, &client, &["udp-session", "10.96.0.95:53", "400", "25"])?;
    let stdout = session.stdout.take().context("the session's output")?;
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let first = lines.next().context("no answer")??;
    let first = parse_reply(&first)?;
    let stays = if first.backend == "n1-pod2" {
        lab.pod("n2-pod1").clone()
    } else {
        lab.pod("n1-pod2").clone()
    };
    lab.write_manifest(
        "dns.yaml",
        &cluster_ip_service("dns", "10.96.0.95", &[DNS, WEB], &[&stays]),
    )?;
    // The agent says how many of the sockets it looked for it destroyed, whatever the outcome.
    let mut outcome = None;
    let waited = lab.wait_for(Duration::from_secs(10), "the search for the socket", || {
        outcome = lab.agent_log(0).lines().find_map(|line| {
            let said = line.split_once("destroyed ")?.1;
            let (destroyed, rest) = said.split_once(" of ")?;
            rest.contains("UDP sockets connected to removed backends")
                .then(|| destroyed == "1")
        });
        outcome.is_some()
    });
    if let Err(err) = waited {
        bail!("{err:#}:\n{}", lab.agent_log(0));
    }
    let _ = session.kill();
    let _ = session.wait();
    drop(lines);
    outcome.context("no outcome")
}

#[test]
#[ignore = "needs root"]
fn the_agent_serves_with_the_charts_capabilities_alone() -> Result<()> {
    require_root()?;
    let caps = chart_capabilities()?;
    let mut lab = lab_with(caps.clone())?;
    let pod = lab.pod("n1-pod1").ns.clone();
    let host = lab.nodes[0].ns.clone();
    for (ns, mode, addr) in [
        (&pod, "tcp", "10.96.0.95:80"),
        (&host, "tcp", "10.96.0.95:80"),
        (&host, "udp-unconnected", "10.96.0.95:53"),
    ] {
        let lines = lab.run_client(0, ns, &[mode, addr, "10"])?;
        let replies = replies(&lines)?;
        ensure!(replies.len() == 10, "{mode} to {addr} from {ns}: {lines:?}");
    }
    ensure!(
        udp_socket_destroyed(&mut lab)?,
        "the chart's capabilities destroy a departed backend's UDP sockets:\n{}",
        lab.agent_log(0)
    );
    let log = lab.agent_log(0);
    for refused in [
        "Operation not permitted",
        "Permission denied",
        "not attached",
    ] {
        ensure!(
            !log.contains(refused),
            "the agent was refused something:\n{log}"
        );
    }
    drop(lab);
    for missing in ["sys_admin", "net_admin", "sys_ptrace"] {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let mut lab = lab_with(fewer)?;
        ensure!(
            !udp_socket_destroyed(&mut lab)?,
            "without {missing} the socket was destroyed all the same: not needed?"
        );
    }
    Ok(())
}
