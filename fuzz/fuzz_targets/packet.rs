//! The datapath's packet parser (svclb-ebpf's `parse` and `quote`, the code the programs run),
//! on the host over any bytes, against etherparse as the reference:
//! - it never reads outside the linear area it is given (AddressSanitizer watches a buffer
//!   that ends there), and a packet it accepts from a partial linear area is parsed as from
//!   the whole packet: headers past the linear area are pulled or the packet passes;
//! - what it accepts agrees with etherparse on addresses, protocol, fragmentation, the L4
//!   header's place and ports;
//! - of the frames etherparse reads, not fragmented, exactly those that are ours are accepted:
//!   TCP, UDP or ICMP of the family, no IPv6 Routing header with segments left, at most four
//!   extension headers, no zero UDP checksum over IPv6, no IPv6 payload length of 0;
//! - an ICMP error's quote is read from where etherparse finds the quoted headers, and any
//!   quote of a TCP or UDP packet without options or extension headers is read.
//!
//! The first input byte says how much of the packet is linear; the rest is the frame.

#![no_main]

use etherparse::{
    Ipv4HeaderSlice, Ipv6ExtensionSlice, Ipv6HeaderSlice, NetSlice, SlicedPacket, TransportSlice,
};
use libfuzzer_sys::fuzz_target;
use svclb_common::{FAMILY_V4, FAMILY_V6, IPPROTO_TCP, IPPROTO_UDP, addr::v4};
use svclb_ebpf::{
    parse::{FRAG_LATER, FRAG_NONE, Load, Packet, parse_linear},
    quote::{Quote, parse_quote},
};

fuzz_target!(|data: &[u8]| check(data));

/// A whole packet, read as `bpf_skb_load_bytes` reads an skb.
struct Skb<'a>(&'a [u8]);

impl Load for Skb<'_> {
    fn load_bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        self.0.get(offset..offset.checked_add(N)?)?.try_into().ok()
    }
}

fn check(data: &[u8]) {
    let Some((&split, frame)) = data.split_first() else {
        return;
    };
    let whole = parse(frame, frame.len());
    // The high bit: a linear area of the first `split & 0x7f` bytes (an skb not yet pulled).
    if split & 0x80 != 0 {
        let linear = usize::from(split & 0x7f).min(frame.len());
        if let Some(partial) = parse(frame, linear) {
            assert_eq!(
                Some(&partial),
                whole.as_ref(),
                "linear area of {linear} bytes"
            );
        }
    }
    match whole {
        Some(pkt) => accepted(frame, &pkt),
        None => refused(frame),
    }
}

/// Parses `frame` whose first `linear` bytes are in the linear area, copied into a buffer of
/// their own so that AddressSanitizer catches a read past them.
fn parse(frame: &[u8], linear: usize) -> Option<Packet> {
    let area = frame[..linear].to_vec().into_boxed_slice();
    let start = area.as_ptr() as usize;
    let mut pkt = Packet::default();
    parse_linear(start, start + area.len(), frame.len(), &mut pkt).then_some(pkt)
}

fn accepted(frame: &[u8], pkt: &Packet) {
    assert_eq!(pkt.l3_off, 14);
    let l4_min = match pkt.proto {
        IPPROTO_TCP => 20,
        _ => 8,
    };
    if pkt.frag != FRAG_LATER {
        assert!(pkt.l4_off + l4_min <= frame.len(), "{pkt:?}");
        if pkt.proto == IPPROTO_TCP || pkt.proto == IPPROTO_UDP {
            let ports = &frame[pkt.l4_off..pkt.l4_off + 4];
            assert_eq!(pkt.sport_be.to_ne_bytes(), ports[..2]);
            assert_eq!(pkt.dport_be.to_ne_bytes(), ports[2..]);
        }
    }
    if let Ok(reference) = SlicedPacket::from_ethernet(frame) {
        agrees(frame, pkt, &reference);
        if pkt.frag == FRAG_NONE {
            assert!(
                ours(&reference),
                "accepted a packet that is not ours: {reference:?}"
            );
        }
    }
    if pkt.is_icmp() && pkt.frag == FRAG_NONE {
        quoted(frame, pkt);
    }
}

/// `pkt` says what etherparse says of the same frame.
fn agrees(frame: &[u8], pkt: &Packet, reference: &SlicedPacket) {
    match &reference.net {
        Some(NetSlice::Ipv4(ip)) => {
            assert_eq!(pkt.family, FAMILY_V4);
            assert_eq!(pkt.saddr, v4(ip.header().source()));
            assert_eq!(pkt.daddr, v4(ip.header().destination()));
            assert_eq!(pkt.frag != FRAG_NONE, ip.is_payload_fragmented());
        }
        Some(NetSlice::Ipv6(ip)) => {
            assert_eq!(pkt.family, FAMILY_V6);
            assert_eq!(pkt.saddr, ip.header().source());
            assert_eq!(pkt.daddr, ip.header().destination());
            assert_eq!(pkt.frag != FRAG_NONE, ip.is_payload_fragmented());
        }
        _ => panic!("accepted a frame that is not IP: {pkt:?}"),
    }
    let l4 = match &reference.transport {
        Some(TransportSlice::Tcp(tcp)) => tcp.slice(),
        Some(TransportSlice::Udp(udp)) => udp.slice(),
        _ => return,
    };
    assert_eq!(pkt.l4_off, l4.as_ptr() as usize - frame.as_ptr() as usize);
    assert_eq!(
        u16::from_be(pkt.sport_be),
        u16::from_be_bytes([l4[0], l4[1]])
    );
    assert_eq!(
        u16::from_be(pkt.dport_be),
        u16::from_be_bytes([l4[2], l4[3]])
    );
}

/// A refused frame is not ours by etherparse's reading either.
fn refused(frame: &[u8]) {
    let Ok(reference) = SlicedPacket::from_ethernet(frame) else {
        return;
    };
    if !reference.link_exts.is_empty() || !ours(&reference) {
        return;
    }
    panic!("refused a packet that is ours: {reference:?}");
}

/// Whether the datapath translates such a packet (see the module docs).
fn ours(reference: &SlicedPacket) -> bool {
    let (v6, fragmented) = match &reference.net {
        Some(NetSlice::Ipv4(ip)) => (false, ip.is_payload_fragmented()),
        Some(NetSlice::Ipv6(ip)) => {
            // A payload length of 0 is a jumbogram's (RFC 2675), BIG TCP's over 64 KiB: a
            // frame this short with it is malformed, and the stack drops it.
            if ip.header().payload_length() == 0
                || !plain_extensions(ip.extensions().clone().into_iter())
            {
                return false;
            }
            (true, ip.is_payload_fragmented())
        }
        _ => return false,
    };
    !fragmented
        && match &reference.transport {
            Some(TransportSlice::Tcp(_)) => true,
            Some(TransportSlice::Udp(udp)) => !v6 || udp.checksum() != 0,
            Some(TransportSlice::Icmpv4(_)) => !v6,
            Some(TransportSlice::Icmpv6(_)) => v6,
            _ => false,
        }
}

/// At most four extension headers, none of them authentication or a Routing header with
/// segments left.
fn plain_extensions<'a>(mut extensions: impl Iterator<Item = Ipv6ExtensionSlice<'a>>) -> bool {
    let mut count = 0;
    extensions.all(|ext| {
        count += 1;
        count <= 4
            && match ext {
                Ipv6ExtensionSlice::Authentication(_) => false,
                Ipv6ExtensionSlice::Routing(routing) => routing.slice()[3] == 0,
                _ => true,
            }
    })
}

/// The quote of an ICMP error: read where the quoted headers are, and read whenever it is a
/// quote the datapath translates.
fn quoted(frame: &[u8], pkt: &Packet) {
    let mut quote = Quote::default();
    let read = parse_quote(&Skb(frame), pkt, &mut quote);
    let expected = reference_quote(frame, pkt);
    assert_eq!(read.then_some(quote), expected, "{pkt:?}");
}

/// The quote etherparse finds after the ICMP header, if the datapath translates it.
fn reference_quote(frame: &[u8], pkt: &Packet) -> Option<Quote> {
    let error_types: &[u8] = if pkt.is_v6() {
        &[1, 2, 3, 4]
    } else {
        &[3, 11, 12]
    };
    if !error_types.contains(frame.get(pkt.l4_off)?) {
        return None;
    }
    let l3_off = pkt.l4_off + 8;
    let (family, proto, saddr, daddr, l4_off) = if pkt.is_v6() {
        let ip = Ipv6HeaderSlice::from_slice(frame.get(l3_off..)?).ok()?;
        let (saddr, daddr) = (ip.source(), ip.destination());
        (FAMILY_V6, ip.next_header().0, saddr, daddr, l3_off + 40)
    } else {
        let ip = Ipv4HeaderSlice::from_slice(frame.get(l3_off..)?).ok()?;
        if ip.ihl() != 5 || u16::from(ip.fragments_offset()) != 0 {
            return None;
        }
        let (saddr, daddr) = (v4(ip.source()), v4(ip.destination()));
        (FAMILY_V4, ip.protocol().0, saddr, daddr, l3_off + 20)
    };
    let ports = frame.get(l4_off..l4_off + 4)?;
    (proto == IPPROTO_TCP || proto == IPPROTO_UDP).then(|| Quote {
        family,
        icmp_off: pkt.l4_off,
        l3_off,
        l4_off,
        proto,
        saddr,
        daddr,
        sport_be: u16::from_ne_bytes([ports[0], ports[1]]),
        dport_be: u16::from_ne_bytes([ports[2], ports[3]]),
    })
}
