//! The packet an ICMP or ICMPv6 error quotes (see `icmp` in the programs for what is done with
//! it): read through [`Load`], which reads past the linear area as `bpf_skb_load_bytes` does.
//! Only quotes of a TCP or UDP packet without IPv4 options or IPv6 extension headers are ours.

use svclb_common::{FAMILY_V4, FAMILY_V6, IPPROTO_TCP, IPPROTO_UDP, L3Addr, addr::v4};

use crate::parse::{IP_HLEN, IPV6_HLEN, Load, Packet};

pub const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETERPROB: u8 = 12;
pub const ICMP_HLEN: usize = 8;
pub const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PKT_TOOBIG: u8 = 2;
const ICMPV6_TIME_EXCEED: u8 = 3;
const ICMPV6_PARAMPROB: u8 = 4;

/// The packet an ICMP error quotes. Ports in network order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Quote {
    pub family: u8,
    pub icmp_off: usize,
    pub l3_off: usize,
    pub l4_off: usize,
    pub proto: u8,
    pub saddr: L3Addr,
    pub daddr: L3Addr,
    pub sport_be: u16,
    pub dport_be: u16,
}

/// Reads the quote of the ICMP error `pkt` into `q`; `false` for any other ICMP message and
/// for quotes that are not of a TCP or UDP flow.
#[inline(always)]
pub fn parse_quote(packet: &impl Load, pkt: &Packet, q: &mut Quote) -> bool {
    if pkt.is_v6() {
        parse_v6(packet, pkt, q).is_some()
    } else {
        parse_v4(packet, pkt, q).is_some()
    }
}

#[inline(always)]
fn parse_v4(packet: &impl Load, pkt: &Packet, q: &mut Quote) -> Option<()> {
    let icmp_off = pkt.l4_off;
    let [kind] = packet.load_bytes::<1>(icmp_off)?;
    if kind != ICMP_DEST_UNREACH && kind != ICMP_TIME_EXCEEDED && kind != ICMP_PARAMETERPROB {
        return None;
    }
    let l3_off = icmp_off + ICMP_HLEN;
    let ip = packet.load_bytes::<IP_HLEN>(l3_off)?;
    let proto = ip[9];
    // IPv4 without options, the first fragment or none, TCP or UDP.
    if ip[0] != 0x45
        || u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0
        || (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
    {
        return None;
    }
    let l4_off = l3_off + IP_HLEN;
    let ports = packet.load_bytes::<4>(l4_off)?;
    q.family = FAMILY_V4;
    q.icmp_off = icmp_off;
    q.l3_off = l3_off;
    q.l4_off = l4_off;
    q.proto = proto;
    q.saddr = v4([ip[12], ip[13], ip[14], ip[15]]);
    q.daddr = v4([ip[16], ip[17], ip[18], ip[19]]);
    q.sport_be = u16::from_ne_bytes([ports[0], ports[1]]);
    q.dport_be = u16::from_ne_bytes([ports[2], ports[3]]);
    Some(())
}

#[inline(always)]
fn parse_v6(packet: &impl Load, pkt: &Packet, q: &mut Quote) -> Option<()> {
    let icmp_off = pkt.l4_off;
    let [kind] = packet.load_bytes::<1>(icmp_off)?;
    if kind != ICMPV6_DEST_UNREACH
        && kind != ICMPV6_PKT_TOOBIG
        && kind != ICMPV6_TIME_EXCEED
        && kind != ICMPV6_PARAMPROB
    {
        return None;
    }
    let l3_off = icmp_off + ICMP_HLEN;
    let ip = packet.load_bytes::<IPV6_HLEN>(l3_off)?;
    let proto = ip[6];
    // IPv6 without extension headers, TCP or UDP.
    if ip[0] >> 4 != 6 || (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
        return None;
    }
    let l4_off = l3_off + IPV6_HLEN;
    let ports = packet.load_bytes::<4>(l4_off)?;
    q.family = FAMILY_V6;
    q.icmp_off = icmp_off;
    q.l3_off = l3_off;
    q.l4_off = l4_off;
    q.proto = proto;
    q.saddr.copy_from_slice(&ip[8..24]);
    q.daddr.copy_from_slice(&ip[24..40]);
    q.sport_be = u16::from_ne_bytes([ports[0], ports[1]]);
    q.dport_be = u16::from_ne_bytes([ports[2], ports[3]]);
    Some(())
}
