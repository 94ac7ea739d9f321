//! End-to-end: the conntrack lets go of flows that ended. A NodePort's remote backend is
//! reached through SNAT ports of this node (`--snat-ports 61000-65535` here, 4536 of them
//! per backend, a sixth of the default on a default node); closed
//! connections must give their ports back, or the node stops serving that backend after a
//! few thousand connections. Two mechanisms do it, each proven on its own: the datapath takes
//! an ended flow's port over when a new flow needs one (with the agent's sweep off), and the
//! agent's sweep removes ended flows (turned on afterwards, it removes those of the first
//! part).

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use nix::sys::signal::Signal;
use svclb_tests::{
    Lab, LabSpec,
    client::{TIMEOUT, at, tcp_ask},
    manifests::{WEB, service},
    netns::in_netns,
    require_root,
};

/// More connections than there are SNAT ports, paced so that no more than about half the
/// ports are taken before the first closed ones may be reused (10 s after their close).
const CONNECTIONS: usize = 5_500;
const PACE: Duration = Duration::from_millis(4);

#[test]
#[ignore = "needs root"]
fn closed_connections_give_their_snat_ports_back() -> Result<()> {
    require_root()?;
    let mut lab = Lab::new(LabSpec {
        pods_per_node: 1,
        agent_args: vec![
            "--conntrack-gc-interval".into(),
            "0".into(),
            "--snat-ports".into(),
            "61000-65535".into(),
        ],
        ..LabSpec::default()
    })?;
    lab.write_manifest("nodes.yaml", &lab.nodes_manifest())?;
    let remote = lab.pod("n2-pod1").clone();
    lab.write_manifest(
        "far.yaml",
        &service(
            "far",
            "10.96.7.1",
            &[WEB.with_node_port(30097)],
            &[&remote],
            "  type: NodePort\n",
            "",
        ),
    )?;
    lab.start_agents()?;
    let target = at(&lab.nodes[0].addr.to_string(), 30097);
    let (failed, samples, took) = in_netns(&lab.client_ns, move || {
        let started = Instant::now();
        let mut failed = 0;
        let mut samples = Vec::new();
        for i in 0..CONNECTIONS {
            let next = started + PACE * i as u32;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if let Err(err) = tcp_ask(target, TIMEOUT) {
                failed += 1;
                samples.push(format!("connection {i}: {err:#}"));
                // Each failure costs a timeout: three tell enough.
                if failed == 3 {
                    break;
                }
            }
        }
        Ok((failed, samples, started.elapsed()))
    })?;
    assert_eq!(
        failed, 0,
        "connections through one SNATed backend failed ({took:?} in): {samples:?}"
    );
    assert_eq!(
        expired(&lab)?,
        0,
        "no sweep ran: the datapath alone gave the ports back"
    );
    // The sweep, turned on (every second), removes the flows that ended 10 s ago and more:
    // most of the first part's.
    lab.spec.agent_args = vec!["--conntrack-gc-interval".into(), "1".into()];
    lab.stop_agent(0, Signal::SIGTERM)?;
    lab.start_agent(0)?;
    lab.wait_for(Duration::from_secs(5), "the sweep of ended flows", || {
        expired(&lab).is_ok_and(|n| n > 2 * CONNECTIONS as u64 / 3)
    })?;
    Ok(())
}

/// The conntrack entries node 1's sweep removed (`svclb_conntrack_entries_expired_total`).
fn expired(lab: &Lab) -> Result<u64> {
    let (_, metrics) = lab.agent_http(0, "/metrics")?;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("svclb_conntrack_entries_expired_total "))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no expiry counter in:\n{metrics}"))
}
