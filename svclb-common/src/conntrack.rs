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
/// A TCP flow not established yet: set on both entries when a SYN opens the flow, and
/// cleared on both when the client's side sends a segment without SYN after the backend's
/// side has answered (netfilter's SYN_SENT and SYN_RECV, then ESTABLISHED). Until then the
/// flow lives [`CT_SYN_TIMEOUT_NS`] idle, and a new flow short of SNAT ports may take its
/// port over. So spoofed SYNs, which never complete a handshake, hold nothing for long.
pub const CT_F_UNREPLIED: u16 = 1 << 3;
/// On a reply entry of an [`CT_F_UNREPLIED`] flow: the backend's side has sent a packet.
pub const CT_F_REPLY_SEEN: u16 = 1 << 4;

/// How long an entry may be idle before it is let go (and its SNAT port reused): a TCP flow
/// after a FIN or RST; one not established yet; one established (a peer that vanished); any
/// other flow (UDP). The TCP figures are Cilium's (10 s, 60 s) and kube-proxy's conntrack
/// (24 h); UDP as Cilium's 60 s.
pub const CT_CLOSE_TIMEOUT_NS: u64 = 10_000_000_000;
pub const CT_SYN_TIMEOUT_NS: u64 = 60_000_000_000;
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
/// (CLOCK_MONOTONIC: `bpf_ktime_get_ns`; its stamps may also be `bpf_ktime_get_coarse_ns`,
/// up to a tick behind). Shared by the datapath (reclaiming a SNAT port)
/// and the agent's sweep.
#[inline(always)]
pub const fn expired(entry: &CtEntry, proto: u8, now_ns: u64) -> bool {
    let idle = now_ns.saturating_sub(entry.last_seen_ns);
    if entry.flags & CT_F_CLOSING != 0 {
        idle > CT_CLOSE_TIMEOUT_NS
    } else if proto == crate::addr::IPPROTO_TCP && entry.flags & CT_F_UNREPLIED != 0 {
        idle > CT_SYN_TIMEOUT_NS
    } else if proto == crate::addr::IPPROTO_TCP {
        idle > CT_TCP_TIMEOUT_NS
    } else {
        idle > CT_UDP_TIMEOUT_NS
    }
}

/// A half-open TCP flow (see [`CT_F_UNREPLIED`]) idle this long may give its SNAT port to a
/// new flow that finds no free one: its client has retransmitted its SYN by then (Linux's
/// first SYN timeout is 1 s) if it is there at all, and that SYN opens the flow again.
pub const CT_HALF_OPEN_RECLAIM_NS: u64 = 3_000_000_000;

/// Whether the flow of reply entry `entry` may give up its SNAT port to a new flow short of
/// one at `now_ns`: half-open and idle [`CT_HALF_OPEN_RECLAIM_NS`].
#[inline(always)]
pub const fn reclaimable(entry: &CtEntry, now_ns: u64) -> bool {
    entry.flags & (CT_F_UNREPLIED | CT_F_CLOSING) == CT_F_UNREPLIED
        && now_ns.saturating_sub(entry.last_seen_ns) > CT_HALF_OPEN_RECLAIM_NS
}

/// Traffic the other direction saw up to this long after an entry went quiet still belongs to
/// the flow's end (the last segments of a close cross each other); traffic seen later means
/// the flow lives on that way (a one-way stream, or a tuple a new connection reuses).
pub const CT_END_SLACK_NS: u64 = 5_000_000_000;

/// Whether the flow of `entry` (protocol `proto`), idle past its timeout, is over at `now_ns`.
/// `other` is what the flow's [`partner`] key holds: nothing, or another flow's entry (a
/// different `created_ns`: both entries of a flow are written with the same), and the flow
/// is over; or the flow's other direction, which keeps the flow alive if it was seen since
/// `entry` went quiet (plus [`CT_END_SLACK_NS`]), within the last [`CT_CLOSE_TIMEOUT_NS`],
/// and is not idle past its own timeout. So an RST seen one way ends the flow, and so does a
/// half-closed connection quiet both ways for 10 s (as in Cilium); a UDP stream the backend
/// keeps sending on, or a closed tuple a new connection's SYN just revived, does not. The
/// datapath (taking over a SNAT port) and its sweep program both decide by this.
#[inline(always)]
pub const fn flow_ended(entry: &CtEntry, other: Option<&CtEntry>, proto: u8, now_ns: u64) -> bool {
    if !expired(entry, proto, now_ns) {
        return false;
    }
    match other {
        Some(other) if other.created_ns == entry.created_ns => {
            let seen_since =
                other.last_seen_ns > entry.last_seen_ns.saturating_add(CT_END_SLACK_NS);
            let recent = now_ns.saturating_sub(other.last_seen_ns) <= CT_CLOSE_TIMEOUT_NS;
            !(seen_since && recent) || expired(other, proto, now_ns)
        }
        _ => true,
    }
}

/// One conntrack entry the agent hands the sweep program (`svclb_sweep`), which deletes it
/// only if it still holds the flow the agent saw (`created_ns`) and, with
/// [`SWEEP_IF_ENDED`], that flow is still over (see [`flow_ended`]); then with its flow's
/// other direction. A walk of the map from user space is a snapshot: between the walk and the
/// delete the datapath may have taken the key over for a new flow, which a delete by key
/// alone would cut off.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SweepItem {
    pub key: CtKey,
    pub created_ns: u64,
    pub mode: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<SweepItem>() == 56);

/// [`SweepItem::mode`]: delete the flow if it is over.
pub const SWEEP_IF_ENDED: u32 = 0;
/// [`SweepItem::mode`]: delete this entry alone, whatever its flow's state (a UDP flow whose
/// backend left: the client's next datagram picks again, and answers still on their way
/// keep their reply entry).
pub const SWEEP_ENTRY: u32 = 1;
/// The items travel as the sweep program's test frame, after an Ethernet header of this
/// size (the kernel wants one).
pub const SWEEP_HEADER: usize = 14;
/// Items per run: BPF_PROG_TEST_RUN takes frames of a little less than a page (4096 bytes
/// less the skb's head- and tailroom).
pub const SWEEP_BATCH: usize = 56;
const _: () = assert!(SWEEP_HEADER + SWEEP_BATCH * size_of::<SweepItem>() <= 3584);

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
    /// Where this direction's packets leave, as the XDP program last found it.
    pub route: CtRoute,
}
const _: () = assert!(size_of::<CtEntry>() == 88);

/// The route a direction of a flow leaves by, cached in its entry so that XDP does not look
/// it up for every packet: the egress device and the MAC addresses the FIB gave. It serves
/// while the route epoch (`SVCLB_ROUTE_EPOCH`, bumped by the agent on every route,
/// neighbour or link change it is told of) is the one it was found in, for at most
/// [`ROUTE_CACHE_UNITS`] (the bound when no agent runs), and for packets no longer than one
/// the FIB checked against the route's MTU. All zero (`ifindex` 0): none cached.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtRoute {
    pub ifindex: u32,
    /// When it was found, in [`ROUTE_CLOCK_SHIFT`] units of the monotonic clock (wrapping).
    pub found: u32,
    /// The route epoch it was found in, truncated.
    pub epoch: u16,
    /// The longest IP packet (total length) the FIB let through on this route.
    pub max_len: u16,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
}
const _: () = assert!(size_of::<CtRoute>() == 24);

impl CtRoute {
    pub const NONE: Self = Self {
        ifindex: 0,
        found: 0,
        epoch: 0,
        max_len: 0,
        dmac: [0; 6],
        smac: [0; 6],
    };

    /// Whether the route serves a packet of IP length `len` at clock `now_ns` in `epoch`.
    #[inline(always)]
    pub const fn serves(&self, len: u16, now_ns: u64, epoch: u32) -> bool {
        self.ifindex != 0
            && self.epoch == epoch as u16
            && len != 0
            && len <= self.max_len
            && route_clock(now_ns).wrapping_sub(self.found) < ROUTE_CACHE_UNITS
    }
}

/// [`CtRoute::found`]'s unit: 2^20 ns, about a millisecond.
pub const ROUTE_CLOCK_SHIFT: u32 = 20;
/// How long a cached route serves at most: about 5 s. The agent's epoch invalidates it at
/// once on a change it sees; this bounds what an agent that is not running misses.
pub const ROUTE_CACHE_UNITS: u32 = 4768;
/// `now_ns` in [`CtRoute::found`]'s units.
#[inline(always)]
pub const fn route_clock(now_ns: u64) -> u32 {
    (now_ns >> ROUTE_CLOCK_SHIFT) as u32
}

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
    unsafe impl aya::Pod for super::CtRoute {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AffinityKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AffinityValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SweepItem {}
}

#[cfg(test)]
mod tests {
    use super::{
        CT_CLOSE_TIMEOUT_NS, CT_DIR_FORWARD, CT_DIR_REPLY, CT_END_SLACK_NS, CT_F_CLOSING,
        CT_F_REDIRECT, CT_F_REPLY_SEEN, CT_F_SNAT, CT_F_UNREPLIED, CT_SYN_TIMEOUT_NS,
        CT_TCP_TIMEOUT_NS, CT_UDP_TIMEOUT_NS, CtEntry, CtKey, CtRoute, ROUTE_CLOCK_SHIFT, expired,
        flow_ended, partner, reclaimable, route_clock,
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
            route: CtRoute::NONE,
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
        // Not established: a minute, whether or not the backend answered; closing first.
        for flags in [CT_F_UNREPLIED, CT_F_UNREPLIED | CT_F_REPLY_SEEN] {
            let half_open = CtEntry { flags, ..open };
            assert!(!expired(&half_open, IPPROTO_TCP, seen + CT_SYN_TIMEOUT_NS));
            assert!(expired(
                &half_open,
                IPPROTO_TCP,
                seen + CT_SYN_TIMEOUT_NS + 1
            ));
        }
        let half_closed = CtEntry {
            flags: CT_F_UNREPLIED | CT_F_CLOSING,
            ..open
        };
        assert!(expired(&half_closed, IPPROTO_TCP, seen + 11 * s));
    }

    /// A half-open flow's SNAT port goes to a new flow after 3 s idle; an established or
    /// closing flow's never early.
    #[test]
    fn half_open_flows_give_up_their_port() {
        let s = 1_000_000_000;
        let half_open = CtEntry {
            flags: CT_F_UNREPLIED | CT_F_SNAT,
            last_seen_ns: 10 * s,
            ..entry(NODE, 30_080, CLIENT, 40_000, 0)
        };
        assert!(!reclaimable(&half_open, 12 * s));
        assert!(reclaimable(&half_open, 14 * s));
        let established = CtEntry {
            flags: CT_F_SNAT,
            ..half_open
        };
        assert!(!reclaimable(&established, 100 * s));
        let closing = CtEntry {
            flags: CT_F_UNREPLIED | CT_F_CLOSING,
            ..half_open
        };
        assert!(!reclaimable(&closing, 14 * s));
    }

    /// A flow is over when its idle entry's other direction is gone, belongs to another flow,
    /// is idle too, or went quiet about when it did or 10 s ago; not while that direction
    /// lives on.
    #[test]
    fn flow_ends_by_both_directions() {
        let s = 1_000_000_000;
        let closed_at = 100 * s;
        let closing = CtEntry {
            flags: CT_F_CLOSING,
            created_ns: 7,
            last_seen_ns: closed_at,
            ..entry(BACKEND, 8080, [0; 4], 0, 0)
        };
        let now = closed_at + 11 * s;
        let tcp = IPPROTO_TCP;
        // Not idle long enough: never over, whatever the other side.
        assert!(!flow_ended(&closing, None, tcp, closed_at + 9 * s));
        // The other direction gone, or another flow's (a different creation time).
        assert!(flow_ended(&closing, None, tcp, now));
        let stranger = CtEntry {
            created_ns: 8,
            last_seen_ns: now,
            flags: 0,
            ..closing
        };
        assert!(flow_ended(&closing, Some(&stranger), tcp, now));
        // Both directions closed.
        assert!(flow_ended(&closing, Some(&closing), tcp, now));
        // The other direction open (an RST seen one way only), quiet since about the close.
        let open_then = CtEntry {
            flags: 0,
            last_seen_ns: closed_at + CT_END_SLACK_NS,
            ..closing
        };
        assert!(flow_ended(&closing, Some(&open_then), tcp, now));
        // ...but seen since: a tuple reused by a new connection, or a one-way stream.
        let alive = CtEntry {
            last_seen_ns: closed_at + CT_END_SLACK_NS + 1,
            ..open_then
        };
        assert!(!flow_ended(&closing, Some(&alive), tcp, now));
        // ...unless quiet since for 10 s too (a half-closed connection left idle).
        let later = alive.last_seen_ns + CT_CLOSE_TIMEOUT_NS;
        assert!(!flow_ended(&closing, Some(&alive), tcp, later));
        assert!(flow_ended(&closing, Some(&alive), tcp, later + 1));
        // A UDP flow the backend still streams on is kept; one quiet both ways goes.
        let udp_quiet = CtEntry {
            flags: 0,
            last_seen_ns: s,
            ..closing
        };
        let later = s + CT_UDP_TIMEOUT_NS + s;
        let streaming = CtEntry {
            last_seen_ns: later - s,
            ..udp_quiet
        };
        assert!(!flow_ended(
            &udp_quiet,
            Some(&streaming),
            IPPROTO_UDP,
            later
        ));
        assert!(flow_ended(&udp_quiet, Some(&udp_quiet), IPPROTO_UDP, later));
    }

    #[test]
    fn a_cached_route_serves_its_epoch_its_lengths_and_about_five_seconds() {
        let found_at = 1_000_000_000_000u64;
        let route = CtRoute {
            ifindex: 3,
            found: route_clock(found_at),
            epoch: 7,
            max_len: 1500,
            dmac: [2, 0, 0, 0, 0, 12],
            smac: [2, 0, 0, 0, 0, 11],
        };
        let s = 1_000_000_000;
        assert!(route.serves(1500, found_at + 4 * s, 7));
        assert!(route.serves(60, found_at, 7));
        assert!(
            !route.serves(1501, found_at, 7),
            "longer than the FIB checked"
        );
        assert!(
            !route.serves(0, found_at, 7),
            "a length the parser did not know"
        );
        assert!(!route.serves(60, found_at, 8), "another epoch");
        assert!(
            route.serves(60, found_at, 7 + 65_536),
            "the epoch is kept truncated"
        );
        assert!(!route.serves(60, found_at + 6 * s, 7), "too old");
        assert!(!CtRoute::NONE.serves(60, found_at, 0), "none cached");
        // The clock wraps in its units without a route seeming young again too early.
        let wrap = (u64::from(u32::MAX) + 1) << ROUTE_CLOCK_SHIFT;
        let late = CtRoute {
            found: route_clock(wrap - s),
            ..route
        };
        assert!(late.serves(60, wrap + s, 7));
        assert!(!late.serves(60, wrap + 5 * s, 7));
    }
}
