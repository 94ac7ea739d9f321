//! The LRU flow maps filled past their size (BPF_PROG_TEST_RUN, small capacities): a full
//! LRU map evicts its least recently used entries silently, so the datapath keeps the
//! books (see `svclb_common::events`) and the agent counts what each map lost. Flows in use
//! survive a flood of new ones.

use std::net::{IpAddr, Ipv4Addr};

use crate::common::{datapath::Datapath, fixture::TC_ACT_OK};
use anyhow::{Result, ensure};
use svclb::{
    entries::Capacity,
    kernel::maps::LruFill,
    plan::{Frontend, FrontendKey, FrontendKind, Plan, PlanBackend, Protocol, Scope},
};
use svclb_common::{
    CT_DIR_FORWARD, CtKey,
    addr::{FAMILY_V4, IPPROTO_UDP, v4},
    limits::{MAP_AFFINITY, MAP_CT, MAP_FRAGS, MAP_SOCK_STATS, MAP_STATS},
};
use svclb_tests::{
    packet::{PacketSpec, TCP_SYN, fragment4},
    require_root,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const STICKY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const BACKENDS: [(Ipv4Addr, u16); 2] = [
    (Ipv4Addr::new(10, 244, 2, 11), 5353),
    (Ipv4Addr::new(10, 244, 2, 12), 5353),
];
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);

const SIZES: Capacity = Capacity {
    conntrack: 1_024,
    affinity: 256,
    fragments: 256,
    ..Capacity::DEFAULT
};

/// A UDP frontend at `VIP:53` and a TCP one with ClientIP affinity at `STICKY_VIP:80`.
fn plan() -> Plan {
    let backends = |port: Option<u16>| {
        BACKENDS
            .iter()
            .map(|(a, p)| PlanBackend::remote(IpAddr::V4(*a), port.unwrap_or(*p)))
            .collect()
    };
    let mut plan = Plan::default();
    plan.frontends.insert(
        FrontendKey::new(IpAddr::V4(VIP), 53, Protocol::Udp),
        Frontend::new(
            "default/dns",
            FrontendKind::ClusterIP,
            Scope::Internal,
            backends(None),
        ),
    );
    plan.frontends.insert(
        FrontendKey::new(IpAddr::V4(STICKY_VIP), 80, Protocol::Tcp),
        Frontend {
            affinity_timeout_seconds: 10_800,
            ..Frontend::new(
                "default/sticky",
                FrontendKind::ClusterIP,
                Scope::Internal,
                backends(Some(8080)),
            )
        },
    );
    plan
}

fn fill(dp: &mut Datapath, map: &str) -> Result<LruFill> {
    let entries = dp.maps_mut().conntrack_len();
    let fills = dp.maps_mut().lru_fills(entries);
    fills
        .into_iter()
        .find(|f| f.map == map)
        .ok_or_else(|| anyhow::anyhow!("no fill of {map}"))
}

/// The books balance: every entry made is held, deleted or evicted, and a map filled `n`
/// times past its size lost at least the excess.
fn check(fill: &LruFill, inserted: u64) -> Result<()> {
    eprintln!("{fill:?}: {} evicted", fill.evicted());
    ensure!(fill.inserted == inserted, "{fill:?}: {inserted} inserted");
    ensure!(fill.failed == 0, "{fill:?}: no insert fails");
    ensure!(
        fill.entries as u64 <= u64::from(fill.capacity),
        "{fill:?}: more entries than room"
    );
    ensure!(
        fill.evicted() + fill.deleted + fill.entries as u64 == inserted,
        "{fill:?}: held, deleted and evicted add up to what went in"
    );
    ensure!(
        fill.evicted() >= inserted - u64::from(fill.capacity),
        "{fill:?}: lost at least what did not fit"
    );
    Ok(())
}

/// 3,000 new UDP flows (6,000 entries) through a conntrack of 1,024: the evictions are
/// counted, and a flow that keeps sending keeps its entries (and its backend) throughout.
#[test]
#[ignore = "needs root"]
fn a_full_conntrack_counts_its_evictions_and_keeps_busy_flows() -> Result<()> {
    require_root()?;
    let mut dp = Datapath::load_with("full-ct", SIZES)?;
    dp.program(&plan());
    let ct = dp.conntrack()?;
    let busy = PacketSpec::udp((CLIENT, 7), (VIP, 53)).build();
    let (verdict, first) = dp.run(&busy)?;
    assert_eq!(verdict, TC_ACT_OK);
    for i in 0..3_000u16 {
        let (verdict, _) = dp.run(&PacketSpec::udp((CLIENT, 10_000 + i), (VIP, 53)).build())?;
        assert_eq!(verdict, TC_ACT_OK);
        if i % 50 == 0 {
            let (_, again) = dp.run(&busy)?;
            assert_eq!(again, first, "the busy flow kept its backend at flow {i}");
        }
    }
    let busy_key = CtKey {
        saddr: v4(CLIENT.octets()),
        daddr: v4(VIP.octets()),
        sport_be: 7u16.to_be(),
        dport_be: 53u16.to_be(),
        proto: IPPROTO_UDP,
        family: FAMILY_V4,
        dir: CT_DIR_FORWARD,
        _pad: 0,
    };
    ensure!(
        ct.get(&busy_key, 0).is_ok(),
        "the busy flow's entry was evicted"
    );
    check(&fill(&mut dp, MAP_CT)?, 2 * 3_001)
}

/// 1,000 clients of a ClientIP-affinity frontend through an affinity map of 256, and 1,000
/// fragmented datagrams through a fragments map of 256: both count what they lost.
#[test]
#[ignore = "needs root"]
fn full_affinity_and_fragment_maps_count_their_evictions() -> Result<()> {
    require_root()?;
    let mut dp = Datapath::load_with("full-aff", SIZES)?;
    dp.program(&plan());
    for i in 0..1_000u16 {
        let [a, b] = i.to_be_bytes();
        let client = (Ipv4Addr::new(10, 245, a, b), 40_000);
        let (verdict, _) = dp.run(&PacketSpec::tcp(client, (STICKY_VIP, 80), TCP_SYN).build())?;
        assert_eq!(verdict, TC_ACT_OK);
    }
    check(&fill(&mut dp, MAP_AFFINITY)?, 1_000)?;

    let request = PacketSpec {
        payload: vec![7; 2_000],
        ..PacketSpec::udp((CLIENT, 9), (VIP, 53))
    };
    for id in 0..1_000u16 {
        let first = &fragment4(&request.build(), 1_480, id)[0];
        let (verdict, _) = dp.run(first)?;
        assert_eq!(verdict, TC_ACT_OK);
    }
    check(&fill(&mut dp, MAP_FRAGS)?, 1_000)
}

/// The chart's default memory limit (`svclb.memoryLimit`) covers what the kernel charges the
/// maps: at the capacities the chart is given, their charge is within the limit less the
/// agent's own share, and not far below it; and each programmed frontend's counters (not
/// preallocated) cost no more than the formula's bytes per CPU.
#[test]
#[ignore = "needs root"]
fn the_charts_memory_limit_covers_what_the_maps_cost() -> Result<()> {
    require_root()?;
    const MIB: u64 = 1 << 20;
    let sizes = Capacity {
        services: 8_192,
        backends: 8_192,
        slots: 32_768,
        conntrack: 65_536,
        ..Capacity::DEFAULT
    };
    let mut dp = Datapath::load_with("memory", sizes)?;
    let charged: u64 = dp.memlock()?.values().sum();
    let rendered = crate::helm_chart::render(
        "mapSizes: {services: 8192, backends: 8192, slots: 32768, conntrack: 65536}\n\
         memorySizing: {frontends: 0, maglevFrontends: 0, cpus: 1}\n",
    )?;
    let limit = crate::helm_chart::memory_limit(&rendered)?;
    // The agent's own share with no frontends: 48 MiB.
    let budget = (limit - 48) * MIB;
    ensure!(
        charged <= budget && charged >= budget * 8 / 10,
        "maps charged {charged} bytes; the chart's limit leaves them {budget}"
    );

    let counters = |dp: &Datapath| -> Result<u64> {
        let memlock = dp.memlock()?;
        Ok(memlock[MAP_STATS] + memlock[MAP_SOCK_STATS])
    };
    let before = counters(&dp)?;
    let frontends: Vec<_> = (0..200u32)
        .map(|i| {
            let addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 97, 0, 0)) + i);
            (addr, 80, Protocol::Tcp, &BACKENDS[..1])
        })
        .collect();
    dp.program_services(&frontends);
    let per_frontend = (counters(&dp)? - before) / 200;
    let cpus = aya::util::nr_cpus().map_err(|(_, err)| err)?.get() as u64;
    ensure!(
        per_frontend >= 56 * cpus && per_frontend <= 176 + 56 * cpus,
        "{per_frontend} bytes of counters per frontend on {cpus} CPUs"
    );
    Ok(())
}
