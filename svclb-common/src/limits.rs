//! Map names and default capacities. The eBPF objects are compiled with these capacities;
//! the agent can override them at load time.

pub const MAP_SERVICES: &str = "SVCLB_SERVICES";
pub const MAP_BACKENDS: &str = "SVCLB_BACKENDS";
pub const MAP_SLOTS: &str = "SVCLB_SLOTS";
pub const MAP_CT: &str = "SVCLB_CT";

/// Every map the agent pins, in the order `svclb list` and cleanup walk them.
pub const PINNED_MAPS: [&str; 4] = [MAP_SERVICES, MAP_BACKENDS, MAP_SLOTS, MAP_CT];

pub const SERVICES_MAX: usize = 65_536;
pub const BACKENDS_MAX: usize = 65_536;
pub const SLOTS_MAX: usize = 262_144;
pub const CT_MAX: usize = 262_144;
