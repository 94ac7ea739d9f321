//! Sending a translated packet on ourselves: a FIB lookup for the egress device, then a
//! redirect that lets the neighbour subsystem fill in the MAC addresses.
//!
//! Needed when the new source is an address of this node (SNAT, or a NodePort frontend
//! restored on a reply): the stack drops such a packet arriving from outside as martian.

use aya_ebpf::{
    EbpfContext as _,
    bindings::__sk_buff,
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SRC, TC_ACT_OK,
        bpf_fib_lookup,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect_neigh},
    programs::TcContext,
};
use svclb_common::{L3Addr, addr::v4_octets};

use crate::parse::Packet;

const AF_INET: u8 = 2;

/// The device the packet is on (for TC ingress, the one it arrived on).
#[inline(always)]
pub fn ifindex(ctx: &TcContext) -> u32 {
    let skb: *const __sk_buff = ctx.as_ptr().cast();
    // SAFETY: the context wraps the kernel's valid skb pointer.
    unsafe { (*skb).ifindex }
}

/// The route to `daddr`: the egress device and the source address the node would use.
#[inline(always)]
pub fn route(ctx: &TcContext, pkt: &Packet, daddr: &L3Addr) -> Option<(u32, L3Addr)> {
    // SAFETY: plain old data, all-zero is a valid value.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = pkt.proto;
    params.__bindgen_anon_1.tot_len = u16::from_be(pkt.tot_len_be);
    params.ifindex = ifindex(ctx);
    params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(v4_octets(daddr));
    // SAFETY: `params` is a valid, sized lookup structure for this call.
    let ret = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut params,
            size_of::<bpf_fib_lookup>() as i32,
            BPF_FIB_LOOKUP_SRC,
        )
    };
    if ret != i64::from(BPF_FIB_LKUP_RET_SUCCESS) && ret != i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        return None;
    }
    // SAFETY: union of integers; the lookup filled ipv4_src.
    let src = unsafe { params.__bindgen_anon_3.ipv4_src }.to_ne_bytes();
    Some((params.ifindex, svclb_common::addr::v4(src)))
}

/// Redirects the (already rewritten) packet out of the device that routes to its destination.
/// Without a route the stack gets it and decides.
#[inline(always)]
pub fn redirect(ctx: &TcContext, pkt: &Packet, daddr: &L3Addr) -> i32 {
    match route(ctx, pkt, daddr) {
        // SAFETY: a NULL neighbour makes the helper resolve the next hop itself.
        Some((ifindex, _)) => unsafe {
            bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) as i32
        },
        None => TC_ACT_OK,
    }
}
