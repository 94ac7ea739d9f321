//! The XDP program on uplinks: north-south traffic decided at the driver, before an skb
//! exists.
//!
//! - Refusals: a frontend's `loadBalancerSourceRanges`, and a Local traffic policy on a node
//!   without local endpoints, drop here.
//! - Flows of an external frontend (NodePort, LoadBalancer IP, externalIP) to a backend on
//!   another node are finished here, new and tracked alike, and so are their replies: the
//!   same selection (`select`), conntrack, NAT and checksum code as TC, then the FIB's MAC
//!   addresses and `XDP_TX` back out of the uplink (or `XDP_REDIRECT` to another uplink).
//!   The route is looked up before anything is rewritten: when the FIB cannot name the next
//!   hop's MAC (no neighbour yet) or the packet is too big for the route, the untouched
//!   packet passes to TC, which resolves it.
//! - Everything else passes to TC, which stays complete on its own: a backend on this node
//!   (the packet must reach a pod device through the stack anyway), cluster IPs, ICMP errors,
//!   fragments, rejects, TTLs about to run out.
//!
//! Nothing is counted twice: a packet XDP passes is counted by TC, one it finishes here.

use aya_ebpf::{
    bindings::{
        BPF_NOEXIST,
        xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    },
    programs::XdpContext,
};
use svclb_common::{
    CT_DIR_FORWARD, CT_DIR_REPLY, CtEntry, L3Addr, XdpStats,
    backend::BE_F_LOCAL,
    conntrack::{CT_F_REDIRECT, CT_F_SNAT},
    events::EV_TCP_WITHOUT_FLOW,
    service::{SVC_F_EXTERNAL, SVC_F_REJECT},
};

use crate::{
    conntrack,
    forward::{self, Route},
    frame::Frame,
    maps::{self, SVCLB_XDP_PORTS, SVCLB_XDP_STATS},
    nat::{self, End, rewrite},
    parse::{FRAG_LATER, FRAG_NONE, Packet, parse_into_frame},
    scratch::{self, Scratch},
    select,
};

/// What [`tracked`] returns for a packet it leaves to the caller.
const NOT_TRACKED: u32 = u32::MAX;

pub fn run(ctx: &XdpContext) -> u32 {
    let Some(s) = scratch::get() else {
        return XDP_PASS;
    };
    if !parsed(ctx, &mut s.pkt) {
        return XDP_PASS;
    }
    // A later fragment has no ports to find a frontend by: TC follows its first fragment.
    if s.pkt.is_icmp() || s.pkt.frag == FRAG_LATER {
        return XDP_PASS;
    }
    match select::frontend(&s.pkt) {
        None => from_backend(ctx, s),
        Some(svc) => {
            s.svc = svc;
            to_service(ctx, s)
        }
    }
}

/// The parser in a frame of its own (see `tc::parsed`). It reads the frame's pointers from
/// the context itself, by volatile loads: otherwise LLVM hoists those loads into the caller
/// and passes the pointers as 32-bit integers, whose widening the verifier refuses.
#[inline(never)]
fn parsed(ctx: &XdpContext, pkt: &mut Packet) -> bool {
    // SAFETY: the context wraps the kernel's valid `xdp_md` pointer.
    let (start, end) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*ctx.ctx).data) as usize,
            core::ptr::read_volatile(&raw const (*ctx.ctx).data_end) as usize,
        )
    };
    parse_into_frame(start, end, pkt)
}

#[inline(always)]
fn to_service(ctx: &XdpContext, s: &mut Scratch) -> u32 {
    if s.svc.flags & SVC_F_EXTERNAL == 0 {
        return XDP_PASS;
    }
    if !select::admitted(&s.svc, &s.pkt) {
        return XDP_DROP;
    }
    // No endpoint here and nothing to answer with: only a Local traffic policy on a node
    // without local endpoints (kube-proxy drops those too).
    if s.svc.count == 0 && s.svc.flags & SVC_F_REJECT == 0 {
        return XDP_DROP;
    }
    // A first fragment: TC records what its later fragments follow.
    if s.pkt.frag != FRAG_NONE || !finishes_on(Frame::ifindex(ctx)) {
        return XDP_PASS;
    }
    let verdict = tracked(ctx, s);
    if verdict != NOT_TRACKED {
        return verdict;
    }
    new_flow(ctx, s)
}

/// Whether XDP finishes a flow with this entry: one SNATed to a remote backend (the only
/// kind whose packets leave by the uplink again).
#[inline(always)]
fn ours(entry: &CtEntry) -> bool {
    entry.flags & (CT_F_SNAT | CT_F_REDIRECT) == CT_F_SNAT | CT_F_REDIRECT
}

/// A packet of a tracked flow: finished here, passed to TC, or [`NOT_TRACKED`] when the flow
/// is unknown or must pick again.
#[inline(never)]
fn tracked(ctx: &XdpContext, s: &mut Scratch) -> u32 {
    let key = conntrack::key_of(&s.pkt, CT_DIR_FORWARD);
    let Some(entry) = conntrack::lookup(&key) else {
        return NOT_TRACKED;
    };
    // SAFETY: a map value found in this run stays valid until the program returns.
    let tracked = unsafe { &*entry };
    if !select::still_serves(tracked, &s.pkt, &s.svc) {
        return NOT_TRACKED;
    }
    let now = conntrack::tracked_now_ns();
    if !ours(tracked) || !tracked_sendable(ctx, &s.pkt, &tracked.nat_addr, entry, now, &mut s.route)
    {
        return XDP_PASS;
    }
    count_packet(ctx, s.svc.id, false);
    conntrack::touch(&key, entry, &s.pkt, now);
    if nat::apply(ctx, &s.pkt, tracked, false).is_err() {
        return XDP_DROP;
    }
    send(ctx, &s.pkt, &s.route)
}

/// A new flow: to a remote backend it is SNATed to this node's address on the route towards
/// it, as TC would; anything else is TC's. Only a SYN opens a TCP flow (TC drops the rest
/// too).
#[inline(never)]
fn new_flow(ctx: &XdpContext, s: &mut Scratch) -> u32 {
    if s.pkt.is_tcp() && !s.pkt.is_tcp_syn() {
        maps::event(EV_TCP_WITHOUT_FLOW);
        return XDP_DROP;
    }
    s.picked.now = conntrack::now_ns();
    if !s.pick() {
        return XDP_PASS;
    }
    let backend = &s.picked.backend;
    if backend.flags & BE_F_LOCAL != 0 || backend.addr == s.pkt.saddr {
        return XDP_PASS;
    }
    if !sendable(ctx, &s.pkt, &backend.addr, true, &mut s.route) {
        return XDP_PASS;
    }
    snat_new(ctx, s).unwrap_or(XDP_DROP)
}

#[inline(always)]
fn snat_new(ctx: &XdpContext, s: &mut Scratch) -> Result<u32, i64> {
    let port_be = conntrack::create_snat(&s.pkt, &mut s.picked, s.svc.id, &s.route.source)?;
    let (pkt, backend, source) = (&s.pkt, &s.picked.backend, &s.route.source);
    count_packet(ctx, s.svc.id, true);
    rewrite(ctx, pkt, End::Destination, &backend.addr, backend.port_be)?;
    rewrite(ctx, pkt, End::Source, source, port_be)?;
    Ok(send(ctx, pkt, &s.route))
}

/// Not addressed to a frontend: the reply of a flow SNATed to a remote backend gets its
/// frontend back as source and its client as destination; anything else passes.
#[inline(never)]
fn from_backend(ctx: &XdpContext, s: &mut Scratch) -> u32 {
    // A first fragment of a reply: TC records what its later fragments follow.
    if s.pkt.frag != FRAG_NONE || !finishes_on(Frame::ifindex(ctx)) {
        return XDP_PASS;
    }
    let key = conntrack::key_of(&s.pkt, CT_DIR_REPLY);
    let Some(entry) = conntrack::lookup(&key) else {
        return XDP_PASS;
    };
    // SAFETY: a map value found in this run stays valid until the program returns.
    let tracked = unsafe { &*entry };
    let now = conntrack::tracked_now_ns();
    if !ours(tracked)
        || !tracked_sendable(ctx, &s.pkt, &tracked.snat_addr, entry, now, &mut s.route)
    {
        return XDP_PASS;
    }
    conntrack::touch(&key, entry, &s.pkt, now);
    if nat::apply(ctx, &s.pkt, tracked, true).is_err() {
        return XDP_DROP;
    }
    send(ctx, &s.pkt, &s.route)
}

/// Whether a new flow's packet to `daddr` can leave from here: its TTL lasts another hop
/// (else the stack answers), and the FIB names the device and MAC addresses, to a device XDP
/// can send on (this uplink, or another one it finishes flows on). Fills `route`, with the
/// source address when `source` asks for it.
#[inline(always)]
fn sendable(
    ctx: &XdpContext,
    pkt: &Packet,
    daddr: &L3Addr,
    source: bool,
    route: &mut Route,
) -> bool {
    pkt.ttl > 1 && forward::route(ctx, pkt, daddr, source, route) && reachable(ctx, route)
}

/// [`sendable`] for a packet of a tracked flow, whose direction's `entry` caches the route.
#[inline(always)]
fn tracked_sendable(
    ctx: &XdpContext,
    pkt: &Packet,
    daddr: &L3Addr,
    entry: *mut CtEntry,
    now: u64,
    route: &mut Route,
) -> bool {
    pkt.ttl > 1
        && forward::cached_route(ctx, pkt, daddr, entry, now, route)
        && reachable(ctx, route)
}

/// Whether XDP can send on the device `route` leaves by.
#[inline(always)]
fn reachable(ctx: &XdpContext, route: &Route) -> bool {
    route.ifindex == Frame::ifindex(ctx) || finishes_on(route.ifindex)
}

/// Whether XDP finishes flows on uplink `ifindex` (the agent says where: see
/// `SVCLB_XDP_PORTS`).
#[inline(always)]
fn finishes_on(ifindex: u32) -> bool {
    SVCLB_XDP_PORTS.get_ifindex(ifindex).is_some()
}

/// Sends a rewritten packet on the route [`sendable`] found, the TTL decremented as the stack
/// would have.
#[inline(always)]
fn send(ctx: &XdpContext, pkt: &Packet, route: &Route) -> u32 {
    if nat::decrement_ttl(ctx, pkt).is_err()
        || forward::set_macs(ctx, &route.dmac, &route.smac).is_err()
    {
        return XDP_DROP;
    }
    if route.ifindex == Frame::ifindex(ctx) {
        return XDP_TX;
    }
    // A miss (the device left the map since) drops: the packet is rewritten already.
    SVCLB_XDP_PORTS
        .redirect(route.ifindex, u64::from(XDP_DROP))
        .unwrap_or_else(|fallback| fallback)
}

/// Counts a packet XDP finishes into its frontend's counters (TC counts those it passes).
#[inline(always)]
fn count_packet(ctx: &XdpContext, svc_id: u32, new_flow: bool) {
    let len = u64::from(Frame::len(ctx));
    maps::count(maps::stats(svc_id), |c| {
        c.packets += 1;
        c.bytes += len;
        if new_flow {
            c.new_flows += 1;
        }
    });
}

/// Counts `action` into the uplink's counters (made on its first packet).
#[inline(always)]
pub fn count(ctx: &XdpContext, action: u32) {
    let ifindex = Frame::ifindex(ctx);
    let mut stats = SVCLB_XDP_STATS.get_ptr_mut(&ifindex);
    if stats.is_none() {
        // Another CPU may make it first: then this insert fails and the lookup finds theirs.
        let _ = SVCLB_XDP_STATS.insert(&ifindex, &XdpStats::default(), u64::from(BPF_NOEXIST));
        stats = SVCLB_XDP_STATS.get_ptr_mut(&ifindex);
    }
    if let Some(stats) = stats {
        // SAFETY: this CPU's slot of a map value, valid until the program returns.
        let stats = unsafe { &mut *stats };
        match action {
            XDP_DROP => stats.dropped += 1,
            XDP_PASS => stats.passed += 1,
            _ => stats.finished += 1,
        }
    }
}
