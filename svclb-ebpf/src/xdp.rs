//! The XDP program on uplinks makes the first decisions about external traffic: the frontend
//! lookup, `loadBalancerSourceRanges`, and a Local traffic policy on a node without local
//! endpoints. What it refuses is dropped before an skb exists; everything else passes to the
//! TC program, which translates it. Rewriting stays in TC: its checksum helpers handle every
//! skb checksum state, which XDP cannot see.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    programs::XdpContext,
};
use svclb_common::service::{SVC_F_EXTERNAL, SVC_F_REJECT};

use crate::{
    parse::{FRAG_LATER, parse_frame},
    select,
};

#[inline(always)]
pub fn early(ctx: &XdpContext) -> Option<u32> {
    let pkt = parse_frame(ctx.data(), ctx.data_end())?;
    // A later fragment has no ports to find a frontend by: TC follows its first fragment.
    if pkt.is_icmp() || pkt.frag == FRAG_LATER {
        return None;
    }
    let svc = select::frontend(&pkt)?;
    if svc.flags & SVC_F_EXTERNAL == 0 {
        return Some(XDP_PASS);
    }
    if !select::admitted(&svc, &pkt) {
        return Some(XDP_DROP);
    }
    // No endpoint here and nothing to answer with: only a Local traffic policy on a node
    // without local endpoints (kube-proxy drops those too).
    if svc.count == 0 && svc.flags & SVC_F_REJECT == 0 {
        return Some(XDP_DROP);
    }
    Some(XDP_PASS)
}
