//! The TC programs (pod devices and uplinks; beside `xdp.rs`, the XDP program): the
//! per-packet decision.
//!
//! The BPF stack is 512 bytes for the whole call chain. The packet, its frontend and the
//! chosen backend live in a per-CPU scratch area instead of the stack, and the heavier steps
//! are BPF subprograms (`inline(never)`) with frames of their own. Subprograms return a plain
//! verdict (an error drops the packet): the verifier does not let one return a pointer to its
//! stack, which is how a `Result` would come back.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use svclb_common::{
    CT_DIR_FORWARD, CT_DIR_REPLY, L3Addr, ServiceValue,
    backend::BE_F_LOCAL,
    conntrack::{CT_F_REDIRECT, CT_F_SNAT},
    events::EV_TCP_WITHOUT_FLOW,
    service::{SCOPE_INTERNAL_VIEW, SVC_F_EXTERNAL, SVC_F_INTERNAL_VIEW, SVC_F_REJECT},
};

use crate::{
    conntrack, dns, forward, fragment, icmp, maps,
    nat::{self, End, rewrite},
    parse::{FRAG_FIRST, FRAG_LATER, FRAG_NONE, Packet, parse},
    quote,
    reject::reject,
    scratch::{self, Scratch},
    select,
};

/// Where the program runs: which frontend entry a packet gets.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Host side of a pod's device: traffic from pods (internal).
    Pod,
    /// An uplink: traffic from outside the node.
    Uplink,
}

pub fn ingress(ctx: &TcContext, side: Side) -> i32 {
    let Some(s) = scratch::get() else {
        return TC_ACT_OK;
    };
    if !parsed(ctx, &mut s.pkt) {
        return TC_ACT_OK;
    }
    if s.pkt.frag == FRAG_LATER {
        return later_fragment(ctx, &s.pkt);
    }
    if s.pkt.is_icmp() {
        return related(ctx, s);
    }
    if side == Side::Pod
        && s.pkt.is_udp()
        && s.pkt.frag == FRAG_NONE
        && s.pkt.dport_be == dns::DNS_PORT.to_be()
    {
        let verdict = dns::respond(ctx, &s.pkt);
        if verdict != dns::NOT_ANSWERED {
            return verdict;
        }
    }
    let verdict = match select::frontend(&s.pkt) {
        None => from_backend(ctx, &s.pkt),
        Some(svc) => {
            // Pods reaching an external frontend with a Local traffic policy get the
            // frontend's internal view (kube-proxy's short-circuit).
            s.svc = if side == Side::Pod && svc.flags & SVC_F_INTERNAL_VIEW != 0 {
                select::service(&s.pkt, SCOPE_INTERNAL_VIEW).unwrap_or(svc)
            } else {
                svc
            };
            to_service(ctx, s)
        }
    };
    if s.pkt.frag == FRAG_FIRST {
        fragment::record(ctx, &s.pkt, verdict, conntrack::now_ns());
    }
    verdict
}

/// The parser in a frame of its own: inlined, its spills would sit in `ingress`'s frame,
/// under every step's.
#[inline(never)]
fn parsed(ctx: &TcContext, pkt: &mut Packet) -> bool {
    parse(ctx, pkt)
}

/// A fragment without the L4 header: translated as its datagram's first fragment was.
#[inline(never)]
fn later_fragment(ctx: &TcContext, pkt: &Packet) -> i32 {
    match fragment::follow(ctx, pkt, conntrack::now_ns()) {
        Ok(Some((flags, daddr))) => send(ctx, pkt, flags, &daddr).unwrap_or(TC_ACT_SHOT),
        Ok(None) => TC_ACT_OK,
        Err(_) => TC_ACT_SHOT,
    }
}

/// Sends a rewritten packet on: by FIB redirect when the flow asks for it (`daddr` is its new
/// destination), with the TTL decremented as the stack would (a packet whose TTL runs out is
/// dropped), else through the stack.
#[inline(always)]
fn send(ctx: &TcContext, pkt: &Packet, flags: u16, daddr: &L3Addr) -> Result<i32, i64> {
    if flags & CT_F_REDIRECT == 0 {
        return Ok(TC_ACT_OK);
    }
    if pkt.ttl <= 1 {
        return Ok(TC_ACT_SHOT);
    }
    nat::decrement_ttl(ctx, pkt)?;
    Ok(forward::redirect(ctx, pkt, daddr))
}

/// A packet addressed to a frontend: translate it as its tracked flow says, or pick a backend.
#[inline(always)]
fn to_service(ctx: &TcContext, s: &mut Scratch) -> i32 {
    if !select::admitted(&s.svc, &s.pkt) {
        return TC_ACT_SHOT;
    }
    // One lookup of the frontend's counters for the packet and, if new, its flow.
    let stats = maps::stats(s.svc.id);
    let len = u64::from(ctx.len());
    maps::count(stats, |c| {
        c.packets += 1;
        c.bytes += len;
    });
    let verdict = tracked(ctx, &s.pkt, &s.svc, conntrack::tracked_now_ns());
    if verdict != NOT_TRACKED {
        return verdict;
    }
    if s.pkt.is_tcp() && !s.pkt.is_tcp_syn() {
        maps::event(EV_TCP_WITHOUT_FLOW);
        return TC_ACT_SHOT;
    }
    s.picked.now = conntrack::now_ns();
    if !s.pick() {
        maps::count(stats, |c| c.refused += 1);
        if s.svc.flags & SVC_F_REJECT != 0 {
            // The answer takes the packet's place: no fragment of a datagram any more, so
            // nothing for its later fragments to follow.
            s.pkt.frag = FRAG_NONE;
            return reject(ctx, &s.pkt);
        }
        return TC_ACT_SHOT;
    }
    maps::count(stats, |c| c.new_flows += 1);
    if s.picked.backend.addr == s.pkt.saddr && hairpin_source(s) {
        return to_snat(ctx, s);
    }
    if s.svc.flags & SVC_F_EXTERNAL != 0 && s.picked.backend.flags & BE_F_LOCAL == 0 {
        return to_remote(ctx, s);
    }
    match to_local(ctx, s) {
        // Called from here, not from `to_local`: two new-flow frames on one call chain would
        // not fit the stack.
        SNAT_INSTEAD => to_remote(ctx, s),
        verdict => verdict,
    }
}

/// What [`tracked`] returns for a packet it leaves to the caller.
const NOT_TRACKED: i32 = i32::MIN;
/// What [`to_local`] returns for a flow to SNAT instead.
const SNAT_INSTEAD: i32 = i32::MIN + 1;

/// A packet of a tracked flow whose backend still serves it: translated as recorded; the
/// verdict, or [`NOT_TRACKED`] when the flow is unknown or must pick again.
#[inline(never)]
fn tracked(ctx: &TcContext, pkt: &Packet, svc: &ServiceValue, now: u64) -> i32 {
    let key = conntrack::key_of(pkt, CT_DIR_FORWARD);
    let Some(entry) = conntrack::lookup(&key) else {
        return NOT_TRACKED;
    };
    // SAFETY: a map value found in this run stays valid until the program returns.
    let tracked = unsafe { &*entry };
    if !select::still_serves(tracked, pkt, svc) {
        return NOT_TRACKED;
    }
    conntrack::touch(&key, entry, pkt, now);
    if nat::apply(ctx, pkt, tracked, false).is_err() {
        return TC_ACT_SHOT;
    }
    send(ctx, pkt, tracked.flags, &tracked.nat_addr).unwrap_or(TC_ACT_SHOT)
}

/// A new flow to a backend on this node, or of a cluster IP: DNAT only, the client's address
/// is kept. If another flow has the reply tuple that would give (the same client port to
/// another frontend of the same backend), [`SNAT_INSTEAD`]: the new flow is to be SNATed to
/// this node as a remote one is, so the two never share one.
#[inline(never)]
fn to_local(ctx: &TcContext, s: &mut Scratch) -> i32 {
    match dnat_new(ctx, s) {
        Ok(verdict) => verdict,
        Err(conntrack::TUPLE_TAKEN) => SNAT_INSTEAD,
        Err(_) => TC_ACT_SHOT,
    }
}

#[inline(always)]
fn dnat_new(ctx: &TcContext, s: &mut Scratch) -> Result<i32, i64> {
    let reply_flags = if s.svc.flags & SVC_F_EXTERNAL != 0 {
        CT_F_REDIRECT
    } else {
        0
    };
    conntrack::create(&s.pkt, &mut s.picked, s.svc.id, reply_flags)?;
    let backend = &s.picked.backend;
    rewrite(
        ctx,
        &s.pkt,
        End::Destination,
        &backend.addr,
        backend.port_be,
    )?;
    Ok(TC_ACT_OK)
}

/// A new flow of an external frontend to a backend on another node: SNAT to this node's
/// address towards the backend, so the reply comes back here to be translated.
#[inline(never)]
fn to_remote(ctx: &TcContext, s: &mut Scratch) -> i32 {
    match forward::source_towards(ctx, &s.pkt, &s.picked.backend.addr) {
        Some(node) => {
            s.source = node;
            snat_new(ctx, s).unwrap_or(TC_ACT_SHOT)
        }
        None => TC_ACT_SHOT,
    }
}

/// A new flow whose backend is its own client (a pod reaching a service it backs, hairpin)
/// is SNATed to the service loopback address (`--service-loopback-address`), as Cilium does:
/// the pod would drop a packet from its own address arriving from outside, and the reply to
/// the loopback address comes back here to be translated. Sets `s.source`; `false` when no
/// address is configured (DNAT alone, then).
#[inline(always)]
fn hairpin_source(s: &mut Scratch) -> bool {
    let Some(config) = maps::config() else {
        return false;
    };
    s.source = if s.pkt.is_v6() {
        config.loopback6
    } else {
        config.loopback4
    };
    s.source != [0; 16]
}

/// A new flow SNATed to `s.source`.
#[inline(never)]
fn to_snat(ctx: &TcContext, s: &mut Scratch) -> i32 {
    snat_new(ctx, s).unwrap_or(TC_ACT_SHOT)
}

/// DNAT to the backend and SNAT to `s.source` with a port of its own, both directions tracked.
#[inline(always)]
fn snat_new(ctx: &TcContext, s: &mut Scratch) -> Result<i32, i64> {
    // `send` would drop it: claim no SNAT port for it.
    if s.pkt.ttl <= 1 {
        return Ok(TC_ACT_SHOT);
    }
    let port_be = conntrack::create_snat(&s.pkt, &mut s.picked, s.svc.id, &s.source)?;
    let (pkt, backend) = (&s.pkt, &s.picked.backend);
    rewrite(ctx, pkt, End::Destination, &backend.addr, backend.port_be)?;
    rewrite(ctx, pkt, End::Source, &s.source, port_be)?;
    send(ctx, pkt, CT_F_SNAT | CT_F_REDIRECT, &backend.addr)
}

/// An ICMP message: an error about a translated flow is translated like the flow (see `icmp`);
/// anything else passes.
#[inline(never)]
fn related(ctx: &TcContext, s: &mut Scratch) -> i32 {
    if !quote::parse_quote(ctx, &s.pkt, &mut s.quote) {
        return TC_ACT_OK;
    }
    for dir in icmp::DIRECTIONS {
        if let Some(entry) = conntrack::lookup(&icmp::flow_key(&s.quote, dir)) {
            // SAFETY: a map value found in this run stays valid until the program returns.
            let tracked = unsafe { &*entry };
            return match icmp::translate(ctx, &s.pkt, &s.quote, tracked, dir) {
                Ok(daddr) => send(ctx, &s.pkt, tracked.flags, &daddr).unwrap_or(TC_ACT_SHOT),
                Err(_) => TC_ACT_SHOT,
            };
        }
    }
    TC_ACT_OK
}

/// Not addressed to a frontend: a reply of a translated flow gets its frontend back as source
/// (and, for a SNATed flow, its client back as destination).
#[inline(never)]
fn from_backend(ctx: &TcContext, pkt: &Packet) -> i32 {
    reverse(ctx, pkt).unwrap_or(TC_ACT_SHOT)
}

#[inline(always)]
fn reverse(ctx: &TcContext, pkt: &Packet) -> Result<i32, i64> {
    let key = conntrack::key_of(pkt, CT_DIR_REPLY);
    let Some(entry) = conntrack::lookup(&key) else {
        return Ok(TC_ACT_OK);
    };
    // SAFETY: a map value found in this run stays valid until the program returns.
    let tracked = unsafe { &*entry };
    conntrack::touch(&key, entry, pkt, conntrack::tracked_now_ns());
    nat::apply(ctx, pkt, tracked, true)?;
    let daddr = if tracked.flags & CT_F_SNAT != 0 {
        tracked.snat_addr
    } else {
        pkt.daddr
    };
    send(ctx, pkt, tracked.flags, &daddr)
}
