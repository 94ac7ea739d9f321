//! North-south: the XDP program against the uplink's TC program, per packet and end to end.
//!
//! Per packet, by BPF_PROG_TEST_RUN in a namespace whose FIB routes the remote pods: 1000
//! LoadBalancer IPs with 10 remote backends each; the same frames (new flow, tracked flow,
//! reply) through both programs, one run per call on a fresh copy, interleaved per call so
//! the machine's drift spreads over both; beside them each program's fixed cost of a single
//! timed run (a frame it passes untouched).
//!
//! End to end, in three labs built side by side (XDP native, generic, off): an external
//! client, outside every node's cgroup, through node 1's NodePort to backends on node 2;
//! connect, one request, one answer, close, and requests per second over one connection, in
//! interleaved rounds; then the kernel's own run-time statistics of node 1's XDP and TC
//! programs over one more round each.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use nix::sys::signal::Signal;
use svclb::{
    entries::Capacity,
    plan::{Frontend, FrontendKey, FrontendKind, Plan, PlanBackend, Protocol, Scope},
};
use svclb_tests::{
    Lab, LabSpec,
    family::TestPacket,
    manifests::{WEB, service},
    packet::{PacketSpec, TCP_ACK, TCP_SYN},
    packet6::Packet6,
};

use crate::{
    Settings,
    common::{
        datapath::Datapath,
        fixture::{Hook, XDP_PASS, uplink_ns},
    },
    latency::{parse_bench, percentile_us, round_order, run_stats},
};

const SERVICES: usize = 1_000;
const BACKENDS: usize = 10;

/// One program's per-packet figures (ns, one run per call).
pub struct PacketRow {
    pub ipv6: bool,
    pub hook: Hook,
    pub new_flow: f64,
    pub tracked: f64,
    pub reply: f64,
    /// A frame it passes untouched: the fixed cost of timing one run.
    pub overhead: f64,
}

/// One XDP mode end to end.
pub struct EndToEnd {
    pub mode: &'static str,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub requests_per_s: f64,
    pub failed: usize,
    /// ns per run of node 1's XDP program (`None` with XDP off) and uplink TC program
    /// (`None` when XDP left it nothing) over a round, from the kernel's BPF statistics.
    pub xdp_ns: Option<f64>,
    pub tc_ns: Option<f64>,
}

pub struct Results {
    pub packet: Vec<PacketRow>,
    pub end_to_end: Vec<EndToEnd>,
}

/// Addresses of one family on the fixture uplink: LB IP `s`, backend `b` of it (in the
/// remote pods' prefix), the client, the node.
pub trait Net: TestPacket {
    fn lb(s: usize) -> Self::Addr;
    fn backend(s: usize, b: usize) -> Self::Addr;
    fn client() -> Self::Addr;
    fn node() -> Self::Addr;
    /// A frame's destination address.
    fn destination(frame: &[u8]) -> Self::Addr;
}

impl Net for PacketSpec {
    fn lb(s: usize) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + s as u32)
    }
    fn backend(s: usize, b: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, 2, 1 + ((s * 7 + b) % 250) as u8)
    }
    fn client() -> Ipv4Addr {
        Ipv4Addr::new(172, 31, 0, 100)
    }
    fn node() -> Ipv4Addr {
        Ipv4Addr::new(172, 31, 0, 11)
    }
    fn destination(f: &[u8]) -> Ipv4Addr {
        Ipv4Addr::new(f[30], f[31], f[32], f[33])
    }
}

impl Net for Packet6 {
    fn lb(s: usize) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(Ipv6Addr::new(0xfd00, 0x198, 0, 0, 0, 0, 0, 0)) + s as u128)
    }
    fn backend(s: usize, b: usize) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 1 + ((s * 7 + b) % 250) as u16)
    }
    fn client() -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x31, 0, 0, 0, 0, 0, 0x100)
    }
    fn node() -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x31, 0, 0, 0, 0, 0, 0x11)
    }
    fn destination(f: &[u8]) -> Ipv6Addr {
        Ipv6Addr::from(<[u8; 16]>::try_from(&f[38..54]).expect("16 bytes"))
    }
}

fn plan<P: Net>() -> Plan {
    let mut plan = Plan::default();
    for s in 0..SERVICES {
        let backends = (0..BACKENDS)
            .map(|b| PlanBackend {
                node: Some("n2".into()),
                ..PlanBackend::remote(P::backend(s, b).into(), 8080)
            })
            .collect();
        plan.frontends.insert(
            FrontendKey::new(P::lb(s).into(), 80, Protocol::Tcp),
            Frontend::new(
                format!("default/lb{s}"),
                FrontendKind::LoadBalancer,
                Scope::External,
                backends,
            ),
        );
    }
    plan
}

/// Runs `frame` once through `hook`'s program: its verdict (checked against `want`), output
/// and time.
fn timed(
    dp: &mut Datapath,
    ifindex: u32,
    hook: Hook,
    frame: &[u8],
    want: u32,
) -> Result<(Vec<u8>, Duration)> {
    let (verdict, out, took) = match hook {
        Hook::Tc => dp.run_uplink_repeat(ifindex, frame, 1)?,
        Hook::Xdp => dp.run_xdp_repeat(ifindex, frame, 1)?,
    };
    ensure!(
        verdict == want,
        "{hook:?}: verdict {verdict}, expected {want}"
    );
    Ok((out, took))
}

fn per_packet<P: Net>(calls: u32) -> Result<Vec<PacketRow>> {
    let (ns, ifindex) = uplink_ns::<P>(&format!("bench-ns{}", P::FAMILY))?;
    svclb_tests::netns::in_netns(&ns.0.clone(), move || {
        let sizes = Capacity {
            slots: SERVICES * BACKENDS + 1024,
            ..Capacity::DEFAULT
        };
        let mut dp = Datapath::load_with(&format!("bench-ns{}", P::FAMILY), sizes)?;
        dp.finish_xdp_on(ifindex)?;
        dp.program(&plan::<P>());
        let target = P::lb(SERVICES - 1);
        let other = P::tcp((P::client(), 40_000), (P::node(), 22), TCP_ACK).build();
        let mut rows = Vec::new();
        let hooks = [Hook::Tc, Hook::Xdp];
        let mut sums = [[Duration::ZERO; 4]; 2];
        for i in 0..calls {
            for (h, hook) in hooks.into_iter().enumerate() {
                // Each hook its own client ports: its flows are its own.
                let sport = 1024 + (h as u32 * 30_000 + i % 30_000) as u16;
                let client = (P::client(), sport);
                let syn = P::tcp(client, (target, 80), TCP_SYN).build();
                let (out, took) = timed(&mut dp, ifindex, hook, &syn, hook.sent())?;
                sums[h][0] += took;
                let ack = P::tcp(client, (target, 80), TCP_ACK).build();
                sums[h][1] += timed(&mut dp, ifindex, hook, &ack, hook.sent())?.1;
                let (backend, snat_port) = (P::destination(&out), P::source_port(&out));
                let reply = P::tcp((backend, 8080), (P::node(), snat_port), TCP_ACK).build();
                sums[h][2] += timed(&mut dp, ifindex, hook, &reply, hook.sent())?.1;
                let pass = match hook {
                    Hook::Tc => 0,
                    Hook::Xdp => XDP_PASS,
                };
                sums[h][3] += timed(&mut dp, ifindex, hook, &other, pass)?.1;
            }
        }
        let avg = |d: Duration| d.as_nanos() as f64 / f64::from(calls);
        for (h, hook) in hooks.into_iter().enumerate() {
            rows.push(PacketRow {
                ipv6: P::FAMILY == "IPv6",
                hook,
                new_flow: avg(sums[h][0]),
                tracked: avg(sums[h][1]),
                reply: avg(sums[h][2]),
                overhead: avg(sums[h][3]),
            });
        }
        Ok(rows)
    })
}

/// A lab for one XDP mode: node 1's NodePort, backends on node 2 only.
struct ModeLab {
    mode: &'static str,
    lab: Lab,
    times: Vec<Duration>,
    failed: usize,
    rps: Vec<f64>,
}

fn mode_lab(mode: &'static str) -> Result<ModeLab> {
    let mut lab = Lab::new(LabSpec {
        pods_per_node: 2,
        agent_args: vec!["--xdp-mode".into(), mode.into()],
        ..LabSpec::default()
    })?;
    lab.write_manifest("nodes.yaml", &lab.nodes_manifest())?;
    let pods = lab.nodes[1].pods.clone();
    lab.write_manifest(
        "web.yaml",
        &service(
            "web",
            "10.96.0.20",
            &[WEB.with_node_port(30080)],
            &pods,
            "  type: NodePort\n",
            "",
        ),
    )?;
    lab.start_agents()?;
    Ok(ModeLab {
        mode,
        lab,
        times: Vec::new(),
        failed: 0,
        rps: Vec::new(),
    })
}

const TARGET: &str = "172.31.0.11:30080";

fn round(m: &ModeLab, connections: usize) -> Result<(Vec<Duration>, usize, f64)> {
    let lines = m
        .lab
        .run_external_client(&["bench", TARGET, &connections.to_string(), "20000"])?;
    parse_bench(&lines)
}

/// The id of node 1's program on `hook` of eth0.
fn program_id(lab: &Lab, hook: &str) -> Option<u64> {
    let status = lab.status(0).ok()?;
    status["links"].as_array()?.iter().find_map(|l| {
        (l["device"] == "eth0" && l["hook"].as_str()?.starts_with(hook))
            .then(|| l["program_id"].as_u64())?
    })
}

/// ns per run of node 1's XDP and TC programs over one round, from the kernel's statistics.
fn program_costs(m: &ModeLab, connections: usize) -> Result<(Option<f64>, Option<f64>)> {
    let xdp = program_id(&m.lab, "xdp");
    let tc = program_id(&m.lab, "tc").context("node 1's TC program in svclb status")?;
    let before: Vec<_> = [xdp, Some(tc)]
        .iter()
        .map(|id| id.map(run_stats).transpose())
        .collect::<Result<_>>()?;
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")?;
    let measured = round(m, connections);
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0")?;
    measured?;
    let per_run = |id: Option<u64>, before: Option<(f64, f64)>| -> Result<Option<f64>> {
        let (Some(id), Some((t0, n0))) = (id, before) else {
            return Ok(None);
        };
        let (t1, n1) = run_stats(id)?;
        Ok((n1 > n0).then(|| (t1 - t0) / (n1 - n0)))
    };
    let xdp_ns = per_run(xdp, before[0])?;
    let tc_ns = per_run(Some(tc), before[1])?;
    Ok((xdp_ns, tc_ns))
}

fn end_to_end(rounds: usize, connections: usize) -> Result<Vec<EndToEnd>> {
    let mut labs = Vec::new();
    for mode in ["native", "generic", "off"] {
        labs.push(mode_lab(mode).with_context(|| format!("XDP {mode}"))?);
    }
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    for r in 0..rounds {
        for i in round_order(r, labs.len()) {
            let m = &mut labs[i];
            let (times, failed, rps) = round(m, connections).with_context(|| m.mode)?;
            m.times.extend(times);
            m.failed += failed;
            m.rps.push(rps);
        }
        eprintln!("  round {} of {rounds} ({:.0?})", r + 1, started.elapsed());
    }
    let mut out = Vec::new();
    for m in &mut labs {
        let (xdp_ns, tc_ns) = program_costs(m, connections)?;
        m.times.sort();
        m.rps.sort_by(f64::total_cmp);
        let row = EndToEnd {
            mode: m.mode,
            p50_us: percentile_us(&m.times, 0.5),
            p90_us: percentile_us(&m.times, 0.9),
            p99_us: percentile_us(&m.times, 0.99),
            requests_per_s: m.rps[m.rps.len() / 2],
            failed: m.failed,
            xdp_ns,
            tc_ns,
        };
        eprintln!(
            "  XDP {}: p50 {:.0} µs, p99 {:.0} µs, {:.0} requests/s, XDP {:?} ns/run, TC {:?} ns/run",
            row.mode, row.p50_us, row.p99_us, row.requests_per_s, row.xdp_ns, row.tc_ns
        );
        out.push(row);
    }
    for m in &mut labs {
        let _ = m.lab.stop_agent(0, Signal::SIGTERM);
    }
    Ok(out)
}

pub fn run(settings: &Settings) -> Result<Results> {
    // New flows claim SNAT ports (4,536 per backend and node): both programs' flows together
    // stay well below that.
    let calls = if settings.quick { 2_000 } else { 5_000 };
    let mut packet = per_packet::<PacketSpec>(calls)?;
    packet.extend(per_packet::<Packet6>(calls)?);
    for r in &packet {
        eprintln!(
            "  {} {:?}: new {:.0} ns, tracked {:.0} ns, reply {:.0} ns, fixed {:.0} ns",
            if r.ipv6 { "IPv6" } else { "IPv4" },
            r.hook,
            r.new_flow,
            r.tracked,
            r.reply,
            r.overhead
        );
    }
    let (rounds, connections) = if settings.quick { (3, 100) } else { (5, 300) };
    let end_to_end = end_to_end(rounds, connections)?;
    Ok(Results { packet, end_to_end })
}

/// The section of the results file.
pub fn render(r: &Results, out: &mut String) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "## North-south: XDP against TC\n");
    let _ = writeln!(
        out,
        "Per packet (BPF_PROG_TEST_RUN, ns): {SERVICES} LoadBalancer IPs x {BACKENDS} backends on another node,\n\
         the same frames through the uplink's XDP program (which sends them out itself, `XDP_TX`)\n\
         and its TC program (which redirects them), one run per call, interleaved. \"fixed\" is each\n\
         program's time for a frame it passes untouched, timed the same way: the cost of timing a\n\
         single run, to read the others against; \"net\" subtracts it.\n"
    );
    let _ = writeln!(
        out,
        "| family | program | new flow | tracked flow | reply | fixed | tracked, net |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|");
    for p in &r.packet {
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            if p.ipv6 { "IPv6" } else { "IPv4" },
            if p.hook == Hook::Xdp { "XDP" } else { "TC" },
            p.new_flow,
            p.tracked,
            p.reply,
            p.overhead,
            p.tracked - p.overhead
        );
    }
    for ipv6 in [false, true] {
        let find = |hook| r.packet.iter().find(|p| p.ipv6 == ipv6 && p.hook == hook);
        if let (Some(x), Some(t)) = (find(Hook::Xdp), find(Hook::Tc)) {
            let _ = writeln!(
                out,
                "\n{}: XDP to TC, tracked flow {:.2}x ({:.2}x net of the fixed cost; target: at most 0.5x), new flow {:.2}x, reply {:.2}x.",
                if ipv6 { "IPv6" } else { "IPv4" },
                x.tracked / t.tracked,
                (x.tracked - x.overhead) / (t.tracked - t.overhead),
                x.new_flow / t.new_flow,
                x.reply / t.reply
            );
        }
    }
    let _ = writeln!(
        out,
        "\nEnd to end: an external client through node 1's NodePort to backends on node 2 (SNAT),\n\
         XDP attached natively (veth), in generic mode, or off; connect, one request, one answer,\n\
         close, in interleaved rounds; requests per second over one connection (median of the\n\
         rounds); node 1's programs' average run time over one more round (kernel BPF statistics).\n"
    );
    let _ = writeln!(
        out,
        "| XDP | p50 (µs) | p90 (µs) | p99 (µs) | requests/s | failed | XDP ns/run | TC ns/run |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for e in &r.end_to_end {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} |",
            e.mode,
            e.p50_us,
            e.p90_us,
            e.p99_us,
            e.requests_per_s,
            e.failed,
            e.xdp_ns.map_or("-".to_owned(), |n| format!("{n:.0}")),
            e.tc_ns.map_or("-".to_owned(), |n| format!("{n:.0}"))
        );
    }
    let find = |mode| r.end_to_end.iter().find(|e| e.mode == mode);
    if let (Some(native), Some(off)) = (find("native"), find("off")) {
        let _ = writeln!(
            out,
            "\nXDP native to off: requests/s {:.2}x (target: at least 1.5x), p50 {:.2}x, p99 {:.2}x.\n",
            native.requests_per_s / off.requests_per_s,
            native.p50_us / off.p50_us,
            native.p99_us / off.p99_us
        );
    }
}
