//! The maps, pinned by name so a restarted agent (and bpftool) finds them. Capacities here are
//! defaults; the agent sets the real ones at load time.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_INNER_MAP, BPF_F_NO_PREALLOC, BPF_NOEXIST},
    btf_maps::{
        Array, DevMapHash, HashMap, HashOfMaps, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray,
        PerCpuHashMap, SkStorage,
    },
    macros::btf_map,
};
use svclb_common::{
    AffinityKey, AffinityValue, Backend, Config, CtEntry, CtKey, FragKey, FragValue, FrontendStats,
    ServiceKey, ServiceValue, SlotKey, SockPeer, SockPeers, SockRevKey, SockRevValue, SockStats,
    SourceRangeKey, XdpStats,
    dns::{DnsAnswer, DnsKey, DnsZone},
    events::{EVENTS_MAX, LRU_DELETED, LRU_FAILED, LRU_INSERTED},
    limits::{
        AFFINITY_MAX, BACKENDS_MAX, CT_MAX, DNS_MAX, FRAGS_MAX, MAGLEV_MAX, MAGLEV_TEMPLATE_SIZE,
        SERVICES_MAX, SLOTS_MAX, SOCK_REVERSE_MAX, SOURCE_RANGES_MAX, STATS_MAX, XDP_PORTS_MAX,
        XDP_STATS_MAX,
    },
};

#[btf_map(pin_by_name)]
pub static SVCLB_SERVICES: HashMap<ServiceKey, ServiceValue, SERVICES_MAX> = HashMap::new();

#[btf_map(pin_by_name)]
pub static SVCLB_BACKENDS: HashMap<u32, Backend, BACKENDS_MAX> = HashMap::new();

#[btf_map(pin_by_name)]
pub static SVCLB_SLOTS: HashMap<SlotKey, u32, SLOTS_MAX> = HashMap::new();

#[btf_map(pin_by_name)]
pub static SVCLB_CT: LruHashMap<CtKey, CtEntry, CT_MAX> = LruHashMap::new();

/// Frontend id -> its Maglev table (backend ids). `BPF_F_INNER_MAP` lets tables of any size
/// stand in for the template.
pub type MaglevTable = Array<u32, MAGLEV_TEMPLATE_SIZE, { BPF_F_INNER_MAP as usize }>;

#[btf_map(pin_by_name)]
pub static SVCLB_MAGLEV: HashOfMaps<u32, MaglevTable, MAGLEV_MAX> = HashOfMaps::new();

#[btf_map(pin_by_name)]
pub static SVCLB_AFFINITY: LruHashMap<AffinityKey, AffinityValue, AFFINITY_MAX> = LruHashMap::new();

/// A fragmented datagram's identity -> the addresses its first fragment left with.
#[btf_map(pin_by_name)]
pub static SVCLB_FRAGS: LruHashMap<FragKey, FragValue, FRAGS_MAX> = LruHashMap::new();

#[btf_map(pin_by_name)]
pub static SVCLB_SOURCE_RANGES: LpmTrie<SourceRangeKey, u32, SOURCE_RANGES_MAX> = LpmTrie::new();

/// The per-frontend counters are not preallocated: the agent adds an entry with each
/// frontend, so their memory follows the frontends programmed, times the CPUs.
const COUNTERS_FLAGS: usize = BPF_F_NO_PREALLOC as usize;

/// Frontend id -> its counters, per CPU.
#[btf_map(pin_by_name)]
pub static SVCLB_STATS: PerCpuHashMap<u32, FrontendStats, STATS_MAX, COUNTERS_FLAGS> =
    PerCpuHashMap::new();

/// Frontend `id`'s counters on this CPU (`None` for a frontend without: not counted).
#[inline(always)]
pub fn stats(id: u32) -> Option<*mut FrontendStats> {
    SVCLB_STATS.get_ptr_mut(&id)
}

/// Frontend `id`'s socket-level counters on this CPU.
#[inline(always)]
pub fn sock_stats(id: u32) -> Option<*mut SockStats> {
    SVCLB_SOCK_STATS.get_ptr_mut(&id)
}

/// Counts into counters [`stats`] or [`sock_stats`] found.
#[inline(always)]
pub fn count<T>(stats: Option<*mut T>, f: impl FnOnce(&mut T)) {
    if let Some(stats) = stats {
        // SAFETY: this CPU's slot of a map value, valid until the program returns; no other
        // program runs on this CPU meanwhile.
        f(unsafe { &mut *stats });
    }
}

/// A socket the hooks sent to a backend -> the frontend it asked for (see `sock`).
#[btf_map(pin_by_name)]
pub static SVCLB_SOCK_REVERSE: LruHashMap<SockRevKey, SockRevValue, SOCK_REVERSE_MAX> =
    LruHashMap::new();

/// A connected socket -> the backend it was sent to, and the frontend it asked for (see
/// `svclb_common::socket`): the socket's own storage, gone with it.
#[btf_map(pin_by_name)]
pub static SVCLB_SOCK_FRONT: SkStorage<SockPeer> = SkStorage::new();

/// An unconnected socket -> the backends its datagrams went to, with their frontends (see
/// `svclb_common::socket`): the socket's own storage, gone with it.
#[btf_map(pin_by_name)]
pub static SVCLB_SOCK_PEERS: SkStorage<SockPeers> = SkStorage::new();

/// Frontend id -> its socket-level counters, per CPU.
#[btf_map(pin_by_name)]
pub static SVCLB_SOCK_STATS: PerCpuHashMap<u32, SockStats, STATS_MAX, COUNTERS_FLAGS> =
    PerCpuHashMap::new();

/// Uplink ifindex -> what the XDP program did with its packets, per CPU.
#[btf_map(pin_by_name)]
pub static SVCLB_XDP_STATS: LruPerCpuHashMap<u32, XdpStats, XDP_STATS_MAX> =
    LruPerCpuHashMap::new();

/// Uplink ifindex -> itself: the uplinks the XDP program finishes north-south flows on (and
/// may redirect to). The agent puts here the uplinks it attached XDP to whose checksums
/// arrive complete (`--xdp-finish`); a native XDP redirect also needs a target whose driver
/// takes XDP frames, which a NIC with an XDP program of its own does.
#[btf_map(pin_by_name)]
pub static SVCLB_XDP_PORTS: DevMapHash<XDP_PORTS_MAX> = DevMapHash::new();

/// Event -> how often it happened, per CPU (see `svclb_common::events`).
#[btf_map(pin_by_name)]
pub static SVCLB_EVENTS: PerCpuArray<u64, EVENTS_MAX> = PerCpuArray::new();

/// Counts one `event` (an `EV_*` of `svclb_common::events`) on this CPU.
#[inline(always)]
pub fn event(event: u32) {
    if let Some(n) = SVCLB_EVENTS.get_ptr_mut(event) {
        // SAFETY: this CPU's slot, valid until the program returns; nothing else runs on this
        // CPU meanwhile.
        unsafe { *n += 1 };
    }
}

/// Inserts `key` into an LRU flow map with its bookkeeping at `base` (an `LRU_*` map base of
/// `svclb_common::events`): a new key is counted inserted, a key already there is
/// overwritten (and not counted), a failure is counted failed.
///
/// A key is looked up before an exclusive insert is tried: an LRU map takes a free element
/// before it checks the key, and when it has none it evicts one, even for an insert that then
/// fails because the key is there.
#[inline(always)]
pub fn lru_insert<K, V, const N: usize>(
    map: &LruHashMap<K, V, N>,
    base: u32,
    key: &K,
    value: &V,
) -> Result<(), i32> {
    if map.get_ptr(key).is_some() {
        return map.insert(key, value, u64::from(BPF_ANY));
    }
    match map.insert(key, value, u64::from(BPF_NOEXIST)) {
        Ok(()) => {
            event(base + LRU_INSERTED);
            Ok(())
        }
        // Another flow's (or this one's before): overwritten, which makes no new entry.
        Err(EEXIST) => map.insert(key, value, u64::from(BPF_ANY)),
        Err(err) => {
            event(base + LRU_FAILED);
            Err(err)
        }
    }
}

/// Inserts `key` only if it is new (`BPF_NOEXIST`), counted as [`lru_insert`] counts. The
/// caller has looked it up and found none (see [`lru_insert`] on why).
#[inline(always)]
pub fn lru_insert_new<K, V, const N: usize>(
    map: &LruHashMap<K, V, N>,
    base: u32,
    key: &K,
    value: &V,
) -> bool {
    match map.insert(key, value, u64::from(BPF_NOEXIST)) {
        Ok(()) => {
            event(base + LRU_INSERTED);
            true
        }
        Err(EEXIST) => false,
        Err(_) => {
            event(base + LRU_FAILED);
            false
        }
    }
}

/// Deletes `key` from an LRU flow map, counted in its bookkeeping at `base`.
#[inline(always)]
pub fn lru_remove<K, V, const N: usize>(map: &LruHashMap<K, V, N>, base: u32, key: &K) -> bool {
    let removed = map.remove(key).is_ok();
    if removed {
        event(base + LRU_DELETED);
    }
    removed
}

/// What `bpf_map_update_elem` returns for `BPF_NOEXIST` on a key that is there.
const EEXIST: i32 = -17;

/// The datapath's settings, written by the agent.
#[btf_map(pin_by_name)]
pub static SVCLB_CONFIG: Array<Config, 1> = Array::new();

/// Name and query type -> the reply (see `svclb_common::dns`, and `dns`); entries are not
/// preallocated (most names have a few small records).
#[btf_map(pin_by_name)]
pub static SVCLB_DNS: HashMap<DnsKey, DnsAnswer, DNS_MAX, { BPF_F_NO_PREALLOC as usize }> =
    HashMap::new();

/// The DNS responder's settings (a zero `len`: off).
#[btf_map(pin_by_name)]
pub static SVCLB_DNS_ZONE: Array<DnsZone, 1> = Array::new();

/// The route epoch, which the agent bumps on every route, neighbour or link change it is told
/// of: routes cached in conntrack entries (`svclb_common::CtRoute`) from another epoch are
/// looked up again.
#[btf_map(pin_by_name)]
pub static SVCLB_ROUTE_EPOCH: Array<u32, 1> = Array::new();

/// The route epoch now.
#[inline(always)]
pub fn route_epoch() -> u32 {
    SVCLB_ROUTE_EPOCH.get(0).copied().unwrap_or(0)
}

/// The datapath's settings (`None` only if the array were empty, which it never is).
#[inline(always)]
pub fn config() -> Option<&'static Config> {
    SVCLB_CONFIG.get(0)
}
