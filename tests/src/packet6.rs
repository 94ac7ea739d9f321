//! IPv6 test packets: Ethernet/IPv6/{extension headers}/{TCP,UDP} frames and the answers and
//! ICMPv6 errors the datapath makes or translates, with checksums computed from scratch over
//! the IPv6 pseudo-header (RFC 8200 8.1), independently of the kernel's helpers.

use std::net::Ipv6Addr;

use crate::packet::{L4, checksum};

pub const NEXTHDR_HOP: u8 = 0;
pub const NEXTHDR_DEST: u8 = 60;
pub const NEXTHDR_ROUTING: u8 = 43;
pub const NEXTHDR_FRAGMENT: u8 = 44;
pub const NEXTHDR_ICMPV6: u8 = 58;

/// One extension header before the L4 header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ext {
    /// Hop-by-hop, routing or destination options (`kind`), 8 bytes: next header, length 0,
    /// then six bytes the datapath only skips (a PadN option).
    Options(u8),
    /// A fragment header: offset in 8-byte units, more fragments, identification.
    Fragment { offset: u16, more: bool, id: u32 },
    /// A routing header (type 4, segment routing), 8 bytes, with this many segments left.
    Routing { segments_left: u8 },
}

/// Everything that defines an IPv6 test packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet6 {
    pub src: Ipv6Addr,
    pub sport: u16,
    pub dst: Ipv6Addr,
    pub dport: u16,
    pub l4: L4,
    pub ext: Vec<Ext>,
    pub hop_limit: u8,
    pub payload: Vec<u8>,
}

impl Packet6 {
    pub fn tcp(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), flags: u8) -> Self {
        Self {
            src: src.0,
            sport: src.1,
            dst: dst.0,
            dport: dst.1,
            l4: L4::Tcp { flags },
            ext: Vec::new(),
            hop_limit: 64,
            payload: b"hello".to_vec(),
        }
    }

    pub fn udp(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16)) -> Self {
        Self {
            l4: L4::Udp {
                zero_checksum: false,
            },
            ..Self::tcp(src, dst, 0)
        }
    }

    pub fn with_src(mut self, addr: Ipv6Addr, port: u16) -> Self {
        self.src = addr;
        self.sport = port;
        self
    }

    pub fn with_dst(mut self, addr: Ipv6Addr, port: u16) -> Self {
        self.dst = addr;
        self.dport = port;
        self
    }

    fn protocol(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
        }
    }

    /// The frame: Ethernet, IPv6, extension headers, TCP or UDP, payload. The L4 checksum
    /// covers the segment of this packet (for a fragment, as if it were the whole datagram).
    pub fn build(&self) -> Vec<u8> {
        let mut segment = Vec::new();
        segment.extend_from_slice(&self.sport.to_be_bytes());
        segment.extend_from_slice(&self.dport.to_be_bytes());
        let csum_at = match self.l4 {
            L4::Tcp { flags } => {
                segment.extend_from_slice(&[
                    0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0,
                ]);
                16
            }
            L4::Udp { .. } => {
                segment.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                segment.extend_from_slice(&[0, 0]);
                6
            }
        };
        segment.extend_from_slice(&self.payload);
        if self.l4
            != (L4::Udp {
                zero_checksum: true,
            })
        {
            let mut csum = l4_checksum6(self.src, self.dst, self.protocol(), &segment);
            if csum == 0 && matches!(self.l4, L4::Udp { .. }) {
                csum = 0xffff;
            }
            segment[csum_at..csum_at + 2].copy_from_slice(&csum.to_be_bytes());
        }

        let mut exts = Vec::new();
        for (i, ext) in self.ext.iter().enumerate() {
            let next = match self.ext.get(i + 1) {
                Some(Ext::Options(kind)) => *kind,
                Some(Ext::Fragment { .. }) => NEXTHDR_FRAGMENT,
                Some(Ext::Routing { .. }) => NEXTHDR_ROUTING,
                None => self.protocol(),
            };
            match ext {
                Ext::Routing { segments_left } => {
                    exts.extend_from_slice(&[next, 0, 4, *segments_left, 0, 0, 0, 0]);
                }
                // PadN of 4 bytes fills the 8.
                Ext::Options(_) => exts.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]),
                Ext::Fragment { offset, more, id } => {
                    let field = (offset << 3) | u16::from(*more);
                    exts.extend_from_slice(&[next, 0]);
                    exts.extend_from_slice(&field.to_be_bytes());
                    exts.extend_from_slice(&id.to_be_bytes());
                }
            }
        }
        let first = match self.ext.first() {
            Some(Ext::Options(kind)) => *kind,
            Some(Ext::Fragment { .. }) => NEXTHDR_FRAGMENT,
            Some(Ext::Routing { .. }) => NEXTHDR_ROUTING,
            None => self.protocol(),
        };
        let mut frame = ethernet();
        frame.extend_from_slice(&ipv6_header(
            self.src,
            self.dst,
            first,
            self.hop_limit,
            exts.len() + segment.len(),
        ));
        frame.extend_from_slice(&exts);
        frame.extend_from_slice(&segment);
        frame
    }
}

fn ethernet() -> Vec<u8> {
    vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x86, 0xdd]
}

fn ipv6_header(src: Ipv6Addr, dst: Ipv6Addr, next: u8, hop_limit: u8, payload: usize) -> Vec<u8> {
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&(payload as u16).to_be_bytes());
    ip.extend_from_slice(&[next, hop_limit]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    ip
}

/// The checksum of an upper-layer `segment` of protocol `next` over IPv6.
pub fn l4_checksum6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, segment: &[u8]) -> u16 {
    let len = (segment.len() as u32).to_be_bytes();
    let pseudo = [&src.octets()[..], &dst.octets(), &len, &[0, 0, 0, next]].concat();
    checksum(&[&pseudo, segment])
}

/// Whether the L4 (TCP, UDP or ICMPv6) checksum of an Ethernet/IPv6 frame verifies, walking
/// its extension headers; a zero UDP checksum does not.
pub fn l4_checksum_ok(frame: &[u8]) -> bool {
    let ip = &frame[14..];
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).expect("16 bytes"));
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).expect("16 bytes"));
    let end = 40 + usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    let (mut next, mut at) = (ip[6], 40);
    while matches!(
        next,
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_FRAGMENT
    ) {
        let len = if next == NEXTHDR_FRAGMENT {
            8
        } else {
            (usize::from(ip[at + 1]) + 1) * 8
        };
        next = ip[at];
        at += len;
    }
    let segment = &ip[at..end];
    if next == 17 && segment[6..8] == [0, 0] {
        return false;
    }
    l4_checksum6(src, dst, next, segment) == 0
}

/// Ethernet (addresses of `input` swapped) and an IPv6 header (hop limit 64) from the
/// frontend back to the client of `spec`.
fn reply_headers(input: &[u8], spec: &Packet6, next: u8, payload: usize) -> Vec<u8> {
    let mut frame = Vec::with_capacity(90);
    frame.extend_from_slice(&input[6..12]);
    frame.extend_from_slice(&input[0..6]);
    frame.extend_from_slice(&input[12..14]);
    frame.extend_from_slice(&ipv6_header(spec.dst, spec.src, next, 64, payload));
    frame
}

/// The answer a frontend without endpoints gives a TCP SYN over IPv6: RST|ACK from the
/// frontend acknowledging the SYN and its payload.
pub fn expected_reset6(syn: &Packet6) -> Vec<u8> {
    let input = syn.build();
    let l4 = 14 + 40;
    let seq = u32::from_be_bytes([input[l4 + 4], input[l4 + 5], input[l4 + 6], input[l4 + 7]]);
    let ack = seq + 1 + syn.payload.len() as u32;
    let mut segment = Vec::new();
    segment.extend_from_slice(&syn.dport.to_be_bytes());
    segment.extend_from_slice(&syn.sport.to_be_bytes());
    segment.extend_from_slice(&[0, 0, 0, 0]);
    segment.extend_from_slice(&ack.to_be_bytes());
    segment.extend_from_slice(&[0x50, 0x14, 0, 0, 0, 0, 0, 0]);
    let csum = l4_checksum6(syn.dst, syn.src, 6, &segment);
    segment[16..18].copy_from_slice(&csum.to_be_bytes());
    let mut frame = reply_headers(&input, syn, 6, segment.len());
    frame.extend_from_slice(&segment);
    frame
}

/// The answer a frontend without endpoints gives a UDP datagram over IPv6: ICMPv6 port
/// unreachable (type 1, code 4) from the frontend quoting the IPv6 header and 8 bytes.
pub fn expected_port_unreachable6(datagram: &Packet6) -> Vec<u8> {
    let input = datagram.build();
    let quote = &input[14..14 + 48];
    let mut message = vec![1, 4, 0, 0, 0, 0, 0, 0];
    message.extend_from_slice(quote);
    let csum = l4_checksum6(datagram.dst, datagram.src, NEXTHDR_ICMPV6, &message);
    message[2..4].copy_from_slice(&csum.to_be_bytes());
    let mut frame = reply_headers(&input, datagram, NEXTHDR_ICMPV6, message.len());
    frame.extend_from_slice(&message);
    frame
}

/// An ICMPv6 error frame from `src` to `dst`: `header` (type, code, checksum left zero, the
/// rest: unused, MTU or pointer) and `quote`, with the checksum from scratch.
pub fn icmp6_error(src: Ipv6Addr, dst: Ipv6Addr, header: [u8; 8], quote: &[u8]) -> Vec<u8> {
    let mut message = header.to_vec();
    message[2..4].copy_from_slice(&[0, 0]);
    message.extend_from_slice(quote);
    let csum = l4_checksum6(src, dst, NEXTHDR_ICMPV6, &message);
    message[2..4].copy_from_slice(&csum.to_be_bytes());
    let mut frame = ethernet();
    frame.extend_from_slice(&ipv6_header(src, dst, NEXTHDR_ICMPV6, 64, message.len()));
    frame.extend_from_slice(&message);
    frame
}

/// What an ICMPv6 error quotes of `spec`: its IPv6 header and the first `l4_bytes` bytes
/// after it (`spec` without extension headers).
pub fn quote_of6(spec: &Packet6, l4_bytes: usize) -> Vec<u8> {
    let frame = spec.build();
    frame[14..14 + 40 + l4_bytes].to_vec()
}

/// Splits an Ethernet + IPv6 frame without extension headers into fragments of `chunk` bytes
/// of its payload (a multiple of 8) as a sender would: the IPv6 header, then a fragment
/// header (identification `id`) naming the original next header.
pub fn fragment6(frame: &[u8], chunk: usize, id: u32) -> Vec<Vec<u8>> {
    assert_eq!(chunk % 8, 0, "fragments carry multiples of 8 bytes");
    let (head, payload) = frame.split_at(14 + 40);
    let next = head[14 + 6];
    let pieces: Vec<&[u8]> = payload.chunks(chunk).collect();
    pieces
        .iter()
        .enumerate()
        .map(|(i, piece)| {
            let mut out = head.to_vec();
            out[14 + 4..14 + 6].copy_from_slice(&((8 + piece.len()) as u16).to_be_bytes());
            out[14 + 6] = NEXTHDR_FRAGMENT;
            let field = ((i * chunk / 8) as u16) << 3 | u16::from(i + 1 < pieces.len());
            out.extend_from_slice(&[next, 0]);
            out.extend_from_slice(&field.to_be_bytes());
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(piece);
            out
        })
        .collect()
}
