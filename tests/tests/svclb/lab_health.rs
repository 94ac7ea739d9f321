//! End to end: kube-proxy's health server (`--healthz-bind-address`, port 10256), as cloud load
//! balancers probe it. `/healthz` follows this node's Node object (a node tainted for deletion
//! is drained), with Node objects from the manifests directory and from the Kubernetes API.
//! `/livez` follows the syncs: a change whose writes the kernel refuses fails it after the
//! timeout, and every health-check node port with it.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result};
use svclb_tests::{
    Lab, LabSpec,
    client::{at, http_get, http_get_path},
    manifests::{WEB, cluster_ip_service, service},
    netns::in_netns,
    require_root,
};

const HEALTHZ: u16 = 10256;
const HEALTH_CHECK_PORT: u16 = 32005;

/// GETs `path` of `addr` from the lab's external client: status and JSON body; checks the
/// content type kube-proxy sends.
fn probe(lab: &Lab, addr: SocketAddr, path: &'static str) -> Result<(u16, serde_json::Value)> {
    let (status, head, body) = in_netns(&lab.client_ns, move || http_get_path(addr, path))?;
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let json = serde_json::from_str(&body).with_context(|| format!("{path}: {body:?}"))?;
    Ok((status, json))
}

/// The health-check node port's status and `serviceProxyHealthy`.
fn health_check(lab: &Lab, addr: SocketAddr) -> Result<(u16, serde_json::Value)> {
    let (status, body) = in_netns(&lab.client_ns, move || http_get(addr))?;
    let json: serde_json::Value = serde_json::from_str(&body)?;
    Ok((status, json["serviceProxyHealthy"].clone()))
}

/// The lab's Node objects, node 1's tainted for deletion by the cluster autoscaler when
/// `tainted`.
fn nodes(lab: &Lab, tainted: bool) -> String {
    let manifest = lab.nodes_manifest();
    if !tainted {
        return manifest;
    }
    manifest.replacen(
        "metadata:\n  name: n1\n",
        "metadata:\n  name: n1\nspec:\n  taints:\n  - {key: ToBeDeletedByClusterAutoscaler, value: '1700000000', effect: NoSchedule}\n",
        1,
    )
}

/// A LoadBalancer Service with `externalTrafficPolicy: Local` and its endpoint on node 1.
fn local_service(lab: &Lab) -> String {
    service(
        "web",
        "10.96.0.70",
        &[WEB.with_node_port(30070)],
        &[lab.pod("n1-pod2")],
        &format!(
            "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: {HEALTH_CHECK_PORT}\n"
        ),
        "",
    )
}

/// Waits until `path` on `addr` answers `status`.
fn wait_status(lab: &Lab, addr: SocketAddr, path: &'static str, status: u16) -> Result<()> {
    lab.wait_for(
        Duration::from_secs(10),
        &format!("{path} of {addr} answering {status}"),
        || probe(lab, addr, path).is_ok_and(|(s, _)| s == status),
    )
    .map(|_| ())
}

#[test]
#[ignore = "needs root"]
fn healthz_drains_a_node_tainted_for_deletion() -> Result<()> {
    require_root()?;
    let mut lab = Lab::new(LabSpec::default())?;
    lab.write_manifest("nodes.yaml", &nodes(&lab, false))?;
    lab.write_manifest("web.yaml", &local_service(&lab))?;
    lab.start_agents()?;
    let node1 = lab.nodes[0].addr.to_string();
    let (healthz, check) = (at(&node1, HEALTHZ), at(&node1, HEALTH_CHECK_PORT));

    let (status, body) = probe(&lab, healthz, "/healthz")?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["nodeEligible"], true, "{body}");
    for field in ["lastUpdated", "currentTime"] {
        assert!(
            body[field].as_str().is_some_and(|t| t.ends_with('Z')),
            "{field}: {body}"
        );
    }
    let (status, body) = probe(&lab, healthz, "/livez")?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(health_check(&lab, check)?, (200, true.into()));

    lab.write_manifest("nodes.yaml", &nodes(&lab, true))?;
    wait_status(&lab, healthz, "/healthz", 503)?;
    let (_, body) = probe(&lab, healthz, "/healthz")?;
    assert_eq!(body["nodeEligible"], false, "{body}");
    assert_eq!(probe(&lab, healthz, "/livez")?.0, 200, "live all the same");
    assert_eq!(
        health_check(&lab, check)?,
        (200, true.into()),
        "the health-check node port follows the agent's sync health, not the node's draining \
         (as kube-proxy's)"
    );
    let node2 = lab.nodes[1].addr.to_string();
    assert_eq!(
        probe(&lab, at(&node2, HEALTHZ), "/healthz")?.0,
        200,
        "node 2 is not drained"
    );

    lab.write_manifest("nodes.yaml", &nodes(&lab, false))?;
    wait_status(&lab, healthz, "/healthz", 200)?;
    assert_eq!(health_check(&lab, check)?, (200, true.into()));
    Ok(())
}

/// Fills node 1's services map to its capacity behind the agent's back, with entries of no
/// family the datapath serves: the kernel then refuses the agent's next new frontend.
fn fill_services_map(lab: &Lab, capacity: u64) -> Result<()> {
    let status = lab.status(0)?;
    let held = status["maps"]
        .as_array()
        .and_then(|maps| maps.iter().find(|m| m["map"] == "SVCLB_SERVICES"))
        .and_then(|m| m["entries"].as_u64())
        .context("SVCLB_SERVICES in svclb status")?;
    let map = lab.nodes[0].pin_dir.join("SVCLB_SERVICES");
    let map = map.to_string_lossy().into_owned();
    for n in 0..capacity.saturating_sub(held) {
        let mut key = vec!["0".to_owned(); 24];
        key[0] = format!("{}", 200 + n);
        key[19] = "9".to_owned(); // family 9: neither IPv4 nor IPv6
        let value = vec!["0".to_owned(); 24];
        let mut args = vec!["map", "update", "pinned", map.as_str(), "key"];
        args.extend(key.iter().map(String::as_str));
        args.push("value");
        args.extend(value.iter().map(String::as_str));
        svclb_tests::netns::run("bpftool", &args)?;
    }
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn livez_fails_when_a_change_cannot_be_written_in_time() -> Result<()> {
    require_root()?;
    let mut lab = Lab::new(LabSpec {
        agent_args: ["--healthz-timeout", "2", "--services-map-size", "8"]
            .map(str::to_owned)
            .to_vec(),
        ..LabSpec::default()
    })?;
    lab.write_manifest("nodes.yaml", &nodes(&lab, false))?;
    // Node 1's frontends: the cluster IP, the NodePorts (on the node's address and on
    // 127.0.0.1) and their internal views; the rest of the map is filled below.
    lab.write_manifest("web.yaml", &local_service(&lab))?;
    lab.start_agents()?;
    let node1 = lab.nodes[0].addr.to_string();
    let (livez, check) = (at(&node1, HEALTHZ), at(&node1, HEALTH_CHECK_PORT));
    assert_eq!(probe(&lab, livez, "/livez")?.0, 200);
    assert_eq!(health_check(&lab, check)?, (200, true.into()));

    fill_services_map(&lab, 8)?;
    let web = lab.pod("n1-pod2").clone();
    lab.write_manifest(
        "b.yaml",
        &cluster_ip_service("b", "10.96.0.72", &[WEB], &[&web]),
    )?;
    wait_status(&lab, livez, "/livez", 503)?;
    assert_eq!(
        probe(&lab, livez, "/healthz")?.0,
        503,
        "/healthz fails with /livez"
    );
    assert_eq!(
        health_check(&lab, check)?,
        (503, false.into()),
        "the health-check node port fails with /livez"
    );
    let node2 = lab.nodes[1].addr.to_string();
    assert_eq!(
        probe(&lab, at(&node2, HEALTHZ), "/livez")?.0,
        200,
        "node 2 wrote it"
    );

    lab.remove_manifest("b.yaml")?;
    wait_status(&lab, livez, "/livez", 200)?;
    wait_status(&lab, livez, "/healthz", 200)?;
    assert_eq!(health_check(&lab, check)?, (200, true.into()));
    Ok(())
}

/// The same through a real API server: the Node object the agent watches (under the chart's
/// RBAC) is tainted and untainted with kubectl, then deleted.
#[test]
#[ignore = "needs root"]
fn healthz_follows_the_node_object_from_the_kubernetes_api() -> Result<()> {
    require_root()?;
    let mut lab = Lab::new(LabSpec::default())?;
    lab.start_control_plane(&[])?;
    lab.start_agents()?;
    let healthz = at(&lab.nodes[0].addr.to_string(), HEALTHZ);
    wait_status(&lab, healthz, "/healthz", 200)?;
    let plane = lab.control_plane()?;
    let taint = "ToBeDeletedByClusterAutoscaler=1700000000:NoSchedule";
    plane.kubectl(&["taint", "node", "n1", taint])?;
    wait_status(&lab, healthz, "/healthz", 503)?;
    assert_eq!(probe(&lab, healthz, "/healthz")?.1["nodeEligible"], false);
    assert_eq!(probe(&lab, healthz, "/livez")?.0, 200, "live while drained");
    plane.kubectl(&["taint", "node", "n1", &format!("{taint}-")])?;
    wait_status(&lab, healthz, "/healthz", 200)?;
    // The Node object goes away: no eligible node any more.
    plane.kubectl(&["delete", "node", "n1"])?;
    wait_status(&lab, healthz, "/healthz", 503)?;
    Ok(())
}
