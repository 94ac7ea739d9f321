//! Per-packet cost of the TC program by BPF_PROG_TEST_RUN, against the number of services and
//! of backends per service.
//!
//! The kernel times the program itself (no syscall in the figure). A program that rewrites its
//! packet in place would see its own output on a second repeat, so every DNAT case runs one
//! repeat per call on a fresh copy and averages many calls; traffic the program leaves
//! untouched runs many repeats per call.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use anyhow::{Result, ensure};
use svclb::{entries::Capacity, plan::Protocol};
use svclb_tests::{
    packet::{PacketSpec, TCP_ACK, TCP_SYN},
    packet6::Packet6,
};

use crate::{Settings, common::datapath::Datapath};

const TC_ACT_OK: u32 = 0;

pub struct Row {
    /// IPv6 frontends, backends and clients instead of IPv4 ones.
    pub ipv6: bool,
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

fn vip(s: usize, ipv6: bool) -> IpAddr {
    if ipv6 {
        Ipv6Addr::from(u128::from(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0)) + s as u128).into()
    } else {
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + s as u32).into()
    }
}

/// Backend addresses come from a pool shared by all services, as real pods back several.
fn backend(s: usize, b: usize, ipv6: bool) -> (IpAddr, u16) {
    let k = (s * 7919 + b) % 60_000;
    let addr: IpAddr = if ipv6 {
        Ipv6Addr::from(u128::from(Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 1)) + k as u128)
            .into()
    } else {
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 1)) + k as u32).into()
    };
    (addr, 8080)
}

/// A TCP frame between two endpoints of one family.
fn tcp(src: (IpAddr, u16), dst: (IpAddr, u16), flags: u8) -> Vec<u8> {
    match (src.0, dst.0) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketSpec::tcp((s, src.1), (d, dst.1), flags).build(),
        (IpAddr::V6(s), IpAddr::V6(d)) => Packet6::tcp((s, src.1), (d, dst.1), flags).build(),
        _ => unreachable!("one family per frame"),
    }
}

/// The destination address of a translated frame.
fn destination(frame: &[u8], ipv6: bool) -> IpAddr {
    if ipv6 {
        Ipv6Addr::from(<[u8; 16]>::try_from(&frame[38..54]).expect("16 bytes")).into()
    } else {
        Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33]).into()
    }
}

fn average(total: Duration, runs: u32) -> f64 {
    total.as_nanos() as f64 / f64::from(runs)
}

fn measure(services: usize, backends: usize, ipv6: bool, calls: u32) -> Result<Row> {
    let sizes = Capacity {
        services: 131_072,
        backends: 65_536,
        slots: (services * backends + 1024).max(4096),
        conntrack: 262_144,
        ..Capacity::DEFAULT
    };
    let mut dp = Datapath::load_with(&format!("bench{services}x{backends}v{ipv6}"), sizes)?;
    let frontends: Vec<_> = (0..services)
        .map(|s| {
            let pool = (0..backends).map(|b| backend(s, b, ipv6)).collect();
            (vip(s, ipv6), 80, Protocol::Tcp, pool)
        })
        .collect();
    dp.program_cluster_ips(&frontends);

    // The service under test is the last one programmed (as the kube-proxy comparisons put
    // their target last in the chain); for hash lookups it makes no difference.
    let target = vip(services - 1, ipv6);
    let (client, elsewhere): (IpAddr, IpAddr) = if ipv6 {
        (
            Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 0x11).into(),
            Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 0x50).into(),
        )
    } else {
        (
            Ipv4Addr::new(10, 244, 1, 11).into(),
            Ipv4Addr::new(10, 244, 2, 50).into(),
        )
    };

    let other = tcp((client, 40_001), (elsewhere, 8080), TCP_ACK);
    // Warm caches and the CPU before timing anything.
    for _ in 0..calls / 10 {
        dp.run_repeat(&other, 1)?;
    }

    let mut new_flow = Duration::ZERO;
    for i in 0..calls {
        let sport = 1024 + (i % 60_000) as u16;
        let syn = tcp((client, sport), (target, 80), TCP_SYN);
        let (verdict, _, took) = dp.run_repeat(&syn, 1)?;
        ensure!(verdict == TC_ACT_OK, "new flow verdict {verdict}");
        new_flow += took;
    }

    let syn = tcp((client, 40_000), (target, 80), TCP_SYN);
    let (_, translated, _) = dp.run_repeat(&syn, 1)?;
    let backend_addr = destination(&translated, ipv6);
    let ack = tcp((client, 40_000), (target, 80), TCP_ACK);
    let reply = tcp((backend_addr, 8080), (client, 40_000), TCP_ACK);
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
        ipv6,
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
    let mut cases: Vec<(usize, usize, bool)> =
        cases.into_iter().map(|(s, b)| (s, b, false)).collect();
    // IPv6 right after the IPv4 row of its size: the machine's speed drifts over a run, and
    // the ratio is read between neighbours.
    cases.insert(2, (1_000, 10, true));
    let mut rows = Vec::new();
    for (services, backends, ipv6) in cases {
        let row = measure(services, backends, ipv6, calls)?;
        let family = if ipv6 { "IPv6" } else { "IPv4" };
        eprintln!(
            "  {family} {services:>6} services x {backends:>3} backends: new {:.0} ns, tracked {:.0} ns, reply {:.0} ns, other {:.0} ns ({:.0} ns one run per call)",
            row.new_flow, row.tracked, row.reply, row.other, row.other_single
        );
        rows.push(row);
    }
    Ok(rows)
}
