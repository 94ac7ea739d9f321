//! Ones' complement checksum arithmetic (RFC 1071, RFC 1624), for rewriting frames in place
//! where no kernel helper does it (XDP).

/// Folds a ones' complement sum to 16 bits (enough rounds for three 32-bit terms).
#[inline(always)]
pub fn fold(sum: u64) -> u16 {
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    ((sum & 0xffff) + (sum >> 16)) as u16
}

/// RFC 1624 (eqn. 3): the checksum `check` after a field changed from `from` to `to`
/// (a 16-bit field zero-extended: its upper half complements to 0xffff, a ones' complement
/// zero).
#[inline(always)]
pub fn replaced(check: u16, from: u32, to: u32) -> u16 {
    !fold(u64::from(!check) + u64::from(!from) + u64::from(to))
}

/// The checksum `check` plus a difference `bpf_csum_diff` computed.
#[inline(always)]
pub fn plus_diff(check: u16, diff: u32) -> u16 {
    !fold(u64::from(!check) + u64::from(diff))
}
