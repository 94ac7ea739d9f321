//! End-to-end: socket-level load balancing. Clients run as processes in their node's lab
//! cgroup (never the machine's root cgroup), where the node's agent attached its socket hooks:
//! host-network clients (in the node's namespace) and pods.

use std::collections::BTreeSet;

use anyhow::{Context as _, Result, bail};
use svclb_tests::{
    Lab, LabSpec,
    client::{backends, replies},
    manifests::{DNS, PortSpec, WEB, cluster_ip_service, service},
    require_root,
};

const WEB_NODEPORT: PortSpec = WEB.with_node_port(30080);

#[test]
#[ignore = "needs root"]
fn host_network_clients_reach_cluster_ips_node_ports_and_load_balancer_ips() -> Result<()> {
    require_root()?;
    let mut lab = Lab::new(LabSpec {
        pods_per_node: 2,
        ..LabSpec::default()
    })?;
    let pods: Vec<_> = lab.nodes.iter().flat_map(|n| n.pods.clone()).collect();
    lab.write_manifest(
        "web.yaml",
        &service(
            "web",
            "10.96.0.50",
            &[WEB_NODEPORT, DNS],
            &pods,
            "  type: LoadBalancer\n  externalIPs: [172.31.0.201]\n",
            "status:\n  loadBalancer:\n    ingress:\n    - ip: 172.31.0.200\n",
        ),
    )?;
    lab.start_agents()?;
    let host = lab.nodes[0].ns.clone();
    let every: BTreeSet<String> = pods.iter().map(|p| p.name.clone()).collect();
    let cases = [
        ("tcp", "10.96.0.50:80"),
        ("udp", "10.96.0.50:53"),
        ("udp-unconnected", "10.96.0.50:53"),
        ("tcp", "172.31.0.11:30080"),
        ("tcp", "127.0.0.1:30080"),
        ("tcp", "172.31.0.200:80"),
        ("tcp", "172.31.0.201:80"),
    ];
    for (mode, addr) in cases {
        let lines = lab.run_client(0, &host, &[mode, addr, "40"])?;
        let replies = replies(&lines).with_context(|| format!("{mode} to {addr}"))?;
        assert_eq!(replies.len(), 40, "{mode} to {addr}");
        // Spread over local and remote backends alike.
        assert_eq!(backends(&replies), every, "{mode} to {addr}: {lines:?}");
        for reply in &replies {
            // The socket reports the service as its peer, not the backend.
            assert_eq!(reply.peer.to_string(), addr, "{mode}: {reply:?}");
            // Nothing translated the source: the backend sees the socket's own port (and,
            // for a connected socket, its address).
            assert_eq!(reply.seen.port(), reply.local.port(), "{mode}: {reply:?}");
            if mode != "udp-unconnected" {
                assert_eq!(reply.seen, reply.local, "{mode}: {reply:?}");
            }
        }
    }
    assert_eq!(lab.conntrack_entries(0)?, 0, "no flow went through TC");
    // `svclb list` counts what the socket hooks did per frontend.
    for (addr, port, protocol, connects, datagrams) in [
        ("10.96.0.50", 80, "TCP", 40, 0),
        ("10.96.0.50", 53, "UDP", 40, 40),
        ("127.0.0.1", 30080, "TCP", 40, 0),
    ] {
        let flows = flows_of(&lab, 0, addr, port, protocol)?;
        assert_eq!(
            (
                flows["socket_connects"].as_u64(),
                flows["socket_datagrams"].as_u64()
            ),
            (Some(connects), Some(datagrams)),
            "{addr}:{port}: {flows}"
        );
        assert_eq!(flows["tc"], 0, "{addr}:{port}: {flows}");
    }
    // Closed sockets took their reverse entries along (sock_release), and the unconnected UDP
    // socket's peers were in its own storage, which went with it: nothing is left.
    assert_eq!(reverse_entries(&lab, 0)?, 0, "reverse entries left");
    Ok(())
}

/// The entries of node `node`'s `SVCLB_SOCK_REVERSE`.
fn reverse_entries(lab: &Lab, node: usize) -> Result<usize> {
    let map = lab.nodes[node].pin_dir.join("SVCLB_SOCK_REVERSE");
    let out = svclb_tests::netns::run(
        "bpftool",
        &["-j", "map", "dump", "pinned", &map.to_string_lossy()],
    )?;
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    entries.as_array().map(Vec::len).context("a JSON array")
}

/// What `svclb list` counted for frontend `addr:port/protocol` (not its internal view).
fn flows_of(
    lab: &Lab,
    node: usize,
    addr: &str,
    port: u16,
    protocol: &str,
) -> Result<serde_json::Value> {
    let listing = lab.list(node)?;
    listing["frontends"]
        .as_array()
        .and_then(|all| {
            all.iter().find(|f| {
                f["address"] == addr
                    && f["port"] == port
                    && f["protocol"] == protocol
                    && f["internal_view"] == false
            })
        })
        .map(|f| f["flows"].clone())
        .with_context(|| format!("{addr}:{port}/{protocol} in {listing}"))
}

#[test]
#[ignore = "needs root"]
fn pods_connect_straight_to_backends_and_tc_serves_them_with_socket_lb_off() -> Result<()> {
    require_root()?;
    let mut lab = Lab::new(LabSpec::default())?;
    let backends_of = [lab.pod("n1-pod2").clone(), lab.pod("n2-pod1").clone()];
    lab.write_manifest(
        "web.yaml",
        &cluster_ip_service("web", "10.96.0.60", &[WEB, DNS], &backends_of),
    )?;
    lab.start_agents()?;
    let client = lab.pod("n1-pod1").clone();
    let want: BTreeSet<String> = backends_of.iter().map(|p| p.name.clone()).collect();
    for (mode, addr) in [("tcp", "10.96.0.60:80"), ("udp", "10.96.0.60:53")] {
        let replies = replies(&lab.run_client(0, &client.ns, &[mode, addr, "30"])?)?;
        assert_eq!(backends(&replies), want, "{mode}");
        for reply in &replies {
            assert_eq!(
                reply.seen, reply.local,
                "{mode}: the pod's own address and port"
            );
            assert_eq!(reply.seen.ip().to_string(), client.addr.to_string());
            assert_eq!(reply.peer.to_string(), addr);
        }
    }
    assert_eq!(
        lab.conntrack_entries(0)?,
        0,
        "socket-LB made no flow for TC"
    );

    // With socket-LB off the hooks are detached and the TC path serves the same clients.
    lab.stop_agent(0, nix::sys::signal::Signal::SIGTERM)?;
    lab.spec.agent_args.push("--socket-lb=false".into());
    lab.start_agent(0)?;
    let status = lab.status(0)?;
    let hooks = status["links"]
        .as_array()
        .map(|links| links.iter().filter(|l| l["cgroup_id"].is_u64()).count());
    assert_eq!(hooks, Some(0), "{status:#}");
    let replies = replies(&lab.run_client(0, &client.ns, &["tcp", "10.96.0.60:80", "30"])?)?;
    assert_eq!(backends(&replies), want);
    for reply in &replies {
        assert_eq!(reply.peer.to_string(), "10.96.0.60:80");
        assert_eq!(reply.seen, reply.local);
    }
    assert!(
        lab.conntrack_entries(0)? > 0,
        "the TC path tracks its flows"
    );
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn host_namespace_only_leaves_pods_to_the_tc_path() -> Result<()> {
    require_root()?;
    let mut lab = Lab::new(LabSpec {
        agent_args: vec!["--socket-lb-hostns-only".to_owned()],
        ..LabSpec::default()
    })?;
    let backend = lab.pod("n2-pod1").clone();
    lab.write_manifest(
        "web.yaml",
        &cluster_ip_service("web", "10.96.0.65", &[WEB], &[&backend]),
    )?;
    lab.start_agents()?;
    let host = lab.nodes[0].ns.clone();
    let pod = lab.pod("n1-pod1").ns.clone();
    for ns in [&host, &pod] {
        let replies = replies(&lab.run_client(0, ns, &["tcp", "10.96.0.65:80", "10"])?)?;
        assert_eq!(backends(&replies), BTreeSet::from([backend.name.clone()]));
        assert!(
            replies
                .iter()
                .all(|r| r.peer.to_string() == "10.96.0.65:80")
        );
    }
    let flows = flows_of(&lab, 0, "10.96.0.65", 80, "TCP")?;
    assert_eq!(
        flows["socket_connects"], 10,
        "the host's, at connect: {flows}"
    );
    assert_eq!(flows["tc"], 10, "the pod's, through TC: {flows}");
    let status = lab.status(0)?;
    let socket_lb = status["agent"]["socket_lb"].as_str().unwrap_or_default();
    assert!(
        socket_lb.contains("host network namespace only"),
        "{status}"
    );
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn a_service_without_endpoints_refuses_connects_at_once() -> Result<()> {
    require_root()?;
    let mut lab = Lab::new(LabSpec {
        nodes: 1,
        pods_per_node: 1,
        ..LabSpec::default()
    })?;
    lab.write_manifest(
        "empty.yaml",
        &cluster_ip_service::<svclb_tests::Pod>("empty", "10.96.0.70", &[WEB, DNS], &[]),
    )?;
    lab.start_agents()?;
    let host = lab.nodes[0].ns.clone();
    let started = std::time::Instant::now();
    let lines = lab.run_client(0, &host, &["tcp", "10.96.0.70:80", "3"])?;
    for line in &lines {
        assert!(line.starts_with("ERR ConnectionRefused"), "{lines:?}");
    }
    // Refused by the hook, not after a timeout (the client waits 2 s per connect).
    assert!(
        started.elapsed().as_secs_f64() < 1.5,
        "{:?}",
        started.elapsed()
    );
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn a_pod_reaches_its_own_service_when_it_is_the_only_backend() -> Result<()> {
    require_root()?;
    // Socket-LB connects the pod to itself; without it, the TC path SNATs the hairpin flow to
    // the service loopback address, which the pod sees as its client.
    for (socket_lb, client_seen) in [("true", None), ("false", Some("169.254.42.1"))] {
        let mut lab = Lab::new(LabSpec {
            nodes: 1,
            pods_per_node: 2,
            agent_args: vec![format!("--socket-lb={socket_lb}")],
            ..LabSpec::default()
        })?;
        let pod = lab.pod("n1-pod1").clone();
        lab.write_manifest(
            "self.yaml",
            &cluster_ip_service("self", "10.96.0.80", &[WEB, DNS], &[&pod]),
        )?;
        lab.start_agents()?;
        for (mode, addr) in [("tcp", "10.96.0.80:80"), ("udp", "10.96.0.80:53")] {
            let what = format!("{mode} with --socket-lb={socket_lb}");
            let replies = replies(&lab.run_client(0, &pod.ns, &[mode, addr, "5"])?)
                .with_context(|| what.clone())?;
            assert_eq!(replies.len(), 5, "{what}");
            for reply in &replies {
                assert_eq!(reply.backend, pod.name, "{what}");
                assert_eq!(reply.peer.to_string(), addr, "{what}");
                let seen = reply.seen.ip().to_string();
                assert_eq!(seen, client_seen.unwrap_or(&pod.addr.to_string()), "{what}");
            }
        }
    }
    Ok(())
}

/// The socket hooks' pinned links of node `node`: (hook, link id, program id).
fn socket_links(lab: &Lab, node: usize) -> Result<Vec<(String, u64, u64)>> {
    let status = lab.status(node)?;
    let links = status["links"].as_array().context("links in status")?;
    Ok(links
        .iter()
        .filter(|l| l["cgroup_id"].is_u64())
        .map(|l| {
            (
                l["hook"].as_str().unwrap_or_default().to_owned(),
                l["link_id"].as_u64().unwrap_or_default(),
                l["program_id"].as_u64().unwrap_or_default(),
            )
        })
        .collect())
}

#[test]
#[ignore = "needs root"]
fn connections_and_hooks_survive_an_agent_restart_that_swaps_the_programs() -> Result<()> {
    require_root()?;
    let mut lab = Lab::new(LabSpec::default())?;
    let remote = lab.pod("n2-pod1").clone();
    lab.write_manifest(
        "web.yaml",
        &cluster_ip_service("web", "10.96.0.90", &[WEB, DNS], &[&remote]),
    )?;
    lab.start_agents()?;
    let before = socket_links(&lab, 0)?;
    assert_eq!(
        before.len(),
        9,
        "eight address hooks and sock_release: {before:?}"
    );
    let host = lab.nodes[0].ns.clone();
    // A host-network connection asking every 50 ms, 80 times (4 s), across the restart.
    let mut session = lab.spawn_client(0, &host, &["tcp-session", "10.96.0.90:80", "80", "50"])?;
    let stdout = session.stdout.take().context("the session's output")?;
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let first = parse_line(lines.next())?;
    assert_eq!(first.backend, remote.name);

    lab.stop_agent(0, nix::sys::signal::Signal::SIGTERM)?;
    // No agent: the pinned hooks keep serving new connections.
    let replies_meanwhile = replies(&lab.run_client(0, &host, &["tcp", "10.96.0.90:80", "3"])?)?;
    assert_eq!(
        backends(&replies_meanwhile),
        BTreeSet::from([remote.name.clone()])
    );
    lab.start_agent(0)?;
    let after = socket_links(&lab, 0)?;
    assert_eq!(after.len(), before.len(), "{after:?}");
    for ((hook, link, program), (hook_after, link_after, program_after)) in
        before.iter().zip(&after)
    {
        assert_eq!(hook, hook_after);
        assert_ne!(program, program_after, "{hook}: the new program is in");
        assert_eq!(link, link_after, "{hook}: swapped in on the same link");
    }
    let mut answered = 1;
    for line in lines {
        let reply = parse_line(Some(line))?;
        assert_eq!(reply.backend, remote.name);
        assert_eq!(reply.peer.to_string(), "10.96.0.90:80");
        answered += 1;
    }
    assert!(session.wait()?.success());
    assert_eq!(answered, 80, "every request of the session was answered");
    Ok(())
}

fn parse_line(line: Option<std::io::Result<String>>) -> Result<svclb_tests::client::Reply> {
    svclb_tests::client::parse_reply(&line.context("the session ended early")??)
}

#[test]
#[ignore = "needs root"]
fn a_connected_udp_socket_leaves_a_backend_that_leaves_the_service() -> Result<()> {
    require_root()?;
    let mut lab = Lab::new(LabSpec::default())?;
    let pods = [lab.pod("n1-pod2").clone(), lab.pod("n2-pod1").clone()];
    lab.write_manifest(
        "dns.yaml",
        &cluster_ip_service("dns", "10.96.0.95", &[DNS], &pods),
    )?;
    lab.start_agents()?;
    let client = lab.pod("n1-pod1").ns.clone();
    // One connected socket asking every 50 ms for at most 10 s; a new socket after an error.
    let mut session =
        lab.spawn_client(0, &client, &["udp-session", "10.96.0.95:53", "200", "50"])?;
    let stdout = session.stdout.take().context("the session's output")?;
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let first = parse_line(lines.next())?;
    let (gone, stays) = if first.backend == pods[0].name {
        (&pods[0], &pods[1])
    } else {
        (&pods[1], &pods[0])
    };
    // The backend it was sent to leaves the service (the pod itself keeps answering).
    lab.write_manifest(
        "dns.yaml",
        &cluster_ip_service("dns", "10.96.0.95", &[DNS], &[stays]),
    )?;
    let removed = std::time::Instant::now();
    let mut error_at = None;
    for line in lines.by_ref() {
        let line = line?;
        if line.starts_with("ERR") {
            error_at.get_or_insert_with(std::time::Instant::now);
            continue;
        }
        let reply = svclb_tests::client::parse_reply(&line)?;
        if reply.backend == stays.name {
            let error_at = error_at.context("the socket got no error before it moved")?;
            assert!(
                error_at.elapsed().as_secs_f64() < 1.0,
                "a live backend within 1 s of the error"
            );
            assert_eq!(reply.peer.to_string(), "10.96.0.95:53");
            let _ = session.kill();
            let _ = session.wait();
            let metrics = lab.agent_http(0, "/metrics")?.1;
            assert!(
                metrics
                    .lines()
                    .any(|l| l == "svclb_udp_sockets_destroyed_total 1"),
                "{metrics}"
            );
            return Ok(());
        }
        assert_eq!(reply.backend, gone.name);
        assert!(
            removed.elapsed().as_secs() < 5,
            "still answered by {} 5 s after it left the service",
            gone.name
        );
    }
    bail!("the session ended without reaching {}", stays.name)
}
