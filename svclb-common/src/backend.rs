//! The backends map (id -> address) and the slots map ((frontend id, slot) -> backend id).

use crate::addr::L3Addr;

/// The backend runs on this node.
pub const BE_F_LOCAL: u32 = 1 << 0;
/// The backend is terminating (serving only as a fallback).
pub const BE_F_TERMINATING: u32 = 1 << 1;

/// Value of the `SVCLB_BACKENDS` map (key: backend id, `u32`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    pub addr: L3Addr,
    pub port_be: u16,
    pub proto: u8,
    pub family: u8,
    /// `BE_F_*` bits.
    pub flags: u32,
}
const _: () = assert!(size_of::<Backend>() == 24);

/// Key of the `SVCLB_SLOTS` map; the value is a backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey {
    pub svc_id: u32,
    pub slot: u32,
}
const _: () = assert!(size_of::<SlotKey>() == 8);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), integers only, no implicit padding (sizes asserted above).
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::SlotKey {}
}
