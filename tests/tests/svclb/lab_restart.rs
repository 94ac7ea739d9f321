//! End-to-end: the datapath outlives the agent. Established TCP connections (a pod to a
//! cluster IP, the external client to a NodePort, DNAT-only and SNATed) and UDP flows keep
//! their backends while the agent is stopped and after a new agent, with other map sizes,
//! has migrated the pinned maps and swapped its programs in on the same pinned links;
//! `svclb agent --cleanup` takes it all away.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context as _, Result};
use aya::programs::links::{FdLink, PinnedLink};
use nix::sys::signal::Signal;
use svclb_tests::{
    Lab, LabSpec,
    client::{TIMEOUT, TcpSession, at, tally, tcp_ask_many, udp_ask_from},
    manifests::{DNS, WEB, service},
    netns::{self, in_netns},
    require_root,
};

/// Link id and program id of every link pinned in `pin_dir`, by pin name.
fn pinned_links(pin_dir: &Path) -> Result<BTreeMap<String, (u32, u32)>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(pin_dir.join("links"))? {
        let path = entry?.path();
        let link = FdLink::from(PinnedLink::from_pin(&path)?);
        let info = link.info()?;
        out.insert(
            path.file_name()
                .expect("a name")
                .to_string_lossy()
                .into_owned(),
            (info.id(), info.program_id()),
        );
    }
    Ok(out)
}

/// UDP exchanges from fixed source ports `ports` (one flow each) in namespace `ns`.
fn udp_flows(ns: &str, addr: std::net::SocketAddr, ports: &[u16]) -> Result<Vec<String>> {
    let ports = ports.to_vec();
    in_netns(ns, move || {
        ports
            .iter()
            .map(|port| udp_ask_from(*port, addr, b"who\n", TIMEOUT))
            .collect()
    })
}

/// Every session answers from the backend it first reached.
fn assert_kept(sessions: &mut [(TcpSession, String)], when: &str) -> Result<()> {
    for (i, (session, first)) in sessions.iter_mut().enumerate() {
        let now = session
            .ask()
            .with_context(|| format!("connection {i} {when}"))?;
        assert_eq!(&now, first, "connection {i} changed backend {when}");
    }
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn established_flows_survive_a_restart_and_the_program_swap() -> Result<()> {
    require_root()?;
    let lab = Lab::new(LabSpec::default())?;
    lab.write_manifest("nodes.yaml", &lab.nodes_manifest())?;
    let backends = vec![
        lab.pod("n1-pod2").clone(),
        lab.pod("n1-pod3").clone(),
        lab.pod("n2-pod2").clone(),
        lab.pod("n2-pod3").clone(),
    ];
    lab.write_manifest(
        "web.yaml",
        &service(
            "web",
            "10.96.0.30",
            &[WEB.with_node_port(30090), DNS],
            &backends,
            "  type: NodePort\n",
            "",
        ),
    )?;
    let mut lab = lab;
    lab.start_agents()?;
    let pod = lab.pod("n1-pod1").ns.clone();
    let node1 = lab.nodes[0].addr.to_string();
    let client = lab.client_ns.clone();

    let mut sessions = Vec::new();
    for _ in 0..8 {
        let mut s = TcpSession::connect_in(&pod, at("10.96.0.30", 80), TIMEOUT)?;
        let first = s.ask()?;
        sessions.push((s, first));
        let mut s = TcpSession::connect_in(&client, at(&node1, 30090), TIMEOUT)?;
        let first = s.ask()?;
        sessions.push((s, first));
    }
    let ports: Vec<u16> = (0..8).map(|i| 40_100 + i).collect();
    let flows = udp_flows(&pod, at("10.96.0.30", 53), &ports)?;
    let spread: BTreeMap<&String, usize> = flows.iter().fold(BTreeMap::new(), |mut m, b| {
        *m.entry(b).or_default() += 1;
        m
    });
    assert!(
        spread.len() > 1,
        "UDP flows spread over backends: {flows:?}"
    );
    let links_before = pinned_links(&lab.nodes[0].pin_dir)?;
    assert!(
        links_before.keys().any(|name| name.starts_with("xdp-")),
        "uplink XDP link pinned: {links_before:?}"
    );

    // The agent stops: the datapath keeps serving, old flows and new ones.
    lab.stop_agent(0, Signal::SIGTERM)?;
    assert!(
        lab.agent_log(0)
            .contains("stopped; the datapath stays attached"),
        "{}",
        lab.agent_log(0)
    );
    assert_kept(&mut sessions, "while the agent is stopped")?;
    let status = lab.status(0)?;
    assert!(status["agent"].is_null(), "{status:#}");
    assert!(
        status["warnings"][0]
            .as_str()
            .is_some_and(|w| w.starts_with("no agent answers")),
        "{status:#}"
    );
    assert_eq!(
        status["links"].as_array().map(Vec::len),
        Some(links_before.len())
    );
    assert_eq!(udp_flows(&pod, at("10.96.0.30", 53), &ports)?, flows);
    let new = tally(&tcp_ask_many(&client, at(&node1, 30090), 8, TIMEOUT)?);
    assert_eq!(
        new.values().sum::<usize>(),
        8,
        "new connections served: {new:?}"
    );

    // A new agent whose maps are sized otherwise (as after an upgrade that changed the
    // chart's map sizes) migrates them, keeping their entries, loads its programs and swaps
    // them in on the same links.
    lab.spec.agent_args.extend([
        "--conntrack-map-size=131072".to_owned(),
        "--services-map-size=32768".to_owned(),
    ]);
    lab.start_agent(0)?;
    let links_after = pinned_links(&lab.nodes[0].pin_dir)?;
    assert_eq!(
        links_before.keys().collect::<Vec<_>>(),
        links_after.keys().collect::<Vec<_>>()
    );
    for (name, (link, program)) in &links_before {
        let (link_after, program_after) = links_after[name];
        assert_eq!(*link, link_after, "{name}: the same link");
        assert_ne!(*program, program_after, "{name}: a new program on it");
    }
    let node_ns = lab.nodes[0].ns.clone();
    for dev in ["eth0", "vethpod1", "vethpod2", "vethpod3"] {
        assert_eq!(
            netns::tcx_ingress_programs(&node_ns, dev)?.len(),
            1,
            "one program on {dev}"
        );
    }
    assert_kept(&mut sessions, "after the restart")?;
    assert_eq!(udp_flows(&pod, at("10.96.0.30", 53), &ports)?, flows);
    let log = lab.agent_log(0);
    for line in [
        "program replaced on its pinned link",
        "map SVCLB_CT: entries 262144 -> 131072; migrating it",
        "map SVCLB_SERVICES: entries 65536 -> 32768; migrating it",
    ] {
        assert!(log.contains(line), "{line}:\n{log}");
    }
    let aside: Vec<_> = std::fs::read_dir(&lab.nodes[0].pin_dir)?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with("-migrating"))
        .collect();
    assert!(aside.is_empty(), "old maps removed: {aside:?}");

    // --cleanup detaches and unpins everything.
    lab.stop_agent(0, Signal::SIGTERM)?;
    let bin = svclb_tests::svclb_bin()?;
    let pin_dir = lab.nodes[0].pin_dir.to_string_lossy().into_owned();
    let out = netns::run(
        bin.to_str().expect("a UTF-8 path"),
        &["agent", "--cleanup", "--bpffs-dir", &pin_dir],
    )?;
    assert!(out.status.success(), "{out:?}");
    assert!(!lab.nodes[0].pin_dir.exists(), "pins removed");
    for dev in ["eth0", "vethpod1"] {
        assert_eq!(
            netns::tcx_ingress_programs(&node_ns, dev)?.len(),
            0,
            "{dev} detached"
        );
    }
    Ok(())
}
