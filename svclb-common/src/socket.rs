//! Socket-level load balancing: the cgroup hooks' maps. `connect`/`sendmsg` rewrite a socket's
//! destination from a frontend to a backend and record the pair in `SVCLB_SOCK_REVERSE`, under
//! the socket's cookie; `recvmsg`/`getpeername` read it back to show the frontend's address,
//! and `sock_release` deletes it. Their settings are in [`crate::config`].

use crate::addr::L3Addr;

/// Key of `SVCLB_SOCK_REVERSE`: a socket and the backend it was sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevKey {
    pub cookie: u64,
    pub addr: L3Addr,
    pub port_be: u16,
    pub family: u8,
    pub _pad: [u8; 5],
}
const _: () = assert!(size_of::<SockRevKey>() == 32);

/// `SockRevValue::kind`: the socket was connected to the backend (`connect`).
pub const REV_CONNECTED: u8 = 1;
/// `SockRevValue::kind`: a datagram of an unconnected socket was sent to it (`sendmsg`).
pub const REV_DATAGRAM: u8 = 2;

/// Value of `SVCLB_SOCK_REVERSE`: the frontend the socket asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevValue {
    pub addr: L3Addr,
    pub port_be: u16,
    pub family: u8,
    /// [`REV_CONNECTED`] or [`REV_DATAGRAM`]: how the socket was sent to the backend.
    pub kind: u8,
    /// The frontend's id, and the backend's: what the agent needs to find the sockets of a
    /// departed backend.
    pub svc_id: u32,
    pub backend_id: u32,
    pub _pad2: u32,
    /// The socket's network namespace (its cookie): where the agent finds the socket.
    pub netns: u64,
}
const _: () = assert!(size_of::<SockRevValue>() == 40);

/// Value of `SVCLB_SOCK_STATS`, per CPU, indexed by frontend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockStats {
    /// TCP and connected-UDP sockets given a backend at `connect`.
    pub connects: u64,
    /// Datagrams of unconnected UDP sockets given a backend at `sendmsg`.
    pub datagrams: u64,
    /// Connects and datagrams refused (`ECONNREFUSED`): the frontend has no endpoint.
    pub refused: u64,
}
const _: () = assert!(size_of::<SockStats>() == 24);

impl SockStats {
    /// The sum of two CPUs' counters.
    #[must_use]
    pub const fn plus(self, other: Self) -> Self {
        Self {
            connects: self.connects.wrapping_add(other.connects),
            datagrams: self.datagrams.wrapping_add(other.datagrams),
            refused: self.refused.wrapping_add(other.refused),
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), integers only, no implicit padding (sizes asserted above).
    unsafe impl aya::Pod for super::SockRevKey {}
    unsafe impl aya::Pod for super::SockRevValue {}
    unsafe impl aya::Pod for super::SockStats {}
}
