//! Address families, protocols and the 16-byte address used in every map.

/// `family` value of an IPv4 entry.
pub const FAMILY_V4: u8 = 4;
/// `family` value of an IPv6 entry.
pub const FAMILY_V6: u8 = 6;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_SCTP: u8 = 132;
pub const IPPROTO_ICMPV6: u8 = 58;

/// An IP address in network byte order. IPv4 uses the first four bytes; the rest stay zero.
pub type L3Addr = [u8; 16];

/// Builds an [`L3Addr`] from the four network-order bytes of an IPv4 address.
#[inline(always)]
pub const fn v4(octets: [u8; 4]) -> L3Addr {
    [
        octets[0], octets[1], octets[2], octets[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]
}

/// The IPv4 part of an [`L3Addr`].
#[inline(always)]
pub const fn v4_octets(addr: &L3Addr) -> [u8; 4] {
    [addr[0], addr[1], addr[2], addr[3]]
}
