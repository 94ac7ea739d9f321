//! IPv6 datapath fixtures: the real TC program under BPF_PROG_TEST_RUN on hand-built IPv6
//! frames, maps seeded through the agent's plan -> maps path. Expected frames are built from
//! scratch with checksums over the IPv6 pseudo-header, so a byte-exact match also proves the
//! program's incremental checksum updates; every translated frame's L4 checksum is verified
//! on its own as well.

use std::net::{IpAddr, Ipv6Addr};

mod common;

use anyhow::{Context as _, Result};
use common::datapath::Datapath;
use svclb::plan::Protocol;
use svclb_tests::{
    packet::{L4, TCP_ACK, TCP_SYN},
    packet6::{
        Ext, NEXTHDR_DEST, NEXTHDR_HOP, NEXTHDR_ROUTING, Packet6, expected_port_unreachable6,
        expected_reset6, icmp6_error, l4_checksum_ok, quote_of6,
    },
    require_root,
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

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
const EMPTY_VIP: Ipv6Addr = v6([0xfd00, 0x96, 0, 0, 0, 0, 0, 0x11]);
const BACKEND: (Ipv6Addr, u16) = (v6([0xfd00, 0x244, 2, 0, 0, 0, 0, 0x11]), 8080);
const ROUTER: Ipv6Addr = v6([0xfd00, 0, 0, 0, 0, 0, 0, 1]);
/// ICMPv6 destination unreachable, port unreachable.
const PORT_UNREACHABLE: [u8; 8] = [1, 4, 0, 0, 0, 0, 0, 0];
/// ICMPv6 packet too big, MTU 1280.
const PACKET_TOO_BIG_1280: [u8; 8] = [2, 0, 0, 0, 0, 0, 0x05, 0x00];

enum Expect {
    Unchanged,
    /// A translated packet: compared byte for byte, its L4 checksum verified.
    Frame(Packet6),
    /// A frame built by hand (answers and translated ICMPv6 errors).
    Bytes(Vec<u8>),
    /// A frame with no L4 header to verify (a later fragment), compared byte for byte.
    Headless(Vec<u8>),
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
        Expect::Bytes(frame) => {
            assert_eq!(&out, frame, "{}: output frame", case.what);
            assert!(l4_checksum_ok(&out), "{}: checksum", case.what);
        }
        Expect::Headless(frame) => assert_eq!(&out, frame, "{}: output frame", case.what),
        Expect::Frame(spec) => {
            assert_eq!(out, spec.build(), "{}: output frame", case.what);
            assert!(l4_checksum_ok(&out), "{}: L4 checksum", case.what);
        }
    }
    Ok(())
}

/// `quote` with the TCP or UDP checksum of `original` (the same packet's quote before
/// translation): what a translated quote keeps.
fn with_l4_checksum_of(mut quote: Vec<u8>, original: &[u8]) -> Vec<u8> {
    let at = 40 + if quote[6] == 6 { 16 } else { 6 };
    quote[at..at + 2].copy_from_slice(&original[at..at + 2]);
    quote
}

#[test]
#[ignore = "needs root"]
fn ipv6_fixtures_translate_answer_and_pass() -> Result<()> {
    require_root()?;
    let mut dp = Datapath::load("v6")?;
    let backends = vec![(IpAddr::V6(BACKEND.0), BACKEND.1)];
    dp.program_cluster_ips(&[
        (IpAddr::V6(VIP), 80, Protocol::Tcp, backends.clone()),
        (IpAddr::V6(VIP), 53, Protocol::Udp, backends),
        (IpAddr::V6(EMPTY_VIP), 80, Protocol::Tcp, Vec::new()),
        (IpAddr::V6(EMPTY_VIP), 53, Protocol::Udp, Vec::new()),
    ]);

    let syn = Packet6::tcp(CLIENT, (VIP, 80), TCP_SYN);
    let udp = Packet6::udp(CLIENT, (VIP, 53));
    let syn_ack = Packet6::tcp(BACKEND, CLIENT, TCP_SYN | TCP_ACK);
    let udp_reply = Packet6::udp(BACKEND, CLIENT);
    let with_options = Packet6 {
        ext: vec![
            Ext::Options(NEXTHDR_HOP),
            Ext::Options(NEXTHDR_ROUTING),
            Ext::Options(NEXTHDR_DEST),
        ],
        sport: 40_002,
        ..syn.clone()
    };
    let first_fragment = Packet6 {
        ext: vec![Ext::Fragment {
            offset: 0,
            more: true,
            id: 7,
        }],
        sport: 40_003,
        ..udp.clone()
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
    let udp_nosum = Packet6 {
        l4: L4::Udp {
            zero_checksum: true,
        },
        sport: 40_004,
        ..udp.clone()
    };
    let echo = {
        let mut message = vec![128, 0, 0, 0, 0, 1, 0, 1];
        message.extend_from_slice(b"ping");
        let csum = svclb_tests::packet6::l4_checksum6(CLIENT.0, VIP, 58, &message).to_be_bytes();
        message[2..4].copy_from_slice(&csum);
        let mut frame = syn.build()[..14 + 40].to_vec();
        frame[14 + 4..14 + 6].copy_from_slice(&(message.len() as u16).to_be_bytes());
        frame[14 + 6] = 58;
        frame.extend_from_slice(&message);
        frame
    };

    let cases = [
        Case {
            what: "TCP SYN to an IPv6 frontend is DNATed to its backend",
            input: syn.build(),
            verdict: TC_ACT_OK,
            expect: Expect::Frame(syn.clone().with_dst(BACKEND.0, BACKEND.1)),
        },
        Case {
            what: "the next packet of the flow goes to the same backend",
            input: Packet6::tcp(CLIENT, (VIP, 80), TCP_ACK).build(),
            verdict: TC_ACT_OK,
            expect: Expect::Frame(Packet6::tcp(CLIENT, BACKEND, TCP_ACK)),
        },
        Case {
            what: "the backend's reply gets the frontend back as its source",
            input: syn_ack.build(),
            verdict: TC_ACT_OK,
            expect: Expect::Frame(syn_ack.clone().with_src(VIP, 80)),
        },
        Case {
            what: "UDP over IPv6 is DNATed (its checksum is mandatory and stays valid)",
            input: udp.build(),
            verdict: TC_ACT_OK,
            expect: Expect::Frame(udp.clone().with_dst(BACKEND.0, BACKEND.1)),
        },
        Case {
            what: "a UDP reply over IPv6 is reverse NATed",
            input: udp_reply.build(),
            verdict: TC_ACT_OK,
            expect: Expect::Frame(udp_reply.clone().with_src(VIP, 53)),
        },
        Case {
            what: "hop-by-hop, routing and destination-options headers are walked to find the \
                   ports",
            input: with_options.build(),
            verdict: TC_ACT_OK,
            expect: Expect::Frame(with_options.clone().with_dst(BACKEND.0, BACKEND.1)),
        },
        Case {
            what: "a first fragment (offset 0) is translated",
            input: first_fragment.build(),
            verdict: TC_ACT_OK,
            expect: Expect::Frame(first_fragment.clone().with_dst(BACKEND.0, BACKEND.1)),
        },
        Case {
            what: "a later fragment of it gets the first one's addresses, nothing else",
            input: later_fragment.clone(),
            verdict: TC_ACT_OK,
            expect: Expect::Headless({
                let mut frame = later_fragment.clone();
                frame[14 + 24..14 + 40].copy_from_slice(&BACKEND.0.octets());
                frame
            }),
        },
        Case {
            what: "a later fragment of another datagram passes untouched",
            input: {
                let mut frame = later_fragment;
                frame[14 + 44..14 + 48].copy_from_slice(&8u32.to_be_bytes());
                frame
            },
            verdict: TC_ACT_OK,
            expect: Expect::Unchanged,
        },
        Case {
            what: "UDP with a zero checksum (invalid over IPv6) passes untouched",
            input: udp_nosum.build(),
            verdict: TC_ACT_OK,
            expect: Expect::Unchanged,
        },
        Case {
            what: "a datagram with an IPv6 payload length of 0 (BIG TCP's mark, malformed on \
                   UDP) passes untouched",
            input: {
                let mut f = Packet6 {
                    sport: 40_005,
                    ..udp.clone()
                }
                .build();
                f[14 + 4..14 + 6].copy_from_slice(&[0, 0]);
                f
            },
            verdict: TC_ACT_OK,
            expect: Expect::Unchanged,
        },
        Case {
            what: "an ICMPv6 echo to a frontend passes untouched",
            input: echo,
            verdict: TC_ACT_OK,
            expect: Expect::Unchanged,
        },
        Case {
            what: "traffic to another IPv6 address passes untouched",
            input: Packet6::tcp(CLIENT, (BACKEND.0, 80), TCP_SYN).build(),
            verdict: TC_ACT_OK,
            expect: Expect::Unchanged,
        },
        Case {
            what: "a frame cut inside the TCP header passes untouched",
            input: syn.build()[..14 + 40 + 10].to_vec(),
            verdict: TC_ACT_OK,
            expect: Expect::Unchanged,
        },
        Case {
            what: "a SYN to an IPv6 frontend without endpoints gets a RST",
            input: Packet6::tcp(CLIENT, (EMPTY_VIP, 80), TCP_SYN).build(),
            verdict: TC_ACT_REDIRECT,
            expect: Expect::Bytes(expected_reset6(&Packet6::tcp(
                CLIENT,
                (EMPTY_VIP, 80),
                TCP_SYN,
            ))),
        },
        Case {
            what: "a datagram to an IPv6 frontend without endpoints gets ICMPv6 port unreachable",
            input: Packet6::udp(CLIENT, (EMPTY_VIP, 53)).build(),
            verdict: TC_ACT_REDIRECT,
            expect: Expect::Bytes(expected_port_unreachable6(&Packet6::udp(
                CLIENT,
                (EMPTY_VIP, 53),
            ))),
        },
        Case {
            what: "a non-SYN segment to an IPv6 frontend without endpoints is dropped",
            input: Packet6::tcp(CLIENT, (EMPTY_VIP, 80), TCP_ACK).build(),
            verdict: TC_ACT_SHOT,
            expect: Expect::Unchanged,
        },
    ];
    for case in &cases {
        check(&mut dp, case)?;
    }

    // ICMPv6 errors about the flows above. The quoted TCP/UDP checksum stays as it was.
    let to_backend = quote_of6(&udp.clone().with_dst(BACKEND.0, BACKEND.1), 8);
    let reply_out = quote_of6(&syn_ack.clone().with_src(VIP, 80), 20);
    let stranger = quote_of6(&Packet6::udp((CLIENT.0, 41_999), BACKEND), 8);
    let icmp_cases = [
        Case {
            what: "an ICMPv6 port unreachable from the backend reaches the client from the \
                   frontend, quoting the datagram the client sent",
            input: icmp6_error(BACKEND.0, CLIENT.0, PORT_UNREACHABLE, &to_backend),
            verdict: TC_ACT_OK,
            expect: Expect::Bytes(icmp6_error(
                VIP,
                CLIENT.0,
                PORT_UNREACHABLE,
                &with_l4_checksum_of(quote_of6(&udp, 8), &to_backend),
            )),
        },
        Case {
            what: "a packet too big from a router about a reply reaches the backend, quoting \
                   the segment the backend sent",
            input: icmp6_error(ROUTER, VIP, PACKET_TOO_BIG_1280, &reply_out),
            verdict: TC_ACT_OK,
            expect: Expect::Bytes(icmp6_error(
                ROUTER,
                BACKEND.0,
                PACKET_TOO_BIG_1280,
                &with_l4_checksum_of(quote_of6(&syn_ack, 20), &reply_out),
            )),
        },
        Case {
            what: "an ICMPv6 error about an untracked flow passes untouched",
            input: icmp6_error(BACKEND.0, CLIENT.0, PORT_UNREACHABLE, &stranger),
            verdict: TC_ACT_OK,
            expect: Expect::Unchanged,
        },
    ];
    for case in &icmp_cases {
        check(&mut dp, case)?;
    }
    Ok(())
}

struct FixtureNs(String);

impl Drop for FixtureNs {
    fn drop(&mut self) {
        let _ = svclb_tests::netns::delete(&self.0);
    }
}

const UP0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const NEXT_HOP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0c];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x64];
const NODE: Ipv6Addr = v6([0xfd00, 0x31, 0, 0, 0, 0, 0, 0x11]);
const EXT_CLIENT: (Ipv6Addr, u16) = (v6([0xfd00, 0x31, 0, 0, 0, 0, 0, 0x100]), 40_000);
const REMOTE_BACKEND: (Ipv6Addr, u16) = (v6([0xfd00, 0x244, 2, 0, 0, 0, 0, 0x11]), 8080);

/// A node's uplink for the FIB lookups of the redirecting rewrites, over IPv6: `up0`
/// (fd00:31::11/64, MAC ..:0b, forwarding on), the other node at fd00:31::12 (MAC ..:0c)
/// routing fd00:244:2::/64, the external client at fd00:31::100 (MAC ..:64), both neighbours
/// resolved.
fn uplink_ns() -> Result<(FixtureNs, u32)> {
    use svclb_tests::netns::{ip, ip_in, sysctl_in};
    let ns = FixtureNs(format!("svl{}x-fib6", std::process::id()));
    ip(&["netns", "add", &ns.0])?;
    let n = ns.0.as_str();
    sysctl_in(n, "net.ipv6.conf.all.forwarding", "1")?;
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
    ip_in(
        n,
        &["-6", "addr", "add", "fd00:31::11/64", "dev", "up0", "nodad"],
    )?;
    ip_in(n, &["link", "set", "up0", "up"])?;
    ip_in(n, &["link", "set", "up1", "up"])?;
    for (addr, mac) in [
        ("fd00:31::12", "02:00:00:00:00:0c"),
        ("fd00:31::100", "02:00:00:00:00:64"),
    ] {
        ip_in(
            n,
            &[
                "-6",
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
    ip_in(
        n,
        &[
            "-6",
            "route",
            "add",
            "fd00:244:2::/64",
            "via",
            "fd00:31::12",
        ],
    )?;
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

/// `frame` as the datapath forwards it: new MAC addresses, hop limit decremented (IPv6 has
/// no header checksum to follow it).
fn forwarded(mut frame: Vec<u8>, dmac: [u8; 6], smac: [u8; 6]) -> Vec<u8> {
    frame[0..6].copy_from_slice(&dmac);
    frame[6..12].copy_from_slice(&smac);
    frame[14 + 7] -= 1;
    frame
}

/// The source port a SNATed frame left with, checked to be in the NAT's range.
fn snat_port(out: &[u8]) -> u16 {
    let port = u16::from_be_bytes([out[54], out[55]]);
    assert!((61_000..=65_535).contains(&port), "SNAT port {port}");
    port
}

/// The rewrites that send IPv6 packets on themselves (FIB lookup, MAC addresses, hop limit):
/// SNAT to a remote backend, its reply, and ICMPv6 errors of the SNATed flows.
#[test]
#[ignore = "needs root"]
fn ipv6_fixtures_snat_and_redirect() -> Result<()> {
    use svclb::plan::{Frontend, FrontendKey, FrontendKind, Plan, PlanBackend, Scope};
    require_root()?;
    let (ns, ifindex) = uplink_ns()?;
    svclb_tests::netns::in_netns(&ns.0.clone(), move || {
        let mut dp = Datapath::load("snat6")?;
        let mut plan = Plan::default();
        for (port, protocol) in [(30080, Protocol::Tcp), (30053, Protocol::Udp)] {
            plan.frontends.insert(
                FrontendKey::new(IpAddr::V6(NODE), port, protocol),
                Frontend::new(
                    "default/web",
                    FrontendKind::NodePort,
                    Scope::External,
                    vec![PlanBackend {
                        node: Some("n2".into()),
                        ..PlanBackend::remote(IpAddr::V6(REMOTE_BACKEND.0), REMOTE_BACKEND.1)
                    }],
                ),
            );
        }
        dp.program(&plan);
        let mut run = |what: &str, input: Vec<u8>| -> Result<Vec<u8>> {
            let (verdict, out) = dp.run_uplink_on(ifindex, &input).context(what.to_owned())?;
            assert_eq!(verdict, TC_ACT_REDIRECT, "{what}: verdict");
            assert!(l4_checksum_ok(&out), "{what}: checksum");
            Ok(out)
        };

        let syn = Packet6::tcp(EXT_CLIENT, (NODE, 30080), TCP_SYN);
        let out = run(
            "a SYN to an IPv6 NodePort with a remote backend",
            syn.build(),
        )?;
        let port = snat_port(&out);
        let sent = syn
            .clone()
            .with_dst(REMOTE_BACKEND.0, REMOTE_BACKEND.1)
            .with_src(NODE, port);
        assert_eq!(
            out,
            forwarded(sent.build(), NEXT_HOP_MAC, UP0_MAC),
            "SYN: SNAT to the node and DNAT to the backend"
        );

        let ack = Packet6::tcp(EXT_CLIENT, (NODE, 30080), TCP_ACK);
        let out = run("the next segment", ack.build())?;
        let sent = ack
            .with_dst(REMOTE_BACKEND.0, REMOTE_BACKEND.1)
            .with_src(NODE, port);
        assert_eq!(
            out,
            forwarded(sent.build(), NEXT_HOP_MAC, UP0_MAC),
            "the flow keeps its SNAT port and backend"
        );

        let syn_ack = Packet6::tcp(REMOTE_BACKEND, (NODE, port), TCP_SYN | TCP_ACK);
        let client_sees = Packet6::tcp((NODE, 30080), EXT_CLIENT, TCP_SYN | TCP_ACK);
        let out = run("the backend's reply", syn_ack.build())?;
        assert_eq!(
            out,
            forwarded(client_sees.build(), CLIENT_MAC, UP0_MAC),
            "reply: from the NodePort to the client"
        );

        let router = v6([0xfd00, 0x31, 0, 0, 0, 0, 0, 0x200]);
        let reply_out = quote_of6(&client_sees, 20);
        let out = run(
            "a packet too big about the reply",
            icmp6_error(router, NODE, PACKET_TOO_BIG_1280, &reply_out),
        )?;
        let expect = icmp6_error(
            router,
            REMOTE_BACKEND.0,
            PACKET_TOO_BIG_1280,
            &with_l4_checksum_of(quote_of6(&syn_ack, 20), &reply_out),
        );
        assert_eq!(
            out,
            forwarded(expect, NEXT_HOP_MAC, UP0_MAC),
            "packet too big: to the backend, quoting what it sent"
        );

        let udp = Packet6::udp((EXT_CLIENT.0, 40_001), (NODE, 30053));
        let out = run(
            "a datagram to an IPv6 NodePort with a remote backend",
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
        let quoted = quote_of6(&sent, 8);
        let out = run(
            "a port unreachable from the backend",
            icmp6_error(REMOTE_BACKEND.0, NODE, PORT_UNREACHABLE, &quoted),
        )?;
        let expect = icmp6_error(
            NODE,
            EXT_CLIENT.0,
            PORT_UNREACHABLE,
            &with_l4_checksum_of(quote_of6(&udp, 8), &quoted),
        );
        assert_eq!(
            out,
            forwarded(expect, CLIENT_MAC, UP0_MAC),
            "port unreachable: from the NodePort to the client, quoting its datagram"
        );
        Ok(())
    })
}
