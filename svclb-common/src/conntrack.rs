//! The conntrack map: one entry per direction of every translated flow.
//!
//! The forward entry is keyed by what the client sends (client -> frontend) and holds the
//! backend to DNAT to. The reply entry is keyed by what the backend sends back
//! (backend -> client) and holds the frontend to restore as the source. One lookup per
//! packet in either direction.

use crate::addr::L3Addr;

pub const CT_DIR_FORWARD: u8 = 0;
pub const CT_DIR_REPLY: u8 = 1;

/// Key of the `SVCLB_CT` LRU map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: L3Addr,
    pub daddr: L3Addr,
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub family: u8,
    /// `CT_DIR_FORWARD` or `CT_DIR_REPLY`.
    pub dir: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<CtKey>() == 40);

/// Value of the `SVCLB_CT` LRU map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtEntry {
    /// Forward: the backend address to DNAT to. Reply: the frontend address to restore.
    pub nat_addr: L3Addr,
    pub nat_port_be: u16,
    pub _pad0: u16,
    pub backend_id: u32,
    pub svc_id: u32,
    pub _pad1: u32,
    /// `bpf_ktime_get_ns` when the flow was created.
    pub created_ns: u64,
    /// `bpf_ktime_get_ns` of the last packet, refreshed at most once a second.
    pub last_seen_ns: u64,
}
const _: () = assert!(size_of::<CtEntry>() == 48);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), integers only, no implicit padding (sizes asserted above).
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::CtEntry {}
}
