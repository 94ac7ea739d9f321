//! North-south traffic finished in XDP: an external client reaches NodePorts and a
//! LoadBalancer IP whose backends are on the other node, through real agents with the XDP
//! program attached natively (veth supports it) and in generic mode, beside the same with XDP
//! off; Maglev agreement across nodes; the uplink counters saying what XDP finished; and
//! flows that keep their backend while `--xdp-mode` changes under them.

use std::collections::BTreeSet;

use anyhow::{Context as _, Result};
use nix::sys::signal::Signal;
use svclb_tests::{
    Lab, LabSpec,
    client::{TIMEOUT, TcpSession, at, nodes_of, tally, tcp_ask_many, udp_ask_from},
    manifests::{DNS, WEB, service},
    netns::{in_netns, ip_in},
    require_root,
};

const LB_IP: &str = "192.0.2.10";

/// A lab whose agents run with `--xdp-mode mode` and know the Node objects, serving `web`
/// (NodePorts 30080/TCP and 30053/UDP, LoadBalancer IP [`LB_IP`]) with backends on the
/// nodes `backend_nodes` names (indices).
fn lab(mode: &str, backend_nodes: &[usize]) -> Result<Lab> {
    lab_with(&["--xdp-mode", mode], backend_nodes)
}

fn lab_with(agent_args: &[&str], backend_nodes: &[usize]) -> Result<Lab> {
    let mut lab = Lab::new(LabSpec {
        agent_args: agent_args.iter().map(ToString::to_string).collect(),
        ..LabSpec::default()
    })?;
    lab.write_manifest("nodes.yaml", &lab.nodes_manifest())?;
    let pods: Vec<_> = backend_nodes
        .iter()
        .flat_map(|n| lab.nodes[*n].pods.clone())
        .collect();
    lab.write_manifest(
        "web.yaml",
        &service(
            "web",
            "10.96.0.20",
            &[WEB.with_node_port(30080), DNS.with_node_port(30053)],
            &pods,
            "  type: LoadBalancer\n",
            &format!("status:\n  loadBalancer:\n    ingress:\n    - ip: {LB_IP}\n"),
        ),
    )?;
    lab.start_agents()?;
    Ok(lab)
}

/// External clients reach both nodes' NodePorts and the LoadBalancer IP through either node,
/// every answer from the other node's backends for node 1 (SNATed, finished in XDP when it
/// runs); both nodes pick the same backend per flow.
fn reach_remote_backends(mode: &str) -> Result<()> {
    let lab = lab(mode, &[1])?;
    let client = lab.client_ns.clone();
    // Every backend: 30 random (or Maglev) picks of 3 miss one once in 60,000 runs.
    let backends: BTreeSet<String> = lab.nodes[1].pods.iter().map(|p| p.name.clone()).collect();
    let before = lab.xdp_packets(0, "finished")?.unwrap_or(0);
    for node in 0..2 {
        let addr = at(&lab.nodes[node].addr.to_string(), 30080);
        let answers = tally(&tcp_ask_many(&client, addr, 30, TIMEOUT)?);
        assert_eq!(
            nodes_of(&answers),
            BTreeSet::from(["n2".to_owned()]),
            "NodePort {addr} through XDP {mode}: {answers:?}"
        );
        assert_eq!(
            answers.keys().cloned().collect::<BTreeSet<_>>(),
            backends,
            "connections spread over every backend"
        );
    }
    // Maglev: the same UDP flow to the LoadBalancer IP through either node lands on the same
    // backend.
    let ports: Vec<u16> = (41_000..41_030).collect();
    let mut through = Vec::new();
    for node in 0..2 {
        lab.route_client_via(LB_IP, node)?;
        let ports = ports.clone();
        let answers: Vec<String> = in_netns(&client, move || {
            ports
                .iter()
                .map(|port| udp_ask_from(*port, at(LB_IP, 53), b"who\n", TIMEOUT))
                .collect()
        })?;
        through.push(answers);
    }
    assert_eq!(through[0], through[1], "both nodes pick the same backend");
    let distinct: BTreeSet<String> = through[0].iter().cloned().collect();
    assert_eq!(distinct, backends, "flows spread over every backend");

    // Node 1 sent its remote flows' packets and replies out itself: at least the 30
    // connections' SYNs and answers, and the datagrams' both ways.
    let finished = lab.xdp_packets(0, "finished")?;
    if mode == "off" {
        assert_eq!(finished, None, "no XDP, no XDP counters");
    } else {
        let finished = finished.context("no XDP counters")? - before;
        assert!(
            finished >= 60,
            "XDP {mode} finished only {finished} packets"
        );
        let status = lab.status(0)?;
        let uplink = &status["xdp"][0];
        assert!(
            uplink["finished"].as_u64().is_some_and(|n| n >= 60),
            "svclb status: {uplink}"
        );
    }
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn external_clients_reach_remote_backends_through_native_xdp() -> Result<()> {
    require_root()?;
    reach_remote_backends("native")
}

#[test]
#[ignore = "needs root"]
fn external_clients_reach_remote_backends_through_generic_xdp() -> Result<()> {
    require_root()?;
    reach_remote_backends("generic")
}

#[test]
#[ignore = "needs root"]
fn external_clients_reach_remote_backends_with_xdp_off() -> Result<()> {
    require_root()?;
    reach_remote_backends("off")
}

/// Restarts node 1's agent with `--xdp-mode mode`.
fn switch_xdp(lab: &mut Lab, mode: &str) -> Result<()> {
    lab.stop_agent(0, Signal::SIGTERM)?;
    lab.spec.agent_args = vec!["--xdp-mode".into(), mode.into()];
    lab.start_agent(0)
}

/// An established connection through node 1 to a remote backend keeps its backend and SNAT
/// port while XDP is turned on under it (its packets then finished in XDP), and off again.
#[test]
#[ignore = "needs root"]
fn a_flow_keeps_its_backend_while_xdp_is_turned_on_and_off() -> Result<()> {
    require_root()?;
    let mut lab = lab("off", &[1])?;
    let client = lab.client_ns.clone();
    let node1 = at(&lab.nodes[0].addr.to_string(), 30080);
    let mut session = TcpSession::connect_in(&client, node1, TIMEOUT)?;
    let first = session.ask_peer()?;
    assert!(first.starts_with("n2-"), "a remote backend: {first}");

    switch_xdp(&mut lab, "native")?;
    let before = lab.xdp_packets(0, "finished")?.unwrap_or(0);
    for _ in 0..5 {
        assert_eq!(session.ask_peer()?, first, "the same backend and SNAT port");
    }
    let finished = lab.xdp_packets(0, "finished")?.unwrap_or(0) - before;
    assert!(
        finished >= 10,
        "the flow's requests and answers go through XDP: {finished} finished"
    );
    // A flow XDP started is carried on by TC.
    let mut started_in_xdp = TcpSession::connect_in(&client, node1, TIMEOUT)?;
    let second = started_in_xdp.ask_peer()?;

    switch_xdp(&mut lab, "off")?;
    // The counters are pinned: they stay, and stop counting.
    let before = lab.xdp_packets(0, "finished")?;
    assert_eq!(
        session.ask_peer()?,
        first,
        "XDP off again: the same backend"
    );
    assert_eq!(started_in_xdp.ask_peer()?, second, "a flow XDP started");
    assert_eq!(lab.xdp_packets(0, "finished")?, before, "XDP detached");
    Ok(())
}

/// XDP keeps a flow's route in its conntrack entry; the agent starts a new route epoch on the
/// neighbour notification when the next hop's MAC address changes, so the flow's next packet
/// goes to the new one at once, not when the cached route ages out (about 5 s). A UDP flow
/// tells: its datagrams, all of one length, are not sent again.
#[test]
#[ignore = "needs root"]
fn a_flow_finished_in_xdp_follows_its_next_hops_new_mac_address() -> Result<()> {
    require_root()?;
    let lab = lab("native", &[1])?;
    let node1 = at(&lab.nodes[0].addr.to_string(), 30053);
    let ask = |what: &str| -> Result<String> {
        in_netns(&lab.client_ns, move || {
            udp_ask_from(41_100, node1, b"who\n", TIMEOUT)
        })
        .with_context(|| format!("{what}: no answer within {TIMEOUT:?}"))
    };
    let first = ask("the first datagram")?;
    assert!(first.starts_with("n2-"), "a remote backend: {first}");
    assert_eq!(ask("the second")?, first, "the route is cached now");

    let epoch = lab.route_epoch(0)?;
    let moved = "02:00:00:00:aa:02";
    let node2 = lab.nodes[1].addr.to_string();
    ip_in(
        &lab.nodes[1].ns,
        &["link", "set", "dev", "eth0", "address", moved],
    )?;
    ip_in(
        &lab.nodes[0].ns,
        &[
            "neigh",
            "replace",
            &node2,
            "lladdr",
            moved,
            "dev",
            "eth0",
            "nud",
            "reachable",
        ],
    )?;
    lab.wait_for(TIMEOUT, "a new route epoch", || {
        lab.route_epoch(0).is_ok_and(|now| now != epoch)
    })?;
    let before = lab.xdp_packets(0, "finished")?.unwrap_or(0);
    assert_eq!(
        ask("a datagram after the move")?,
        first,
        "the flow reaches its backend at the new MAC address"
    );
    let finished = lab.xdp_packets(0, "finished")?.unwrap_or(0) - before;
    assert!(
        finished >= 2,
        "XDP sent the datagram and its answer: {finished}"
    );
    Ok(())
}

/// With `--xdp-finish auto`, XDP on a veth uplink (whose peer may send partial checksums)
/// translates nothing: TC serves the remote backends, XDP passes their packets.
#[test]
#[ignore = "needs root"]
fn by_default_xdp_on_a_veth_uplink_leaves_translation_to_tc() -> Result<()> {
    require_root()?;
    let lab = lab_with(&["--xdp-mode", "native", "--xdp-finish", "auto"], &[1])?;
    let addr = at(&lab.nodes[0].addr.to_string(), 30080);
    let answers = tally(&tcp_ask_many(&lab.client_ns, addr, 10, TIMEOUT)?);
    assert_eq!(
        nodes_of(&answers),
        BTreeSet::from(["n2".to_owned()]),
        "{answers:?}"
    );
    assert_eq!(lab.xdp_packets(0, "finished")?, Some(0), "nothing finished");
    assert!(
        lab.xdp_packets(0, "passed")?.is_some_and(|n| n >= 20),
        "the flows' packets passed to TC"
    );
    assert!(
        lab.agent_log(0).contains("XDP makes early drops only here"),
        "the agent says why"
    );
    Ok(())
}
