//! Copying and zeroing without the compiler's `memcpy`, `memmove` and `memset`: on BPF, LLVM
//! turns struct copies and zeroing it does not expand into calls to compiler-builtins'
//! versions, which loop a byte at a time (a 64-byte zeroing is 64 rounds of a loop, on every
//! packet). Volatile accesses keep it from merging these back into such a call.

/// Copies `len` bytes (a constant where it is inlined) from `src` to `dst`, one store each.
///
/// # Safety
/// `src` and `dst` are valid for `len` bytes.
#[inline(always)]
pub unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) {
    for i in 0..len {
        // SAFETY: within the `len` bytes the caller vouches for.
        unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
    }
}

/// Zeroes `*p` a 32-bit word at a time.
///
/// # Safety
/// `p` is valid for writes of a `T`, whose size is a multiple of 4 and whose alignment is at
/// least 4; all-zero is a valid `T`.
#[inline(always)]
pub unsafe fn zero<T>(p: *mut T) {
    let words = p.cast::<u32>();
    for i in 0..size_of::<T>() / 4 {
        // SAFETY: within `*p`, aligned as the caller vouches.
        unsafe { words.add(i).write_volatile(0) };
    }
}

/// Writes IPv4 address `octets` into `dst` as an `L3Addr` holds it (the octets, then 12 zero
/// bytes) in three stores: `*dst = addr::v4(octets)` is a `memset` call for the zeros, and
/// volatile stores would make LLVM read the parsed packet's other fields back from memory,
/// where the verifier no longer knows their bounds.
#[inline(always)]
pub fn put_v4(dst: &mut svclb_common::L3Addr, octets: [u8; 4]) {
    let p = dst.as_mut_ptr();
    // SAFETY: within the 16 bytes of `dst`; unaligned stores.
    unsafe {
        p.cast::<u32>().write_unaligned(u32::from_ne_bytes(octets));
        p.add(4).cast::<u64>().write_unaligned(0);
        p.add(12).cast::<u32>().write_unaligned(0);
    }
}

/// Copies a 16-byte address in two 8-byte moves (see [`put_v4`] on why not volatile).
#[inline(always)]
pub fn put_v6(dst: &mut svclb_common::L3Addr, src: &[u8; 16]) {
    let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
    // SAFETY: within the 16 bytes of each; unaligned accesses.
    unsafe {
        d.cast::<u64>()
            .write_unaligned(s.cast::<u64>().read_unaligned());
        d.add(8)
            .cast::<u64>()
            .write_unaligned(s.add(8).cast::<u64>().read_unaligned());
    }
}
