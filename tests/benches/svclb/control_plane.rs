//! The control plane: time from the source to entries in the kernel (cold start, and one
//! endpoint change among many services), the agent's peak memory, for both sources (a
//! manifests directory, and the Kubernetes API of a real kube-apiserver), and beside them the
//! time iptables-restore and nft take to load kube-proxy's equivalent rule sets.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use svclb::{
    entries::service_key,
    kernel::maps::Maps,
    plan::{FrontendKey, Protocol},
};
use svclb_common::SlotKey;
use svclb_tests::{Lab, LabSpec, netns};

use crate::{
    Settings,
    kubeproxy::{self, Layout, Svc},
};

pub const ENDPOINTS: usize = 10;

/// Where the agent read the services from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Manifests,
    /// A real kube-apiserver (the lab's control plane), the objects created through it.
    Api,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Self::Manifests => "manifests",
            Self::Api => "Kubernetes API",
        }
    }
}

pub struct Cold {
    pub source: Source,
    pub services: usize,
    /// Agent start to "serving" (load, attach, read and parse, plan, program).
    pub ready_ms: f64,
    /// The first sync alone, as the agent logged it.
    pub sync_ms: f64,
    pub peak_rss_mb: f64,
    pub iptables_restore_ms: f64,
    pub nft_ms: f64,
}

pub struct Change {
    pub source: Source,
    pub services: usize,
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub peak_rss_mb: f64,
    /// The agent's own sync time per change (median), from its log.
    pub sync_p50_ms: f64,
}

/// Service `s`'s ClusterIP: in the control plane's Service range (10.96.0.0/16), clear of
/// the `kubernetes` Service's 10.96.0.1.
pub fn vip(s: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 128, 0)) + 1 + s as u32)
}

pub fn endpoint(s: usize, e: usize) -> Ipv4Addr {
    Ipv4Addr::from(
        u32::from(Ipv4Addr::new(10, 200, 0, 0)) + 1 + ((s * ENDPOINTS + e) % 1_000_000) as u32,
    )
}

pub fn services(n: usize) -> Vec<Svc> {
    (0..n)
        .map(|s| Svc {
            vip: vip(s).into(),
            port: 80,
            backends: (0..ENDPOINTS)
                .map(|e| (endpoint(s, e).into(), 8080))
                .collect(),
        })
        .collect()
}

/// One Service and its EndpointSlice, as one manifest file.
pub fn manifest(s: usize, svc: &Svc) -> String {
    // Every backend of a service listens on one port.
    let target = svc.backends.first().map_or(8080, |(_, port)| *port);
    let mut out = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: svc{s}, namespace: bench}}\nspec:\n  clusterIP: {}\n  ports: [{{name: http, port: {}, targetPort: {target}}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: svc{s}-1, namespace: bench, labels: {{kubernetes.io/service-name: svc{s}}}}}\naddressType: IPv4\nports: [{{name: http, port: {target}, protocol: TCP}}]\nendpoints:\n",
        svc.vip, svc.port
    );
    for (addr, _) in &svc.backends {
        let _ = writeln!(out, "- addresses: [\"{addr}\"]\n  nodeName: n2");
    }
    out
}

fn peak_rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmHWM:")
                    .map(|v| v.trim().trim_end_matches(" kB").trim().to_owned())
            })
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Loads `rules` with `program args` inside namespace `ns`; milliseconds.
pub fn load_time(ns: &str, program: &str, args: &[&str], rules: &str) -> Result<f64> {
    use std::io::Write as _;
    let started = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program}"))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{program} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(started.elapsed().as_secs_f64() * 1e3)
}

/// The sync times the agent logged, in order (ms).
fn sync_times_ms(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("svclb::agent::syncer: synced"))
        .filter_map(|l| l.split("took_us=").nth(1))
        .filter_map(|v| v.split_whitespace().next())
        .filter_map(|v| v.parse::<f64>().ok())
        .map(|us| us / 1e3)
        .collect()
}

fn first_sync_ms(log: &str) -> f64 {
    sync_times_ms(log).first().copied().unwrap_or(f64::NAN)
}

/// Whether the frontend of service `s` lists `addr` among its backends in the kernel.
fn programmed(maps: &Maps, s: usize, addr: Ipv4Addr) -> bool {
    let key = service_key(&FrontendKey::new(vip(s).into(), 80, Protocol::Tcp));
    let Some(value) = maps.service(&key) else {
        return false;
    };
    (0..value.count).any(|slot| {
        maps.slot(&SlotKey {
            svc_id: value.id,
            slot,
        })
        .and_then(|id| maps.backend(id))
        .is_some_and(|b| b.addr[..4] == addr.octets())
    })
}

/// Agent flags sizing the maps for `n` services of [`ENDPOINTS`] endpoints (the defaults hold
/// 65536 backends), with room to spare.
pub fn map_size_args(n: usize) -> Vec<String> {
    let want = |entries: usize| {
        (entries + entries / 4)
            .next_power_of_two()
            .max(65_536)
            .to_string()
    };
    vec![
        "--services-map-size".into(),
        want(n),
        "--backends-map-size".into(),
        want(n * ENDPOINTS),
        "--slots-map-size".into(),
        want(n * ENDPOINTS),
    ]
}

/// Puts `n` services where `source` serves them from: manifest files, or objects created
/// through the lab's control plane (started here).
fn provide(lab: &mut Lab, source: Source, svcs: &[Svc]) -> Result<()> {
    match source {
        Source::Manifests => {
            for (s, svc) in svcs.iter().enumerate() {
                std::fs::write(lab.manifests.join(format!("svc{s}.yaml")), manifest(s, svc))?;
            }
        }
        Source::Api => {
            let plane = lab.start_control_plane(&[])?;
            plane.kubectl(&["create", "namespace", "bench"])?;
            let started = Instant::now();
            for chunk in svcs.chunks(500).enumerate().map(|(c, chunk)| {
                chunk
                    .iter()
                    .enumerate()
                    .map(|(i, svc)| format!("---\n{}", manifest(c * 500 + i, svc)))
                    .collect::<String>()
            }) {
                plane.kubectl_with_input(&["create", "-f", "-"], Some(&chunk))?;
            }
            eprintln!(
                "  created {} Services and EndpointSlices through kube-apiserver in {:.0?}",
                svcs.len(),
                started.elapsed()
            );
        }
    }
    Ok(())
}

pub fn cold(n: usize, source: Source) -> Result<(Cold, Lab)> {
    let svcs = services(n);
    let mut lab = Lab::new(LabSpec {
        nodes: 1,
        pods_per_node: 1,
        agent_args: map_size_args(n),
        ..LabSpec::default()
    })?;
    provide(&mut lab, source, &svcs)?;
    let started = Instant::now();
    lab.start_agent(0)?;
    let ready_ms = started.elapsed().as_secs_f64() * 1e3;
    let pid = lab.agent_pid(0).context("the agent runs")?;
    let maps = Maps::open_pinned(&lab.nodes[0].pin_dir)?;
    if !programmed(&maps, n - 1, endpoint(n - 1, ENDPOINTS - 1)) {
        bail!("the agent serves, but the last of {n} services is not programmed: maps too small?");
    }
    // kube-proxy's rule loads depend on the services alone: measured once, beside the
    // manifests source.
    let (iptables, nft) = if source == Source::Manifests {
        let scratch = format!("{}-rules", lab.id);
        netns::ip(&["netns", "add", &scratch])?;
        let iptables = load_time(
            &scratch,
            "iptables-restore",
            &[],
            &kubeproxy::iptables(&svcs, Layout::CLUSTER_TCP),
        );
        let nft = load_time(
            &scratch,
            "nft",
            &["-f", "-"],
            &kubeproxy::nftables(&svcs, Layout::CLUSTER_TCP),
        );
        netns::ip(&["netns", "del", &scratch])?;
        (iptables?, nft?)
    } else {
        (f64::NAN, f64::NAN)
    };
    Ok((
        Cold {
            source,
            services: n,
            ready_ms,
            sync_ms: first_sync_ms(&lab.agent_log(0)),
            peak_rss_mb: peak_rss_mb(pid),
            iptables_restore_ms: iptables,
            nft_ms: nft,
        },
        lab,
    ))
}

/// The `i`th fresh endpoint address a change brings in.
fn fresh(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 250, (i / 250) as u8, (i % 250) as u8 + 1)
}

/// Polls the maps (every 0.2 ms, 10 s at most) until service `s` has `addr`; the time since
/// `started`.
fn until_programmed(maps: &Maps, s: usize, addr: Ipv4Addr, started: Instant) -> Result<Duration> {
    loop {
        if programmed(maps, s, addr) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(10) {
            bail!("endpoint change to {addr} not in the kernel after 10 s");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// One endpoint change at a time through manifest rewrites (atomic renames); the times.
fn manifest_changes(lab: &Lab, n: usize, samples: usize) -> Result<Vec<Duration>> {
    let maps = Maps::open_pinned(&lab.nodes[0].pin_dir)?;
    let target = n / 2;
    let mut svc = services(n).swap_remove(target);
    (0..samples)
        .map(|i| {
            svc.backends[0] = (fresh(i).into(), 8080);
            let text = manifest(target, &svc);
            let started = Instant::now();
            lab.write_manifest(&format!("svc{target}.yaml"), &text)?;
            until_programmed(&maps, target, fresh(i), started)
        })
        .collect()
}

/// One endpoint change at a time through the API server: a merge patch of the service's
/// EndpointSlice, from a client in the control plane's namespace; the times from the request.
fn api_changes(lab: &Lab, n: usize, samples: usize) -> Result<Vec<Duration>> {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::{Api, Patch, PatchParams};
    let kubeconfig = lab.control_plane()?.admin_kubeconfig();
    let pins = lab.nodes[0].pin_dir.clone();
    let target = n / 2;
    let svc = services(n).swap_remove(target);
    netns::in_netns(&lab.client_ns, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let config = kube::Config::from_custom_kubeconfig(
                kube::config::Kubeconfig::from_yaml(&kubeconfig)?,
                &kube::config::KubeConfigOptions::default(),
            )
            .await?;
            let slices: Api<EndpointSlice> =
                Api::namespaced(kube::Client::try_from(config)?, "bench");
            let maps = Maps::open_pinned(&pins)?;
            let mut times = Vec::with_capacity(samples);
            for i in 0..samples {
                let mut addrs: Vec<String> =
                    svc.backends.iter().map(|(a, _)| a.to_string()).collect();
                addrs[0] = fresh(i).to_string();
                let endpoints: Vec<_> = addrs
                    .iter()
                    .map(|a| serde_json::json!({"addresses": [a], "nodeName": "n2"}))
                    .collect();
                let patch = Patch::Merge(serde_json::json!({ "endpoints": endpoints }));
                let started = Instant::now();
                slices
                    .patch(&format!("svc{target}-1"), &PatchParams::default(), &patch)
                    .await?;
                times.push(until_programmed(&maps, target, fresh(i), started)?);
            }
            Ok(times)
        })
    })
}

pub fn changes(lab: &Lab, n: usize, samples: usize, source: Source) -> Result<Change> {
    let mut times = match source {
        Source::Manifests => manifest_changes(lab, n, samples)?,
        Source::Api => api_changes(lab, n, samples)?,
    };
    times.sort();
    let mut syncs: Vec<f64> = sync_times_ms(&lab.agent_log(0))
        .into_iter()
        .skip(1)
        .collect();
    syncs.sort_by(f64::total_cmp);
    let sync_p50_ms = syncs.get(syncs.len() / 2).copied().unwrap_or(f64::NAN);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let pick = |q: f64| ms(times[((times.len() as f64 - 1.0) * q).round() as usize]);
    Ok(Change {
        source,
        services: n,
        samples,
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
        max_ms: ms(*times.last().expect("samples")),
        peak_rss_mb: peak_rss_mb(lab.agent_pid(0).context("the agent runs")?),
        sync_p50_ms,
    })
}

pub fn run(settings: &Settings) -> Result<(Vec<Cold>, Vec<Change>)> {
    let sizes: &[usize] = if settings.quick {
        &[1_000]
    } else {
        &[1_000, 10_000]
    };
    let samples = if settings.quick { 10 } else { 40 };
    let mut colds = Vec::new();
    let mut changes_rows = Vec::new();
    for &n in sizes {
        for source in [Source::Manifests, Source::Api] {
            let (cold, lab) = cold(n, source)?;
            eprintln!(
                "  {n} services x {ENDPOINTS} endpoints from the {}: ready in {:.0} ms (first sync {:.0} ms), iptables-restore {:.0} ms, nft {:.0} ms, RSS {:.1} MB",
                source.name(),
                cold.ready_ms,
                cold.sync_ms,
                cold.iptables_restore_ms,
                cold.nft_ms,
                cold.peak_rss_mb
            );
            colds.push(cold);
            let change = changes(&lab, n, samples, source)?;
            eprintln!(
                "  one endpoint change among {n} from the {}: p50 {:.1} ms, p99 {:.1} ms over {} changes (agent sync p50 {:.1} ms)",
                source.name(),
                change.p50_ms,
                change.p99_ms,
                change.samples,
                change.sync_p50_ms
            );
            changes_rows.push(change);
        }
    }
    Ok((colds, changes_rows))
}
