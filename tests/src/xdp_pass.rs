//! A two-instruction XDP program that passes every frame, for the fabric's ports.
//!
//! A veth delivers the frames an XDP program on its peer sends back (`XDP_TX`) only while it
//! runs NAPI, which it does with an XDP program of its own; a NIC needs nothing of the kind.
//! With this on the fabric's side of each node's uplink, the nodes' native XDP behaves as on
//! a wire.

use std::{
    ffi::CString,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

use anyhow::{Context as _, Result};

use crate::netns::in_netns;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 4;

/// `r0 = XDP_PASS; exit`.
const PASS: [u64; 2] = [
    u64::from_le_bytes([0xb7, 0, 0, 0, 2, 0, 0, 0]),
    u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
];

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> std::io::Result<i32> {
    // SAFETY: `attr` is a zeroed `union bpf_attr` of the command's layout, big enough for it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            size_of_val(attr) as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ret as i32)
}

/// Loads the program.
pub fn load() -> Result<OwnedFd> {
    let license = CString::new("GPL")?;
    let mut attr = [0u64; 16];
    // prog_type, insn_cnt; insns; license.
    attr[0] = u64::from(BPF_PROG_TYPE_XDP) | (PASS.len() as u64) << 32;
    attr[1] = PASS.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    let fd = bpf(BPF_PROG_LOAD, &mut attr).context("loading an XDP_PASS program")?;
    // SAFETY: a file descriptor the kernel just returned, owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Puts `prog` on device `dev` of namespace `ns` in native mode, through a BPF link pinned
/// at `pin` (in a bpffs; the link holds while the pin or the device does).
pub fn attach(ns: &str, dev: &str, prog: &OwnedFd, pin: &Path) -> Result<()> {
    let prog_fd = prog.as_raw_fd() as u32;
    let dev_name = dev.to_owned();
    let link = in_netns(ns, move || -> Result<i32> {
        let ifindex = nix::net::if_::if_nametoindex(dev_name.as_str())
            .with_context(|| format!("no device {dev_name}"))?;
        let mut attr = [0u64; 16];
        // prog_fd, target_ifindex; attach_type, flags.
        attr[0] = u64::from(prog_fd) | u64::from(ifindex) << 32;
        attr[1] = u64::from(BPF_XDP) | u64::from(XDP_FLAGS_DRV_MODE) << 32;
        Ok(bpf(BPF_LINK_CREATE, &mut attr)?)
    })
    .with_context(|| format!("attaching an XDP_PASS program to {dev} in {ns}"))?;
    // SAFETY: a file descriptor the kernel just returned, owned here.
    let link = unsafe { OwnedFd::from_raw_fd(link) };
    let path = CString::new(pin.as_os_str().as_encoded_bytes())?;
    let mut attr = [0u64; 16];
    // pathname; bpf_fd.
    attr[0] = path.as_ptr() as u64;
    attr[1] = u64::from(link.as_raw_fd() as u32);
    bpf(BPF_OBJ_PIN, &mut attr).with_context(|| format!("pinning it at {}", pin.display()))?;
    Ok(())
}
