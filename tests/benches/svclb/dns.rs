//! Service DNS from a pod: lookups per second and their latency, for svclb's kernel answers
//! against CoreDNS reached through svclb, in one lab. CoreDNS v1.15.0 (as `cargo xtask setup`
//! built it) runs in a pod with a cluster's Corefile (the kubernetes plugin watching the lab's
//! real API server, `forward` to an upstream, `cache 30`). The client is `svclb-lab-client
//! dns-load` in another pod of the same node, asking as glibc's `getaddrinfo` does (an A and
//! an AAAA query together, the pod's search list, ndots:5). Two paths: the cluster DNS
//! address, which the node's kernel answers (`--cluster-dns`), and a second ClusterIP Service
//! of the same CoreDNS pod that the kernel does not answer for, so its queries take the
//! service path to CoreDNS, as every query does without svclb's DNS. Two names: a Service's
//! short name (found with the search list's first name), and an external name (ndots:5: three
//! search-list misses, then the upstream). The client, CoreDNS and the kernel's work for both
//! run on one CPU; the agents and the upstream have the other.

use std::{fmt::Write as _, time::Duration};

use anyhow::{Context as _, Result};
use serde::Serialize;
use svclb_tests::{Lab, Pod, cpu, kube_bins::COREDNS};

use crate::{
    Settings,
    east_west::{
        CPU, OTHER_CPU, Ratio, best_of, numbers, off_the_measured_cpu, on_cpu, render_ratios,
    },
    latency::round_order,
};

const CLUSTER_DNS: &str = "10.96.0.10";
/// The same CoreDNS pod behind a Service the kernel does not answer for.
const COREDNS_SERVICE: &str = "10.96.0.11";
const SEARCH: &str = "default.svc.cluster.local,svc.cluster.local,cluster.local";
/// Threads of the throughput runs (each one lookup at a time).
const THREADS: usize = 8;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Kernel,
    CoreDns,
}

impl Path {
    const ALL: [Self; 2] = [Self::Kernel, Self::CoreDns];

    fn key(self) -> &'static str {
        match self {
            Self::Kernel => "svclb-kernel",
            Self::CoreDns => "coredns-through-svclb",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Kernel => "svclb, in the kernel",
            Self::CoreDns => "CoreDNS, through svclb",
        }
    }

    fn server(self) -> String {
        let ip = match self {
            Self::Kernel => CLUSTER_DNS,
            Self::CoreDns => COREDNS_SERVICE,
        };
        format!("{ip}:53")
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Cluster,
    External,
}

impl Lookup {
    const ALL: [Self; 2] = [Self::Cluster, Self::External];

    fn key(self) -> &'static str {
        match self {
            Self::Cluster => "cluster-name",
            Self::External => "external-name",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Cluster => "web",
            Self::External => "example.com",
        }
    }
}

#[derive(Serialize)]
pub struct Point {
    pub path: &'static str,
    pub lookup: &'static str,
    pub round: usize,
    /// One lookup at a time: its latency, µs.
    pub p50_us: f64,
    pub p99_us: f64,
    /// [`THREADS`] threads: lookups per second, failed ones, the CPU's busy share and busy
    /// CPU time per lookup (µs), and the p99 latency under that load (not comparable between
    /// the paths: a kernel answer completes within its thread's time slice, a CoreDNS answer
    /// waits for CoreDNS's turn on the CPU; kept in the JSON, left out of the report).
    pub lookups_per_s: f64,
    pub failed: u64,
    pub busy: f64,
    pub cpu_us_per_lookup: f64,
    pub loaded_p99_us: f64,
}

#[derive(Serialize)]
pub struct Results {
    pub coredns: &'static str,
    pub threads: usize,
    pub seconds_per_point: u64,
    pub rounds: usize,
    pub cpu_ceiling: f64,
    pub points: Vec<Point>,
}

/// The lab, and the client pod's namespace.
struct Prepared {
    lab: Lab,
    client: String,
}

/// The section, on a thread of its own off the measured CPU.
pub fn run(settings: &Settings) -> Result<Results> {
    off_the_measured_cpu(|| measure_all(settings))
}

fn measure_all(settings: &Settings) -> Result<Results> {
    let (seconds, rounds) = if settings.quick { (1, 1) } else { (3, 5) };
    let ceiling = cpu::ceiling(CPU)?;
    let p = prepare().context("setting up the DNS lab")?;
    let mut points = Vec::new();
    let cases: Vec<(Path, Lookup)> = Lookup::ALL
        .into_iter()
        .flat_map(|l| Path::ALL.map(|p| (p, l)))
        .collect();
    for round in 0..rounds {
        for i in round_order(round, cases.len()) {
            let (path, lookup) = cases[i];
            let point = measure(&p, path, lookup, seconds, ceiling, round)
                .with_context(|| format!("measuring {} of {}", path.name(), lookup.name()))?;
            eprintln!(
                "    {} {}: p50 {:.0} us, p99 {:.0} us; {:.0} lookups/s ({} failed), {:.1} us CPU each",
                path.name(),
                lookup.name(),
                point.p50_us,
                point.p99_us,
                point.lookups_per_s,
                point.failed,
                point.cpu_us_per_lookup
            );
            points.push(point);
        }
    }
    Ok(Results {
        coredns: COREDNS.version,
        threads: THREADS,
        seconds_per_point: seconds,
        rounds,
        cpu_ceiling: ceiling,
        points,
    })
}

fn prepare() -> Result<Prepared> {
    let mut lab = Lab::with_dns_and_control_plane(CLUSTER_DNS)?;
    let (client, coredns, upstream) = (
        lab.pod("n1-pod1").clone(),
        lab.pod("n1-pod2").clone(),
        lab.pod("n1-pod3").clone(),
    );
    let plane = lab.control_plane()?;
    plane.apply(&services())?;
    plane.run_pod(&coredns, "kube-dns", 53)?;
    plane.run_pod(&upstream, "web", 8080)?;
    // The upstream is the lab backend's UDP server, which answers any outside name.
    let forward = format!("forward . {}:8080", upstream.addr);
    let plane = lab.control_plane_mut()?;
    plane.start_coredns(&coredns.ns, "cluster.local", &[&forward, "cache 30"])?;
    let pid = plane.pid("coredns").context("CoreDNS is not running")?;
    cpu::pin_process(pid, CPU)?;
    wait_for_endpoints(&lab, &coredns)?;
    lab.start_agents()?;
    for node in 0..lab.nodes.len() {
        if let Some(pid) = lab.agent_pid(node) {
            cpu::pin_process(pid, OTHER_CPU)?;
        }
    }
    Ok(Prepared {
        lab,
        client: client.ns,
    })
}

fn services() -> String {
    let service = |name: &str, ip: &str, app: &str, ports: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\n\
             spec:\n  clusterIP: {ip}\n  selector:\n    app: {app}\n  ports:\n{ports}---\n"
        )
    };
    let dns = "  - {name: dns, port: 53, protocol: UDP, targetPort: 53}\n  \
               - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}\n";
    [
        service("kube-dns", CLUSTER_DNS, "kube-dns", dns),
        service("coredns", COREDNS_SERVICE, "kube-dns", dns),
        service(
            "web",
            "10.96.0.20",
            "web",
            "  - {name: http, port: 80, targetPort: 8080}\n",
        ),
    ]
    .concat()
}

/// Waits until the EndpointSlice controller has put CoreDNS's pod in the slices of both DNS
/// Services (the agents' first sync then has them).
fn wait_for_endpoints(lab: &Lab, coredns: &Pod) -> Result<()> {
    let plane = lab.control_plane()?;
    let addr = coredns.addr.to_string();
    lab.wait_for(Duration::from_secs(30), "CoreDNS's endpoints", || {
        ["kube-dns", "coredns"].iter().all(|service| {
            plane.endpoints(service).is_ok_and(|endpoints| {
                endpoints
                    .iter()
                    .any(|e| e["addresses"][0].as_str() == Some(&addr))
            })
        })
    })
    .map(drop)
}

/// One round of one case: lookups one at a time, then [`THREADS`] at a time.
fn measure(
    p: &Prepared,
    path: Path,
    lookup: Lookup,
    seconds: u64,
    ceiling: f64,
    round: usize,
) -> Result<Point> {
    let load = |threads: usize| -> Result<[u64; 6]> {
        let lines = p.lab.run_client(
            0,
            &p.client,
            &[
                "dns-load",
                &path.server(),
                lookup.name(),
                SEARCH,
                &threads.to_string(),
                "1000000",
                &seconds.to_string(),
                &CPU.to_string(),
            ],
        )?;
        numbers(&lines, "dns-load")
    };
    let [_, _, p50, p99, _, _] = load(1)?;
    let ([done, failed, _, loaded_p99, _, elapsed_ns], busy) = on_cpu(ceiling, || load(THREADS))?;
    let elapsed = Duration::from_nanos(elapsed_ns);
    let us = |ns: u64| ns as f64 / 1_000.0;
    Ok(Point {
        path: path.key(),
        lookup: lookup.key(),
        round,
        p50_us: us(p50),
        p99_us: us(p99),
        lookups_per_s: done as f64 / elapsed.as_secs_f64(),
        failed,
        busy,
        cpu_us_per_lookup: busy * elapsed.as_secs_f64() * 1e6 / done.max(1) as f64,
        loaded_p99_us: us(loaded_p99),
    })
}

/// The best of a case's rounds of one figure: the highest, or with `lowest` the lowest.
fn best(
    r: &Results,
    path: Path,
    lookup: Lookup,
    lowest: bool,
    figure: impl Fn(&Point) -> f64,
) -> Option<f64> {
    let values = r
        .points
        .iter()
        .filter(|p| p.path == path.key() && p.lookup == lookup.key())
        .map(figure);
    best_of(values, lowest)
}

pub fn ratios(r: &Results) -> Vec<Ratio> {
    let mut out = Vec::new();
    for lookup in Lookup::ALL {
        let p99 = |path| best(r, path, lookup, true, |p| p.p99_us);
        let rate = |path| best(r, path, lookup, false, |p| p.lookups_per_s);
        let over = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
        let targeted = lookup == Lookup::Cluster;
        let latency = over(p99(Path::Kernel), p99(Path::CoreDns));
        out.push(Ratio {
            name: format!("{}: p99, kernel / CoreDNS", lookup.key()),
            value: latency,
            target: if targeted { "<= 0.2x" } else { "(none)" },
            met: latency.filter(|_| targeted).map(|v| v <= 0.2),
        });
        let throughput = over(rate(Path::Kernel), rate(Path::CoreDns));
        out.push(Ratio {
            name: format!("{}: lookups per second, kernel / CoreDNS", lookup.key()),
            value: throughput,
            target: if targeted { ">= 5x" } else { "(none)" },
            met: throughput.filter(|_| targeted).map(|v| v >= 5.0),
        });
    }
    out
}

pub fn render(r: &Results, out: &mut String) {
    let _ = writeln!(
        out,
        "## Service DNS from a pod: svclb's kernel against CoreDNS\n"
    );
    let _ = writeln!(
        out,
        "A pod looks names up as glibc does (an A and an AAAA query together on one socket, the\n\
         search list `{SEARCH}`, ndots:5), at the cluster DNS address, which\n\
         the node's kernel answers, and at a second Service of the same CoreDNS {} pod\n\
         (kubernetes plugin, `forward` to an upstream, `cache 30`), which the kernel does not\n\
         answer for. `web` is found with the search list's first name; `example.com` takes three\n\
         search-list misses and then the upstream (the kernel answers two of the misses, CoreDNS\n\
         the rest). Client, CoreDNS and the kernel's work for both on one CPU. Latency: one\n\
         lookup at a time for {} s; lookups per second: {} threads for {} s (CPU per lookup is\n\
         the CPU's busy time over the lookups; busy shares are of what a thread spinning on it\n\
         reads: {:.0}% here). The best of {} round(s) of each figure, cases interleaved.\n",
        r.coredns,
        r.seconds_per_point,
        r.threads,
        r.seconds_per_point,
        r.cpu_ceiling * 100.0,
        r.rounds
    );
    let _ = writeln!(
        out,
        "| path | name | p50 µs | p99 µs | lookups/s | CPU µs per lookup | failed |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|");
    for lookup in Lookup::ALL {
        for path in Path::ALL {
            let failed: u64 = r
                .points
                .iter()
                .filter(|p| p.path == path.key() && p.lookup == lookup.key())
                .map(|p| p.failed)
                .sum();
            let cell = |lowest, figure: fn(&Point) -> f64, digits: usize| {
                best(r, path, lookup, lowest, figure)
                    .map_or("-".to_owned(), |v| format!("{v:.digits$}"))
            };
            let _ = writeln!(
                out,
                "| {} | `{}` | {} | {} | {} | {} | {failed} |",
                path.name(),
                lookup.name(),
                cell(true, |p| p.p50_us, 0),
                cell(true, |p| p.p99_us, 0),
                cell(false, |p| p.lookups_per_s, 0),
                cell(true, |p| p.cpu_us_per_lookup, 1),
            );
        }
    }
    render_ratios(&ratios(r), out);
    let _ = writeln!(out);
}
