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
/// This direction carried a TCP FIN or RST: the flow is ending, and its entries (and its SNAT
/// port) may be reused once it has been idle [`CT_CLOSE_TIMEOUT_NS`].
pub const CT_F_CLOSING: u16 = 1 << 2;

/// How long an entry may be idle before it is let go (and its SNAT port reused): a TCP flow
/// after a FIN or RST; one without (a peer that vanished); any other flow (UDP). The TCP
/// figures are Cilium's (10 s) and kube-proxy's conntrack (24 h); UDP as Cilium's 60 s.
pub const CT_CLOSE_TIMEOUT_NS: u64 = 10_000_000_000;
pub const CT_TCP_TIMEOUT_NS: u64 = 86_400_000_000_000;
pub const CT_UDP_TIMEOUT_NS: u64 = 60_000_000_000;

/// The key of the other direction of the flow that `key` (with its `entry`) belongs to, as the
/// datapath writes the two when the flow starts.
#[inline(always)]
pub const fn partner(key: &CtKey, entry: &CtEntry) -> CtKey {
    let snat = entry.flags & CT_F_SNAT != 0;
    let mut out = *key;
    if key.dir == CT_DIR_FORWARD {
        // Forward: client -> frontend, entry: the backend (and this node's SNAT address/port).
        // Reply: backend -> client (or -> this node's SNAT port).
        out.dir = CT_DIR_REPLY;
        out.saddr = entry.nat_addr;
        out.sport_be = entry.nat_port_be;
        if snat {
            out.daddr = entry.snat_addr;
            out.dport_be = entry.snat_port_be;
        } else {
            out.daddr = key.saddr;
            out.dport_be = key.sport_be;
        }
    } else {
        // Reply: backend -> client (or SNAT port), entry: the frontend (and the client).
        out.dir = CT_DIR_FORWARD;
        out.daddr = entry.nat_addr;
        out.dport_be = entry.nat_port_be;
        if snat {
            out.saddr = entry.snat_addr;
            out.sport_be = entry.snat_port_be;
        } else {
            out.saddr = key.daddr;
            out.sport_be = key.dport_be;
        }
    }
    out
}

/// Whether an entry of protocol `proto` has been idle longer than its timeout at `now_ns`
/// (`bpf_ktime_get_ns`, CLOCK_MONOTONIC). Shared by the datapath (reclaiming a SNAT port)
/// and the agent's sweep.
#[inline(always)]
pub const fn expired(entry: &CtEntry, proto: u8, now_ns: u64) -> bool {
    let idle = now_ns.saturating_sub(entry.last_seen_ns);
    if entry.flags & CT_F_CLOSING != 0 {
        idle > CT_CLOSE_TIMEOUT_NS
    } else if proto == crate::addr::IPPROTO_TCP {
        idle > CT_TCP_TIMEOUT_NS
    } else {
        idle > CT_UDP_TIMEOUT_NS
    }
}

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

#[cfg(test)]
mod tests {
    use super::{
        CT_DIR_FORWARD, CT_DIR_REPLY, CT_F_CLOSING, CT_F_REDIRECT, CT_F_SNAT, CT_TCP_TIMEOUT_NS,
        CT_UDP_TIMEOUT_NS, CtEntry, CtKey, expired, partner,
    };
    use crate::addr::{FAMILY_V4, IPPROTO_TCP, IPPROTO_UDP, v4};

    fn key(s: [u8; 4], sport: u16, d: [u8; 4], dport: u16, dir: u8) -> CtKey {
        CtKey {
            saddr: v4(s),
            daddr: v4(d),
            sport_be: sport.to_be(),
            dport_be: dport.to_be(),
            proto: IPPROTO_TCP,
            family: FAMILY_V4,
            dir,
            _pad: 0,
        }
    }

    fn entry(nat: [u8; 4], nat_port: u16, snat: [u8; 4], snat_port: u16, flags: u16) -> CtEntry {
        CtEntry {
            nat_addr: v4(nat),
            nat_port_be: nat_port.to_be(),
            flags,
            backend_id: 1,
            svc_id: 2,
            snat_port_be: snat_port.to_be(),
            _pad: 0,
            snat_addr: v4(snat),
            created_ns: 0,
            last_seen_ns: 0,
        }
    }

    const CLIENT: [u8; 4] = [172, 31, 0, 100];
    const VIP: [u8; 4] = [10, 96, 0, 10];
    const BACKEND: [u8; 4] = [10, 244, 2, 11];
    const NODE: [u8; 4] = [172, 31, 0, 11];

    /// The two entries of a flow name each other, as the datapath writes them.
    #[test]
    fn partners_of_a_dnat_flow() {
        let forward = key(CLIENT, 40_000, VIP, 80, CT_DIR_FORWARD);
        let reply = key(BACKEND, 8080, CLIENT, 40_000, CT_DIR_REPLY);
        let fwd_entry = entry(BACKEND, 8080, [0; 4], 0, 0);
        let reply_entry = entry(VIP, 80, [0; 4], 0, CT_F_REDIRECT);
        assert_eq!(partner(&forward, &fwd_entry), reply);
        assert_eq!(partner(&reply, &reply_entry), forward);
    }

    #[test]
    fn partners_of_a_snat_flow() {
        let forward = key(CLIENT, 40_000, NODE, 30_080, CT_DIR_FORWARD);
        let reply = key(BACKEND, 8080, NODE, 61_234, CT_DIR_REPLY);
        let flags = CT_F_SNAT | CT_F_REDIRECT;
        let fwd_entry = entry(BACKEND, 8080, NODE, 61_234, flags);
        let reply_entry = entry(NODE, 30_080, CLIENT, 40_000, flags);
        assert_eq!(partner(&forward, &fwd_entry), reply);
        assert_eq!(partner(&reply, &reply_entry), forward);
    }

    #[test]
    fn timeouts_by_state_and_protocol() {
        let seen = 5_000_000_000;
        let open = CtEntry {
            last_seen_ns: seen,
            ..entry(BACKEND, 8080, [0; 4], 0, 0)
        };
        let closing = CtEntry {
            flags: CT_F_CLOSING,
            ..open
        };
        let s = 1_000_000_000;
        assert!(!expired(&closing, IPPROTO_TCP, seen + 9 * s));
        assert!(expired(&closing, IPPROTO_TCP, seen + 11 * s));
        assert!(!expired(&open, IPPROTO_TCP, seen + 11 * s));
        assert!(!expired(&open, IPPROTO_TCP, seen + CT_TCP_TIMEOUT_NS));
        assert!(expired(&open, IPPROTO_TCP, seen + CT_TCP_TIMEOUT_NS + 1));
        assert!(!expired(&open, IPPROTO_UDP, seen + CT_UDP_TIMEOUT_NS));
        assert!(expired(&open, IPPROTO_UDP, seen + CT_UDP_TIMEOUT_NS + 1));
        // A clock read before the entry was last seen (another CPU) is not idle time.
        assert!(!expired(&closing, IPPROTO_TCP, 0));
    }
}
