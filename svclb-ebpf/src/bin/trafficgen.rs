//! The benchmarks' traffic generator and null forwarder: XDP programs that are never part of
//! the datapath (`cargo xtask bench`'s saturation section and its tests load them).
//!
//! The generator works as a hardware traffic generator with two ports does: it sends frames
//! to the node's uplink from one device (`EGRESS`), and receives what the node forwarded on
//! another (`SINK`), in the same namespace. `svclb_gen` runs on the receiving device, where it
//! counts each frame, and on a feed device, where user space sends a few frames a millisecond
//! to keep the loop full; in both places, while the host lets it (`CIRCULATE`), it writes the
//! frame's whole header from the template the bench set (`HEADER`), gives it the next flow's
//! source address and port with checksums to match, and redirects it to `EGRESS`, as a NIC's
//! receive queue would deliver it to the node. What the node cannot take, its uplink's ring
//! drops, as a NIC ring would. (This replaces `BPF_PROG_RUN` in live-frame mode,
//! xdp-trafficgen's method, which some kernels refuse with EPERM.) The header is written
//! whole every time because the node under test rewrote it (DNAT, SNAT) on the way round.
//!
//! Flow `i` of a run has source address `base + i / PORTS` (its last 32 bits) and port
//! `PORT_BASE + i % PORTS`. With `FLOWS` at 0 every frame is a flow of its own (new flows);
//! otherwise frame `n` belongs to flow `n % FLOWS` (tracked flows).
//!
//! `svclb_redirect` sends every frame on to `EGRESS` untouched (the veth ceiling of
//! forwarding at XDP).

#![no_std]
#![no_main]

use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_DROP},
    btf_maps::{Array, PerCpuArray},
    helpers::generated::{bpf_ktime_get_ns, bpf_redirect},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use svclb_ebpf::csum::replaced;

/// Header bytes (Ethernet to the end of the L4 header) of flow 0, with valid checksums, as
/// 16-bit words in memory order.
#[unsafe(no_mangle)]
static HEADER: [u16; HEADER_MAX / 2] = [0; HEADER_MAX / 2];
/// How many of `HEADER`'s bytes are the header (even).
#[unsafe(no_mangle)]
static HEADER_LEN: u32 = 0;
/// 1 for IPv6, 0 for IPv4.
#[unsafe(no_mangle)]
static IPV6: u32 = 0;
/// 1 when the L4 header is UDP (whose IPv4 checksum may be 0: none), 0 for TCP.
#[unsafe(no_mangle)]
static UDP: u32 = 0;
/// Flows the frames cycle over; 0: every frame a new flow.
#[unsafe(no_mangle)]
static FLOWS: u64 = 0;
/// The template frame's length: `svclb_gen` drops frames of any other length (what the
/// devices send of their own), uncounted.
#[unsafe(no_mangle)]
static FRAME_LEN: u32 = 0;
/// Where `svclb_gen` and `svclb_redirect` send every frame.
#[unsafe(no_mangle)]
static EGRESS: u32 = 0;
/// The device `svclb_gen` counts the frames it receives on (what the node forwarded).
#[unsafe(no_mangle)]
static SINK: u32 = 0;

const HEADER_MAX: usize = 80;
const PORT_BASE: u64 = 1024;
const PORTS: u64 = 64_512;
const ETH_HLEN: usize = 14;

/// Frames generated (on the CPU that ran them).
#[btf_map]
static GENERATED: PerCpuArray<u64, 1> = PerCpuArray::new();
/// Frames received on `SINK` (on the CPU that ran it).
#[btf_map]
static RECEIVED: PerCpuArray<u64, 1> = PerCpuArray::new();
/// Until when (the monotonic clock, ns) the generator sends frames on; set by the host, and
/// a time so that a loop whose host died stops on its own. Before and after: it drops them.
#[btf_map]
static CIRCULATE: Array<u64, 1> = Array::new();

#[xdp]
pub fn svclb_gen(ctx: XdpContext) -> u32 {
    // SAFETY: read-only globals the loader set.
    let (frame_len, sink) = unsafe { (read_volatile(&FRAME_LEN), read_volatile(&SINK)) };
    if ctx.data() + frame_len as usize != ctx.data_end() {
        return XDP_DROP;
    }
    if ctx.ingress_ifindex() as u32 == sink {
        bump(&RECEIVED);
    }
    // SAFETY: a helper call without arguments.
    if CIRCULATE
        .get(0)
        .is_none_or(|&until| unsafe { bpf_ktime_get_ns() } >= until)
    {
        return XDP_DROP;
    }
    match generate(&ctx) {
        Some(()) => redirect_to_egress(),
        None => XDP_ABORTED,
    }
}

#[xdp]
pub fn svclb_redirect(_ctx: XdpContext) -> u32 {
    redirect_to_egress()
}

#[inline(always)]
fn redirect_to_egress() -> u32 {
    // SAFETY: a helper call with plain values.
    unsafe { bpf_redirect(read_volatile(&EGRESS), 0) as u32 }
}

/// Adds one to a per-CPU counter; the count before.
#[inline(always)]
fn bump(counter: &PerCpuArray<u64, 1>) -> u64 {
    match counter.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot, touched by this CPU only.
        Some(n) => unsafe {
            let before = *n;
            *n = before + 1;
            before
        },
        None => 0,
    }
}

/// A pointer to `size` bytes at `off` of the frame, if it holds them.
#[inline(always)]
fn at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let (start, end) = (ctx.data(), ctx.data_end());
    (start + off + size_of::<T>() <= end).then_some((start + off) as *mut T)
}

fn generate(ctx: &XdpContext) -> Option<()> {
    let n = bump(&GENERATED);
    // SAFETY: read-only globals the loader set.
    let (flows, ipv6, udp) = unsafe {
        (
            read_volatile(&FLOWS),
            read_volatile(&IPV6),
            read_volatile(&UDP),
        )
    };
    let flow = if flows == 0 { n } else { n % flows };
    copy_header(ctx)?;
    // The last 32 bits of the source address, the source port and the checksums.
    let (addr_at, l4_at, ip_check_at) = if ipv6 == 1 {
        (ETH_HLEN + 20, ETH_HLEN + 40, None)
    } else {
        (ETH_HLEN + 12, ETH_HLEN + 20, Some(ETH_HLEN + 10))
    };
    let l4_check_at = l4_at + if udp == 1 { 6 } else { 16 };
    let from_addr = template_u32(addr_at)?;
    let to_addr = (u32::from_be(from_addr).wrapping_add((flow / PORTS) as u32)).to_be();
    let from_port = u32::from(template_u16(l4_at)?);
    let to_port = u32::from(((PORT_BASE + flow % PORTS) as u16).to_be());
    store(ctx, addr_at, to_addr)?;
    store(ctx, l4_at, to_port as u16)?;
    if let Some(off) = ip_check_at {
        let check = template_u16(off)?;
        store(ctx, off, replaced(check, from_addr, to_addr))?;
    }
    let check = template_u16(l4_check_at)?;
    if udp == 1 && ipv6 == 0 && check == 0 {
        return Some(());
    }
    let check = replaced(replaced(check, from_addr, to_addr), from_port, to_port);
    // A UDP checksum that sums to zero is sent as all ones (0 means none).
    let check = if udp == 1 && check == 0 {
        0xffff
    } else {
        check
    };
    store(ctx, l4_check_at, check)
}

/// Writes the template header over the frame's start, two bytes at a time.
#[inline(always)]
fn copy_header(ctx: &XdpContext) -> Option<()> {
    // SAFETY: a read-only global the loader set.
    let len = unsafe { read_volatile(&HEADER_LEN) } as usize;
    let mut i = 0;
    while i + 2 <= HEADER_MAX && i < len {
        store(ctx, i, template_u16(i)?)?;
        i += 2;
    }
    Some(())
}

#[inline(always)]
fn store<T>(ctx: &XdpContext, off: usize, v: T) -> Option<()> {
    let p = at::<T>(ctx, off)?;
    // SAFETY: `at` checked that the frame holds a `T` there.
    unsafe { p.write_unaligned(v) };
    Some(())
}

/// The template's two bytes at `off` (even), as the network-order field they are.
#[inline(always)]
fn template_u16(off: usize) -> Option<u16> {
    let word = HEADER.get(off / 2)?;
    // SAFETY: a read-only global the loader set (volatile: its value is not the initializer).
    Some(unsafe { read_volatile(word) })
}

#[inline(always)]
fn template_u32(off: usize) -> Option<u32> {
    Some(u32::from(template_u16(off)?) | u32::from(template_u16(off + 2)?) << 16)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible, for the helpers; as the datapath's object (see LICENSE).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual BSD/GPL\0";
