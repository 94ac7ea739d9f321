#![no_std]
#![no_main]
#![allow(
    clippy::not_unsafe_ptr_arg_deref,
    reason = "the entry points aya's macros generate take the kernel's context pointer"
)]

mod conntrack;
mod dns;
mod forward;
mod fragment;
mod frame;
mod icmp;
mod maps;
mod nat;
mod reject;
mod scratch;
mod select;
mod sock;
mod sweep;
mod tc;
mod xdp;

use svclb_ebpf::{parse, quote};

use aya_ebpf::{
    macros::{cgroup_sock, cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, SockContext, TcContext, XdpContext},
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

/// XDP on uplinks: north-south flows to remote backends finished at the driver, refusals
/// dropped, the rest passed to TC.
#[xdp]
pub fn svclb_xdp(ctx: XdpContext) -> u32 {
    let action = xdp::run(&ctx);
    xdp::count(&ctx, action);
    action
}

/// Socket-level load balancing (see `sock`): a connecting socket gets its backend.
#[cgroup_sock_addr(connect4)]
pub fn svclb_connect4(ctx: SockAddrContext) -> i32 {
    sock::forward(&ctx, false, sock::Call::Connect)
}

#[cgroup_sock_addr(connect6)]
pub fn svclb_connect6(ctx: SockAddrContext) -> i32 {
    sock::forward(&ctx, true, sock::Call::Connect)
}

/// A datagram of an unconnected UDP socket gets its backend.
#[cgroup_sock_addr(sendmsg4)]
pub fn svclb_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::forward(&ctx, false, sock::Call::Sendmsg)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn svclb_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock::forward(&ctx, true, sock::Call::Sendmsg)
}

/// A datagram from a backend shows the frontend as its source.
#[cgroup_sock_addr(recvmsg4)]
pub fn svclb_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx, false)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn svclb_recvmsg6(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx, true)
}

/// A socket connected to a backend shows the frontend as its peer.
#[cgroup_sock_addr(getpeername4)]
pub fn svclb_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx, false)
}

#[cgroup_sock_addr(getpeername6)]
pub fn svclb_getpeername6(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx, true)
}

/// A closing socket takes its reverse entry with it.
#[cgroup_sock(sock_release)]
pub fn svclb_sock_release(ctx: SockContext) -> i32 {
    sock::release(&ctx)
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

/// The object's license as the kernel reads it: GPL-compatible, so GPL-only helpers may be
/// called. The crate is GPL-2.0-only OR BSD-2-Clause (see LICENSE).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual BSD/GPL\0";
