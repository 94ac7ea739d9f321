//! What the incremental sync needs to know about the programmed state without walking it:
//! the ids in use (and the free ones), and how many slots and Maglev tables point at each
//! backend, so a backend is deleted as soon as nothing points at it.

use std::collections::HashMap;

use crate::entries::{Ids, MapState};

#[derive(Clone, Debug, Default)]
pub struct Index {
    pub(crate) ids: Ids,
    /// Slots and table entries pointing at each backend id (absent: none).
    pub(crate) refs: HashMap<u32, u32>,
}

impl Index {
    /// The index of `state` (after a full sync).
    pub fn of(state: &MapState) -> Self {
        let mut refs: HashMap<u32, u32> = HashMap::new();
        for id in state
            .slots
            .values()
            .chain(state.tables.values().flat_map(|t| &t.backends))
        {
            *refs.entry(*id).or_default() += 1;
        }
        Self {
            ids: Ids::of(state),
            refs,
        }
    }

    pub(super) fn add_ref(&mut self, id: u32) {
        *self.refs.entry(id).or_default() += 1;
    }

    pub(super) fn drop_ref(&mut self, id: u32) {
        if let Some(n) = self.refs.get_mut(&id) {
            *n -= 1;
            if *n == 0 {
                self.refs.remove(&id);
            }
        }
    }

    pub(super) fn is_referenced(&self, id: u32) -> bool {
        self.refs.contains_key(&id)
    }
}
