//! Map names and default capacities. The eBPF objects are compiled with these capacities;
//! the agent can override them at load time.

pub const MAP_SERVICES: &str = "SVCLB_SERVICES";
pub const MAP_BACKENDS: &str = "SVCLB_BACKENDS";
pub const MAP_SLOTS: &str = "SVCLB_SLOTS";
pub const MAP_CT: &str = "SVCLB_CT";
pub const MAP_MAGLEV: &str = "SVCLB_MAGLEV";
pub const MAP_AFFINITY: &str = "SVCLB_AFFINITY";
pub const MAP_SOURCE_RANGES: &str = "SVCLB_SOURCE_RANGES";
pub const MAP_STATS: &str = "SVCLB_STATS";
pub const MAP_FRAGS: &str = "SVCLB_FRAGS";
pub const MAP_SOCK_REVERSE: &str = "SVCLB_SOCK_REVERSE";
pub const MAP_SOCK_STATS: &str = "SVCLB_SOCK_STATS";
pub const MAP_CONFIG: &str = "SVCLB_CONFIG";
pub const MAP_XDP_STATS: &str = "SVCLB_XDP_STATS";
pub const MAP_XDP_PORTS: &str = "SVCLB_XDP_PORTS";
pub const MAP_EVENTS: &str = "SVCLB_EVENTS";
pub const MAP_ROUTE_EPOCH: &str = "SVCLB_ROUTE_EPOCH";
pub const MAP_DNS: &str = "SVCLB_DNS";
pub const MAP_DNS_ZONE: &str = "SVCLB_DNS_ZONE";

pub const SERVICES_MAX: usize = 65_536;
pub const BACKENDS_MAX: usize = 65_536;
pub const SLOTS_MAX: usize = 262_144;
pub const CT_MAX: usize = 262_144;
/// Frontends with a Maglev table (each table is its own inner array of M entries).
pub const MAGLEV_MAX: usize = 16_384;
/// The inner-map template of `SVCLB_MAGLEV`; tables of every allowed size fit it because it
/// is created with `BPF_F_INNER_MAP`.
pub const MAGLEV_TEMPLATE_SIZE: usize = 251;
pub const AFFINITY_MAX: usize = 65_536;
pub const SOURCE_RANGES_MAX: usize = 16_384;
/// Fragmented datagrams in flight whose first fragment was translated (Cilium's default).
pub const FRAGS_MAX: usize = 8_192;
/// Connected UDP sockets socket-level load balancing sent to a backend, with the frontend each
/// asked for (Cilium's `lb4_reverse_sk` default, which holds TCP sockets too). Entries leave
/// with their socket; the least recently used goes first when full.
pub const SOCK_REVERSE_MAX: usize = 262_144;
/// Uplinks with XDP counters (the least recently counted goes first: a device that went away).
pub const XDP_STATS_MAX: usize = 256;
/// Uplinks the XDP program may redirect a packet to (the agent adds each uplink it attached
/// XDP to).
pub const XDP_PORTS_MAX: usize = 256;
/// A later fragment follows its first fragment's translation for this long (Linux gives up
/// reassembling a datagram after 30 s, `ipfrag_time`).
pub const FRAG_TIMEOUT_NS: u64 = 30_000_000_000;
/// Frontends with counters at once: within one sync a frontend's counters may be removed
/// after its successor's are made, so twice the services map's capacity leaves room. The
/// agent sizes it from `--services-map-size`. A limit, not memory: the counter maps are not
/// preallocated, and hold an entry per programmed frontend only.
pub const STATS_MAX: usize = 2 * SERVICES_MAX;
/// Source ports this node allocates when it SNATs a flow to a remote backend, when the agent
/// has set none (`--snat-ports`, whose default avoids the node's own ephemeral ports): above
/// Linux's default ephemeral range (32768-60999).
pub const SNAT_PORT_MIN: u16 = 61_000;
/// DNS names and query types answered in place (`SVCLB_DNS`, not preallocated: a Service
/// has a few).
pub const DNS_MAX: usize = 262_144;
pub const SNAT_PORT_MAX: u16 = 65_535;
