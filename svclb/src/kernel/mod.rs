//! Everything that touches the kernel: the embedded datapath object ([`object`]), loading it
//! with its maps pinned on a bpf filesystem ([`loader`]), typed handles on the pinned maps
//! ([`maps`], which implement the reconciler's writer), where links are pinned ([`pins`]),
//! attaching the programs to devices ([`attach`]) and the conntrack sweep program ([`sweep`]).

pub mod addresses;
pub mod attach;
pub mod loader;
pub mod maps;
pub mod object;
pub mod pins;
pub mod sweep;
