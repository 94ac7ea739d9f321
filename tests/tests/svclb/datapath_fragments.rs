//! Fragmented datagrams through the real TC program (BPF_PROG_TEST_RUN), IPv4 and IPv6: a
//! datagram too big for one packet is built whole, with its checksum, and fragmented as a
//! sender would; so is the datagram the translation should give. Each fragment the program
//! puts out must equal the fragment of the expected datagram byte for byte: the first
//! fragment's L4 checksum (which covers the whole datagram) proves the incremental update,
//! and the later fragments, which have no L4 header, get the first one's addresses (IPv4:
//! with a valid header checksum) and nothing else.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::common::datapath::Datapath;
use anyhow::Result;
use svclb::plan::Protocol;
use svclb_tests::{
    packet::{PacketSpec, fragment4},
    packet6::{Packet6, fragment6},
    require_root,
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;

const CLIENT4: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 1, 11), 40_000);
const VIP4: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 96, 0, 10), 53);
const EMPTY_VIP4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const BACKEND4: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 2, 11), 5353);

const CLIENT6: (Ipv6Addr, u16) = (Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 0x11), 40_000);
const VIP6: (Ipv6Addr, u16) = (Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10), 53);
const BACKEND6: (Ipv6Addr, u16) = (Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 0x11), 5353);

/// A payload that needs three fragments of 1480 bytes, with a pattern (so a fragment put in
/// the wrong place shows).
fn payload() -> Vec<u8> {
    (0..3500u32).map(|i| (i % 251) as u8).collect()
}

/// Runs every fragment of `input` through the pod program and compares it with the same
/// fragment of `expected`.
fn check_fragments(dp: &mut Datapath, what: &str, input: &[Vec<u8>], expected: &[Vec<u8>]) {
    assert_eq!(input.len(), 3, "{what}: three fragments");
    for (i, (frame, want)) in input.iter().zip(expected).enumerate() {
        let (verdict, out) = dp.run(frame).expect("test run");
        assert_eq!(verdict, TC_ACT_OK, "{what}: fragment {i}: verdict");
        assert_eq!(&out, want, "{what}: fragment {i}");
    }
}

fn passes_untouched(dp: &mut Datapath, what: &str, frame: &[u8]) {
    let (verdict, out) = dp.run(frame).expect("test run");
    assert_eq!(verdict, TC_ACT_OK, "{what}: verdict");
    assert_eq!(out, frame, "{what}: must pass untouched");
}

#[test]
#[ignore = "needs root"]
fn fragmented_ipv4_datagrams_are_translated_whole() -> Result<()> {
    require_root()?;
    let mut dp = Datapath::load("frag4")?;
    dp.program_services(&[
        (VIP4.0, VIP4.1, Protocol::Udp, &[BACKEND4]),
        (EMPTY_VIP4, VIP4.1, Protocol::Udp, &[]),
    ]);
    let request = PacketSpec {
        payload: payload(),
        ..PacketSpec::udp(CLIENT4, VIP4)
    };
    let id = 0x4242;
    check_fragments(
        &mut dp,
        "a request to the frontend",
        &fragment4(&request.build(), 1480, id),
        &fragment4(
            &request.clone().with_dst(BACKEND4.0, BACKEND4.1).build(),
            1480,
            id,
        ),
    );
    // The answer, as big, from the backend: reverse NAT on every fragment.
    let answer = PacketSpec {
        payload: payload(),
        ..PacketSpec::udp(BACKEND4, CLIENT4)
    };
    check_fragments(
        &mut dp,
        "the backend's answer",
        &fragment4(&answer.build(), 1480, id),
        &fragment4(&answer.clone().with_src(VIP4.0, VIP4.1).build(), 1480, id),
    );
    // Later fragments with no translated first fragment: another id, or a first fragment
    // still to come (reordered).
    let other = fragment4(&request.build(), 1480, id + 1);
    passes_untouched(
        &mut dp,
        "a later fragment of an unknown datagram",
        &other[1],
    );
    passes_untouched(&mut dp, "the last fragment of it", &other[2]);
    // A datagram past no frontend is not recorded, so its later fragments pass too.
    let elsewhere = PacketSpec {
        payload: payload(),
        ..PacketSpec::udp(CLIENT4, (Ipv4Addr::new(10, 244, 9, 9), 53))
    };
    for (i, fragment) in fragment4(&elsewhere.build(), 1480, id + 2)
        .iter()
        .enumerate()
    {
        passes_untouched(&mut dp, &format!("fragment {i} to no frontend"), fragment);
    }
    // A datagram to a frontend without endpoints: its first fragment is answered (ICMP port
    // unreachable, sent back by redirect), and the later ones, with nothing to follow, pass.
    let refused = PacketSpec {
        payload: payload(),
        ..PacketSpec::udp(CLIENT4, (EMPTY_VIP4, VIP4.1))
    };
    let fragments = fragment4(&refused.build(), 1480, id + 3);
    let (verdict, answer) = dp.run(&fragments[0])?;
    assert_eq!(verdict, TC_ACT_REDIRECT, "the first fragment is answered");
    assert_eq!(answer[14 + 9], 1, "with ICMP");
    passes_untouched(
        &mut dp,
        "a later fragment of the refused datagram",
        &fragments[1],
    );
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn fragmented_ipv6_datagrams_are_translated_whole() -> Result<()> {
    require_root()?;
    let mut dp = Datapath::load("frag6")?;
    dp.program_cluster_ips(&[(
        IpAddr::V6(VIP6.0),
        VIP6.1,
        Protocol::Udp,
        vec![(IpAddr::V6(BACKEND6.0), BACKEND6.1)],
    )]);
    let request = Packet6 {
        payload: payload(),
        ..Packet6::udp(CLIENT6, VIP6)
    };
    let id = 0x0042_4242;
    check_fragments(
        &mut dp,
        "a request to the frontend",
        &fragment6(&request.build(), 1448, id),
        &fragment6(
            &request.clone().with_dst(BACKEND6.0, BACKEND6.1).build(),
            1448,
            id,
        ),
    );
    let answer = Packet6 {
        payload: payload(),
        ..Packet6::udp(BACKEND6, CLIENT6)
    };
    check_fragments(
        &mut dp,
        "the backend's answer",
        &fragment6(&answer.build(), 1448, id),
        &fragment6(&answer.clone().with_src(VIP6.0, VIP6.1).build(), 1448, id),
    );
    let other = fragment6(&request.build(), 1448, id + 1);
    passes_untouched(
        &mut dp,
        "a later fragment of an unknown datagram",
        &other[1],
    );
    passes_untouched(&mut dp, "the last fragment of it", &other[2]);
    Ok(())
}
