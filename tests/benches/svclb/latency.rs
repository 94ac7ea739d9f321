//! New-connection latency and request throughput through a cluster IP, from a pod in the lab,
//! for: a direct connection to the pod (the floor), svclb, kube-proxy's iptables layout and its
//! nftables layout, each with N services programmed. The target service is the last one given
//! to the rule generators (in the iptables layout its rule is matched after every other) and
//! has one backend, the same pod the direct connection reaches. Every system gets a lab of
//! its own, so nothing of one leaks into another; the four labs of a size are built first,
//! left to settle, then measured in interleaved rounds (each round visits the systems in a
//! new order), so a noisy second of the machine spreads over all of them instead of landing
//! on one.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use svclb_tests::{
    Lab, LabSpec,
    client::{TIMEOUT, TcpSession, tcp_ask},
    netns::in_netns,
};

use crate::{
    Settings,
    control_plane::{self, load_time},
    kubeproxy::{self, Svc},
};

pub const TARGET_VIP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
/// Connect, one request, close: rounds, connections per system and round, and the time
/// limit of one system's round.
const ROUNDS: usize = 5;
const ROUNDS_QUICK: usize = 3;
const CONNECTIONS: usize = 200;
const CONNECTIONS_QUICK: usize = 100;
const TIME_LIMIT: Duration = Duration::from_secs(20);
/// Requests over one connection, for throughput (each round): the limits.
const REQUESTS: usize = 100_000;
const THROUGHPUT_TIME: Duration = Duration::from_secs(1);
/// How long the labs are left alone after they are built, before the first round.
const SETTLE: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    Direct,
    Svclb,
    Iptables,
    Nftables,
}

impl System {
    pub const ALL: [Self; 4] = [Self::Direct, Self::Svclb, Self::Iptables, Self::Nftables];

    pub fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct to the pod",
            Self::Svclb => "svclb",
            Self::Iptables => "kube-proxy iptables",
            Self::Nftables => "kube-proxy nftables",
        }
    }
}

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
}

/// `n` services: `n - 1` like the control-plane bench's, then the target on one pod.
fn services(n: usize, pod: Ipv4Addr, port: u16) -> Vec<Svc> {
    let mut svcs = control_plane::services(n - 1);
    svcs.push(Svc {
        vip: TARGET_VIP,
        port: 80,
        backends: vec![(pod, port)],
    });
    svcs
}

/// Connect, ask once, read the answer, close; the time it took.
fn one_connection(addr: SocketAddr) -> Result<Duration> {
    let started = Instant::now();
    tcp_ask(addr, TIMEOUT)?;
    Ok(started.elapsed())
}

/// Request/answer round trips over one connection for [`THROUGHPUT_TIME`]: per second.
fn throughput(addr: SocketAddr) -> Result<f64> {
    let mut session = TcpSession::connect(addr, TIMEOUT)?;
    let started = Instant::now();
    let mut done = 0;
    while done < REQUESTS && started.elapsed() < THROUGHPUT_TIME {
        session
            .ask()
            .with_context(|| format!("after {done} answers"))?;
        done += 1;
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

/// One round from namespace `ns` to `addr`: connection times, failures, requests/s.
fn measure(ns: &str, addr: SocketAddr, connections: usize) -> Result<(Vec<Duration>, usize, f64)> {
    in_netns(ns, move || {
        // Warm up (ARP, caches after the other systems' rounds), not counted.
        for _ in 0..10 {
            let _ = one_connection(addr);
        }
        let started = Instant::now();
        let mut times = Vec::with_capacity(connections);
        let mut failed = 0;
        for _ in 0..connections {
            if started.elapsed() > TIME_LIMIT {
                break;
            }
            match one_connection(addr) {
                Ok(took) => times.push(took),
                Err(_) => failed += 1,
            }
        }
        let rps = throughput(addr)?;
        Ok((times, failed, rps))
    })
}

fn percentile_us(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let at = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[at].as_secs_f64() * 1e6
}

/// One system at one size, set up in a lab of its own, ready to measure.
struct Prepared {
    system: System,
    /// Kept for its namespaces (and agent), torn down on drop.
    _lab: Lab,
    client: String,
    target: SocketAddr,
    load_ms: Option<f64>,
    times: Vec<Duration>,
    failed: usize,
    requests_per_s: Vec<f64>,
}

fn prepare(system: System, n: usize) -> Result<Prepared> {
    let mut lab = Lab::new(LabSpec {
        nodes: 1,
        pods_per_node: 2,
        agent_args: control_plane::map_size_args(n),
        ..LabSpec::default()
    })?;
    let client = lab.pod("n1-pod1").ns.clone();
    let server = lab.pod("n1-pod2").addr;
    let port = lab.spec.backend_port;
    let svcs = services(n, server, port);
    let node_ns = lab.nodes[0].ns.clone();
    let load_ms = match system {
        System::Direct => None,
        System::Svclb => {
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
            &kubeproxy::iptables(&svcs),
        )?),
        System::Nftables => Some(load_time(
            &node_ns,
            "nft",
            &["-f", "-"],
            &kubeproxy::nftables(&svcs),
        )?),
    };
    let target = match system {
        System::Direct => SocketAddr::from((server, port)),
        _ => SocketAddr::from((TARGET_VIP, 80)),
    };
    Ok(Prepared {
        system,
        _lab: lab,
        client,
        target,
        load_ms,
        times: Vec::new(),
        failed: 0,
        requests_per_s: Vec::new(),
    })
}

/// The order of the systems in round `round`: each round starts with a different one.
fn round_order(round: usize, systems: usize) -> Vec<usize> {
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
        prepared.push(prepare(system, n).with_context(|| format!("setting up {}", system.name()))?);
    }
    // Let the writeback of the manifests and the agent's first sync finish before timing.
    nix::unistd::sync();
    std::thread::sleep(SETTLE);
    for round in 0..rounds {
        for i in round_order(round, prepared.len()) {
            let p = &mut prepared[i];
            let (times, failed, rps) =
                measure(&p.client, p.target, connections).with_context(|| p.system.name())?;
            p.times.extend(times);
            p.failed += failed;
            p.requests_per_s.push(rps);
        }
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
            rows.push(row);
        }
    }
    Ok(rows)
}
