//! The Helm chart, linted (`--strict`) and rendered by the real helm with default and with
//! non-default values; every object parsed strictly into its k8s-openapi type (a field the type
//! does not know fails the test), and the RBAC rules, security context and mounts checked. No
//! root needed. (That a real API server takes the objects, and that the agent works under the
//! chart's RBAC, is proven by every `lab_apiserver` test: its lab installs the chart.)

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::ServiceAccount,
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use serde::{Serialize, de::DeserializeOwned};
use svclb_tests::helm::{chart_dir, lint, notes, template};

#[derive(Default)]
pub(crate) struct Objects {
    pub(crate) daemonset: Option<DaemonSet>,
    account: Option<ServiceAccount>,
    role: Option<ClusterRole>,
    binding: Option<ClusterRoleBinding>,
    notes: String,
}

/// Deserializes `doc` into `T` and back: anything the type dropped was not a valid field.
fn strict<T: DeserializeOwned + Serialize>(doc: &serde_json::Value, file: &str) -> Result<T> {
    let typed: T = serde_json::from_value(doc.clone()).with_context(|| format!("{file}: {doc}"))?;
    let back = serde_json::to_value(&typed)?;
    if &back != doc {
        bail!(
            "{file}: fields lost in a round trip through the typed object:\nrendered: {doc:#}\ntyped:    {back:#}"
        );
    }
    Ok(typed)
}

/// The chart as the real helm lints and renders it with `overrides` (values YAML).
/// The agent container's memory limit in MiB (`NMi`).
pub(crate) fn memory_limit(objects: &Objects) -> Result<u64> {
    let ds = objects.daemonset.as_ref().context("DaemonSet")?;
    let pod = ds.spec.template.spec.as_ref().context("pod spec")?;
    let limits = pod.containers[0]
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .context("limits")?;
    let limit = &limits.get("memory").context("a memory limit")?.0;
    Ok(limit
        .strip_suffix("Mi")
        .with_context(|| format!("{limit} is not in Mi"))?
        .parse()?)
}

/// Without `resources.limits.memory`, the limit is worked out from the map sizes and the
/// sizing (docs/operations.md, "Memory"): 372 MiB at the defaults; a conntrack map four
/// times as large adds 168 bytes for each of its 786,432 more entries.
#[test]
fn the_default_memory_limit_follows_the_map_sizes() -> Result<()> {
    assert_eq!(memory_limit(&render("")?)?, 372);
    assert_eq!(
        memory_limit(&render("mapSizes: {conntrack: 1048576}\n")?)?,
        498
    );
    Ok(())
}

pub(crate) fn render(overrides: &str) -> Result<Objects> {
    let chart = chart_dir();
    lint(&chart, overrides)?;
    let mut objects = Objects {
        notes: notes(&chart, "svclb", "kube-system", overrides)?,
        ..Objects::default()
    };
    for rendered in template(&chart, "svclb", "kube-system", overrides)? {
        for doc in serde_yaml::Deserializer::from_str(&rendered.text) {
            let yaml = <serde_yaml::Value as serde::Deserialize>::deserialize(doc)
                .with_context(|| format!("{} is not YAML:\n{}", rendered.file, rendered.text))?;
            if yaml.is_null() {
                continue;
            }
            let json = serde_json::to_value(&yaml)?;
            let file = rendered.file.as_str();
            match (json["apiVersion"].as_str(), json["kind"].as_str()) {
                (Some("apps/v1"), Some("DaemonSet")) => {
                    objects.daemonset = Some(strict(&json, file)?)
                }
                (Some("v1"), Some("ServiceAccount")) => {
                    objects.account = Some(strict(&json, file)?)
                }
                (Some("rbac.authorization.k8s.io/v1"), Some("ClusterRole")) => {
                    objects.role = Some(strict(&json, file)?)
                }
                (Some("rbac.authorization.k8s.io/v1"), Some("ClusterRoleBinding")) => {
                    objects.binding = Some(strict(&json, file)?)
                }
                other => bail!("{file}: unexpected object {other:?}"),
            }
        }
    }
    Ok(objects)
}

#[test]
fn default_values_render_a_read_only_daemonset_with_a_capability_list() -> Result<()> {
    let o = render("")?;
    let role = o.role.context("ClusterRole")?;
    let mut rules: Vec<(String, String, Vec<String>)> = Vec::new();
    for rule in role.rules.unwrap_or_default() {
        for group in rule.api_groups.unwrap_or_default() {
            for resource in rule.resources.clone().unwrap_or_default() {
                rules.push((group.clone(), resource, rule.verbs.clone()));
            }
        }
    }
    rules.sort();
    let read = vec!["get".to_owned(), "list".to_owned(), "watch".to_owned()];
    assert_eq!(
        rules,
        [
            (String::new(), "nodes".to_owned(), read.clone()),
            (String::new(), "services".to_owned(), read.clone()),
            (
                "discovery.k8s.io".to_owned(),
                "endpointslices".to_owned(),
                read.clone()
            ),
        ],
        "only get/list/watch on services, endpointslices and nodes"
    );
    let binding = o.binding.context("ClusterRoleBinding")?;
    assert_eq!(binding.role_ref.name, "svclb");
    let subject = &binding.subjects.context("subjects")?[0];
    assert_eq!(
        (subject.kind.as_str(), subject.name.as_str()),
        ("ServiceAccount", "svclb")
    );
    assert_eq!(subject.namespace.as_deref(), Some("kube-system"));
    assert_eq!(
        o.account
            .context("ServiceAccount")?
            .metadata
            .name
            .as_deref(),
        Some("svclb")
    );

    let ds = o.daemonset.context("DaemonSet")?;
    let spec = ds.spec;
    assert_eq!(
        spec.update_strategy.and_then(|s| s.type_).as_deref(),
        Some("RollingUpdate")
    );
    let pod = spec.template.spec.context("pod spec")?;
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.host_pid,
        Some(true),
        "pods' namespaces are found in /proc"
    );
    assert_eq!(pod.service_account_name.as_deref(), Some("svclb"));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerations = pod.tolerations.clone().unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "tolerates every taint: {tolerations:?}"
    );
    let agent = &pod.containers[0];
    assert_eq!(
        agent.image.as_deref(),
        Some("ghcr.io/svclb/svclb:0.1.0"),
        "tag defaults to appVersion"
    );
    let security = agent.security_context.clone().context("securityContext")?;
    assert_eq!(
        security.privileged,
        Some(false),
        "the agent is not privileged"
    );
    assert_eq!(security.allow_privilege_escalation, Some(false));
    let caps = security.capabilities.clone().context("capabilities")?;
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    assert_eq!(
        caps.add.unwrap_or_default(),
        ["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"],
        "the capabilities lab_capabilities proves"
    );
    assert_eq!(
        security.seccomp_profile.map(|p| p.type_).as_deref(),
        Some("Unconfined"),
        "bpf(2) is outside the default seccomp profile"
    );
    let init = pod
        .init_containers
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.name == "mount-bpffs")
        .context("the init container that mounts the bpffs")?;
    assert_eq!(
        init.args.as_deref(),
        Some(
            &[
                "mount-bpffs".to_owned(),
                "--bpffs-dir=/sys/fs/bpf/svclb".to_owned()
            ][..]
        )
    );
    assert_eq!(
        init.security_context.and_then(|s| s.privileged),
        Some(true),
        "only the mount is privileged"
    );
    assert_eq!(
        init.volume_mounts
            .unwrap_or_default()
            .iter()
            .find(|m| m.mount_path == "/sys/fs/bpf")
            .and_then(|m| m.mount_propagation.clone())
            .as_deref(),
        Some("Bidirectional"),
        "a bpffs it mounts reaches the host"
    );
    let node_name = agent
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "SVCLB_NODE_NAME")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.clone());
    assert_eq!(
        node_name.as_deref(),
        Some("spec.nodeName"),
        "node name from the downward API"
    );
    let args = agent.args.clone().unwrap_or_default();
    assert_eq!(
        args,
        [
            "agent",
            "--devices=eth0",
            "--pod-devices=veth*",
            "--bpffs-dir=/sys/fs/bpf/svclb",
            "--metrics-addr=127.0.0.1:9965",
            "--healthz-bind-address=0.0.0.0:10256",
            "--xdp-mode=auto",
            "--xdp-finish=auto",
            "--maglev-table-size=16381",
            "--maglev-seed=JLfvgnHc2kaSUFaI",
            "--service-loopback-address=169.254.42.1",
            "--snat-ports=auto",
            "--cgroup-root=/run/svclb/cgroupv2",
            "--localhost-nodeports=true",
        ]
    );
    let port = agent.ports.clone().unwrap_or_default();
    assert_eq!(
        (port[0].name.as_deref(), port[0].container_port),
        (Some("metrics"), 9965)
    );
    assert_eq!(
        (port[1].name.as_deref(), port[1].container_port),
        (Some("healthz"), 10256)
    );
    let probe = agent
        .readiness_probe
        .clone()
        .and_then(|p| p.http_get)
        .context("readiness probe")?;
    // Ready after the first sync (the metrics server's /healthz), not kube-proxy's
    // /healthz, which a drained node fails: on the node's loopback, where metrics listen.
    assert_eq!(probe.path.as_deref(), Some("/healthz"));
    assert_eq!(probe.host.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        probe.port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(9965)
    );
    let liveness = agent
        .liveness_probe
        .clone()
        .and_then(|p| p.http_get)
        .context("liveness probe")?;
    assert_eq!(liveness.path.as_deref(), Some("/livez"));
    assert_eq!(
        liveness.port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(10256)
    );

    let mounts = agent.volume_mounts.clone().unwrap_or_default();
    let bpffs = mounts
        .iter()
        .find(|m| m.mount_path == "/sys/fs/bpf")
        .context("bpffs mount")?;
    assert_eq!(
        bpffs.mount_propagation.as_deref(),
        Some("HostToContainer"),
        "the host's bpffs, which the init container mounted if it was missing"
    );
    let cgroup = mounts
        .iter()
        .find(|m| m.mount_path == "/run/svclb/cgroupv2")
        .context("the host's cgroup hierarchy, beside the container's own")?;
    assert_eq!(cgroup.read_only, Some(true), "attaching only reads it");
    let volumes = pod.volumes.unwrap_or_default();
    let host_path = |name: &str| {
        volumes
            .iter()
            .find(|v| v.name == name)
            .and_then(|v| v.host_path.as_ref())
            .map(|h| h.path.clone())
    };
    assert_eq!(host_path(&bpffs.name).as_deref(), Some("/sys/fs/bpf"));
    assert_eq!(host_path("cgroup").as_deref(), Some("/sys/fs/cgroup"));
    assert!(
        o.notes
            .contains("kubectl -n kube-system rollout status daemonset/svclb")
    );
    assert_eq!(
        pod.dns_policy.as_deref(),
        Some("Default"),
        "cluster DNS is a Service too"
    );
    assert!(
        !agent
            .env
            .iter()
            .flatten()
            .any(|e| e.name == "KUBERNETES_SERVICE_HOST"),
        "the in-cluster API address unless apiServer.host is set"
    );
    Ok(())
}

#[test]
fn non_default_values_reach_the_daemonset() -> Result<()> {
    let o = render(
        "
image: {repository: registry.example/svclb, tag: v9, pullPolicy: Always}
apiServer: {host: 172.31.0.1, port: 6443}
devices: [ens3, ens4]
podDevices: 'cali*'
nodeportAddresses: [10.0.0.0/8, 192.168.0.0/16]
serviceCIDRs: [10.96.0.0/12, 'fd00:10:96::/112']
allowReservedExternalIPs: true
mapSizes: {conntrack: 1048576}
logLevel: debug
metrics: {address: '::', port: 19965}
xdpMode: generic
xdpFinish: always
maglev: {tableSize: 65521, seed: AAAAAAAAAAAAAAAA}
socketLB: {enabled: false, hostCgroupRoot: /sys/fs/cgroup/unified}
serviceLoopbackAddress: 169.254.0.42
snatPorts: 40000-49999
clusterDNS: [10.96.0.10, 'fd00:10:96::a']
clusterDomain: corp.example
extraArgs: [--services-map-size=131072]
resources: {requests: {cpu: 200m, memory: 128Mi}, limits: {memory: 1Gi}}
priorityClassName: my-critical
nodeSelector: {role: edge}
",
    )?;
    let ds = o.daemonset.context("DaemonSet")?;
    let pod = ds.spec.template.spec.context("pod spec")?;
    let agent = &pod.containers[0];
    assert_eq!(agent.image.as_deref(), Some("registry.example/svclb:v9"));
    assert_eq!(agent.image_pull_policy.as_deref(), Some("Always"));
    assert_eq!(
        agent.args.clone().unwrap_or_default(),
        [
            "agent",
            "--devices=ens3,ens4",
            "--pod-devices=cali*",
            "--bpffs-dir=/sys/fs/bpf/svclb",
            "--metrics-addr=[::]:19965",
            "--healthz-bind-address=0.0.0.0:10256",
            "--xdp-mode=generic",
            "--xdp-finish=always",
            "--maglev-table-size=65521",
            "--maglev-seed=AAAAAAAAAAAAAAAA",
            "--service-loopback-address=169.254.0.42",
            "--snat-ports=40000-49999",
            "--cluster-dns=10.96.0.10,fd00:10:96::a",
            "--cluster-domain=corp.example",
            "--socket-lb=false",
            "--nodeport-addresses=10.0.0.0/8,192.168.0.0/16",
            "--service-cidrs=10.96.0.0/12,fd00:10:96::/112",
            "--allow-reserved-external-ips",
            "--conntrack-map-size=1048576",
            "--services-map-size=131072",
        ]
    );
    let log = agent
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "RUST_LOG")
        .and_then(|e| e.value.clone());
    assert_eq!(log.as_deref(), Some("debug"));
    let ready = agent
        .readiness_probe
        .clone()
        .and_then(|p| p.http_get)
        .context("readiness probe")?;
    assert_eq!(
        (ready.host.as_deref(), ready.port.clone()),
        (
            Some("127.0.0.1"),
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(19965)
        ),
        "metrics on every address: probed on loopback"
    );
    let resources = agent.resources.clone().context("resources")?;
    assert_eq!(resources.limits.context("limits")?["memory"].0, "1Gi");
    assert_eq!(resources.requests.context("requests")?["cpu"].0, "200m");
    assert_eq!(pod.priority_class_name.as_deref(), Some("my-critical"));
    let env = |name: &str| {
        agent
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(
        env("KUBERNETES_SERVICE_HOST").as_deref(),
        Some("172.31.0.1")
    );
    assert_eq!(env("KUBERNETES_SERVICE_PORT").as_deref(), Some("6443"));
    assert_eq!(pod.node_selector.context("nodeSelector")?["role"], "edge");
    let cgroup = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "cgroup")
        .and_then(|v| v.host_path.clone())
        .context("the cgroup volume")?;
    assert_eq!(cgroup.path, "/sys/fs/cgroup/unified");
    Ok(())
}

#[test]
fn the_agent_accepts_every_flag_the_chart_passes() -> Result<()> {
    // The chart's arguments must be ones the agent takes: build its configuration from them.
    let o = render(
        "nodeportAddresses: [10.0.0.0/8]\nserviceCIDRs: [10.96.0.0/12]\nallowReservedExternalIPs: true\nmapSizes: {services: 1024, backends: 2048, slots: 4096, conntrack: 8192}\nclusterDNS: [10.96.0.10]\n",
    )?;
    let args = o
        .daemonset
        .context("DaemonSet")?
        .spec
        .template
        .spec
        .context("pod")?
        .containers[0]
        .args
        .clone()
        .unwrap_or_default();
    let Ok(bin) = svclb_tests::svclb_bin() else {
        bail!("the svclb binary is needed: build it (`cargo build -p svclb`) or set SVCLB_BIN");
    };
    let check = |extra: &[&str]| {
        std::process::Command::new(&bin)
            .args(&args)
            .args(extra)
            .arg("--check-config")
            .env("SVCLB_NODE_NAME", "n1")
            .output()
    };
    // The agent builds its whole configuration from them, as it would at start.
    let out = check(&[])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = String::from_utf8_lossy(&out.stdout);
    for value in [
        "node_name: \"n1\"",
        "metrics_addr: 127.0.0.1:9965",
        "10.0.0.0/8",
        "services: 1024",
        "backends: 2048",
        "slots: 4096",
        "conntrack: 8192",
        "\"/run/svclb/cgroupv2\"",
    ] {
        assert!(
            config.contains(value),
            "no {value} in the agent's configuration:\n{config}"
        );
    }
    // And refuses a value it cannot use, naming the flag.
    let bad = check(&["--healthz-bind-address=nowhere"])?;
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--healthz-bind-address"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    Ok(())
}
