//! Socket-level load balancing: the cgroup hooks' maps. `connect`/`sendmsg` rewrite a socket's
//! destination from a frontend to a backend and record the pair; `recvmsg`/`getpeername` read
//! it back to show the frontend's address. The pairs are in the socket's own storage, which
//! goes with the socket: a connected socket's in `SVCLB_SOCK_FRONT` (one [`SockPeer`]), an
//! unconnected socket's (one per backend its datagrams went to) in `SVCLB_SOCK_PEERS`. They
//! take no room in a shared map, so no pod can crowd out another pod's, and cost no shared
//! hash insert or delete. A connected UDP socket is also listed in `SVCLB_SOCK_REVERSE`, under
//! its cookie, where the agent finds the sockets of a departed backend to destroy, and
//! `sock_release` deletes it. Their settings are in [`crate::config`].

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

/// Value of `SVCLB_SOCK_REVERSE`: the frontend the socket asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevValue {
    pub addr: L3Addr,
    pub port_be: u16,
    pub family: u8,
    /// [`REV_CONNECTED`]: how the socket was sent to the backend (the only way there is now;
    /// an unconnected socket's pairs are in [`SockPeers`]).
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

/// Backends one unconnected socket's datagrams were sent to that [`SockPeers`] keeps: the
/// most recently new ones (a reply from one it no longer holds shows the backend's address).
pub const SOCK_PEERS: usize = 16;
const _: () = assert!(SOCK_PEERS.is_power_of_two());

/// A backend a socket was sent to, and the frontend it asked for: the value of
/// `SVCLB_SOCK_FRONT` (a connected socket's), and one slot of [`SockPeers`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockPeer {
    pub backend: L3Addr,
    pub front: L3Addr,
    pub backend_port_be: u16,
    pub front_port_be: u16,
    /// 0 in a slot not used yet.
    pub backend_family: u8,
    pub front_family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<SockPeer>() == 40);

/// Value of `SVCLB_SOCK_PEERS` (socket storage): an unconnected socket's peers, a ring whose
/// next slot is `next % SOCK_PEERS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockPeers {
    pub next: u32,
    pub _pad: u32,
    pub peers: [SockPeer; SOCK_PEERS],
}
const _: () = assert!(size_of::<SockPeers>() == 8 + 40 * SOCK_PEERS);

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
