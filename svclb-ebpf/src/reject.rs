//! Refusing a new connection to a frontend without endpoints, as kube-proxy does: a TCP SYN
//! gets a RST, a UDP datagram an ICMP port unreachable. The packet itself is turned into the
//! answer and sent back out of the device it came in on.
//!
//! Over IPv6 the answers are a RST and an ICMPv6 port unreachable (type 1, code 4, RFC 4443)
//! quoting the IPv6 header and the first 8 bytes of the datagram.
//!
//! Only packets without IP options (IHL 5) or IPv6 extension headers are answered; others are
//! dropped. Checksums are computed afresh over the new headers. Each source gets at most 100
//! answers a second after a burst of 200 (see [`answer_allowed`]); the rest are dropped and
//! counted.

use aya_ebpf::{
    bindings::{BPF_ANY, TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC},
    btf_maps::{LruHashMap, PerCpuArray},
    helpers::{bpf_csum_diff, bpf_redirect},
    macros::btf_map,
    programs::TcContext,
};
use svclb_common::{
    IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, L3Addr, addr::v4_octets, events::EV_ANSWERS_LIMITED,
};

use crate::{
    conntrack::now_ns,
    maps::event,
    parse::{ETH_HLEN, IP_HLEN, IPV6_HLEN, Packet, TCP_FLAG_ACK},
    quote::{ICMP_DEST_UNREACH, ICMP_HLEN, ICMPV6_DEST_UNREACH},
};

const TCP_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
const ICMP_PORT_UNREACH: u8 = 3;
const ICMPV6_PORT_UNREACH: u8 = 4;
const TCP_FLAG_RST: u8 = 0x04;
const TTL: u8 = 64;

/// Ones' complement sum of `bytes` (a multiple of 4 long, in the packet's byte order) added
/// to `sum`, not folded. The kernel sums (`bpf_csum_diff`) in the CPU's little-endian words,
/// which is the byte-swapped network-order sum; swapped back, it adds to `sum`. A helper
/// call rather than a loop: unrolled, the loop's loads spill past the 512-byte stack.
#[inline(always)]
pub(crate) fn sum16(sum: u32, bytes: &[u8]) -> u32 {
    // SAFETY: the helper reads `bytes.len()` bytes of valid memory and writes none.
    let raw = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            bytes.as_ptr().cast_mut().cast(),
            bytes.len() as u32,
            0,
        )
    } as u32;
    let mut folded = (raw & 0xffff) + (raw >> 16);
    folded = (folded & 0xffff) + (folded >> 16);
    sum + u32::from((folded as u16).swap_bytes())
}

/// The checksum field for a ones' complement sum.
#[inline(always)]
pub(crate) fn checksum(sum: u32) -> u16 {
    !svclb_ebpf::csum::fold(u64::from(sum))
}

/// Swapped Ethernet addresses and a fresh IPv4 header from the frontend back to the client.
#[inline(always)]
pub(crate) fn reply_headers(
    eth: &[u8; ETH_HLEN],
    pkt: &Packet,
    proto: u8,
    l3_len: u16,
    out: &mut [u8],
) {
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
    let check = checksum(sum16(0, ip));
    ip[10..12].copy_from_slice(&check.to_be_bytes());
}

/// Swapped Ethernet addresses and a fresh IPv6 header from the frontend back to the client.
#[inline(always)]
pub(crate) fn reply_headers_v6(
    eth: &[u8; ETH_HLEN],
    pkt: &Packet,
    next_header: u8,
    payload_len: u16,
    out: &mut [u8],
) {
    out[0..6].copy_from_slice(&eth[6..12]);
    out[6..12].copy_from_slice(&eth[0..6]);
    out[12..14].copy_from_slice(&eth[12..14]);
    let ip = &mut out[ETH_HLEN..ETH_HLEN + IPV6_HLEN];
    ip[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
    ip[4..6].copy_from_slice(&payload_len.to_be_bytes());
    ip[6] = next_header;
    ip[7] = TTL;
    ip[8..24].copy_from_slice(&pkt.daddr);
    ip[24..40].copy_from_slice(&pkt.saddr);
}

/// The IPv6 pseudo-header's sum (RFC 8200 8.1) for the IPv6 header at `ip`.
#[inline(always)]
pub(crate) fn pseudo_v6(ip: &[u8], next_header: u8, len: u16) -> u32 {
    sum16(0, &ip[8..40]) + u32::from(len) + u32::from(next_header)
}

/// A subprogram's result as a plain value (0, or the helper's error), which is what a BPF
/// subprogram can return.
#[inline(always)]
fn status(result: Result<(), i64>) -> i64 {
    match result {
        Ok(()) => 0,
        Err(err) => err,
    }
}

/// Answers the packet (see the module docs), unless its source had its share of answers; the
/// verdict to return. A BPF subprogram of its own, so its buffers do not add to the caller's
/// stack frame.
#[inline(never)]
pub fn reject(ctx: &TcContext, pkt: &Packet) -> i32 {
    if !answer_allowed(&pkt.saddr, now_ns()) {
        event(EV_ANSWERS_LIMITED);
        return TC_ACT_SHOT;
    }
    answer(ctx, pkt).unwrap_or(TC_ACT_SHOT)
}

/// Answers one source gets: a burst of [`ANSWER_BURST`], then one every
/// [`ANSWER_INTERVAL_NS`] (100 a second). Without a limit, SYNs spoofed from a victim's
/// address would make this node send the victim an answer for each.
const ANSWER_INTERVAL_NS: u64 = 10_000_000;
const ANSWER_BURST: u64 = 200;

/// Source -> when its next answer is due, in the generic cell rate algorithm: a source
/// within its burst is answered, and its due time moves on by one interval. A source not
/// seen for a while starts afresh (the least recently seen go first when full).
#[btf_map]
static SVCLB_ANSWER_RATES: LruHashMap<L3Addr, u64, 65_536> = LruHashMap::new();

#[inline(always)]
fn answer_allowed(saddr: &L3Addr, now: u64) -> bool {
    let due = match SVCLB_ANSWER_RATES.get_ptr_mut(saddr) {
        // SAFETY: a map value found in this run; a racing CPU can only store another time.
        Some(due) => unsafe { *due },
        None => now,
    };
    let due = if due < now { now } else { due };
    if due - now >= ANSWER_INTERVAL_NS * ANSWER_BURST {
        return false;
    }
    let _ = SVCLB_ANSWER_RATES.insert(saddr, &(due + ANSWER_INTERVAL_NS), u64::from(BPF_ANY));
    true
}

const RST4_LEN: usize = ETH_HLEN + IP_HLEN + TCP_HLEN;
const QUOTE4: usize = IP_HLEN + UDP_HLEN;
const RST6_LEN: usize = ETH_HLEN + IPV6_HLEN + TCP_HLEN;
const QUOTE6: usize = IPV6_HLEN + UDP_HLEN;

/// The answers are built here, not on the stack (which the IPv6 ones would overflow).
pub struct Answers {
    rst4: [u8; RST4_LEN],
    icmp4: [u8; ETH_HLEN + IP_HLEN + ICMP_HLEN],
    quote4: [u8; QUOTE4],
    rst6: [u8; RST6_LEN],
    icmp6: [u8; ETH_HLEN + IPV6_HLEN + ICMP_HLEN],
    quote6: [u8; QUOTE6],
}

#[btf_map]
static SVCLB_ANSWERS: PerCpuArray<Answers, 1> = PerCpuArray::new();

#[inline(always)]
fn answer(ctx: &TcContext, pkt: &Packet) -> Result<i32, i64> {
    let Some(buf) = SVCLB_ANSWERS.get_ptr_mut(0) else {
        return Ok(TC_ACT_SHOT);
    };
    // SAFETY: this CPU's buffer; nothing else runs on it until the program returns.
    let buf = unsafe { &mut *buf };
    let plain = if pkt.is_v6() {
        pkt.l4_off == ETH_HLEN + IPV6_HLEN
    } else {
        pkt.ihl == 5
    };
    if !plain || pkt.l3_off != ETH_HLEN {
        return Ok(TC_ACT_SHOT);
    }
    // Each answer is a subprogram of its own: their buffers never share a frame.
    let built = if pkt.is_tcp() {
        if !pkt.is_tcp_syn() {
            return Ok(TC_ACT_SHOT);
        }
        if pkt.is_v6() {
            tcp_reset_v6(ctx, pkt, buf)
        } else {
            tcp_reset(ctx, pkt, buf)
        }
    } else if pkt.is_udp() {
        if pkt.is_v6() {
            port_unreachable_v6(ctx, pkt, buf)
        } else {
            port_unreachable(ctx, pkt, buf)
        }
    } else {
        return Ok(TC_ACT_SHOT);
    };
    if built != 0 {
        return Err(built);
    }
    let ifindex = crate::frame::Frame::ifindex(ctx);
    // SAFETY: redirect to the egress of the device the packet arrived on.
    Ok(unsafe { bpf_redirect(ifindex, 0) } as i32)
}

/// The RST|ACK's TCP header for the SYN `tcp` (RFC 9293 3.10.7.1: ack = SEG.SEQ + SEG.LEN,
/// with the SYN counting one), checksum left zero.
#[inline(always)]
fn reset_header(pkt: &Packet, tcp: &[u8; TCP_HLEN], th: &mut [u8]) {
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let header_len = usize::from(tcp[12] >> 4) * 4;
    let payload = usize::from(u16::from_be(pkt.tot_len_be))
        .saturating_sub(pkt.l4_off - pkt.l3_off + header_len);
    let ack = seq.wrapping_add(1).wrapping_add(payload as u32);
    th[0..2].copy_from_slice(&tcp[2..4]);
    th[2..4].copy_from_slice(&tcp[0..2]);
    // seq 0 (the SYN carried no ACK), then the acknowledgement.
    th[8..12].copy_from_slice(&ack.to_be_bytes());
    th[12] = (TCP_HLEN as u8 / 4) << 4;
    th[13] = TCP_FLAG_RST | TCP_FLAG_ACK;
}

/// SYN -> RST|ACK acknowledging it.
#[inline(never)]
fn tcp_reset(ctx: &TcContext, pkt: &Packet, buf: &mut Answers) -> i64 {
    status(build_tcp_reset(ctx, pkt, buf))
}

#[inline(always)]
fn build_tcp_reset(ctx: &TcContext, pkt: &Packet, buf: &mut Answers) -> Result<(), i64> {
    let eth: [u8; ETH_HLEN] = ctx.load(0)?;
    let tcp: [u8; TCP_HLEN] = ctx.load(pkt.l4_off)?;
    let out = &mut buf.rst4;
    reply_headers(
        &eth,
        pkt,
        IPPROTO_TCP,
        (IP_HLEN + TCP_HLEN) as u16,
        &mut out[..],
    );
    reset_header(pkt, &tcp, &mut out[ETH_HLEN + IP_HLEN..]);
    let mut sum = sum16(0, &out[ETH_HLEN + 12..ETH_HLEN + 20]);
    sum += u32::from(IPPROTO_TCP) + TCP_HLEN as u32;
    let check = checksum(sum16(sum, &out[ETH_HLEN + IP_HLEN..]));
    out[ETH_HLEN + IP_HLEN + 16..ETH_HLEN + IP_HLEN + 18].copy_from_slice(&check.to_be_bytes());
    ctx.change_tail(RST4_LEN as u32, 0)?;
    ctx.store(0, out, 0)?;
    Ok(())
}

/// Datagram -> ICMP port unreachable quoting its IP header and first 8 bytes (RFC 792).
#[inline(never)]
fn port_unreachable(ctx: &TcContext, pkt: &Packet, buf: &mut Answers) -> i64 {
    status(build_port_unreachable(ctx, pkt, buf))
}

#[inline(always)]
fn build_port_unreachable(ctx: &TcContext, pkt: &Packet, buf: &mut Answers) -> Result<(), i64> {
    let eth: [u8; ETH_HLEN] = ctx.load(0)?;
    buf.quote4 = ctx.load(ETH_HLEN)?;
    // Keep just the quote, then open room for the new IP and ICMP headers in front of it.
    ctx.change_tail((ETH_HLEN + QUOTE4) as u32, 0)?;
    ctx.adjust_room((IP_HLEN + ICMP_HLEN) as i32, BPF_ADJ_ROOM_MAC, 0)?;
    let out = &mut buf.icmp4;
    reply_headers(
        &eth,
        pkt,
        IPPROTO_ICMP,
        (IP_HLEN + ICMP_HLEN + QUOTE4) as u16,
        &mut out[..],
    );
    let icmp = &mut out[ETH_HLEN + IP_HLEN..];
    icmp[0] = ICMP_DEST_UNREACH;
    icmp[1] = ICMP_PORT_UNREACH;
    let check = checksum(sum16(sum16(0, icmp), &buf.quote4));
    icmp[2..4].copy_from_slice(&check.to_be_bytes());
    ctx.store(0, out, 0)?;
    Ok(())
}

/// SYN -> RST|ACK acknowledging it, over IPv6.
#[inline(never)]
fn tcp_reset_v6(ctx: &TcContext, pkt: &Packet, buf: &mut Answers) -> i64 {
    status(build_tcp_reset_v6(ctx, pkt, buf))
}

#[inline(always)]
fn build_tcp_reset_v6(ctx: &TcContext, pkt: &Packet, buf: &mut Answers) -> Result<(), i64> {
    let eth: [u8; ETH_HLEN] = ctx.load(0)?;
    let tcp: [u8; TCP_HLEN] = ctx.load(pkt.l4_off)?;
    let out = &mut buf.rst6;
    reply_headers_v6(&eth, pkt, IPPROTO_TCP, TCP_HLEN as u16, &mut out[..]);
    reset_header(pkt, &tcp, &mut out[ETH_HLEN + IPV6_HLEN..]);
    let sum = pseudo_v6(&out[ETH_HLEN..], IPPROTO_TCP, TCP_HLEN as u16);
    let check = checksum(sum16(sum, &out[ETH_HLEN + IPV6_HLEN..]));
    out[ETH_HLEN + IPV6_HLEN + 16..ETH_HLEN + IPV6_HLEN + 18].copy_from_slice(&check.to_be_bytes());
    ctx.change_tail(RST6_LEN as u32, 0)?;
    ctx.store(0, out, 0)?;
    Ok(())
}

/// Datagram -> ICMPv6 port unreachable quoting its IPv6 header and first 8 bytes.
#[inline(never)]
fn port_unreachable_v6(ctx: &TcContext, pkt: &Packet, buf: &mut Answers) -> i64 {
    status(build_port_unreachable_v6(ctx, pkt, buf))
}

#[inline(always)]
fn build_port_unreachable_v6(ctx: &TcContext, pkt: &Packet, buf: &mut Answers) -> Result<(), i64> {
    let eth: [u8; ETH_HLEN] = ctx.load(0)?;
    buf.quote6 = ctx.load(ETH_HLEN)?;
    ctx.change_tail((ETH_HLEN + QUOTE6) as u32, 0)?;
    ctx.adjust_room((IPV6_HLEN + ICMP_HLEN) as i32, BPF_ADJ_ROOM_MAC, 0)?;
    const PAYLOAD: u16 = (ICMP_HLEN + QUOTE6) as u16;
    let out = &mut buf.icmp6;
    reply_headers_v6(&eth, pkt, IPPROTO_ICMPV6, PAYLOAD, &mut out[..]);
    let sum = pseudo_v6(&out[ETH_HLEN..], IPPROTO_ICMPV6, PAYLOAD);
    let icmp = &mut out[ETH_HLEN + IPV6_HLEN..];
    icmp[0] = ICMPV6_DEST_UNREACH;
    icmp[1] = ICMPV6_PORT_UNREACH;
    let check = checksum(sum16(sum16(sum, icmp), &buf.quote6));
    icmp[2..4].copy_from_slice(&check.to_be_bytes());
    ctx.store(0, out, 0)?;
    Ok(())
}
