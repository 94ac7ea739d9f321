//! The size of every map: one type from the command line to the loader (`max_entries`) and
//! to the planning of entries (what fits).

use svclb_common::limits::{
    AFFINITY_MAX, BACKENDS_MAX, CT_MAX, FRAGS_MAX, MAGLEV_MAX, MAP_BACKENDS, MAP_MAGLEV,
    MAP_SERVICES, MAP_SLOTS, MAP_SOURCE_RANGES, SERVICES_MAX, SLOTS_MAX, SOCK_REVERSE_MAX,
    SOURCE_RANGES_MAX,
};

/// Map capacities (`max_entries`), and the size of each Maglev table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub services: usize,
    pub slots: usize,
    pub backends: usize,
    /// How many frontends can have a Maglev table.
    pub maglev_tables: usize,
    /// Entries of each Maglev table (M).
    pub maglev_size: u32,
    pub source_ranges: usize,
    /// Flow directions tracked (two per flow).
    pub conntrack: usize,
    /// Session affinities (one per client and service).
    pub affinity: usize,
    /// Fragmented datagrams in flight.
    pub fragments: usize,
    /// Sockets socket-level load balancing sent to a backend.
    pub sock_reverse: usize,
}

impl Capacity {
    /// The datapath's compiled-in sizes.
    pub const DEFAULT: Self = Self {
        services: SERVICES_MAX,
        slots: SLOTS_MAX,
        backends: BACKENDS_MAX,
        maglev_tables: MAGLEV_MAX,
        maglev_size: svclb_common::maglev::DEFAULT_TABLE_SIZE,
        source_ranges: SOURCE_RANGES_MAX,
        conntrack: CT_MAX,
        affinity: AFFINITY_MAX,
        fragments: FRAGS_MAX,
        sock_reverse: SOCK_REVERSE_MAX,
    };

    /// The capacity of a map the agent writes, by name (see [`super::MapState::fills`]).
    pub fn of(&self, map: &str) -> usize {
        match map {
            MAP_SERVICES => self.services,
            MAP_SLOTS => self.slots,
            MAP_BACKENDS => self.backends,
            MAP_MAGLEV => self.maglev_tables,
            MAP_SOURCE_RANGES => self.source_ranges,
            _ => 0,
        }
    }
}

impl Default for Capacity {
    fn default() -> Self {
        Self::DEFAULT
    }
}
