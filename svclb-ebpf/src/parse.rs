//! Header parsing with bounds checks against the real header lengths (IPv4 IHL).

use aya_ebpf::programs::TcContext;
use svclb_common::{FAMILY_V4, IPPROTO_TCP, IPPROTO_UDP, L3Addr, addr::v4};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
/// More-fragments bit and fragment offset of the IPv4 `frag_off` field (host order).
const IP_MF_OFFSET_MASK: u16 = 0x3fff;

const TCP_CSUM_OFF: usize = 16;
const UDP_CSUM_OFF: usize = 6;
const TCP_FLAGS_OFF: usize = 13;
pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_ACK: u8 = 0x10;

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

/// Offset of the IPv4 header checksum from the start of the IP header.
pub const IPV4_CSUM_OFF: usize = 10;
/// Offset of the IPv4 source address from the start of the IP header.
pub const IPV4_SADDR_OFF: usize = 12;
/// Offset of the IPv4 destination address from the start of the IP header.
pub const IPV4_DADDR_OFF: usize = 16;

/// What the datapath needs to know of a TCP or UDP packet.
pub struct Packet {
    pub l3_off: usize,
    pub l4_off: usize,
    pub family: u8,
    pub proto: u8,
    pub saddr: L3Addr,
    pub daddr: L3Addr,
    pub sport_be: u16,
    pub dport_be: u16,
    /// TCP flags; 0 for UDP.
    pub tcp_flags: u8,
}

impl Packet {
    /// Offset of the L4 checksum field.
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
    pub fn is_tcp_syn(&self) -> bool {
        self.proto == IPPROTO_TCP && self.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN
    }
}

#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Parses an Ethernet/IPv4/{TCP,UDP} packet. `None` for anything else: other ethertypes, IP
/// fragments, other protocols, or a packet too short to hold the headers it announces.
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Option<Packet> {
    // Headers may sit outside the linear area (GRO, some drivers); pull just what is needed
    // and only when it is missing, since a pull can copy a cloned skb.
    const WANT: usize = ETH_HLEN + 60 + 20;
    let linear = ctx.data_end() - ctx.data();
    if linear < WANT && (ctx.len() as usize) > linear {
        let want = if (ctx.len() as usize) < WANT {
            ctx.len()
        } else {
            WANT as u32
        };
        ctx.pull_data(want).ok()?;
    }

    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    if u16::from_be(unsafe { (*eth).proto_be }) != ETH_P_IP {
        return None;
    }
    let l3_off = ETH_HLEN;
    let ip = ptr_at::<Ipv4Hdr>(ctx, l3_off)?;
    let (version_ihl, frag_off_be, proto, saddr, daddr) = unsafe {
        (
            (*ip).version_ihl,
            (*ip).frag_off_be,
            (*ip).proto,
            (*ip).saddr,
            (*ip).daddr,
        )
    };
    let ihl = (version_ihl & 0x0f) as usize;
    if version_ihl >> 4 != 4 || ihl < 5 {
        return None;
    }
    if u16::from_be(frag_off_be) & IP_MF_OFFSET_MASK != 0 {
        return None;
    }
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return None;
    }
    let l4_off = l3_off + ihl * 4;
    // One bounds check covers the ports and, for TCP, the flags and checksum.
    let (sport_be, dport_be, tcp_flags) = if proto == IPPROTO_TCP {
        let tcp = ptr_at::<[u8; 20]>(ctx, l4_off)?;
        let tcp = unsafe { &*tcp };
        (
            u16::from_ne_bytes([tcp[0], tcp[1]]),
            u16::from_ne_bytes([tcp[2], tcp[3]]),
            tcp[TCP_FLAGS_OFF],
        )
    } else {
        let udp = ptr_at::<[u8; 8]>(ctx, l4_off)?;
        let udp = unsafe { &*udp };
        (
            u16::from_ne_bytes([udp[0], udp[1]]),
            u16::from_ne_bytes([udp[2], udp[3]]),
            0,
        )
    };
    Some(Packet {
        l3_off,
        l4_off,
        family: FAMILY_V4,
        proto,
        saddr: v4(saddr),
        daddr: v4(daddr),
        sport_be,
        dport_be,
        tcp_flags,
    })
}
