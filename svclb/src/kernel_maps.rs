//! Typed handles on the pinned maps: reading them back into a [`MapState`] and writing the
//! reconciler's changes.

use std::path::Path;

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{HashMap, Map, MapData, MapError},
};
use svclb_common::{
    Backend, CtEntry, CtKey, ServiceKey, ServiceValue, SlotKey,
    limits::{MAP_BACKENDS, MAP_CT, MAP_SERVICES, MAP_SLOTS},
};

use crate::{mapstate::MapState, reconcile::MapWriter};

pub struct Maps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, Backend>,
    slots: HashMap<MapData, SlotKey, u32>,
    conntrack: HashMap<MapData, CtKey, CtEntry>,
}

fn take<K: aya::Pod, V: aya::Pod>(ebpf: &mut Ebpf, name: &str) -> Result<HashMap<MapData, K, V>> {
    let map = ebpf
        .take_map(name)
        .with_context(|| format!("the datapath object has no map {name}"))?;
    HashMap::try_from(map).with_context(|| format!("map {name}"))
}

fn open<K: aya::Pod, V: aya::Pod>(dir: &Path, name: &str) -> Result<HashMap<MapData, K, V>> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "opening pinned map {} (is an agent using this --bpffs-dir?)",
            path.display()
        )
    })?;
    let map = Map::from_map_data(data).with_context(|| format!("map {}", path.display()))?;
    HashMap::try_from(map).with_context(|| format!("map {}", path.display()))
}

impl Maps {
    /// Takes the maps out of a freshly loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            services: take(ebpf, MAP_SERVICES)?,
            backends: take(ebpf, MAP_BACKENDS)?,
            slots: take(ebpf, MAP_SLOTS)?,
            conntrack: take(ebpf, MAP_CT)?,
        })
    }

    /// Opens the maps an agent pinned in `dir`.
    pub fn open_pinned(dir: &Path) -> Result<Self> {
        Ok(Self {
            services: open(dir, MAP_SERVICES)?,
            backends: open(dir, MAP_BACKENDS)?,
            slots: open(dir, MAP_SLOTS)?,
            conntrack: open(dir, MAP_CT)?,
        })
    }

    /// Reads what the maps hold, exactly.
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

    /// Number of conntrack entries (both directions of every flow).
    pub fn conntrack_len(&self) -> usize {
        self.conntrack.keys().filter(Result::is_ok).count()
    }
}

impl MapWriter for Maps {
    type Error = MapError;

    fn put_backend(&mut self, id: u32, backend: &Backend) -> Result<(), MapError> {
        self.backends.insert(&id, backend, 0)
    }

    fn del_backend(&mut self, id: u32) -> Result<(), MapError> {
        self.backends.remove(&id)
    }

    fn put_slot(&mut self, key: SlotKey, backend_id: u32) -> Result<(), MapError> {
        self.slots.insert(&key, &backend_id, 0)
    }

    fn del_slot(&mut self, key: SlotKey) -> Result<(), MapError> {
        self.slots.remove(&key)
    }

    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), MapError> {
        self.services.insert(key, value, 0)
    }

    fn del_service(&mut self, key: &ServiceKey) -> Result<(), MapError> {
        self.services.remove(key)
    }
}
