//! The fragments map: how the first fragment of a fragmented datagram was translated, for
//! the later fragments, which carry no L4 header to find the flow by.

use crate::addr::L3Addr;

/// A fragmented datagram's identity as it arrived: addresses, IP id (IPv4's 16 bits or
/// IPv6's 32, as on the wire) and, for IPv4, the protocol (IPv6 identifies a datagram by
/// addresses and id alone).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub saddr: L3Addr,
    pub daddr: L3Addr,
    pub id: u32,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<FragKey>() == 40);

/// The addresses the first fragment left with, whether it left by redirect
/// (`CT_F_REDIRECT`), and when it passed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragValue {
    pub saddr: L3Addr,
    pub daddr: L3Addr,
    pub flags: u16,
    pub _pad: [u8; 6],
    pub created_ns: u64,
}
const _: () = assert!(size_of::<FragValue>() == 48);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, `#[repr(C)]`, explicit padding, every bit pattern valid.
    unsafe impl aya::Pod for super::FragKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FragValue {}
}
