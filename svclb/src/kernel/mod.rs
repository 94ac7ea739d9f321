//! Everything that touches the kernel: the embedded datapath object ([`object`]), loading it
//! with its maps pinned on a bpf filesystem ([`loader`]), typed handles on the pinned maps
//! ([`maps`], which implement the reconciler's writer), where links are pinned ([`pins`]),
//! attaching the programs to devices ([`attach`]) and the socket hooks to a cgroup
//! ([`socket`]), the datapath's settings ([`config`]), the uplinks' addresses
//! ([`addresses`]), the conntrack sweep program ([`sweep`]), the route epoch ([`routes`])
//! and the veth pair that brings the host's DNS queries to the responder ([`host_pair`]).

pub mod addresses;
pub mod attach;
pub mod config;
mod counters;
pub mod host_pair;
mod link_update;
pub mod loader;
pub mod maps;
pub mod migrate;
pub mod object;
pub mod pins;
mod raw;
pub mod routes;
pub mod socket;
pub mod sweep;
pub mod udp_sockets;
