//! The compiled datapath object, embedded in the binary.

/// The eBPF object built from `svclb-ebpf` by this crate's build script.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/svclb"));

/// The benchmarks' traffic generator, sink and null forwarder (`svclb-ebpf`'s
/// `src/bin/trafficgen.rs`); the agent never loads it.
pub static TRAFFICGEN_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/svclb-trafficgen"));

/// TC ingress program of pod-facing devices.
pub const POD_PROGRAM: &str = "svclb_pod";
/// TC ingress program of uplinks.
pub const UPLINK_PROGRAM: &str = "svclb_uplink";
/// XDP program of uplinks.
pub const XDP_PROGRAM: &str = "svclb_xdp";
/// The conntrack sweep program, run by the agent (never attached).
pub const SWEEP_PROGRAM: &str = "svclb_sweep";

/// The socket hooks of kind `cgroup_sock_addr`, with the hook each attaches to.
pub const SOCK_ADDR_PROGRAMS: &[(&str, &str)] = &[
    ("svclb_connect4", "connect4"),
    ("svclb_connect6", "connect6"),
    ("svclb_sendmsg4", "sendmsg4"),
    ("svclb_sendmsg6", "sendmsg6"),
    ("svclb_recvmsg4", "recvmsg4"),
    ("svclb_recvmsg6", "recvmsg6"),
    ("svclb_getpeername4", "getpeername4"),
    ("svclb_getpeername6", "getpeername6"),
];
/// The socket hook that deletes a closing socket's reverse entry.
pub const SOCK_RELEASE_PROGRAM: &str = "svclb_sock_release";
