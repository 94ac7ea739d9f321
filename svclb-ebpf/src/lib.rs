//! The datapath's header parsing, checksum arithmetic and byte copies, as a library: the eBPF programs
//! (`main.rs`, and the benchmarks' traffic generator) use it, and the host's coverage-guided
//! fuzzer (`fuzz/fuzz_targets/packet.rs`) runs the same parser over any bytes.

#![no_std]

pub mod bytes;
pub mod csum;
pub mod parse;
pub mod quote;
