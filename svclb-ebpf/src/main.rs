//! svclb datapath: entry points only. The work lives in the modules named for what they hold.
#![no_std]
#![no_main]
#![allow(
    clippy::not_unsafe_ptr_arg_deref,
    reason = "the entry points aya's #[classifier] generates take the kernel's skb pointer"
)]

mod conntrack;
mod lb;
mod maps;
mod nat;
mod parse;

use aya_ebpf::{bindings::TC_ACT_SHOT, macros::classifier, programs::TcContext};

/// TC ingress on pod-facing devices and uplinks: DNAT of new and tracked service flows, reverse
/// NAT of replies. Everything else passes untouched.
#[classifier]
pub fn svclb_ingress(ctx: TcContext) -> i32 {
    // An error means a rewrite helper failed part-way: the packet may be half translated, so it
    // is dropped rather than delivered with a wrong header or checksum.
    lb::ingress(&ctx).unwrap_or(TC_ACT_SHOT)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
