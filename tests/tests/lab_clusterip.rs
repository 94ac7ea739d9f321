//! End-to-end: pods reach ClusterIP services over TCP and UDP, through real agents and real
//! kernel programs in a lab of network namespaces.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use anyhow::Result;
use svclb_tests::{
    Lab, LabSpec,
    client::{TcpSession, tcp_ask_many, udp_ask_many},
    manifests::{PortSpec, cluster_ip_service},
    netns::in_netns,
    skip_unless_root,
};

const TIMEOUT: Duration = Duration::from_secs(2);
const WEB: PortSpec = PortSpec::tcp("http", 80, 8080);
const DNS: PortSpec = PortSpec::udp("dns", 53, 8080);

fn vip(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

fn counts(results: &[Result<String>]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in results {
        let key = match r {
            Ok(name) => name.clone(),
            Err(err) => format!("error: {err:#}"),
        };
        *out.entry(key).or_default() += 1;
    }
    out
}

#[test]
fn pod_reaches_local_and_remote_backends_over_tcp_and_udp() -> Result<()> {
    if skip_unless_root("pod_reaches_local_and_remote_backends_over_tcp_and_udp") {
        return Ok(());
    }
    let mut lab = Lab::new(LabSpec::default())?;
    let local = lab.pod("n1-pod2").clone();
    let remote = lab.pod("n2-pod1").clone();
    lab.write_manifest(
        "local.yaml",
        &cluster_ip_service("local", "10.96.0.10", &[WEB, DNS], &[&local]),
    )?;
    lab.write_manifest(
        "remote.yaml",
        &cluster_ip_service("remote", "10.96.0.11", &[WEB, DNS], &[&remote]),
    )?;
    lab.start_agents()?;
    let client = lab.pod("n1-pod1").ns.clone();

    for (ip, want) in [("10.96.0.10", &local.name), ("10.96.0.11", &remote.name)] {
        let tcp = tcp_ask_many(&client, vip(ip, 80), 5, TIMEOUT)?;
        assert_eq!(
            counts(&tcp),
            BTreeMap::from([(want.clone(), 5)]),
            "TCP to {ip}"
        );
        let udp = udp_ask_many(&client, vip(ip, 53), 5, TIMEOUT)?;
        assert_eq!(
            counts(&udp),
            BTreeMap::from([(want.clone(), 5)]),
            "UDP to {ip}"
        );
    }
    // A long-lived connection keeps its backend and its replies keep the VIP as source.
    let mut session = TcpSession::connect_in(&client, vip("10.96.0.11", 80), TIMEOUT)?;
    for _ in 0..5 {
        assert_eq!(session.ask()?, remote.name);
    }
    // The translation is invisible to the client: its socket's peer is the VIP.
    let peer = in_netns(&client, || {
        let s = std::net::TcpStream::connect_timeout(&vip("10.96.0.10", 80), TIMEOUT)?;
        Ok(s.peer_addr()?)
    })?;
    assert_eq!(peer, vip("10.96.0.10", 80));
    Ok(())
}
