//! The services map: frontend (address, port, protocol, scope) -> service entry.

use crate::addr::L3Addr;

/// Traffic that reaches the frontend from inside the cluster (pods, ClusterIP).
pub const SCOPE_INTERNAL: u8 = 0;
/// Traffic that reaches the frontend from outside (NodePort, LoadBalancer, externalIPs).
pub const SCOPE_EXTERNAL: u8 = 1;

/// The frontend has no usable endpoint anywhere: new connections are to be refused (TCP RST,
/// ICMP unreachable) rather than left to time out. Until the datapath sends those, they are
/// dropped, like every new connection to a frontend without backends.
pub const SVC_F_REJECT: u32 = 1 << 0;

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
