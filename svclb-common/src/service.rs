//! The services map: frontend (address, port, protocol, scope) -> service entry.

use crate::addr::L3Addr;

/// The frontend's entry: for all its traffic, or for traffic from outside the cluster when the
/// frontend also has an internal view.
pub const SCOPE_ALL: u8 = 0;
/// The internal view of an external frontend with `externalTrafficPolicy: Local`: what
/// traffic from pods gets (kube-proxy short-circuits it to the internal endpoints).
pub const SCOPE_INTERNAL_VIEW: u8 = 1;

/// The frontend has no usable endpoint anywhere: new connections are to be refused (TCP RST,
/// ICMP unreachable) rather than left to time out. Until the datapath sends those, they are
/// dropped, like every new connection to a frontend without backends.
pub const SVC_F_REJECT: u32 = 1 << 0;
/// Traffic from pods must be looked up again with [`SCOPE_INTERNAL_VIEW`].
pub const SVC_F_INTERNAL_VIEW: u32 = 1 << 1;

/// Key of the `SVCLB_SERVICES` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub addr: L3Addr,
    pub port_be: u16,
    pub proto: u8,
    pub family: u8,
    pub scope: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<ServiceKey>() == 24);

/// Value of the `SVCLB_SERVICES` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    /// Frontend id: the key of this frontend's slots in `SVCLB_SLOTS`.
    pub id: u32,
    /// Number of backend slots `0..count` in `SVCLB_SLOTS`.
    pub count: u32,
    /// `SVC_F_*` bits.
    pub flags: u32,
    /// ClientIP affinity timeout in seconds, 0 when the service has none.
    pub affinity_timeout_s: u32,
}
const _: () = assert!(size_of::<ServiceValue>() == 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: both types are repr(C), made only of integers, and have no implicit padding
    // (the size assertions above pin the layout).
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceValue {}
}
