//! The conntrack map: lookups, refreshes and the two entries of a new flow.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
};
use svclb_common::{
    Backend, CT_DIR_FORWARD, CT_DIR_REPLY, CtEntry, CtKey, L3Addr,
    conntrack::{CT_F_CLOSING, CT_F_REDIRECT, CT_F_SNAT, flow_ended, partner},
    limits::{SNAT_PORT_MAX, SNAT_PORT_MIN},
};

use crate::{maps::SVCLB_CT, parse::Packet};

/// `last_seen_ns` is refreshed at most this often, so busy flows do not write the entry on
/// every packet.
const TOUCH_INTERVAL_NS: u64 = 1_000_000_000;
/// Ports tried for one SNAT before the flow is dropped (the client retries). Even with three
/// ports in four taken, 32 random tries all miss a free one once in 10^4 flows.
const SNAT_TRIES: u32 = 32;

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_ns() }
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

/// Refreshes a tracked entry's idle time, and marks its direction as ending when `pkt` is a
/// TCP FIN or RST (the entry, and its SNAT port, may then be reused after a short idle time).
#[inline(always)]
pub fn touch(entry: *mut CtEntry, pkt: &Packet, now: u64) {
    // SAFETY: `entry` points into the map; a racing write can only store another valid time
    // or set the same bit.
    unsafe {
        if now.wrapping_sub((*entry).last_seen_ns) > TOUCH_INTERVAL_NS {
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
    }
}

/// Claims the reply tuple `key` for a new SNATed flow: inserted if free, or taken over from a
/// flow that is over (see [`flow_ended`]). The ended flow's entries are deleted first and the
/// insert is exclusive, so two CPUs reclaiming one port at once cannot both win.
#[inline(always)]
fn claim(key: &CtKey, entry: &CtEntry, now: u64) -> bool {
    if SVCLB_CT.insert(key, entry, u64::from(BPF_NOEXIST)).is_ok() {
        return true;
    }
    let Some(held) = SVCLB_CT.get_ptr(key) else {
        return false;
    };
    // SAFETY: a map value found in this run stays valid until the program returns.
    let held = unsafe { &*held };
    let other_key = partner(key, held);
    // SAFETY: as above.
    let other = SVCLB_CT.get_ptr(&other_key).map(|p| unsafe { &*p });
    if !flow_ended(held, other, key.proto, now) {
        return false;
    }
    // The ended flow's forward entry goes too (a late packet of it must not use the port),
    // unless a new flow holds that key already.
    if other.is_some_and(|o| o.created_ns == held.created_ns) {
        let _ = SVCLB_CT.remove(&other_key);
    }
    let _ = SVCLB_CT.remove(key);
    SVCLB_CT.insert(key, entry, u64::from(BPF_NOEXIST)).is_ok()
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

/// Records a DNAT-only flow (the client's address is kept). The reply entry is written first:
/// a flow whose forward entry exists always has its reply entry. Replies of an external
/// frontend's flow leave by redirect (their new source may be this node's address).
#[inline(always)]
pub fn create(
    pkt: &Packet,
    backend: &Backend,
    backend_id: u32,
    svc_id: u32,
    now: u64,
    reply_flags: u16,
) -> Result<(), i64> {
    let forward = CtEntry {
        nat_addr: backend.addr,
        nat_port_be: backend.port_be,
        flags: 0,
        backend_id,
        svc_id,
        snat_port_be: 0,
        _pad: 0,
        snat_addr: [0; 16],
        created_ns: now,
        last_seen_ns: now,
    };
    let reply_key = reply_key(pkt, backend, &pkt.saddr, pkt.sport_be);
    let reply = CtEntry {
        nat_addr: pkt.daddr,
        nat_port_be: pkt.dport_be,
        flags: reply_flags,
        ..forward
    };
    SVCLB_CT.insert(&reply_key, &reply, u64::from(BPF_ANY))?;
    if let Err(err) = SVCLB_CT.insert(&key_of(pkt, CT_DIR_FORWARD), &forward, u64::from(BPF_ANY)) {
        let _ = SVCLB_CT.remove(&reply_key);
        return Err(err.into());
    }
    Ok(())
}

/// Records a flow that is DNATed to a remote backend and SNATed to `node:port`, allocating
/// the port: a free one is claimed by inserting the reply entry with `BPF_NOEXIST`, so two
/// flows can never share a reply tuple, even when one backend sits behind several frontends.
/// Returns the port (network order).
#[inline(always)]
pub fn create_snat(
    pkt: &Packet,
    backend: &Backend,
    backend_id: u32,
    svc_id: u32,
    now: u64,
    node: &L3Addr,
) -> Result<u16, i64> {
    const RANGE: u32 = (SNAT_PORT_MAX - SNAT_PORT_MIN) as u32 + 1;
    let mut reply_key = reply_key(pkt, backend, node, 0);
    let mut entry = CtEntry {
        nat_addr: pkt.daddr,
        nat_port_be: pkt.dport_be,
        flags: CT_F_SNAT | CT_F_REDIRECT,
        backend_id,
        svc_id,
        snat_port_be: pkt.sport_be,
        _pad: 0,
        snat_addr: pkt.saddr,
        created_ns: now,
        last_seen_ns: now,
    };
    // SAFETY: a helper without arguments or side effects.
    let start = unsafe { bpf_get_prandom_u32() } % RANGE;
    let mut port_be = 0;
    for attempt in 0..SNAT_TRIES {
        // A stride coprime to RANGE walks distinct ports.
        let port = SNAT_PORT_MIN as u32 + (start + attempt * 997) % RANGE;
        reply_key.dport_be = (port as u16).to_be();
        if claim(&reply_key, &entry, now) {
            port_be = reply_key.dport_be;
            break;
        }
    }
    if port_be == 0 {
        return Err(-1);
    }
    // The same entry, turned round: the forward direction.
    entry.nat_addr = backend.addr;
    entry.nat_port_be = backend.port_be;
    entry.snat_port_be = port_be;
    entry.snat_addr = *node;
    if let Err(err) = SVCLB_CT.insert(&key_of(pkt, CT_DIR_FORWARD), &entry, u64::from(BPF_ANY)) {
        let _ = SVCLB_CT.remove(&reply_key);
        return Err(err.into());
    }
    Ok(port_be)
}
