//! Address and port rewrites with incremental checksum updates, for TC and XDP alike (see
//! `frame`: on TC the kernel's csum helpers, which handle every skb checksum state; with
//! `BPF_F_MARK_MANGLED_0` a zero UDP checksum stays zero).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_csum_diff,
};
use svclb_common::{CtEntry, L3Addr, addr::v4_octets, conntrack::CT_F_SNAT};

use crate::{
    frame::Frame,
    parse::{
        IPV4_CSUM_OFF, IPV4_DADDR_OFF, IPV4_SADDR_OFF, IPV4_TTL_OFF, IPV6_DADDR_OFF,
        IPV6_HOPLIMIT_OFF, IPV6_SADDR_OFF, Packet,
    },
};

/// Which end of the packet to rewrite.
#[derive(Clone, Copy)]
pub enum End {
    Source,
    Destination,
}

/// Rewrites the source or destination address and port of a TCP/UDP packet.
#[inline(always)]
pub fn rewrite(
    ctx: &impl Frame,
    pkt: &Packet,
    end: End,
    new_addr: &L3Addr,
    new_port_be: u16,
) -> Result<(), i64> {
    if pkt.is_v6() {
        rewrite_v6(ctx, pkt, end, new_addr, new_port_be)
    } else {
        rewrite_v4(ctx, pkt, end, new_addr, new_port_be)
    }
}

/// The checksum difference between two IPv6 addresses (for a checksum covering them).
#[inline(always)]
pub fn addr_diff(old: &L3Addr, new: &L3Addr) -> Result<u32, i64> {
    let mut from = *old;
    let mut to = *new;
    // SAFETY: two 16-byte buffers on the stack, sizes given in bytes (multiples of 4).
    let diff =
        unsafe { bpf_csum_diff(from.as_mut_ptr().cast(), 16, to.as_mut_ptr().cast(), 16, 0) };
    if diff < 0 {
        return Err(diff);
    }
    Ok(diff as u32)
}

/// IPv6 has no header checksum: the address change goes into the L4 checksum (through its
/// pseudo-header) as one difference.
#[inline(always)]
fn rewrite_v6(
    ctx: &impl Frame,
    pkt: &Packet,
    end: End,
    new_addr: &L3Addr,
    new_port_be: u16,
) -> Result<(), i64> {
    let (addr_off, port_off, old_addr, old_port_be) = match end {
        End::Source => (IPV6_SADDR_OFF, 0, &pkt.saddr, pkt.sport_be),
        End::Destination => (IPV6_DADDR_OFF, 2, &pkt.daddr, pkt.dport_be),
    };
    // A UDP checksum is never zero over IPv6 (the parser refuses one): the flag makes a sum
    // that comes out zero be written as 0xffff, as RFC 8200 wants.
    let l4_flags = l4_flags(pkt);
    let csum_off = pkt.l4_csum_off();
    if old_addr != new_addr {
        let diff = addr_diff(old_addr, new_addr)?;
        ctx.l4_csum_replace(
            csum_off,
            0,
            u64::from(diff),
            l4_flags | u64::from(BPF_F_PSEUDO_HDR),
        )?;
        ctx.store(pkt.l3_off + addr_off, new_addr)?;
    }
    set_port(ctx, pkt, port_off, old_port_be, new_port_be, l4_flags)
}

/// Flags of the L4 checksum updates: over UDP a zero checksum stays zero, and a sum that
/// comes out zero is written as 0xffff (over IPv6 the parser refuses a zero one).
#[inline(always)]
fn l4_flags(pkt: &Packet) -> u64 {
    if pkt.is_udp() {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    }
}

/// Writes `new_port_be` over the port at `port_off` of the L4 header, updating its checksum.
#[inline(always)]
fn set_port(
    ctx: &impl Frame,
    pkt: &Packet,
    port_off: usize,
    old_port_be: u16,
    new_port_be: u16,
    l4_flags: u64,
) -> Result<(), i64> {
    if old_port_be != new_port_be {
        ctx.l4_csum_replace(
            pkt.l4_csum_off(),
            u64::from(old_port_be),
            u64::from(new_port_be),
            l4_flags | 2,
        )?;
        ctx.store(pkt.l4_off + port_off, &new_port_be)?;
    }
    Ok(())
}

/// Rewrites the source or destination address and port of an IPv4 TCP/UDP packet.
#[inline(always)]
fn rewrite_v4(
    ctx: &impl Frame,
    pkt: &Packet,
    end: End,
    new_addr: &L3Addr,
    new_port_be: u16,
) -> Result<(), i64> {
    let (addr_off, port_off, old_addr, old_port_be) = match end {
        End::Source => (IPV4_SADDR_OFF, 0, &pkt.saddr, pkt.sport_be),
        End::Destination => (IPV4_DADDR_OFF, 2, &pkt.daddr, pkt.dport_be),
    };
    let old = u32::from_ne_bytes(v4_octets(old_addr));
    let new_octets = v4_octets(new_addr);
    let new = u32::from_ne_bytes(new_octets);
    let l4_flags = l4_flags(pkt);
    let csum_off = pkt.l4_csum_off();

    if old != new {
        ctx.l4_csum_replace(
            csum_off,
            u64::from(old),
            u64::from(new),
            l4_flags | u64::from(BPF_F_PSEUDO_HDR) | 4,
        )?;
        set_v4_addr(ctx, pkt.l3_off, addr_off, old_addr, new_addr)?;
    }
    set_port(ctx, pkt, port_off, old_port_be, new_port_be, l4_flags)
}

/// Writes `new_addr` over `old_addr` at `addr_off` in the IPv4 header at `l3_off`, updating
/// that header's checksum (and nothing else: callers handle any checksum covering it).
#[inline(always)]
pub fn set_v4_addr(
    ctx: &impl Frame,
    l3_off: usize,
    addr_off: usize,
    old_addr: &L3Addr,
    new_addr: &L3Addr,
) -> Result<(), i64> {
    let old = u32::from_ne_bytes(v4_octets(old_addr));
    let new_octets = v4_octets(new_addr);
    let new = u32::from_ne_bytes(new_octets);
    if old != new {
        ctx.l3_csum_replace(l3_off + IPV4_CSUM_OFF, u64::from(old), u64::from(new), 4)?;
        ctx.store(l3_off + addr_off, &new_octets)?;
    }
    Ok(())
}

/// Applies a conntrack entry: forward entries rewrite the destination (and with SNAT the
/// source), reply entries the source (and with SNAT the destination).
#[inline(always)]
pub fn apply(ctx: &impl Frame, pkt: &Packet, entry: &CtEntry, reply: bool) -> Result<(), i64> {
    let (main, other) = if reply {
        (End::Source, End::Destination)
    } else {
        (End::Destination, End::Source)
    };
    rewrite(ctx, pkt, main, &entry.nat_addr, entry.nat_port_be)?;
    if entry.flags & CT_F_SNAT != 0 {
        rewrite(ctx, pkt, other, &entry.snat_addr, entry.snat_port_be)?;
    }
    Ok(())
}

/// Decrements the TTL (hop limit) of a packet this program forwards itself (the stack would
/// have).
#[inline(always)]
pub fn decrement_ttl(ctx: &impl Frame, pkt: &Packet) -> Result<(), i64> {
    if pkt.is_v6() {
        ctx.store(pkt.l3_off + IPV6_HOPLIMIT_OFF, &(pkt.ttl - 1))?;
        return Ok(());
    }
    let old = u16::from_ne_bytes([pkt.ttl, pkt.proto]);
    let new = u16::from_ne_bytes([pkt.ttl - 1, pkt.proto]);
    ctx.l3_csum_replace(
        pkt.l3_off + IPV4_CSUM_OFF,
        u64::from(old),
        u64::from(new),
        2,
    )?;
    ctx.store(pkt.l3_off + IPV4_TTL_OFF, &(pkt.ttl - 1))?;
    Ok(())
}
