//! Sending a translated packet on ourselves: one FIB lookup for the egress device and next
//! hop, then a redirect with the MAC addresses it found. TC redirects after rewriting, and
//! leaves a next hop not resolved yet to the neighbour subsystem; XDP looks the route up
//! before rewriting ([`route`]) and leaves the packet to TC unless the lookup found it all.
//!
//! Needed when the new source is an address of this node (SNAT, or a NodePort frontend
//! restored on a reply): the stack drops such a packet arriving from outside as martian.

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SRC, TC_ACT_OK,
        bpf_fib_lookup, bpf_redir_neigh,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use svclb_common::{CtEntry, L3Addr, addr::v4_octets, conntrack::route_clock};
use svclb_ebpf::bytes;

use crate::{frame::Frame, maps::route_epoch, parse::Packet};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Looks up the route to `daddr` into `params`; the helper's result code.
#[inline(always)]
fn lookup<F: Frame>(
    ctx: &F,
    pkt: &Packet,
    daddr: &L3Addr,
    flags: u32,
    params: &mut bpf_fib_lookup,
) -> i64 {
    params.l4_protocol = pkt.proto;
    params.__bindgen_anon_1.tot_len = u16::from_be(pkt.tot_len_be);
    params.ifindex = ctx.ifindex();
    if pkt.is_v6() {
        params.family = AF_INET6;
        params.__bindgen_anon_4.ipv6_dst = words(daddr);
    } else {
        params.family = AF_INET;
        params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(v4_octets(daddr));
    }
    // SAFETY: `params` is a valid, sized lookup structure for this call.
    unsafe {
        fib_lookup(
            ctx.as_ptr(),
            params,
            size_of::<bpf_fib_lookup>() as i32,
            flags,
        )
    }
}

/// An IPv6 address as the lookup holds it: four network-order words.
#[inline(always)]
fn words(a: &L3Addr) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

#[inline(always)]
fn bytes(w: &[u32; 4]) -> L3Addr {
    let mut out = [0; 16];
    for (i, word) in w.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    out
}

/// Zeroes a lookup structure in place, a word at a time (see `svclb_ebpf::bytes`; a zeroed
/// value returned would be copied, and the copy made a `memset` call again).
#[inline(always)]
fn zeroed(params: &mut MaybeUninit<bpf_fib_lookup>) -> &mut bpf_fib_lookup {
    // SAFETY: plain old data of 64 bytes aligned to 4; all-zero is a valid value.
    unsafe {
        bytes::zero(params.as_mut_ptr());
        params.assume_init_mut()
    }
}

/// The source address this node uses towards `daddr` (what SNAT rewrites to).
#[inline(always)]
pub fn source_towards(ctx: &impl Frame, pkt: &Packet, daddr: &L3Addr) -> Option<L3Addr> {
    let mut params = MaybeUninit::uninit();
    let params = zeroed(&mut params);
    let ret = lookup(ctx, pkt, daddr, BPF_FIB_LOOKUP_SRC, params);
    if ret != i64::from(BPF_FIB_LKUP_RET_SUCCESS) && ret != i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        return None;
    }
    Some(source_of(pkt, params))
}

/// The source address a `BPF_FIB_LOOKUP_SRC` lookup chose.
#[inline(always)]
fn source_of(pkt: &Packet, params: &bpf_fib_lookup) -> L3Addr {
    if pkt.is_v6() {
        // SAFETY: union of integers; the lookup filled ipv6_src.
        return bytes(unsafe { &params.__bindgen_anon_3.ipv6_src });
    }
    // SAFETY: union of integers; the lookup filled ipv4_src.
    let src = unsafe { params.__bindgen_anon_3.ipv4_src }.to_ne_bytes();
    svclb_common::addr::v4(src)
}

/// A route found whole: the egress device, the MAC addresses to write, and (when asked for)
/// the source address this node uses on it.
pub struct Route {
    pub ifindex: u32,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub source: L3Addr,
}

/// The route to `daddr` into `out` when the FIB knows it all, next hop's MAC included (and
/// the MTU lets the packet through); `false` otherwise, for the stack to resolve. With
/// `source`, also the source address this node uses on it (what a new flow is SNATed to;
/// choosing it costs, over IPv6 most).
#[inline(always)]
pub fn route(
    ctx: &impl Frame,
    pkt: &Packet,
    daddr: &L3Addr,
    source: bool,
    out: &mut Route,
) -> bool {
    let mut params = MaybeUninit::uninit();
    let params = zeroed(&mut params);
    let flags = if source { BPF_FIB_LOOKUP_SRC } else { 0 };
    if lookup(ctx, pkt, daddr, flags, params) != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return false;
    }
    // SAFETY: union of byte arrays; a successful lookup filled the MAC addresses.
    let macs = unsafe { &params.__bindgen_anon_6.__bindgen_anon_2 };
    out.ifindex = params.ifindex;
    // SAFETY: two 6-byte arrays each.
    unsafe {
        bytes::copy(out.dmac.as_mut_ptr(), macs.dmac.as_ptr(), 6);
        bytes::copy(out.smac.as_mut_ptr(), macs.smac.as_ptr(), 6);
    }
    if source {
        out.source = source_of(pkt, params);
    }
    true
}

/// [`route`] to `daddr` (without the source) for a packet of a tracked flow whose direction's
/// entry is `entry`: the route cached there when it still serves (see `CtRoute`), else a
/// lookup, which is cached for the packets that follow.
#[inline(always)]
pub fn cached_route(
    ctx: &impl Frame,
    pkt: &Packet,
    daddr: &L3Addr,
    entry: *mut CtEntry,
    now: u64,
    out: &mut Route,
) -> bool {
    let epoch = route_epoch();
    let len = u16::from_be(pkt.tot_len_be);
    // SAFETY: a conntrack value found in this run stays valid until the program returns.
    let cached = unsafe { &raw mut (*entry).route };
    // SAFETY: as above; a packet of the flow on another CPU may rewrite it meanwhile, with
    // the same route unless the epoch changed, and then neither serves.
    unsafe {
        if (*cached).serves(len, now, epoch) {
            out.ifindex = (*cached).ifindex;
            bytes::copy(out.dmac.as_mut_ptr(), (*cached).dmac.as_ptr(), 6);
            bytes::copy(out.smac.as_mut_ptr(), (*cached).smac.as_ptr(), 6);
            return true;
        }
    }
    if !route(ctx, pkt, daddr, false, out) {
        return false;
    }
    // SAFETY: as above. Volatile stores, in this order: the route serves nothing while it is
    // written (`ifindex` 0) and from its last store on. (Another CPU reading it meanwhile sees
    // the stores in this order on x86; where stores may be seen out of order, a packet racing
    // a refresh may leave with a torn route, as a packet racing a route change may anyway.)
    unsafe {
        core::ptr::write_volatile(&raw mut (*cached).ifindex, 0);
        bytes::copy((*cached).dmac.as_mut_ptr(), out.dmac.as_ptr(), 6);
        bytes::copy((*cached).smac.as_mut_ptr(), out.smac.as_ptr(), 6);
        core::ptr::write_volatile(&raw mut (*cached).max_len, len);
        core::ptr::write_volatile(&raw mut (*cached).found, route_clock(now));
        core::ptr::write_volatile(&raw mut (*cached).epoch, epoch as u16);
        core::ptr::write_volatile(&raw mut (*cached).ifindex, out.ifindex);
    }
    true
}

/// Writes the route's MAC addresses into the frame.
#[inline(always)]
pub fn set_macs(ctx: &impl Frame, dmac: &[u8; 6], smac: &[u8; 6]) -> Result<(), i64> {
    ctx.store(0, dmac)?;
    ctx.store(6, smac)
}

/// Redirects the (already rewritten) packet out of the device that routes to its destination
/// `daddr`. Without a route the stack gets it and decides.
#[inline(always)]
pub fn redirect(ctx: &TcContext, pkt: &Packet, daddr: &L3Addr) -> i32 {
    let mut params = MaybeUninit::uninit();
    let params = zeroed(&mut params);
    let ret = lookup(ctx, pkt, daddr, 0, params);
    if ret == i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        // SAFETY: union of byte arrays; a successful lookup filled the MAC addresses.
        let macs = unsafe { &params.__bindgen_anon_6.__bindgen_anon_2 };
        if set_macs(ctx, &macs.dmac, &macs.smac).is_err() {
            return TC_ACT_OK;
        }
        // SAFETY: redirect to the egress of the device the route names.
        return unsafe { bpf_redirect(params.ifindex, 0) } as i32;
    }
    if ret == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        // The lookup left the next hop in the destination: let the neighbour subsystem
        // resolve it.
        let mut next_hop = if pkt.is_v6() {
            bpf_redir_neigh {
                nh_family: u32::from(AF_INET6),
                // SAFETY: union of integers, filled by the lookup.
                __bindgen_anon_1: aya_ebpf::bindings::bpf_redir_neigh__bindgen_ty_1 {
                    ipv6_nh: unsafe { params.__bindgen_anon_4.ipv6_dst },
                },
            }
        } else {
            bpf_redir_neigh {
                nh_family: u32::from(AF_INET),
                // SAFETY: union of integers, filled by the lookup.
                __bindgen_anon_1: aya_ebpf::bindings::bpf_redir_neigh__bindgen_ty_1 {
                    ipv4_nh: unsafe { params.__bindgen_anon_4.ipv4_dst },
                },
            }
        };
        // SAFETY: a valid, sized next-hop structure for this call.
        return unsafe {
            bpf_redirect_neigh(
                params.ifindex,
                &mut next_hop,
                size_of::<bpf_redir_neigh>() as i32,
                0,
            )
        } as i32;
    }
    TC_ACT_OK
}
