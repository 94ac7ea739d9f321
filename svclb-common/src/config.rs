//! The datapath's settings: the one value of the `SVCLB_CONFIG` array, written by the agent at
//! every start.

use crate::{
    addr::L3Addr,
    limits::{SNAT_PORT_MAX, SNAT_PORT_MIN},
};

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
    /// The source ports this node SNATs flows to (`--snat-ports`), inclusive; both zero: an
    /// agent that set none (see [`Config::snat_ports`]).
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    pub _pad2: u32,
}
const _: () = assert!(size_of::<Config>() == 56);

impl Config {
    /// The SNAT source ports (first, count) of an agent that set none.
    pub const DEFAULT_SNAT_PORTS: (u16, u32) =
        (SNAT_PORT_MIN, (SNAT_PORT_MAX - SNAT_PORT_MIN) as u32 + 1);

    /// The SNAT source ports (first, count): as set, or [`Self::DEFAULT_SNAT_PORTS`] when
    /// unset or not a range.
    #[inline(always)]
    pub fn snat_ports(&self) -> (u16, u32) {
        if self.snat_port_min == 0 || self.snat_port_max < self.snat_port_min {
            Self::DEFAULT_SNAT_PORTS
        } else {
            (
                self.snat_port_min,
                (self.snat_port_max - self.snat_port_min) as u32 + 1,
            )
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), integers only, no implicit padding (size asserted above).
    unsafe impl aya::Pod for super::Config {}
}
