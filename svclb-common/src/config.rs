//! The datapath's settings: the one value of the `SVCLB_CONFIG` array, written by the agent at
//! every start.

use crate::addr::L3Addr;

/// The socket hooks translate (the agent clears it to stand hooks still pinned down, as with
/// `--socket-lb=false`).
pub const CFG_F_SOCKET_LB: u32 = 1 << 0;
/// The socket hooks translate only sockets of the host's network namespace
/// (`--socket-lb-hostns-only`); pods' sockets are left to the TC path.
pub const CFG_F_HOSTNS_ONLY: u32 = 1 << 1;

/// Value of `SVCLB_CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// `CFG_F_*` bits.
    pub flags: u32,
    pub _pad: u32,
    /// The network namespace cookie of the host (the agent's own namespace).
    pub host_netns: u64,
    /// The source a hairpin flow gets on the TC path (a pod sent to itself through a
    /// service), IPv4 in the first four bytes: `--service-loopback-address`; zero: none.
    pub loopback4: L3Addr,
    /// The same for IPv6.
    pub loopback6: L3Addr,
}
const _: () = assert!(size_of::<Config>() == 48);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), integers only, no implicit padding (size asserted above).
    unsafe impl aya::Pod for super::Config {}
}
