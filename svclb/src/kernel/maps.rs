//! Typed handles on the pinned maps: reading them back into a [`MapState`] and writing the
//! reconciler's changes.

use std::{
    collections::BTreeSet,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{
        Array, HashMap, HashOfMaps, IterableMap as _, LpmTrie, Map, MapData, PerCpuHashMap,
        lpm_trie::Key,
    },
};
use ipnet::IpNet;
use svclb_common::{
    AffinityKey, AffinityValue, Backend, CT_DIR_FORWARD, CtEntry, CtKey, FragKey, FragValue,
    FrontendStats, IPPROTO_UDP, ServiceKey, ServiceValue, SlotKey, SockRevKey, SockRevValue,
    SockStats, SourceRangeKey, SweepItem, XdpStats,
    conntrack::{SWEEP_ENTRY, SWEEP_IF_ENDED, expired},
    dns::{DnsAnswer, DnsKey, DnsZone},
    events::{
        EVENTS, LRU_AFFINITY, LRU_AGENT_DELETED, LRU_CT, LRU_DELETED, LRU_FAILED, LRU_FRAGS,
        LRU_INSERTED, LRU_SOCK_REVERSE,
    },
    limits::{
        MAP_AFFINITY, MAP_BACKENDS, MAP_CT, MAP_DNS, MAP_DNS_ZONE, MAP_EVENTS, MAP_FRAGS,
        MAP_MAGLEV, MAP_SERVICES, MAP_SLOTS, MAP_SOCK_REVERSE, MAP_SOCK_STATS, MAP_SOURCE_RANGES,
        MAP_STATS, MAP_XDP_STATS,
    },
    maglev::{Maglev, Weighted, identity},
};

use super::{
    counters::{PerFrontend, Slots},
    raw,
    sweep::Sweeper,
};
use crate::{
    entries::{MaglevSpec, MapState, ip_of, l3},
    plan::Protocol,
    reconcile::{MapWriter, TableWrite, dns::DnsEntries},
};

/// `BPF_F_INNER_MAP`: an inner map of any size may stand in for the template.
const BPF_F_INNER_MAP: u32 = 1 << 12;

pub struct Maps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, Backend>,
    slots: HashMap<MapData, SlotKey, u32>,
    conntrack: HashMap<MapData, CtKey, CtEntry>,
    affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    maglev: HashOfMaps<MapData, u32, Array<MapData, u32>>,
    /// The same map, for the batch updates aya does not offer.
    maglev_fd: OwnedFd,
    source_ranges: LpmTrie<MapData, SourceRangeKey, u32>,
    stats: PerFrontend<FrontendStats>,
    sock_stats: PerFrontend<SockStats>,
    xdp_stats: PerCpuHashMap<MapData, u32, XdpStats>,
    fragments: HashMap<MapData, FragKey, FragValue>,
    sock_reverse: HashMap<MapData, SockRevKey, SockRevValue>,
    /// The DNS responder's names and its settings.
    dns: HashMap<MapData, DnsKey, DnsAnswer>,
    dns_zone: Array<MapData, DnsZone>,
    /// Datapath events and the LRU maps' bookkeeping (see `svclb_common::events`).
    events: Slots<u64>,
    /// The seed every Maglev table is built with (the size comes with each table).
    seed: Maglev,
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<Map> {
    ebpf.take_map(name)
        .with_context(|| format!("the datapath object has no map {name}"))
}

fn open_map(dir: &Path, name: &str) -> Result<Map> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "opening pinned map {} (is an agent using this --bpffs-dir?)",
            path.display()
        )
    })?;
    Map::from_map_data(data).with_context(|| format!("map {}", path.display()))
}

fn hash<K: aya::Pod, V: aya::Pod>(map: Map, name: &str) -> Result<HashMap<MapData, K, V>> {
    HashMap::try_from(map).with_context(|| format!("map {name}"))
}

/// The source-range key of `net` for frontend `id`: the id's 32 bits, then the prefix.
fn range_key(id: u32, net: IpNet) -> Key<SourceRangeKey> {
    let (addr, _) = l3(net.addr());
    Key::new(
        32 + u32::from(net.prefix_len()),
        SourceRangeKey {
            svc_id_be: id.to_be(),
            addr,
        },
    )
}

impl Maps {
    fn from_maps(mut get: impl FnMut(&str) -> Result<Map>, seed: Maglev) -> Result<Self> {
        let maglev = get(MAP_MAGLEV)?;
        let Map::HashOfMaps(data) = &maglev else {
            bail!("map {MAP_MAGLEV} is not a hash of maps");
        };
        let maglev_fd = data.fd().as_fd().try_clone_to_owned()?;
        Ok(Self {
            services: hash(get(MAP_SERVICES)?, MAP_SERVICES)?,
            backends: hash(get(MAP_BACKENDS)?, MAP_BACKENDS)?,
            slots: hash(get(MAP_SLOTS)?, MAP_SLOTS)?,
            conntrack: hash(get(MAP_CT)?, MAP_CT)?,
            affinity: hash(get(MAP_AFFINITY)?, MAP_AFFINITY)?,
            maglev: HashOfMaps::try_from(maglev).with_context(|| format!("map {MAP_MAGLEV}"))?,
            maglev_fd,
            source_ranges: LpmTrie::try_from(get(MAP_SOURCE_RANGES)?)
                .with_context(|| format!("map {MAP_SOURCE_RANGES}"))?,
            stats: PerFrontend::new(get(MAP_STATS)?, MAP_STATS)?,
            sock_stats: PerFrontend::new(get(MAP_SOCK_STATS)?, MAP_SOCK_STATS)?,
            xdp_stats: PerCpuHashMap::try_from(get(MAP_XDP_STATS)?)
                .with_context(|| format!("map {MAP_XDP_STATS}"))?,
            fragments: hash(get(MAP_FRAGS)?, MAP_FRAGS)?,
            sock_reverse: hash(get(MAP_SOCK_REVERSE)?, MAP_SOCK_REVERSE)?,
            dns: hash(get(MAP_DNS)?, MAP_DNS)?,
            dns_zone: Array::try_from(get(MAP_DNS_ZONE)?)
                .with_context(|| format!("map {MAP_DNS_ZONE}"))?,
            events: Slots::new(get(MAP_EVENTS)?, MAP_EVENTS)?,
            seed,
        })
    }

    /// Takes the maps out of a freshly loaded object; Maglev tables are built with `seed`.
    pub fn take(ebpf: &mut Ebpf, seed: Maglev) -> Result<Self> {
        Self::from_maps(|name| take_map(ebpf, name), seed)
    }

    /// Opens the maps an agent pinned in `dir` (for reading).
    pub fn open_pinned(dir: &Path) -> Result<Self> {
        Self::from_maps(|name| open_map(dir, name), Maglev::default())
    }

    /// Reads what the maps hold, exactly (a Maglev table's recipe is not recorded in the
    /// kernel: tables read back as [`MaglevSpec::unknown`]).
    pub fn read(&self) -> Result<MapState> {
        let mut state = MapState::default();
        for entry in self.services.iter() {
            let (key, value) = entry.context("reading map SVCLB_SERVICES")?;
            state.services.insert(key, value);
        }
        for entry in self.slots.iter() {
            let (key, value) = entry.context("reading map SVCLB_SLOTS")?;
            state.slots.insert(key, value);
        }
        for entry in self.backends.iter() {
            let (id, backend) = entry.context("reading map SVCLB_BACKENDS")?;
            state.backends.insert(id, backend);
        }
        for id in self.maglev.keys() {
            let id = id.context("reading map SVCLB_MAGLEV")?;
            state.tables.insert(id, MaglevSpec::unknown());
        }
        // The trie's keys hold no family: a range has its frontend's (every range of a
        // frontend is of the frontend's family). A range whose frontend is gone is read by its
        // length; it is deleted by its bytes, which any reading keeps.
        let families: std::collections::HashMap<u32, u8> = state
            .services
            .iter()
            .map(|(key, value)| (value.id, key.family))
            .collect();
        for key in self.source_ranges.keys() {
            let key = key.context("reading map SVCLB_SOURCE_RANGES")?;
            let data = key.data();
            let svc_id = u32::from_be(data.svc_id_be);
            let family = families
                .get(&svc_id)
                .copied()
                .unwrap_or(if key.prefix_len() > 32 + 32 {
                    svclb_common::FAMILY_V6
                } else {
                    svclb_common::FAMILY_V4
                });
            let addr = ip_of(&data.addr, family);
            let prefix = u8::try_from(key.prefix_len().saturating_sub(32)).unwrap_or(u8::MAX);
            if let Ok(net) = IpNet::new(addr, prefix) {
                state.source_ranges.insert((svc_id, net));
            }
        }
        Ok(state)
    }

    /// The services-map entry of one frontend.
    pub fn service(&self, key: &ServiceKey) -> Option<ServiceValue> {
        self.services.get(key, 0).ok()
    }

    /// The backend id in one slot.
    pub fn slot(&self, key: &SlotKey) -> Option<u32> {
        self.slots.get(key, 0).ok()
    }

    pub fn backend(&self, id: u32) -> Option<Backend> {
        self.backends.get(&id, 0).ok()
    }

    /// Lets go of backends that left a frontend (pairs from [`MapState::departed`]): removes,
    /// through the sweep program, the forward conntrack entries of that frontend's UDP flows
    /// to them, so the clients' next datagrams pick a live backend (established TCP keeps its
    /// backend, as with kube-proxy), and the session affinities that point at them. The
    /// datapath checks that a flow's backend still exists; this covers a backend another
    /// frontend keeps.
    ///
    /// Reply entries stay: a datagram may be on its way to the old backend right now (the
    /// client sent it just before its forward entry went), and its answer must still come
    /// back from the frontend's address. They go with the conntrack's idle timeout.
    pub fn purge(&mut self, sweeper: &Sweeper, departed: &BTreeSet<(u32, u32)>) -> Result<Purged> {
        let flows: Vec<SweepItem> = self
            .conntrack
            .iter()
            // An entry evicted while the map is walked is simply not seen.
            .filter_map(Result::ok)
            .filter(|(key, entry)| {
                key.proto == IPPROTO_UDP
                    && key.dir == CT_DIR_FORWARD
                    && departed.contains(&(entry.svc_id, entry.backend_id))
            })
            .map(|(key, entry)| sweep_item(key, &entry, SWEEP_ENTRY))
            .collect();
        let affinities: Vec<AffinityKey> = self
            .affinity
            .iter()
            .filter_map(Result::ok)
            .filter(|(key, value)| departed.contains(&(key.svc_id, value.backend_id)))
            .map(|(key, _)| key)
            .collect();
        let mut purged = Purged {
            // In the kernel: a flow that took one of these keys over since the walk stays.
            flows: sweeper.run(&flows)?,
            ..Purged::default()
        };
        for key in affinities {
            purged.affinities += usize::from(self.affinity.remove(&key).is_ok());
        }
        self.events
            .add(LRU_AFFINITY + LRU_AGENT_DELETED, purged.affinities as u64)?;
        Ok(purged)
    }

    /// Deletes the conntrack entries of flows that are over (see
    /// [`svclb_common::conntrack::flow_ended`]: idle past their timeout, 10 s after a FIN or
    /// RST, 60 s for UDP, 24 h for TCP without either, and quiet the other way too), each
    /// with the other direction of its flow, so their SNAT ports and room are free again.
    /// The walk here only finds candidates; the sweep program decides on each in the
    /// kernel, by the entry as it is then. `now_ns` is CLOCK_MONOTONIC, the datapath's clock.
    /// Returns how many entries went, and how many the walk left.
    pub fn sweep(&mut self, sweeper: &Sweeper, now_ns: u64) -> Result<Swept> {
        let mut seen = 0usize;
        let ended: Vec<SweepItem> = self
            .conntrack
            .iter()
            .filter_map(Result::ok)
            .inspect(|_| seen += 1)
            .filter(|(key, entry)| expired(entry, key.proto, now_ns))
            .map(|(key, entry)| sweep_item(key, &entry, SWEEP_IF_ENDED))
            .collect();
        let removed = sweeper.run(&ended)?;
        Ok(Swept {
            removed,
            left: seen.saturating_sub(removed),
        })
    }

    /// Number of conntrack entries (both directions of every flow): a walk of the whole map,
    /// one syscall an entry, for the CLI. The agent counts them in its sweep instead.
    pub fn conntrack_len(&self) -> usize {
        count_keys(&self.conntrack)
    }

    /// Number of session-affinity entries.
    pub fn affinity_len(&self) -> usize {
        count_keys(&self.affinity)
    }

    fn open_counters(&mut self, id: u32) -> Result<()> {
        self.stats.open(id)?;
        self.sock_stats.open(id)
    }

    /// Gives every frontend of `programmed` its counters, and removes those of ids no
    /// frontend has (after adopting maps an earlier run, or an older build, left).
    pub fn settle_counters(&mut self, programmed: &MapState) -> Result<()> {
        let ids: BTreeSet<u32> = programmed.services.values().map(|v| v.id).collect();
        for id in &ids {
            self.open_counters(*id)?;
        }
        self.stats.retain(&ids)?;
        self.sock_stats.retain(&ids)
    }

    /// Frontend `id`'s counters, summed over the CPUs.
    pub fn stats(&self, id: u32) -> Option<FrontendStats> {
        self.stats.get(id)
    }

    /// Frontend `id`'s socket-level counters, summed over the CPUs.
    pub fn sock_stats(&self, id: u32) -> Option<SockStats> {
        self.sock_stats.get(id)
    }

    /// What the XDP program did on each uplink (by ifindex), summed over the CPUs.
    pub fn xdp_stats(&self) -> Vec<(u32, XdpStats)> {
        self.xdp_stats
            .iter()
            .flatten()
            .map(|(ifindex, cpus)| {
                let sum = cpus.iter().fold(XdpStats::default(), |sum, c| sum.plus(*c));
                (ifindex, sum)
            })
            .collect()
    }
}

impl Maps {
    /// The DNS responder's entries, as the kernel holds them.
    pub fn read_dns(&self) -> Result<DnsEntries> {
        let mut out = DnsEntries::new();
        for entry in self.dns.iter() {
            let (key, value) = entry.with_context(|| format!("reading {MAP_DNS}"))?;
            out.insert(key, value);
        }
        Ok(out)
    }

    /// Turns the DNS responder on with `zone`, or off.
    /// Puts `host_netns` (the network namespace whose sockets the hooks still translate) in
    /// the zone an earlier run left, if there is one: until this run routes the host's
    /// queries to the responder, they go to the DNS service.
    pub fn set_dns_host_netns(&mut self, host_netns: u64) -> Result<()> {
        let mut zone = self
            .dns_zone
            .get(&0, 0)
            .with_context(|| format!("reading {MAP_DNS_ZONE}"))?;
        if zone.len == 0 || zone.host_netns == host_netns {
            return Ok(());
        }
        zone.host_netns = host_netns;
        self.set_dns_zone(Some(&zone))
    }

    pub fn set_dns_zone(&mut self, zone: Option<&DnsZone>) -> Result<()> {
        // SAFETY: plain old data; all zero is a zone of length 0: off.
        let off: DnsZone = unsafe { std::mem::zeroed() };
        self.dns_zone
            .set(0, zone.unwrap_or(&off), 0)
            .with_context(|| format!("writing {MAP_DNS_ZONE}"))
    }

    /// The LRU flow maps' fill and bookkeeping, the conntrack's fill being
    /// `conntrack_entries` (its sweep counts them); the others are walked here.
    pub fn lru_fills(&self, conntrack_entries: usize) -> Vec<LruFill> {
        let affinity = self.affinity_len();
        let fragments = count_keys(&self.fragments);
        let sockets = count_keys(&self.sock_reverse);
        vec![
            self.lru_fill(LRU_CT, MAP_CT, conntrack_entries, self.conntrack.map()),
            self.lru_fill(LRU_AFFINITY, MAP_AFFINITY, affinity, self.affinity.map()),
            self.lru_fill(LRU_FRAGS, MAP_FRAGS, fragments, self.fragments.map()),
            self.lru_fill(
                LRU_SOCK_REVERSE,
                MAP_SOCK_REVERSE,
                sockets,
                self.sock_reverse.map(),
            ),
        ]
    }

    fn lru_fill(&self, base: u32, map: &str, entries: usize, data: &MapData) -> LruFill {
        let count = |which: u32| self.events.get(base + which).unwrap_or_default();
        LruFill {
            map: map.to_owned(),
            entries,
            capacity: data.info().map_or(0, |info| info.max_entries()),
            inserted: count(LRU_INSERTED),
            deleted: count(LRU_DELETED) + count(LRU_AGENT_DELETED),
            failed: count(LRU_FAILED),
        }
    }

    /// Counts `n` entries the agent deleted from the socket reverse map.
    pub fn count_socket_entries_deleted(&mut self, n: u64) -> Result<()> {
        self.events.add(LRU_SOCK_REVERSE + LRU_AGENT_DELETED, n)
    }

    /// How often each datapath event happened (see `svclb_common::events`), by label, summed
    /// over the CPUs.
    pub fn events(&self) -> Vec<(&'static str, u64)> {
        EVENTS
            .iter()
            .map(|(id, label, _)| (*label, self.events.get(*id).unwrap_or_default()))
            .collect()
    }
}

/// Entries in `map`: a walk, one syscall an entry (an entry evicted meanwhile is not seen).
fn count_keys<K: aya::Pod, V: aya::Pod>(map: &HashMap<MapData, K, V>) -> usize {
    map.keys().filter(Result::is_ok).count()
}

/// An LRU flow map's fill, and what went through it since the map was made (see
/// `svclb_common::events`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LruFill {
    pub map: String,
    pub entries: usize,
    pub capacity: u32,
    /// New entries the datapath made.
    pub inserted: u64,
    /// Entries the datapath or the agent deleted.
    pub deleted: u64,
    /// Inserts that failed.
    pub failed: u64,
}

impl LruFill {
    /// Entries the map lost to eviction: what went in, less what was deleted and what it
    /// holds. The counters and the walk are not one snapshot, so this lags the truth by the
    /// entries made during the walk, and is read as a running maximum.
    pub fn evicted(&self) -> u64 {
        self.inserted
            .saturating_sub(self.deleted)
            .saturating_sub(self.entries as u64)
    }
}

fn sweep_item(key: CtKey, entry: &CtEntry, mode: u32) -> SweepItem {
    SweepItem {
        key,
        created_ns: entry.created_ns,
        mode,
        _pad: 0,
    }
}

/// What [`Maps::sweep`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Entries deleted.
    pub removed: usize,
    /// Entries the walk found and left.
    pub left: usize,
}

/// What [`Maps::purge`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    /// Forward conntrack entries (one per flow).
    pub flows: usize,
    pub affinities: usize,
}

/// A fresh inner array holding a frontend's Maglev table.
fn new_table(
    seed: Maglev,
    spec: &MaglevSpec,
    backends: &[(u32, Backend)],
) -> Result<Array<MapData, u32>> {
    let table = build_table(seed, spec, backends)?;
    let inner = Array::<MapData, u32>::create(spec.size, BPF_F_INNER_MAP)
        .context("creating a Maglev table")?;
    raw::fill_u32_array(inner.map().fd().as_fd(), &table).context("filling a Maglev table")?;
    Ok(inner)
}

/// The Maglev table of `spec` as backend ids.
fn build_table(seed: Maglev, spec: &MaglevSpec, backends: &[(u32, Backend)]) -> Result<Vec<u32>> {
    let maglev = Maglev {
        table_size: spec.size,
        hash_seed: seed.hash_seed,
    };
    let weighted: Vec<Weighted> = backends
        .iter()
        .map(|(_, b)| {
            let protocol = Protocol::from_number(b.proto)
                .map_or_else(|| b.proto.to_string(), |p| p.to_string());
            Weighted {
                identity: identity(ip_of(&b.addr, b.family), u16::from_be(b.port_be), &protocol),
                weight: 1,
            }
        })
        .collect();
    let table = maglev.table(&weighted)?;
    Ok(table.into_iter().map(|i| backends[i as usize].0).collect())
}

impl MapWriter for Maps {
    type Error = anyhow::Error;

    fn put_backend(&mut self, id: u32, backend: &Backend) -> Result<()> {
        Ok(self.backends.insert(&id, backend, 0)?)
    }

    fn del_backend(&mut self, id: u32) -> Result<()> {
        Ok(self.backends.remove(&id)?)
    }

    fn put_slot(&mut self, key: SlotKey, backend_id: u32) -> Result<()> {
        Ok(self.slots.insert(&key, &backend_id, 0)?)
    }

    fn del_slot(&mut self, key: SlotKey) -> Result<()> {
        Ok(self.slots.remove(&key)?)
    }

    /// Gives the frontend its counters first (unless it has them), so the datapath counts
    /// its first packet. Counters that cannot be made (out of memory) are only warned of.
    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<()> {
        if let Err(err) = self.open_counters(value.id) {
            tracing::warn!("frontend id {}: no counters: {err:#}", value.id);
        }
        Ok(self.services.insert(key, value, 0)?)
    }

    /// Deletes the entry, then its id's counters, so the next frontend handed the id starts
    /// from zero.
    fn del_service(&mut self, key: &ServiceKey) -> Result<()> {
        let id = self.services.get(key, 0).ok().map(|value| value.id);
        self.services.remove(key)?;
        // The entry is gone whatever happens here: a failure must not report it kept.
        if let Some(id) = id
            && let Err(err) = self.stats.close(id).and(self.sock_stats.close(id))
        {
            tracing::warn!("counters of frontend id {id} not removed: {err:#}");
        }
        Ok(())
    }

    /// Fills a fresh inner array and swaps it in with one update of the outer map: the
    /// datapath sees the old table or the new one, never a mix.
    fn put_table(&mut self, id: u32, spec: &MaglevSpec, backends: &[(u32, Backend)]) -> Result<()> {
        let inner = new_table(self.seed, spec, backends)?;
        Ok(self.maglev.insert(&id, &inner, 0)?)
    }

    /// Fills each table's fresh inner array, then swaps them all in with one batch update of
    /// the outer map. The kernel waits for an RCU grace period after every update of a map
    /// of maps (milliseconds each, two minutes for 4,000 tables one by one); a batch waits
    /// once. Tables the batch did not write are put one by one, for their own errors.
    fn put_tables(&mut self, tables: &[TableWrite<'_>]) -> Vec<Result<()>> {
        let mut results: Vec<Result<()>> = Vec::with_capacity(tables.len());
        let mut ready = Vec::new();
        for (i, t) in tables.iter().enumerate() {
            let made = new_table(self.seed, t.spec, t.backends);
            results.push(made.map(|inner| ready.push((i, t.id, inner))));
        }
        let ids: Vec<u32> = ready.iter().map(|(_, id, _)| *id).collect();
        let fds: Vec<u32> = ready
            .iter()
            .map(|(_, _, inner)| inner.map().fd().as_fd().as_raw_fd() as u32)
            .collect();
        let written = match raw::update_batch_u32(self.maglev_fd.as_fd(), &ids, &fds) {
            Ok(()) => ready.len(),
            Err((written, _)) => written,
        };
        for (i, id, inner) in &ready[written..] {
            results[*i] = self.maglev.insert(id, inner, 0).map_err(Into::into);
        }
        results
    }

    fn del_table(&mut self, id: u32) -> Result<()> {
        Ok(self.maglev.remove(&id)?)
    }

    fn put_source_range(&mut self, id: u32, net: IpNet) -> Result<()> {
        Ok(self.source_ranges.insert(&range_key(id, net), &1, 0)?)
    }

    fn del_source_range(&mut self, id: u32, net: IpNet) -> Result<()> {
        Ok(self.source_ranges.remove(&range_key(id, net))?)
    }

    fn put_dns(&mut self, key: &DnsKey, value: &DnsAnswer) -> Result<()> {
        Ok(self.dns.insert(key, value, 0)?)
    }

    fn del_dns(&mut self, key: &DnsKey) -> Result<()> {
        Ok(self.dns.remove(key)?)
    }
}
