//! End-to-end: the agent's life cycle. Takeover after a crash, devices that appear after start,
//! bad input next to good input.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use anyhow::Result;
use nix::sys::signal::Signal;
use svclb_tests::{
    Lab, LabSpec,
    client::{TIMEOUT, at, tally, tcp_ask_many, udp_ask_many},
    manifests::{DNS, PortSpec, WEB, cluster_ip_service},
    netns, require_root,
};

/// Programs attached to a device's tcx ingress hook in namespace `ns`.
fn tcx_ingress_programs(ns: &str, dev: &str) -> Result<usize> {
    Ok(netns::tcx_ingress_programs(ns, dev)?.len())
}

#[test]
#[ignore = "needs root"]
fn restart_after_kill_takes_over_without_duplicates_or_stale_entries() -> Result<()> {
    require_root()?;
    let mut lab = Lab::new(LabSpec::default())?;
    let (a, b) = (lab.pod("n1-pod2").clone(), lab.pod("n2-pod1").clone());
    lab.write_manifest(
        "keep.yaml",
        &cluster_ip_service("keep", "10.96.1.1", &[WEB], &[&a, &b]),
    )?;
    lab.write_manifest(
        "drop.yaml",
        &cluster_ip_service("drop", "10.96.1.2", &[WEB, DNS], &[&b]),
    )?;
    lab.start_agents()?;
    let node_ns = lab.nodes[0].ns.clone();
    assert_eq!(tcx_ingress_programs(&node_ns, "eth0")?, 1);
    assert_eq!(lab.list(0)?["frontends"].as_array().map(Vec::len), Some(3));

    // Crash, change the world while nothing runs, start again.
    lab.stop_agent(0, Signal::SIGKILL)?;
    lab.remove_manifest("drop.yaml")?;
    lab.write_manifest(
        "keep.yaml",
        &cluster_ip_service("keep", "10.96.1.1", &[WEB], &[&a]),
    )?;
    lab.start_agent(0)?;

    for dev in ["eth0", "vethpod1", "vethpod2", "vethpod3"] {
        assert_eq!(
            tcx_ingress_programs(&node_ns, dev)?,
            1,
            "programs on {dev} after restart"
        );
    }
    let listing = lab.list(0)?;
    let frontends = listing["frontends"].as_array().expect("frontends");
    assert_eq!(frontends.len(), 1, "stale frontends left: {listing}");
    let backends = frontends[0]["backends"].as_array().expect("backends");
    assert_eq!(backends.len(), 1, "stale backends left: {listing}");
    assert_eq!(backends[0]["address"], a.addr.to_string());

    let client = lab.pod("n1-pod1").ns.clone();
    assert_eq!(
        tally(&tcp_ask_many(&client, at("10.96.1.1", 80), 10, TIMEOUT)?),
        BTreeMap::from([(a.name.clone(), 10)])
    );
    for r in udp_ask_many(&client, at("10.96.1.2", 53), 2, Duration::from_millis(300))? {
        assert!(r.is_err(), "removed service answers after restart: {r:?}");
    }

    // A clean stop leaves the datapath attached, serving, and the maps pinned for `svclb list`.
    lab.stop_agent(0, Signal::SIGTERM)?;
    assert_eq!(tcx_ingress_programs(&node_ns, "eth0")?, 1);
    assert!(
        lab.agent_log(0)
            .contains("stopped; the datapath stays attached")
    );
    assert_eq!(lab.list(0)?["frontends"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        tally(&tcp_ask_many(&client, at("10.96.1.1", 80), 5, TIMEOUT)?),
        BTreeMap::from([(a.name.clone(), 5)])
    );
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn pod_devices_created_after_start_are_attached() -> Result<()> {
    require_root()?;
    let mut lab = Lab::new(LabSpec {
        pods_per_node: 1,
        ..LabSpec::default()
    })?;
    let backend = lab.pod("n2-pod1").clone();
    lab.write_manifest(
        "web.yaml",
        &cluster_ip_service("web", "10.96.2.1", &[WEB, DNS], &[&backend]),
    )?;
    lab.start_agents()?;

    let late = lab.add_pod(0)?;
    let node_ns = lab.nodes[0].ns.clone();
    lab.wait_for(
        Duration::from_secs(2),
        "the new device to be attached",
        || tcx_ingress_programs(&node_ns, &late.host_dev).is_ok_and(|n| n == 1),
    )?;
    assert_eq!(
        tally(&tcp_ask_many(&late.ns, at("10.96.2.1", 80), 5, TIMEOUT)?),
        BTreeMap::from([(backend.name.clone(), 5)])
    );
    assert_eq!(
        tally(&udp_ask_many(&late.ns, at("10.96.2.1", 53), 5, TIMEOUT)?),
        BTreeMap::from([(backend.name.clone(), 5)])
    );
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn bad_manifests_are_reported_and_everything_valid_is_served() -> Result<()> {
    require_root()?;
    let mut lab = Lab::new(LabSpec::default())?;
    let backend = lab.pod("n1-pod3").clone();
    lab.write_manifest(
        "good.yaml",
        &cluster_ip_service("good", "10.96.3.1", &[WEB], &[&backend]),
    )?;
    lab.write_manifest(
        "broken.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: [unclosed\n",
    )?;
    lab.write_manifest(
        "badip.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: badip, namespace: default}\nspec:\n  clusterIP: 10.96.3.300\n  ports: [{port: 80}]\n",
    )?;
    lab.write_manifest(
        "badport.yaml",
        &cluster_ip_service(
            "badport",
            "10.96.3.2",
            &[PortSpec::tcp("http", 80, 8080)],
            &[&backend],
        )
        .replace("port: 80\n", "port: 70000\n"),
    )?;
    // A second Service claiming good's frontend, with another backend: the first by name
    // keeps it.
    let other = lab.pod("n1-pod2").clone();
    lab.write_manifest(
        "duplicate.yaml",
        &cluster_ip_service("zz-duplicate", "10.96.3.1", &[WEB], &[&other]),
    )?;
    lab.start_agents()?;
    let client = lab.pod("n1-pod1").ns.clone();
    assert_eq!(
        tally(&tcp_ask_many(&client, at("10.96.3.1", 80), 3, TIMEOUT)?),
        BTreeMap::from([(backend.name.clone(), 3)])
    );

    let log = lab.agent_log(0);
    for expected in [
        "file broken.yaml (document 1): not valid YAML",
        "Service default/zz-duplicate: frontend 10.96.3.1:80/TCP is served by Service default/good (first by name); not by this one",
        "Service default/badip: clusterIP \"10.96.3.300\" is not an IP address",
        "Service default/badport: port \"http\": 70000 is not a port number",
    ] {
        assert!(log.contains(expected), "log lacks {expected:?}:\n{log}");
    }
    assert_eq!(lab.list(0)?["frontends"].as_array().map(Vec::len), Some(1));

    // The metrics say the same; the agent is ready.
    let (status, _) = lab.agent_http(0, "/healthz")?;
    assert_eq!(status, 200);
    let (_, metrics) = lab.agent_http(0, "/metrics")?;
    for line in [
        "svclb_frontends 1",
        "svclb_objects_skipped 4",
        "svclb_map_entries{map=\"SVCLB_SERVICES\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "metrics lack {line:?}:\n{metrics}"
        );
    }
    assert!(
        metrics.contains("svclb_sync_duration_seconds_count"),
        "{metrics}"
    );
    // `svclb status` puts it together: the agent, its links, the maps, the warnings.
    let status = lab.status(0)?;
    assert_eq!(status["agent"]["node"], "n1", "{status:#}");
    assert_eq!(status["agent"]["ready"], true);
    assert!(
        status["agent"]["last_sync"]["duration_ms"]
            .as_f64()
            .is_some()
    );
    let links = status["links"].as_array().expect("links");
    let devices: Vec<&str> = links.iter().filter_map(|l| l["device"].as_str()).collect();
    assert_eq!(
        devices,
        ["eth0", "vethpod1", "vethpod2", "vethpod3", "eth0"],
        "tc links by index, then XDP: {status:#}"
    );
    assert!(links.iter().all(|l| l["program_id"].as_u64() > Some(0)));
    let services = status["maps"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["map"] == "SVCLB_SERVICES"))
        .expect("the services map");
    assert_eq!(services["entries"], 1);
    assert!(services["capacity"].as_u64() > Some(1000));
    assert!(
        status["warnings"]
            .as_array()
            .expect("warnings")
            .iter()
            .any(|w| w
                .as_str()
                .is_some_and(|w| w.starts_with("4 objects (or parts) are skipped"))),
        "{status:#}"
    );

    // The datapath's counters: three connections, each a new flow of a few packets.
    let value = |name: &str| -> f64 {
        let series = format!("{name}{{frontend=\"10.96.3.1:80/TCP\",service=\"default/good\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series:?} in:\n{metrics}"))
    };
    assert_eq!(value("svclb_frontend_new_flows_total"), 3.0);
    assert_eq!(value("svclb_frontend_refused_flows_total"), 0.0);
    let packets = value("svclb_frontend_received_packets_total");
    assert!((9.0..=40.0).contains(&packets), "packets: {packets}");
    assert!(value("svclb_frontend_received_bytes_total") >= packets * 54.0);

    // A good file that turns bad keeps serving its last good contents; logged once.
    lab.write_manifest("good.yaml", "kind: [\n")?;
    lab.wait_for(
        Duration::from_secs(2),
        "the broken file to be reported",
        || {
            lab.agent_log(0)
                .contains("file good.yaml (document 1): not valid YAML")
        },
    )?;
    assert_eq!(
        tally(&tcp_ask_many(&client, at("10.96.3.1", 80), 3, TIMEOUT)?),
        BTreeMap::from([(backend.name.clone(), 3)])
    );
    assert_eq!(
        lab.agent_log(0)
            .matches("file broken.yaml (document 1)")
            .count(),
        1,
        "reported once"
    );
    // The conntrack sweep (every 10 s) counts the flows' entries, two per flow.
    lab.wait_for(
        Duration::from_secs(15),
        "the sweep to count the flows",
        || {
            lab.agent_http(0, "/metrics").is_ok_and(|(_, metrics)| {
                metrics
                    .lines()
                    .find_map(|l| l.strip_prefix("svclb_conntrack_entries "))
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(|n| n >= 6.0)
            })
        },
    )?;
    Ok(())
}

/// Map pressure: a Service that wants more of the services map than its share (two
/// frontends of three entries), named to sort first, is the one refused, not the small ones;
/// it is named in the log and the metrics. Changes meanwhile are synced incrementally (a full
/// map does not make every change compare every entry), and room freed goes to it at once.
#[test]
#[ignore = "needs root"]
fn a_full_services_map_gives_each_service_its_share() -> Result<()> {
    require_root()?;
    let mut lab = Lab::new(LabSpec {
        agent_args: vec!["--services-map-size".into(), "3".into()],
        ..LabSpec::default()
    })?;
    let (one, two) = (lab.pod("n2-pod2").clone(), lab.pod("n2-pod3").clone());
    lab.write_manifest(
        "hog.yaml",
        &cluster_ip_service("aa-hog", "10.96.4.1", &[WEB, DNS], &[&one]),
    )?;
    for (name, ip) in [("b", "10.96.4.2"), ("c", "10.96.4.3")] {
        let yaml = cluster_ip_service(name, ip, &[WEB], &[&one]);
        lab.write_manifest(&format!("{name}.yaml"), &yaml)?;
    }
    lab.start_agents()?;
    let client = lab.pod("n1-pod1").ns.clone();
    let log = lab.agent_log(0);
    assert!(
        log.contains("Service default/aa-hog: frontend 10.96.4.1:80/TCP skipped: the services map is full (3 entries)"),
        "{log}"
    );
    let refused = "svclb_frontends_refused{service=\"default/aa-hog\",reason=\"map_full\"} 2";
    let metrics = lab.agent_http(0, "/metrics")?.1;
    assert!(metrics.contains(refused), "{metrics}");
    for ip in ["10.96.4.2", "10.96.4.3"] {
        assert_eq!(
            tally(&tcp_ask_many(&client, at(ip, 80), 2, TIMEOUT)?),
            BTreeMap::from([(one.name.clone(), 2)])
        );
    }
    // Endpoint changes under pressure: each synced incrementally.
    for pod in [&two, &one] {
        lab.write_manifest(
            "b.yaml",
            &cluster_ip_service("b", "10.96.4.2", &[WEB], &[pod]),
        )?;
        lab.wait_for(Duration::from_secs(2), "b's new endpoint", || {
            lab.backends_of(0, "10.96.4.2", 80)
                .is_ok_and(|b| b == BTreeSet::from([pod.addr.to_string()]))
        })?;
    }
    let log = lab.agent_log(0);
    assert_eq!(
        log.matches("full=true").count(),
        1,
        "only the first sync is full:\n{log}"
    );
    // Room again: the waiting Service gets it at once.
    lab.remove_manifest("c.yaml")?;
    lab.wait_for(Duration::from_secs(2), "the hog to be programmed", || {
        lab.list(0)
            .is_ok_and(|l| l["frontends"].to_string().contains("10.96.4.1"))
    })?;
    assert_eq!(
        tally(&tcp_ask_many(&client, at("10.96.4.1", 80), 2, TIMEOUT)?),
        BTreeMap::from([(one.name.clone(), 2)])
    );
    let metrics = lab.agent_http(0, "/metrics")?.1;
    assert!(!metrics.contains("svclb_frontends_refused{"), "{metrics}");
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn agent_refuses_a_missing_uplink_with_a_clear_error() -> Result<()> {
    require_root()?;
    let lab = Lab::new(LabSpec {
        nodes: 1,
        pods_per_node: 0,
        ..LabSpec::default()
    })?;
    let bin = svclb_tests::svclb_bin()?;
    let pins = format!("/sys/fs/bpf/{}-missing-uplink", lab.id);
    let out = std::process::Command::new(&bin)
        .args(["agent", "--node-name", "n1", "--devices", "nosuchdev0"])
        .arg("--socket-lb=false")
        .arg("--manifests")
        .arg(&lab.manifests)
        .arg("--bpffs-dir")
        .arg(&pins)
        .output()?;
    std::fs::remove_dir_all(&pins)?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("svclb: error: uplink device nosuchdev0 does not exist"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("error").count(),
        1,
        "one-line error, no backtrace: {stderr}"
    );
    Ok(())
}

/// A Service with `n` endpoints (fake addresses in 10.250/16, 1000 to a slice, as the
/// EndpointSlice controller cuts them), `real` among them first.
fn big_service(name: &str, ip: &str, n: usize, real: &svclb_tests::Pod) -> String {
    let mut yaml = cluster_ip_service(name, ip, &[WEB], &[real]);
    let slices = n.div_ceil(1000);
    for s in 0..slices {
        yaml.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-big{s}\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n"
        ));
        for e in (s * 1000)..((s + 1) * 1000).min(n - 1) {
            yaml.push_str(&format!(
                "- addresses: [\"10.250.{}.{}\"]\n",
                e / 250,
                e % 250 + 1
            ));
        }
    }
    yaml
}

#[test]
#[ignore = "needs root"]
fn ten_thousand_endpoints_on_one_service_are_served_or_reported() -> Result<()> {
    require_root()?;
    // Room for 10k backends: served. Then a backends map of 4096: the big service does not
    // fit, is named, keeps what it had; the small one is served throughout.
    let mut lab = Lab::new(LabSpec::default())?;
    let real = lab.pod("n2-pod2").clone();
    lab.write_manifest("big.yaml", &big_service("big", "10.96.8.1", 10_000, &real))?;
    lab.write_manifest(
        "small.yaml",
        &cluster_ip_service("small", "10.96.8.2", &[WEB], &[&real]),
    )?;
    lab.start_agents()?;
    let listing = lab.list(0)?;
    let big = listing["frontends"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["address"] == "10.96.8.1"))
        .expect("the big frontend");
    assert_eq!(big["backends"].as_array().map(Vec::len), Some(10_000));
    let client = lab.pod("n1-pod1").ns.clone();
    assert_eq!(
        tally(&tcp_ask_many(&client, at("10.96.8.2", 80), 3, TIMEOUT)?),
        BTreeMap::from([(real.name.clone(), 3)])
    );

    let mut small_map = Lab::new(LabSpec {
        agent_args: vec!["--backends-map-size".into(), "4096".into()],
        ..LabSpec::default()
    })?;
    let real = small_map.pod("n2-pod2").clone();
    small_map.write_manifest("big.yaml", &big_service("big", "10.96.8.1", 10_000, &real))?;
    small_map.write_manifest(
        "small.yaml",
        &cluster_ip_service("small", "10.96.8.2", &[WEB], &[&real]),
    )?;
    small_map.start_agents()?;
    let log = small_map.agent_log(0);
    assert!(
        log.contains(
            "Service default/big: frontend 10.96.8.1:80/TCP skipped: the backends map is full (4096 entries)"
        ),
        "{log}"
    );
    let client = small_map.pod("n1-pod1").ns.clone();
    assert_eq!(
        tally(&tcp_ask_many(&client, at("10.96.8.2", 80), 3, TIMEOUT)?),
        BTreeMap::from([(real.name.clone(), 3)])
    );
    let status = small_map.status(0)?;
    assert!(
        status["warnings"]
            .to_string()
            .contains("planned frontends are not programmed"),
        "{status:#}"
    );
    Ok(())
}

/// A missing kernel feature on one device: an uplink whose driver cannot run XDP in native
/// mode (a bridge; the veth uplink can) is served through tc alone, and the log, the
/// metrics and `svclb status` say so, naming the device. The metrics and health endpoint
/// answers on the configured address only.
#[test]
#[ignore = "needs root"]
fn an_uplink_without_native_xdp_is_served_through_tc_and_reported() -> Result<()> {
    require_root()?;
    const METRICS: &str = "127.0.0.2:9966";
    let mut lab = Lab::new(LabSpec {
        nodes: 1,
        pods_per_node: 2,
        agent_args: [
            "--devices",
            "br0",
            "--xdp-mode",
            "native",
            "--metrics-addr",
            METRICS,
        ]
        .map(String::from)
        .to_vec(),
        ..LabSpec::default()
    })?;
    let ns = lab.nodes[0].ns.clone();
    netns::run_in(&ns, "ip", &["link", "add", "br0", "type", "bridge"])?;
    netns::run_in(&ns, "ip", &["link", "set", "br0", "up"])?;
    let backend = lab.pod("n1-pod2").clone();
    lab.write_manifest(
        "web.yaml",
        &cluster_ip_service("web", "10.96.5.1", &[WEB], &[&backend]),
    )?;
    lab.start_agents()?;

    let client = lab.pod("n1-pod1").ns.clone();
    assert_eq!(
        tally(&tcp_ask_many(&client, at("10.96.5.1", 80), 3, TIMEOUT)?),
        BTreeMap::from([(backend.name.clone(), 3)])
    );
    let log = lab.agent_log(0);
    assert!(
        log.contains("uplink br0: XDP not attached, served through tc only: attaching"),
        "{log}"
    );
    // The veth uplink has its native XDP program, the bridge none, both their tc programs.
    let xdp_of = |dev: &str| -> Result<String> {
        let out = netns::run_in(&ns, "ip", &["link", "show", "dev", dev])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        Ok(text
            .split_whitespace()
            .find(|w| w.starts_with("xdp"))
            .unwrap_or("")
            .to_owned())
    };
    assert_eq!(xdp_of("eth0")?, "xdp", "native XDP on the veth uplink");
    assert_eq!(xdp_of("br0")?, "", "no XDP on the bridge uplink");
    assert_eq!(tcx_ingress_programs(&ns, "br0")?, 1);
    assert_eq!(tcx_ingress_programs(&ns, "eth0")?, 1);

    let metrics_addr: std::net::SocketAddr = METRICS.parse()?;
    let (status, metrics) = lab.agent_http_at(0, metrics_addr, "/metrics")?;
    assert_eq!(status, 200);
    for line in [
        "svclb_devices_degraded 1",
        "svclb_errors_total{kind=\"device\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in {metrics}"
        );
    }
    let (status, _) = lab.agent_http_at(0, metrics_addr, "/healthz")?;
    assert_eq!(status, 200);
    // Bound to the configured address only: not the default one, not the node's address.
    let node_addr = std::net::SocketAddr::from((lab.nodes[0].addr, 9966));
    for elsewhere in [([127, 0, 0, 1], 9966).into(), node_addr] {
        let refused = netns::in_netns(&ns, move || {
            Ok(std::net::TcpStream::connect_timeout(&elsewhere, Duration::from_secs(1)).is_err())
        })?;
        assert!(refused, "the metrics endpoint answers on {elsewhere}");
    }

    let bin = svclb_tests::svclb_bin()?;
    let dir = lab.nodes[0].pin_dir.to_string_lossy().into_owned();
    let out = netns::run_in(
        &ns,
        &bin.to_string_lossy(),
        &[
            "status",
            "--bpffs-dir",
            &dir,
            "--agent-addr",
            METRICS,
            "-o",
            "json",
        ],
    )?;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let warnings = status["warnings"].as_array().expect("warnings");
    assert!(
        warnings.iter().any(|w| w
            .as_str()
            .is_some_and(|w| w.starts_with("uplink br0: XDP not attached"))),
        "{status:#}"
    );
    Ok(())
}

/// Kills the agent started by the test when it ends, even on a panic.
struct Spawned(std::process::Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        // It may have exited already; either way it is reaped here.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An agent started under `ip netns exec` (which remounts /sys in a mount namespace of its
/// own) finds no bpffs and mounts one itself: its pins vanish when it exits. It says so at
/// start, at `/status` (so `svclb status` warns, although the maps are out of its sight) and
/// as a metric; the lab's agents, which enter only the node's network namespace, do not.
#[test]
#[ignore = "needs root"]
fn an_agent_whose_pins_will_not_outlive_it_says_so() -> Result<()> {
    require_root()?;
    let mut lab = Lab::new(LabSpec::default())?;
    let web = lab.pod("n1-pod2").clone();
    lab.write_manifest(
        "web.yaml",
        &cluster_ip_service("web", "10.96.0.61", &[WEB], &[&web]),
    )?;
    lab.start_agent(1)?;
    let (n1_ns, n1_log, n1_pins) = (
        lab.nodes[0].ns.clone(),
        lab.nodes[0].log.clone(),
        lab.nodes[0].pin_dir.clone(),
    );
    let bin = svclb_tests::svclb_bin()?;
    let log = std::fs::File::create(&n1_log)?;
    let child = std::process::Command::new("ip")
        .args(["netns", "exec", &n1_ns])
        .arg(&bin)
        .args(["agent", "--node-name", "n1", "--devices", "eth0"])
        .args(["--pod-devices", "vethpod*", "--manifests"])
        .arg(&lab.manifests)
        .arg("--bpffs-dir")
        .arg(&n1_pins)
        .arg("--cgroup-root")
        .arg(&lab.nodes[0].cgroup)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let _agent = Spawned(child);
    lab.wait_for(
        Duration::from_secs(20),
        "the ip-netns-exec agent serving",
        || lab.agent_log(0).contains(" serving "),
    )?;
    assert!(
        lab.agent_log(0).contains(svclb::agent::PRIVATE_PINS),
        "{}",
        lab.agent_log(0)
    );
    assert!(!lab.agent_log(1).contains(svclb::agent::PRIVATE_PINS));

    let status = lab.status(0)?;
    assert_eq!(status["agent"]["private_pins"], true, "{status}");
    let warnings = status["warnings"].to_string();
    assert!(
        warnings.contains("its pinned maps and links vanish when it exits"),
        "{warnings}"
    );
    let status = lab.status(1)?;
    assert_eq!(status["agent"]["private_pins"], false, "{status}");
    let metrics =
        svclb_tests::netns::run_in(&n1_ns, "curl", &["-s", "http://127.0.0.1:9965/metrics"])?;
    let metrics = String::from_utf8(metrics.stdout)?;
    assert!(metrics.contains("svclb_bpffs_private 1"), "{metrics}");
    Ok(())
}
