//! Header parsing: Ethernet, IPv4 (with options) and IPv6 (with the extension headers a flow
//! can carry: hop-by-hop, routing, destination options, fragment), TCP, UDP, ICMP and ICMPv6
//! (whose errors can be about a translated flow: see `icmp`). Anything else is not ours and
//! passes untouched.
//!
//! Fragments: a first fragment (offset 0, more to come) holds the ports and is parsed as any
//! packet; a later fragment has no L4 header, and is parsed only as far as its IP header and
//! fragment identity (`fragment` translates it as its first fragment was). The same parser
//! serves TC (after pulling headers into the linear area) and XDP (whose frames are always
//! linear).

use aya_ebpf::programs::TcContext;
use svclb_common::{
    FAMILY_V4, FAMILY_V6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, L3Addr,
};

pub const ETH_HLEN: usize = 14;
/// An IPv4 header without options.
pub const IP_HLEN: usize = 20;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// The fixed IPv6 header.
pub const IPV6_HLEN: usize = 40;
/// IPv6 extension headers that may come before a flow's TCP or UDP header.
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_DEST: u8 = 60;
/// How many extension headers are walked; a packet with more is not translated.
const IPV6_MAX_EXT: usize = 4;
/// The IPv4 more-fragments flag and fragment offset.
const IP_MF: u16 = 0x2000;
const IP_OFFSET_MASK: u16 = 0x1fff;
/// The IPv6 fragment header's offset and more-fragments flag.
const IP6_OFFSET_MASK: u16 = 0xfff8;
const IP6_MF: u16 = 0x0001;

/// [`Packet::frag`]: not a fragment.
pub const FRAG_NONE: u8 = 0;
/// The first fragment of a datagram (offset 0, more to come): it has the L4 header.
pub const FRAG_FIRST: u8 = 1;
/// A later fragment: no L4 header, no ports.
pub const FRAG_LATER: u8 = 2;

const TCP_CSUM_OFF: usize = 16;
const UDP_CSUM_OFF: usize = 6;
const TCP_FLAGS_OFF: usize = 13;
pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_ACK: u8 = 0x10;
pub const TCP_FLAG_FIN: u8 = 0x01;
pub const TCP_FLAG_RST: u8 = 0x04;

#[repr(C)]
struct EthHdr {
    dst: [u8; 6],
    src: [u8; 6],
    proto_be: u16,
}

#[repr(C)]
struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    tot_len_be: u16,
    id_be: u16,
    frag_off_be: u16,
    ttl: u8,
    proto: u8,
    check: u16,
    saddr: [u8; 4],
    daddr: [u8; 4],
}

pub const IPV4_TTL_OFF: usize = 8;
pub const IPV4_CSUM_OFF: usize = 10;
pub const IPV4_SADDR_OFF: usize = 12;
pub const IPV4_DADDR_OFF: usize = 16;
pub const IPV6_HOPLIMIT_OFF: usize = 7;
pub const IPV6_SADDR_OFF: usize = 8;
pub const IPV6_DADDR_OFF: usize = 24;

/// What the datapath needs to know about a packet. Ports are in network order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Packet {
    pub l3_off: usize,
    pub l4_off: usize,
    /// IPv4 header length in 32-bit words; 0 for IPv6.
    pub ihl: u8,
    pub family: u8,
    /// The L4 protocol (for IPv6, the last next-header).
    pub proto: u8,
    /// TTL or hop limit.
    pub ttl: u8,
    /// Length of the IP packet, headers included (0 for an IPv4 BIG TCP packet).
    pub tot_len_be: u16,
    pub saddr: L3Addr,
    pub daddr: L3Addr,
    pub sport_be: u16,
    pub dport_be: u16,
    pub tcp_flags: u8,
    /// [`FRAG_NONE`], [`FRAG_FIRST`] or [`FRAG_LATER`].
    pub frag: u8,
    /// The fragment identification (IPv4's 16 bits, or IPv6's 32), as on the wire.
    pub frag_id: u32,
}

impl Packet {
    #[inline(always)]
    pub fn l4_csum_off(&self) -> usize {
        self.l4_off
            + if self.proto == IPPROTO_TCP {
                TCP_CSUM_OFF
            } else {
                UDP_CSUM_OFF
            }
    }

    #[inline(always)]
    pub fn is_udp(&self) -> bool {
        self.proto == IPPROTO_UDP
    }

    /// ICMP or ICMPv6, as the family has it.
    #[inline(always)]
    pub fn is_icmp(&self) -> bool {
        self.proto
            == if self.family == FAMILY_V6 {
                IPPROTO_ICMPV6
            } else {
                IPPROTO_ICMP
            }
    }

    #[inline(always)]
    pub fn is_v6(&self) -> bool {
        self.family == FAMILY_V6
    }

    #[inline(always)]
    pub fn is_tcp(&self) -> bool {
        self.proto == IPPROTO_TCP
    }

    /// A TCP segment that ends its direction (FIN) or the connection (RST).
    #[inline(always)]
    pub fn is_tcp_end(&self) -> bool {
        self.proto == IPPROTO_TCP && self.tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST) != 0
    }

    /// A TCP SYN, with or without ACK: a connection opening on this tuple, either way.
    #[inline(always)]
    pub fn is_tcp_opening(&self) -> bool {
        self.proto == IPPROTO_TCP && self.tcp_flags & TCP_FLAG_SYN != 0
    }

    /// A TCP SYN without ACK: the first packet of a connection.
    #[inline(always)]
    pub fn is_tcp_syn(&self) -> bool {
        self.proto == IPPROTO_TCP && self.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN
    }
}

/// Reads bytes of a packet anywhere in it, in the linear area or past it: the kernel's skb
/// (`bpf_skb_load_bytes`), or a buffer in the host's fuzzer.
pub trait Load {
    /// The `N` bytes at `offset`; `None` past the packet's end.
    fn load_bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;
}

impl Load for TcContext {
    #[inline(always)]
    fn load_bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        self.load(offset).ok()
    }
}

#[inline(always)]
fn ptr_at<T>(start: usize, end: usize, offset: usize) -> Option<*const T> {
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Parses a TC packet into `out`, pulling the headers into the linear area only when they
/// are not there (GRO, some drivers) and the parse found them missing: a pull makes the skb
/// writable, and so copies the head of a cloned one, which every TCP segment a local socket
/// sends is (a 64 KiB GSO segment's linear area holds its headers only, short of a fixed
/// amount to pull). `false` for a packet that is not ours. (Written in place: a returned
/// `Packet` would sit on the caller's stack.)
#[inline(always)]
pub fn parse(ctx: &TcContext, out: &mut Packet) -> bool {
    // Ethernet + the longest IPv4 header, or an IPv6 header with a few small extension
    // headers, + a TCP header without options.
    const WANT: usize = ETH_HLEN + 40 + 64 + 20;
    if parse_linear(ctx.data(), ctx.data_end(), ctx.len() as usize, out) {
        return true;
    }
    let linear = ctx.data_end() - ctx.data();
    if linear >= WANT || (ctx.len() as usize) <= linear {
        return false;
    }
    let want = (ctx.len() as usize).min(WANT) as u32;
    ctx.pull_data(want).is_ok() && parse_linear(ctx.data(), ctx.data_end(), ctx.len() as usize, out)
}

/// Parses the XDP frame between `start` and `end` (packet pointers the verifier has seen)
/// into `out`; `false` for a packet that is not ours.
#[inline(always)]
pub fn parse_into_frame(start: usize, end: usize, out: &mut Packet) -> bool {
    parse_linear(start, end, end - start, out)
}

/// Parses the packet whose linear area (headers included, as far as they are ours) lies
/// between `start` and `end`, and whose whole length is `len` (an skb's data may go on past
/// `end`). Reads nothing outside the linear area. What it accepts has its fixed IP header
/// there, and its TCP or UDP header when it has one (an ICMP message is read through
/// [`Load`]). `false` for a packet that is not ours.
#[inline(always)]
pub fn parse_linear(start: usize, end: usize, len: usize, out: &mut Packet) -> bool {
    parse_into(start, end, len, out).is_some()
}

#[inline(always)]
fn parse_into(start: usize, end: usize, len: usize, out: &mut Packet) -> Option<()> {
    let eth = ptr_at::<EthHdr>(start, end, 0)?;
    // SAFETY: bounds checked by ptr_at.
    let proto = u16::from_be(unsafe { (*eth).proto_be });
    if proto == ETH_P_IP {
        parse_v4(start, end, len, out)?;
    } else if proto == ETH_P_IPV6 {
        parse_v6(start, end, len, out)?;
    } else {
        return None;
    }
    if out.frag == FRAG_LATER {
        out.sport_be = 0;
        out.dport_be = 0;
        out.tcp_flags = 0;
        return Some(());
    }
    let (sport_be, dport_be, tcp_flags) = parse_l4(start, end, out)?;
    out.sport_be = sport_be;
    out.dport_be = dport_be;
    out.tcp_flags = tcp_flags;
    Some(())
}

/// The L4 header's ports and TCP flags; `None` for protocols that are not ours.
#[inline(always)]
fn parse_l4(start: usize, end: usize, pkt: &Packet) -> Option<(u16, u16, u8)> {
    if pkt.is_icmp() {
        // No ports; `icmp` reads what it needs.
        return Some((0, 0, 0));
    }
    if pkt.proto == IPPROTO_TCP {
        let tcp = ptr_at::<[u8; 20]>(start, end, pkt.l4_off)?;
        // SAFETY: bounds checked by ptr_at.
        let tcp = unsafe { &*tcp };
        return Some((
            u16::from_ne_bytes([tcp[0], tcp[1]]),
            u16::from_ne_bytes([tcp[2], tcp[3]]),
            tcp[TCP_FLAGS_OFF],
        ));
    }
    if pkt.proto == IPPROTO_UDP {
        let udp = ptr_at::<[u8; 8]>(start, end, pkt.l4_off)?;
        // SAFETY: bounds checked by ptr_at.
        let udp = unsafe { &*udp };
        // A zero UDP checksum is not allowed over IPv6 (RFC 8200): the stack drops such a
        // datagram, so it is not translated (a rewrite must never emit one either).
        if pkt.family == FAMILY_V6 && udp[6] == 0 && udp[7] == 0 {
            return None;
        }
        return Some((
            u16::from_ne_bytes([udp[0], udp[1]]),
            u16::from_ne_bytes([udp[2], udp[3]]),
            0,
        ));
    }
    None
}

/// Whether an IP length field of 0 can be BIG TCP's: TCP, and an IP packet of `l3_len` bytes
/// that a 16-bit length cannot hold.
#[inline(always)]
fn big_tcp(proto: u8, l3_len: usize) -> bool {
    proto == IPPROTO_TCP && l3_len > 0xffff
}

#[inline(always)]
fn l4_min(proto: u8) -> usize {
    if proto == IPPROTO_TCP { 20 } else { 8 }
}

#[inline(always)]
fn parse_v4(start: usize, end: usize, len: usize, out: &mut Packet) -> Option<()> {
    let l3_off = ETH_HLEN;
    let ip = ptr_at::<Ipv4Hdr>(start, end, l3_off)?;
    // SAFETY: bounds checked by ptr_at.
    let (version_ihl, tot_len_be, id_be, frag_off_be, ttl, proto, saddr, daddr) = unsafe {
        (
            (*ip).version_ihl,
            (*ip).tot_len_be,
            (*ip).id_be,
            (*ip).frag_off_be,
            (*ip).ttl,
            (*ip).proto,
            (*ip).saddr,
            (*ip).daddr,
        )
    };
    let ihl = version_ihl & 0x0f;
    if version_ihl >> 4 != 4 || ihl < 5 {
        return None;
    }
    let frag_off = u16::from_be(frag_off_be);
    let frag = if frag_off & IP_OFFSET_MASK != 0 {
        FRAG_LATER
    } else if frag_off & IP_MF != 0 {
        FRAG_FIRST
    } else {
        FRAG_NONE
    };
    let l4_off = l3_off + usize::from(ihl) * 4;
    // A packet shorter than its IP header says (truncated), or whose total length leaves no
    // room for its L4 header (a later fragment has none), is not translated: the stack drops
    // it. A total length of 0 is a BIG TCP packet, whose length (over 64 KiB) is the skb's;
    // on anything else (a fragment too) it is malformed.
    let tot_len = usize::from(u16::from_be(tot_len_be));
    let l4_len = if frag == FRAG_LATER { 0 } else { l4_min(proto) };
    if tot_len == 0 {
        if frag != FRAG_NONE || !big_tcp(proto, len - l3_off) {
            return None;
        }
    } else if l3_off + tot_len > len || tot_len < usize::from(ihl) * 4 + l4_len {
        return None;
    }
    out.frag = frag;
    out.frag_id = u32::from(id_be);
    out.l3_off = l3_off;
    out.l4_off = l4_off;
    out.ihl = ihl;
    out.family = FAMILY_V4;
    out.proto = proto;
    out.ttl = ttl;
    out.tot_len_be = tot_len_be;
    crate::bytes::put_v4(&mut out.saddr, saddr);
    crate::bytes::put_v4(&mut out.daddr, daddr);
    Some(())
}

#[repr(C)]
struct Ipv6Hdr {
    version_class_flow: [u8; 4],
    payload_len_be: u16,
    next_header: u8,
    hop_limit: u8,
    saddr: [u8; 16],
    daddr: [u8; 16],
}

#[inline(always)]
fn parse_v6(start: usize, end: usize, len: usize, out: &mut Packet) -> Option<()> {
    let l3_off = ETH_HLEN;
    let ip = ptr_at::<Ipv6Hdr>(start, end, l3_off)?;
    // SAFETY: bounds checked by ptr_at.
    let (version, payload_len_be, mut next, hop_limit, saddr, daddr) = unsafe {
        (
            (*ip).version_class_flow[0] >> 4,
            (*ip).payload_len_be,
            (*ip).next_header,
            (*ip).hop_limit,
            (*ip).saddr,
            (*ip).daddr,
        )
    };
    if version != 6 {
        return None;
    }
    let mut l4_off = l3_off + IPV6_HLEN;
    let mut frag = FRAG_NONE;
    let mut frag_id = 0;
    for _ in 0..IPV6_MAX_EXT {
        if next == NEXTHDR_HOP || next == NEXTHDR_ROUTING || next == NEXTHDR_DEST {
            let ext = ptr_at::<[u8; 4]>(start, end, l4_off)?;
            // SAFETY: bounds checked by ptr_at.
            let ext = unsafe { &*ext };
            // A routing header with segments left: the destination is a waypoint, not the
            // packet's final one, and this node only one hop of its route (RFC 8200 4.4).
            // Not ours to translate.
            if next == NEXTHDR_ROUTING && ext[3] != 0 {
                return None;
            }
            next = ext[0];
            l4_off += (usize::from(ext[1]) + 1) * 8;
        } else if next == NEXTHDR_FRAGMENT {
            let header = ptr_at::<[u8; 8]>(start, end, l4_off)?;
            // SAFETY: bounds checked by ptr_at.
            let header = unsafe { &*header };
            let off_flags = u16::from_be_bytes([header[2], header[3]]);
            frag_id = u32::from_ne_bytes([header[4], header[5], header[6], header[7]]);
            next = header[0];
            l4_off += 8;
            if off_flags & IP6_OFFSET_MASK != 0 {
                // Only the first fragment holds what follows (see the module docs).
                frag = FRAG_LATER;
                break;
            }
            if off_flags & IP6_MF != 0 {
                frag = FRAG_FIRST;
            }
        } else {
            break;
        }
    }
    // As for IPv4: a truncated packet, or one without room for its L4 header, is not ours. A
    // payload length of 0 is a BIG TCP packet (a jumbogram), whose length is the skb's.
    let payload = usize::from(u16::from_be(payload_len_be));
    let tot_len = IPV6_HLEN + payload;
    let l4_len = if frag == FRAG_LATER { 0 } else { l4_min(next) };
    if payload == 0 {
        if frag != FRAG_NONE || !big_tcp(next, len - l3_off) {
            return None;
        }
    } else if l3_off + tot_len > len || l3_off + tot_len < l4_off + l4_len {
        return None;
    }
    out.frag = frag;
    out.frag_id = frag_id;
    out.l3_off = l3_off;
    out.l4_off = l4_off;
    out.ihl = 0;
    out.family = FAMILY_V6;
    out.proto = next;
    out.ttl = hop_limit;
    out.tot_len_be = if payload == 0 || tot_len > 0xffff {
        0
    } else {
        (tot_len as u16).to_be()
    };
    crate::bytes::put_v6(&mut out.saddr, &saddr);
    crate::bytes::put_v6(&mut out.daddr, &daddr);
    Some(())
}
