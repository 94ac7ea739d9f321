//! The packet fuzzer: the real TC programs under BPF_PROG_TEST_RUN on random and malformed
//! frames (garbage, and well-formed frames to and past a frontend with random fields,
//! options, payloads, then truncated, bit-flipped, with a wrong IHL, total length or
//! fragment field). Whatever comes in, the verdict is one the programs may give; traffic
//! that is neither to a frontend nor from a backend leaves byte for byte as it came; and a
//! frame the programs rewrite keeps its length, IHL, protocol and payload, changes only
//! addresses, ports, TTL and checksums, and keeps every checksum that was valid valid. The
//! same over IPv6, with extension headers. The XDP program meets the same frames on a node's
//! uplink, its frontends external with remote backends (what it finishes itself): whatever
//! it passes to TC is untouched, and whatever it sends back out obeys the rewrite invariants.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::common::{
    datapath::Datapath,
    fixture::{XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, uplink_ns},
};
use anyhow::Result;
use proptest::{prelude::*, test_runner::TestCaseError};
use svclb::plan::{Frontend, FrontendKey, FrontendKind, Plan, PlanBackend, Protocol, Scope};
use svclb_tests::{
    family::TestPacket,
    packet::{L4, PacketSpec, TCP_SYN, checksum, verify_checksums},
    packet6::{Ext, NEXTHDR_DEST, NEXTHDR_HOP, Packet6, l4_checksum_ok},
    require_root,
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const BACKENDS: [(Ipv4Addr, u16); 2] = [
    (Ipv4Addr::new(10, 244, 2, 11), 8080),
    (Ipv4Addr::new(10, 244, 2, 12), 8080),
];

fn loaded() -> Result<Datapath> {
    let mut dp = Datapath::load("fuzz")?;
    dp.program_services(&[
        (VIP, 80, Protocol::Tcp, &BACKENDS),
        (VIP, 53, Protocol::Udp, &BACKENDS),
    ]);
    Ok(dp)
}

/// A well-formed frame with random fields: to the frontend's ports or elsewhere.
fn spec() -> impl Strategy<Value = PacketSpec> {
    let addr = prop_oneof![
        Just(VIP),
        Just(BACKENDS[0].0),
        any::<[u8; 4]>().prop_map(Ipv4Addr::from),
    ];
    let port = prop_oneof![Just(80u16), Just(53), Just(8080), any::<u16>()];
    let l4 = prop_oneof![
        tcp_flags().prop_map(|flags| L4::Tcp { flags }),
        any::<bool>().prop_map(|zero_checksum| L4::Udp { zero_checksum }),
    ];
    (
        any::<[u8; 4]>(),
        any::<u16>(),
        addr,
        port,
        l4,
        prop::collection::vec(any::<u8>(), 0..10).prop_map(|mut o| {
            o.truncate(o.len() / 4 * 4);
            o
        }),
        prop::collection::vec(any::<u8>(), 0..80),
    )
        .prop_map(
            |(src, sport, dst, dport, l4, ip_options, payload)| PacketSpec {
                src: Ipv4Addr::from(src),
                sport,
                dst,
                dport,
                l4,
                ip_options,
                payload,
            },
        )
}

/// What is done to a well-formed frame before it is sent.
#[derive(Clone, Debug)]
enum Damage {
    None,
    Truncate(usize),
    Flip(usize, u8),
    Ihl(u8),
    TotalLength(u16),
    Fragment(u16),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        3 => Just(Damage::None),
        1 => any::<usize>().prop_map(Damage::Truncate),
        2 => (any::<usize>(), 1u8..).prop_map(|(at, bits)| Damage::Flip(at, bits)),
        1 => (0u8..16).prop_map(Damage::Ihl),
        1 => any::<u16>().prop_map(Damage::TotalLength),
        1 => any::<u16>().prop_map(Damage::Fragment),
    ]
}

fn apply(mut frame: Vec<u8>, damage: &Damage) -> Vec<u8> {
    match *damage {
        Damage::None => {}
        Damage::Truncate(at) => frame.truncate(at % frame.len()),
        Damage::Flip(at, bits) => {
            let at = at % frame.len();
            frame[at] ^= bits;
        }
        Damage::Ihl(ihl) => frame[14] = 0x40 | ihl,
        Damage::TotalLength(len) => frame[16..18].copy_from_slice(&len.to_be_bytes()),
        Damage::Fragment(field) => frame[20..22].copy_from_slice(&field.to_be_bytes()),
    }
    frame
}

/// IPv4 over Ethernet with a sane header: (IHL in bytes, protocol, total length).
fn ipv4(frame: &[u8]) -> Option<(usize, u8, usize)> {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] || frame[14] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    (ihl >= 20 && total >= ihl && 14 + total <= frame.len()).then_some((ihl, frame[23], total))
}

/// Whether the frame's L4 segment is complete and not a fragment, so its checksum means
/// something.
fn whole_segment(frame: &[u8]) -> bool {
    let Some((ihl, protocol, total)) = ipv4(frame) else {
        return false;
    };
    let fragment = u16::from_be_bytes([frame[20], frame[21]]) & 0x3fff != 0;
    let header = match protocol {
        6 => 20,
        17 => 8,
        _ => return false,
    };
    !fragment && total >= ihl + header
}

/// Bytes a rewrite may change: MAC addresses (a redirect), TTL, the IP checksum, the
/// addresses, the ports and the L4 checksum.
fn may_change(frame: &[u8], at: usize) -> bool {
    let Some((ihl, protocol, _)) = ipv4(frame) else {
        return false;
    };
    let l4 = 14 + ihl;
    let l4_csum = match protocol {
        6 => l4 + 16,
        17 => l4 + 6,
        _ => usize::MAX,
    };
    at < 12
        || at == 22
        || (24..34).contains(&at)
        || (l4..l4 + 4).contains(&at)
        || (l4_csum..l4_csum + 2).contains(&at)
}

fn ip_checksum_ok(frame: &[u8]) -> bool {
    ipv4(frame).is_some_and(|(ihl, _, _)| checksum(&[&frame[14..14 + ihl]]) == 0)
}

/// Whether the programs may treat the frame as service traffic at all: addressed to the
/// frontend, from a backend (a reply), or ICMP (an error that may quote a tracked flow).
fn may_be_service_traffic(frame: &[u8]) -> bool {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return false;
    }
    let src = Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29]);
    let dst = Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33]);
    dst == VIP || BACKENDS.iter().any(|(b, _)| *b == src) || frame[23] == 1
}

fn check(input: &[u8], verdict: u32, output: &[u8]) -> Result<(), TestCaseError> {
    prop_assert!(
        [TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT].contains(&verdict),
        "verdict {verdict}"
    );
    if !may_be_service_traffic(input) {
        prop_assert_eq!(verdict, TC_ACT_OK, "other traffic passes");
        prop_assert_eq!(output, input, "other traffic leaves untouched");
        return Ok(());
    }
    if verdict == TC_ACT_SHOT || output == input {
        return Ok(());
    }
    prop_assert_eq!(output.len(), input.len(), "a rewrite keeps the length");
    for (at, (a, b)) in input.iter().zip(output).enumerate() {
        prop_assert!(
            a == b || may_change(input, at),
            "byte {} changed: {} -> {}",
            at,
            a,
            b
        );
    }
    if ip_checksum_ok(input) {
        prop_assert!(ip_checksum_ok(output), "the IP checksum stays valid");
    }
    if whole_segment(input) {
        let (before, after) = (verify_checksums(input), verify_checksums(output));
        if before.l4_ok {
            prop_assert!(after.l4_ok, "the L4 checksum stays valid");
        }
        prop_assert_eq!(
            before.udp_zero,
            after.udp_zero,
            "a zero UDP checksum stays zero"
        );
    }
    Ok(())
}

/// Whether BPF_PROG_TEST_RUN takes the frame: it refuses one of no more than an Ethernet
/// header, and an IPv4 or IPv6 one without a whole IP header (runts a NIC would not pass on).
fn testable(frame: &[u8]) -> bool {
    frame.len() > 14
        && match frame[12..14] {
            [0x08, 0x00] => frame.len() >= 14 + 20,
            [0x86, 0xdd] => frame.len() >= 14 + 40,
            _ => true,
        }
}

fn run_both(dp: &mut Datapath, input: &[u8]) -> Result<(), TestCaseError> {
    for uplink in [false, true] {
        let ran = if uplink {
            dp.run_uplink(input)
        } else {
            dp.run(input)
        };
        let (verdict, output) = ran.map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
        check(input, verdict, &output)?;
    }
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn random_and_malformed_frames() -> Result<()> {
    require_root()?;
    let dp = std::cell::RefCell::new(loaded()?);
    let config = ProptestConfig {
        cases: 5_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config.clone());
    runner
        .run(&(spec(), damage()), |(spec, damage)| {
            let frame = apply(spec.build(), &damage);
            if !testable(&frame) {
                return Ok(());
            }
            run_both(&mut dp.borrow_mut(), &frame)
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut runner = proptest::test_runner::TestRunner::new(config);
    runner
        .run(&prop::collection::vec(any::<u8>(), 15..200), |mut bytes| {
            // Garbage, half of it behind an IPv4 ethertype so the parser reads further.
            if bytes[0] & 1 == 0 {
                bytes[12..14].copy_from_slice(&[0x08, 0x00]);
            }
            if !testable(&bytes) {
                return Ok(());
            }
            run_both(&mut dp.borrow_mut(), &bytes)
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

// IPv6: the same invariants over IPv6 frames with extension headers.

const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10);
const BACKENDS6: [(Ipv6Addr, u16); 2] = [
    (Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 0x11), 8080),
    (Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 0x12), 8080),
];

fn loaded6() -> Result<Datapath> {
    let mut dp = Datapath::load("fuzz6")?;
    let backends: Vec<_> = BACKENDS6
        .iter()
        .map(|(a, p)| (IpAddr::V6(*a), *p))
        .collect();
    dp.program_cluster_ips(&[
        (IpAddr::V6(VIP6), 80, Protocol::Tcp, backends.clone()),
        (IpAddr::V6(VIP6), 53, Protocol::Udp, backends),
    ]);
    Ok(dp)
}

/// TCP flags: any, and half the time a SYN alone, the one segment that opens a flow (so
/// enough frames make flows for the rewrite invariants to bite on).
fn tcp_flags() -> impl Strategy<Value = u8> {
    prop_oneof![Just(TCP_SYN), any::<u8>()]
}

/// A well-formed IPv6 frame with random fields and extension headers.
fn spec6() -> impl Strategy<Value = Packet6> {
    let addr = prop_oneof![
        Just(VIP6),
        Just(BACKENDS6[0].0),
        any::<u128>().prop_map(Ipv6Addr::from),
    ];
    let port = prop_oneof![Just(80u16), Just(53), Just(8080), any::<u16>()];
    let l4 = prop_oneof![
        tcp_flags().prop_map(|flags| L4::Tcp { flags }),
        any::<bool>().prop_map(|zero_checksum| L4::Udp { zero_checksum }),
    ];
    let ext = prop_oneof![
        Just(Ext::Options(NEXTHDR_HOP)),
        Just(Ext::Options(NEXTHDR_DEST)),
        any::<u8>().prop_map(|segments_left| Ext::Routing { segments_left }),
        (0u16..4, any::<bool>(), any::<u32>()).prop_map(|(offset, more, id)| Ext::Fragment {
            offset,
            more,
            id
        }),
    ];
    (
        any::<u128>(),
        any::<u16>(),
        addr,
        port,
        l4,
        prop::collection::vec(ext, 0..3),
        1u8..,
        prop::collection::vec(any::<u8>(), 0..80),
    )
        .prop_map(
            |(src, sport, dst, dport, l4, ext, hop_limit, payload)| Packet6 {
                src: Ipv6Addr::from(src),
                sport,
                dst,
                dport,
                l4,
                ext,
                hop_limit,
                payload,
            },
        )
}

#[derive(Clone, Debug)]
enum Damage6 {
    None,
    Truncate(usize),
    Flip(usize, u8),
    PayloadLength(u16),
    NextHeader(u8),
}

fn damage6() -> impl Strategy<Value = Damage6> {
    prop_oneof![
        3 => Just(Damage6::None),
        1 => any::<usize>().prop_map(Damage6::Truncate),
        2 => (any::<usize>(), 1u8..).prop_map(|(at, bits)| Damage6::Flip(at, bits)),
        1 => any::<u16>().prop_map(Damage6::PayloadLength),
        1 => any::<u8>().prop_map(Damage6::NextHeader),
    ]
}

fn apply6(mut frame: Vec<u8>, damage: &Damage6) -> Vec<u8> {
    match *damage {
        Damage6::None => {}
        Damage6::Truncate(at) => frame.truncate(at % frame.len()),
        Damage6::Flip(at, bits) => {
            let at = at % frame.len();
            frame[at] ^= bits;
        }
        Damage6::PayloadLength(len) => frame[18..20].copy_from_slice(&len.to_be_bytes()),
        Damage6::NextHeader(next) => frame[20] = next,
    }
    frame
}

/// A sane IPv6 frame: (offset of the L4 header, its protocol, whether it is a fragment), with
/// a payload length the frame holds (bytes past it are padding, as after a short IPv4
/// packet: CI's fuzzer once cut a payload length to 20, leaving 48 bytes of padding behind a
/// TCP header, a frame the programs rightly translate).
fn ipv6(frame: &[u8]) -> Option<(usize, u8, bool)> {
    if frame.len() < 54 || frame[12..14] != [0x86, 0xdd] || frame[14] >> 4 != 6 {
        return None;
    }
    let end = 54 + usize::from(u16::from_be_bytes([frame[18], frame[19]]));
    if end > frame.len() {
        return None;
    }
    let (mut next, mut at, mut fragment) = (frame[20], 54, false);
    while matches!(next, 0 | 43 | 44 | 60) {
        let header = frame.get(at..at + 8)?;
        if next == 44 {
            fragment = true;
            at += 8;
        } else {
            at += (usize::from(header[1]) + 1) * 8;
        }
        next = header[0];
    }
    (at <= end).then_some((at, next, fragment))
}

/// Whether the frame carries a routing header with segments left (before its L4 header): its
/// destination is a waypoint, which the datapath must not translate.
fn routed_through6(frame: &[u8]) -> bool {
    if frame.len() < 54 || frame[12..14] != [0x86, 0xdd] {
        return false;
    }
    let (mut next, mut at) = (frame[20], 54);
    while matches!(next, 0 | 43 | 44 | 60) {
        let Some(header) = frame.get(at..at + 8) else {
            return false;
        };
        if next == 43 && header[3] != 0 {
            return true;
        }
        at += if next == 44 {
            8
        } else {
            (usize::from(header[1]) + 1) * 8
        };
        next = header[0];
    }
    false
}

fn may_be_service_traffic6(frame: &[u8]) -> bool {
    if frame.len() < 54 || frame[12..14] != [0x86, 0xdd] {
        return false;
    }
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&frame[22..38]).expect("16 bytes"));
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&frame[38..54]).expect("16 bytes"));
    // ICMPv6 anywhere in the chain may be an error about a tracked flow.
    dst == VIP6
        || BACKENDS6.iter().any(|(b, _)| *b == src)
        || ipv6(frame).is_some_and(|(_, p, _)| p == 58)
}

/// Bytes a rewrite may change: MAC addresses, hop limit, addresses, ports and the L4
/// checksum; in an ICMPv6 error also the quote's addresses and ports.
fn may_change6(frame: &[u8], at: usize) -> bool {
    let Some((l4, protocol, _)) = ipv6(frame) else {
        return false;
    };
    let csum = match protocol {
        6 => l4 + 16,
        17 | 58 => l4 + if protocol == 17 { 6 } else { 2 },
        _ => usize::MAX,
    };
    let quote =
        protocol == 58 && ((l4 + 16..l4 + 48).contains(&at) || (l4 + 48..l4 + 52).contains(&at));
    at < 12
        || at == 21
        || (22..54).contains(&at)
        || (protocol != 58 && (l4..l4 + 4).contains(&at))
        || (csum..csum + 2).contains(&at)
        || quote
}

fn check6(input: &[u8], verdict: u32, output: &[u8]) -> Result<(), TestCaseError> {
    prop_assert!(
        [TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT].contains(&verdict),
        "verdict {verdict}"
    );
    if !may_be_service_traffic6(input) || routed_through6(input) {
        prop_assert_eq!(verdict, TC_ACT_OK, "other traffic passes");
        prop_assert_eq!(output, input, "other traffic leaves untouched");
        return Ok(());
    }
    if verdict == TC_ACT_SHOT || output == input {
        return Ok(());
    }
    // A made-up answer (RST, port unreachable) is checked by the fixtures.
    if verdict == TC_ACT_REDIRECT {
        return Ok(());
    }
    prop_assert_eq!(output.len(), input.len(), "a rewrite keeps the length");
    for (at, (a, b)) in input.iter().zip(output).enumerate() {
        prop_assert!(
            a == b || may_change6(input, at),
            "byte {} changed: {} -> {}",
            at,
            a,
            b
        );
    }
    if let Some((l4, protocol, false)) = ipv6(input) {
        let header = if protocol == 6 { 20 } else { 8 };
        let zero_udp = protocol == 17 && input.get(l4 + 6..l4 + 8) == Some(&[0, 0]);
        prop_assert!(
            !zero_udp,
            "a zero UDP checksum (invalid over IPv6) is not translated"
        );
        if input.len() >= l4 + header && l4_checksum_ok(input) {
            prop_assert!(l4_checksum_ok(output), "the L4 checksum stays valid");
        }
    }
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn random_and_malformed_ipv6_frames() -> Result<()> {
    require_root()?;
    let dp = std::cell::RefCell::new(loaded6()?);
    // Frames the programs translated: the invariants must have had rewrites to bite on.
    let rewritten = std::cell::Cell::new(0usize);
    let run = |input: &[u8]| -> Result<(), TestCaseError> {
        let mut dp = dp.borrow_mut();
        for uplink in [false, true] {
            let ran = if uplink {
                dp.run_uplink(input)
            } else {
                dp.run(input)
            };
            let (verdict, output) = ran.map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
            check6(input, verdict, &output)?;
            if verdict == TC_ACT_OK && output != input {
                rewritten.set(rewritten.get() + 1);
            }
        }
        Ok(())
    };
    // CI's find: a payload length cut to the TCP header, the rest of the frame padding.
    let padded = Packet6 {
        src: Ipv6Addr::UNSPECIFIED,
        sport: 0,
        hop_limit: 1,
        payload: vec![0; 48],
        ..Packet6::tcp((Ipv6Addr::UNSPECIFIED, 0), (VIP6, 80), 0)
    };
    run(&apply6(padded.build(), &Damage6::Flip(19, 0x50))).map_err(|e| anyhow::anyhow!("{e}"))?;
    let config = ProptestConfig {
        cases: 5_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config.clone());
    runner
        .run(&(spec6(), damage6()), |(spec, damage)| {
            let frame = apply6(spec.build(), &damage);
            if !testable(&frame) {
                return Ok(());
            }
            run(&frame)
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert!(
        rewritten.get() >= 100,
        "only {} frames were translated: the generator misses the frontend",
        rewritten.get()
    );
    let mut runner = proptest::test_runner::TestRunner::new(config);
    runner
        .run(&prop::collection::vec(any::<u8>(), 54..200), |mut bytes| {
            // Garbage behind an IPv6 header's first nibble, so the parser reads further.
            bytes[12..14].copy_from_slice(&[0x86, 0xdd]);
            bytes[14] = 0x60 | (bytes[14] & 0x0f);
            run(&bytes)
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

// XDP: the frontends become LoadBalancer IPs (external) whose backends are on another node,
// in a namespace whose FIB routes them, so the program has flows to finish.

/// The TC invariants over one frame: input, verdict, output.
type Check = fn(&[u8], u32, &[u8]) -> Result<(), TestCaseError>;

/// A LoadBalancer IP on ports 80/TCP and 53/UDP with `backends` on node n2.
fn external_plan(vip: IpAddr, backends: &[(IpAddr, u16)]) -> Plan {
    let mut plan = Plan::default();
    for (port, protocol) in [(80, Protocol::Tcp), (53, Protocol::Udp)] {
        plan.frontends.insert(
            FrontendKey::new(vip, port, protocol),
            Frontend::new(
                "default/lb",
                FrontendKind::LoadBalancer,
                Scope::External,
                backends
                    .iter()
                    .map(|(a, p)| PlanBackend {
                        node: Some("n2".into()),
                        ..PlanBackend::remote(*a, *p)
                    })
                    .collect(),
            ),
        );
    }
    plan
}

/// The XDP invariants over one frame; `rewrite` checks a rewritten frame as TC's are.
/// Whether XDP sent the frame out itself.
fn check_xdp(
    input: &[u8],
    action: u32,
    output: &[u8],
    rewrite: Check,
) -> Result<bool, TestCaseError> {
    prop_assert!(
        [XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT].contains(&action),
        "action {action}"
    );
    match action {
        XDP_PASS => {
            prop_assert_eq!(output, input, "what XDP passes to TC, it passes untouched");
            Ok(false)
        }
        XDP_DROP => rewrite(input, TC_ACT_SHOT, output).map(|()| false),
        _ => {
            prop_assert_ne!(output, input, "a frame XDP sends out is translated");
            rewrite(input, TC_ACT_OK, output).map(|()| true)
        }
    }
}

/// Runs both uplink programs (XDP, then TC) on frames from `frames` in the namespace of an
/// uplink at `ifindex`; how many XDP sent out itself.
fn fuzz_uplink<S: Strategy<Value = Vec<u8>>>(
    dp: &mut Datapath,
    ifindex: u32,
    frames: S,
    check_tc: Check,
) -> Result<usize> {
    let dp = std::cell::RefCell::new(dp);
    let sent = std::cell::Cell::new(0usize);
    let config = ProptestConfig {
        cases: 5_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    runner
        .run(&frames, |frame| {
            if !testable(&frame) {
                return Ok(());
            }
            let mut dp = dp.borrow_mut();
            let fail = |e: anyhow::Error| TestCaseError::fail(format!("{e:#}"));
            let (action, output) = dp.run_xdp_on(ifindex, &frame).map_err(fail)?;
            if check_xdp(&frame, action, &output, check_tc)? {
                sent.set(sent.get() + 1);
            }
            let (verdict, output) = dp.run_uplink_on(ifindex, &frame).map_err(fail)?;
            check_tc(&frame, verdict, &output)
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(sent.get())
}

/// The XDP fuzz of one family: an uplink namespace whose FIB routes the remote backends,
/// the frontend `vip` external with `backends`, `frames` through both uplink programs; XDP
/// must have sent enough frames out itself for the invariants to bite.
fn fuzz_xdp<P: TestPacket, S: Strategy<Value = Vec<u8>> + 'static>(
    name: &'static str,
    vip: IpAddr,
    backends: Vec<(IpAddr, u16)>,
    frames: fn() -> S,
    check: Check,
) -> Result<()> {
    let (ns, ifindex) = uplink_ns::<P>(name)?;
    let sent = svclb_tests::netns::in_netns(&ns.0.clone(), move || {
        let mut dp = Datapath::load(name)?;
        dp.finish_xdp_on(ifindex)?;
        dp.program(&external_plan(vip, &backends));
        fuzz_uplink(&mut dp, ifindex, frames(), check)
    })?;
    assert!(
        sent >= 50,
        "XDP sent only {sent} frames out itself: the generator misses the frontend"
    );
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn the_xdp_program_on_random_and_malformed_frames() -> Result<()> {
    require_root()?;
    let backends = BACKENDS.iter().map(|(a, p)| (IpAddr::V4(*a), *p)).collect();
    fuzz_xdp::<PacketSpec, _>(
        "fuzzxdp",
        IpAddr::V4(VIP),
        backends,
        || (spec(), damage()).prop_map(|(spec, damage)| apply(spec.build(), &damage)),
        check,
    )
}

#[test]
#[ignore = "needs root"]
fn the_xdp_program_on_random_and_malformed_ipv6_frames() -> Result<()> {
    require_root()?;
    let backends = BACKENDS6
        .iter()
        .map(|(a, p)| (IpAddr::V6(*a), *p))
        .collect();
    fuzz_xdp::<Packet6, _>(
        "fuzzxdp6",
        IpAddr::V6(VIP6),
        backends,
        || (spec6(), damage6()).prop_map(|(spec, damage)| apply6(spec.build(), &damage)),
        check6,
    )
}
