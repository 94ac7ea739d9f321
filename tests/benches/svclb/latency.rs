//! New-connection latency and request throughput through a cluster IP, from a pod in the lab,
//! for: a direct connection to the pod (the floor), svclb's TC path (`--socket-lb=false`),
//! svclb's socket-level load balancing, kube-proxy's iptables layout and its nftables layout,
//! each with N services programmed. Every system's client is the same process
//! (`svclb-lab-client bench`, in the node's lab cgroup, where only socket-LB's agent attached
//! hooks). The target service is the last one given
//! to the rule generators (in the iptables layout its rule is matched after every other) and
//! has one backend, the same pod the direct connection reaches. Every system gets a lab of
//! its own, so nothing of one leaks into another; the five labs of a size are built first,
//! left to settle, then measured in interleaved rounds (each round visits the systems in a
//! new order), so a noisy second of the machine spreads over all of them instead of landing
//! on one.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use svclb_tests::{Lab, LabSpec};

use crate::{
    Settings,
    control_plane::{self, load_time},
    kubeproxy::{self, Layout, Svc},
};

pub const TARGET_VIP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
/// Connect, one request, close: rounds, connections per system and round, and the time
/// limit of one system's round.
const ROUNDS: usize = 5;
const ROUNDS_QUICK: usize = 3;
const CONNECTIONS: usize = 200;
const CONNECTIONS_QUICK: usize = 100;
const TIME_LIMIT: Duration = Duration::from_secs(20);
/// How long the labs are left alone after they are built, before the first round.
const SETTLE: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    Direct,
    Svclb,
    SvclbSocket,
    Iptables,
    Nftables,
}

impl System {
    pub const ALL: [Self; 5] = [
        Self::Direct,
        Self::Svclb,
        Self::SvclbSocket,
        Self::Iptables,
        Self::Nftables,
    ];

    /// The system's key in the results' JSON.
    pub fn key(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Svclb => "svclb_tc",
            Self::SvclbSocket => "svclb_socket_lb",
            Self::Iptables => "iptables",
            Self::Nftables => "nftables",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct to the pod",
            Self::Svclb => "svclb TC",
            Self::SvclbSocket => "svclb socket-LB",
            Self::Iptables => "kube-proxy iptables",
            Self::Nftables => "kube-proxy nftables",
        }
    }
}

/// Connections measured with BPF statistics on, for the socket hook's cost per connect.
const HOOK_COST_CONNECTIONS: usize = 200;

pub struct Row {
    pub services: usize,
    pub system: System,
    pub connections: usize,
    pub failed: usize,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub requests_per_s: f64,
    /// How long the rules (or the agent's first sync) took to load, ms; none for the floor.
    pub load_ms: Option<f64>,
    /// Socket-LB: what `connect4` costs per call (the kernel's BPF run-time statistics).
    pub hook_ns: Option<f64>,
}

/// `n` services: `n - 1` like the control-plane bench's, then the target on one pod.
fn services(n: usize, pod: Ipv4Addr, port: u16) -> Vec<Svc> {
    let mut svcs = control_plane::services(n - 1);
    svcs.push(Svc {
        vip: TARGET_VIP.into(),
        port: 80,
        backends: vec![(pod.into(), port)],
    });
    svcs
}

/// One round from namespace `ns` of `lab`'s node to `addr`, by `svclb-lab-client bench`:
/// connection times, failures, requests/s.
fn measure(
    lab: &Lab,
    ns: &str,
    addr: SocketAddr,
    connections: usize,
) -> Result<(Vec<Duration>, usize, f64)> {
    let limit = TIME_LIMIT.as_millis().to_string();
    let lines = lab.run_client(
        0,
        ns,
        &["bench", &addr.to_string(), &connections.to_string(), &limit],
    )?;
    parse_bench(&lines)
}

/// What `svclb-lab-client bench` printed: connection times, failures, requests/s.
pub fn parse_bench(lines: &[String]) -> Result<(Vec<Duration>, usize, f64)> {
    let (mut times, mut failed, mut rps) = (Vec::new(), 0, 0.0);
    for line in lines {
        match line.split_once(' ') {
            Some(("c", ns)) => times.push(Duration::from_nanos(ns.parse()?)),
            Some(("rps", value)) => rps = value.parse()?,
            _ if line == "f" => failed += 1,
            _ => anyhow::bail!("svclb-lab-client bench said {line:?}"),
        }
    }
    Ok((times, failed, rps))
}

/// Socket-LB's `connect4` hook: its average run time per call over
/// [`HOOK_COST_CONNECTIONS`] connections, with the kernel's BPF statistics turned on for them
/// alone (they cost every program a little).
pub fn hook_cost(p: &Prepared) -> Result<f64> {
    let status = p.lab.status(0)?;
    let program = status["links"]
        .as_array()
        .and_then(|links| links.iter().find(|l| l["hook"] == "cgroup connect4"))
        .and_then(|l| l["program_id"].as_u64())
        .context("the connect4 hook in svclb status")?;
    let before = run_stats(program)?;
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")?;
    let measured = measure(&p.lab, &p.client, p.target, HOOK_COST_CONNECTIONS);
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0")?;
    measured?;
    let after = run_stats(program)?;
    let runs = after.1 - before.1;
    anyhow::ensure!(
        runs > 0.0,
        "connect4 never ran: the client is not under the hooks"
    );
    Ok((after.0 - before.0) / runs)
}

/// Program `id`'s run time (ns) and runs so far, as bpftool reports them.
pub fn run_stats(id: u64) -> Result<(f64, f64)> {
    let out = svclb_tests::netns::run("bpftool", &["-j", "prog", "show", "id", &id.to_string()])?;
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let get = |k: &str| info[k].as_f64().unwrap_or(0.0);
    Ok((get("run_time_ns"), get("run_cnt")))
}

pub fn percentile_us(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let at = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[at].as_secs_f64() * 1e6
}

/// One system at one size, set up in a lab of its own, ready to measure.
pub struct Prepared {
    pub system: System,
    /// Its namespaces (and agent), torn down on drop.
    pub lab: Lab,
    /// The client's and the server's pod namespaces.
    pub client: String,
    pub server: String,
    pub target: SocketAddr,
    load_ms: Option<f64>,
    times: Vec<Duration>,
    failed: usize,
    requests_per_s: Vec<f64>,
}

/// `system` in a lab of one node with two pods (client and server), `n` services
/// programmed; the target service's backend is the server pod's `port` (none: the lab's
/// backends' port).
pub fn prepare(system: System, n: usize, port: Option<u16>) -> Result<Prepared> {
    let mut agent_args = control_plane::map_size_args(n);
    if system == System::Svclb {
        agent_args.push("--socket-lb=false".to_owned());
    }
    let mut lab = Lab::new(LabSpec {
        nodes: 1,
        pods_per_node: 2,
        agent_args,
        ..LabSpec::default()
    })?;
    let client = lab.pod("n1-pod1").ns.clone();
    let (server_ns, server) = (lab.pod("n1-pod2").ns.clone(), lab.pod("n1-pod2").addr);
    let port = port.unwrap_or(lab.spec.backend_port);
    let svcs = services(n, server, port);
    let node_ns = lab.nodes[0].ns.clone();
    let load_ms = match system {
        System::Direct => None,
        System::Svclb | System::SvclbSocket => {
            for (s, svc) in svcs.iter().enumerate() {
                std::fs::write(
                    lab.manifests.join(format!("svc{s}.yaml")),
                    control_plane::manifest(s, svc),
                )?;
            }
            let started = Instant::now();
            lab.start_agent(0)?;
            Some(started.elapsed().as_secs_f64() * 1e3)
        }
        System::Iptables => Some(load_time(
            &node_ns,
            "iptables-restore",
            &[],
            &kubeproxy::iptables(&svcs, Layout::CLUSTER_TCP),
        )?),
        System::Nftables => Some(load_time(
            &node_ns,
            "nft",
            &["-f", "-"],
            &kubeproxy::nftables(&svcs, Layout::CLUSTER_TCP),
        )?),
    };
    let target = match system {
        System::Direct => SocketAddr::from((server, port)),
        _ => SocketAddr::from((TARGET_VIP, 80)),
    };
    Ok(Prepared {
        system,
        lab,
        client,
        server: server_ns,
        target,
        load_ms,
        times: Vec::new(),
        failed: 0,
        requests_per_s: Vec::new(),
    })
}

/// The order of the systems in round `round`: each round starts with a different one.
pub fn round_order(round: usize, systems: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..systems).collect();
    order.rotate_left(round % systems);
    if round / systems % 2 == 1 {
        order.reverse();
    }
    order
}

/// Every system at one size: built, settled, measured in interleaved rounds.
fn one_size(n: usize, rounds: usize, connections: usize) -> Result<Vec<Row>> {
    let mut prepared = Vec::new();
    for system in System::ALL {
        prepared.push(
            prepare(system, n, None).with_context(|| format!("setting up {}", system.name()))?,
        );
    }
    // Let the writeback of the manifests and the agent's first sync finish before timing.
    nix::unistd::sync();
    std::thread::sleep(SETTLE);
    for round in 0..rounds {
        for i in round_order(round, prepared.len()) {
            let p = &mut prepared[i];
            let (times, failed, rps) = measure(&p.lab, &p.client, p.target, connections)
                .with_context(|| p.system.name())?;
            p.times.extend(times);
            p.failed += failed;
            p.requests_per_s.push(rps);
        }
    }
    let mut hook_ns = None;
    for p in prepared.iter().filter(|p| p.system == System::SvclbSocket) {
        hook_ns = Some(hook_cost(p).context("the socket hook's cost")?);
    }
    Ok(prepared
        .into_iter()
        .map(|mut p| {
            p.times.sort();
            p.requests_per_s.sort_by(f64::total_cmp);
            Row {
                services: n,
                system: p.system,
                connections: p.times.len(),
                failed: p.failed,
                p50_us: percentile_us(&p.times, 0.5),
                p90_us: percentile_us(&p.times, 0.9),
                p99_us: percentile_us(&p.times, 0.99),
                requests_per_s: p.requests_per_s[p.requests_per_s.len() / 2],
                load_ms: p.load_ms,
                hook_ns: hook_ns.filter(|_| p.system == System::SvclbSocket),
            }
        })
        .collect())
}

pub fn run(settings: &Settings) -> Result<Vec<Row>> {
    let (sizes, rounds, connections): (&[usize], usize, usize) = if settings.quick {
        (&[100, 1_000], ROUNDS_QUICK, CONNECTIONS_QUICK)
    } else {
        (&[100, 1_000, 10_000, 30_000], ROUNDS, CONNECTIONS)
    };
    let mut rows = Vec::new();
    for &n in sizes {
        for row in one_size(n, rounds, connections)? {
            eprintln!(
                "  {n} services, {}: p50 {:.0} us, p90 {:.0} us, p99 {:.0} us over {} connections ({} failed), {:.0} requests/s{}",
                row.system.name(),
                row.p50_us,
                row.p90_us,
                row.p99_us,
                row.connections,
                row.failed,
                row.requests_per_s,
                row.load_ms
                    .map(|ms| format!(", loaded in {ms:.0} ms"))
                    .unwrap_or_default()
            );
            if let Some(ns) = row.hook_ns {
                eprintln!("  {n} services, connect4 hook: {ns:.0} ns per connect");
            }
            rows.push(row);
        }
    }
    Ok(rows)
}
