//! The datapath's header parsing and checksum arithmetic, as a library: the eBPF programs
//! (`main.rs`, and the benchmarks' traffic generator) use it, and the host's coverage-guided
//! fuzzer (`fuzz/fuzz_targets/packet.rs`) runs the same parser over any bytes.

#![no_std]

pub mod csum;
pub mod parse;
pub mod quote;
