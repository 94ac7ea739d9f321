//! Helpers shared by the integration tests and the benchmarks (kept out of the lab library,
//! which must not depend on the agent crate: xtask builds it before bpf-linker exists).
#![allow(dead_code, reason = "the benchmarks use only part of it")]

pub mod datapath;
pub mod fixture;
pub mod trafficgen;
