//! New-connection latency and request throughput through a cluster IP, from a pod in the lab,
//! for: a direct connection to the pod (the floor), svclb, kube-proxy's iptables layout and its
//! nftables layout, each with N services programmed. The target service is the last one given
//! to the rule generators (in the iptables layout its rule is matched after every other) and
//! has one backend, the same pod the direct connection reaches. Every system gets a fresh lab,
//! so nothing of one leaks into another.

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
/// Connect, one request, close: how many per measurement, and the time limit.
const CONNECTIONS: usize = 1_000;
const CONNECTIONS_QUICK: usize = 300;
const TIME_LIMIT: Duration = Duration::from_secs(60);
/// Requests over one connection, for throughput: the limits.
const REQUESTS: usize = 200_000;
const THROUGHPUT_TIME: Duration = Duration::from_secs(2);

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

/// Measures from namespace `ns` to `addr`.
fn measure(ns: &str, addr: SocketAddr, connections: usize) -> Result<(Vec<Duration>, usize, f64)> {
    in_netns(ns, move || {
        // Warm up (ARP, the first connection's page faults), not counted.
        for _ in 0..20 {
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

/// One system at one size, in a lab of its own.
fn one(system: System, n: usize, connections: usize) -> Result<Row> {
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
    let (mut times, failed, requests_per_s) =
        measure(&client, target, connections).with_context(|| system.name())?;
    times.sort();
    Ok(Row {
        services: n,
        system,
        connections: times.len(),
        failed,
        p50_us: percentile_us(&times, 0.5),
        p90_us: percentile_us(&times, 0.9),
        p99_us: percentile_us(&times, 0.99),
        requests_per_s,
        load_ms,
    })
}

pub fn run(settings: &Settings) -> Result<Vec<Row>> {
    let (sizes, connections): (&[usize], usize) = if settings.quick {
        (&[100, 1_000], CONNECTIONS_QUICK)
    } else {
        (&[100, 1_000, 10_000, 30_000], CONNECTIONS)
    };
    let mut rows = Vec::new();
    for &n in sizes {
        for system in System::ALL {
            let row = one(system, n, connections)?;
            eprintln!(
                "  {n} services, {}: p50 {:.0} us, p90 {:.0} us, p99 {:.0} us over {} connections ({} failed), {:.0} requests/s{}",
                system.name(),
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
