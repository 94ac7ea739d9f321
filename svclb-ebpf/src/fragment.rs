//! IP fragments of translated flows. Only a datagram's first fragment holds its ports, so
//! only it can find the flow; when it is translated, the addresses it leaves with are
//! recorded under the datagram's identity (addresses, IP id, protocol), and the later
//! fragments, which carry no L4 header, get the same addresses (and leave the same way). The
//! L4 checksum sits in the first fragment and covers the whole datagram: the first
//! fragment's incremental update is all it needs. A later fragment that arrives before its
//! first one, or whose datagram was not translated, passes untouched (as Cilium's fragment
//! tracking does).

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT},
    programs::TcContext,
};
use svclb_common::{
    FragKey, FragValue, L3Addr, conntrack::CT_F_REDIRECT, events::LRU_FRAGS,
    limits::FRAG_TIMEOUT_NS,
};

use crate::{
    maps::{SVCLB_FRAGS, lru_insert},
    nat,
    parse::{IPV4_DADDR_OFF, IPV4_SADDR_OFF, IPV6_DADDR_OFF, IPV6_SADDR_OFF, Packet},
};

#[inline(always)]
fn key_of(pkt: &Packet) -> FragKey {
    FragKey {
        saddr: pkt.saddr,
        daddr: pkt.daddr,
        id: pkt.frag_id,
        // An IPv6 datagram is known by its addresses and id alone (RFC 8200), and its later
        // fragments name only the first header after the fragment header.
        proto: if pkt.is_v6() { 0 } else { pkt.proto },
        family: pkt.family,
        _pad: [0; 2],
    }
}

/// The addresses `pkt` has now (after its rewrite).
#[inline(always)]
fn addresses_now(ctx: &TcContext, pkt: &Packet) -> Option<(L3Addr, L3Addr)> {
    let mut saddr = [0u8; 16];
    let mut daddr = [0u8; 16];
    if pkt.is_v6() {
        saddr = ctx.load::<[u8; 16]>(pkt.l3_off + IPV6_SADDR_OFF).ok()?;
        daddr = ctx.load::<[u8; 16]>(pkt.l3_off + IPV6_DADDR_OFF).ok()?;
    } else {
        let s = ctx.load::<[u8; 4]>(pkt.l3_off + IPV4_SADDR_OFF).ok()?;
        let d = ctx.load::<[u8; 4]>(pkt.l3_off + IPV4_DADDR_OFF).ok()?;
        saddr[..4].copy_from_slice(&s);
        daddr[..4].copy_from_slice(&d);
    }
    Some((saddr, daddr))
}

/// Records how a first fragment was translated (`verdict` is what the program returns for
/// it), for its later fragments.
#[inline(never)]
pub fn record(ctx: &TcContext, pkt: &Packet, verdict: i32, now: u64) {
    if verdict != TC_ACT_OK && verdict != TC_ACT_REDIRECT {
        return;
    }
    let Some((saddr, daddr)) = addresses_now(ctx, pkt) else {
        return;
    };
    if saddr == pkt.saddr && daddr == pkt.daddr {
        // Not translated.
        return;
    }
    let value = FragValue {
        saddr,
        daddr,
        flags: if verdict == TC_ACT_REDIRECT {
            CT_F_REDIRECT
        } else {
            0
        },
        _pad: [0; 6],
        created_ns: now,
    };
    // A failed insert is counted; the later fragments then pass untouched.
    let _ = lru_insert(&SVCLB_FRAGS, LRU_FRAGS, &key_of(pkt), &value);
}

/// A later fragment: its datagram's translation, if the first fragment was translated (in
/// the last [`FRAG_TIMEOUT_NS`]); the addresses are rewritten here, and the caller sends the
/// fragment on as the flags say, towards the returned destination.
#[inline(always)]
pub fn follow(ctx: &TcContext, pkt: &Packet, now: u64) -> Result<Option<(u16, L3Addr)>, i64> {
    let Some(value) = SVCLB_FRAGS.get_ptr(&key_of(pkt)) else {
        return Ok(None);
    };
    // SAFETY: a map value found in this run stays valid until the program returns.
    let value = unsafe { &*value };
    if now.saturating_sub(value.created_ns) > FRAG_TIMEOUT_NS {
        return Ok(None);
    }
    if pkt.is_v6() {
        // No header checksum, and no L4 header here to carry the pseudo-header's change.
        if value.saddr != pkt.saddr {
            ctx.store(pkt.l3_off + IPV6_SADDR_OFF, &value.saddr, 0)?;
        }
        if value.daddr != pkt.daddr {
            ctx.store(pkt.l3_off + IPV6_DADDR_OFF, &value.daddr, 0)?;
        }
    } else {
        nat::set_v4_addr(ctx, pkt.l3_off, IPV4_SADDR_OFF, &pkt.saddr, &value.saddr)?;
        nat::set_v4_addr(ctx, pkt.l3_off, IPV4_DADDR_OFF, &pkt.daddr, &value.daddr)?;
    }
    Ok(Some((value.flags, value.daddr)))
}
