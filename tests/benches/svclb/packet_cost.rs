//! Per-packet cost of the TC program by BPF_PROG_TEST_RUN, against the number of services and
//! of backends per service.
//!
//! The kernel times the program itself (no syscall in the figure). A program that rewrites its
//! packet in place would see its own output on a second repeat, so every DNAT case runs one
//! repeat per call on a fresh copy and averages many calls; traffic the program leaves
//! untouched runs many repeats per call.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Result, ensure};
use svclb::{loader::MapSizes, plan::Protocol};
use svclb_tests::packet::{PacketSpec, TCP_ACK, TCP_SYN};

use crate::{Settings, common::datapath::Datapath};

const TC_ACT_OK: u32 = 0;

pub struct Row {
    pub services: usize,
    pub backends: usize,
    /// ns per packet: new flow (SYN, pick + conntrack create + DNAT), tracked flow (conntrack
    /// hit + DNAT), reply (reverse NAT), other traffic (two lookups, untouched).
    pub new_flow: f64,
    pub tracked: f64,
    pub reply: f64,
    pub other: f64,
    /// Other traffic, one run per call like the DNAT cases: the fixed cost of timing a single
    /// run, to read the DNAT columns against.
    pub other_single: f64,
}

fn vip(s: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + s as u32)
}

/// Backend addresses come from a pool shared by all services, as real pods back several.
fn backend(s: usize, b: usize) -> (Ipv4Addr, u16) {
    let k = ((s * 7919 + b) % 60_000) as u32;
    (
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 1)) + k),
        8080,
    )
}

fn average(total: Duration, runs: u32) -> f64 {
    total.as_nanos() as f64 / f64::from(runs)
}

fn measure(services: usize, backends: usize, calls: u32) -> Result<Row> {
    let sizes = MapSizes {
        services: 131_072,
        backends: 65_536,
        slots: (services * backends + 1024).max(4096) as u32,
        conntrack: 262_144,
        ..MapSizes::default()
    };
    let mut dp = Datapath::load_with(&format!("bench{services}x{backends}"), sizes)?;
    let pools: Vec<Vec<(Ipv4Addr, u16)>> = (0..services)
        .map(|s| (0..backends).map(|b| backend(s, b)).collect())
        .collect();
    let frontends: Vec<_> = (0..services)
        .map(|s| (vip(s), 80, Protocol::Tcp, pools[s].as_slice()))
        .collect();
    dp.program_services(&frontends);

    // The service under test is the last one programmed (as the kube-proxy comparisons put
    // their target last in the chain); for hash lookups it makes no difference.
    let target = vip(services - 1);
    let client = Ipv4Addr::new(10, 244, 1, 11);

    let other = PacketSpec::tcp(
        (client, 40_001),
        (Ipv4Addr::new(10, 244, 2, 50), 8080),
        TCP_ACK,
    )
    .build();
    // Warm caches and the CPU before timing anything.
    for _ in 0..calls / 10 {
        dp.run_repeat(&other, 1)?;
    }

    let mut new_flow = Duration::ZERO;
    for i in 0..calls {
        let sport = 1024 + (i % 60_000) as u16;
        let syn = PacketSpec::tcp((client, sport), (target, 80), TCP_SYN).build();
        let (verdict, _, took) = dp.run_repeat(&syn, 1)?;
        ensure!(verdict == TC_ACT_OK, "new flow verdict {verdict}");
        new_flow += took;
    }

    let syn = PacketSpec::tcp((client, 40_000), (target, 80), TCP_SYN).build();
    let (_, translated, _) = dp.run_repeat(&syn, 1)?;
    let backend_addr = Ipv4Addr::new(
        translated[30],
        translated[31],
        translated[32],
        translated[33],
    );
    let ack = PacketSpec::tcp((client, 40_000), (target, 80), TCP_ACK).build();
    let reply = PacketSpec::tcp((backend_addr, 8080), (client, 40_000), TCP_ACK).build();
    let mut tracked = Duration::ZERO;
    let mut replied = Duration::ZERO;
    for _ in 0..calls {
        tracked += dp.run_repeat(&ack, 1)?.2;
        replied += dp.run_repeat(&reply, 1)?.2;
    }

    let mut single = Duration::ZERO;
    for _ in 0..calls {
        single += dp.run_repeat(&other, 1)?.2;
    }
    let repeat = 1000;
    let mut untouched = Duration::ZERO;
    let other_calls = (calls / 100).max(10);
    for _ in 0..other_calls {
        let (verdict, out, took) = dp.run_repeat(&other, repeat)?;
        ensure!(
            verdict == TC_ACT_OK && out == other,
            "other traffic must pass untouched"
        );
        untouched += took;
    }
    Ok(Row {
        services,
        backends,
        new_flow: average(new_flow, calls),
        tracked: average(tracked, calls),
        reply: average(replied, calls),
        other: average(untouched, other_calls),
        other_single: average(single, calls),
    })
}

pub fn run(settings: &Settings) -> Result<Vec<Row>> {
    let calls = if settings.quick { 3_000 } else { 20_000 };
    let mut cases = vec![(1, 10), (1_000, 10), (10_000, 10)];
    if !settings.quick {
        cases.push((100_000, 10));
    }
    cases.extend([(1_000, 1), (1_000, 100)]);
    let mut rows = Vec::new();
    for (services, backends) in cases {
        let row = measure(services, backends, calls)?;
        eprintln!(
            "  {services:>6} services x {backends:>3} backends: new {:.0} ns, tracked {:.0} ns, reply {:.0} ns, other {:.0} ns ({:.0} ns one run per call)",
            row.new_flow, row.tracked, row.reply, row.other, row.other_single
        );
        rows.push(row);
    }
    Ok(rows)
}
