//! The datapath's header parsing, as a library: the eBPF programs (`main.rs`) use it, and the
//! host's coverage-guided fuzzer (`fuzz/fuzz_targets/packet.rs`) runs the same code over any
//! bytes.

#![no_std]

pub mod parse;
pub mod quote;
