//! Header parsing: Ethernet, IPv4 (with options), TCP, UDP and ICMP (whose errors can be about
//! a translated flow: see `icmp`). Anything else is not ours and
//! passes untouched. The same parser serves TC (after pulling headers into the linear area)
//! and XDP (whose frames are always linear).

use aya_ebpf::programs::TcContext;
use svclb_common::{FAMILY_V4, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, L3Addr, addr::v4};

pub const ETH_HLEN: usize = 14;
/// An IPv4 header without options.
pub const IP_HLEN: usize = 20;
const ETH_P_IP: u16 = 0x0800;
/// More-fragments flag and fragment offset: any of them set means a fragment.
const IP_MF_OFFSET_MASK: u16 = 0x3fff;

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

/// What the datapath needs to know about a packet. Ports are in network order.
pub struct Packet {
    pub l3_off: usize,
    pub l4_off: usize,
    pub ihl: u8,
    pub family: u8,
    pub proto: u8,
    pub ttl: u8,
    pub tot_len_be: u16,
    pub saddr: L3Addr,
    pub daddr: L3Addr,
    pub sport_be: u16,
    pub dport_be: u16,
    pub tcp_flags: u8,
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

    #[inline(always)]
    pub fn is_icmp(&self) -> bool {
        self.proto == IPPROTO_ICMP
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

    /// A TCP SYN without ACK: the first packet of a connection.
    #[inline(always)]
    pub fn is_tcp_syn(&self) -> bool {
        self.proto == IPPROTO_TCP && self.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN
    }
}

#[inline(always)]
fn ptr_at<T>(start: usize, end: usize, offset: usize) -> Option<*const T> {
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Parses a TC packet into `out`, first pulling the headers into the linear area when they
/// are not there (GRO, some drivers); only then, since a pull can copy a cloned skb. `false`
/// for a packet that is not ours. (Written in place: a returned `Packet` would sit on the
/// caller's stack.)
#[inline(always)]
pub fn parse(ctx: &TcContext, out: &mut Packet) -> bool {
    // Ethernet + the longest IPv4 header + a TCP header without options.
    const WANT: usize = ETH_HLEN + 60 + 20;
    let linear = ctx.data_end() - ctx.data();
    if linear < WANT && (ctx.len() as usize) > linear {
        let want = if (ctx.len() as usize) < WANT {
            ctx.len()
        } else {
            WANT as u32
        };
        if ctx.pull_data(want).is_err() {
            return false;
        }
    }
    parse_into(ctx.data(), ctx.data_end(), ctx.len() as usize, out).is_some()
}

/// Parses the frame between `start` and `end` (packet pointers the verifier has seen).
#[inline(always)]
pub fn parse_frame(start: usize, end: usize) -> Option<Packet> {
    let mut pkt = Packet {
        l3_off: 0,
        l4_off: 0,
        ihl: 0,
        family: 0,
        proto: 0,
        ttl: 0,
        tot_len_be: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        sport_be: 0,
        dport_be: 0,
        tcp_flags: 0,
    };
    parse_into(start, end, end - start, &mut pkt)?;
    Some(pkt)
}

/// `len` is the whole packet's length (an skb's data may go on past `end`, outside the
/// linear area).
#[inline(always)]
fn parse_into(start: usize, end: usize, len: usize, out: &mut Packet) -> Option<()> {
    let eth = ptr_at::<EthHdr>(start, end, 0)?;
    // SAFETY: bounds checked by ptr_at.
    if u16::from_be(unsafe { (*eth).proto_be }) != ETH_P_IP {
        return None;
    }
    let l3_off = ETH_HLEN;
    let ip = ptr_at::<Ipv4Hdr>(start, end, l3_off)?;
    // SAFETY: bounds checked by ptr_at.
    let (version_ihl, tot_len_be, frag_off_be, ttl, proto, saddr, daddr) = unsafe {
        (
            (*ip).version_ihl,
            (*ip).tot_len_be,
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
    // Fragments carry no (or only part of the) ports: not translated.
    if u16::from_be(frag_off_be) & IP_MF_OFFSET_MASK != 0 {
        return None;
    }
    let l4_off = l3_off + usize::from(ihl) * 4;
    // A packet shorter than its IP header says (truncated), or whose total length leaves no
    // room for its L4 header, is not translated: the stack drops it. (A total length of 0 is
    // a BIG TCP packet over 64 KiB, whose length is the skb's.)
    let tot_len = usize::from(u16::from_be(tot_len_be));
    let l4_min = if proto == IPPROTO_TCP { 20 } else { 8 };
    if tot_len != 0 && (l3_off + tot_len > len || tot_len < usize::from(ihl) * 4 + l4_min) {
        return None;
    }
    let (sport_be, dport_be, tcp_flags) = if proto == IPPROTO_ICMP {
        // No ports; `icmp` reads what it needs.
        (0, 0, 0)
    } else if proto == IPPROTO_TCP {
        let tcp = ptr_at::<[u8; 20]>(start, end, l4_off)?;
        // SAFETY: bounds checked by ptr_at.
        let tcp = unsafe { &*tcp };
        (
            u16::from_ne_bytes([tcp[0], tcp[1]]),
            u16::from_ne_bytes([tcp[2], tcp[3]]),
            tcp[TCP_FLAGS_OFF],
        )
    } else if proto == IPPROTO_UDP {
        let udp = ptr_at::<[u8; 8]>(start, end, l4_off)?;
        // SAFETY: bounds checked by ptr_at.
        let udp = unsafe { &*udp };
        (
            u16::from_ne_bytes([udp[0], udp[1]]),
            u16::from_ne_bytes([udp[2], udp[3]]),
            0,
        )
    } else {
        return None;
    };
    out.l3_off = l3_off;
    out.l4_off = l4_off;
    out.ihl = ihl;
    out.family = FAMILY_V4;
    out.proto = proto;
    out.ttl = ttl;
    out.tot_len_be = tot_len_be;
    out.saddr = v4(saddr);
    out.daddr = v4(daddr);
    out.sport_be = sport_be;
    out.dport_be = dport_be;
    out.tcp_flags = tcp_flags;
    Some(())
}
