//! End-to-end over both families: a dual-stack lab (nodes and pods with IPv4 and IPv6
//! addresses, IPv6 routes between nodes) where pods reach a dual-stack ClusterIP on both
//! families, local and remote backends, over TCP and UDP; an IPv6-only and an IPv4-only
//! service coexist.

use std::collections::BTreeSet;

use anyhow::{Context as _, Result};
use svclb_tests::{
    Lab, LabSpec, Pod,
    client::{
        TIMEOUT, TcpSession, ask_big_many, at, backends, http_get, nodes_of, replies, tally,
        tcp_ask_many, udp_ask_big_many, udp_ask_many,
    },
    require_root,
};

/// An EndpointSlice of `family` ("IPv4" or "IPv6") for Service `service` over `pods`.
fn slice(service: &str, family: &str, pods: &[&Pod]) -> String {
    let endpoints: String = pods
        .iter()
        .map(|p| {
            let addr = if family == "IPv6" {
                p.addr6.to_string()
            } else {
                p.addr.to_string()
            };
            format!("- {{addresses: ['{addr}'], nodeName: {}}}\n", p.node)
        })
        .collect();
    format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {service}-{family}, namespace: default, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: {family}\nports: [{{name: http, port: 8080, protocol: TCP}}, {{name: dns, port: 8080, protocol: UDP}}]\nendpoints:\n{endpoints}"
    )
}

/// A dual-stack lab (2 nodes, 3 pods each) and its server pods: every pod but the first of
/// each node, which are the clients.
fn dual_lab() -> Result<(Lab, Vec<Pod>)> {
    let lab = Lab::new(LabSpec {
        ipv6: true,
        ..LabSpec::default()
    })?;
    let servers = lab
        .nodes
        .iter()
        .flat_map(|n| n.pods.iter().skip(1).cloned())
        .collect();
    Ok((lab, servers))
}

fn service(name: &str, families: &str, cluster_ips: &[&str]) -> String {
    let ips = cluster_ips
        .iter()
        .map(|ip| format!("'{ip}'"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  ipFamilyPolicy: {}\n  ipFamilies: [{families}]\n  clusterIP: '{}'\n  clusterIPs: [{ips}]\n  ports: [{{name: http, port: 80, targetPort: 8080}}, {{name: dns, port: 53, targetPort: 8080, protocol: UDP}}]\n",
        if cluster_ips.len() > 1 {
            "RequireDualStack"
        } else {
            "SingleStack"
        },
        cluster_ips[0]
    )
}

#[test]
#[ignore = "needs root"]
fn dual_stack_cluster_ips_answer_on_both_families() -> Result<()> {
    require_root()?;
    let (mut lab, servers) = dual_lab()?;
    let refs: Vec<&Pod> = servers.iter().collect();
    let n2: Vec<&Pod> = refs.iter().copied().filter(|p| p.node == "n2").collect();
    let n1: Vec<&Pod> = refs.iter().copied().filter(|p| p.node == "n1").collect();
    let manifest = [
        service("web", "IPv4, IPv6", &["10.96.8.1", "fd00:96::8:1"]),
        slice("web", "IPv4", &refs),
        slice("web", "IPv6", &refs),
        "---\n".to_owned(),
        service("six", "IPv6", &["fd00:96::8:2"]),
        slice("six", "IPv6", &n2),
        "---\n".to_owned(),
        service("four", "IPv4", &["10.96.8.3"]),
        slice("four", "IPv4", &n1),
    ]
    .concat();
    lab.write_manifest("dual.yaml", &manifest)?;
    lab.start_agents()?;

    let client_pod = lab.pod("n1-pod1").clone();
    let client = client_pod.ns.clone();
    let every: BTreeSet<String> = servers.iter().map(|p| p.name.clone()).collect();
    let names =
        |pods: &[&Pod]| -> BTreeSet<String> { pods.iter().map(|p| p.name.clone()).collect() };
    for vip in ["10.96.8.1", "fd00:96::8:1"] {
        let tcp = tally(&tcp_ask_many(&client, at(vip, 80), 60, TIMEOUT)?);
        assert_eq!(
            tcp.keys().cloned().collect::<BTreeSet<_>>(),
            every,
            "TCP to {vip}: every backend, local and remote, no errors: {tcp:?}"
        );
        let udp = tally(&udp_ask_many(&client, at(vip, 53), 60, TIMEOUT)?);
        assert_eq!(
            udp.keys().cloned().collect::<BTreeSet<_>>(),
            every,
            "UDP to {vip}: {udp:?}"
        );
    }
    // ClusterIP traffic keeps the pod's own address, of its family.
    let mut session = TcpSession::connect_in(&client, at("fd00:96::8:1", 80), TIMEOUT)?;
    let answer = session.ask_peer()?;
    let (_, peer) = answer.split_once(' ').context("NAME PEER")?;
    assert_eq!(peer, client_pod.addr6.to_string());

    // The IPv6-only service has no IPv4 frontend and the IPv4-only one no IPv6 frontend.
    let six = tally(&tcp_ask_many(&client, at("fd00:96::8:2", 80), 20, TIMEOUT)?);
    assert_eq!(
        six.keys().cloned().collect::<BTreeSet<_>>(),
        names(&n2),
        "{six:?}"
    );
    let four = tally(&udp_ask_many(&client, at("10.96.8.3", 53), 20, TIMEOUT)?);
    assert_eq!(
        four.keys().cloned().collect::<BTreeSet<_>>(),
        names(&n1),
        "{four:?}"
    );
    let frontends: BTreeSet<String> = lab.list(0)?["frontends"]
        .as_array()
        .context("frontends")?
        .iter()
        .map(|f| {
            let address = f["address"].as_str().unwrap_or_default();
            let address = if address.contains(':') {
                format!("[{address}]")
            } else {
                address.to_owned()
            };
            format!(
                "{address}:{}/{}",
                f["port"],
                f["protocol"].as_str().unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(
        frontends,
        [
            "10.96.8.1:53/UDP",
            "10.96.8.1:80/TCP",
            "10.96.8.3:53/UDP",
            "10.96.8.3:80/TCP",
            "[fd00:96::8:1]:53/UDP",
            "[fd00:96::8:1]:80/TCP",
            "[fd00:96::8:2]:53/UDP",
            "[fd00:96::8:2]:80/TCP",
        ]
        .map(String::from)
        .into(),
        "svclb list shows both families"
    );
    let status = lab.status(0)?;
    assert_eq!(status["frontends"], 8, "{status:#}");
    assert_eq!(status["frontends_ipv6"], 4, "{status:#}");
    // A backend entry is an address, port and protocol: four IPv6 pods over TCP and UDP
    // (six's are among web's).
    assert_eq!(status["backends_ipv6"], 8, "{status:#}");
    Ok(())
}

/// A Service over IPv6 with `spec` lines, `status` and slices of both families over `pods`.
fn external_service(name: &str, spec: &str, status: &str, pods: &[&Pod]) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n{spec}\nstatus: {status}\n{}{}",
        slice(name, "IPv4", pods),
        slice(name, "IPv6", pods)
    )
}

#[test]
#[ignore = "needs root"]
fn node_ports_and_load_balancer_ips_over_ipv6_with_both_policies() -> Result<()> {
    require_root()?;
    let (mut lab, servers) = dual_lab()?;
    let refs: Vec<&Pod> = servers.iter().collect();
    let n1: Vec<&Pod> = refs.iter().copied().filter(|p| p.node == "n1").collect();
    let manifest = [
        lab.nodes_manifest(),
        external_service(
            "web",
            "  type: LoadBalancer\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv6, IPv4]\n  clusterIP: 'fd00:96::9:1'\n  clusterIPs: ['fd00:96::9:1', 10.96.9.1]\n  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}, {name: dns, port: 53, targetPort: 8080, protocol: UDP, nodePort: 30053}]",
            "{loadBalancer: {ingress: [{ip: '2001:db8::10'}]}}",
            &refs,
        ),
        external_service(
            "local",
            "  type: NodePort\n  externalTrafficPolicy: Local\n  ipFamilies: [IPv6]\n  clusterIP: 'fd00:96::9:2'\n  clusterIPs: ['fd00:96::9:2']\n  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30081}]",
            "{}",
            &n1,
        ),
    ]
    .concat();
    lab.write_manifest("web.yaml", &manifest)?;
    lab.start_agents()?;
    let client = lab.client_ns.clone();
    let both = BTreeSet::from(["n1".to_owned(), "n2".to_owned()]);

    for node in &lab.nodes {
        let addr = at(&node.addr6.to_string(), 30080);
        let answers = tally(&tcp_ask_many(&client, addr, 40, TIMEOUT)?);
        assert_eq!(nodes_of(&answers), both, "NodePort {addr}: {answers:?}");
    }
    lab.route_client_via("2001:db8::10", 0)?;
    let answers = tally(&tcp_ask_many(&client, at("2001:db8::10", 80), 40, TIMEOUT)?);
    assert_eq!(nodes_of(&answers), both, "LoadBalancer IP: {answers:?}");

    // Cluster policy: a remote backend sees the node's IPv6 address (SNAT), a local one the
    // client's.
    let node1 = lab.nodes[0].addr6.to_string();
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..40 {
        let mut session = TcpSession::connect_in(&client, at(&node1, 30080), TIMEOUT)?;
        let answer = session.ask_peer()?;
        let (pod, peer) = answer.split_once(' ').context("NAME PEER")?;
        seen.insert(
            pod.split('-').next().unwrap_or_default().to_owned(),
            peer.to_owned(),
        );
    }
    assert_eq!(
        seen,
        std::collections::BTreeMap::from([
            ("n1".to_owned(), lab.client_addr6.to_string()),
            ("n2".to_owned(), node1.clone())
        ]),
        "who the backends see"
    );

    // Maglev over IPv6: the same UDP flow through either node lands on the same backend.
    let ports: Vec<u16> = (41_000..41_030).collect();
    let mut through = Vec::new();
    for node in 0..2 {
        lab.route_client_via("2001:db8::10", node)?;
        let ports = ports.clone();
        let answers: Vec<String> = svclb_tests::netns::in_netns(&client, move || {
            ports
                .iter()
                .map(|port| {
                    svclb_tests::client::udp_ask_from(
                        *port,
                        at("2001:db8::10", 53),
                        b"who\n",
                        TIMEOUT,
                    )
                })
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

    // Local policy over IPv6: node 1 serves from its own pods with the client's address;
    // node 2, without local endpoints, drops.
    for _ in 0..10 {
        let mut session = TcpSession::connect_in(&client, at(&node1, 30081), TIMEOUT)?;
        let answer = session.ask_peer()?;
        let (pod, peer) = answer.split_once(' ').context("NAME PEER")?;
        assert!(pod.starts_with("n1-"), "only local endpoints: {pod}");
        assert_eq!(
            peer,
            lab.client_addr6.to_string(),
            "the client's address is kept"
        );
    }
    let node2 = at(&lab.nodes[1].addr6.to_string(), 30081);
    let dropped = svclb_tests::netns::in_netns(&client, move || {
        Ok(
            std::net::TcpStream::connect_timeout(&node2, std::time::Duration::from_millis(600))
                .is_err(),
        )
    })?;
    assert!(dropped, "the node without endpoints drops");
    Ok(())
}

/// ICMPv6 packet-too-big messages the namespace `ns` sent.
fn packet_too_bigs_sent(ns: &str) -> Result<u64> {
    let snmp = svclb_tests::netns::run("ip", &["netns", "exec", ns, "cat", "/proc/net/snmp6"])?;
    let text = String::from_utf8(snmp.stdout)?;
    text.lines()
        .find_map(|l| l.strip_prefix("Icmp6OutPktTooBigs"))
        .context("no Icmp6OutPktTooBigs")?
        .trim()
        .parse()
        .context("Icmp6OutPktTooBigs")
}

#[test]
#[ignore = "needs root"]
fn path_mtu_discovery_works_through_an_ipv6_node_port() -> Result<()> {
    require_root()?;
    let (mut lab, _) = dual_lab()?;
    let far = lab.add_client_behind_router(1280)?;
    let mut manifest = lab.nodes_manifest();
    // One service served from node 1's own pods (DNAT), one from node 2's (SNAT), both
    // reached through node 1.
    for (name, node_port, node, vip) in [
        ("near", 30093, "n1", "fd00:96::a:1"),
        ("away", 30094, "n2", "fd00:96::a:2"),
    ] {
        let pods: Vec<Pod> = lab
            .nodes
            .iter()
            .flat_map(|n| n.pods.iter().cloned())
            .filter(|p| p.node == node)
            .collect();
        let refs: Vec<&Pod> = pods.iter().collect();
        manifest.push_str(&external_service(
            name,
            &format!("  type: NodePort\n  ipFamilies: [IPv6]\n  clusterIPs: ['{vip}']\n  clusterIP: '{vip}'\n  ports: [{{name: http, port: 80, targetPort: 8080, nodePort: {node_port}}}]"),
            "{}",
            &refs,
        ));
    }
    lab.write_manifest("mtu.yaml", &manifest)?;
    lab.start_agents()?;
    let node1 = lab.nodes[0].addr6.to_string();
    for (node_port, node) in [(30093, "n1"), (30094, "n2")] {
        let addr = at(&node1, node_port);
        let before = packet_too_bigs_sent(&far.router_ns)?;
        // Larger than the path MTU many times over; each connection may meet a new pod,
        // which must learn the path MTU itself.
        let answers = ask_big_many(&far.ns, addr, 4, 20_000)?;
        let answers = tally(&answers);
        assert_eq!(
            nodes_of(&answers),
            BTreeSet::from([node.to_owned()]),
            "20 kB answers to {} through {addr}: {answers:?}",
            far.addr6
        );
        let sent = packet_too_bigs_sent(&far.router_ns)? - before;
        assert!(
            sent > 0,
            "the router sent no packet too big: the test proves nothing"
        );
    }
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn ipv6_source_ranges_affinity_and_health_checks() -> Result<()> {
    require_root()?;
    let (mut lab, servers) = dual_lab()?;
    let refs: Vec<&Pod> = servers.iter().filter(|p| p.node == "n1").collect();
    let client6 = lab.client_addr6;
    let manifest = [
        lab.nodes_manifest(),
        external_service(
            "open",
            &format!("  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32002\n  ipFamilies: [IPv6]\n  clusterIP: 'fd00:96::b:1'\n  clusterIPs: ['fd00:96::b:1']\n  sessionAffinity: ClientIP\n  loadBalancerSourceRanges: ['{client6}/128', 10.0.0.0/8]\n  ports: [{{name: http, port: 80, targetPort: 8080, nodePort: 30085}}]"),
            "{loadBalancer: {ingress: [{ip: '2001:db8::20'}]}}",
            &refs,
        ),
        external_service(
            "closed",
            "  type: LoadBalancer\n  ipFamilies: [IPv6]\n  clusterIP: 'fd00:96::b:2'\n  clusterIPs: ['fd00:96::b:2']\n  loadBalancerSourceRanges: ['fd00:99::/64']\n  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30086}]",
            "{loadBalancer: {ingress: [{ip: '2001:db8::21'}]}}",
            &refs,
        ),
    ]
    .concat();
    lab.write_manifest("ranges.yaml", &manifest)?;
    lab.start_agents()?;
    let client = lab.client_ns.clone();
    lab.route_client_via("2001:db8::20", 0)?;
    lab.route_client_via("2001:db8::21", 0)?;

    // Admitted by its /128, and ClientIP affinity holds every connection on one backend.
    let answers = tally(&tcp_ask_many(&client, at("2001:db8::20", 80), 20, TIMEOUT)?);
    assert_eq!(
        answers.len(),
        1,
        "affinity: one backend for the client: {answers:?}"
    );
    assert!(answers.keys().all(|k| k.starts_with("n1-")), "{answers:?}");
    // Not in the IPv6 range of the other LoadBalancer IP: dropped before any DNAT.
    let closed = at("2001:db8::21", 80);
    let dropped = svclb_tests::netns::in_netns(&client, move || {
        Ok(
            std::net::TcpStream::connect_timeout(&closed, std::time::Duration::from_millis(600))
                .is_err(),
        )
    })?;
    assert!(dropped, "a source outside the IPv6 ranges is refused");

    // The health-check node port answers over IPv6: 200 with the local endpoints on node 1,
    // 503 on node 2.
    for (node, status, local) in [(0, 200, 2), (1, 503, 0)] {
        let addr = at(&lab.nodes[node].addr6.to_string(), 32002);
        let (got, body) = svclb_tests::netns::in_netns(&client, move || http_get(addr))?;
        assert_eq!(got, status, "{addr}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body)?;
        assert_eq!(json["localEndpoints"], local, "{body}");
    }
    Ok(())
}

/// UDP datagrams of 4 kB each way, so both the request and the answer cross in fragments:
/// from a pod to a dual-stack ClusterIP and from the external client to a NodePort, on both
/// families, served by local backends (DNAT) and remote ones (through the node's SNAT, the
/// first fragment's redirect followed by the later ones). Every exchange must come back
/// whole and from the address asked.
#[test]
#[ignore = "needs root"]
fn fragmented_udp_crosses_cluster_ips_and_node_ports_on_both_families() -> Result<()> {
    require_root()?;
    let (mut lab, servers) = dual_lab()?;
    let refs: Vec<&Pod> = servers.iter().collect();
    let manifest = [
        lab.nodes_manifest(),
        external_service(
            "big",
            "  type: NodePort\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  clusterIP: 10.96.10.1\n  clusterIPs: [10.96.10.1, 'fd00:96::10:1']\n  ports: [{name: dns, port: 53, targetPort: 8080, protocol: UDP, nodePort: 30054}]",
            "{}",
            &refs,
        ),
    ]
    .concat();
    lab.write_manifest("big.yaml", &manifest)?;
    lab.start_agents()?;
    let both = BTreeSet::from(["n1".to_owned(), "n2".to_owned()]);
    let pod = lab.pod("n1-pod1").ns.clone();
    let node1 = &lab.nodes[0];
    let targets = [
        (pod.clone(), at("10.96.10.1", 53)),
        (pod, at("fd00:96::10:1", 53)),
        (lab.client_ns.clone(), at(&node1.addr.to_string(), 30054)),
        (lab.client_ns.clone(), at(&node1.addr6.to_string(), 30054)),
    ];
    for (ns, addr) in targets {
        let answers = tally(&udp_ask_big_many(&ns, addr, 4000, 30, TIMEOUT)?);
        assert_eq!(
            nodes_of(&answers),
            both,
            "4 kB datagrams to {addr} from {ns}: local and remote backends, no errors: \
             {answers:?}"
        );
    }
    Ok(())
}

/// No Node objects in the manifests: NodePorts listen on each node's uplink addresses, IPv4
/// and IPv6 (as kube-proxy falls back on the node's interfaces), and `svclb status` says
/// where they came from.
#[test]
#[ignore = "needs root"]
fn node_ports_without_a_node_object_listen_on_the_uplink_addresses() -> Result<()> {
    require_root()?;
    let (mut lab, servers) = dual_lab()?;
    let refs: Vec<&Pod> = servers.iter().collect();
    lab.write_manifest(
        "web.yaml",
        &external_service(
            "web",
            "  type: NodePort\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  clusterIP: 10.96.9.5\n  clusterIPs: [10.96.9.5, 'fd00:96::9:5']\n  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30085}]",
            "{}",
            &refs,
        ),
    )?;
    lab.start_agents()?;
    let client = lab.client_ns.clone();
    let both = BTreeSet::from(["n1".to_owned(), "n2".to_owned()]);
    for node in &lab.nodes {
        for addr in [node.addr.to_string(), node.addr6.to_string()] {
            let answers = tally(&tcp_ask_many(&client, at(&addr, 30085), 40, TIMEOUT)?);
            assert_eq!(
                nodes_of(&answers),
                both,
                "NodePort {addr}:30085: {answers:?}"
            );
        }
    }
    let status = lab.status(0)?;
    let origin: Vec<&str> = status["agent"]["nodeport_origin"]
        .as_array()
        .context("nodeport_origin in svclb status")?
        .iter()
        .filter_map(|o| o.as_str())
        .collect();
    assert_eq!(
        origin,
        [
            "IPv4: the uplinks (no Node object)",
            "IPv6: the uplinks (no Node object)"
        ],
        "{status}"
    );
    let addresses = &status["agent"]["nodeport_addresses"];
    for addr in [
        lab.nodes[0].addr.to_string(),
        lab.nodes[0].addr6.to_string(),
    ] {
        assert!(
            addresses
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == addr.as_str())),
            "{addr} in {addresses}"
        );
    }
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn host_network_clients_reach_ipv6_and_mapped_ipv4_cluster_ips() -> Result<()> {
    require_root()?;
    let (mut lab, servers) = dual_lab()?;
    let refs: Vec<&Pod> = servers.iter().collect();
    let manifest = [
        service("web", "IPv4, IPv6", &["10.96.8.1", "fd00:96::8:1"]),
        slice("web", "IPv4", &refs),
        slice("web", "IPv6", &refs),
    ]
    .concat();
    lab.write_manifest("dual.yaml", &manifest)?;
    lab.start_agents()?;
    let host = lab.nodes[0].ns.clone();
    let every: BTreeSet<String> = servers.iter().map(|p| p.name.clone()).collect();
    // `[::ffff:10.96.8.1]`: an IPv6 socket reaching the IPv4 ClusterIP (connect6 with a
    // mapped address).
    for (mode, addr) in [
        ("tcp", "[fd00:96::8:1]:80"),
        ("udp", "[fd00:96::8:1]:53"),
        ("udp-unconnected", "[fd00:96::8:1]:53"),
        ("tcp", "[::ffff:10.96.8.1]:80"),
        ("udp", "[::ffff:10.96.8.1]:53"),
    ] {
        let lines = lab.run_client(0, &host, &[mode, addr, "40"])?;
        let replies = replies(&lines).with_context(|| format!("{mode} to {addr}"))?;
        assert_eq!(backends(&replies), every, "{mode} to {addr}: {lines:?}");
        for reply in &replies {
            assert_eq!(reply.peer.to_string(), addr, "{mode}: {reply:?}");
            assert_eq!(reply.seen.port(), reply.local.port(), "{mode}: {reply:?}");
            if mode != "udp-unconnected" {
                assert_eq!(
                    reply.seen.ip(),
                    reply.local.ip().to_canonical(),
                    "{reply:?}"
                );
            }
        }
    }
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn an_ipv6_hairpin_flow_is_snated_to_the_service_loopback_address() -> Result<()> {
    require_root()?;
    let mut lab = Lab::new(LabSpec {
        ipv6: true,
        nodes: 1,
        pods_per_node: 2,
        agent_args: vec!["--socket-lb=false".to_owned()],
        ..LabSpec::default()
    })?;
    let pod = lab.pod("n1-pod1").clone();
    let manifest = [
        service("self", "IPv6", &["fd00:96::8:5"]),
        slice("self", "IPv6", &[&pod]),
    ]
    .concat();
    lab.write_manifest("self.yaml", &manifest)?;
    lab.start_agents()?;
    for (mode, addr) in [("tcp", "[fd00:96::8:5]:80"), ("udp", "[fd00:96::8:5]:53")] {
        let replies = replies(&lab.run_client(0, &pod.ns, &[mode, addr, "5"])?)
            .with_context(|| format!("{mode} to {addr}"))?;
        assert_eq!(replies.len(), 5);
        for reply in &replies {
            assert_eq!(reply.backend, pod.name, "{mode}");
            assert_eq!(reply.peer.to_string(), addr, "{mode}");
            assert_eq!(reply.seen.ip().to_string(), "fd00:a9fe:2a01::1", "{mode}");
        }
    }
    Ok(())
}

/// Service DNS over IPv6: a pod asks the cluster DNS Service's IPv6 address (`--cluster-dns`
/// with both families); its node answers the cluster's names in place, with a UDP checksum,
/// and an outside name reaches the DNS Service's backend (a lab backend, which answers as a
/// stub upstream) through the service path.
#[test]
#[ignore = "needs root"]
fn pods_and_host_network_clients_get_cluster_names_answered_over_ipv6() -> Result<()> {
    require_root()?;
    let mut lab = Lab::new(LabSpec {
        ipv6: true,
        agent_args: vec!["--cluster-dns".into(), "10.96.0.10,fd00:96::a".into()],
        ..LabSpec::default()
    })?;
    let server = lab.pod("n2-pod2").clone();
    let manifest = [
        service("kube-dns", "IPv4, IPv6", &["10.96.0.10", "fd00:96::a"]),
        slice("kube-dns", "IPv4", &[&server]),
        slice("kube-dns", "IPv6", &[&server]),
        "---\n".to_owned(),
        service("web", "IPv4, IPv6", &["10.96.8.1", "fd00:96::8:1"]),
        slice("web", "IPv4", &[&server]),
        slice("web", "IPv6", &[&server]),
    ]
    .concat();
    lab.write_manifest("dns.yaml", &manifest)?;
    lab.start_agents()?;
    // A pod, then the node's own processes (through the agent's veth pair).
    for client in [lab.pod("n1-pod1").ns.clone(), lab.nodes[0].ns.clone()] {
        let ask = |name: &str, qtype: &str| -> Result<Vec<String>> {
            let line = lab.run_client(0, &client, &["dns", "[fd00:96::a]:53", name, qtype])?;
            let line = line.first().context("no output")?.clone();
            Ok(line.split('\t').map(str::to_owned).collect())
        };
        let answered = lab.event(0, "dns_answered")?;
        assert_eq!(
            ask("Web.default.svc.cluster.local", "AAAA")?,
            [
                "NoError",
                "aa",
                "Web.default.svc.cluster.local. 5 fd00:96::8:1",
                "0"
            ],
            "{client}"
        );
        assert_eq!(
            ask("web.default.svc.cluster.local", "A")?,
            [
                "NoError",
                "aa",
                "web.default.svc.cluster.local. 5 10.96.8.1",
                "0"
            ],
            "{client}"
        );
        assert_eq!(
            lab.event(0, "dns_answered")? - answered,
            2,
            "answered by node 1, for {client}"
        );
        assert_eq!(
            ask("example.com", "A")?,
            [
                "NoError",
                "ra",
                &format!("example.com. 30 {}", svclb_tests::server::STUB_ADDRESS),
                "0"
            ],
            "an outside name, through the service path, for {client}"
        );
    }
    Ok(())
}
