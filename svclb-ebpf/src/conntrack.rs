//! Conntrack: the forward entry pins a flow to its backend, the reply entry finds the frontend
//! to restore on the way back. Entries age out of the LRU map.

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_ktime_get_ns};
use svclb_common::{Backend, CT_DIR_FORWARD, CT_DIR_REPLY, CtEntry, CtKey};

use crate::{maps::SVCLB_CT, parse::Packet};

/// `last_seen_ns` is refreshed at most this often, so an established flow does not dirty its
/// entry's cache line on every packet.
const TOUCH_INTERVAL_NS: u64 = 1_000_000_000;

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a helper without arguments or side effects.
    unsafe { bpf_ktime_get_ns() }
}

/// The key under which `pkt` itself is tracked, in direction `dir`.
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

#[inline(always)]
pub fn touch(entry: *mut CtEntry, now: u64) {
    // SAFETY: `entry` comes from a lookup in this program run; a racing writer can at worst
    // store another recent timestamp.
    unsafe {
        if now.wrapping_sub((*entry).last_seen_ns) > TOUCH_INTERVAL_NS {
            (*entry).last_seen_ns = now;
        }
    }
}

/// Records a new flow of `pkt` (client -> frontend) translated to `backend`. The reply entry
/// goes in first: a flow is either tracked in both directions or not at all.
#[inline(always)]
pub fn create(
    pkt: &Packet,
    backend: &Backend,
    backend_id: u32,
    svc_id: u32,
    now: u64,
) -> Result<(), i64> {
    let forward = CtEntry {
        nat_addr: backend.addr,
        nat_port_be: backend.port_be,
        _pad0: 0,
        backend_id,
        svc_id,
        _pad1: 0,
        created_ns: now,
        last_seen_ns: now,
    };
    let reply_key = CtKey {
        saddr: backend.addr,
        daddr: pkt.saddr,
        sport_be: backend.port_be,
        dport_be: pkt.sport_be,
        proto: pkt.proto,
        family: pkt.family,
        dir: CT_DIR_REPLY,
        _pad: 0,
    };
    let reply = CtEntry {
        nat_addr: pkt.daddr,
        nat_port_be: pkt.dport_be,
        ..forward
    };
    SVCLB_CT.insert(&reply_key, &reply, u64::from(BPF_ANY))?;
    if let Err(err) = SVCLB_CT.insert(&key_of(pkt, CT_DIR_FORWARD), &forward, u64::from(BPF_ANY)) {
        // Best effort: a stale reply entry alone would only rewrite a direct flow's replies.
        let _ = SVCLB_CT.remove(&reply_key);
        return Err(err.into());
    }
    Ok(())
}
