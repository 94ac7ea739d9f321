//! The compiled datapath object, embedded in the binary.

/// The eBPF object built from `svclb-ebpf` by this crate's build script.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/svclb"));

/// Name of the TC ingress program in [`OBJECT`].
pub const INGRESS_PROGRAM: &str = "svclb_ingress";
