//! Test packets: Ethernet/IPv4/{TCP,UDP} frames with checksums computed from scratch
//! (RFC 1071), independently of the kernel's incremental helpers the datapath uses.

use std::net::Ipv4Addr;

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        flags: u8,
    },
    /// `zero_checksum`: the sender did not compute one (legal for UDP over IPv4).
    Udp {
        zero_checksum: bool,
    },
}

/// Everything that defines a test packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketSpec {
    pub src: Ipv4Addr,
    pub sport: u16,
    pub dst: Ipv4Addr,
    pub dport: u16,
    pub l4: L4,
    /// IPv4 options, a multiple of 4 bytes (IHL grows with them).
    pub ip_options: Vec<u8>,
    pub payload: Vec<u8>,
}

impl PacketSpec {
    pub fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Self {
        Self {
            src: src.0,
            sport: src.1,
            dst: dst.0,
            dport: dst.1,
            l4: L4::Tcp { flags },
            ip_options: Vec::new(),
            payload: b"hello".to_vec(),
        }
    }

    pub fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Self {
        Self {
            l4: L4::Udp {
                zero_checksum: false,
            },
            ..Self::tcp(src, dst, 0)
        }
    }

    pub fn with_src(mut self, addr: Ipv4Addr, port: u16) -> Self {
        self.src = addr;
        self.sport = port;
        self
    }

    pub fn with_dst(mut self, addr: Ipv4Addr, port: u16) -> Self {
        self.dst = addr;
        self.dport = port;
        self
    }

    /// The frame: Ethernet, IPv4 (with options), TCP or UDP, payload.
    pub fn build(&self) -> Vec<u8> {
        assert_eq!(self.ip_options.len() % 4, 0, "IPv4 options pad to 4 bytes");
        let l4_header_len = match self.l4 {
            L4::Tcp { .. } => 20,
            L4::Udp { .. } => 8,
        };
        let l4_len = l4_header_len + self.payload.len();
        let ihl = 5 + self.ip_options.len() / 4;
        let total_len = ihl * 4 + l4_len;

        let mut frame = Vec::with_capacity(14 + total_len);
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00]);
        let ip_start = frame.len();
        let protocol = match self.l4 {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
        };
        frame.push(0x40 | ihl as u8);
        frame.push(0);
        frame.extend_from_slice(&(total_len as u16).to_be_bytes());
        frame.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, protocol, 0, 0]);
        frame.extend_from_slice(&self.src.octets());
        frame.extend_from_slice(&self.dst.octets());
        frame.extend_from_slice(&self.ip_options);
        let ip_csum = checksum(&[&frame[ip_start..]]);
        frame[ip_start + 10..ip_start + 12].copy_from_slice(&ip_csum.to_be_bytes());

        let l4_start = frame.len();
        frame.extend_from_slice(&self.sport.to_be_bytes());
        frame.extend_from_slice(&self.dport.to_be_bytes());
        let csum_at = match self.l4 {
            L4::Tcp { flags } => {
                frame.extend_from_slice(&[
                    0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0,
                ]);
                l4_start + 16
            }
            L4::Udp { .. } => {
                frame.extend_from_slice(&(l4_len as u16).to_be_bytes());
                frame.extend_from_slice(&[0, 0]);
                l4_start + 6
            }
        };
        frame.extend_from_slice(&self.payload);
        if self.l4
            != (L4::Udp {
                zero_checksum: true,
            })
        {
            let mut csum = l4_checksum(self.src, self.dst, protocol, &frame[l4_start..]);
            if csum == 0 && matches!(self.l4, L4::Udp { .. }) {
                csum = 0xffff;
            }
            frame[csum_at..csum_at + 2].copy_from_slice(&csum.to_be_bytes());
        }
        frame
    }
}

/// The Internet checksum of the concatenation of `parts` (RFC 1071).
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let bytes: Vec<u8> = parts.concat();
    for chunk in bytes.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, segment: &[u8]) -> u16 {
    let len = (segment.len() as u16).to_be_bytes();
    let pseudo = [&src.octets()[..], &dst.octets(), &[0, protocol], &len].concat();
    checksum(&[&pseudo, segment])
}

/// Checksum verdicts on a frame produced by the datapath.
#[derive(Debug, PartialEq, Eq)]
pub struct Checksums {
    pub ip_ok: bool,
    /// L4 checksum verifies (a zero UDP checksum counts as "none", not as valid).
    pub l4_ok: bool,
    pub udp_zero: bool,
}

/// Verifies the IPv4 header and TCP/UDP checksums of an Ethernet/IPv4 frame.
pub fn verify_checksums(frame: &[u8]) -> Checksums {
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let protocol = ip[9];
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let segment = &ip[ihl..total];
    let udp_zero = protocol == 17 && segment[6..8] == [0, 0];
    Checksums {
        ip_ok: checksum(&[&ip[..ihl]]) == 0,
        l4_ok: !udp_zero && l4_checksum(src, dst, protocol, segment) == 0,
        udp_zero,
    }
}

/// The answer a frontend without endpoints gives a TCP SYN: RST|ACK from the frontend,
/// acknowledging the SYN and its payload, MAC addresses swapped (built independently of the
/// datapath, with a checksum from scratch).
pub fn expected_reset(syn: &PacketSpec) -> Vec<u8> {
    let input = syn.build();
    let seq = u32::from_be_bytes([input[38], input[39], input[40], input[41]]);
    let ack = seq + 1 + syn.payload.len() as u32;
    let mut frame = reply_headers(&input, syn, 6, 40);
    let tcp_start = frame.len();
    frame.extend_from_slice(&syn.dport.to_be_bytes());
    frame.extend_from_slice(&syn.sport.to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(&ack.to_be_bytes());
    frame.extend_from_slice(&[0x50, 0x14, 0, 0, 0, 0, 0, 0]);
    let csum = l4_checksum(syn.dst, syn.src, 6, &frame[tcp_start..]);
    frame[tcp_start + 16..tcp_start + 18].copy_from_slice(&csum.to_be_bytes());
    frame
}

/// The answer a frontend without endpoints gives a UDP datagram: ICMP port unreachable from
/// the frontend quoting the datagram's IP header and first 8 bytes.
pub fn expected_port_unreachable(datagram: &PacketSpec) -> Vec<u8> {
    let input = datagram.build();
    let quote = &input[14..14 + 28];
    let mut frame = reply_headers(&input, datagram, 1, 56);
    let icmp_start = frame.len();
    frame.extend_from_slice(&[3, 3, 0, 0, 0, 0, 0, 0]);
    frame.extend_from_slice(quote);
    let csum = checksum(&[&frame[icmp_start..]]);
    frame[icmp_start + 2..icmp_start + 4].copy_from_slice(&csum.to_be_bytes());
    frame
}

/// Ethernet (addresses of `input` swapped) and an IPv4 header (TTL 64, don't fragment) from
/// the frontend back to the client of `spec`: the start of every answer the datapath makes.
fn reply_headers(input: &[u8], spec: &PacketSpec, protocol: u8, total_len: u16) -> Vec<u8> {
    let mut frame = Vec::with_capacity(70);
    frame.extend_from_slice(&input[6..12]);
    frame.extend_from_slice(&input[0..6]);
    frame.extend_from_slice(&input[12..14]);
    let ip_start = frame.len();
    frame.extend_from_slice(&[0x45, 0]);
    frame.extend_from_slice(&total_len.to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0x40, 0, 64, protocol, 0, 0]);
    frame.extend_from_slice(&spec.dst.octets());
    frame.extend_from_slice(&spec.src.octets());
    let ip_csum = checksum(&[&frame[ip_start..]]);
    frame[ip_start + 10..ip_start + 12].copy_from_slice(&ip_csum.to_be_bytes());
    frame
}

/// An ICMP error frame from `src` to `dst`: ICMP `header` (type, code, checksum left zero,
/// rest of header) and `quote` (the IP header and leading bytes of the packet it is about),
/// with checksums from scratch.
pub fn icmp_error(src: Ipv4Addr, dst: Ipv4Addr, header: [u8; 8], quote: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + 28 + quote.len());
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00]);
    let ip_start = frame.len();
    let total_len = (20 + 8 + quote.len()) as u16;
    frame.extend_from_slice(&[0x45, 0xc0]);
    frame.extend_from_slice(&total_len.to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0, 64, 1, 0, 0]);
    frame.extend_from_slice(&src.octets());
    frame.extend_from_slice(&dst.octets());
    let ip_csum = checksum(&[&frame[ip_start..]]);
    frame[ip_start + 10..ip_start + 12].copy_from_slice(&ip_csum.to_be_bytes());
    let icmp_start = frame.len();
    frame.extend_from_slice(&header);
    frame[icmp_start + 2..icmp_start + 4].copy_from_slice(&[0, 0]);
    frame.extend_from_slice(quote);
    let csum = checksum(&[&frame[icmp_start..]]);
    frame[icmp_start + 2..icmp_start + 4].copy_from_slice(&csum.to_be_bytes());
    frame
}

/// What an ICMP error quotes of `spec`: its IP header and the first `l4_bytes` bytes after it.
pub fn quote_of(spec: &PacketSpec, l4_bytes: usize) -> Vec<u8> {
    let frame = spec.build();
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    frame[14..14 + ihl + l4_bytes].to_vec()
}

/// Splits an Ethernet + IPv4 frame (no options) into IP fragments of `chunk` payload bytes
/// (a multiple of 8) as a sender would: the header copied, with the IP id `id`, don't-fragment
/// cleared, offset and more-fragments set, total length and checksum made anew.
pub fn fragment4(frame: &[u8], chunk: usize, id: u16) -> Vec<Vec<u8>> {
    assert_eq!(chunk % 8, 0, "fragments carry multiples of 8 bytes");
    let (eth, ip) = frame.split_at(14);
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let (header, payload) = ip.split_at(ihl);
    let pieces: Vec<&[u8]> = payload.chunks(chunk).collect();
    pieces
        .iter()
        .enumerate()
        .map(|(i, piece)| {
            let mut out = eth.to_vec();
            let mut h = header.to_vec();
            h[2..4].copy_from_slice(&((ihl + piece.len()) as u16).to_be_bytes());
            h[4..6].copy_from_slice(&id.to_be_bytes());
            let more = if i + 1 < pieces.len() { 0x2000 } else { 0 };
            let offset = (i * chunk / 8) as u16;
            h[6..8].copy_from_slice(&(more | offset).to_be_bytes());
            h[10..12].copy_from_slice(&[0, 0]);
            let sum = checksum(&[&h]);
            h[10..12].copy_from_slice(&sum.to_be_bytes());
            out.extend_from_slice(&h);
            out.extend_from_slice(piece);
            out
        })
        .collect()
}
