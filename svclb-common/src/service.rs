//! The services map: frontend (address, port, protocol, scope) -> service entry.

use crate::addr::L3Addr;

/// The frontend's entry: for all its traffic, or for traffic from outside the cluster when the
/// frontend also has an internal view.
pub const SCOPE_ALL: u8 = 0;
/// The internal view of an external frontend with `externalTrafficPolicy: Local`: what
/// traffic from pods gets (kube-proxy short-circuits it to the internal endpoints).
pub const SCOPE_INTERNAL_VIEW: u8 = 1;

/// The frontend has no usable endpoint anywhere: new connections are refused (TCP RST, ICMP
/// port unreachable) rather than left to time out. Without this flag, a new connection to a
/// frontend without backends is dropped (a Local traffic policy on a node without endpoints).
pub const SVC_F_REJECT: u32 = 1 << 0;
/// Traffic from pods must be looked up again with [`SCOPE_INTERNAL_VIEW`].
pub const SVC_F_INTERNAL_VIEW: u32 = 1 << 1;
/// A NodePort, LoadBalancer or external IP frontend: remote backends are reached through SNAT
/// to this node, and translated packets leave by FIB lookup and redirect.
pub const SVC_F_EXTERNAL: u32 = 1 << 2;
/// Backends are chosen by Maglev over a hash of the flow: `SVCLB_MAGLEV` holds the frontend's
/// table of `maglev_size` backend ids under its id.
pub const SVC_F_MAGLEV: u32 = 1 << 3;
/// Only sources in `SVCLB_SOURCE_RANGES` under the frontend's id may connect
/// (`loadBalancerSourceRanges`).
pub const SVC_F_SOURCE_RANGES: u32 = 1 << 4;

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
    /// Size M of the Maglev table (with [`SVC_F_MAGLEV`]), else 0.
    pub maglev_size: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<ServiceValue>() == 24);

/// Key of the `SVCLB_SOURCE_RANGES` LPM trie (the trie's prefix length counts the 32 bits of
/// `svc_id` first, then the address prefix).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRangeKey {
    pub svc_id_be: u32,
    pub addr: L3Addr,
}
const _: () = assert!(size_of::<SourceRangeKey>() == 20);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: both types are repr(C), made only of integers, and have no implicit padding
    // (the size assertions above pin the layout).
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceValue {}
    unsafe impl aya::Pod for super::SourceRangeKey {}
}
