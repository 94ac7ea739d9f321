//! The conntrack sweep program (`svclb_sweep`), run as the agent runs it, on entries seeded
//! in a loaded datapath's map: it deletes flows that are over, both directions, and nothing
//! that a new or revived flow holds by the time it runs, whatever the agent's walk saw. The
//! clock is the datapath's (CLOCK_MONOTONIC), so entries are seeded as idle for a chosen time.

use std::net::Ipv4Addr;

use crate::common::datapath::Datapath;
use anyhow::Result;
use aya::maps::{HashMap, MapData};
use svclb::{kernel::sweep::monotonic_ns, plan::Protocol};
use svclb_common::{
    CT_DIR_FORWARD, CT_DIR_REPLY, CtEntry, CtKey, CtRoute, SweepItem,
    addr::{FAMILY_V4, IPPROTO_TCP, IPPROTO_UDP, v4},
    conntrack::{
        CT_F_CLOSING, CT_F_REDIRECT, CT_F_SNAT, SWEEP_BATCH, SWEEP_ENTRY, SWEEP_IF_ENDED, partner,
    },
};
use svclb_tests::{
    packet::{PacketSpec, TCP_ACK, TCP_SYN},
    require_root,
};

const S: u64 = 1_000_000_000;
const CLIENT: [u8; 4] = [172, 31, 0, 100];
const NODE: [u8; 4] = [172, 31, 0, 11];
const FRONTEND: [u8; 4] = [10, 96, 0, 10];
const BACKEND: [u8; 4] = [10, 244, 2, 11];

type Ct = HashMap<MapData, CtKey, CtEntry>;

/// A SNATed flow's two entries: client:`cport` -> node:30080, to the backend through SNAT
/// port `snat_port`.
fn snat_flow(proto: u8, cport: u16, snat_port: u16, created_ns: u64) -> [(CtKey, CtEntry); 2] {
    let forward_key = CtKey {
        saddr: v4(CLIENT),
        daddr: v4(NODE),
        sport_be: cport.to_be(),
        dport_be: 30_080u16.to_be(),
        proto,
        family: FAMILY_V4,
        dir: CT_DIR_FORWARD,
        _pad: 0,
    };
    let forward = CtEntry {
        nat_addr: v4(BACKEND),
        nat_port_be: 8080u16.to_be(),
        flags: CT_F_SNAT | CT_F_REDIRECT,
        backend_id: 1,
        svc_id: 1,
        snat_port_be: snat_port.to_be(),
        _pad: 0,
        snat_addr: v4(NODE),
        created_ns,
        last_seen_ns: created_ns,
        route: CtRoute::NONE,
    };
    let reply_key = partner(&forward_key, &forward);
    let reply = CtEntry {
        nat_addr: v4(NODE),
        nat_port_be: 30_080u16.to_be(),
        snat_port_be: cport.to_be(),
        snat_addr: v4(CLIENT),
        ..forward
    };
    assert_eq!(partner(&reply_key, &reply), forward_key);
    [(forward_key, forward), (reply_key, reply)]
}

/// `entry` last seen `idle_s` seconds before `now`, closing or not.
fn seen(entry: CtEntry, now: u64, idle_s: u64, closing: bool) -> CtEntry {
    CtEntry {
        last_seen_ns: now - idle_s * S,
        flags: if closing {
            entry.flags | CT_F_CLOSING
        } else {
            entry.flags & !CT_F_CLOSING
        },
        ..entry
    }
}

fn item(key: CtKey, entry: &CtEntry, mode: u32) -> SweepItem {
    SweepItem {
        key,
        created_ns: entry.created_ns,
        mode,
        _pad: 0,
    }
}

fn put(ct: &mut Ct, entries: &[(CtKey, CtEntry)]) -> Result<()> {
    for (key, entry) in entries {
        ct.insert(key, entry, 0)?;
    }
    Ok(())
}

fn has(ct: &Ct, key: &CtKey) -> bool {
    ct.get(key, 0).is_ok()
}

#[test]
#[ignore = "needs root"]
fn sweep_deletes_ended_flows_and_spares_the_keys_new_flows_took() -> Result<()> {
    require_root()?;
    let mut dp = Datapath::load("sweep")?;
    let sweeper = dp.sweeper()?;
    let mut ct = dp.conntrack()?;
    let now = monotonic_ns();
    let created = now - 100 * S;

    // Closed both ways 11 s ago: both entries go.
    let [(fk, f), (rk, r)] = snat_flow(IPPROTO_TCP, 40_001, 61_001, created);
    put(
        &mut ct,
        &[(fk, seen(f, now, 11, true)), (rk, seen(r, now, 11, true))],
    )?;
    assert_eq!(sweeper.run(&[item(fk, &f, SWEEP_IF_ENDED)])?, 2);
    assert!(!has(&ct, &fk) && !has(&ct, &rk), "a closed flow stays");

    // Closed 5 s ago: not yet.
    let [(fk, f), (rk, r)] = snat_flow(IPPROTO_TCP, 40_002, 61_002, created);
    put(
        &mut ct,
        &[(fk, seen(f, now, 5, true)), (rk, seen(r, now, 5, true))],
    )?;
    assert_eq!(sweeper.run(&[item(fk, &f, SWEEP_IF_ENDED)])?, 0);
    assert!(has(&ct, &fk) && has(&ct, &rk), "a flow closed 5 s ago went");

    // An RST seen one way 11 s ago, the other way open and quiet since: both go.
    let [(fk, f), (rk, r)] = snat_flow(IPPROTO_TCP, 40_003, 61_003, created);
    put(
        &mut ct,
        &[(fk, seen(f, now, 11, true)), (rk, seen(r, now, 12, false))],
    )?;
    assert_eq!(sweeper.run(&[item(fk, &f, SWEEP_IF_ENDED)])?, 2);
    assert!(!has(&ct, &fk) && !has(&ct, &rk), "a reset flow stays");

    // The race the program is there for: the agent's walk saw port 61_004's flow closed, but
    // the datapath gave the port to a new flow since. The new flow stays, both ways.
    let [(old_fk, old_f), (rk, old_r)] = snat_flow(IPPROTO_TCP, 40_004, 61_004, created);
    let [(new_fk, new_f), (new_rk, new_r)] = snat_flow(IPPROTO_TCP, 40_104, 61_004, now - S);
    assert_eq!(rk, new_rk, "both flows hold the same SNAT port");
    put(&mut ct, &[(new_fk, new_f), (new_rk, new_r)])?;
    let walked = [
        item(old_fk, &seen(old_f, now, 11, true), SWEEP_IF_ENDED),
        item(rk, &seen(old_r, now, 11, true), SWEEP_IF_ENDED),
    ];
    assert_eq!(sweeper.run(&walked)?, 0);
    assert!(
        has(&ct, &new_fk) && has(&ct, &new_rk),
        "the new flow was cut off"
    );
    // ...and a new flow that reused the client's tuple (another SNAT port) the same.
    let [(fk, f), (rk, r)] = snat_flow(IPPROTO_TCP, 40_005, 61_005, created);
    let [(_, reused_f), _] = snat_flow(IPPROTO_TCP, 40_005, 61_105, now - S);
    put(&mut ct, &[(fk, reused_f), (rk, seen(r, now, 11, true))])?;
    // The old reply entry goes (its flow is over: its partner key holds another flow's
    // entry); the new forward entry stays.
    assert_eq!(
        sweeper.run(&[
            item(fk, &seen(f, now, 11, true), SWEEP_IF_ENDED),
            item(rk, &r, SWEEP_IF_ENDED)
        ])?,
        1
    );
    assert!(has(&ct, &fk) && !has(&ct, &rk));

    // A tuple revived by a new connection one way (its SYN) while the other way still shows
    // the old close: kept.
    let [(fk, f), (rk, r)] = snat_flow(IPPROTO_TCP, 40_006, 61_006, created);
    put(
        &mut ct,
        &[(fk, seen(f, now, 0, false)), (rk, seen(r, now, 11, true))],
    )?;
    assert_eq!(sweeper.run(&[item(rk, &r, SWEEP_IF_ENDED)])?, 0);
    assert!(has(&ct, &fk) && has(&ct, &rk), "a revived flow went");

    // A UDP flow the backend still streams on (the client quiet for 61 s): kept; quiet both
    // ways: gone.
    let [(fk, f), (rk, r)] = snat_flow(IPPROTO_UDP, 40_007, 61_007, created);
    put(
        &mut ct,
        &[(fk, seen(f, now, 61, false)), (rk, seen(r, now, 1, false))],
    )?;
    assert_eq!(sweeper.run(&[item(fk, &f, SWEEP_IF_ENDED)])?, 0);
    put(&mut ct, &[(rk, seen(r, now, 61, false))])?;
    assert_eq!(sweeper.run(&[item(fk, &f, SWEEP_IF_ENDED)])?, 2);

    // A forward entry asked for alone (its backend left): it goes, open or not, and its
    // reply entry stays; not if another flow holds the key by then.
    let [(fk, f), (rk, r)] = snat_flow(IPPROTO_UDP, 40_008, 61_008, created);
    put(&mut ct, &[(fk, f), (rk, r)])?;
    let [(_, other_f), _] = snat_flow(IPPROTO_UDP, 40_008, 61_108, now - S);
    let [(fk9, f9), (rk9, r9)] = snat_flow(IPPROTO_UDP, 40_009, 61_009, created);
    put(&mut ct, &[(fk9, other_f), (rk9, r9)])?;
    let alone = [item(fk, &f, SWEEP_ENTRY), item(fk9, &f9, SWEEP_ENTRY)];
    assert_eq!(sweeper.run(&alone)?, 1);
    assert!(!has(&ct, &fk) && has(&ct, &rk) && has(&ct, &fk9));

    Ok(())
}

/// The agent's own walk, over more flows than one run of the program takes: every closed
/// flow goes, both entries, and every open one stays.
#[test]
#[ignore = "needs root"]
fn the_agents_sweep_goes_through_every_batch() -> Result<()> {
    require_root()?;
    let mut dp = Datapath::load("sweep-walk")?;
    let sweeper = dp.sweeper()?;
    let mut ct = dp.conntrack()?;
    let now = monotonic_ns();
    let flows = 3 * SWEEP_BATCH as u16 + 7;
    let closed = |i: u16| !i.is_multiple_of(3);
    let flow = |i: u16| snat_flow(IPPROTO_TCP, 41_000 + i, 62_000 + i, now - 100 * S);
    for i in 0..flows {
        let [(fk, f), (rk, r)] = flow(i);
        put(
            &mut ct,
            &[
                (fk, seen(f, now, 11, closed(i))),
                (rk, seen(r, now, 11, closed(i))),
            ],
        )?;
    }
    let swept = dp.maps_mut().sweep(&sweeper, monotonic_ns())?.removed;
    let closed_flows = (0..flows).filter(|&i| closed(i)).count();
    assert_eq!(swept, 2 * closed_flows);
    assert_eq!(
        ct.keys().filter(Result::is_ok).count(),
        2 * (usize::from(flows) - closed_flows)
    );
    for i in 0..flows {
        let [(fk, _), (rk, _)] = flow(i);
        assert_eq!(has(&ct, &fk), !closed(i), "flow {i}: forward entry");
        assert_eq!(has(&ct, &rk), !closed(i), "flow {i}: reply entry");
    }
    Ok(())
}

/// The TC program revives a closed tuple both ways, a new connection's SYN on the forward
/// entry and its SYN-ACK on the reply entry, so the sweep keeps it.
#[test]
#[ignore = "needs root"]
fn a_new_connection_on_a_closed_tuple_revives_it_both_ways() -> Result<()> {
    require_root()?;
    let client = (Ipv4Addr::from(CLIENT), 40_000);
    let vip = (Ipv4Addr::from(FRONTEND), 80);
    let backend = (Ipv4Addr::from(BACKEND), 8080);
    let mut dp = Datapath::load("revive")?;
    dp.program_services(&[(vip.0, vip.1, Protocol::Tcp, &[backend])]);
    let sweeper = dp.sweeper()?;
    let mut ct = dp.conntrack()?;
    let syn = PacketSpec::tcp(client, vip, TCP_SYN).build();
    let syn_ack = PacketSpec::tcp(backend, client, TCP_SYN | TCP_ACK).build();
    dp.run(&syn)?;
    let entries: Vec<(CtKey, CtEntry)> = ct.iter().filter_map(Result::ok).collect();
    assert_eq!(entries.len(), 2, "a SYN makes both entries");
    // The connection closed both ways 11 s ago.
    let now = monotonic_ns();
    for (key, entry) in &entries {
        ct.insert(key, &seen(*entry, now, 11, true), 0)?;
    }
    let reply_key = entries
        .iter()
        .find(|(k, _)| k.dir == CT_DIR_REPLY)
        .unwrap()
        .0;
    // A new connection on the same tuple: its SYN revives the forward entry, and a sweep
    // in between keeps both.
    dp.run(&syn)?;
    let swept = dp.maps_mut().sweep(&sweeper, monotonic_ns())?.removed;
    assert_eq!(
        swept, 0,
        "a sweep between the SYN and the SYN-ACK cut the flow"
    );
    dp.run(&syn_ack)?;
    for (key, _) in &entries {
        let entry = ct.get(key, 0)?;
        assert_eq!(
            entry.flags & CT_F_CLOSING,
            0,
            "dir {} still closing",
            key.dir
        );
    }
    assert!(has(&ct, &reply_key));
    assert_eq!(dp.maps_mut().sweep(&sweeper, monotonic_ns())?.removed, 0);
    Ok(())
}
