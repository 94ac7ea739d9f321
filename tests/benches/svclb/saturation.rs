//! North-south at saturation: packets per second per core, svclb beside kube-proxy's rules,
//! a null XDP forwarder and plain routing, in one run.
//!
//! Two namespaces per system: a tester with two ports, as a hardware traffic generator has,
//! and the node.
//!
//! ```text
//!   tester (CPU 0)                     node (CPU 1)
//!   sat-gen   <------- veth ------->  sat-up  [system]
//!   sat-sink  <------- veth ------->  sat-bk
//!   sat-seed  <-- veth -->  sat-feed
//! ```
//!
//! The frames circulate (see `common/trafficgen.rs`): the generator program on `sat-sink`
//! counts each frame the node forwarded, makes it the next flow's, with unique source tuples,
//! and puts it back onto `sat-up` through `sat-gen`, as a NIC's receive queue would. A few
//! frames a millisecond that user space sends on `sat-seed` reach the same program on
//! `sat-feed`, and keep the loop full. `sat-up` runs NAPI with GRO, as a NIC driver does, in
//! a thread of its own (threaded NAPI) pinned to CPU 1: everything the node does with a
//! frame, up to handing it to `sat-bk`, runs there, and nothing else does. The tester's NAPI
//! threads and its seeding thread have CPU 0.
//!
//! The node is offered more than it can take, and what it cannot take is lost on its side:
//! its uplink's ring drops it as a NIC ring would, or (through the stack, whose NAPI keeps the
//! uplink's ring drained) the node drops it. A point where the node's core was not saturated,
//! or where the tester's side lost at least as many frames (the sink's ring: frames piled up
//! in front of the tester's core), did not measure the node and is
//! reported as invalid. Busy shares are taken as fractions of what a thread spinning on the
//! node core reads in /proc/stat: a guard for a host that keeps time from its guest without
//! reporting it as steal.
//!
//! Each point reports what reached the sink (Mpps), what was offered, the node CPU's busy
//! share, and from those the node's ns per packet. Frames go to one LoadBalancer IP of
//! [`SERVICES`] (the middle one, an average position in kube-proxy's iptables chain), each
//! with [`BACKENDS`] backends behind the sink, through the Cluster traffic policy (DNAT to a
//! backend on another node and SNAT to the node, as kube-proxy masquerades). Tracked flows are
//! UDP (a flow is open after its first packet for every system: a TCP flow that never sees a
//! reply is invalid to netfilter); new flows are TCP SYNs, each of a new source tuple.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Result, bail, ensure};
use aya::programs::XdpMode;
use serde::Serialize;
use svclb::{
    entries::Capacity,
    kernel::config::{self, SnatPorts},
    plan::{Frontend, FrontendKey, FrontendKind, Plan, PlanBackend, Protocol, Scope},
};
use svclb_tests::{
    cpu,
    netns::{self, ifindex, in_netns, ip, ip_in, run_in, sysctl_in},
    packet::{PacketSpec, TCP_SYN},
    packet6::Packet6,
};

use crate::{
    Settings,
    common::{
        datapath::Datapath,
        fixture::FixtureNs,
        trafficgen::{Generator, Redirect, Seeder, Template, tx_dropped, wire_tester},
    },
    control_plane::load_time,
    kubeproxy::{self, Layout, Svc},
    latency::run_stats,
    north_south::Net,
};

pub const SERVICES: usize = 1_000;
pub const BACKENDS: usize = 10;
/// The service every frame goes to.
const TARGET: usize = SERVICES / 2;
const GEN_CPU: usize = 0;
const NODE_CPU: usize = 1;
/// Sent before each measurement: opens the tracked flows, warms the caches.
const WARM_UP: Duration = Duration::from_millis(300);
/// The first flow of the next new-flows measurement (each takes 2^30 flows' room: 16,644
/// source addresses of 64,512 ports).
static NEXT_NEW_FLOW: AtomicU64 = AtomicU64::new(0);
/// A point measured the node only if the node core was at least this busy (of what a
/// spinning thread reads on it), and more frames were lost on the node's side of the loop
/// (its uplink's ring, the node) than on the tester's (the sink's ring):
/// the node was offered more than it could take.
const SATURATED: f64 = 0.9;
/// How long past a measurement's end the generator may still send frames, if its host died.
const LOOP_MARGIN: Duration = Duration::from_secs(2);

const UP_MAC: &str = "02:00:00:00:00:0b";
const GEN_MAC: &str = "02:00:00:00:00:64";
const BK_MAC: &str = "02:00:00:00:00:0d";
const SINK_MAC: &str = "02:00:00:00:00:0c";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    XdpNative,
    XdpGeneric,
    TcOnly,
    IptablesLegacy,
    IptablesNft,
    Nftables,
    NullRedirect,
    Routing,
}

pub const SYSTEMS: [System; 8] = [
    System::XdpNative,
    System::XdpGeneric,
    System::TcOnly,
    System::IptablesLegacy,
    System::IptablesNft,
    System::Nftables,
    System::NullRedirect,
    System::Routing,
];

impl System {
    pub fn label(self) -> &'static str {
        match self {
            Self::XdpNative => "svclb, XDP native",
            Self::XdpGeneric => "svclb, XDP generic",
            Self::TcOnly => "svclb, TC only (`--xdp-mode off`)",
            Self::IptablesLegacy => "kube-proxy iptables (legacy)",
            Self::IptablesNft => "kube-proxy iptables (nft backend)",
            Self::Nftables => "kube-proxy nftables",
            Self::NullRedirect => "null XDP redirect (ceiling)",
            Self::Routing => "routing, no NAT",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Self::XdpNative => "svclb_xdp_native",
            Self::XdpGeneric => "svclb_xdp_generic",
            Self::TcOnly => "svclb_tc_only",
            Self::IptablesLegacy => "iptables_legacy",
            Self::IptablesNft => "iptables_nft",
            Self::Nftables => "nftables",
            Self::NullRedirect => "null_redirect",
            Self::Routing => "routing",
        }
    }

    fn svclb_xdp(self) -> Option<Option<XdpMode>> {
        match self {
            Self::XdpNative => Some(Some(XdpMode::Driver)),
            Self::XdpGeneric => Some(Some(XdpMode::Skb)),
            Self::TcOnly => Some(None),
            _ => None,
        }
    }
}

/// What the generator sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    /// UDP frames cycling over this many established flows.
    Tracked(u64),
    /// TCP SYNs, each from a new source tuple.
    NewFlows,
}

pub const LOADS: [Load; 4] = [
    Load::Tracked(1),
    Load::Tracked(1_024),
    Load::Tracked(65_536),
    Load::NewFlows,
];

impl Load {
    pub fn key(self) -> String {
        match self {
            Self::Tracked(n) => format!("tracked_{n}"),
            Self::NewFlows => "new_flows".into(),
        }
    }

    pub fn label(self) -> String {
        match self {
            Self::Tracked(n) => format!("{n} tracked flows"),
            Self::NewFlows => "new flows (SYN)".into(),
        }
    }
}

/// One system, family and load, measured once.
#[derive(Serialize)]
pub struct Point {
    pub system: &'static str,
    pub family: &'static str,
    pub load: String,
    pub round: usize,
    /// Frames that reached the sink, millions per second.
    pub delivered_mpps: f64,
    /// Frames the generator offered, millions per second.
    pub offered_mpps: f64,
    /// Share of the offered frames that did not reach the sink.
    pub dropped: f64,
    /// Busy share of the node's CPU while the generator ran.
    pub node_busy: f64,
    /// The node CPU's busy time per delivered frame.
    pub ns_per_packet: f64,
    /// Frames lost on the node's side (its uplink's ring, the node), and on the tester's (the
    /// sink's ring), millions per second.
    pub node_lost_mpps: f64,
    pub generator_lost_mpps: f64,
    /// Whether the node's CPU was saturated (the point measured the node, not the generator).
    pub valid: bool,
}

/// Where svclb's time went: its programs' own run time per delivered frame (BPF statistics).
#[derive(Serialize)]
pub struct Attribution {
    pub system: &'static str,
    pub family: &'static str,
    pub load: String,
    pub ns_per_packet: f64,
    /// Run time of the XDP program per delivered frame, ns (none without XDP).
    pub xdp_ns: Option<f64>,
    /// Run time of the TC program per delivered frame, ns.
    pub tc_ns: f64,
}

#[derive(Serialize)]
pub struct Results {
    /// The busy share /proc/stat shows for a thread spinning on the node's core (1 where the
    /// host reports all the time it takes from the guest).
    pub cpu_ceiling: f64,
    pub seconds_per_point: f64,
    pub rounds: usize,
    pub services: usize,
    pub backends: usize,
    pub points: Vec<Point>,
    pub attribution: Vec<Attribution>,
}

pub fn run(settings: &Settings) -> Result<Results> {
    let seconds = if settings.quick { 1.0 } else { 3.0 };
    let rounds = if settings.quick { 1 } else { 2 };
    let duration = Duration::from_secs_f64(seconds);
    let ceiling = cpu::ceiling(NODE_CPU)?;
    eprintln!(
        "  a thread spinning on CPU {NODE_CPU} reads {:.0}% busy: the node's busy shares are of that",
        ceiling * 100.0
    );
    // svclb's maps, loaded and programmed once (4,000 frontends with their Maglev tables take a
    // while), then attached to each svclb system's node in turn.
    let mut svclb = None;
    let mut points = Vec::new();
    for round in 0..rounds {
        for system in SYSTEMS
            .into_iter()
            .filter(|s| settings.wants_system(s.key()))
        {
            eprintln!("  round {}: {}", round + 1, system.label());
            let mut node = Node::build(system, &mut svclb)?;
            for ipv6 in [false, true] {
                for load in LOADS.into_iter().filter(|l| settings.wants_load(&l.key())) {
                    let point = Point {
                        round,
                        ..node
                            .measure(ipv6, load, duration, ceiling)?
                            .into_point(system, ipv6, load)
                    };
                    eprintln!(
                        "    {} {}: {:.2} Mpps, node busy {:.0}%, {:.0} ns/packet{}",
                        family(ipv6),
                        load.label(),
                        point.delivered_mpps,
                        point.node_busy * 100.0,
                        point.ns_per_packet,
                        if point.valid { "" } else { " (invalid)" }
                    );
                    points.push(point);
                }
            }
            svclb = node.finish().or(svclb);
        }
    }
    let attribution = attribution(settings, duration, ceiling, &mut svclb)?;
    Ok(Results {
        cpu_ceiling: ceiling,
        seconds_per_point: seconds,
        rounds,
        services: SERVICES,
        backends: BACKENDS,
        points,
        attribution,
    })
}

fn family(ipv6: bool) -> &'static str {
    if ipv6 { "IPv6" } else { "IPv4" }
}

/// A separate run of the svclb systems with the kernel's BPF statistics on: each program's
/// own time per frame, beside the node's whole time per frame.
fn attribution(
    settings: &Settings,
    duration: Duration,
    ceiling: f64,
    svclb: &mut Option<Box<Datapath>>,
) -> Result<Vec<Attribution>> {
    let mut out = Vec::new();
    let systems = [System::XdpNative, System::TcOnly];
    for system in systems
        .into_iter()
        .filter(|s| settings.wants_system(s.key()))
    {
        let mut node = Node::build(system, svclb)?;
        let (xdp_id, tc_id) = node.program_ids()?;
        for ipv6 in [false, true] {
            let loads = [Load::Tracked(1_024), Load::NewFlows];
            for load in loads.into_iter().filter(|l| settings.wants_load(&l.key())) {
                let before = (run_stats(xdp_id.into())?, run_stats(tc_id.into())?);
                std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")?;
                let measured = node.measure(ipv6, load, duration, ceiling);
                std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0")?;
                let m = measured?;
                let after = (run_stats(xdp_id.into())?, run_stats(tc_id.into())?);
                let per_frame =
                    |(t0, _): (f64, f64), (t1, _): (f64, f64)| (t1 - t0) / m.delivered as f64;
                let xdp_ns = per_frame(before.0, after.0);
                out.push(Attribution {
                    system: system.key(),
                    family: family(ipv6),
                    load: load.key(),
                    ns_per_packet: m.ns_per_packet(),
                    xdp_ns: (system == System::XdpNative).then_some(xdp_ns),
                    tc_ns: per_frame(before.1, after.1),
                });
            }
        }
        *svclb = node.finish().or(svclb.take());
    }
    Ok(out)
}

/// One measurement, before it is a [`Point`].
struct Measured {
    offered: u64,
    delivered: u64,
    elapsed: Duration,
    /// The node core's busy share, of what a thread spinning on it reads (see [`ceiling`]).
    node_busy: f64,
    /// Frames the sink's ring, on the tester's core, had no room for.
    generator_dropped: u64,
}

impl Measured {
    fn ns_per_packet(&self) -> f64 {
        self.node_busy * self.elapsed.as_nanos() as f64 / self.delivered.max(1) as f64
    }

    /// Frames offered that reached neither the sink nor its ring.
    fn node_lost(&self) -> u64 {
        let lost = self.offered.saturating_sub(self.delivered);
        lost.saturating_sub(self.generator_dropped)
    }

    fn dropped(&self) -> f64 {
        1.0 - self.delivered as f64 / self.offered.max(1) as f64
    }

    fn into_point(self, system: System, ipv6: bool, load: Load) -> Point {
        let seconds = self.elapsed.as_secs_f64();
        Point {
            system: system.key(),
            family: family(ipv6),
            load: load.key(),
            round: 0,
            delivered_mpps: self.delivered as f64 / seconds / 1e6,
            offered_mpps: self.offered as f64 / seconds / 1e6,
            dropped: self.dropped(),
            node_busy: self.node_busy,
            ns_per_packet: self.ns_per_packet(),
            node_lost_mpps: self.node_lost() as f64 / seconds / 1e6,
            generator_lost_mpps: self.generator_dropped as f64 / seconds / 1e6,
            valid: self.node_busy >= SATURATED && self.node_lost() > self.generator_dropped,
        }
    }
}

/// What keeps a system in place on the node for as long as it is measured.
enum Installed {
    Svclb(Box<Datapath>),
    Redirect { _program: Redirect },
    Rules,
}

/// The two namespaces, tester and node, with one system installed on the node.
struct Node {
    // Fields drop in order: the programs before their namespaces.
    installed: Installed,
    tester: FixtureNs,
    node: FixtureNs,
    /// The tester's devices: `sat-gen`, `sat-sink`, `sat-feed`, `sat-seed`.
    gen_if: u32,
    sink_if: u32,
    feed_if: u32,
    seed_if: u32,
}

impl Node {
    /// The namespaces, wired, with `system` installed; an svclb system takes the shared
    /// datapath (loading it the first time), which [`Self::finish`] gives back.
    fn build(system: System, svclb: &mut Option<Box<Datapath>>) -> Result<Self> {
        let [tester, node] = ["sat-t", "sat-n"]
            .map(|n| FixtureNs(svclb_tests::sweep::scratch_name(&format!("-{n}"))));
        for ns in [&tester, &node] {
            ip(&["netns", "add", &ns.0])?;
        }
        wire(&tester.0, &node.0)?;
        wire_tester(&tester.0, "sat-gen", "sat-sink", "sat-seed", "sat-feed")?;
        for dev in ["sat-sink", "sat-feed"] {
            napi_threads(&tester.0, dev)?;
        }
        let [gen_if, sink_if, feed_if, seed_if] =
            ["sat-gen", "sat-sink", "sat-feed", "sat-seed"].map(|dev| ifindex(&tester.0, dev));
        let up_if = ifindex(&node.0, "sat-up")?;
        let bk_if = ifindex(&node.0, "sat-bk")?;
        let installed = install(system, &node.0, up_if, bk_if, svclb)?;
        napi_threads(&node.0, "sat-up")?;
        pin_napi("sat-up", NODE_CPU)?;
        Ok(Self {
            installed,
            tester,
            node,
            gen_if: gen_if?,
            sink_if: sink_if?,
            feed_if: feed_if?,
            seed_if: seed_if?,
        })
    }

    /// Takes the shared datapath back (detached), if this node had it.
    fn finish(self) -> Option<Box<Datapath>> {
        match self.installed {
            Installed::Svclb(mut dp) => {
                dp.detach_uplinks();
                Some(dp)
            }
            _ => None,
        }
    }

    fn program_ids(&self) -> Result<(u32, u32)> {
        match &self.installed {
            Installed::Svclb(dp) => dp.uplink_program_ids(),
            _ => bail!("not an svclb system"),
        }
    }

    /// Offers `load` for `duration` (after a warm-up that opens tracked flows) and counts
    /// what reaches the sink.
    fn measure(
        &mut self,
        ipv6: bool,
        load: Load,
        duration: Duration,
        ceiling: f64,
    ) -> Result<Measured> {
        let template = if ipv6 {
            template::<Packet6>(load)
        } else {
            template::<PacketSpec>(load)
        };
        let frame = template.frame.clone();
        let flows = match load {
            Load::Tracked(n) => n,
            Load::NewFlows => 0,
        };
        let (gen_if, sink_if, feed_if) = (self.gen_if, self.sink_if, self.feed_if);
        // New flows start where the last measurement's left off: svclb's maps are shared.
        let first = match load {
            Load::Tracked(_) => 0,
            Load::NewFlows => NEXT_NEW_FLOW.fetch_add(1 << 30, Ordering::Relaxed),
        };
        let mut generator = in_netns(&self.tester.0, move || {
            let mut generator = Generator::load(&template, flows, gen_if, sink_if)?;
            generator.start_at(first)?;
            generator.attach(sink_if)?;
            generator.attach(feed_if)?;
            Ok(generator)
        })?;
        // (After the attach, which may have made the devices' NAPI anew.)
        for dev in ["sat-sink", "sat-feed"] {
            pin_napi(dev, GEN_CPU)?;
        }
        let limit = WARM_UP + duration + LOOP_MARGIN;
        generator.circulate(Some(limit))?;
        let seed_if = self.seed_if;
        let seeder = in_netns(&self.tester.0, move || {
            Seeder::start(frame, seed_if, GEN_CPU, limit)
        })?;
        // This thread, and the commands it runs to read the counters, off the node's core.
        cpu::pin_self(GEN_CPU)?;
        std::thread::sleep(WARM_UP);
        let before = self.counts(&generator)?;
        std::thread::sleep(duration);
        let after = self.counts(&generator)?;
        cpu::unpin_self()?;
        seeder.stop()?;
        generator.circulate(None)?;
        generator.settled()?;
        let delivered = after.received - before.received;
        ensure!(delivered > 0, "nothing reached the sink");
        Ok(Measured {
            offered: after.generated - before.generated,
            delivered,
            elapsed: after.at - before.at,
            node_busy: cpu::busy_share(before.node_cpu, after.node_cpu) / ceiling,
            generator_dropped: after.generator_dropped - before.generator_dropped,
        })
    }

    /// The loop's counters, now.
    fn counts(&self, generator: &Generator) -> Result<Counts> {
        Ok(Counts {
            at: Instant::now(),
            node_cpu: cpu::times(NODE_CPU)?,
            generated: generator.generated()?,
            received: generator.received()?,
            generator_dropped: tx_dropped(&self.node.0, "sat-bk")?,
        })
    }
}

/// The loop's counters at one time.
struct Counts {
    at: Instant,
    node_cpu: (u64, u64),
    generated: u64,
    received: u64,
    /// The sink's ring's drops (a veth counts its peer's as transmit drops).
    generator_dropped: u64,
}

/// The frame of flow 0 of `load`, addressed to the target's LoadBalancer IP from the client
/// range, to `sat-up`'s MAC address.
fn template<P: SatNet>(load: Load) -> Template {
    let client = (P::client_base(), 1024);
    let (spec, udp) = match load {
        Load::Tracked(_) => (
            P::udp(client, (P::lb(TARGET), 80)).with_payload(vec![0; 18]),
            true,
        ),
        Load::NewFlows => (
            P::tcp(client, (P::lb(TARGET), 80), TCP_SYN).with_payload(Vec::new()),
            false,
        ),
    };
    Template::of(&spec, udp, mac(UP_MAC), mac(GEN_MAC))
}

fn mac(text: &str) -> [u8; 6] {
    let mut out = [0u8; 6];
    for (byte, part) in out.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(part, 16).expect("a MAC address");
    }
    out
}

/// The links, addresses, routes and neighbours of the two namespaces.
fn wire(tester: &str, node: &str) -> Result<()> {
    ip(&[
        "-n", tester, "link", "add", "sat-gen", "address", GEN_MAC, "type", "veth", "peer", "name",
        "sat-up", "netns", node, "address", UP_MAC,
    ])?;
    ip(&[
        "-n", node, "link", "add", "sat-bk", "address", BK_MAC, "type", "veth", "peer", "name",
        "sat-sink", "netns", tester, "address", SINK_MAC,
    ])?;
    for dev in ["sat-up", "sat-bk"] {
        ip_in(node, &["link", "set", dev, "up"])?;
    }
    for key in ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"] {
        sysctl_in(node, key, "1")?;
    }
    for key in [
        "net.ipv4.conf.all.rp_filter",
        "net.ipv4.conf.sat-up.rp_filter",
    ] {
        sysctl_in(node, key, "0")?;
    }
    let commands: [&[&str]; 10] = [
        &["addr", "add", "172.31.0.11/24", "dev", "sat-up"],
        &["addr", "add", "172.30.0.11/24", "dev", "sat-bk"],
        &[
            "-6",
            "addr",
            "add",
            "fd00:31::11/64",
            "dev",
            "sat-up",
            "nodad",
        ],
        &[
            "-6",
            "addr",
            "add",
            "fd00:30::11/64",
            "dev",
            "sat-bk",
            "nodad",
        ],
        &[
            "neigh",
            "replace",
            "172.30.0.12",
            "lladdr",
            SINK_MAC,
            "dev",
            "sat-bk",
            "nud",
            "permanent",
        ],
        &[
            "-6",
            "neigh",
            "replace",
            "fd00:30::12",
            "lladdr",
            SINK_MAC,
            "dev",
            "sat-bk",
            "nud",
            "permanent",
        ],
        // The backends, and (for plain routing) the LoadBalancer IPs, behind the sink.
        &["route", "add", "10.244.2.0/24", "via", "172.30.0.12"],
        &["route", "add", "198.18.0.0/16", "via", "172.30.0.12"],
        &[
            "-6",
            "route",
            "add",
            "fd00:244:2::/64",
            "via",
            "fd00:30::12",
        ],
        &["-6", "route", "add", "fd00:198::/64", "via", "fd00:30::12"],
    ];
    for args in commands {
        ip_in(node, args)?;
    }
    // NAPI with GRO on the uplink, as a NIC driver runs it (and it takes the generator's
    // frames whatever XDP program it has, or none).
    run_in(node, "ethtool", &["-K", "sat-up", "gro", "on"])?;
    Ok(())
}

/// Turns on threaded NAPI for `dev` (its own kernel thread, which can be pinned).
fn napi_threads(ns: &str, dev: &str) -> Result<()> {
    netns::run(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "sh",
            "-c",
            &format!("echo 1 > /sys/class/net/{dev}/threaded"),
        ],
    )?;
    Ok(())
}

/// Pins the NAPI threads of devices named `dev` (in any namespace) to `cpu`.
fn pin_napi(dev: &str, cpu: usize) -> Result<()> {
    let prefix = format!("napi/{dev}-");
    let mut pinned = 0;
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim_end().starts_with(&prefix[..prefix.len().min(15)]) {
            cpu::pin(pid, cpu)?;
            pinned += 1;
        }
    }
    ensure!(pinned > 0, "no NAPI thread of {dev} to pin");
    Ok(())
}

/// Installs `system` on the node: its devices `up_if` (the uplink) and `bk_if` (towards the
/// backends).
fn install(
    system: System,
    node: &str,
    up_if: u32,
    bk_if: u32,
    svclb: &mut Option<Box<Datapath>>,
) -> Result<Installed> {
    if let Some(xdp) = system.svclb_xdp() {
        let dp = match svclb.take() {
            Some(dp) => dp,
            None => {
                let sizes = Capacity {
                    slots: 4 * SERVICES * BACKENDS + 1024,
                    ..Capacity::DEFAULT
                };
                let mut dp = Datapath::load_with("saturation", sizes)?;
                // The SNAT ports an agent on this machine would take.
                dp.configure(&config::Settings {
                    snat_ports: Some(SnatPorts::Auto.resolve()?),
                    ..config::Settings::default()
                })?;
                let mut both = plan::<PacketSpec>();
                both.frontends.extend(plan::<Packet6>().frontends);
                let started = Instant::now();
                dp.program(&both);
                eprintln!(
                    "  svclb: {} frontends programmed in {:.1} s",
                    both.frontends.len(),
                    started.elapsed().as_secs_f64()
                );
                Box::new(dp)
            }
        };
        return in_netns(node, move || {
            let mut dp = dp;
            dp.finish_xdp_on(up_if)?;
            dp.finish_xdp_on(bk_if)?;
            dp.attach_uplink(up_if, xdp)?;
            Ok(Installed::Svclb(dp))
        });
    }
    let layout = Layout {
        protos: &["udp", "tcp"],
        external: true,
    };
    match system {
        System::IptablesLegacy | System::IptablesNft => {
            let backend = if system == System::IptablesLegacy {
                "legacy"
            } else {
                "nft"
            };
            for (tool, svcs) in [
                ("iptables", services::<PacketSpec>()),
                ("ip6tables", services::<Packet6>()),
            ] {
                let rules = kubeproxy::iptables(&svcs, layout);
                load_time(node, &format!("{tool}-{backend}-restore"), &[], &rules)?;
            }
            Ok(Installed::Rules)
        }
        System::Nftables => {
            for svcs in [services::<PacketSpec>(), services::<Packet6>()] {
                load_time(
                    node,
                    "nft",
                    &["-f", "-"],
                    &kubeproxy::nftables(&svcs, layout),
                )?;
            }
            Ok(Installed::Rules)
        }
        System::NullRedirect => Ok(Installed::Redirect {
            _program: in_netns(node, move || Redirect::attach(up_if, bk_if))?,
        }),
        System::Routing => Ok(Installed::Rules),
        _ => unreachable!("svclb systems are installed above"),
    }
}

/// Addresses of a family on this bench's wires.
pub trait SatNet: Net {
    /// Flow 0's source address; flow `i`'s adds `i / 64512` to its last 32 bits.
    fn client_base() -> Self::Addr;
}

impl SatNet for PacketSpec {
    fn client_base() -> Ipv4Addr {
        Ipv4Addr::new(100, 64, 0, 1)
    }
}

impl SatNet for Packet6 {
    fn client_base() -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x64, 0, 0, 0, 0, 0, 1)
    }
}

fn services<P: Net>() -> Vec<Svc> {
    (0..SERVICES)
        .map(|s| Svc {
            vip: P::lb(s).into(),
            port: 80,
            backends: (0..BACKENDS)
                .map(|b| (P::backend(s, b).into(), 8080))
                .collect(),
        })
        .collect()
}

/// The same services for svclb: LoadBalancer IPs (TCP and UDP port 80), the Cluster policy,
/// every backend on another node.
fn plan<P: Net>() -> Plan {
    let mut plan = Plan::default();
    for svc in services::<P>() {
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            let backends = svc
                .backends
                .iter()
                .map(|(addr, port)| PlanBackend {
                    node: Some("n2".into()),
                    ..PlanBackend::remote(*addr, *port)
                })
                .collect();
            plan.frontends.insert(
                FrontendKey::new(svc.vip, svc.port, protocol),
                Frontend::new(
                    format!("default/lb-{}", svc.vip),
                    FrontendKind::LoadBalancer,
                    Scope::External,
                    backends,
                ),
            );
        }
    }
    plan
}

/// One ratio of best rounds from this run, against its target.
#[derive(Serialize)]
pub struct Ratio {
    pub name: &'static str,
    pub family: &'static str,
    pub load: String,
    /// None when a side had no valid point.
    pub value: Option<f64>,
    pub target: &'static str,
    pub met: Option<bool>,
}

/// The best delivered Mpps of a system's rounds (none if any round was invalid): noise on a
/// shared machine only ever takes throughput away.
fn best_mpps(r: &Results, system: System, family: &str, load: Load) -> Option<f64> {
    let points: Vec<&Point> = points_of(r, system, family, load).collect();
    if points.is_empty() || points.iter().any(|p| !p.valid) {
        return None;
    }
    points.iter().map(|p| p.delivered_mpps).reduce(f64::max)
}

/// The least node time per frame of a system's rounds, valid or not.
fn best_ns(r: &Results, system: System, family: &str, load: Load) -> Option<f64> {
    points_of(r, system, family, load)
        .map(|p| p.ns_per_packet)
        .reduce(f64::min)
}

/// The rounds' points of one system, family and load.
fn points_of<'a>(
    r: &'a Results,
    system: System,
    family: &'a str,
    load: Load,
) -> impl Iterator<Item = &'a Point> {
    r.points
        .iter()
        .filter(move |p| p.system == system.key() && p.family == family && p.load == load.key())
}

/// The issue's targets, per family and load: native XDP against the best iptables, TC only
/// and the null redirect; IPv6 against IPv4. The null redirect is as cheap as the generator,
/// which cannot saturate it on two cores: that ratio is of the node's time per frame (the
/// ceiling's over native XDP's), which is what a throughput ratio at saturation comes to.
pub fn ratios(r: &Results) -> Vec<Ratio> {
    let mut out = Vec::new();
    for load in LOADS {
        for ipv6 in [false, true] {
            let f = family(ipv6);
            let native = best_mpps(r, System::XdpNative, f, load);
            let iptables = [System::IptablesLegacy, System::IptablesNft]
                .into_iter()
                .filter_map(|s| best_mpps(r, s, f, load))
                .reduce(f64::max);
            let over = |other: Option<f64>| native.zip(other).map(|(a, b)| a / b);
            let per_frame = |system| {
                let xdp = native.and(best_ns(r, System::XdpNative, f, load));
                best_ns(r, system, f, load).zip(xdp).map(|(b, a)| b / a)
            };
            let against = [
                ("native XDP / best iptables", over(iptables), 3.0, ">= 3x"),
                (
                    "native XDP / nftables",
                    over(best_mpps(r, System::Nftables, f, load)),
                    0.0,
                    "(none)",
                ),
                (
                    "native XDP / TC only",
                    over(best_mpps(r, System::TcOnly, f, load)),
                    2.0,
                    ">= 2x",
                ),
                (
                    "native XDP / null redirect, per frame",
                    per_frame(System::NullRedirect),
                    0.5,
                    ">= 0.5x",
                ),
            ];
            for (name, value, at_least, target) in against {
                out.push(Ratio {
                    name,
                    family: f,
                    load: load.key(),
                    value,
                    target,
                    met: (at_least > 0.0)
                        .then(|| value.map(|v| v >= at_least))
                        .flatten(),
                });
            }
        }
        let v4 = best_mpps(r, System::XdpNative, "IPv4", load);
        let v6 = best_mpps(r, System::XdpNative, "IPv6", load);
        let value = v4.zip(v6).map(|(a, b)| a / b);
        out.push(Ratio {
            name: "native XDP, IPv4 / IPv6",
            family: "both",
            load: load.key(),
            value,
            target: "<= 1.2x",
            met: value.map(|v| v <= 1.2),
        });
    }
    out
}

/// The section of the results file.
pub fn render(r: &Results, out: &mut String) {
    let _ = writeln!(out, "## North-south at saturation: Mpps per core\n");
    let _ = writeln!(
        out,
        "A tester core offers frames to the node's uplink (a veth with threaded NAPI and GRO,\n\
         pinned to the other core): XDP frames that circulate, made the next flow's by an XDP\n\
         program on the tester's core, which receives what the node forwarded and sends it\n\
         again, as a traffic generator with two ports does. {} LoadBalancer IPs x {} backends\n\
         behind the tester's sink, Cluster policy (DNAT and SNAT). Each cell: Mpps delivered at\n\
         the sink, and the node core's ns per packet (busy time / packets); the best of {}\n\
         round(s) of {:.0} s, systems interleaved. The node's core runs the node alone. Busy\n\
         shares are of what a thread spinning on the node core reads in /proc/stat: {:.0}% here.\n\
         \"invalid\": the node core was under {:.0}% busy, or the frames piled up in front of the\n\
         tester's core (its sink's ring dropped as many as the node's side lost), so the point\n\
         did not measure the node at saturation (its figures follow). The loop is closed: what\n\
         is lost is made up by the frames seeded from user space (about 0.03 Mpps), so a\n\
         system that drops more than that empties the loop and leaves the node idle. The null\n\
         redirect costs the node about what the generator costs the tester, so two cores\n\
         cannot saturate it: its ratio below is of time per frame, its own taken at about 60%\n\
         busy, where a frame costs if anything more than at saturation (the ratio flatters\n\
         svclb).\n",
        r.services,
        r.backends,
        r.rounds,
        r.seconds_per_point,
        r.cpu_ceiling * 100.0,
        SATURATED * 100.0,
    );
    for ipv6 in [false, true] {
        let f = family(ipv6);
        let _ = write!(out, "| {f} |");
        for load in LOADS {
            let _ = write!(out, " {} |", load.label());
        }
        let _ = writeln!(out, "\n|---|{}", "---:|".repeat(LOADS.len()));
        for system in SYSTEMS {
            let _ = write!(out, "| {} |", system.label());
            for load in LOADS {
                let ns = best_ns(r, system, f, load).unwrap_or(f64::NAN);
                let cell = match best_mpps(r, system, f, load) {
                    Some(mpps) => format!("{mpps:.2} ({ns:.0} ns)"),
                    // Not measured (a partial run).
                    None if ns.is_nan() => "-".to_owned(),
                    None => {
                        let mpps = points_of(r, system, f, load)
                            .map(|p| p.delivered_mpps)
                            .fold(f64::NAN, f64::max);
                        format!("invalid: {mpps:.2} ({ns:.0} ns)")
                    }
                };
                let _ = write!(out, " {cell} |");
            }
            let _ = writeln!(out);
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(
        out,
        "| ratio | family | load | value | target | |\n|---|---|---|---:|---|---|"
    );
    for ratio in ratios(r) {
        let value = ratio.value.map_or("-".into(), |v| format!("{v:.2}x"));
        let met = match ratio.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {value} | {} | {met} |",
            ratio.name, ratio.family, ratio.load, ratio.target
        );
    }
    if !r.attribution.is_empty() {
        let _ = writeln!(
            out,
            "\nWhere svclb's time went (a separate run with the kernel's BPF statistics on, which\n\
             add their own cost): each program's run time per delivered frame, beside the node\n\
             core's whole time per frame; the rest is the driver, the page pool, the redirect and\n\
             (TC) the skb.\n\n| system | family | load | node ns/packet | XDP program | TC program |\n|---|---|---|---:|---:|---:|"
        );
        for a in &r.attribution {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.0} | {} | {:.0} |",
                a.system,
                a.family,
                a.load,
                a.ns_per_packet,
                a.xdp_ns.map_or("-".into(), |n| format!("{n:.0}")),
                a.tc_ns
            );
        }
    }
    let _ = writeln!(out);
}
