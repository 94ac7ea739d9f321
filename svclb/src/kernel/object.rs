//! The compiled datapath object, embedded in the binary.

/// The eBPF object built from `svclb-ebpf` by this crate's build script.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/svclb"));

/// TC ingress program of pod-facing devices.
pub const POD_PROGRAM: &str = "svclb_pod";
/// TC ingress program of uplinks.
pub const UPLINK_PROGRAM: &str = "svclb_uplink";
/// XDP program of uplinks.
pub const XDP_PROGRAM: &str = "svclb_xdp";
/// The conntrack sweep program, run by the agent (never attached).
pub const SWEEP_PROGRAM: &str = "svclb_sweep";
