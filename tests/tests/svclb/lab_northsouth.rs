//! End-to-end north-south traffic: an external client reaches NodePorts, LoadBalancer IPs and
//! their backends on both nodes, through real agents (XDP and TC on the uplinks) in a lab of
//! network namespaces; traffic policies, health checks, Maglev agreement, rejection, source
//! ranges and session affinity, each with real sockets.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use svclb_tests::{
    Lab, LabSpec,
    client::{
        TIMEOUT, TcpSession, ask_big_many, at, http_get, nodes_of, tally, tcp_ask_many,
        udp_ask_from,
    },
    manifests::{DNS, PortSpec, WEB, service},
    netns::in_netns,
    require_root,
};

const CLIENT_ADDR: &str = "172.31.0.100";
/// How long a connection that must not be answered is given.
const REFUSED_WITHIN: Duration = Duration::from_millis(600);

/// A lab whose agents know the Node objects (NodePorts are served on node addresses).
fn lab_with(agent_args: &[&str]) -> Result<Lab> {
    let lab = Lab::new(LabSpec {
        agent_args: agent_args.iter().map(ToString::to_string).collect(),
        ..LabSpec::default()
    })?;
    lab.write_manifest("nodes.yaml", &lab.nodes_manifest())?;
    Ok(lab)
}

fn all_pods(lab: &Lab) -> Vec<svclb_tests::Pod> {
    lab.nodes.iter().flat_map(|n| n.pods.clone()).collect()
}

/// Every pod but the first of each node: those are the clients inside the cluster (a pod
/// reaching a service it backs, hairpin, is not supported yet).
fn server_pods(lab: &Lab) -> Vec<svclb_tests::Pod> {
    lab.nodes
        .iter()
        .flat_map(|n| n.pods.iter().skip(1).cloned())
        .collect()
}

fn pods_of(lab: &Lab, node: usize) -> Vec<svclb_tests::Pod> {
    lab.nodes[node].pods.clone()
}

fn load_balancer(ip: &str) -> String {
    format!("status:\n  loadBalancer:\n    ingress:\n    - ip: {ip}\n")
}

fn assert_no_errors(answers: &BTreeMap<String, usize>, what: &str) {
    assert!(
        answers.keys().all(|k| !k.starts_with("error")),
        "{what}: {answers:?}"
    );
}

/// Asks over a connected UDP socket, so an ICMP error comes back as an error.
fn udp_connected(addr: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.connect(addr)?;
    socket.set_read_timeout(Some(timeout))?;
    socket.send(b"who\n")?;
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
}

#[test]
#[ignore = "needs root"]
fn nodeport_and_load_balancer_ip_reach_backends_on_both_nodes_and_nodes_agree() -> Result<()> {
    require_root()?;
    let mut lab = lab_with(&[])?;
    let pods = all_pods(&lab);
    lab.write_manifest(
        "web.yaml",
        &service(
            "web",
            "10.96.0.20",
            &[WEB.with_node_port(30080), DNS.with_node_port(30053)],
            &pods,
            "  type: LoadBalancer\n",
            &load_balancer("192.0.2.10"),
        ),
    )?;
    lab.start_agents()?;
    let client = lab.client_ns.clone();
    let listing = lab.list(0)?;
    let picks: BTreeMap<String, String> = listing["frontends"]
        .as_array()
        .context("frontends")?
        .iter()
        .map(|f| {
            (
                format!("{}:{}", f["address"].as_str().unwrap_or(""), f["port"]),
                f["pick"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(picks["10.96.0.20:80"], "random", "{picks:?}");
    assert_eq!(picks["172.31.0.11:30080"], "maglev/16381", "{picks:?}");
    assert_eq!(picks["192.0.2.10:80"], "maglev/16381", "{picks:?}");

    for node in &lab.nodes {
        let addr = at(&node.addr.to_string(), 30080);
        let answers = tally(&tcp_ask_many(&client, addr, 40, TIMEOUT)?);
        assert_no_errors(&answers, &format!("TCP to NodePort {addr}"));
        assert_eq!(
            nodes_of(&answers),
            BTreeSet::from(["n1".into(), "n2".into()]),
            "NodePort {addr} reaches backends on both nodes: {answers:?}"
        );
    }
    lab.route_client_via("192.0.2.10", 0)?;
    let answers = tally(&tcp_ask_many(&client, at("192.0.2.10", 80), 40, TIMEOUT)?);
    assert_no_errors(&answers, "TCP to the LoadBalancer IP");
    assert_eq!(nodes_of(&answers).len(), 2, "{answers:?}");

    // Cluster policy: a remote backend sees the node's address (SNAT), a local one the
    // client's; either way the client talks to the frontend only. The client ports are below
    // the ephemeral range: one that an earlier connection to the LoadBalancer IP used, to the
    // same backend, still has its reply tuple held (closed flows keep theirs for 10 s), and the
    // datapath SNATs a new flow that would share it, on purpose.
    let node1 = lab.nodes[0].addr.to_string();
    let mut seen = BTreeSet::new();
    for port in 20_000..20_040 {
        let to = at(&node1, 30080);
        let mut session = in_netns(&client, move || TcpSession::connect_from(port, to, TIMEOUT))?;
        let answer = session.ask_peer()?;
        let (pod, peer) = answer.split_once(' ').context("NAME PEER")?;
        seen.insert((
            pod.split('-').next().unwrap_or_default().to_owned(),
            peer.to_owned(),
        ));
    }
    assert_eq!(
        seen,
        BTreeSet::from([
            ("n1".to_owned(), CLIENT_ADDR.to_owned()),
            ("n2".to_owned(), node1.clone())
        ]),
        "who the backends see"
    );

    // Maglev: the same UDP flow sent to the LoadBalancer IP through either node lands on the
    // same backend.
    let ports: Vec<u16> = (41_000..41_030).collect();
    let mut through = Vec::new();
    for node in 0..2 {
        lab.route_client_via("192.0.2.10", node)?;
        let ports = ports.clone();
        let answers: Vec<String> = in_netns(&client, move || {
            ports
                .iter()
                .map(|port| udp_ask_from(*port, at("192.0.2.10", 53), b"who\n", TIMEOUT))
                .collect()
        })?;
        through.push(answers);
    }
    assert_eq!(
        through[0], through[1],
        "both nodes pick the same backend per flow"
    );
    let distinct: BTreeSet<&String> = through[0].iter().collect();
    assert!(distinct.len() >= 3, "flows spread: {distinct:?}");
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn local_policy_keeps_the_client_address_drops_elsewhere_and_health_checks_say_so() -> Result<()> {
    require_root()?;
    let mut lab = lab_with(&[])?;
    let pods = pods_of(&lab, 0);
    lab.write_manifest(
        "local.yaml",
        &service(
            "local",
            "10.96.0.21",
            &[WEB.with_node_port(30081)],
            &pods,
            "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32001\n",
            &load_balancer("192.0.2.11"),
        ),
    )?;
    lab.start_agents()?;
    let client = lab.client_ns.clone();
    let (node1, node2) = (lab.nodes[0].addr.to_string(), lab.nodes[1].addr.to_string());

    for _ in 0..10 {
        let mut session = TcpSession::connect_in(&client, at(&node1, 30081), TIMEOUT)?;
        let answer = session.ask_peer()?;
        let (pod, peer) = answer.split_once(' ').context("NAME PEER")?;
        assert!(pod.starts_with("n1-"), "only local endpoints: {pod}");
        assert_eq!(peer, CLIENT_ADDR, "the client's address is kept");
    }
    let dropped = in_netns(&client, {
        let addr = at(&node2, 30081);
        move || Ok(TcpStream::connect_timeout(&addr, REFUSED_WITHIN).is_err())
    })?;
    assert!(dropped, "the node without endpoints drops");

    let (status1, body1) = in_netns(&client, {
        let addr = at(&node1, 32001);
        move || http_get(addr)
    })?;
    assert_eq!(status1, 200, "{body1}");
    let json: serde_json::Value = serde_json::from_str(&body1)?;
    assert_eq!(json["localEndpoints"], 3, "{body1}");
    assert_eq!(json["service"]["name"], "local", "{body1}");
    let (status2, body2) = in_netns(&client, {
        let addr = at(&node2, 32001);
        move || http_get(addr)
    })?;
    assert_eq!(status2, 503, "{body2}");
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn empty_services_reject_at_once() -> Result<()> {
    require_root()?;
    let mut lab = lab_with(&[])?;
    lab.write_manifest(
        "empty.yaml",
        &service(
            "empty",
            "10.96.0.22",
            &[WEB.with_node_port(30082), DNS.with_node_port(30083)],
            &[] as &[svclb_tests::Pod],
            "  type: NodePort\n",
            "",
        ),
    )?;
    lab.start_agents()?;
    let node1 = lab.nodes[0].addr.to_string();
    let pod = lab.pod("n1-pod1").ns.clone();
    for (ns, tcp, udp) in [
        (lab.client_ns.clone(), at(&node1, 30082), at(&node1, 30083)),
        (pod, at("10.96.0.22", 80), at("10.96.0.22", 53)),
    ] {
        let (tcp_err, took) = in_netns(&ns, move || {
            let started = Instant::now();
            let result = TcpStream::connect_timeout(&tcp, TIMEOUT);
            Ok((result.err().map(|e| e.kind()), started.elapsed()))
        })?;
        assert_eq!(
            tcp_err,
            Some(std::io::ErrorKind::ConnectionRefused),
            "TCP to {tcp}"
        );
        assert!(
            took < Duration::from_millis(100),
            "TCP to {tcp} refused in {took:?}"
        );
        let udp_err = in_netns(&ns, move || {
            Ok(udp_connected(udp, TIMEOUT).err().map(|e| e.kind()))
        })?;
        assert_eq!(
            udp_err,
            Some(std::io::ErrorKind::ConnectionRefused),
            "UDP to {udp}"
        );
    }
    Ok(())
}

fn source_ranges_admit_and_refuse(xdp_mode: &str) -> Result<()> {
    let mut lab = lab_with(&["--xdp-mode", xdp_mode])?;
    let pods = server_pods(&lab);
    for (name, ip, cluster_ip, range) in [
        ("open", "192.0.2.12", "10.96.0.23", "172.31.0.0/24"),
        ("closed", "192.0.2.13", "10.96.0.24", "10.0.0.0/8"),
    ] {
        lab.write_manifest(
            &format!("{name}.yaml"),
            &service(
                name,
                cluster_ip,
                &[WEB],
                &pods,
                &format!("  type: LoadBalancer\n  allocateLoadBalancerNodePorts: false\n  loadBalancerSourceRanges: [\"{range}\"]\n"),
                &load_balancer(ip),
            ),
        )?;
        lab.route_client_via(ip, 0)?;
    }
    lab.start_agents()?;
    let client = lab.client_ns.clone();
    let answers = tally(&tcp_ask_many(&client, at("192.0.2.12", 80), 10, TIMEOUT)?);
    assert_no_errors(&answers, "a client inside the ranges");
    let refused = tally(&tcp_ask_many(
        &client,
        at("192.0.2.13", 80),
        3,
        REFUSED_WITHIN,
    )?);
    assert!(
        refused.keys().all(|k| k.starts_with("error")),
        "a client outside the ranges gets nothing: {refused:?}"
    );
    // Node 1's uplink counters say where that happened: dropped in XDP, or (without XDP)
    // not counted there at all.
    let (dropped, passed) = (
        lab.xdp_packets(0, "dropped")?,
        lab.xdp_packets(0, "passed")?,
    );
    if xdp_mode == "off" {
        assert_eq!(dropped, None);
    } else {
        assert!(dropped.is_some_and(|n| n >= 3), "dropped: {dropped:?}");
        assert!(passed.is_some_and(|n| n >= 10), "passed: {passed:?}");
    }
    // The cluster IP of the same service is not restricted (the ranges are for the LB IP).
    let pod = lab.pod("n1-pod1").ns.clone();
    let inside = tally(&tcp_ask_many(&pod, at("10.96.0.24", 80), 3, TIMEOUT)?);
    assert_no_errors(&inside, "the cluster IP");
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn source_ranges_admit_and_refuse_in_xdp() -> Result<()> {
    require_root()?;
    source_ranges_admit_and_refuse("auto")
}

#[test]
#[ignore = "needs root"]
fn source_ranges_admit_and_refuse_in_tc_without_xdp() -> Result<()> {
    require_root()?;
    source_ranges_admit_and_refuse("off")
}

#[test]
#[ignore = "needs root"]
fn session_affinity_holds_and_expires() -> Result<()> {
    require_root()?;
    let mut lab = lab_with(&[])?;
    let pods = server_pods(&lab);
    let affinity = |seconds: u32| {
        format!(
            "  type: NodePort\n  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: {seconds}\n"
        )
    };
    lab.write_manifest(
        "sticky.yaml",
        &service(
            "sticky",
            "10.96.0.25",
            &[WEB.with_node_port(30085)],
            &pods,
            &affinity(3600),
            "",
        ),
    )?;
    lab.write_manifest(
        "brief.yaml",
        &service("brief", "10.96.0.26", &[WEB], &pods, &affinity(1), ""),
    )?;
    lab.start_agents()?;
    let pod = lab.pod("n1-pod1").ns.clone();
    let node1 = lab.nodes[0].addr.to_string();
    for (ns, addr) in [
        (pod.clone(), at("10.96.0.25", 80)),
        (lab.client_ns.clone(), at(&node1, 30085)),
    ] {
        let answers = tally(&tcp_ask_many(&ns, addr, 50, TIMEOUT)?);
        assert_eq!(
            answers.len(),
            1,
            "50 connections to {addr}, one backend: {answers:?}"
        );
        assert_no_errors(&answers, "affinity");
    }
    // With a 1 s timeout, a client idle for longer is free to land elsewhere.
    let mut seen = BTreeSet::new();
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(1500));
        let answer = tally(&tcp_ask_many(&pod, at("10.96.0.26", 80), 1, TIMEOUT)?);
        assert_no_errors(&answer, "after the timeout");
        seen.extend(answer.into_keys());
    }
    assert!(seen.len() >= 2, "affinity expired: {seen:?}");
    Ok(())
}

/// `externalTrafficPolicy: Local` with endpoints on both nodes: every connection to a node's
/// NodePort is served by a pod of that node, with the client's address (so never forwarded
/// to the other node, which would need SNAT), and every local pod takes its share.
#[test]
#[ignore = "needs root"]
fn external_local_policy_never_forwards_off_the_node() -> Result<()> {
    require_root()?;
    let mut lab = lab_with(&[])?;
    let pods = server_pods(&lab);
    lab.write_manifest(
        "etp.yaml",
        &service(
            "etp",
            "10.96.0.28",
            &[WEB.with_node_port(30088)],
            &pods,
            "  type: NodePort\n  externalTrafficPolicy: Local\n",
            "",
        ),
    )?;
    lab.start_agents()?;
    let client = lab.client_ns.clone();
    for node in 0..2 {
        let addr = at(&lab.nodes[node].addr.to_string(), 30088);
        let prefix = format!("{}-", lab.nodes[node].name);
        let mut answers: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..30 {
            let mut session = TcpSession::connect_in(&client, addr, TIMEOUT)?;
            let answer = session.ask_peer()?;
            let (pod, peer) = answer.split_once(' ').context("NAME PEER")?;
            assert!(pod.starts_with(&prefix), "{addr} answered by {pod}");
            assert_eq!(peer, CLIENT_ADDR, "{addr}: the client's address is kept");
            *answers.entry(pod.to_owned()).or_default() += 1;
        }
        assert_eq!(
            answers.len(),
            2,
            "every local server pod of {prefix}: {answers:?}"
        );
    }
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn internal_local_policy_only_reaches_local_pods() -> Result<()> {
    require_root()?;
    let mut lab = lab_with(&[])?;
    let pods = server_pods(&lab);
    lab.write_manifest(
        "itp.yaml",
        &service(
            "itp",
            "10.96.0.27",
            &[WEB],
            &pods,
            "  type: ClusterIP\n  internalTrafficPolicy: Local\n",
            "",
        ),
    )?;
    lab.start_agents()?;
    for node in 0..2 {
        let ns = lab.nodes[node].pods[0].ns.clone();
        let answers = tally(&tcp_ask_many(&ns, at("10.96.0.27", 80), 30, TIMEOUT)?);
        assert_no_errors(&answers, "internal Local");
        let prefix = format!("{}-", lab.nodes[node].name);
        assert!(
            answers.keys().all(|k| k.starts_with(&prefix)),
            "from {}: {answers:?}",
            lab.nodes[node].name
        );
        assert_eq!(answers.len(), 2, "every local server pod: {answers:?}");
    }
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn rolling_replacement_keeps_every_established_connection() -> Result<()> {
    require_root()?;
    let mut lab = lab_with(&[])?;
    let old: Vec<svclb_tests::Pod> = vec![lab.pod("n1-pod2").clone(), lab.pod("n2-pod2").clone()];
    let new: Vec<svclb_tests::Pod> = vec![lab.pod("n1-pod3").clone(), lab.pod("n2-pod3").clone()];
    let write = |lab: &Lab, pods: &[svclb_tests::Pod]| {
        lab.write_manifest(
            "roll.yaml",
            &service(
                "roll",
                "10.96.0.28",
                &[WEB.with_node_port(30088)],
                pods,
                "  type: NodePort\n",
                "",
            ),
        )
    };
    write(&lab, &old)?;
    lab.start_agents()?;
    let node1 = lab.nodes[0].addr.to_string();
    let client = lab.client_ns.clone();
    // Connections to the old replicas, local (DNAT) and remote (SNAT) ones.
    let mut sessions = Vec::new();
    for _ in 0..12 {
        let mut session = TcpSession::connect_in(&client, at(&node1, 30088), TIMEOUT)?;
        let first = session.ask()?;
        sessions.push((session, first));
    }
    let before: BTreeSet<&String> = sessions.iter().map(|(_, first)| first).collect();
    assert_eq!(before.len(), 2, "both old replicas in use: {before:?}");

    // Rolling replacement: the new replicas join, then the old ones leave. Each step is
    // waited for in node 1's maps, and the state between them checked.
    let both = [old.clone(), new.clone()].concat();
    write(&lab, &both)?;
    wait_for_backends(&lab, &node1, &both)?;
    for (session, first) in &mut sessions {
        assert_eq!(
            &session.ask()?,
            first,
            "kept while old and new replicas serve"
        );
    }
    let answers = tally(&tcp_ask_many(&client, at(&node1, 30088), 20, TIMEOUT)?);
    assert_no_errors(&answers, "new connections while both serve");
    let serving: BTreeSet<&str> = both.iter().map(|p| p.name.as_str()).collect();
    assert!(
        answers.keys().all(|name| serving.contains(name.as_str())),
        "new connections go to old or new replicas: {answers:?}"
    );
    write(&lab, &new)?;
    wait_for_backends(&lab, &node1, &new)?;

    for (session, first) in &mut sessions {
        assert_eq!(
            &session.ask()?,
            first,
            "an established connection keeps its backend"
        );
    }
    let answers = tally(&tcp_ask_many(&client, at(&node1, 30088), 20, TIMEOUT)?);
    assert_no_errors(&answers, "new connections");
    let names: BTreeSet<&str> = answers.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from(["n1-pod3", "n2-pod3"]),
        "new connections go to the new replicas"
    );
    Ok(())
}

/// Waits until node 1's NodePort 30088 frontend holds exactly the addresses of `pods`.
fn wait_for_backends(lab: &Lab, node1: &str, pods: &[svclb_tests::Pod]) -> Result<()> {
    let want: BTreeSet<String> = pods.iter().map(|p| p.addr.to_string()).collect();
    lab.wait_for(
        Duration::from_secs(5),
        &format!("backends {want:?} on {node1}:30088"),
        || {
            lab.backends_of(0, node1, 30088)
                .is_ok_and(|have| have == want)
        },
    )
    .map(|_| ())
}

/// How many ICMP destination-unreachable messages namespace `ns` has sent.
fn dest_unreachables_sent(ns: &str) -> Result<u64> {
    let snmp = svclb_tests::netns::run("ip", &["netns", "exec", ns, "cat", "/proc/net/snmp"])?;
    let text = String::from_utf8(snmp.stdout)?;
    let mut icmp = text.lines().filter(|l| l.starts_with("Icmp: "));
    let (names, values) = (
        icmp.next().context("no Icmp line")?,
        icmp.next().context("no values")?,
    );
    let at = names
        .split_whitespace()
        .position(|n| n == "OutDestUnreachs")
        .context("no OutDestUnreachs")?;
    Ok(values
        .split_whitespace()
        .nth(at)
        .context("short Icmp line")?
        .parse()?)
}

#[test]
#[ignore = "needs root"]
fn path_mtu_discovery_works_through_a_node_port() -> Result<()> {
    require_root()?;
    let mut lab = lab_with(&[])?;
    let far = lab.add_client_behind_router(1000)?;
    // One service served from node 1's own pods (DNAT), one from node 2's (SNAT), both
    // reached through node 1.
    for (name, ip, node_port, node) in [
        ("near", "10.96.0.30", 30093, 0),
        ("away", "10.96.0.31", 30094, 1),
    ] {
        lab.write_manifest(
            &format!("{name}.yaml"),
            &service(
                name,
                ip,
                &[WEB.with_node_port(node_port)],
                &pods_of(&lab, node),
                "  type: NodePort\n",
                "",
            ),
        )?;
    }
    lab.start_agents()?;
    let node1 = lab.nodes[0].addr.to_string();
    for (node_port, node) in [(30093, "n1"), (30094, "n2")] {
        let addr = at(&node1, node_port);
        let before = dest_unreachables_sent(&far.router_ns)?;
        // Larger than the path MTU many times over; each connection may meet a new pod,
        // which must learn the path MTU itself.
        let answers = ask_big_many(&far.ns, addr, 4, 20_000)?;
        let answers = tally(&answers);
        assert_no_errors(
            &answers,
            &format!("20 kB answers to {} through {addr}", far.addr),
        );
        assert_eq!(
            nodes_of(&answers),
            BTreeSet::from([node.to_owned()]),
            "{answers:?}"
        );
        let sent = dest_unreachables_sent(&far.router_ns)? - before;
        assert!(
            sent > 0,
            "the router sent no fragmentation-needed: the test proves nothing"
        );
    }
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn udp_to_a_closed_backend_port_is_refused_through_the_frontend() -> Result<()> {
    require_root()?;
    let mut lab = lab_with(&[])?;
    // Nothing listens on port 9 in the pods: they answer with ICMP port unreachable, which
    // must reach the client as coming from the frontend it asked.
    const CLOSED: PortSpec = PortSpec::udp("discard", 9, 9);
    let near: Vec<_> = server_pods(&lab)
        .into_iter()
        .filter(|p| p.node == "n1")
        .collect();
    for (name, ip, node_port, pods) in [
        ("near", "10.96.0.32", 30095, near),
        ("away", "10.96.0.33", 30096, pods_of(&lab, 1)),
    ] {
        lab.write_manifest(
            &format!("{name}.yaml"),
            &service(
                name,
                ip,
                &[CLOSED.with_node_port(node_port)],
                &pods,
                "  type: NodePort\n",
                "",
            ),
        )?;
    }
    lab.start_agents()?;
    let node1 = lab.nodes[0].addr.to_string();
    let pod = lab.pod("n1-pod1").ns.clone();
    for (ns, addr) in [
        (lab.client_ns.clone(), at(&node1, 30095)),
        (lab.client_ns.clone(), at(&node1, 30096)),
        (pod.clone(), at("10.96.0.32", 9)),
        (pod, at("10.96.0.33", 9)),
    ] {
        let errors = in_netns(&ns, move || {
            Ok((0..3)
                .map(|_| udp_connected(addr, TIMEOUT).err().map(|e| e.kind()))
                .collect::<Vec<_>>())
        })?;
        assert!(
            errors
                .iter()
                .all(|e| *e == Some(std::io::ErrorKind::ConnectionRefused)),
            "UDP to {addr} from {ns}: {errors:?}"
        );
    }
    Ok(())
}
