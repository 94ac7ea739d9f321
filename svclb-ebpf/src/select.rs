//! Which backend a new flow gets: session affinity first, then Maglev over a hash of the flow
//! (external frontends) or a uniform random slot (cluster IPs). Also who may connect at all
//! (source ranges). One implementation for every program: the TC and XDP programs select for
//! a parsed packet, the socket hooks for a socket, both through [`Flow`].

use aya_ebpf::{btf_maps::lpm_trie::Key, helpers::bpf_get_prandom_u32};
use svclb_common::{
    AffinityKey, AffinityValue, Backend, CtEntry, L3Addr, ServiceKey, ServiceValue, SlotKey,
    SourceRangeKey,
    events::LRU_AFFINITY,
    service::{SCOPE_ALL, SVC_F_MAGLEV, SVC_F_SOURCE_RANGES},
};

use crate::{
    maps::{
        SVCLB_AFFINITY, SVCLB_BACKENDS, SVCLB_MAGLEV, SVCLB_SERVICES, SVCLB_SLOTS,
        SVCLB_SOURCE_RANGES, lru_insert,
    },
    parse::Packet,
};

/// What selection reads of a flow.
pub trait Flow {
    /// The client's address (a socket's client is its network namespace, see `sock`).
    fn saddr(&self) -> &L3Addr;
    fn daddr(&self) -> &L3Addr;
    fn sport_be(&self) -> u16;
    fn dport_be(&self) -> u16;
    fn proto(&self) -> u8;
    fn family(&self) -> u8;
}

impl Flow for Packet {
    #[inline(always)]
    fn saddr(&self) -> &L3Addr {
        &self.saddr
    }
    #[inline(always)]
    fn daddr(&self) -> &L3Addr {
        &self.daddr
    }
    #[inline(always)]
    fn sport_be(&self) -> u16 {
        self.sport_be
    }
    #[inline(always)]
    fn dport_be(&self) -> u16 {
        self.dport_be
    }
    #[inline(always)]
    fn proto(&self) -> u8 {
        self.proto
    }
    #[inline(always)]
    fn family(&self) -> u8 {
        self.family
    }
}

#[inline(always)]
pub fn service(flow: &impl Flow, scope: u8) -> Option<ServiceValue> {
    let key = ServiceKey {
        addr: *flow.daddr(),
        port_be: flow.dport_be(),
        proto: flow.proto(),
        family: flow.family(),
        scope,
        _pad: [0; 3],
    };
    // SAFETY: the value is copied out at once.
    SVCLB_SERVICES.get_ptr(&key).map(|value| unsafe { *value })
}

#[inline(always)]
pub fn frontend(flow: &impl Flow) -> Option<ServiceValue> {
    service(flow, SCOPE_ALL)
}

#[inline(always)]
pub fn backend(id: u32) -> Option<Backend> {
    // SAFETY: the value is copied out at once.
    SVCLB_BACKENDS.get_ptr(&id).map(|value| unsafe { *value })
}

/// `loadBalancerSourceRanges`: whether the packet's source may reach the frontend.
#[inline(always)]
pub fn admitted(svc: &ServiceValue, flow: &impl Flow) -> bool {
    if svc.flags & SVC_F_SOURCE_RANGES == 0 {
        return true;
    }
    let key = Key {
        prefix_len: 32
            + if flow.family() == svclb_common::FAMILY_V4 {
                32
            } else {
                128
            },
        data: SourceRangeKey {
            svc_id_be: svc.id.to_be(),
            addr: *flow.saddr(),
        },
    };
    SVCLB_SOURCE_RANGES.get(&key).is_some()
}

/// MurmurHash3's 32-bit block mix and finaliser: every node computes the same hash of a flow,
/// so Maglev sends it to the same backend whichever node it reaches.
#[inline(always)]
fn mix(hash: u32, word: u32) -> u32 {
    let k = word
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (hash ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finish(mut hash: u32) -> u32 {
    hash ^= hash >> 16;
    hash = hash.wrapping_mul(0x85eb_ca6b);
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(0xc2b2_ae35);
    hash ^ (hash >> 16)
}

/// Hash of the flow for Maglev: source address and port, destination port and protocol. The
/// destination address is left out so a flow hashes the same on every node whether it was
/// sent to a LoadBalancer IP or to a node's NodePort; with ClientIP affinity the source port
/// is left out too, so all of a client's flows share a backend.
#[inline(always)]
pub fn flow_hash(flow: &impl Flow, affinity: bool) -> u32 {
    let a = flow.saddr();
    let mut hash = 0x5356_434c; // "SVCL"
    hash = mix(hash, u32::from_le_bytes([a[0], a[1], a[2], a[3]]));
    hash = mix(hash, u32::from_le_bytes([a[4], a[5], a[6], a[7]]));
    hash = mix(hash, u32::from_le_bytes([a[8], a[9], a[10], a[11]]));
    hash = mix(hash, u32::from_le_bytes([a[12], a[13], a[14], a[15]]));
    let sport = if affinity { 0 } else { flow.sport_be() };
    hash = mix(
        hash,
        (u32::from(sport) << 16) | u32::from(u16::from_be(flow.dport_be())),
    );
    hash = mix(hash, u32::from(flow.proto()));
    finish(hash)
}

#[inline(always)]
fn by_slot(svc: &ServiceValue, slot: u32) -> Option<u32> {
    let key = SlotKey {
        svc_id: svc.id,
        slot,
    };
    // SAFETY: the value is copied out at once.
    SVCLB_SLOTS.get_ptr(&key).map(|value| unsafe { *value })
}

/// The backend id the frontend's rule gives this packet, without affinity.
#[inline(always)]
fn by_rule(svc: &ServiceValue, flow: &impl Flow) -> Option<u32> {
    if svc.flags & SVC_F_MAGLEV != 0
        && let Some(slot) =
            flow_hash(flow, svc.affinity_timeout_s != 0).checked_rem(svc.maglev_size)
    {
        // SAFETY: the table is only read; a table swapped out under us stays valid until the
        // program returns (RCU).
        if let Some(id) = unsafe { SVCLB_MAGLEV.get_value(&svc.id, &slot) } {
            return Some(*id);
        }
        // No table yet (written just after the entry): fall back to the slots.
    }
    // SAFETY: a helper without arguments or side effects.
    let slot = unsafe { bpf_get_prandom_u32() }.checked_rem(svc.count)?;
    by_slot(svc, slot)
}

/// Picks the backend of a new flow; `None` when the frontend has none.
#[inline(always)]
pub fn pick(svc: &ServiceValue, flow: &impl Flow, now: u64) -> Option<(u32, Backend)> {
    if svc.count == 0 {
        return None;
    }
    if svc.affinity_timeout_s == 0 {
        let id = by_rule(svc, flow)?;
        return Some((id, backend(id)?));
    }
    let key = AffinityKey {
        svc_id: svc.id,
        family: flow.family(),
        _pad: [0; 3],
        client: *flow.saddr(),
    };
    let timeout_ns = u64::from(svc.affinity_timeout_s) * 1_000_000_000;
    if let Some(entry) = SVCLB_AFFINITY.get_ptr_mut(&key) {
        // SAFETY: a map value found in this run.
        let (id, last) = unsafe { ((*entry).backend_id, (*entry).last_ns) };
        if now.wrapping_sub(last) <= timeout_ns
            && let Some(be) = backend(id)
        {
            // SAFETY: as above; a racing writer can only store another valid time.
            unsafe { (*entry).last_ns = now };
            return Some((id, be));
        }
    }
    let id = by_rule(svc, flow)?;
    let be = backend(id)?;
    let value = AffinityValue {
        backend_id: id,
        _pad: 0,
        last_ns: now,
    };
    // A full LRU map evicts (counted by the agent); a failed insert only costs affinity for
    // this client (counted).
    let _ = lru_insert(&SVCLB_AFFINITY, LRU_AFFINITY, &key, &value);
    Some((id, be))
}

/// Whether a tracked flow's entry still serves `pkt` of frontend `svc`: the same frontend,
/// and for UDP packets and TCP SYNs a backend still programmed. Established TCP keeps its
/// backend even after the endpoint is removed (as with kube-proxy), while UDP flows and
/// reused TCP tuples move to a live backend.
#[inline(always)]
pub fn still_serves(entry: &CtEntry, pkt: &Packet, svc: &ServiceValue) -> bool {
    if entry.svc_id != svc.id {
        return false;
    }
    if !(pkt.is_udp() || pkt.is_tcp_syn()) {
        return true;
    }
    backend(entry.backend_id)
        .is_some_and(|be| be.addr == entry.nat_addr && be.port_be == entry.nat_port_be)
}
