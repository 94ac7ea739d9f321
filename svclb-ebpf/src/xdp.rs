//! The XDP program on uplinks makes the first decisions about external traffic: the frontend
//! lookup, `loadBalancerSourceRanges`, and a Local traffic policy on a node without local
//! endpoints. What it refuses is dropped before an skb exists; everything else passes to the
//! TC program, which translates it. Rewriting stays in TC: its checksum helpers handle every
//! skb checksum state, which XDP cannot see.

use aya_ebpf::{
    bindings::{
        BPF_NOEXIST,
        xdp_action::{XDP_DROP, XDP_PASS},
    },
    programs::XdpContext,
};
use svclb_common::{
    XdpStats,
    service::{SVC_F_EXTERNAL, SVC_F_REJECT},
};

use crate::{
    maps::SVCLB_XDP_STATS,
    parse::{FRAG_LATER, parse_frame},
    select,
};

/// Counts `action` into the uplink's counters (made on its first packet).
#[inline(always)]
pub fn count(ctx: &XdpContext, action: u32) {
    let ifindex = ctx.ingress_ifindex() as u32;
    let mut stats = SVCLB_XDP_STATS.get_ptr_mut(&ifindex);
    if stats.is_none() {
        // Another CPU may make it first: then this insert fails and the lookup finds theirs.
        let _ = SVCLB_XDP_STATS.insert(&ifindex, &XdpStats::default(), u64::from(BPF_NOEXIST));
        stats = SVCLB_XDP_STATS.get_ptr_mut(&ifindex);
    }
    if let Some(stats) = stats {
        // SAFETY: this CPU's slot of a map value, valid until the program returns.
        let stats = unsafe { &mut *stats };
        if action == XDP_DROP {
            stats.dropped += 1;
        } else {
            stats.passed += 1;
        }
    }
}

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
