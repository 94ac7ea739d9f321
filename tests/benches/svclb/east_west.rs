//! East-west at saturation: connections per second through a cluster IP, and one stream's
//! throughput, with the client, the server and the kernel's work for both on one CPU, for:
//! a direct connection to the pod (the floor), svclb's TC path, svclb's socket-level load
//! balancing, kube-proxy's iptables and nftables layouts, each with 10,000 services
//! programmed. The labs are the latency bench's ([`latency::prepare`]); the server is a
//! `ConnServer` in the server pod, the client `svclb-lab-client cps` (64 connections in
//! flight) and `bulk` in the client pod, under the node's socket hooks.

use std::{fmt::Write as _, time::Duration};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use svclb_tests::{cpu, server::ConnServer};

use crate::{
    Settings,
    latency::{self, Prepared, System},
};

/// The port of the connection server, and of the target service's backend.
const PORT: u16 = 8081;
/// The CPU everything measured runs on; the agents and the rest of the bench have the other.
pub const CPU: usize = 1;
pub const OTHER_CPU: usize = 0;
/// Connections in flight: client threads, and server threads to take them.
const IN_FLIGHT: usize = 64;

#[derive(Serialize)]
pub struct Point {
    pub system: &'static str,
    pub round: usize,
    /// Connections completed per second, and failed in all.
    pub cps: f64,
    pub failed: u64,
    /// The CPU's busy share, of what a thread spinning on it reads.
    pub busy: f64,
    /// Busy CPU time per completed connection, µs.
    pub cpu_us_per_connection: f64,
    /// One stream's throughput, Gbit/s, and per busy CPU.
    pub bulk_gbps: f64,
    pub bulk_gbps_per_core: f64,
}

#[derive(Serialize)]
pub struct Results {
    pub services: usize,
    pub in_flight: usize,
    pub seconds_per_point: u64,
    pub rounds: usize,
    pub cpu_ceiling: f64,
    pub points: Vec<Point>,
    /// Socket-LB's `connect4` hook, ns per connect (BPF statistics).
    pub connect4_ns: Option<f64>,
}

/// The section, on a thread of its own off the measured CPU.
pub fn run(settings: &Settings) -> Result<Results> {
    off_the_measured_cpu(|| measure_all(settings))
}

/// Runs `f` on a thread of its own pinned to [`OTHER_CPU`] (what it starts inherits the pin).
pub fn off_the_measured_cpu<T: Send>(f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                cpu::pin_self(OTHER_CPU)?;
                f()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the bench's thread panicked"))?
    })
}

fn measure_all(settings: &Settings) -> Result<Results> {
    let (services, seconds, rounds) = if settings.quick {
        (1_000, 1, 1)
    } else {
        (10_000, 3, 5)
    };
    let ceiling = cpu::ceiling(CPU)?;
    let mut labs = Vec::new();
    for system in System::ALL
        .into_iter()
        .filter(|s| settings.wants_system(s.key()))
    {
        eprintln!("  {}: {services} services", system.name());
        let p = latency::prepare(system, services, Some(PORT))
            .with_context(|| format!("setting up {}", system.name()))?;
        // The agent's own work (its sweeps, its metrics) stays off the measured CPU.
        if let Some(pid) = p.lab.agent_pid(0) {
            cpu::pin_process(pid, OTHER_CPU)?;
        }
        let server = ConnServer::start(&p.server, PORT, IN_FLIGHT, CPU)?;
        labs.push((p, server));
    }
    let mut points = Vec::new();
    for round in 0..rounds {
        for i in latency::round_order(round, labs.len()) {
            let (p, _) = &labs[i];
            let point = measure(p, seconds, ceiling, round)
                .with_context(|| format!("measuring {}", p.system.name()))?;
            eprintln!(
                "    {}: {:.0} connections/s ({} failed), {:.1} us CPU each, bulk {:.2} Gbit/s per core",
                p.system.name(),
                point.cps,
                point.failed,
                point.cpu_us_per_connection,
                point.bulk_gbps_per_core
            );
            points.push(point);
        }
    }
    let connect4_ns = match labs.iter().find(|(p, _)| p.system == System::SvclbSocket) {
        Some((p, _)) => Some(latency::hook_cost(p).context("the connect4 hook's cost")?),
        None => None,
    };
    Ok(Results {
        services,
        in_flight: IN_FLIGHT,
        seconds_per_point: seconds,
        rounds,
        cpu_ceiling: ceiling,
        points,
        connect4_ns,
    })
}

/// One round of one system: connections for `seconds`, then one stream for `seconds`.
fn measure(p: &Prepared, seconds: u64, ceiling: f64, round: usize) -> Result<Point> {
    let target = p.target.to_string();
    let secs = seconds.to_string();
    let (lines, busy) = on_cpu(ceiling, || {
        p.lab.run_client(
            0,
            &p.client,
            &[
                "cps",
                &target,
                &secs,
                &IN_FLIGHT.to_string(),
                &CPU.to_string(),
            ],
        )
    })?;
    let [done, failed, ns] = numbers(&lines, "cps")?;
    let elapsed = Duration::from_nanos(ns);
    let cps = done as f64 / elapsed.as_secs_f64();
    let (lines, bulk_busy) = on_cpu(ceiling, || {
        p.lab
            .run_client(0, &p.client, &["bulk", &target, &secs, &CPU.to_string()])
    })?;
    let [bytes, bulk_ns] = numbers(&lines, "bulk")?;
    let bulk_gbps = bytes as f64 * 8.0 / bulk_ns as f64;
    Ok(Point {
        system: p.system.key(),
        round,
        cps,
        failed,
        busy,
        cpu_us_per_connection: busy * elapsed.as_secs_f64() * 1e6 / done.max(1) as f64,
        bulk_gbps,
        bulk_gbps_per_core: bulk_gbps / bulk_busy.max(0.01),
    })
}

/// Runs `f` and says how busy [`CPU`] was meanwhile, of `ceiling`.
pub fn on_cpu<T>(ceiling: f64, f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let before = cpu::times(CPU)?;
    let out = f()?;
    Ok((out, cpu::busy_share(before, cpu::times(CPU)?) / ceiling))
}

/// The numbers of the client's line `WORD N N ...`.
pub fn numbers<const N: usize>(lines: &[String], word: &str) -> Result<[u64; N]> {
    let Some(line) = lines.iter().find_map(|l| l.strip_prefix(word)) else {
        bail!("svclb-lab-client {word} said {lines:?}");
    };
    let values: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("svclb-lab-client {word} said {line:?}"))?;
    values
        .try_into()
        .map_err(|v| anyhow::anyhow!("svclb-lab-client {word}: {v:?}, expected {N} numbers"))
}

/// The best of a system's rounds of one figure (the highest, or with `lowest` the lowest):
/// noise on a shared machine only ever takes speed away.
fn best(r: &Results, system: System, lowest: bool, figure: impl Fn(&Point) -> f64) -> Option<f64> {
    let values = r
        .points
        .iter()
        .filter(|p| p.system == system.key())
        .map(figure);
    best_of(values, lowest)
}

/// The highest of `values`, or with `lowest` the lowest.
pub fn best_of(values: impl Iterator<Item = f64>, lowest: bool) -> Option<f64> {
    if lowest {
        values.min_by(f64::total_cmp)
    } else {
        values.max_by(f64::total_cmp)
    }
}

/// One ratio of best rounds from this run, against its target.
#[derive(Serialize)]
pub struct Ratio {
    pub name: String,
    pub value: Option<f64>,
    pub target: &'static str,
    pub met: Option<bool>,
}

pub fn ratios(r: &Results) -> Vec<Ratio> {
    let cps = |s| best(r, s, false, |p| p.cps);
    let cpu = |s| best(r, s, true, |p| p.cpu_us_per_connection);
    let bulk = |s| best(r, s, false, |p| p.bulk_gbps_per_core);
    let over = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
    let ratio = |name: &str, value: Option<f64>, target: &'static str, floor: Option<f64>| Ratio {
        name: name.to_owned(),
        value,
        target,
        met: floor.and_then(|f| value.map(|v| v >= f)),
    };
    vec![
        ratio(
            "socket-LB / direct, connections per second",
            over(cps(System::SvclbSocket), cps(System::Direct)),
            ">= 0.95x",
            Some(0.95),
        ),
        ratio(
            "direct / socket-LB, CPU per connection",
            over(cpu(System::Direct), cpu(System::SvclbSocket)),
            ">= 0.95x",
            Some(0.95),
        ),
        ratio(
            "svclb TC / nftables, connections per second",
            over(cps(System::Svclb), cps(System::Nftables)),
            ">= 1.2x",
            Some(1.2),
        ),
        ratio(
            "svclb TC / iptables, connections per second",
            over(cps(System::Svclb), cps(System::Iptables)),
            "(none)",
            None,
        ),
        ratio(
            "socket-LB / direct, bulk per core",
            over(bulk(System::SvclbSocket), bulk(System::Direct)),
            "(none)",
            None,
        ),
        ratio(
            "svclb TC / nftables, bulk per core",
            over(bulk(System::Svclb), bulk(System::Nftables)),
            "(none)",
            None,
        ),
    ]
}

pub fn render(r: &Results, out: &mut String) {
    let _ = writeln!(out, "## East-west at saturation: connections per second\n");
    let _ = writeln!(
        out,
        "A pod connects to a cluster IP ({} services programmed) and its server pod answers, the\n\
         client, the server and the kernel's work for both pinned to one CPU: {} connections in\n\
         flight, each connect, one request, one answer, close (a reset, so no TIME_WAIT), for\n\
         {} s; then one TCP stream for {} s. CPU per connection is the CPU's busy time over the\n\
         connections made (busy shares are of what a thread spinning on it reads: {:.0}% here).\n\
         The best of {} round(s) of each figure, systems interleaved (noise on a shared machine\n\
         only takes speed away; single rounds here vary by up to a fifth).\n",
        r.services,
        r.in_flight,
        r.seconds_per_point,
        r.seconds_per_point,
        r.cpu_ceiling * 100.0,
        r.rounds
    );
    let _ = writeln!(
        out,
        "| system | connections/s | CPU µs per connection | failed | bulk Gbit/s per core |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    for system in System::ALL {
        let failed: u64 = r
            .points
            .iter()
            .filter(|p| p.system == system.key())
            .map(|p| p.failed)
            .sum();
        let cell =
            |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {failed} | {} |",
            system.name(),
            cell(best(r, system, false, |p| p.cps), 0),
            cell(best(r, system, true, |p| p.cpu_us_per_connection), 1),
            cell(best(r, system, false, |p| p.bulk_gbps_per_core), 2),
        );
    }
    render_ratios(&ratios(r), out);
    if let Some(ns) = r.connect4_ns {
        let _ = writeln!(
            out,
            "| socket-LB's connect4 hook, ns per connect | {ns:.0} | <= 400 | {} |",
            verdict(Some(ns <= 400.0))
        );
    }
    let _ = writeln!(out);
}

/// The table of `ratios` (a caller may add rows after it).
pub fn render_ratios(ratios: &[Ratio], out: &mut String) {
    let _ = writeln!(out, "\n| ratio | value | target | |\n|---|---:|---|---|");
    for ratio in ratios {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            ratio.name,
            ratio.value.map_or("-".into(), |v| format!("{v:.2}x")),
            ratio.target,
            verdict(ratio.met)
        );
    }
}

pub fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "",
    }
}
