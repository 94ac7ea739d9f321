//! One packet-access interface over the two contexts the datapath runs in, so the NAT,
//! checksum and FIB code is written once (`nat`, `forward`) and serves TC and XDP alike.
//!
//! TC rewrites through the kernel's skb helpers: they keep every skb checksum state right
//! (CHECKSUM_PARTIAL from veth offload wants only the pseudo-header part updated). XDP has no
//! skb: its frames come from the driver with complete checksums (drivers that offload receive
//! checksums to the host turn that off for XDP), so the same updates are made in software on
//! the frame itself, RFC 1624 style, with the flags meaning what they mean to the helpers.

use svclb_ebpf::{
    bytes,
    csum::{plus_diff, replaced},
};

use aya_ebpf::{
    EbpfContext,
    bindings::{__sk_buff, BPF_F_MARK_MANGLED_0},
    programs::{TcContext, XdpContext},
};

/// A packet the datapath can read the length of and rewrite. Offsets count from the start of
/// the Ethernet header; checksum arguments are network-order values, as the helpers take them.
pub trait Frame: EbpfContext {
    /// The device the packet is on (for ingress, the one it arrived on).
    fn ifindex(&self) -> u32;

    /// The whole packet's length, Ethernet header included.
    fn len(&self) -> u32;

    /// Writes `v` at `off`.
    fn store<T: Copy>(&self, off: usize, v: &T) -> Result<(), i64>;

    /// Updates the 16-bit checksum at `off` for a `size`-byte (2 or 4) field that changed
    /// from `from` to `to` (the IPv4 header checksum).
    fn l3_csum_replace(&self, off: usize, from: u64, to: u64, size: u64) -> Result<(), i64>;

    /// Updates the L4 checksum at `off`: `flags`' low bits give the field's size (2 or 4), or
    /// 0 when `to` is a checksum difference (`bpf_csum_diff`); `BPF_F_MARK_MANGLED_0` keeps a
    /// zero (absent) UDP checksum zero and writes a sum that comes out zero as 0xffff.
    fn l4_csum_replace(&self, off: usize, from: u64, to: u64, flags: u64) -> Result<(), i64>;
}

impl Frame for TcContext {
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        let skb: *const __sk_buff = self.as_ptr().cast();
        // SAFETY: the context wraps the kernel's valid skb pointer.
        unsafe { (*skb).ifindex }
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        TcContext::len(self)
    }

    #[inline(always)]
    fn store<T: Copy>(&self, off: usize, v: &T) -> Result<(), i64> {
        TcContext::store(self, off, v, 0)
    }

    #[inline(always)]
    fn l3_csum_replace(&self, off: usize, from: u64, to: u64, size: u64) -> Result<(), i64> {
        TcContext::l3_csum_replace(self, off, from, to, size)
    }

    #[inline(always)]
    fn l4_csum_replace(&self, off: usize, from: u64, to: u64, flags: u64) -> Result<(), i64> {
        TcContext::l4_csum_replace(self, off, from, to, flags)
    }
}

/// A pointer to a `T` at `off` in the frame, checked against its end. At least two bytes are
/// checked: LLVM turns a one-byte check (`p + 1 > end`) into `p >= end`, from which the
/// verifier learns no range. (Rewrites only touch headers, with more bytes behind them.)
///
/// Offsets come from the scratch map, where the verifier knows nothing of them: masked to
/// 12 bits, the pointer they move gets a range it accepts (it wants offset plus size within
/// 64 KiB). An XDP frame without fragments is one page, so every offset in it is below 4096;
/// the end check stays what keeps accesses in the frame.
#[inline(always)]
fn at<T>(ctx: &XdpContext, off: usize) -> Result<*mut T, i64> {
    let off = off & 0xfff;
    let (start, end) = (ctx.data(), ctx.data_end());
    let checked = if size_of::<T>() < 2 {
        2
    } else {
        size_of::<T>()
    };
    if start + off + checked > end {
        return Err(-1);
    }
    Ok((start + off) as *mut T)
}

impl Frame for XdpContext {
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        self.ingress_ifindex() as u32
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        (self.data_end() - self.data()) as u32
    }

    /// One store for a 1-, 2-, 4- or 8-byte value; a byte at a time for others (addresses,
    /// MAC addresses), which would otherwise be a call to a byte loop (see
    /// `svclb_ebpf::bytes`).
    #[inline(always)]
    fn store<T: Copy>(&self, off: usize, v: &T) -> Result<(), i64> {
        let p = at::<T>(self, off)?;
        // SAFETY: `at` checked that the frame holds a `T` there.
        unsafe {
            if size_of::<T>() <= 8 && size_of::<T>().is_power_of_two() {
                p.write_unaligned(*v);
            } else {
                bytes::copy(p.cast(), (v as *const T).cast(), size_of::<T>());
            }
        }
        Ok(())
    }

    #[inline(always)]
    fn l3_csum_replace(&self, off: usize, from: u64, to: u64, size: u64) -> Result<(), i64> {
        let p = at::<u16>(self, off)?;
        let (from, to) = narrowed(from, to, size);
        // SAFETY: `at` checked that the frame holds the checksum there.
        unsafe { p.write_unaligned(replaced(p.read_unaligned(), from, to)) };
        Ok(())
    }

    #[inline(always)]
    fn l4_csum_replace(&self, off: usize, from: u64, to: u64, flags: u64) -> Result<(), i64> {
        let p = at::<u16>(self, off)?;
        // SAFETY: `at` checked that the frame holds the checksum there.
        let check = unsafe { p.read_unaligned() };
        let mangled0 = flags & u64::from(BPF_F_MARK_MANGLED_0) != 0;
        if mangled0 && check == 0 {
            return Ok(());
        }
        let size = flags & 0xf;
        let new = if size == 0 {
            plus_diff(check, to as u32)
        } else {
            let (from, to) = narrowed(from, to, size);
            replaced(check, from, to)
        };
        let new = if mangled0 && new == 0 { 0xffff } else { new };
        // SAFETY: as above.
        unsafe { p.write_unaligned(new) };
        Ok(())
    }
}

/// `from` and `to` cut to the field's size, as the helpers read them.
#[inline(always)]
fn narrowed(from: u64, to: u64, size: u64) -> (u32, u32) {
    if size == 2 {
        (u32::from(from as u16), u32::from(to as u16))
    } else {
        (from as u32, to as u32)
    }
}
