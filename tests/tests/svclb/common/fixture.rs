//! Datapath fixtures as records (description, input frame, expected verdict, expected output
//! frame), run through the real TC program by BPF_PROG_TEST_RUN, and the fixtures that have
//! the same shape in both families, written once over [`TestPacket`]. Every case of a table
//! is run and every failing case reported by its description, so one broken case does not
//! hide the others.

use std::net::IpAddr;

use anyhow::{Context as _, Result, bail};
use svclb::plan::{Frontend, FrontendKey, FrontendKind, Plan, PlanBackend, Protocol, Scope};
use svclb_tests::{
    family::{TestPacket, UplinkAddressing},
    packet::{TCP_ACK, TCP_SYN},
};

use super::datapath::Datapath;

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// Which program a fixture runs on a node's uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// The uplink's TC program: it translates everything, and redirects what it sends on.
    Tc,
    /// The XDP program: it finishes flows to remote backends (`XDP_TX`) and passes ICMP
    /// errors to TC untouched.
    Xdp,
}

impl Hook {
    /// Runs this hook's program once on `frame`, arriving on device `ifindex`.
    pub fn run(self, dp: &mut Datapath, ifindex: u32, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        match self {
            Self::Tc => dp.run_uplink_on(ifindex, frame),
            Self::Xdp => dp.run_xdp_on(ifindex, frame),
        }
    }

    /// The verdict of a packet the program translated and sends on itself.
    pub fn sent(self) -> u32 {
        match self {
            Self::Tc => TC_ACT_REDIRECT,
            Self::Xdp => XDP_TX,
        }
    }
}

pub enum Expect<P> {
    Unchanged,
    /// A translated packet: compared byte for byte, its checksums verified from scratch.
    Frame(P),
    /// A frame the datapath made up (an answer, a translated ICMP error), built by hand.
    Bytes(Vec<u8>),
    /// A frame with no L4 header to verify (a later fragment), compared byte for byte.
    Headless(Vec<u8>),
}

pub struct Case<P> {
    pub what: String,
    pub input: Vec<u8>,
    pub verdict: u32,
    pub expect: Expect<P>,
}

impl<P> Case<P> {
    pub fn new(what: impl Into<String>, input: Vec<u8>, verdict: u32, expect: Expect<P>) -> Self {
        Self {
            what: what.into(),
            input,
            verdict,
            expect,
        }
    }

    /// A frame that must pass untouched.
    pub fn passes(what: impl Into<String>, input: Vec<u8>) -> Self {
        Self::new(what, input, TC_ACT_OK, Expect::Unchanged)
    }
}

/// What is wrong with the program's answer to `case`, if anything.
fn mismatch<P: TestPacket>(case: &Case<P>, verdict: u32, out: &[u8]) -> Option<String> {
    if verdict != case.verdict {
        return Some(format!("verdict {verdict}, expected {}", case.verdict));
    }
    if verdict == TC_ACT_SHOT {
        return None;
    }
    let (expected, checked) = match &case.expect {
        Expect::Unchanged => (case.input.clone(), Ok(())),
        Expect::Frame(spec) => (spec.build(), spec.verify(out)),
        Expect::Bytes(frame) => (frame.clone(), P::verify_made(out)),
        Expect::Headless(frame) => (frame.clone(), Ok(())),
    };
    if out != expected.as_slice() {
        return Some(format!(
            "output frame differs\n   got: {out:02x?}\n  want: {expected:02x?}"
        ));
    }
    checked.err()
}

/// Runs every case of `cases` in order on the pod-device program (the state one leaves is the
/// next one's); fails naming each case that did not come out as expected.
pub fn run_cases<P: TestPacket>(dp: &mut Datapath, cases: &[Case<P>]) -> Result<()> {
    let mut failed = Vec::new();
    for case in cases {
        let (verdict, out) = dp.run(&case.input).with_context(|| case.what.clone())?;
        if let Some(why) = mismatch(case, verdict, &out) {
            failed.push(format!("- {}: {why}", case.what));
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} cases failed:\n{}",
            failed.len(),
            cases.len(),
            failed.join("\n")
        );
    }
    Ok(())
}

/// The addresses of the east-west fixtures of one family.
pub struct Addrs<A> {
    pub client: (A, u16),
    /// A frontend on TCP port 80 and UDP port 53, with `backend`.
    pub vip: A,
    /// A frontend on the same ports without endpoints.
    pub empty_vip: A,
    pub backend: (A, u16),
    /// A router that reports a packet too big.
    pub router: A,
    /// An address that is no frontend.
    pub stranger: A,
}

/// A datapath serving the frontends of `a` (the pod-device program).
pub fn loaded<A: Copy + Into<IpAddr>>(name: &str, a: &Addrs<A>) -> Result<Datapath> {
    let mut dp = Datapath::load(name)?;
    let backends = vec![(a.backend.0.into(), a.backend.1)];
    dp.program_cluster_ips(&[
        (a.vip.into(), 80, Protocol::Tcp, backends.clone()),
        (a.vip.into(), 53, Protocol::Udp, backends),
        (a.empty_vip.into(), 80, Protocol::Tcp, Vec::new()),
        (a.empty_vip.into(), 53, Protocol::Udp, Vec::new()),
    ]);
    Ok(dp)
}

/// A TCP and a UDP flow through the frontend, both ways.
pub fn flow_cases<P: TestPacket>(a: &Addrs<P::Addr>) -> Vec<Case<P>> {
    let f = P::FAMILY;
    let (backend, client) = (a.backend, a.client);
    let syn = P::tcp(client, (a.vip, 80), TCP_SYN);
    let syn_ack = P::tcp(backend, client, TCP_SYN | TCP_ACK);
    let udp = P::udp(client, (a.vip, 53));
    let udp_reply = P::udp(backend, client);
    vec![
        Case::new(
            format!("TCP SYN to an {f} frontend is DNATed to its backend"),
            syn.build(),
            TC_ACT_OK,
            Expect::Frame(syn.clone().with_dst(backend.0, backend.1)),
        ),
        Case::new(
            "the next packet of the flow goes to the same backend",
            P::tcp(client, (a.vip, 80), TCP_ACK).build(),
            TC_ACT_OK,
            Expect::Frame(P::tcp(client, backend, TCP_ACK)),
        ),
        Case::new(
            "the backend's reply gets the frontend back as its source",
            syn_ack.build(),
            TC_ACT_OK,
            Expect::Frame(syn_ack.with_src(a.vip, 80)),
        ),
        Case::new(
            format!("UDP over {f} is DNATed, its checksum valid"),
            udp.build(),
            TC_ACT_OK,
            Expect::Frame(udp.clone().with_dst(backend.0, backend.1)),
        ),
        Case::new(
            format!("a UDP reply over {f} is reverse NATed"),
            udp_reply.build(),
            TC_ACT_OK,
            Expect::Frame(udp_reply.with_src(a.vip, 53)),
        ),
    ]
}

/// A frontend without endpoints: a RST for a SYN, a port unreachable for a datagram, a drop
/// for any other segment.
pub fn reject_cases<P: TestPacket>(a: &Addrs<P::Addr>) -> Vec<Case<P>> {
    let f = P::FAMILY;
    let syn = P::tcp(a.client, (a.empty_vip, 80), TCP_SYN);
    let udp = P::udp(a.client, (a.empty_vip, 53));
    vec![
        Case::new(
            format!("a SYN to an {f} frontend without endpoints gets a RST"),
            syn.build(),
            TC_ACT_REDIRECT,
            Expect::Bytes(syn.expected_reset()),
        ),
        Case::new(
            format!("a datagram to an {f} frontend without endpoints gets a port unreachable"),
            udp.build(),
            TC_ACT_REDIRECT,
            Expect::Bytes(udp.expected_port_unreachable()),
        ),
        Case::new(
            format!("a non-SYN segment to an {f} frontend without endpoints is dropped"),
            P::tcp(a.client, (a.empty_vip, 80), TCP_ACK).build(),
            TC_ACT_SHOT,
            Expect::Unchanged,
        ),
    ]
}

/// ICMP errors about the flows of [`flow_cases`] (run those first): translated back to the
/// side that sent the packet, quoting it as it left; the quoted L4 checksum stays as it was.
pub fn icmp_cases<P: TestPacket>(a: &Addrs<P::Addr>) -> Vec<Case<P>> {
    let (backend, client) = (a.backend, a.client);
    let udp = P::udp(client, (a.vip, 53));
    let syn_ack = P::tcp(backend, client, TCP_SYN | TCP_ACK);
    let to_backend = udp.clone().with_dst(backend.0, backend.1).quote_of(8);
    let reply_out = syn_ack.clone().with_src(a.vip, 80).quote_of(20);
    let stranger = P::udp((client.0, 41_999), backend).quote_of(8);
    vec![
        Case::new(
            "a port unreachable from the backend reaches the client from the frontend, quoting \
             the datagram the client sent",
            P::icmp_error(backend.0, client.0, P::PORT_UNREACHABLE, &to_backend),
            TC_ACT_OK,
            Expect::Bytes(P::icmp_error(
                a.vip,
                client.0,
                P::PORT_UNREACHABLE,
                &P::with_l4_checksum_of(udp.quote_of(8), &to_backend),
            )),
        ),
        Case::new(
            "a packet-too-big from a router about a reply reaches the backend, quoting the \
             segment the backend sent",
            P::icmp_error(a.router, a.vip, P::TOO_BIG, &reply_out),
            TC_ACT_OK,
            Expect::Bytes(P::icmp_error(
                a.router,
                backend.0,
                P::TOO_BIG,
                &P::with_l4_checksum_of(syn_ack.quote_of(20), &reply_out),
            )),
        ),
        Case::passes(
            "an ICMP error about an untracked flow passes untouched",
            P::icmp_error(backend.0, client.0, P::PORT_UNREACHABLE, &stranger),
        ),
    ]
}

/// Traffic that is not for a frontend, in both families' shape.
pub fn other_traffic_cases<P: TestPacket>(a: &Addrs<P::Addr>) -> Vec<Case<P>> {
    let f = P::FAMILY;
    let syn = P::tcp(a.client, (a.vip, 80), TCP_SYN);
    vec![
        Case::passes(
            format!("traffic to another {f} address passes untouched"),
            P::tcp(a.client, (a.stranger, 80), TCP_SYN).build(),
        ),
        Case::passes(
            "another port of the frontend address passes untouched",
            P::tcp(a.client, (a.vip, 81), TCP_SYN).build(),
        ),
        Case::passes(
            "UDP to a TCP-only port passes untouched",
            P::udp(a.client, (a.vip, 80)).build(),
        ),
        Case::passes(
            "a frame cut inside the TCP header passes untouched",
            syn.build()[..P::L4_AT + 10].to_vec(),
        ),
    ]
}

/// A namespace for one fixture, removed on drop.
pub struct FixtureNs(pub String);

impl Drop for FixtureNs {
    fn drop(&mut self) {
        let _ = svclb_tests::netns::delete(&self.0);
    }
}

pub const UP0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
pub const NEXT_HOP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0c];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x64];

/// A node's uplink for the FIB lookups of the redirecting rewrites: `up0` (the node's address,
/// MAC ..:0b, forwarding on), the other node (MAC ..:0c) routing the remote pods, the
/// external client (MAC ..:64), both neighbours resolved; addressed as `P`'s family says.
/// Returns the namespace and `up0`'s index.
pub fn uplink_ns<P: TestPacket>(name: &str) -> Result<(FixtureNs, u32)> {
    use svclb_tests::netns::{ip, ip_in, sysctl_in};
    let net = P::UPLINK;
    let ns = FixtureNs(svclb_tests::sweep::scratch_name(&format!("-{name}")));
    ip(&["netns", "add", &ns.0])?;
    let n = ns.0.as_str();
    fn family<'a>(net: &UplinkAddressing, args: &[&'a str]) -> Vec<&'a str> {
        net.ip_family
            .iter()
            .copied()
            .chain(args.iter().copied())
            .collect()
    }
    sysctl_in(n, net.forwarding_sysctl, "1")?;
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
        &family(
            &net,
            &[&["addr", "add"], net.node_cidr, &["dev", "up0"]].concat(),
        ),
    )?;
    ip_in(n, &["link", "set", "up0", "up"])?;
    ip_in(n, &["link", "set", "up1", "up"])?;
    for (addr, mac) in net.neighbours {
        let neigh = [
            "neigh",
            "replace",
            addr,
            "lladdr",
            mac,
            "dev",
            "up0",
            "nud",
            "permanent",
        ];
        ip_in(n, &family(&net, &neigh))?;
    }
    ip_in(
        n,
        &family(
            &net,
            &["route", "add", net.remote_pods, "via", net.next_hop],
        ),
    )?;
    let index = svclb_tests::netns::ifindex(n, "up0")?;
    Ok((ns, index))
}

/// The addresses of the redirecting fixtures of one family (matching its uplink).
pub struct UplinkAddrs<A> {
    pub node: A,
    pub client: (A, u16),
    pub remote_backend: (A, u16),
    /// A router on the fabric that reports a packet too big.
    pub router: A,
}

/// NodePorts 30080/TCP and 30053/UDP on `node`, served by one backend on node n2.
pub fn node_port_plan<A: Copy + Into<IpAddr>>(a: &UplinkAddrs<A>) -> Plan {
    let mut plan = Plan::default();
    for (port, protocol) in [(30080, Protocol::Tcp), (30053, Protocol::Udp)] {
        plan.frontends.insert(
            FrontendKey::new(a.node.into(), port, protocol),
            Frontend::new(
                "default/web",
                FrontendKind::NodePort,
                Scope::External,
                vec![PlanBackend {
                    node: Some("n2".into()),
                    ..PlanBackend::remote(a.remote_backend.0.into(), a.remote_backend.1)
                }],
            ),
        );
    }
    plan
}

/// The source port a SNATed frame left with, checked to be in the NAT's range.
fn snat_port<P: TestPacket>(out: &[u8]) -> Result<u16> {
    let port = P::source_port(out);
    if !(61_000..=65_535).contains(&port) {
        bail!("SNAT port {port} outside the NAT's range");
    }
    Ok(port)
}

/// The rewrites that send packets on themselves (FIB lookup, MAC addresses, TTL or hop
/// limit), on a node's uplink (program index `ifindex`): SNAT to a remote backend, its reply,
/// and ICMP errors of the SNATed flows, through `hook`'s program (XDP leaves the ICMP errors
/// to TC, untouched). Run inside the namespace of [`uplink_ns`].
pub fn snat_and_redirect<P: TestPacket>(
    dp: &mut Datapath,
    ifindex: u32,
    a: &UplinkAddrs<P::Addr>,
    hook: Hook,
) -> Result<()> {
    let run = |dp: &mut Datapath, what: &str, input: Vec<u8>| -> Result<Vec<u8>> {
        let (verdict, out) = hook.run(dp, ifindex, &input).context(what.to_owned())?;
        if verdict != hook.sent() {
            bail!("{what}: verdict {verdict}, expected {}", hook.sent());
        }
        P::verify_made(&out).map_err(|why| anyhow::anyhow!("{what}: {why}"))?;
        Ok(out)
    };
    let icmp = |dp: &mut Datapath, what: &str, input: Vec<u8>| -> Result<Option<Vec<u8>>> {
        if hook == Hook::Tc {
            return run(dp, what, input).map(Some);
        }
        let (verdict, out) = Hook::Xdp
            .run(dp, ifindex, &input)
            .context(what.to_owned())?;
        if verdict != XDP_PASS || out != input {
            bail!("{what}: verdict {verdict}, expected to pass to TC untouched");
        }
        Ok(None)
    };
    let (node, backend) = (a.node, a.remote_backend);
    let to_remote = |frame: &P| P::forwarded(frame.build(), NEXT_HOP_MAC, UP0_MAC);
    let to_client = |frame: Vec<u8>| P::forwarded(frame, CLIENT_MAC, UP0_MAC);

    let syn = P::tcp(a.client, (node, 30080), TCP_SYN);
    let out = run(dp, "a SYN to a NodePort with a remote backend", syn.build())?;
    let port = snat_port::<P>(&out)?;
    let sent = syn.with_dst(backend.0, backend.1).with_src(node, port);
    assert_eq!(
        out,
        to_remote(&sent),
        "SYN: SNAT to the node and DNAT to the backend"
    );

    let ack = P::tcp(a.client, (node, 30080), TCP_ACK);
    let out = run(dp, "the next segment", ack.build())?;
    let sent = ack.with_dst(backend.0, backend.1).with_src(node, port);
    assert_eq!(
        out,
        to_remote(&sent),
        "the flow keeps its SNAT port and backend"
    );

    let syn_ack = P::tcp(backend, (node, port), TCP_SYN | TCP_ACK);
    let client_sees = P::tcp((node, 30080), a.client, TCP_SYN | TCP_ACK);
    let out = run(dp, "the backend's reply", syn_ack.build())?;
    assert_eq!(
        out,
        to_client(client_sees.build()),
        "reply: from the NodePort to the client"
    );

    let reply_out = client_sees.quote_of(20);
    let out = icmp(
        dp,
        "a packet-too-big about the reply",
        P::icmp_error(a.router, node, P::TOO_BIG, &reply_out),
    )?;
    if let Some(out) = out {
        let quoted = P::with_l4_checksum_of(syn_ack.quote_of(20), &reply_out);
        let expect = P::icmp_error(a.router, backend.0, P::TOO_BIG, &quoted);
        assert_eq!(
            out,
            P::forwarded(expect, NEXT_HOP_MAC, UP0_MAC),
            "packet too big: to the backend, quoting what it sent"
        );
    }

    let udp = P::udp((a.client.0, 40_001), (node, 30053));
    let out = run(
        dp,
        "a datagram to a NodePort with a remote backend",
        udp.build(),
    )?;
    let port = snat_port::<P>(&out)?;
    let sent = udp
        .clone()
        .with_dst(backend.0, backend.1)
        .with_src(node, port);
    assert_eq!(out, to_remote(&sent), "datagram: SNAT and DNAT");
    let quoted = sent.quote_of(8);
    let out = icmp(
        dp,
        "a port unreachable from the backend",
        P::icmp_error(backend.0, node, P::PORT_UNREACHABLE, &quoted),
    )?;
    if let Some(out) = out {
        let expect = P::icmp_error(
            node,
            a.client.0,
            P::PORT_UNREACHABLE,
            &P::with_l4_checksum_of(udp.quote_of(8), &quoted),
        );
        assert_eq!(
            out,
            to_client(expect),
            "port unreachable: from the NodePort to the client, quoting its datagram"
        );
    }
    Ok(())
}

/// One flow's packets alternate between the two hooks (as when `--xdp-mode` changes under
/// running flows): whichever program meets a packet, it finds the other's conntrack entries
/// and gives the packet the same backend, SNAT port and bytes. Then what XDP leaves to TC
/// untouched, and creates no state for: a next hop whose MAC the FIB does not know yet, and
/// a TTL that runs out here. Run inside the namespace of [`uplink_ns`].
pub fn xdp_and_tc_share_flows<P: TestPacket>(
    dp: &mut Datapath,
    ifindex: u32,
    a: &UplinkAddrs<P::Addr>,
) -> Result<()> {
    let (node, backend) = (a.node, a.remote_backend);
    let send = |dp: &mut Datapath, hook: Hook, what: &str, input: &P| -> Result<Vec<u8>> {
        let (verdict, out) = hook
            .run(dp, ifindex, &input.build())
            .context(what.to_owned())?;
        if verdict != hook.sent() {
            bail!(
                "{what} through {hook:?}: verdict {verdict}, expected {}",
                hook.sent()
            );
        }
        Ok(out)
    };
    for (first, then) in [(Hook::Tc, Hook::Xdp), (Hook::Xdp, Hook::Tc)] {
        let client = (a.client.0, if first == Hook::Tc { 41_000 } else { 41_001 });
        let syn = P::tcp(client, (node, 30080), TCP_SYN);
        let out = send(dp, first, "a SYN", &syn)?;
        let port = snat_port::<P>(&out)?;
        let ack = P::tcp(client, (node, 30080), TCP_ACK);
        let out = send(dp, then, "the next segment", &ack)?;
        let sent = ack.with_dst(backend.0, backend.1).with_src(node, port);
        assert_eq!(
            out,
            P::forwarded(sent.build(), NEXT_HOP_MAC, UP0_MAC),
            "a flow {first:?} started keeps its backend and SNAT port in {then:?}"
        );
        let reply = P::tcp(backend, (node, port), TCP_ACK);
        let out = send(dp, first, "the backend's reply", &reply)?;
        let client_sees = P::tcp((node, 30080), client, TCP_ACK);
        assert_eq!(
            out,
            P::forwarded(client_sees.build(), CLIENT_MAC, UP0_MAC),
            "the reply of a flow {then:?} carried goes back through {first:?}"
        );
    }

    let untouched = |dp: &mut Datapath, what: &str, input: &[u8]| -> Result<()> {
        let before = dp.conntrack()?.keys().count();
        let (verdict, out) = Hook::Xdp.run(dp, ifindex, input).context(what.to_owned())?;
        if verdict != XDP_PASS || out != input {
            bail!("{what}: verdict {verdict}, expected to pass to TC untouched");
        }
        if dp.conntrack()?.keys().count() != before {
            bail!("{what}: XDP made conntrack entries for a packet it passed");
        }
        Ok(())
    };
    let mut short_lived = P::tcp((a.client.0, 41_002), (node, 30080), TCP_SYN).build();
    short_lived[P::TTL_AT] = 1;
    untouched(dp, "a SYN whose TTL runs out here", &short_lived)?;

    next_hop_neighbour::<P>(None)?;
    let syn = P::tcp((a.client.0, 41_003), (node, 30080), TCP_SYN);
    let result =
        untouched(dp, "a SYN to a next hop without a neighbour", &syn.build()).and_then(|()| {
            // TC takes it from there: the neighbour subsystem resolves the next hop.
            let (verdict, _) = Hook::Tc.run(dp, ifindex, &syn.build())?;
            if verdict != TC_ACT_REDIRECT {
                bail!("TC after XDP passed: verdict {verdict}, expected a redirect");
            }
            Ok(())
        });
    next_hop_neighbour::<P>(Some(NEXT_HOP_MAC))?;
    result
}

/// Sets the next hop's neighbour entry on `up0` to `mac` (permanent), or deletes it.
fn next_hop_neighbour<P: TestPacket>(mac: Option<[u8; 6]>) -> Result<()> {
    let mut args: Vec<String> = P::UPLINK
        .ip_family
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
    let verb = if mac.is_some() { "replace" } else { "del" };
    args.extend(["neigh", verb, P::UPLINK.next_hop, "dev", "up0"].map(str::to_owned));
    if let Some(mac) = mac {
        let mac = mac.map(|b| format!("{b:02x}")).join(":");
        args.extend([
            "lladdr".to_owned(),
            mac,
            "nud".to_owned(),
            "permanent".to_owned(),
        ]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    svclb_tests::netns::run("ip", &args).map(drop)
}

/// XDP keeps the route of each direction of a tracked flow in its conntrack entry: a next
/// hop's new MAC address reaches the flow's packets once the route epoch changes (the agent
/// changes it on the neighbour notification), a new flow looks its route up at once. Run
/// inside the namespace of [`uplink_ns`].
pub fn xdp_caches_routes_by_epoch<P: TestPacket>(
    dp: &mut Datapath,
    ifindex: u32,
    a: &UplinkAddrs<P::Addr>,
) -> Result<()> {
    const MOVED_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0d];
    let (node, backend) = (a.node, a.remote_backend);
    let xdp = |dp: &mut Datapath, what: &str, input: &P| -> Result<Vec<u8>> {
        let (verdict, out) = Hook::Xdp.run(dp, ifindex, &input.build())?;
        if verdict != Hook::Xdp.sent() {
            bail!("{what}: verdict {verdict}, expected XDP to send it");
        }
        Ok(out)
    };
    let client = (a.client.0, 41_010);
    let syn = P::tcp(client, (node, 30080), TCP_SYN);
    let port = snat_port::<P>(&xdp(dp, "a SYN", &syn)?)?;
    let ack = P::tcp(client, (node, 30080), TCP_ACK);
    let sent = ack
        .clone()
        .with_dst(backend.0, backend.1)
        .with_src(node, port);
    let via = |mac| P::forwarded(sent.build(), mac, UP0_MAC);
    assert_eq!(xdp(dp, "the next segment", &ack)?, via(NEXT_HOP_MAC));

    next_hop_neighbour::<P>(Some(MOVED_MAC))?;
    let result = (|| -> Result<()> {
        assert_eq!(
            xdp(dp, "a segment after the neighbour moved", &ack)?,
            via(NEXT_HOP_MAC),
            "the route cached in the flow's entry serves until the epoch changes"
        );
        let other = P::tcp((a.client.0, 41_011), (node, 30080), TCP_SYN);
        let out = xdp(dp, "a new flow's SYN", &other)?;
        assert_eq!(out[..6], MOVED_MAC, "a new flow looks its route up");
        dp.bump_route_epoch()?;
        assert_eq!(
            xdp(dp, "a segment in the next epoch", &ack)?,
            via(MOVED_MAC),
            "a new epoch: the flow's next packet looks its route up"
        );
        assert_eq!(
            xdp(dp, "the segment after it", &ack)?,
            via(MOVED_MAC),
            "and caches it again"
        );
        Ok(())
    })();
    next_hop_neighbour::<P>(Some(NEXT_HOP_MAC))?;
    dp.bump_route_epoch()?;
    result
}
