//! Ids of frontends and backends: the one allocator, shared by the plan-to-entries step and
//! the incremental sync. A frontend keeps its id while it exists, a backend while any
//! frontend uses it; new ones get the lowest free id, never one still held by the maps.

use std::collections::{BTreeSet, HashMap};

use svclb_common::Backend;

use super::{BackendIdentity, MapState, backend_entry, identity};
use crate::plan::{Frontend, FrontendKey};

/// Ids handed out lowest first. An id given back is free for later takes; the caller gives it
/// back only once nothing of it is left in the maps.
#[derive(Clone, Debug, Default)]
pub struct IdPool {
    /// Free ids below `next`.
    holes: BTreeSet<u32>,
    next: u32,
}

impl IdPool {
    /// A pool that hands out none of `used` (repeats allowed).
    pub fn of(used: impl IntoIterator<Item = u32>) -> Self {
        let used: BTreeSet<u32> = used.into_iter().collect();
        let next = used.last().map_or(1, |max| max + 1);
        Self {
            holes: (1..next).filter(|id| !used.contains(id)).collect(),
            next,
        }
    }

    pub fn take(&mut self) -> u32 {
        self.holes.pop_first().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        })
    }

    pub fn give_back(&mut self, id: u32) {
        self.holes.insert(id);
    }
}

/// The ids the maps use and the pools new ones come from.
#[derive(Clone, Debug, Default)]
pub struct Ids {
    /// The id of each backend the maps hold, by identity.
    pub backends: HashMap<BackendIdentity, u32>,
    pub frontend_pool: IdPool,
    pub backend_pool: IdPool,
}

impl Ids {
    /// The ids of what `state` holds: none of them is handed out again.
    pub fn of(state: &MapState) -> Self {
        Self {
            backends: state
                .backends
                .iter()
                .map(|(id, backend)| (identity(backend), *id))
                .collect(),
            frontend_pool: IdPool::of(state.frontend_ids()),
            backend_pool: IdPool::of(state.backends.keys().copied()),
        }
    }

    /// The backends of `frontend` as map entries, in slot order, each with the id the maps
    /// hold it under, or else a new one. New ids are remembered in `fresh` (not in
    /// [`Ids::backends`], which says what the maps hold), so a backend new to several
    /// frontends gets one id.
    pub fn backends_of(
        &mut self,
        key: &FrontendKey,
        frontend: &Frontend,
        fresh: &mut HashMap<BackendIdentity, u32>,
    ) -> Vec<(u32, Backend)> {
        frontend
            .backends
            .iter()
            .map(|b| {
                let entry = backend_entry(b, key);
                let ident = identity(&entry);
                let id = match self.backends.get(&ident) {
                    Some(id) => *id,
                    None => *fresh
                        .entry(ident)
                        .or_insert_with(|| self.backend_pool.take()),
                };
                (id, entry)
            })
            .collect()
    }
}
