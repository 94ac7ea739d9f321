//! The Kubernetes source against the fake API server, for what a real one cannot be made to
//! do on demand: refuse every request (and then serve again), drop watch connections without
//! restarting, send bookmarks every 300 ms, and count the lists and watches it answers (so a
//! test can tell a resumed watch from a relist). Real kube-runtime watchers and reflector
//! stores, no root needed. Everything else about the Kubernetes source (watch events, label
//! and field selectors, 410 Gone after an etcd compaction, an API server crash) is tested
//! against a real kube-apiserver, in `lab_apiserver`.

use std::time::Duration;

use anyhow::{Result, bail};
use serde_json::{Value, json};
use svclb::source::kubernetes::{KubeSource, client};
use svclb_tests::fake_api::FakeApi;

const READY: Duration = Duration::from_secs(20);

fn service(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "default"},
           "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})
}

fn slice(name: &str, service: &str, ip: &str) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
           "endpoints": [{"addresses": [ip]}]})
}

fn node(name: &str, zone: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone},
                        "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
           "status": {"addresses": [{"type": "InternalIP", "address": "172.31.0.11"}],
                      "images": [{"names": ["registry.example/big:v1"], "sizeBytes": 1}]}})
}

async fn start(api: &FakeApi) -> Result<KubeSource> {
    start_with(api, false).await
}

/// The source, with `dns` reading what only the DNS records need too.
async fn start_with(api: &FakeApi, dns: bool) -> Result<KubeSource> {
    let dir = tempfile_dir()?;
    let path = dir.join("kubeconfig");
    std::fs::write(&path, api.kubeconfig())?;
    let client = client(Some(&path)).await?;
    Ok(KubeSource::start(
        &client,
        prometheus_client::metrics::counter::Counter::default(),
        dns,
    ))
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(svclb_tests::sweep::scratch_name(&format!(
        "kube-watch-{:?}",
        std::thread::current().id()
    )));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn service_names(source: &KubeSource) -> Vec<String> {
    let mut names: Vec<String> = source
        .snapshot()
        .services
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    names.sort();
    names
}

async fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
    let start = tokio::time::Instant::now();
    while start.elapsed() < timeout {
        if check() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

#[tokio::test]
async fn the_first_sync_waits_for_every_store_and_keeps_nodes_trimmed() -> Result<()> {
    let api = FakeApi::start()?;
    api.apply(service("web", "10.96.0.10"))?;
    api.apply(slice("web-1", "web", "10.244.1.2"))?;
    api.apply(node("n1", "zone-a"))?;
    api.apply(node("n2", "zone-b"))?;
    let source = start(&api).await?;
    source.wait_ready(READY).await?;
    let snapshot = source.snapshot();
    assert_eq!(service_names(&source), ["web"]);
    assert_eq!(snapshot.slices.len(), 1);
    let nodes: std::collections::BTreeSet<_> = snapshot
        .nodes
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    assert_eq!(
        Vec::from_iter(nodes),
        ["n1", "n2"],
        "every node's addresses are reserved"
    );
    for node in &snapshot.nodes {
        let status = node.status.clone().unwrap_or_default();
        assert!(node.metadata.annotations.is_none(), "{node:?}");
        assert!(
            status.images.is_none(),
            "only the addresses are kept: {node:?}"
        );
        assert_eq!(status.addresses.map(|a| a.len()), Some(1), "{node:?}");
        assert!(node.metadata.labels.is_some(), "{node:?}");
    }
    for kind in ["Service", "EndpointSlice", "Node"] {
        assert_eq!(api.count(&format!("LIST {kind}")), 1, "{kind} listed once");
    }
    Ok(())
}

/// With the DNS responder on, what kube-proxy leaves alone (headless Services' slices,
/// another proxy's Services) is read too, and kept apart from what the plan gets.
#[tokio::test]
async fn for_dns_the_objects_the_plan_leaves_alone_are_kept_apart() -> Result<()> {
    let api = FakeApi::start()?;
    api.apply(service("web", "10.96.0.10"))?;
    api.apply(slice("web-1", "web", "10.244.1.2"))?;
    let mut other = service("other", "10.96.0.11");
    other["metadata"]["labels"] = json!({"service.kubernetes.io/service-proxy-name": "theirs"});
    api.apply(other)?;
    api.apply(service("db", "None"))?;
    let mut headless = slice("db-1", "db", "10.244.1.3");
    headless["metadata"]["labels"]["service.kubernetes.io/headless"] = json!("");
    api.apply(headless)?;
    api.apply(node("n1", "zone-a"))?;
    let source = start_with(&api, true).await?;
    source.wait_ready(READY).await?;
    let snapshot = source.snapshot();
    let names = |objects: Vec<Option<String>>| {
        let mut names: Vec<String> = objects.into_iter().flatten().collect();
        names.sort();
        names
    };
    assert_eq!(service_names(&source), ["db", "web"], "the plan's Services");
    let slices = names(
        snapshot
            .slices
            .iter()
            .map(|s| s.metadata.name.clone())
            .collect(),
    );
    assert_eq!(slices, ["web-1"], "the plan's slices");
    let dns_services = names(
        snapshot
            .dns_services
            .iter()
            .map(|s| s.metadata.name.clone())
            .collect(),
    );
    assert_eq!(dns_services, ["other"]);
    let dns_slices = names(
        snapshot
            .dns_slices
            .iter()
            .map(|s| s.metadata.name.clone())
            .collect(),
    );
    assert_eq!(dns_slices, ["db-1"]);
    Ok(())
}

#[tokio::test]
async fn the_first_sync_waits_while_the_api_is_unreachable() -> Result<()> {
    let api = FakeApi::start()?;
    api.apply(service("web", "10.96.0.10"))?;
    api.set_unavailable(true);
    let source = start(&api).await?;
    let early = source.wait_ready(Duration::from_secs(1)).await;
    assert!(early.is_err(), "not ready while no list succeeded");
    assert!(service_names(&source).is_empty());
    api.set_unavailable(false);
    source.wait_ready(READY).await?;
    assert_eq!(service_names(&source), ["web"]);
    Ok(())
}

#[tokio::test]
async fn dropped_connections_resume_from_the_last_version_without_relisting() -> Result<()> {
    let api = FakeApi::start()?;
    api.apply(service("a", "10.96.0.1"))?;
    let source = start(&api).await?;
    source.wait_ready(READY).await?;
    let watches = api.count("WATCH Service");
    api.drop_connections();
    api.apply(service("b", "10.96.0.2"))?;
    eventually("b after the reconnect", READY, || {
        service_names(&source) == ["a", "b"]
    })
    .await?;
    assert!(
        api.count("WATCH Service") > watches,
        "the watch reconnected"
    );
    assert_eq!(api.count("LIST Service"), 1, "resumed, not relisted");
    assert_eq!(api.count("GONE Service"), 0);
    Ok(())
}

#[tokio::test]
async fn bookmarks_keep_a_quiet_watch_current() -> Result<()> {
    let api = FakeApi::start()?;
    api.apply(service("a", "10.96.0.1"))?;
    let source = start(&api).await?;
    source.wait_ready(READY).await?;
    // Other kinds move the version on; the Service watch sees only bookmarks.
    for i in 0..5 {
        api.apply(slice(&format!("s{i}"), "a", "10.244.1.2"))?;
    }
    // Bookmarks come every 300 ms. The second one sent after the changes carries the
    // version they brought (the first may have been on its way already).
    let sent = api.count("BOOKMARK Service");
    eventually("two more bookmarks on the Service watch", READY, || {
        api.count("BOOKMARK Service") >= sent + 2
    })
    .await?;
    api.compact();
    api.drop_connections();
    api.apply(service("b", "10.96.0.2"))?;
    eventually("b after the reconnect", READY, || {
        service_names(&source) == ["a", "b"]
    })
    .await?;
    assert_eq!(
        api.count("GONE Service"),
        0,
        "the watch resumed from its bookmark, not from its list"
    );
    assert_eq!(api.count("LIST Service"), 1);
    Ok(())
}
