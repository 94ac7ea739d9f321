//! End to end against a real control plane: etcd, kube-apiserver and kube-controller-manager
//! as `cargo xtask setup` built them from their Go modules. Services are created through the
//! API server, pods are bound to the lab's nodes and reported Running and Ready (there is no
//! kubelet), and the EndpointSlices the agents read are the ones the real EndpointSlice
//! controller wrote.

use std::{collections::BTreeSet, time::Duration};

use anyhow::{Context as _, Result};
use svclb_tests::{
    Lab, LabSpec, Pod,
    client::{TIMEOUT, at, nodes_of, tally, tcp_ask_many, udp_ask_many},
    require_root,
};

const SERVICES: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  clusterIP: 10.96.5.1
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: http
  - name: dns
    port: 53
    protocol: UDP
    targetPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: web-headless
  namespace: default
spec:
  clusterIP: None
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: http
---
apiVersion: v1
kind: Service
metadata:
  name: theirs
  namespace: default
  labels:
    service.kubernetes.io/service-proxy-name: other-proxy
spec:
  clusterIP: 10.96.5.3
  selector:
    app: web
  ports:
  - port: 80
    targetPort: http
---
apiVersion: v1
kind: Service
metadata:
  name: elsewhere
  namespace: default
spec:
  type: ExternalName
  externalName: example.invalid
";

/// A two-node lab with `pods_per_node` pods a node and a control plane (its nodes in `zones`,
/// or a zone each), where the lab pods named in `web` run as `app: web` pods; those pods.
fn web_lab(pods_per_node: usize, zones: &[&str], web: &[&str]) -> Result<(Lab, Vec<Pod>)> {
    let mut lab = Lab::new(LabSpec {
        pods_per_node,
        ..LabSpec::default()
    })?;
    lab.start_control_plane(zones)?;
    let pods: Vec<Pod> = web.iter().map(|name| lab.pod(name).clone()).collect();
    for pod in &pods {
        lab.control_plane()?.run_pod(pod, "web", 8080)?;
    }
    Ok((lab, pods))
}

/// Waits (up to `timeout`) until node `node`'s agent serves `ip:port` with backend
/// addresses that `backends` accepts; a timeout says what it serves, with its log.
fn until_serving(
    lab: &Lab,
    node: usize,
    (ip, port): (&str, u16),
    timeout: Duration,
    backends: impl Fn(&BTreeSet<String>) -> bool,
) -> Result<Duration> {
    let what = format!("{ip}:{port} on node {}", lab.nodes[node].name);
    lab.wait_for(timeout, &what, || {
        lab.backends_of(node, ip, port).is_ok_and(|b| backends(&b))
    })
    .map_err(|e| {
        e.context(format!(
            "serving {:?}\n{}",
            lab.backends_of(node, ip, port),
            lab.agent_log(node)
        ))
    })
}

/// The frontends node `node`'s agent programmed, as `ADDRESS:PORT/PROTOCOL`.
fn frontends(lab: &Lab, node: usize) -> BTreeSet<String> {
    let listing = lab.list(node).unwrap_or_default();
    listing["frontends"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            format!(
                "{}:{}/{}",
                f["address"].as_str().unwrap_or("?"),
                f["port"],
                f["protocol"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

#[test]
#[ignore = "needs root"]
fn services_of_a_real_api_server_reach_the_pods_its_controller_publishes() -> Result<()> {
    require_root()?;
    let (mut lab, pods) = web_lab(3, &[], &["n1-pod2", "n2-pod1"])?;
    let (local, remote) = (pods[0].clone(), pods[1].clone());
    lab.control_plane()?.apply(SERVICES)?;
    lab.start_agents()?;

    // The `kubernetes` Service (its endpoint the API server's own address) and web's two
    // ports; the headless and ExternalName Services program nothing, nor the one another
    // service proxy serves (`service.kubernetes.io/service-proxy-name`).
    let expected: BTreeSet<String> = ["10.96.0.1:443/TCP", "10.96.5.1:53/UDP", "10.96.5.1:80/TCP"]
        .map(String::from)
        .into();
    for node in 0..2 {
        lab.wait_for(Duration::from_secs(10), "the services in the maps", || {
            frontends(&lab, node) == expected
        })
        .map_err(|e| {
            e.context(format!(
                "{:?}\n{}",
                frontends(&lab, node),
                lab.agent_log(node)
            ))
        })?;
    }
    let client = lab.pod("n1-pod1").ns.clone();
    let names: BTreeSet<String> = [local.name.clone(), remote.name.clone()].into();
    let tcp = tally(&tcp_ask_many(&client, at("10.96.5.1", 80), 40, TIMEOUT)?);
    assert_eq!(
        tcp.keys().cloned().collect::<BTreeSet<_>>(),
        names,
        "{tcp:?}"
    );
    let udp = tally(&udp_ask_many(&client, at("10.96.5.1", 53), 40, TIMEOUT)?);
    assert_eq!(
        udp.keys().cloned().collect::<BTreeSet<_>>(),
        names,
        "{udp:?}"
    );
    Ok(())
}

/// A NodePort, a LoadBalancer (its ingress IP set in its status, as a cloud controller would)
/// and an externalIP Service, created through the API: the external client reaches pods on
/// both nodes through each node.
#[test]
#[ignore = "needs root"]
fn node_ports_load_balancers_and_external_ips_of_a_real_api_server_are_served() -> Result<()> {
    require_root()?;
    let (mut lab, _) = web_lab(1, &[], &["n1-pod1", "n2-pod1"])?;
    lab.control_plane()?.apply_objects(
        "\
apiVersion: v1
kind: Service
metadata: {name: by-node-port, namespace: default}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: by-load-balancer, namespace: default}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080, nodePort: 30081}]
status:
  loadBalancer:
    ingress: [{ip: 192.0.2.10}]
---
apiVersion: v1
kind: Service
metadata: {name: by-external-ip, namespace: default}
spec:
  selector: {app: web}
  externalIPs: [192.0.2.20]
  ports: [{port: 80, targetPort: 8080}]
",
    )?;
    lab.start_agents()?;
    for node in 0..2 {
        until_serving(
            &lab,
            node,
            ("192.0.2.10", 80),
            Duration::from_secs(10),
            |b| b.len() == 2,
        )?;
    }
    let client = lab.client_ns.clone();
    let both: BTreeSet<String> = ["n1".into(), "n2".into()].into();
    let mut targets: Vec<_> = lab
        .nodes
        .iter()
        .flat_map(|n| {
            [
                at(&n.addr.to_string(), 30080),
                at(&n.addr.to_string(), 30081),
            ]
        })
        .collect();
    for (ip, node) in [("192.0.2.10", 0), ("192.0.2.20", 1)] {
        lab.route_client_via(ip, node)?;
        targets.push(at(ip, 80));
    }
    for target in targets {
        let answers = tally(&tcp_ask_many(&client, target, 30, TIMEOUT)?);
        assert_eq!(nodes_of(&answers), both, "{target}: {answers:?}");
    }
    Ok(())
}

/// The slices of Service `name`, as `ADDRESS:ready/serving/terminating` per endpoint.
fn endpoint_states(lab: &Lab, name: &str) -> Result<BTreeSet<String>> {
    let out = lab.control_plane()?.kubectl(&[
        "get",
        "endpointslices",
        "-n",
        "default",
        "-l",
        &format!("kubernetes.io/service-name={name}"),
        "-o",
        "json",
    ])?;
    let slices: serde_json::Value = serde_json::from_str(&out)?;
    let flag =
        |c: &serde_json::Value, k: &str| c[k].as_bool().map_or("-", |b| if b { "y" } else { "n" });
    Ok(slices["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            let c = &e["conditions"];
            format!(
                "{}:{}/{}/{}",
                e["addresses"][0].as_str().unwrap_or("?"),
                flag(c, "ready"),
                flag(c, "serving"),
                flag(c, "terminating")
            )
        })
        .collect())
}

/// Waits until the real controller's slices say `states`, then until node n1's datapath
/// serves `backends` (within 1 s of the slice change); the time that took.
fn follow(lab: &Lab, states: &[String], backends: &[String]) -> Result<Duration> {
    let states: BTreeSet<String> = states.iter().cloned().collect();
    lab.wait_for(
        Duration::from_secs(10),
        &format!("the slices to say {states:?}"),
        || endpoint_states(lab, "web").is_ok_and(|s| s == states),
    )?;
    let backends: BTreeSet<String> = backends.iter().cloned().collect();
    until_serving(lab, 0, ("10.96.5.1", 80), Duration::from_secs(1), |b| {
        *b == backends
    })
}

/// A Deployment-like set scaled down and up through pods: a deleted pod's endpoint goes
/// terminating (no kubelet ends it, so it stays so), and once every pod is terminating the
/// datapath falls back to those still serving, as kube-proxy does; a force delete removes
/// the endpoint, and a new pod adds one. The datapath follows each slice change within 1 s.
#[test]
#[ignore = "needs root"]
fn the_datapath_follows_the_real_controllers_slices_through_scaling() -> Result<()> {
    require_root()?;
    let (mut lab, pods) = web_lab(2, &[], &["n1-pod1", "n2-pod1"])?;
    let (a, b, c) = (pods[0].clone(), pods[1].clone(), lab.pod("n2-pod2").clone());
    lab.control_plane()?.apply(SERVICES)?;
    lab.start_agents()?;
    let ep = |pod: &svclb_tests::Pod, state: &str| format!("{}:{state}", pod.addr);
    let be = |pod: &svclb_tests::Pod| format!("{}", pod.addr);
    follow(&lab, &[ep(&a, "y/y/n"), ep(&b, "y/y/n")], &[be(&a), be(&b)])?;

    let plane = lab.control_plane()?;
    plane.kubectl(&["delete", "pod", &a.name, "--wait=false"])?;
    follow(&lab, &[ep(&a, "n/y/y"), ep(&b, "y/y/n")], &[be(&b)])?;
    plane.kubectl(&["delete", "pod", &b.name, "--wait=false"])?;
    // Nothing ready: the terminating endpoints that still serve take the traffic.
    follow(&lab, &[ep(&a, "n/y/y"), ep(&b, "n/y/y")], &[be(&a), be(&b)])?;
    let client = lab.pod("n1-pod2").ns.clone();
    let answers = tally(&tcp_ask_many(&client, at("10.96.5.1", 80), 20, TIMEOUT)?);
    assert_eq!(
        answers.keys().cloned().collect::<BTreeSet<_>>(),
        [a.name.clone(), b.name.clone()].into(),
        "{answers:?}"
    );

    plane.kubectl(&["delete", "pod", &a.name, "--grace-period=0", "--force"])?;
    follow(&lab, &[ep(&b, "n/y/y")], &[be(&b)])?;
    plane.run_pod(&c, "web", 8080)?;
    follow(&lab, &[ep(&b, "n/y/y"), ep(&c, "y/y/n")], &[be(&c)])?;
    plane.kubectl(&["delete", "pod", &b.name, "--grace-period=0", "--force"])?;
    follow(&lab, &[ep(&c, "y/y/n")], &[be(&c)])?;
    Ok(())
}

/// The `kubernetes` Service: the API server's own endpoint reconciler publishes its address
/// (172.31.0.100:6443 on the lab fabric), and a host-network client of a node reaches the
/// API server through the ClusterIP: what the chart's agents need once the datapath is up.
#[test]
#[ignore = "needs root"]
fn host_network_clients_reach_the_api_server_through_the_kubernetes_service() -> Result<()> {
    require_root()?;
    let mut lab = Lab::new(LabSpec {
        pods_per_node: 0,
        ..LabSpec::default()
    })?;
    lab.start_control_plane(&[])?;
    lab.start_agents()?;
    for node in 0..2 {
        let api_server = BTreeSet::from(["172.31.0.100".to_owned()]);
        until_serving(
            &lab,
            node,
            ("10.96.0.1", 443),
            Duration::from_secs(10),
            |b| *b == api_server,
        )?;
        let version = lab.run_on_node(
            node,
            "curl",
            &["-sk", "--max-time", "5", "https://10.96.0.1/version"],
        )?;
        let version: serde_json::Value = serde_json::from_str(&version)?;
        assert_eq!(
            version["gitVersion"],
            svclb_tests::kube_bins::KUBERNETES.version,
            "{version}"
        );
    }
    Ok(())
}

/// The value of counter `name` (no labels) in node `node`'s agent metrics.
fn counter(lab: &Lab, node: usize, name: &str) -> Result<f64> {
    let (_, body) = lab.agent_http(node, "/metrics")?;
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .with_context(|| format!("no {name} in the metrics"))
}

/// A kube-apiserver crash, and an etcd compaction while it is away: the datapath keeps
/// serving, the agents' watches cannot resume from a compacted revision (410 Gone) and list
/// again, that relist writes nothing to the maps (nothing changed), and the watches follow
/// on (a Service created afterwards is served).
#[test]
#[ignore = "needs root"]
fn the_datapath_serves_through_an_api_server_crash_and_relists_after_a_compaction() -> Result<()> {
    require_root()?;
    let (mut lab, pods) = web_lab(1, &[], &["n1-pod1", "n2-pod1"])?;
    lab.control_plane()?.apply(SERVICES)?;
    lab.start_agents()?;
    until_serving(&lab, 0, ("10.96.5.1", 80), Duration::from_secs(10), |b| {
        b.len() == 2
    })?;
    let pod = lab.pod("n1-pod1").ns.clone();
    let names: BTreeSet<String> = pods.iter().map(|p| p.name.clone()).collect();
    let serving = |ip: &str| -> Result<()> {
        let answers = tally(&tcp_ask_many(&pod, at(ip, 80), 20, TIMEOUT)?);
        anyhow::ensure!(
            answers.keys().cloned().collect::<BTreeSet<_>>() == names,
            "{ip}: {answers:?}"
        );
        Ok(())
    };
    serving("10.96.5.1")?;
    let written = counter(&lab, 0, "svclb_map_entries_written_total")?;

    lab.control_plane_mut()?.kill_api_server()?;
    // Both agents' watches meet the crash while the datapath serves on.
    for node in 0..2 {
        lab.wait_for(
            Duration::from_secs(30),
            "the agent to see the API server gone",
            || lab.agent_log(node).contains("watch failed, retrying"),
        )?;
    }
    serving("10.96.5.1")?;
    lab.control_plane()?.compact_etcd()?;
    lab.control_plane_mut()?.restart_api_server()?;
    for node in 0..2 {
        lab.wait_for(
            Duration::from_secs(60),
            "the agent to list again after 410 Gone",
            || lab.agent_log(node).contains("listing again"),
        )?;
    }
    serving("10.96.5.1")?;
    assert_eq!(
        counter(&lab, 0, "svclb_map_entries_written_total")?,
        written,
        "resuming rewrote entries"
    );
    lab.control_plane()?.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: after, namespace: default}\nspec:\n  \
         clusterIP: 10.96.5.2\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n",
    )?;
    for node in 0..2 {
        // A Service created after the restart.
        until_serving(
            &lab,
            node,
            ("10.96.5.2", 80),
            Duration::from_secs(30),
            |b| b.len() == 2,
        )?;
    }
    serving("10.96.5.2")?;
    Ok(())
}

/// `trafficDistribution` through the real controller's hints: the nodes' zones are their
/// Node labels, the controller hints each endpoint for its zone (PreferSameZone) or its node
/// (PreferSameNode), and each node's pods reach only the endpoints hinted for them.
#[test]
#[ignore = "needs root"]
fn traffic_distribution_follows_the_real_controllers_hints() -> Result<()> {
    require_root()?;
    let (mut lab, backends) = web_lab(
        3,
        &["zone-a", "zone-b"],
        &["n1-pod1", "n1-pod2", "n2-pod1", "n2-pod2"],
    )?;
    let plane = lab.control_plane()?;
    let service = |name: &str, ip: &str, distribution: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  \
             clusterIP: {ip}\n  trafficDistribution: {distribution}\n  selector: {{app: web}}\n  \
             ports: [{{port: 80, targetPort: 8080}}]\n"
        )
    };
    plane.apply(&service("by-zone", "10.96.6.1", "PreferSameZone"))?;
    plane.apply(&service("by-node", "10.96.6.2", "PreferSameNode"))?;
    lab.start_agents()?;

    for (ip, hint) in [("10.96.6.1", "forZones"), ("10.96.6.2", "forNodes")] {
        for (node, client) in [(0, "n1-pod3"), (1, "n2-pod3")] {
            let own: BTreeSet<String> = backends
                .iter()
                .filter(|p| p.node == lab.nodes[node].name)
                .map(|p| p.name.clone())
                .collect();
            let addrs: BTreeSet<String> = backends
                .iter()
                .filter(|p| p.node == lab.nodes[node].name)
                .map(|p| p.addr.to_string())
                .collect();
            until_serving(&lab, node, (ip, 80), Duration::from_secs(10), |b| {
                *b == addrs
            })
            .with_context(|| format!("{ip} limited to the endpoints of its {hint}"))?;
            let answers = tally(&tcp_ask_many(&lab.pod(client).ns, at(ip, 80), 30, TIMEOUT)?);
            assert_eq!(
                answers.keys().cloned().collect::<BTreeSet<_>>(),
                own,
                "{ip} from {client}: {answers:?}"
            );
        }
    }
    let plane = lab.control_plane()?;
    let by_node = plane.kubectl(&[
        "get",
        "endpointslices",
        "-n",
        "default",
        "-l",
        "kubernetes.io/service-name=by-node",
        "-o",
        "json",
    ])?;
    assert!(
        by_node.contains("forNodes"),
        "the controller hinted nodes: {by_node}"
    );
    Ok(())
}
