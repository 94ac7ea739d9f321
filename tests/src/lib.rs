//! The svclb lab: a small cluster built from network namespaces on one machine.
//!
//! ```text
//!            fabric namespace: bridge br0 (172.31.0.0/24)
//!        /                     |                      \
//!   node n1 (eth0 .11)     node n2 (eth0 .12)     external client (.100)
//!   pods 10.244.1.0/24     pods 10.244.2.0/24
//!   vethN <-> pod eth0     vethN <-> pod eth0
//! ```
//!
//! Every lab has unique namespace names, runs one agent per node inside that node's namespace
//! with its own pin directory, and is torn down on drop, even when a test panics. Backends are
//! real servers answering with their pod name over TCP (a line protocol, or HTTP for curl) and
//! UDP. All traffic stays on lab addresses and every client call has a timeout.

pub mod attached;
pub mod cgroup;
pub mod client;
pub mod control_plane;
pub mod cpu;
pub mod fake_api;
pub mod family;
pub mod helm;
pub mod kube_bins;
mod lab;
pub mod manifests;
pub mod musl;
pub mod netns;
pub mod packet;
pub mod packet6;
pub mod server;
pub mod sweep;
pub mod tools;
pub mod xdp_pass;

pub use lab::{LAB_PREFIX, Lab, LabSpec, Node, Pod, svclb_bin};

/// Whether this process can build labs (root).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Fails with a clear message unless running as root. Tests that need root are also marked
/// `#[ignore = "needs root"]`, so a plain `cargo test` reports them as ignored; `cargo xtask
/// test` runs them (as root) with `--include-ignored`.
pub fn require_root() -> anyhow::Result<()> {
    if is_root() {
        return Ok(());
    }
    anyhow::bail!("needs root (network namespaces and BPF): run `cargo xtask test` as root")
}
