#![no_std]
#![no_main]
#![allow(
    clippy::not_unsafe_ptr_arg_deref,
    reason = "the entry points aya's macros generate take the kernel's context pointer"
)]

mod conntrack;
mod forward;
mod fragment;
mod icmp;
mod maps;
mod nat;
mod parse;
mod reject;
mod select;
mod sweep;
mod tc;
mod xdp;

use aya_ebpf::{
    bindings::xdp_action::XDP_PASS,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

/// TC ingress on the host side of pod devices: east-west traffic and replies of local
/// backends.
#[classifier]
pub fn svclb_pod(ctx: TcContext) -> i32 {
    tc::ingress(&ctx, tc::Side::Pod)
}

/// TC ingress on uplinks: north-south traffic and replies of remote backends.
#[classifier]
pub fn svclb_uplink(ctx: TcContext) -> i32 {
    tc::ingress(&ctx, tc::Side::Uplink)
}

/// XDP on uplinks: drops what no frontend admits before the stack sees it.
#[xdp]
pub fn svclb_xdp(ctx: XdpContext) -> u32 {
    xdp::early(&ctx).unwrap_or(XDP_PASS)
}

/// Never attached: the agent runs it (BPF_PROG_TEST_RUN) to delete the conntrack entries of
/// flows that are over (see `sweep`).
#[classifier]
pub fn svclb_sweep(ctx: TcContext) -> i32 {
    sweep::run(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
