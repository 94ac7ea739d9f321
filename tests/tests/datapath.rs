//! Datapath fixtures: the real TC program, run by the kernel with BPF_PROG_TEST_RUN on
//! hand-built frames, with maps seeded through the agent's own plan -> maps path. Each case is
//! one record: description, input frame, expected verdict, expected output frame. Expected
//! frames are built from scratch with full checksums, so a byte-exact match also proves the
//! program's incremental checksum updates.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

mod common;

use anyhow::{Context as _, Result};
use common::datapath::Datapath;
use svclb::plan::{Frontend, FrontendKey, FrontendKind, Plan, PlanBackend, Protocol, Scope};
use svclb_tests::{
    packet::{
        L4, PacketSpec, TCP_ACK, TCP_SYN, expected_port_unreachable, expected_reset, icmp_error,
        quote_of, verify_checksums,
    },
    require_root,
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const CLIENT: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 1, 11), 40_000);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const BACKEND: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 2, 11), 8080);
/// ICMP header of a port unreachable (checksum left to `icmp_error`).
const PORT_UNREACHABLE: [u8; 8] = [3, 3, 0, 0, 0, 0, 0, 0];

enum Expect {
    Unchanged,
    Frame(PacketSpec),
    /// A frame built by hand (answers the datapath makes up).
    Bytes(Vec<u8>),
}

struct Case {
    what: &'static str,
    input: Vec<u8>,
    verdict: u32,
    expect: Expect,
}

fn check(dp: &mut Datapath, case: &Case) -> Result<()> {
    let (verdict, out) = dp.run(&case.input).with_context(|| case.what)?;
    assert_eq!(verdict, case.verdict, "{}: verdict", case.what);
    if verdict == TC_ACT_SHOT {
        return Ok(());
    }
    match &case.expect {
        Expect::Unchanged => assert_eq!(out, case.input, "{}: must pass untouched", case.what),
        Expect::Bytes(frame) => assert_eq!(&out, frame, "{}: output frame", case.what),
        Expect::Frame(spec) => {
            assert_eq!(out, spec.build(), "{}: output frame", case.what);
            let sums = verify_checksums(&out);
            assert!(sums.ip_ok, "{}: IP checksum", case.what);
            let zero = spec.l4
                == (L4::Udp {
                    zero_checksum: true,
                });
            assert_eq!(
                sums.udp_zero, zero,
                "{}: UDP zero checksum kept zero",
                case.what
            );
            assert!(zero || sums.l4_ok, "{}: L4 checksum", case.what);
        }
    }
    Ok(())
}

fn loaded(name: &str) -> Result<Datapath> {
    let mut dp = Datapath::load(name)?;
    dp.program_services(&[
        (VIP, 80, Protocol::Tcp, &[BACKEND]),
        (VIP, 53, Protocol::Udp, &[BACKEND]),
        (EMPTY_VIP, 80, Protocol::Tcp, &[]),
        (EMPTY_VIP, 53, Protocol::Udp, &[]),
    ]);
    Ok(dp)
}

#[test]
#[ignore = "needs root"]
fn fixtures_translate_and_pass() -> Result<()> {
    require_root()?;
    let mut dp = loaded("main")?;
    let syn = PacketSpec::tcp(CLIENT, (VIP, 80), TCP_SYN);
    let udp = PacketSpec::udp(CLIENT, (VIP, 53));
    let udp_nosum = PacketSpec {
        l4: L4::Udp {
            zero_checksum: true,
        },
        sport: 40_001,
        ..udp.clone()
    };
    let with_options = PacketSpec {
        // Router alert (4 bytes), then NOP, NOP, NOP, end of options: IHL 7.
        ip_options: vec![0x94, 0x04, 0x00, 0x00, 0x01, 0x01, 0x01, 0x00],
        sport: 40_002,
        ..syn.clone()
    };
    let syn_ack = PacketSpec::tcp(BACKEND, CLIENT, TCP_SYN | TCP_ACK);
    let udp_reply = PacketSpec::udp(BACKEND, CLIENT);

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
    let mut fragment = syn.clone().with_src(CLIENT.0, 40_010).build();
    fragment[14 + 6..14 + 8].copy_from_slice(&[0x00, 0x10]); // offset 128, the last one
    fix_ip_checksum(&mut fragment);
    let icmp = {
        let mut f = syn.build();
        f[14 + 9] = 1;
        fix_ip_checksum(&mut f);
        f
    };

    let cases = [
        Case {
            what: "TCP SYN to a frontend is DNATed to its backend",
            input: syn.build(),
            verdict: TC_ACT_OK,
            expect: Expect::Frame(syn.clone().with_dst(BACKEND.0, BACKEND.1)),
        },
        Case {
            what: "the next packet of the flow goes to the same backend",
            input: PacketSpec::tcp(CLIENT, (VIP, 80), TCP_ACK).build(),
            verdict: TC_ACT_OK,
            expect: Expect::Frame(PacketSpec::tcp(CLIENT, BACKEND, TCP_ACK)),
        },
        Case {
            what: "the backend's reply gets the frontend back as its source",
            input: syn_ack.build(),
            verdict: TC_ACT_OK,
            expect: Expect::Frame(syn_ack.clone().with_src(VIP, 80)),
        },
        Case {
            what: "UDP to a frontend is DNATed",
            input: udp.build(),
            verdict: TC_ACT_OK,
            expect: Expect::Frame(udp.clone().with_dst(BACKEND.0, BACKEND.1)),
        },
        Case {
            what: "a UDP reply is reverse NATed",
            input: udp_reply.build(),
            verdict: TC_ACT_OK,
            expect: Expect::Frame(udp_reply.clone().with_src(VIP, 53)),
        },
        Case {
            what: "a zero UDP checksum stays zero",
            input: udp_nosum.build(),
            verdict: TC_ACT_OK,
            expect: Expect::Frame(udp_nosum.clone().with_dst(BACKEND.0, BACKEND.1)),
        },
        Case {
            what: "IPv4 options (IHL 7) are skipped to find the ports",
            input: with_options.build(),
            verdict: TC_ACT_OK,
            expect: Expect::Frame(with_options.clone().with_dst(BACKEND.0, BACKEND.1)),
        },
        Case {
            what: "traffic to another address passes untouched",
            input: PacketSpec::tcp(CLIENT, (Ipv4Addr::new(10, 96, 0, 99), 80), TCP_SYN).build(),
            verdict: TC_ACT_OK,
            expect: Expect::Unchanged,
        },
        Case {
            what: "another port of the frontend address passes untouched",
            input: PacketSpec::tcp(CLIENT, (VIP, 81), TCP_SYN).build(),
            verdict: TC_ACT_OK,
            expect: Expect::Unchanged,
        },
        Case {
            what: "UDP to a TCP-only port passes untouched",
            input: PacketSpec::udp(CLIENT, (VIP, 80)).build(),
            verdict: TC_ACT_OK,
            expect: Expect::Unchanged,
        },
        Case {
            what: "ARP passes untouched",
            input: arp,
            verdict: TC_ACT_OK,
            expect: Expect::Unchanged,
        },
        Case {
            what: "IPv6 passes untouched",
            input: ipv6,
            verdict: TC_ACT_OK,
            expect: Expect::Unchanged,
        },
        // BPF_PROG_TEST_RUN refuses IPv4 frames shorter than an IP header, so truncation is
        // shown with headers that announce more than the frame holds.
        Case {
            what: "an IHL pointing past the end of the frame passes untouched",
            input: bad_ihl(&syn, 15),
            verdict: TC_ACT_OK,
            expect: Expect::Unchanged,
        },
        Case {
            what: "an IHL below 5 (malformed) passes untouched",
            input: bad_ihl(&syn, 4),
            verdict: TC_ACT_OK,
            expect: Expect::Unchanged,
        },
        Case {
            what: "a frame cut inside the TCP header passes untouched",
            input: syn.build()[..14 + 20 + 10].to_vec(),
            verdict: TC_ACT_OK,
            expect: Expect::Unchanged,
        },
        Case {
            what: "a frame cut before the options end passes untouched",
            input: with_options.build()[..14 + 24].to_vec(),
            verdict: TC_ACT_OK,
            expect: Expect::Unchanged,
        },
        Case {
            what: "a datagram with an IP total length of 0 (BIG TCP's mark, malformed on UDP) \
                   passes untouched",
            input: {
                let mut f = udp.clone().with_src(CLIENT.0, 40_011).build();
                f[16..18].copy_from_slice(&[0, 0]);
                fix_ip_checksum(&mut f);
                f
            },
            verdict: TC_ACT_OK,
            expect: Expect::Unchanged,
        },
        Case {
            what: "a later fragment of a datagram whose first fragment was not seen passes \
                   untouched",
            input: fragment,
            verdict: TC_ACT_OK,
            expect: Expect::Unchanged,
        },
        Case {
            what: "ICMP to a frontend address passes untouched",
            input: icmp,
            verdict: TC_ACT_OK,
            expect: Expect::Unchanged,
        },
        Case {
            what: "a bare Ethernet header passes untouched",
            input: vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x88, 0xcc],
            verdict: TC_ACT_OK,
            expect: Expect::Unchanged,
        },
        Case {
            what: "a SYN to a frontend without endpoints gets a RST",
            input: PacketSpec::tcp(CLIENT, (EMPTY_VIP, 80), TCP_SYN).build(),
            verdict: TC_ACT_REDIRECT,
            expect: Expect::Bytes(expected_reset(&PacketSpec::tcp(
                CLIENT,
                (EMPTY_VIP, 80),
                TCP_SYN,
            ))),
        },
        Case {
            what: "a datagram to a frontend without endpoints gets ICMP port unreachable",
            input: PacketSpec::udp(CLIENT, (EMPTY_VIP, 53)).build(),
            verdict: TC_ACT_REDIRECT,
            expect: Expect::Bytes(expected_port_unreachable(&PacketSpec::udp(
                CLIENT,
                (EMPTY_VIP, 53),
            ))),
        },
        Case {
            what: "a non-SYN segment to a frontend without endpoints is dropped",
            input: PacketSpec::tcp(CLIENT, (EMPTY_VIP, 80), TCP_ACK).build(),
            verdict: TC_ACT_SHOT,
            expect: Expect::Unchanged,
        },
    ];
    for case in &cases {
        check(&mut dp, case)?;
    }

    // ICMP errors about the flows above. The quoted TCP/UDP checksum stays as it was.
    const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const FRAG_NEEDED_1000: [u8; 8] = [3, 4, 0, 0, 0, 0, 0x03, 0xe8];
    let to_backend = quote_of(&udp.clone().with_dst(BACKEND.0, BACKEND.1), 8);
    let reply_out = quote_of(&syn_ack.clone().with_src(VIP, 80), 20);
    let stranger = quote_of(&PacketSpec::udp((CLIENT.0, 41_999), BACKEND), 8);
    let icmp_cases = [
        Case {
            what: "a port unreachable from the backend reaches the client from the frontend, \
                   quoting the datagram the client sent",
            input: icmp_error(BACKEND.0, CLIENT.0, PORT_UNREACHABLE, &to_backend),
            verdict: TC_ACT_OK,
            expect: Expect::Bytes(icmp_error(
                VIP,
                CLIENT.0,
                PORT_UNREACHABLE,
                &with_l4_checksum_of(quote_of(&udp, 8), &to_backend),
            )),
        },
        Case {
            what: "a fragmentation-needed from a router about a reply reaches the backend, \
                   quoting the segment the backend sent",
            input: icmp_error(ROUTER, VIP, FRAG_NEEDED_1000, &reply_out),
            verdict: TC_ACT_OK,
            expect: Expect::Bytes(icmp_error(
                ROUTER,
                BACKEND.0,
                FRAG_NEEDED_1000,
                &with_l4_checksum_of(quote_of(&syn_ack, 20), &reply_out),
            )),
        },
        Case {
            what: "an ICMP error about an untracked flow passes untouched",
            input: icmp_error(BACKEND.0, CLIENT.0, PORT_UNREACHABLE, &stranger),
            verdict: TC_ACT_OK,
            expect: Expect::Unchanged,
        },
    ];
    for case in &icmp_cases {
        check(&mut dp, case)?;
    }
    Ok(())
}

/// `quote` with the TCP or UDP checksum of `original` (a quote of the same packet before
/// translation): what a translated quote keeps.
fn with_l4_checksum_of(mut quote: Vec<u8>, original: &[u8]) -> Vec<u8> {
    let at = 20 + if quote[9] == 6 { 16 } else { 6 };
    quote[at..at + 2].copy_from_slice(&original[at..at + 2]);
    quote
}

/// `spec`'s frame cut to 40 bytes of IP with the IHL field set to `ihl` words.
fn bad_ihl(spec: &PacketSpec, ihl: u8) -> Vec<u8> {
    let mut frame = spec.build()[..14 + 40].to_vec();
    frame[14] = 0x40 | ihl;
    fix_ip_checksum(&mut frame);
    frame
}

fn fix_ip_checksum(frame: &mut [u8]) {
    frame[24..26].copy_from_slice(&[0, 0]);
    let ihl = (usize::from(frame[14] & 0x0f) * 4).clamp(20, frame.len() - 14);
    let sum = svclb_tests::packet::checksum(&[&frame[14..14 + ihl]]);
    frame[24..26].copy_from_slice(&sum.to_be_bytes());
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

/// A namespace for one fixture, removed on drop.
struct FixtureNs(String);

impl Drop for FixtureNs {
    fn drop(&mut self) {
        let _ = svclb_tests::netns::delete(&self.0);
    }
}

const UP0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const NEXT_HOP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0c];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x64];
const NODE: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 11);
const EXT_CLIENT: (Ipv4Addr, u16) = (Ipv4Addr::new(172, 31, 0, 100), 40_000);
const REMOTE_BACKEND: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 2, 11), 8080);

/// A node's uplink for the FIB lookups of the redirecting rewrites: `up0` (172.31.0.11/24,
/// MAC ..:0b, forwarding on), the other node at 172.31.0.12 (MAC ..:0c) routing 10.244.2.0/24,
/// the external client at 172.31.0.100 (MAC ..:64), both neighbours resolved.
fn uplink_ns() -> Result<(FixtureNs, u32)> {
    use svclb_tests::netns::{ip, ip_in, sysctl_in};
    let ns = FixtureNs(format!("svl{}x-fib", std::process::id()));
    ip(&["netns", "add", &ns.0])?;
    let n = ns.0.as_str();
    sysctl_in(n, "net.ipv4.ip_forward", "1")?;
    ip_in(
        n,
        &[
            "link",
            "add",
            "up0",
            "address",
            "02:00:00:00:00:0b",
            "type",
            "veth",
            "peer",
            "name",
            "up1",
        ],
    )?;
    ip_in(n, &["addr", "add", "172.31.0.11/24", "dev", "up0"])?;
    ip_in(n, &["link", "set", "up0", "up"])?;
    ip_in(n, &["link", "set", "up1", "up"])?;
    for (addr, mac) in [
        ("172.31.0.12", "02:00:00:00:00:0c"),
        ("172.31.0.100", "02:00:00:00:00:64"),
    ] {
        ip_in(
            n,
            &[
                "neigh",
                "replace",
                addr,
                "lladdr",
                mac,
                "dev",
                "up0",
                "nud",
                "permanent",
            ],
        )?;
    }
    ip_in(n, &["route", "add", "10.244.2.0/24", "via", "172.31.0.12"])?;
    let out = svclb_tests::netns::run("ip", &["-n", n, "-o", "link", "show", "up0"])?;
    let text = String::from_utf8(out.stdout)?;
    let index = text
        .split(':')
        .next()
        .context("no ifindex")?
        .trim()
        .parse()?;
    Ok((ns, index))
}

/// `frame` as the datapath forwards it: new MAC addresses, TTL decremented, IP checksum
/// recomputed from scratch.
fn forwarded(mut frame: Vec<u8>, dmac: [u8; 6], smac: [u8; 6]) -> Vec<u8> {
    frame[0..6].copy_from_slice(&dmac);
    frame[6..12].copy_from_slice(&smac);
    frame[14 + 8] -= 1;
    fix_ip_checksum(&mut frame);
    frame
}

/// The source port a SNATed frame left with, checked to be in the NAT's range.
fn snat_port(out: &[u8]) -> u16 {
    let port = u16::from_be_bytes([out[34], out[35]]);
    assert!((61_000..=65_535).contains(&port), "SNAT port {port}");
    port
}

fn node_port_plan() -> Plan {
    let mut plan = Plan::default();
    for (port, protocol) in [(30080, Protocol::Tcp), (30053, Protocol::Udp)] {
        plan.frontends.insert(
            FrontendKey::new(IpAddr::V4(NODE), port, protocol),
            Frontend::new(
                "default/web",
                FrontendKind::NodePort,
                Scope::External,
                vec![PlanBackend {
                    node: Some("n2".into()),
                    ..PlanBackend::remote(IpAddr::V4(REMOTE_BACKEND.0), REMOTE_BACKEND.1)
                }],
            ),
        );
    }
    plan
}

/// The rewrites that send packets on themselves (FIB lookup, MAC addresses, TTL): SNAT to a
/// remote backend, its reply, and ICMP errors of the SNATed flows, on a node's uplink.
#[test]
#[ignore = "needs root"]
fn fixtures_snat_and_redirect() -> Result<()> {
    require_root()?;
    let (ns, ifindex) = uplink_ns()?;
    svclb_tests::netns::in_netns(&ns.0.clone(), move || {
        let mut dp = loaded("snat")?;
        dp.program(&node_port_plan());
        let mut run = |what: &str, input: Vec<u8>| -> Result<Vec<u8>> {
            let (verdict, out) = dp.run_uplink_on(ifindex, &input).context(what.to_owned())?;
            assert_eq!(verdict, TC_ACT_REDIRECT, "{what}: verdict");
            Ok(out)
        };
        let to_remote = |src: (Ipv4Addr, u16), frame: PacketSpec| {
            forwarded(frame.with_src(src.0, src.1).build(), NEXT_HOP_MAC, UP0_MAC)
        };

        let syn = PacketSpec::tcp(EXT_CLIENT, (NODE, 30080), TCP_SYN);
        let out = run("a SYN to a NodePort with a remote backend", syn.build())?;
        let port = snat_port(&out);
        let expect = to_remote(
            (NODE, port),
            syn.clone().with_dst(REMOTE_BACKEND.0, REMOTE_BACKEND.1),
        );
        assert_eq!(out, expect, "SYN: SNAT to the node and DNAT to the backend");

        let ack = PacketSpec::tcp(EXT_CLIENT, (NODE, 30080), TCP_ACK);
        let out = run("the next segment", ack.build())?;
        let expect = to_remote(
            (NODE, port),
            ack.with_dst(REMOTE_BACKEND.0, REMOTE_BACKEND.1),
        );
        assert_eq!(out, expect, "the flow keeps its SNAT port and backend");

        let syn_ack = PacketSpec::tcp(REMOTE_BACKEND, (NODE, port), TCP_SYN | TCP_ACK);
        let client_sees = PacketSpec::tcp((NODE, 30080), EXT_CLIENT, TCP_SYN | TCP_ACK);
        let out = run("the backend's reply", syn_ack.build())?;
        assert_eq!(
            out,
            forwarded(client_sees.build(), CLIENT_MAC, UP0_MAC),
            "reply: from the NodePort to the client"
        );

        const ROUTER: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 200);
        const FRAG_NEEDED: [u8; 8] = [3, 4, 0, 0, 0, 0, 0x05, 0x00];
        let reply_out = quote_of(&client_sees, 20);
        let out = run(
            "a fragmentation-needed about the reply",
            icmp_error(ROUTER, NODE, FRAG_NEEDED, &reply_out),
        )?;
        let expect = icmp_error(
            ROUTER,
            REMOTE_BACKEND.0,
            FRAG_NEEDED,
            &with_l4_checksum_of(quote_of(&syn_ack, 20), &reply_out),
        );
        assert_eq!(
            out,
            forwarded(expect, NEXT_HOP_MAC, UP0_MAC),
            "fragmentation-needed: to the backend, quoting what it sent"
        );

        let udp = PacketSpec::udp((EXT_CLIENT.0, 40_001), (NODE, 30053));
        let out = run(
            "a datagram to a NodePort with a remote backend",
            udp.build(),
        )?;
        let port = snat_port(&out);
        let sent = udp
            .clone()
            .with_dst(REMOTE_BACKEND.0, REMOTE_BACKEND.1)
            .with_src(NODE, port);
        assert_eq!(
            out,
            forwarded(sent.build(), NEXT_HOP_MAC, UP0_MAC),
            "datagram: SNAT and DNAT"
        );
        let quoted = quote_of(&sent, 8);
        let out = run(
            "a port unreachable from the backend",
            icmp_error(REMOTE_BACKEND.0, NODE, PORT_UNREACHABLE, &quoted),
        )?;
        let expect = icmp_error(
            NODE,
            EXT_CLIENT.0,
            PORT_UNREACHABLE,
            &with_l4_checksum_of(quote_of(&udp, 8), &quoted),
        );
        assert_eq!(
            out,
            forwarded(expect, CLIENT_MAC, UP0_MAC),
            "port unreachable: from the NodePort to the client, quoting its datagram"
        );
        Ok(())
    })
}
