//! `BPF_LINK_UPDATE` on a pinned link for link types aya cannot update (a cgroup `sock_release`
//! link, `CgroupSock`, has no `attach_to_link` in aya 0.16): the program on the link is
//! swapped atomically, as for every other link the agent pins.

use std::{
    ffi::CString,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

use anyhow::{Context as _, Result};
use aya::programs::ProgramFd;

/// `enum bpf_cmd` (include/uapi/linux/bpf.h).
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// `union bpf_attr` as `BPF_OBJ_GET` reads it.
#[repr(C)]
#[derive(Default)]
struct ObjGet {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: [u32; 27],
}

/// `union bpf_attr` as `BPF_LINK_UPDATE` reads it.
#[repr(C)]
#[derive(Default)]
struct LinkUpdate {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
    _pad: [u32; 28],
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a zero-padded `bpf_attr` of the size given, valid for the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<T>()) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Puts `program` on the link pinned at `pin`.
pub(super) fn update(pin: &Path, program: &ProgramFd) -> Result<()> {
    let path = CString::new(pin.as_os_str().as_encoded_bytes())
        .with_context(|| format!("pin path {}", pin.display()))?;
    let mut get = ObjGet {
        pathname: path.as_ptr() as u64,
        ..ObjGet::default()
    };
    let fd = bpf(BPF_OBJ_GET, &mut get).with_context(|| format!("opening {}", pin.display()))?;
    // SAFETY: a descriptor the kernel just returned, owned by nothing else.
    let link = unsafe { OwnedFd::from_raw_fd(i32::try_from(fd)?) };
    let mut attr = LinkUpdate {
        link_fd: u32::try_from(link.as_raw_fd())?,
        new_prog_fd: u32::try_from(std::os::fd::AsFd::as_fd(program).as_raw_fd())?,
        ..LinkUpdate::default()
    };
    bpf(BPF_LINK_UPDATE, &mut attr)
        .with_context(|| format!("swapping the program on {}", pin.display()))?;
    Ok(())
}
