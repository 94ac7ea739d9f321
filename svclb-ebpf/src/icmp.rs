//! ICMP errors about translated flows (RFC 5508 section 4.2, as a NAT must do): a
//! fragmentation-needed from a router between a frontend and its client, or a port-unreachable
//! from a backend, quotes the packet as it was on the wire, with the addresses and ports one
//! side of the translation used. The quote, and the error's own addresses, are translated to
//! what the other side knows, so the error reaches the socket it is about: PMTU discovery
//! works through a frontend, and a client of a UDP frontend hears that the port is closed.
//!
//! The quoted packet turned round is a packet of the flow, going the way the error goes, and
//! it has a conntrack entry: its forward entry (an error on its way to the backend) or its
//! reply entry (on its way to the client). That entry's translation, applied to it, gives the
//! new quote. Only quotes without IP options (IHL 5) are translated; the quoted TCP or UDP
//! checksum is left as it was (it covers data the quote lacks, and no receiver checks it).
//!
//! ICMPv6 errors (RFC 4443: destination unreachable, packet too big, time exceeded, parameter
//! problem) are translated the same way, for quotes of a TCP or UDP packet without extension
//! headers. IPv6 has no header checksum, so every address changed, outer or quoted, goes into
//! the ICMPv6 checksum (the outer ones through its pseudo-header). A packet too big reaching
//! the client this way is what keeps PMTU discovery working through a frontend.

use aya_ebpf::{bindings::BPF_F_PSEUDO_HDR, programs::TcContext};
use svclb_common::{
    CT_DIR_FORWARD, CT_DIR_REPLY, CtEntry, CtKey, FAMILY_V6, L3Addr, conntrack::CT_F_SNAT,
};

use crate::{
    nat::{End, addr_diff, set_v4_addr},
    parse::{IPV4_DADDR_OFF, IPV4_SADDR_OFF, IPV6_DADDR_OFF, IPV6_SADDR_OFF, Packet},
    quote::Quote,
};

const ICMP_CSUM_OFF: usize = 2;

/// The conntrack key of the quoted packet turned round, in direction `dir`.
#[inline(always)]
pub fn flow_key(q: &Quote, dir: u8) -> CtKey {
    CtKey {
        saddr: q.daddr,
        daddr: q.saddr,
        sport_be: q.dport_be,
        dport_be: q.sport_be,
        proto: q.proto,
        family: q.family,
        dir,
        _pad: 0,
    }
}

/// The directions to look the flow up in, in order.
pub const DIRECTIONS: [u8; 2] = [CT_DIR_FORWARD, CT_DIR_REPLY];

/// Translates the error by `entry` (found in direction `dir`); returns its new destination.
#[inline(always)]
pub fn translate(
    ctx: &TcContext,
    pkt: &Packet,
    q: &Quote,
    entry: &CtEntry,
    dir: u8,
) -> Result<L3Addr, i64> {
    // The flow's packet going the error's way: from the quote's destination to its source.
    let (src, sport_be, dst, dport_be) = (q.daddr, q.dport_be, q.saddr, q.sport_be);
    let snat = entry.flags & CT_F_SNAT != 0;
    let ((new_src, new_sport_be), (new_dst, new_dport_be)) = if dir == CT_DIR_REPLY {
        let dst = if snat {
            (entry.snat_addr, entry.snat_port_be)
        } else {
            (dst, dport_be)
        };
        ((entry.nat_addr, entry.nat_port_be), dst)
    } else {
        let src = if snat {
            (entry.snat_addr, entry.snat_port_be)
        } else {
            (src, sport_be)
        };
        (src, (entry.nat_addr, entry.nat_port_be))
    };
    // Turned round again into the quote.
    rewrite_quoted(ctx, q, End::Source, &new_dst, new_dport_be)?;
    rewrite_quoted(ctx, q, End::Destination, &new_src, new_sport_be)?;
    if q.family == FAMILY_V6 {
        set_outer_v6(ctx, pkt, q, End::Destination, &new_dst)?;
        if pkt.saddr == src {
            set_outer_v6(ctx, pkt, q, End::Source, &new_src)?;
        }
        return Ok(new_dst);
    }
    // The error's own addresses (ICMP has no pseudo-header: only the IP checksum changes).
    set_v4_addr(ctx, pkt.l3_off, IPV4_DADDR_OFF, &pkt.daddr, &new_dst)?;
    // An error sent by the flow's other end itself speaks for it, as the translated address;
    // one from a router on the way keeps the router's address.
    if pkt.saddr == src {
        set_v4_addr(ctx, pkt.l3_off, IPV4_SADDR_OFF, &pkt.saddr, &new_src)?;
    }
    Ok(new_dst)
}

/// Rewrites an address of the ICMPv6 error itself: its checksum's pseudo-header covers it.
#[inline(always)]
fn set_outer_v6(
    ctx: &TcContext,
    pkt: &Packet,
    q: &Quote,
    end: End,
    new_addr: &L3Addr,
) -> Result<(), i64> {
    let (addr_off, old_addr) = match end {
        End::Source => (IPV6_SADDR_OFF, &pkt.saddr),
        End::Destination => (IPV6_DADDR_OFF, &pkt.daddr),
    };
    if old_addr != new_addr {
        let diff = addr_diff(old_addr, new_addr)?;
        ctx.l4_csum_replace(
            q.icmp_off + ICMP_CSUM_OFF,
            0,
            u64::from(diff),
            u64::from(BPF_F_PSEUDO_HDR),
        )?;
        ctx.store(pkt.l3_off + addr_off, new_addr, 0)?;
    }
    Ok(())
}

/// Rewrites one end of the quote. The quoted IPv4 header's checksum follows its address, so
/// the ICMP checksum, which covers both, is unchanged by it; a quoted IPv6 address (no header
/// checksum) and a port change are added to it.
#[inline(always)]
fn rewrite_quoted(
    ctx: &TcContext,
    q: &Quote,
    end: End,
    new_addr: &L3Addr,
    new_port_be: u16,
) -> Result<(), i64> {
    let v6 = q.family == FAMILY_V6;
    let (addr_off, port_off, old_addr, old_port_be) = match (end, v6) {
        (End::Source, false) => (IPV4_SADDR_OFF, 0, &q.saddr, q.sport_be),
        (End::Destination, false) => (IPV4_DADDR_OFF, 2, &q.daddr, q.dport_be),
        (End::Source, true) => (IPV6_SADDR_OFF, 0, &q.saddr, q.sport_be),
        (End::Destination, true) => (IPV6_DADDR_OFF, 2, &q.daddr, q.dport_be),
    };
    if !v6 {
        set_v4_addr(ctx, q.l3_off, addr_off, old_addr, new_addr)?;
    } else if old_addr != new_addr {
        let diff = addr_diff(old_addr, new_addr)?;
        ctx.l4_csum_replace(q.icmp_off + ICMP_CSUM_OFF, 0, u64::from(diff), 0)?;
        ctx.store(q.l3_off + addr_off, new_addr, 0)?;
    }
    if old_port_be != new_port_be {
        ctx.l4_csum_replace(
            q.icmp_off + ICMP_CSUM_OFF,
            u64::from(old_port_be),
            u64::from(new_port_be),
            2,
        )?;
        ctx.store(q.l4_off + port_off, &new_port_be, 0)?;
    }
    Ok(())
}
