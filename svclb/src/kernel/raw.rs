//! The bpf(2) map commands, on raw bytes: aya's maps are typed by the build's own layout, and
//! a migration reads a layout this build does not have; and the batch update, which aya does
//! not offer.

use std::os::fd::{AsRawFd as _, BorrowedFd};

use anyhow::Result;
use nix::errno::Errno;

pub const BPF_ANY: u64 = 0;
pub const BPF_NOEXIST: u64 = 1;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// The map element commands' part of `union bpf_attr`.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// The batch commands' part of `union bpf_attr`.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> Result<(), Errno> {
    // SAFETY: `attr` is a valid `bpf_attr` prefix for `cmd`, which the kernel may write back
    // to; its buffers live for the call and have the sizes the map's definition gives.
    let ret =
        unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<A>()) };
    if ret < 0 { Err(Errno::last()) } else { Ok(()) }
}

fn attr(fd: BorrowedFd<'_>, key: *const u8, value: *const u8, flags: u64) -> ElemAttr {
    ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        _pad: 0,
        key: key as u64,
        value: value as u64,
        flags,
    }
}

/// Whether maps of `map_type` hold one value per CPU.
pub fn per_cpu(map_type: u32) -> bool {
    // BPF_MAP_TYPE_PERCPU_HASH, _PERCPU_ARRAY, _LRU_PERCPU_HASH.
    matches!(map_type, 5 | 6 | 10)
}

pub fn possible_cpus() -> Result<usize> {
    Ok(aya::util::nr_cpus()
        .map_err(|(what, err)| anyhow::anyhow!("{what}: {err}"))?
        .get() as usize)
}

/// The bytes one CPU's value takes in a lookup's buffer (one slot when not per CPU).
pub fn stride(value_size: u32, slots: usize) -> usize {
    let size = value_size as usize;
    if slots > 1 {
        size.next_multiple_of(8)
    } else {
        size
    }
}

/// Looks `key` up into `value`; `false` when it is not there (deleted meanwhile).
pub fn lookup(fd: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> Result<bool> {
    match bpf(
        BPF_MAP_LOOKUP_ELEM,
        &mut attr(fd, key.as_ptr(), value.as_mut_ptr(), 0),
    ) {
        Ok(()) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(err) => Err(err.into()),
    }
}

pub fn update(fd: BorrowedFd<'_>, key: &[u8], value: &[u8], flags: u64) -> Result<(), Errno> {
    bpf(
        BPF_MAP_UPDATE_ELEM,
        &mut attr(fd, key.as_ptr(), value.as_ptr(), flags),
    )
}

/// Writes `values[i]` at key `keys[i]` of a map of `u32` keys and values (an array, or a map
/// of maps, whose values are map fds) in one call: one system call instead of one per entry,
/// and for a map of maps one RCU grace period instead of one per entry. On failure, how many
/// were written (the first ones) and the error.
pub fn update_batch_u32(
    fd: BorrowedFd<'_>,
    keys: &[u32],
    values: &[u32],
) -> Result<(), (usize, Errno)> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: u32::try_from(keys.len()).map_err(|_| (0, Errno::E2BIG))?,
        map_fd: fd.as_raw_fd() as u32,
        elem_flags: 0,
        flags: 0,
    };
    bpf(BPF_MAP_UPDATE_BATCH, &mut attr).map_err(|err| (attr.count as usize, err))
}

/// Writes `values[i]` at index `i` of an array map of `u32`s in one call.
pub fn fill_u32_array(fd: BorrowedFd<'_>, values: &[u32]) -> Result<(), Errno> {
    let keys: Vec<u32> = (0..values.len() as u32).collect();
    update_batch_u32(fd, &keys, values).map_err(|(_, err)| err)
}

/// Every key of the map, as `get_next_key` walks it.
pub fn keys(fd: BorrowedFd<'_>, size: usize) -> impl Iterator<Item = Result<Vec<u8>>> + '_ {
    let mut current: Option<Vec<u8>> = None;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let mut next = vec![0u8; size];
        let key = current.as_ref().map_or(std::ptr::null(), |k| k.as_ptr());
        match bpf(
            BPF_MAP_GET_NEXT_KEY,
            &mut attr(fd, key, next.as_mut_ptr(), 0),
        ) {
            Ok(()) => {
                current = Some(next.clone());
                Some(Ok(next))
            }
            Err(Errno::ENOENT) => {
                done = true;
                None
            }
            Err(err) => {
                done = true;
                Some(Err(err.into()))
            }
        }
    })
}
