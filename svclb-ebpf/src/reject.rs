//! Refusing a new connection to a frontend without endpoints, as kube-proxy does: a TCP SYN
//! gets a RST, a UDP datagram an ICMP port unreachable. The packet itself is turned into the
//! answer and sent back out of the device it came in on.
//!
//! Only packets without IP options (IHL 5) are answered; others are dropped. Checksums are
//! computed afresh over the new headers.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC},
    helpers::bpf_redirect,
    programs::TcContext,
};
use svclb_common::{IPPROTO_ICMP, addr::v4_octets};

use crate::{
    icmp::{ICMP_DEST_UNREACH, ICMP_HLEN},
    parse::{ETH_HLEN, IP_HLEN, Packet, TCP_FLAG_ACK},
};

const TCP_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
const ICMP_PORT_UNREACH: u8 = 3;
const TCP_FLAG_RST: u8 = 0x04;
const TTL: u8 = 64;

/// Ones' complement sum of `bytes` (an even length) added to `sum`, not folded.
#[inline(always)]
fn sum16(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    sum
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Swapped Ethernet addresses and a fresh IPv4 header from the frontend back to the client.
#[inline(always)]
fn reply_headers(eth: &[u8; ETH_HLEN], pkt: &Packet, proto: u8, l3_len: u16, out: &mut [u8]) {
    out[0..6].copy_from_slice(&eth[6..12]);
    out[6..12].copy_from_slice(&eth[0..6]);
    out[12..14].copy_from_slice(&eth[12..14]);
    let ip = &mut out[ETH_HLEN..ETH_HLEN + IP_HLEN];
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&l3_len.to_be_bytes());
    ip[4..6].copy_from_slice(&[0, 0]);
    ip[6..8].copy_from_slice(&[0x40, 0]); // don't fragment
    ip[8] = TTL;
    ip[9] = proto;
    ip[10..12].copy_from_slice(&[0, 0]);
    ip[12..16].copy_from_slice(&v4_octets(&pkt.daddr));
    ip[16..20].copy_from_slice(&v4_octets(&pkt.saddr));
    let check = fold(sum16(0, ip));
    ip[10..12].copy_from_slice(&check.to_be_bytes());
}

/// Answers the packet (see the module docs); the verdict to return. A BPF subprogram of its
/// own, so its buffers do not add to the caller's stack frame.
#[inline(never)]
pub fn reject(ctx: &TcContext, pkt: &Packet) -> i32 {
    answer(ctx, pkt).unwrap_or(TC_ACT_SHOT)
}

#[inline(always)]
fn answer(ctx: &TcContext, pkt: &Packet) -> Result<i32, i64> {
    if pkt.ihl != 5 || pkt.l3_off != ETH_HLEN {
        return Ok(TC_ACT_SHOT);
    }
    let eth: [u8; ETH_HLEN] = ctx.load(0)?;
    if pkt.is_tcp() {
        if !pkt.is_tcp_syn() {
            return Ok(TC_ACT_SHOT);
        }
        tcp_reset(ctx, pkt, &eth)?;
    } else if pkt.is_udp() {
        port_unreachable(ctx, pkt, &eth)?;
    } else {
        return Ok(TC_ACT_SHOT);
    }
    let ifindex = crate::forward::ifindex(ctx);
    // SAFETY: redirect to the egress of the device the packet arrived on.
    Ok(unsafe { bpf_redirect(ifindex, 0) } as i32)
}

/// SYN -> RST|ACK acknowledging it (RFC 9293 3.10.7.1: ack = SEG.SEQ + SEG.LEN, with the SYN
/// counting one).
#[inline(always)]
fn tcp_reset(ctx: &TcContext, pkt: &Packet, eth: &[u8; ETH_HLEN]) -> Result<(), i64> {
    let tcp: [u8; TCP_HLEN] = ctx.load(pkt.l4_off)?;
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let header_len = usize::from(tcp[12] >> 4) * 4;
    let payload = usize::from(u16::from_be(pkt.tot_len_be)).saturating_sub(IP_HLEN + header_len);
    let ack = seq.wrapping_add(1).wrapping_add(payload as u32);

    const LEN: usize = ETH_HLEN + IP_HLEN + TCP_HLEN;
    let mut out = [0u8; LEN];
    reply_headers(
        eth,
        pkt,
        svclb_common::IPPROTO_TCP,
        (IP_HLEN + TCP_HLEN) as u16,
        &mut out,
    );
    let th = &mut out[ETH_HLEN + IP_HLEN..];
    th[0..2].copy_from_slice(&tcp[2..4]);
    th[2..4].copy_from_slice(&tcp[0..2]);
    // seq 0 (the SYN carried no ACK), then the acknowledgement.
    th[8..12].copy_from_slice(&ack.to_be_bytes());
    th[12] = (TCP_HLEN as u8 / 4) << 4;
    th[13] = TCP_FLAG_RST | TCP_FLAG_ACK;
    let mut sum = sum16(0, &out[ETH_HLEN + 12..ETH_HLEN + 20]);
    sum += u32::from(svclb_common::IPPROTO_TCP) + TCP_HLEN as u32;
    let check = fold(sum16(sum, &out[ETH_HLEN + IP_HLEN..]));
    out[ETH_HLEN + IP_HLEN + 16..ETH_HLEN + IP_HLEN + 18].copy_from_slice(&check.to_be_bytes());

    ctx.change_tail(LEN as u32, 0)?;
    ctx.store(0, &out, 0)?;
    Ok(())
}

/// Datagram -> ICMP port unreachable quoting its IP header and first 8 bytes (RFC 792).
#[inline(always)]
fn port_unreachable(ctx: &TcContext, pkt: &Packet, eth: &[u8; ETH_HLEN]) -> Result<(), i64> {
    const QUOTE: usize = IP_HLEN + UDP_HLEN;
    let quote: [u8; QUOTE] = ctx.load(ETH_HLEN)?;
    // Keep just the quote, then open room for the new IP and ICMP headers in front of it.
    ctx.change_tail((ETH_HLEN + QUOTE) as u32, 0)?;
    ctx.adjust_room((IP_HLEN + ICMP_HLEN) as i32, BPF_ADJ_ROOM_MAC, 0)?;

    const LEN: usize = ETH_HLEN + IP_HLEN + ICMP_HLEN;
    let mut out = [0u8; LEN];
    reply_headers(
        eth,
        pkt,
        IPPROTO_ICMP,
        (IP_HLEN + ICMP_HLEN + QUOTE) as u16,
        &mut out,
    );
    let icmp = &mut out[ETH_HLEN + IP_HLEN..];
    icmp[0] = ICMP_DEST_UNREACH;
    icmp[1] = ICMP_PORT_UNREACH;
    let check = fold(sum16(sum16(0, icmp), &quote));
    icmp[2..4].copy_from_slice(&check.to_be_bytes());
    ctx.store(0, &out, 0)?;
    Ok(())
}
