//! Service lookup, backend choice and the per-packet decision.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_get_prandom_u32,
    programs::TcContext,
};
use svclb_common::{
    Backend, CT_DIR_FORWARD, CT_DIR_REPLY, CtEntry, ServiceKey, ServiceValue, SlotKey,
    service::SCOPE_ALL,
};

use crate::{
    conntrack,
    maps::{SVCLB_BACKENDS, SVCLB_SERVICES, SVCLB_SLOTS},
    nat::{End, rewrite_v4},
    parse::{Packet, parse},
};

#[inline(always)]
fn service_of(pkt: &Packet) -> Option<ServiceValue> {
    let key = ServiceKey {
        addr: pkt.daddr,
        port_be: pkt.dport_be,
        proto: pkt.proto,
        family: pkt.family,
        scope: SCOPE_ALL,
        _pad: [0; 3],
    };
    // SAFETY: the value is copied out at once.
    SVCLB_SERVICES.get_ptr(&key).map(|value| unsafe { *value })
}

#[inline(always)]
fn backend(id: u32) -> Option<Backend> {
    // SAFETY: the value is copied out at once.
    SVCLB_BACKENDS.get_ptr(&id).map(|value| unsafe { *value })
}

/// Whether the backend a tracked flow points at is still programmed. Checked for UDP packets
/// and TCP SYNs only: established TCP keeps its backend even after the endpoint is removed
/// (as with kube-proxy), while UDP flows and reused TCP tuples move to a live backend.
#[inline(always)]
fn backend_alive(entry: &CtEntry) -> bool {
    backend(entry.backend_id)
        .is_some_and(|be| be.addr == entry.nat_addr && be.port_be == entry.nat_port_be)
}

/// Uniform random choice among the frontend's slots.
#[inline(always)]
fn pick(svc: &ServiceValue) -> Option<(u32, Backend)> {
    if svc.count == 0 {
        return None;
    }
    // SAFETY: a helper without arguments or side effects.
    let slot = unsafe { bpf_get_prandom_u32() } % svc.count;
    let key = SlotKey {
        svc_id: svc.id,
        slot,
    };
    // SAFETY: the value is copied out at once.
    let id = SVCLB_SLOTS.get_ptr(&key).map(|value| unsafe { *value })?;
    Some((id, backend(id)?))
}

pub fn ingress(ctx: &TcContext) -> Result<i32, i64> {
    let Some(pkt) = parse(ctx) else {
        return Ok(TC_ACT_OK);
    };
    match service_of(&pkt) {
        Some(svc) => to_service(ctx, &pkt, &svc),
        None => from_backend(ctx, &pkt),
    }
}

/// A packet addressed to a frontend: DNAT to the tracked backend, or pick one.
#[inline(always)]
fn to_service(ctx: &TcContext, pkt: &Packet, svc: &ServiceValue) -> Result<i32, i64> {
    let now = conntrack::now_ns();
    if let Some(entry) = conntrack::lookup(&conntrack::key_of(pkt, CT_DIR_FORWARD)) {
        // SAFETY: copied out of a map value found in this run.
        let tracked = unsafe { *entry };
        let recheck = pkt.is_udp() || pkt.is_tcp_syn();
        if tracked.svc_id == svc.id && (!recheck || backend_alive(&tracked)) {
            conntrack::touch(entry, now);
            rewrite_v4(
                ctx,
                pkt,
                End::Destination,
                &tracked.nat_addr,
                tracked.nat_port_be,
            )?;
            return Ok(TC_ACT_OK);
        }
    }
    let Some((backend_id, backend)) = pick(svc) else {
        return Ok(TC_ACT_SHOT);
    };
    conntrack::create(pkt, &backend, backend_id, svc.id, now)?;
    rewrite_v4(ctx, pkt, End::Destination, &backend.addr, backend.port_be)?;
    Ok(TC_ACT_OK)
}

/// Not addressed to a frontend: a reply of a translated flow gets its frontend back as source.
#[inline(always)]
fn from_backend(ctx: &TcContext, pkt: &Packet) -> Result<i32, i64> {
    if let Some(entry) = conntrack::lookup(&conntrack::key_of(pkt, CT_DIR_REPLY)) {
        conntrack::touch(entry, conntrack::now_ns());
        // SAFETY: copied out of a map value found in this run.
        let tracked = unsafe { *entry };
        rewrite_v4(
            ctx,
            pkt,
            End::Source,
            &tracked.nat_addr,
            tracked.nat_port_be,
        )?;
    }
    Ok(TC_ACT_OK)
}
