//! A lab held by a process of its own until that process is killed, as a test run's lab is
//! when the run is killed: `svclb-lab` builds a lab of two nodes with an agent each, serving
//! one ClusterIP, and a host-network client in node n1's cgroup asking it over UDP every 100 ms
//! (for five minutes at most; it goes on when its answers stop). It prints `ready LAB-ID CLIENT-PID` and waits for its standard
//! input to close, then tears the lab down. The sweep's test kills it with SIGKILL instead,
//! and checks that `cargo xtask sweep` leaves nothing of the lab behind.

use std::io::Read as _;

use anyhow::Result;
use svclb_tests::{
    Lab, LabSpec,
    manifests::{DNS, WEB, cluster_ip_service},
};

fn main() -> Result<()> {
    let mut lab = Lab::new(LabSpec {
        pods_per_node: 1,
        ..LabSpec::default()
    })?;
    let pods: Vec<_> = lab.nodes.iter().flat_map(|n| n.pods.clone()).collect();
    lab.write_manifest(
        "web.yaml",
        &cluster_ip_service("web", "10.96.0.10", &[WEB, DNS], &pods),
    )?;
    lab.start_agents()?;
    let node_ns = lab.nodes[0].ns.clone();
    let client = lab.spawn_client(
        0,
        &node_ns,
        &["udp-session", "10.96.0.10:53", "3000", "100"],
    )?;
    println!("ready {} {}", lab.id, client.id());
    std::io::stdin().read_to_end(&mut Vec::new())?;
    drop(lab);
    Ok(())
}
