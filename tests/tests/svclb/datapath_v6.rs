//! IPv6 datapath fixtures: the real TC program under BPF_PROG_TEST_RUN on hand-built IPv6
//! frames, maps seeded through the agent's plan -> maps path. Expected frames are built from
//! scratch with checksums over the IPv6 pseudo-header, so a byte-exact match also proves the
//! program's incremental checksum updates; every translated frame's L4 checksum is verified
//! on its own as well. The cases both families share are in `common/fixture.rs`; those here
//! are IPv6's own (extension headers, fragments, what IPv6 forbids).

use std::net::Ipv6Addr;

use crate::common::{
    datapath::Datapath,
    fixture::{
        Addrs, Case, Expect, Hook, TC_ACT_OK, UplinkAddrs, flow_cases, icmp_cases, loaded,
        node_port_plan, other_traffic_cases, reject_cases, run_cases, snat_and_redirect, uplink_ns,
        xdp_and_tc_share_flows, xdp_caches_routes_by_epoch,
    },
};
use anyhow::Result;
use svclb_tests::{
    packet::{L4, TCP_SYN},
    packet6::{Ext, NEXTHDR_DEST, NEXTHDR_HOP, Packet6},
    require_root,
};

const fn v6(segments: [u16; 8]) -> Ipv6Addr {
    Ipv6Addr::new(
        segments[0],
        segments[1],
        segments[2],
        segments[3],
        segments[4],
        segments[5],
        segments[6],
        segments[7],
    )
}

const CLIENT: (Ipv6Addr, u16) = (v6([0xfd00, 0x244, 1, 0, 0, 0, 0, 0x11]), 40_000);
const VIP: Ipv6Addr = v6([0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10]);
const BACKEND: (Ipv6Addr, u16) = (v6([0xfd00, 0x244, 2, 0, 0, 0, 0, 0x11]), 8080);

const V6: Addrs<Ipv6Addr> = Addrs {
    client: CLIENT,
    vip: VIP,
    empty_vip: v6([0xfd00, 0x96, 0, 0, 0, 0, 0, 0x11]),
    backend: BACKEND,
    router: v6([0xfd00, 0, 0, 0, 0, 0, 0, 1]),
    stranger: BACKEND.0,
};

#[test]
#[ignore = "needs root"]
fn ipv6_flows_are_translated_both_ways() -> Result<()> {
    require_root()?;
    let mut dp = loaded("v6-flows", &V6)?;
    run_cases(&mut dp, &flow_cases::<Packet6>(&V6))
}

#[test]
#[ignore = "needs root"]
fn ipv6_frontends_without_endpoints_reset_refuse_or_drop() -> Result<()> {
    require_root()?;
    let mut dp = loaded("v6-reject", &V6)?;
    run_cases(&mut dp, &reject_cases::<Packet6>(&V6))
}

#[test]
#[ignore = "needs root"]
fn ipv6_icmp_errors_about_flows_are_translated() -> Result<()> {
    require_root()?;
    let mut dp = loaded("v6-icmp", &V6)?;
    run_cases(&mut dp, &flow_cases::<Packet6>(&V6))?;
    run_cases(&mut dp, &icmp_cases::<Packet6>(&V6))
}

/// Hop-by-hop, routing and destination-options headers, and a datagram in fragments: a first
/// fragment is translated and records its addresses, its later fragments follow them.
#[test]
#[ignore = "needs root"]
fn ipv6_extension_headers_and_fragments_are_translated() -> Result<()> {
    require_root()?;
    let mut dp = loaded("v6-ext", &V6)?;
    let with_options = Packet6 {
        ext: vec![
            Ext::Options(NEXTHDR_HOP),
            Ext::Routing { segments_left: 0 },
            Ext::Options(NEXTHDR_DEST),
        ],
        sport: 40_002,
        ..Packet6::tcp(CLIENT, (VIP, 80), TCP_SYN)
    };
    // With segments left, the frontend's address is only a waypoint of the packet's route.
    let waypoint = Packet6 {
        ext: vec![Ext::Routing { segments_left: 1 }],
        sport: 40_006,
        ..Packet6::tcp(CLIENT, (VIP, 80), TCP_SYN)
    };
    let first_fragment = Packet6 {
        ext: vec![Ext::Fragment {
            offset: 0,
            more: true,
            id: 7,
        }],
        sport: 40_003,
        ..Packet6::udp(CLIENT, (VIP, 53))
    };
    let later_fragment = {
        let mut frame = Packet6 {
            ext: vec![Ext::Fragment {
                offset: 100,
                more: false,
                id: 7,
            }],
            ..first_fragment.clone()
        }
        .build();
        // A later fragment holds payload only; make it so past the fragment header.
        frame[14 + 48..14 + 52].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        frame
    };
    let of_another_datagram = {
        let mut frame = later_fragment.clone();
        frame[14 + 44..14 + 48].copy_from_slice(&8u32.to_be_bytes());
        frame
    };
    let later_translated = {
        let mut frame = later_fragment.clone();
        frame[14 + 24..14 + 40].copy_from_slice(&BACKEND.0.octets());
        frame
    };
    let cases = [
        Case::new(
            "hop-by-hop, routing (no segments left) and destination-options headers are walked to find the ports",
            with_options.build(),
            TC_ACT_OK,
            Expect::Frame(with_options.clone().with_dst(BACKEND.0, BACKEND.1)),
        ),
        Case::passes(
            "a routing header with segments left: the frontend is a waypoint, not translated",
            waypoint.build(),
        ),
        Case::new(
            "a first fragment (offset 0) is translated",
            first_fragment.build(),
            TC_ACT_OK,
            Expect::Frame(first_fragment.clone().with_dst(BACKEND.0, BACKEND.1)),
        ),
        Case::new(
            "a later fragment of it gets the first one's addresses, nothing else",
            later_fragment,
            TC_ACT_OK,
            Expect::Headless(later_translated),
        ),
        Case::passes(
            "a later fragment of another datagram passes untouched",
            of_another_datagram,
        ),
    ];
    run_cases(&mut dp, &cases)
}

#[test]
#[ignore = "needs root"]
fn ipv6_other_and_malformed_traffic_passes_untouched() -> Result<()> {
    require_root()?;
    let mut dp = loaded("v6-other", &V6)?;
    let udp = Packet6::udp(CLIENT, (VIP, 53));
    let udp_nosum = Packet6 {
        l4: L4::Udp {
            zero_checksum: true,
        },
        sport: 40_004,
        ..udp.clone()
    };
    let zero_length = {
        let mut f = Packet6 {
            sport: 40_005,
            ..udp
        }
        .build();
        f[14 + 4..14 + 6].copy_from_slice(&[0, 0]);
        f
    };
    let echo = {
        let mut message = vec![128, 0, 0, 0, 0, 1, 0, 1];
        message.extend_from_slice(b"ping");
        let csum = svclb_tests::packet6::l4_checksum6(CLIENT.0, VIP, 58, &message).to_be_bytes();
        message[2..4].copy_from_slice(&csum);
        let mut frame = Packet6::tcp(CLIENT, (VIP, 80), TCP_SYN).build()[..14 + 40].to_vec();
        frame[14 + 4..14 + 6].copy_from_slice(&(message.len() as u16).to_be_bytes());
        frame[14 + 6] = 58;
        frame.extend_from_slice(&message);
        frame
    };
    let mut cases = other_traffic_cases::<Packet6>(&V6);
    cases.extend([
        Case::passes(
            "UDP with a zero checksum (invalid over IPv6) passes untouched",
            udp_nosum.build(),
        ),
        Case::passes(
            "a datagram with an IPv6 payload length of 0 (BIG TCP's mark, malformed on UDP) \
             passes untouched",
            zero_length,
        ),
        Case::passes("an ICMPv6 echo to a frontend passes untouched", echo),
    ]);
    run_cases(&mut dp, &cases)
}

/// The rewrites that send IPv6 packets on themselves (FIB lookup, MAC addresses, hop limit):
/// SNAT to a remote backend, its reply, and ICMPv6 errors of the SNATed flows.
#[test]
#[ignore = "needs root"]
fn ipv6_fixtures_snat_and_redirect() -> Result<()> {
    require_root()?;
    let (ns, ifindex) = uplink_ns::<Packet6>("fib6")?;
    let addrs = UplinkAddrs {
        node: v6([0xfd00, 0x31, 0, 0, 0, 0, 0, 0x11]),
        client: (v6([0xfd00, 0x31, 0, 0, 0, 0, 0, 0x100]), 40_000),
        remote_backend: (v6([0xfd00, 0x244, 2, 0, 0, 0, 0, 0x11]), 8080),
        router: v6([0xfd00, 0x31, 0, 0, 0, 0, 0, 0x200]),
    };
    svclb_tests::netns::in_netns(&ns.0.clone(), move || {
        let mut dp = Datapath::load("snat6")?;
        dp.program(&node_port_plan(&addrs));
        snat_and_redirect::<Packet6>(&mut dp, ifindex, &addrs, Hook::Tc)?;
        drop(dp);
        let mut dp = Datapath::load("xdp6")?;
        dp.finish_xdp_on(ifindex)?;
        dp.program(&node_port_plan(&addrs));
        snat_and_redirect::<Packet6>(&mut dp, ifindex, &addrs, Hook::Xdp)?;
        drop(dp);
        let mut dp = Datapath::load("share6")?;
        dp.finish_xdp_on(ifindex)?;
        dp.program(&node_port_plan(&addrs));
        xdp_and_tc_share_flows::<Packet6>(&mut dp, ifindex, &addrs)?;
        drop(dp);
        let mut dp = Datapath::load("routes6")?;
        dp.finish_xdp_on(ifindex)?;
        dp.program(&node_port_plan(&addrs));
        xdp_caches_routes_by_epoch::<Packet6>(&mut dp, ifindex, &addrs)
    })
}
