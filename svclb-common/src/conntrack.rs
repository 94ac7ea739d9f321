//! The conntrack map: one entry per direction of every translated flow.
//!
//! The forward entry is keyed by what the client sends (client -> frontend) and holds the
//! backend to DNAT to. The reply entry is keyed by what the backend sends back (backend ->
//! client, or backend -> this node's SNAT port) and holds the frontend to restore as the
//! source. One lookup per packet in either direction. The session-affinity map lives here
//! too: it is per-client flow state.

use crate::addr::L3Addr;

pub const CT_DIR_FORWARD: u8 = 0;
pub const CT_DIR_REPLY: u8 = 1;

/// The flow's source was rewritten too (SNAT to a node address for a remote backend of an
/// external frontend): `snat_addr`/`snat_port_be` hold the other end's replacement.
pub const CT_F_SNAT: u16 = 1 << 0;
/// Packets of the flow leave through a FIB lookup and a redirect instead of the stack: their
/// rewritten source can be an address of this node, which the stack drops as martian.
pub const CT_F_REDIRECT: u16 = 1 << 1;

/// A flow as seen in one direction. Network-order fields end in `_be`; IPv4 addresses fill
/// the first 4 bytes of an [`L3Addr`], the rest zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: L3Addr,
    pub daddr: L3Addr,
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub family: u8,
    pub dir: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<CtKey>() == 40);

/// What to do with a packet of a tracked flow.
///
/// Forward entries: the destination becomes `nat_addr:nat_port_be` (the backend); with
/// [`CT_F_SNAT`] the source becomes `snat_addr:snat_port_be` (this node, a port the NAT
/// allocated). Reply entries: the source becomes `nat_addr:nat_port_be` (the frontend); with
/// [`CT_F_SNAT`] the destination becomes `snat_addr:snat_port_be` (the original client).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtEntry {
    pub nat_addr: L3Addr,
    pub nat_port_be: u16,
    pub flags: u16,
    pub backend_id: u32,
    pub svc_id: u32,
    pub snat_port_be: u16,
    pub _pad: u16,
    pub snat_addr: L3Addr,
    pub created_ns: u64,
    pub last_seen_ns: u64,
}
const _: () = assert!(size_of::<CtEntry>() == 64);

/// Key of the session-affinity map: a client of a frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub svc_id: u32,
    pub family: u8,
    pub _pad: [u8; 3],
    pub client: L3Addr,
}
const _: () = assert!(size_of::<AffinityKey>() == 24);

/// The backend a client's last new connection went to, and when.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityValue {
    pub backend_id: u32,
    pub _pad: u32,
    pub last_ns: u64,
}
const _: () = assert!(size_of::<AffinityValue>() == 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, `#[repr(C)]`, explicit padding, every bit pattern valid.
    unsafe impl aya::Pod for super::CtKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CtEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AffinityKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AffinityValue {}
}
