//! The conntrack map: lookups, refreshes and the two entries of a new flow.

use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
};
use svclb_common::{
    Backend, CT_DIR_FORWARD, CT_DIR_REPLY, Config, CtEntry, CtKey, CtRoute, L3Addr,
    conntrack::{
        CT_F_CLOSING, CT_F_REDIRECT, CT_F_REPLY_SEEN, CT_F_SNAT, CT_F_UNREPLIED, flow_ended,
        partner, reclaimable,
    },
    events::{EV_REPLY_TUPLE_TAKEN, EV_SNAT_PORT_RECLAIMED, EV_SNAT_PORTS_EXHAUSTED, LRU_CT},
};

use crate::{
    maps::{SVCLB_CT, config, event, lru_insert, lru_insert_new, lru_remove},
    parse::Packet,
    scratch::Picked,
};

/// What [`create`] returns when the new flow's reply tuple is another live flow's: the caller
/// SNATs the flow instead (`EEXIST`).
pub const TUPLE_TAKEN: i64 = -17;

/// `last_seen_ns` is refreshed at most this often, so busy flows do not write the entry on
/// every packet.
const TOUCH_INTERVAL_NS: u64 = 1_000_000_000;
/// Ports tried for one SNAT before the flow is dropped (the client retries). Even with three
/// ports in four taken, 32 random tries all miss a free one once in 10^4 flows.
const SNAT_TRIES: u32 = 32;

/// The monotonic clock, read from its source: what a new flow's entries are stamped with
/// (their creation time tells a flow from the next one on its tuple).
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// The monotonic clock as of the last tick, which a tracked flow's packets read: a memory
/// load where [`now_ns`] reads the clock source (a VM's paravirtual clock, here). What they
/// time is counted in seconds (idle flows, cached routes), so a tick's lag changes nothing;
/// a stamp up to a tick older than the precise one its entry was made with only looks idle
/// a tick longer.
#[inline(always)]
pub fn tracked_now_ns() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
pub fn key_of(pkt: &Packet, dir: u8) -> CtKey {
    CtKey {
        saddr: pkt.saddr,
        daddr: pkt.daddr,
        sport_be: pkt.sport_be,
        dport_be: pkt.dport_be,
        proto: pkt.proto,
        family: pkt.family,
        dir,
        _pad: 0,
    }
}

#[inline(always)]
pub fn lookup(key: &CtKey) -> Option<*mut CtEntry> {
    SVCLB_CT.get_ptr_mut(key)
}

/// Refreshes a tracked entry's idle time (its key `key`), and marks its direction as ending
/// when `pkt` is a TCP FIN or RST (the entry, and its SNAT port, may then be reused after a
/// short idle time). Follows a new TCP flow's handshake (see [`handshake`]).
#[inline(always)]
pub fn touch(key: &CtKey, entry: *mut CtEntry, pkt: &Packet, now: u64) {
    // SAFETY: `entry` points into the map; a racing write can only store another valid time
    // or set the same bit.
    unsafe {
        // (Saturating: a coarse `now` may be a tick behind a precise stamp.)
        if now.saturating_sub((*entry).last_seen_ns) > TOUCH_INTERVAL_NS {
            (*entry).last_seen_ns = now;
        }
        if pkt.is_tcp_end() && (*entry).flags & CT_F_CLOSING == 0 {
            (*entry).flags |= CT_F_CLOSING;
            (*entry).last_seen_ns = now;
        } else if pkt.is_tcp_opening() && (*entry).flags & CT_F_CLOSING != 0 {
            // A new connection on the tuple of one that ended: its SYN one way, its SYN-ACK
            // the other.
            (*entry).flags &= !CT_F_CLOSING;
        }
        if (*entry).flags & CT_F_UNREPLIED != 0 {
            handshake(key, &mut *entry, pkt);
        }
    }
}

/// A packet of a TCP flow not established yet (see [`CT_F_UNREPLIED`]): the backend's side
/// answering is noted on the reply entry; the client's side then sending a segment without
/// SYN establishes the flow, both entries. A spoofed SYN's backend answers, but its client
/// never does.
#[inline(always)]
fn handshake(key: &CtKey, entry: &mut CtEntry, pkt: &Packet) {
    if key.dir == CT_DIR_REPLY {
        if entry.flags & CT_F_REPLY_SEEN == 0 {
            entry.flags |= CT_F_REPLY_SEEN;
        }
        return;
    }
    if pkt.is_tcp_opening() {
        return;
    }
    let Some(reply) = SVCLB_CT.get_ptr_mut(&partner(key, entry)) else {
        return;
    };
    // SAFETY: a map value found in this run stays valid until the program returns.
    let reply = unsafe { &mut *reply };
    if reply.created_ns == entry.created_ns && reply.flags & CT_F_REPLY_SEEN != 0 {
        reply.flags &= !(CT_F_UNREPLIED | CT_F_REPLY_SEEN);
        entry.flags &= !CT_F_UNREPLIED;
    }
}

/// What [`claim`] made of a reply tuple.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// The new flow holds it.
    Won,
    /// A live flow holds it.
    Busy,
    /// A half-open flow holds it, which may give it up (see [`reclaimable`]).
    HalfOpen,
}

/// Claims the reply tuple `key` for a new flow (whose forward key is `forward`): inserted if
/// free, or taken over from a flow that is over (see [`flow_ended`]) or from an earlier flow
/// of the same forward key (a client reusing its tuple, which that flow's forward entry is
/// about to be overwritten for). The insert is exclusive, so two CPUs taking over one tuple
/// at once cannot both win. A held tuple is found by a lookup, not by a failed insert, which
/// on a full map would evict an entry (see `maps::lru_insert`): a flood of SYNs short of
/// ports must not evict other flows 32 at a time.
#[inline(always)]
fn claim(key: &CtKey, entry: &CtEntry, forward: &CtKey, now: u64) -> Claim {
    let Some(held) = SVCLB_CT.get_ptr(key) else {
        return won(lru_insert_new(&SVCLB_CT, LRU_CT, key, entry));
    };
    // SAFETY: a map value found in this run stays valid until the program returns.
    let held = unsafe { &*held };
    let other_key = partner(key, held);
    if other_key == *forward {
        return won(SVCLB_CT.insert(key, entry, u64::from(BPF_ANY)).is_ok());
    }
    // SAFETY: as above.
    let other = SVCLB_CT.get_ptr(&other_key).map(|p| unsafe { &*p });
    if flow_ended(held, other, key.proto, now) {
        return won(take_over(key, entry, held.created_ns, &other_key));
    }
    if reclaimable(held, now) {
        Claim::HalfOpen
    } else {
        Claim::Busy
    }
}

#[inline(always)]
fn won(ok: bool) -> Claim {
    if ok { Claim::Won } else { Claim::Busy }
}

/// Takes the reply tuple `key` over from the flow that holds it (created at `held_created`,
/// its other direction at `other_key`): that flow's forward entry goes too (a late packet of
/// it must not use the tuple), unless a new flow holds that key already.
#[inline(always)]
fn take_over(key: &CtKey, entry: &CtEntry, held_created: u64, other_key: &CtKey) -> bool {
    // SAFETY: a map value found in this run stays valid until the program returns.
    if SVCLB_CT
        .get_ptr(other_key)
        .is_some_and(|o| unsafe { (*o).created_ns } == held_created)
    {
        lru_remove(&SVCLB_CT, LRU_CT, other_key);
    }
    lru_remove(&SVCLB_CT, LRU_CT, key);
    lru_insert_new(&SVCLB_CT, LRU_CT, key, entry)
}

/// Takes the reply tuple `key` over from the half-open flow [`claim`] found there, if it
/// still holds it.
#[inline(always)]
fn reclaim(key: &CtKey, entry: &CtEntry, now: u64) -> bool {
    let Some(held) = SVCLB_CT.get_ptr(key) else {
        return lru_insert_new(&SVCLB_CT, LRU_CT, key, entry);
    };
    // SAFETY: a map value found in this run stays valid until the program returns.
    let held = unsafe { &*held };
    reclaimable(held, now) && take_over(key, entry, held.created_ns, &partner(key, held))
}

/// The key of the reply a backend sends back to `daddr:dport_be` (the client, or this node's
/// SNAT port).
#[inline(always)]
fn reply_key(pkt: &Packet, backend: &Backend, daddr: &L3Addr, dport_be: u16) -> CtKey {
    CtKey {
        saddr: backend.addr,
        daddr: *daddr,
        sport_be: backend.port_be,
        dport_be,
        proto: pkt.proto,
        family: pkt.family,
        dir: CT_DIR_REPLY,
        _pad: 0,
    }
}

/// The flags a new flow's entries start with: a TCP flow is half-open until its handshake
/// completes.
#[inline(always)]
fn opening(pkt: &Packet) -> u16 {
    if pkt.is_tcp() { CT_F_UNREPLIED } else { 0 }
}

/// Records a DNAT-only flow (the client's address is kept). The reply entry is written first:
/// a flow whose forward entry exists always has its reply entry. Replies of an external
/// frontend's flow leave by redirect (their new source may be this node's address). The reply
/// tuple (backend -> client) must be free: one client port may reach two frontends that
/// share a backend, and both flows would then have the same one, so the second gets
/// [`TUPLE_TAKEN`].
#[inline(always)]
pub fn create(pkt: &Packet, picked: &mut Picked, svc_id: u32, reply_flags: u16) -> Result<(), i64> {
    let Picked {
        id: backend_id,
        backend,
        now,
        entry,
    } = picked;
    let now = *now;
    // One entry, the reply's first and then turned round.
    *entry = CtEntry {
        nat_addr: pkt.daddr,
        nat_port_be: pkt.dport_be,
        flags: reply_flags | opening(pkt),
        backend_id: *backend_id,
        svc_id,
        snat_port_be: 0,
        _pad: 0,
        snat_addr: [0; 16],
        created_ns: now,
        last_seen_ns: now,
        route: CtRoute::NONE,
    };
    let reply_key = reply_key(pkt, backend, &pkt.saddr, pkt.sport_be);
    let forward_key = key_of(pkt, CT_DIR_FORWARD);
    if claim(&reply_key, entry, &forward_key, now) != Claim::Won {
        event(EV_REPLY_TUPLE_TAKEN);
        return Err(TUPLE_TAKEN);
    }
    entry.nat_addr = backend.addr;
    entry.nat_port_be = backend.port_be;
    entry.flags = opening(pkt);
    insert_forward(&forward_key, entry, &reply_key)
}

/// Inserts a new flow's forward entry, its reply entry at `reply_key` already in; on failure
/// the reply entry goes too.
#[inline(always)]
fn insert_forward(key: &CtKey, entry: &CtEntry, reply_key: &CtKey) -> Result<(), i64> {
    if let Err(err) = lru_insert(&SVCLB_CT, LRU_CT, key, entry) {
        lru_remove(&SVCLB_CT, LRU_CT, reply_key);
        return Err(err.into());
    }
    Ok(())
}

/// The `attempt`th port tried for a flow whose random seed is `seed`, in the agent's range
/// (the settings are read again for each: an array lookup costs nothing, a value kept across
/// the tries costs stack). A stride coprime to the range walks distinct ports: 997 and 991
/// are primes whose product is larger than any range.
#[inline(always)]
fn snat_port(seed: u32, attempt: u32) -> u16 {
    let (first, range) = config().map_or(Config::DEFAULT_SNAT_PORTS, Config::snat_ports);
    let stride = if range % 997 == 0 { 991 } else { 997 };
    (first as u32 + (seed % range + attempt * stride) % range) as u16
}

/// Records a flow that is DNATed to a backend and SNATed to `node:port`, allocating the port:
/// a free one is claimed by inserting the reply entry with `BPF_NOEXIST`, so two flows can
/// never share a reply tuple, even when one backend sits behind several frontends. When no
/// try finds one free, the first half-open flow found idle gives its port up. Returns the
/// port (network order).
#[inline(always)]
pub fn create_snat(
    pkt: &Packet,
    picked: &mut Picked,
    svc_id: u32,
    node: &L3Addr,
) -> Result<u16, i64> {
    let Picked {
        id: backend_id,
        backend,
        now,
        entry,
    } = picked;
    let now = *now;
    let mut reply_key = reply_key(pkt, backend, node, 0);
    *entry = CtEntry {
        nat_addr: pkt.daddr,
        nat_port_be: pkt.dport_be,
        flags: CT_F_SNAT | CT_F_REDIRECT | opening(pkt),
        backend_id: *backend_id,
        svc_id,
        snat_port_be: pkt.sport_be,
        _pad: 0,
        snat_addr: pkt.saddr,
        created_ns: now,
        last_seen_ns: now,
        route: CtRoute::NONE,
    };
    let forward_key = key_of(pkt, CT_DIR_FORWARD);
    // SAFETY: a helper without arguments or side effects.
    let seed = unsafe { bpf_get_prandom_u32() };
    let mut port_be = 0;
    let mut half_open_be = 0;
    for attempt in 0..SNAT_TRIES {
        reply_key.dport_be = snat_port(seed, attempt).to_be();
        match claim(&reply_key, entry, &forward_key, now) {
            Claim::Won => {
                port_be = reply_key.dport_be;
                break;
            }
            Claim::HalfOpen if half_open_be == 0 => half_open_be = reply_key.dport_be,
            _ => {}
        }
    }
    if port_be == 0 && half_open_be != 0 {
        reply_key.dport_be = half_open_be;
        if reclaim(&reply_key, entry, now) {
            port_be = half_open_be;
            event(EV_SNAT_PORT_RECLAIMED);
        }
    }
    if port_be == 0 {
        event(EV_SNAT_PORTS_EXHAUSTED);
        return Err(-1);
    }
    reply_key.dport_be = port_be;
    // The same entry, turned round: the forward direction.
    entry.nat_addr = backend.addr;
    entry.nat_port_be = backend.port_be;
    entry.snat_port_be = port_be;
    entry.snat_addr = *node;
    insert_forward(&forward_key, entry, &reply_key)?;
    Ok(port_be)
}
