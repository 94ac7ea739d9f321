//! One interface over the IPv4 ([`PacketSpec`]) and IPv6 ([`Packet6`]) test packets, so a
//! fixture that has the same shape in both families is written once and run for each.
//! Everything a family does differently (header sizes, checksums, ICMP types, the TTL or hop
//! limit a forwarded frame loses) is said here; the expected frames are still built from
//! scratch by each family's own builder.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{
    packet::{self, L4, PacketSpec},
    packet6::{self, Packet6},
};

/// How a fixture namespace's uplink is addressed in one family (see the datapath fixtures'
/// uplink namespace): the node's address with its prefix, the two neighbours, the route to the
/// other node's pods.
pub struct UplinkAddressing {
    /// `ip` arguments before the object (`-6` for IPv6).
    pub ip_family: &'static [&'static str],
    pub forwarding_sysctl: &'static str,
    /// The node's address on `up0`, with its prefix length, and any `ip addr` flags.
    pub node_cidr: &'static [&'static str],
    /// The other node (the next hop) and the external client, each with its MAC address.
    pub neighbours: [(&'static str, &'static str); 2],
    /// The other node's pod prefix, routed through it.
    pub remote_pods: &'static str,
    pub next_hop: &'static str,
}

/// A test packet of one family.
pub trait TestPacket: Clone + std::fmt::Debug {
    type Addr: Copy + Into<IpAddr> + std::fmt::Debug;
    /// `IPv4` or `IPv6`, for case descriptions.
    const FAMILY: &'static str;
    /// Ethernet and IP header bytes before the L4 header, without options or extensions.
    const L4_AT: usize;
    /// Where the TTL (IPv4) or hop limit (IPv6) is in a frame.
    const TTL_AT: usize;
    /// ICMP header of a port unreachable (checksum left to [`TestPacket::icmp_error`]).
    const PORT_UNREACHABLE: [u8; 8];
    /// ICMP header saying the packet is too big for the next hop (fragmentation needed, with
    /// MTU 1280; packet too big over IPv6).
    const TOO_BIG: [u8; 8];
    const UPLINK: UplinkAddressing;

    fn tcp(src: (Self::Addr, u16), dst: (Self::Addr, u16), flags: u8) -> Self;
    fn udp(src: (Self::Addr, u16), dst: (Self::Addr, u16)) -> Self;
    #[must_use]
    fn with_src(self, addr: Self::Addr, port: u16) -> Self;
    #[must_use]
    fn with_dst(self, addr: Self::Addr, port: u16) -> Self;
    #[must_use]
    fn with_payload(self, payload: Vec<u8>) -> Self;
    fn build(&self) -> Vec<u8>;
    /// Checks a translated frame's checksums from scratch; what is wrong, if anything.
    fn verify(&self, frame: &[u8]) -> Result<(), String>;
    /// Checks the checksums of a frame the datapath made up (an answer, a translated ICMP
    /// error) where the family has one to check beside the byte comparison.
    fn verify_made(frame: &[u8]) -> Result<(), String>;
    /// The RST|ACK a frontend without endpoints answers this SYN with.
    fn expected_reset(&self) -> Vec<u8>;
    /// The ICMP port unreachable a frontend without endpoints answers this datagram with.
    fn expected_port_unreachable(&self) -> Vec<u8>;
    fn icmp_error(src: Self::Addr, dst: Self::Addr, header: [u8; 8], quote: &[u8]) -> Vec<u8>;
    /// The IP header and first `l4_bytes` bytes after it, as an ICMP error quotes them.
    fn quote_of(&self, l4_bytes: usize) -> Vec<u8>;
    /// `quote` with the TCP or UDP checksum of `original` (a quote of the same packet before
    /// translation): what a translated quote keeps.
    fn with_l4_checksum_of(quote: Vec<u8>, original: &[u8]) -> Vec<u8>;
    /// `frame` as the datapath forwards it: new MAC addresses, one hop less (and the IPv4
    /// header checksum anew).
    fn forwarded(frame: Vec<u8>, dmac: [u8; 6], smac: [u8; 6]) -> Vec<u8>;
    /// The L4 source port of a frame without options or extension headers.
    fn source_port(frame: &[u8]) -> u16 {
        u16::from_be_bytes([frame[Self::L4_AT], frame[Self::L4_AT + 1]])
    }
}

/// Copies the L4 checksum of `original` into `quote`, both quotes of an IP header of
/// `ip_len` bytes whose protocol is at `protocol_at`.
fn keep_l4_checksum(
    mut quote: Vec<u8>,
    original: &[u8],
    ip_len: usize,
    protocol_at: usize,
) -> Vec<u8> {
    let at = ip_len + if quote[protocol_at] == 6 { 16 } else { 6 };
    quote[at..at + 2].copy_from_slice(&original[at..at + 2]);
    quote
}

fn new_macs(frame: &mut [u8], dmac: [u8; 6], smac: [u8; 6]) {
    frame[0..6].copy_from_slice(&dmac);
    frame[6..12].copy_from_slice(&smac);
}

/// Sets the IPv4 header checksum of an Ethernet frame anew, from scratch.
pub fn fix_ip_checksum(frame: &mut [u8]) {
    frame[24..26].copy_from_slice(&[0, 0]);
    let ihl = (usize::from(frame[14] & 0x0f) * 4).clamp(20, frame.len() - 14);
    let sum = packet::checksum(&[&frame[14..14 + ihl]]);
    frame[24..26].copy_from_slice(&sum.to_be_bytes());
}

impl TestPacket for PacketSpec {
    type Addr = Ipv4Addr;
    const FAMILY: &'static str = "IPv4";
    const L4_AT: usize = 14 + 20;
    const TTL_AT: usize = 14 + 8;
    const PORT_UNREACHABLE: [u8; 8] = [3, 3, 0, 0, 0, 0, 0, 0];
    const TOO_BIG: [u8; 8] = [3, 4, 0, 0, 0, 0, 0x05, 0x00];
    const UPLINK: UplinkAddressing = UplinkAddressing {
        ip_family: &[],
        forwarding_sysctl: "net.ipv4.ip_forward",
        node_cidr: &["172.31.0.11/24"],
        neighbours: [
            ("172.31.0.12", "02:00:00:00:00:0c"),
            ("172.31.0.100", "02:00:00:00:00:64"),
        ],
        remote_pods: "10.244.2.0/24",
        next_hop: "172.31.0.12",
    };

    fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Self {
        PacketSpec::tcp(src, dst, flags)
    }

    fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Self {
        PacketSpec::udp(src, dst)
    }

    fn with_src(self, addr: Ipv4Addr, port: u16) -> Self {
        PacketSpec::with_src(self, addr, port)
    }

    fn with_dst(self, addr: Ipv4Addr, port: u16) -> Self {
        PacketSpec::with_dst(self, addr, port)
    }

    fn with_payload(self, payload: Vec<u8>) -> Self {
        Self { payload, ..self }
    }

    fn build(&self) -> Vec<u8> {
        PacketSpec::build(self)
    }

    fn verify(&self, frame: &[u8]) -> Result<(), String> {
        let sums = packet::verify_checksums(frame);
        let zero = self.l4
            == (L4::Udp {
                zero_checksum: true,
            });
        if !sums.ip_ok {
            return Err("IP checksum".into());
        }
        if sums.udp_zero != zero {
            return Err(format!(
                "UDP zero checksum: sent {zero}, left {}",
                sums.udp_zero
            ));
        }
        if !zero && !sums.l4_ok {
            return Err("L4 checksum".into());
        }
        Ok(())
    }

    fn verify_made(_frame: &[u8]) -> Result<(), String> {
        // The expected IPv4 answers carry checksums from scratch: the byte comparison is
        // the check.
        Ok(())
    }

    fn expected_reset(&self) -> Vec<u8> {
        packet::expected_reset(self)
    }

    fn expected_port_unreachable(&self) -> Vec<u8> {
        packet::expected_port_unreachable(self)
    }

    fn icmp_error(src: Ipv4Addr, dst: Ipv4Addr, header: [u8; 8], quote: &[u8]) -> Vec<u8> {
        packet::icmp_error(src, dst, header, quote)
    }

    fn quote_of(&self, l4_bytes: usize) -> Vec<u8> {
        packet::quote_of(self, l4_bytes)
    }

    fn with_l4_checksum_of(quote: Vec<u8>, original: &[u8]) -> Vec<u8> {
        keep_l4_checksum(quote, original, 20, 9)
    }

    fn forwarded(mut frame: Vec<u8>, dmac: [u8; 6], smac: [u8; 6]) -> Vec<u8> {
        new_macs(&mut frame, dmac, smac);
        frame[14 + 8] -= 1;
        fix_ip_checksum(&mut frame);
        frame
    }
}

impl TestPacket for Packet6 {
    type Addr = Ipv6Addr;
    const FAMILY: &'static str = "IPv6";
    const L4_AT: usize = 14 + 40;
    const TTL_AT: usize = 14 + 7;
    const PORT_UNREACHABLE: [u8; 8] = [1, 4, 0, 0, 0, 0, 0, 0];
    const TOO_BIG: [u8; 8] = [2, 0, 0, 0, 0, 0, 0x05, 0x00];
    const UPLINK: UplinkAddressing = UplinkAddressing {
        ip_family: &["-6"],
        forwarding_sysctl: "net.ipv6.conf.all.forwarding",
        node_cidr: &["fd00:31::11/64", "nodad"],
        neighbours: [
            ("fd00:31::12", "02:00:00:00:00:0c"),
            ("fd00:31::100", "02:00:00:00:00:64"),
        ],
        remote_pods: "fd00:244:2::/64",
        next_hop: "fd00:31::12",
    };

    fn tcp(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), flags: u8) -> Self {
        Packet6::tcp(src, dst, flags)
    }

    fn udp(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16)) -> Self {
        Packet6::udp(src, dst)
    }

    fn with_src(self, addr: Ipv6Addr, port: u16) -> Self {
        Packet6::with_src(self, addr, port)
    }

    fn with_dst(self, addr: Ipv6Addr, port: u16) -> Self {
        Packet6::with_dst(self, addr, port)
    }

    fn with_payload(self, payload: Vec<u8>) -> Self {
        Self { payload, ..self }
    }

    fn build(&self) -> Vec<u8> {
        Packet6::build(self)
    }

    fn verify(&self, frame: &[u8]) -> Result<(), String> {
        Self::verify_made(frame)
    }

    fn verify_made(frame: &[u8]) -> Result<(), String> {
        if packet6::l4_checksum_ok(frame) {
            Ok(())
        } else {
            Err("L4 checksum".into())
        }
    }

    fn expected_reset(&self) -> Vec<u8> {
        packet6::expected_reset6(self)
    }

    fn expected_port_unreachable(&self) -> Vec<u8> {
        packet6::expected_port_unreachable6(self)
    }

    fn icmp_error(src: Ipv6Addr, dst: Ipv6Addr, header: [u8; 8], quote: &[u8]) -> Vec<u8> {
        packet6::icmp6_error(src, dst, header, quote)
    }

    fn quote_of(&self, l4_bytes: usize) -> Vec<u8> {
        packet6::quote_of6(self, l4_bytes)
    }

    fn with_l4_checksum_of(quote: Vec<u8>, original: &[u8]) -> Vec<u8> {
        keep_l4_checksum(quote, original, 40, 6)
    }

    fn forwarded(mut frame: Vec<u8>, dmac: [u8; 6], smac: [u8; 6]) -> Vec<u8> {
        // IPv6 has no header checksum to follow the hop limit.
        new_macs(&mut frame, dmac, smac);
        frame[14 + 7] -= 1;
        frame
    }
}
