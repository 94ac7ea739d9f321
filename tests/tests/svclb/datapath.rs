//! Datapath fixtures over IPv4: the real TC program, run by the kernel with BPF_PROG_TEST_RUN
//! on hand-built frames, with maps seeded through the agent's own plan -> maps path. Each case
//! is one record: description, input frame, expected verdict, expected output frame. Expected
//! frames are built from scratch with full checksums, so a byte-exact match also proves the
//! program's incremental checksum updates. The cases both families share are in
//! `common/fixture.rs`; those here are IPv4's own.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use crate::common::{
    datapath::Datapath,
    fixture::{
        Addrs, Case, Expect, Hook, TC_ACT_OK, UplinkAddrs, XDP_PASS, flow_cases, icmp_cases,
        loaded, node_port_plan, other_traffic_cases, reject_cases, run_cases, snat_and_redirect,
        uplink_ns, xdp_and_tc_share_flows, xdp_caches_routes_by_epoch,
    },
};
use anyhow::Result;
use svclb::plan::Protocol;
use svclb_tests::{
    family::fix_ip_checksum,
    packet::{L4, PacketSpec, TCP_ACK, TCP_SYN},
    require_root,
};

const CLIENT: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 1, 11), 40_000);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const BACKEND: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 2, 11), 8080);

const V4: Addrs<Ipv4Addr> = Addrs {
    client: CLIENT,
    vip: VIP,
    empty_vip: Ipv4Addr::new(10, 96, 0, 11),
    backend: BACKEND,
    router: Ipv4Addr::new(10, 0, 0, 1),
    stranger: Ipv4Addr::new(10, 96, 0, 99),
};

#[test]
#[ignore = "needs root"]
fn ipv4_flows_are_translated_both_ways() -> Result<()> {
    require_root()?;
    let mut dp = loaded("flows", &V4)?;
    run_cases(&mut dp, &flow_cases::<PacketSpec>(&V4))
}

#[test]
#[ignore = "needs root"]
fn ipv4_frontends_without_endpoints_reset_refuse_or_drop() -> Result<()> {
    require_root()?;
    let mut dp = loaded("reject", &V4)?;
    run_cases(&mut dp, &reject_cases::<PacketSpec>(&V4))
}

#[test]
#[ignore = "needs root"]
fn ipv4_icmp_errors_about_flows_are_translated() -> Result<()> {
    require_root()?;
    let mut dp = loaded("icmp", &V4)?;
    run_cases(&mut dp, &flow_cases::<PacketSpec>(&V4))?;
    run_cases(&mut dp, &icmp_cases::<PacketSpec>(&V4))
}

#[test]
#[ignore = "needs root"]
fn ipv4_header_variants_are_translated() -> Result<()> {
    require_root()?;
    let mut dp = loaded("variants", &V4)?;
    let udp_nosum = PacketSpec {
        l4: L4::Udp {
            zero_checksum: true,
        },
        sport: 40_001,
        ..PacketSpec::udp(CLIENT, (VIP, 53))
    };
    let with_options = PacketSpec {
        // Router alert (4 bytes), then NOP, NOP, NOP, end of options: IHL 7.
        ip_options: vec![0x94, 0x04, 0x00, 0x00, 0x01, 0x01, 0x01, 0x00],
        sport: 40_002,
        ..PacketSpec::tcp(CLIENT, (VIP, 80), TCP_SYN)
    };
    run_cases(
        &mut dp,
        &[
            Case::new(
                "a zero UDP checksum stays zero",
                udp_nosum.build(),
                TC_ACT_OK,
                Expect::Frame(udp_nosum.clone().with_dst(BACKEND.0, BACKEND.1)),
            ),
            Case::new(
                "IPv4 options (IHL 7) are skipped to find the ports",
                with_options.build(),
                TC_ACT_OK,
                Expect::Frame(with_options.clone().with_dst(BACKEND.0, BACKEND.1)),
            ),
        ],
    )
}

#[test]
#[ignore = "needs root"]
fn ipv4_other_traffic_passes_untouched() -> Result<()> {
    require_root()?;
    let mut dp = loaded("other", &V4)?;
    let syn = PacketSpec::tcp(CLIENT, (VIP, 80), TCP_SYN);
    let arp = {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x06]);
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&[0; 20]);
        f
    };
    let ipv6 = {
        let mut f = syn.build();
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        f
    };
    let icmp = {
        let mut f = syn.build();
        f[14 + 9] = 1;
        fix_ip_checksum(&mut f);
        f
    };
    let mut cases = other_traffic_cases::<PacketSpec>(&V4);
    cases.extend([
        Case::passes("ARP passes untouched", arp),
        Case::passes(
            "an IPv4 packet under the IPv6 ethertype passes untouched",
            ipv6,
        ),
        Case::passes("ICMP to a frontend address passes untouched", icmp),
        Case::passes(
            "a bare Ethernet header passes untouched",
            vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x88, 0xcc],
        ),
    ]);
    run_cases(&mut dp, &cases)
}

/// BPF_PROG_TEST_RUN refuses IPv4 frames shorter than an IP header, so truncation is shown
/// with headers that announce more than the frame holds.
#[test]
#[ignore = "needs root"]
fn ipv4_malformed_frames_pass_untouched() -> Result<()> {
    require_root()?;
    let mut dp = loaded("malformed", &V4)?;
    let syn = PacketSpec::tcp(CLIENT, (VIP, 80), TCP_SYN);
    let with_options = PacketSpec {
        ip_options: vec![0x94, 0x04, 0x00, 0x00, 0x01, 0x01, 0x01, 0x00],
        sport: 40_002,
        ..syn.clone()
    };
    let mut fragment = syn.clone().with_src(CLIENT.0, 40_010).build();
    fragment[14 + 6..14 + 8].copy_from_slice(&[0x00, 0x10]); // offset 128, the last one
    fix_ip_checksum(&mut fragment);
    let zero_length = {
        let mut f = PacketSpec::udp((CLIENT.0, 40_011), (VIP, 53)).build();
        f[16..18].copy_from_slice(&[0, 0]);
        fix_ip_checksum(&mut f);
        f
    };
    let cases: [Case<PacketSpec>; 5] = [
        Case::passes(
            "an IHL pointing past the end of the frame passes untouched",
            bad_ihl(&syn, 15),
        ),
        Case::passes(
            "an IHL below 5 (malformed) passes untouched",
            bad_ihl(&syn, 4),
        ),
        Case::passes(
            "a frame cut before the options end passes untouched",
            with_options.build()[..14 + 24].to_vec(),
        ),
        Case::passes(
            "a datagram with an IP total length of 0 (BIG TCP's mark, malformed on UDP) passes \
             untouched",
            zero_length,
        ),
        Case::passes(
            "a later fragment of a datagram whose first fragment was not seen passes untouched",
            fragment,
        ),
    ];
    run_cases(&mut dp, &cases)
}

/// `spec`'s frame cut to 40 bytes of IP with the IHL field set to `ihl` words.
fn bad_ihl(spec: &PacketSpec, ihl: u8) -> Vec<u8> {
    let mut frame = spec.build()[..14 + 40].to_vec();
    frame[14] = 0x40 | ihl;
    fix_ip_checksum(&mut frame);
    frame
}

fn backend_of(out: &[u8]) -> (Ipv4Addr, u16) {
    let ihl = usize::from(out[14] & 0x0f) * 4;
    let dst = Ipv4Addr::new(out[30], out[31], out[32], out[33]);
    let port = u16::from_be_bytes([out[14 + ihl + 2], out[14 + ihl + 3]]);
    (dst, port)
}

#[test]
#[ignore = "needs root"]
fn flows_keep_their_backend_and_new_flows_use_all() -> Result<()> {
    require_root()?;
    let backends = [
        (Ipv4Addr::new(10, 244, 1, 21), 8080),
        (Ipv4Addr::new(10, 244, 2, 22), 8081),
        (Ipv4Addr::new(10, 244, 3, 23), 8082),
    ];
    let mut dp = Datapath::load("flows")?;
    dp.program_services(&[(VIP, 80, Protocol::Tcp, &backends)]);

    let mut per_backend: BTreeMap<(Ipv4Addr, u16), usize> = BTreeMap::new();
    for flow in 0..300u16 {
        let client = (CLIENT.0, 30_000 + flow);
        let (verdict, first) = dp.run(&PacketSpec::tcp(client, (VIP, 80), TCP_SYN).build())?;
        assert_eq!(verdict, TC_ACT_OK);
        let chosen = backend_of(&first);
        assert!(backends.contains(&chosen), "{chosen:?} is not a backend");
        *per_backend.entry(chosen).or_default() += 1;
        if flow < 20 {
            for _ in 0..10 {
                let (_, next) = dp.run(&PacketSpec::tcp(client, (VIP, 80), TCP_ACK).build())?;
                assert_eq!(backend_of(&next), chosen, "flow {flow} changed backend");
            }
        }
    }
    let used: BTreeSet<_> = per_backend.keys().copied().collect();
    assert_eq!(used.len(), 3, "{per_backend:?}");
    assert!(
        per_backend.values().all(|n| *n > 50),
        "uniform choice: {per_backend:?}"
    );
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn removed_backend_keeps_established_tcp_and_moves_udp_and_new_syns() -> Result<()> {
    require_root()?;
    let (old, new) = (
        (Ipv4Addr::new(10, 244, 1, 31), 8080),
        (Ipv4Addr::new(10, 244, 2, 32), 8080),
    );
    let mut dp = Datapath::load("moves")?;
    dp.program_services(&[
        (VIP, 80, Protocol::Tcp, &[old]),
        (VIP, 53, Protocol::Udp, &[old]),
    ]);
    let tcp_client = (CLIENT.0, 41_000);
    let udp_client = (CLIENT.0, 41_001);
    let (_, out) = dp.run(&PacketSpec::tcp(tcp_client, (VIP, 80), TCP_SYN).build())?;
    assert_eq!(backend_of(&out), old);
    let (_, out) = dp.run(&PacketSpec::udp(udp_client, (VIP, 53)).build())?;
    assert_eq!(backend_of(&out), old);

    dp.program_services(&[
        (VIP, 80, Protocol::Tcp, &[new]),
        (VIP, 53, Protocol::Udp, &[new]),
    ]);
    let (_, out) = dp.run(&PacketSpec::tcp(tcp_client, (VIP, 80), TCP_ACK).build())?;
    assert_eq!(
        backend_of(&out),
        old,
        "an established TCP flow keeps its backend"
    );
    let (_, out) = dp.run(&PacketSpec::udp(udp_client, (VIP, 53)).build())?;
    assert_eq!(
        backend_of(&out),
        new,
        "a UDP flow moves off a removed backend"
    );
    let (_, out) = dp.run(&PacketSpec::tcp(tcp_client, (VIP, 80), TCP_SYN).build())?;
    assert_eq!(
        backend_of(&out),
        new,
        "a new SYN on a reused tuple goes to a live backend"
    );
    Ok(())
}

/// The rewrites that send packets on themselves (FIB lookup, MAC addresses, TTL): SNAT to a
/// remote backend, its reply, and ICMP errors of the SNATed flows, on a node's uplink.
#[test]
#[ignore = "needs root"]
fn fixtures_snat_and_redirect() -> Result<()> {
    require_root()?;
    let (ns, ifindex) = uplink_ns::<PacketSpec>("fib")?;
    let addrs = UplinkAddrs {
        node: Ipv4Addr::new(172, 31, 0, 11),
        client: (Ipv4Addr::new(172, 31, 0, 100), 40_000),
        remote_backend: (Ipv4Addr::new(10, 244, 2, 11), 8080),
        router: Ipv4Addr::new(172, 31, 0, 200),
    };
    svclb_tests::netns::in_netns(&ns.0.clone(), move || {
        let mut dp = Datapath::load("snat")?;
        dp.program(&node_port_plan(&addrs));
        snat_and_redirect::<PacketSpec>(&mut dp, ifindex, &addrs, Hook::Tc)?;
        drop(dp);
        let mut dp = Datapath::load("xdp4")?;
        dp.program(&node_port_plan(&addrs));
        // An uplink the agent does not let XDP finish flows on (--xdp-finish): TC's.
        let syn = PacketSpec::tcp(addrs.client, (addrs.node, 30080), TCP_SYN).build();
        assert_eq!(
            dp.run_xdp_on(ifindex, &syn)?,
            (XDP_PASS, syn),
            "XDP passes what it may not finish, untouched"
        );
        dp.finish_xdp_on(ifindex)?;
        snat_and_redirect::<PacketSpec>(&mut dp, ifindex, &addrs, Hook::Xdp)?;
        drop(dp);
        let mut dp = Datapath::load("share4")?;
        dp.finish_xdp_on(ifindex)?;
        dp.program(&node_port_plan(&addrs));
        xdp_and_tc_share_flows::<PacketSpec>(&mut dp, ifindex, &addrs)?;
        drop(dp);
        let mut dp = Datapath::load("routes4")?;
        dp.finish_xdp_on(ifindex)?;
        dp.program(&node_port_plan(&addrs));
        xdp_caches_routes_by_epoch::<PacketSpec>(&mut dp, ifindex, &addrs)
    })
}
