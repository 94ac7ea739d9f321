//! Socket-level load balancing: the cgroup hooks (`svclb-ebpf`'s `sock`) attached to a cgroup
//! v2 directory, `--cgroup-root` (by default the machine's cgroup2 mount), so every socket of
//! the processes under it reaches services at connect time: host-network processes and pods
//! alike.
//!
//! Each hook is a BPF link pinned under `<bpffs-dir>/links/` (see `pins`), so the hooks keep
//! running while no agent does; a restart swaps its programs in on the pinned links. Links
//! pinned for another cgroup, or when socket-LB is turned off, are unpinned, which detaches
//! them.

use std::{
    fs,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    programs::{
        CgroupAttachMode, CgroupSock, CgroupSockAddr,
        cgroup_sock_addr::CgroupSockAddrLink,
        links::{FdLink, PinnedLink},
    },
};
use svclb_common::host::cgroup2_mount;
use tracing::{debug, info, warn};

use super::{
    link_update,
    object::{SOCK_ADDR_PROGRAMS, SOCK_RELEASE_PROGRAM},
    pins::{LINKS_DIR, Pinned, cgroup_pin, is_cgroup_pin, pins},
};

/// `--socket-lb` and its settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketLb {
    /// The cgroup v2 directory the hooks attach to (`None`: the cgroup2 mount, found when
    /// they attach).
    pub cgroup: Option<PathBuf>,
    /// Only sockets of the host's network namespace are translated
    /// (`--socket-lb-hostns-only`).
    pub hostns_only: bool,
}

/// The attached hooks.
pub struct SocketHooks {
    links: Vec<Pinned>,
    cgroup: PathBuf,
    hostns_only: bool,
}

/// The cgroup's id: its directory's inode number on cgroup2.
fn cgroup_id(cgroup: &Path) -> Result<u64> {
    let meta = fs::metadata(cgroup)
        .with_context(|| format!("cgroup {} for the socket hooks", cgroup.display()))?;
    if !meta.is_dir() {
        bail!("cgroup {} is not a directory", cgroup.display());
    }
    Ok(meta.ino())
}

/// The network namespace cookie of the calling thread's namespace (the host's, for the
/// agent), as `bpf_get_netns_cookie` gives it: from an unbound socket, which any namespace
/// can open (even with its loopback down).
pub fn netns_cookie() -> Result<u64> {
    // SAFETY: plain socket creation; the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .context("opening a socket to read the namespace cookie");
    }
    // SAFETY: a descriptor just returned by the kernel, owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie = 0u64;
    let mut len = libc::socklen_t::try_from(size_of::<u64>()).unwrap_or_default();
    // SAFETY: a valid socket, and a buffer of the length given.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .context("reading the network namespace cookie (SO_NETNS_COOKIE, Linux 5.14+)");
    }
    Ok(cookie)
}

impl SocketHooks {
    /// Loads the hooks and attaches them to `lb.cgroup`, on the links an earlier run pinned
    /// for that cgroup where there are some.
    pub fn attach(ebpf: &mut Ebpf, lb: &SocketLb, bpffs_dir: &Path) -> Result<Self> {
        let links_dir = bpffs_dir.join(LINKS_DIR);
        fs::create_dir_all(&links_dir)
            .with_context(|| format!("creating {}", links_dir.display()))?;
        let path = match &lb.cgroup {
            Some(dir) => dir.clone(),
            None => cgroup2_mount()?,
        };
        let id = cgroup_id(&path)?;
        let cgroup =
            fs::File::open(&path).with_context(|| format!("opening cgroup {}", path.display()))?;
        let mut hooks = Self {
            links: Vec::new(),
            cgroup: path,
            hostns_only: lb.hostns_only,
        };
        for &(name, hook) in SOCK_ADDR_PROGRAMS {
            let pin = cgroup_pin(&links_dir, hook, id);
            match attach_sock_addr(ebpf, name, &cgroup, &pin) {
                Ok(pinned) => hooks.links.push(pinned),
                Err(err) => {
                    hooks.abandon();
                    return Err(err.context(format!(
                        "attaching the socket hook {hook} to cgroup {} (or run with --socket-lb=false)",
                        hooks.cgroup.display()
                    )));
                }
            }
        }
        let pin = cgroup_pin(&links_dir, "sock_release", id);
        match attach_release(ebpf, &cgroup, &pin) {
            Ok(pinned) => hooks.links.push(pinned),
            // Without it the reverse map only loses entries to its LRU.
            Err(err) => warn!("socket hook sock_release not attached: {err:#}"),
        }
        let held: Vec<PathBuf> = hooks.links.iter().map(|l| l.path.clone()).collect();
        unpin_others(&links_dir, &held);
        info!(
            cgroup = %hooks.cgroup.display(),
            hooks = hooks.links.len(),
            hostns_only = lb.hostns_only,
            "socket-level load balancing attached"
        );
        Ok(hooks)
    }

    /// Unpins the links this run made (a start that failed later on).
    pub fn abandon(&mut self) {
        for pinned in self.links.drain(..).filter(|p| p.fresh) {
            let _ = pinned.unpin();
        }
    }

    /// What `svclb status` reports: the cgroup, the hooks, the scope.
    pub fn describe(&self) -> String {
        let scope = if self.hostns_only {
            ", host network namespace only"
        } else {
            ""
        };
        format!(
            "cgroup {} ({} hooks{scope})",
            self.cgroup.display(),
            self.links.len()
        )
    }
}

/// `--socket-lb=false`: unpins every socket hook an earlier run left, which detaches it; how
/// many.
pub fn detach(bpffs_dir: &Path) -> usize {
    unpin_others(&bpffs_dir.join(LINKS_DIR), &[])
}

/// Unpins the socket hooks under `links_dir` other than `held`.
fn unpin_others(links_dir: &Path, held: &[PathBuf]) -> usize {
    let mut removed = 0;
    for pin in pins(links_dir) {
        if is_cgroup_pin(&pin) && !held.contains(&pin) {
            match fs::remove_file(&pin) {
                Ok(()) => {
                    info!(pin = %pin.display(), "unpinned a socket hook no longer wanted");
                    removed += 1;
                }
                Err(err) => warn!(pin = %pin.display(), "cannot unpin: {err}"),
            }
        }
    }
    removed
}

fn sock_addr_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut CgroupSockAddr> {
    let program: &mut CgroupSockAddr = ebpf
        .program_mut(name)
        .with_context(|| format!("the datapath object has no program {name}"))?
        .try_into()?;
    if program.fd().is_err() {
        program
            .load()
            .with_context(|| format!("loading program {name}"))?;
    }
    Ok(program)
}

/// Puts program `name` on the link pinned at `pin`, or on a new link to `cgroup`. (A BPF link
/// on a cgroup shares the hook with other programs whatever the mode; the kernel refuses the
/// multi flag on links.)
fn attach_sock_addr(ebpf: &mut Ebpf, name: &str, cgroup: &fs::File, pin: &Path) -> Result<Pinned> {
    let program = sock_addr_program(ebpf, name)?;
    if pin.exists() {
        let adopted = PinnedLink::from_pin(pin)
            .map_err(anyhow::Error::from)
            .and_then(|p| Ok(CgroupSockAddrLink::try_from(FdLink::from(p))?))
            .and_then(|link| Ok(program.attach_to_link(link)?));
        match adopted {
            Ok(id) => {
                let link = FdLink::try_from(program.take_link(id)?)?;
                debug!(program = name, "socket hook replaced on its pinned link");
                return Ok(Pinned {
                    link,
                    path: pin.to_path_buf(),
                    fresh: false,
                });
            }
            Err(err) => {
                debug!(program = name, "pinned socket hook not usable: {err:#}");
                let _ = fs::remove_file(pin);
            }
        }
    }
    let id = program.attach(cgroup, CgroupAttachMode::Single)?;
    let link = FdLink::try_from(program.take_link(id)?)
        .context("the socket hook is not a BPF link (Linux 5.7 or later)")?;
    Pinned::pin(link, pin)
}

/// Puts `sock_release` on the link pinned at `pin` (through [`link_update`]: aya cannot
/// update this link type), or on a new link to `cgroup`.
fn attach_release(ebpf: &mut Ebpf, cgroup: &fs::File, pin: &Path) -> Result<Pinned> {
    let program: &mut CgroupSock = ebpf
        .program_mut(SOCK_RELEASE_PROGRAM)
        .with_context(|| format!("the datapath object has no program {SOCK_RELEASE_PROGRAM}"))?
        .try_into()?;
    program
        .load()
        .with_context(|| format!("loading program {SOCK_RELEASE_PROGRAM}"))?;
    if pin.exists() {
        let adopted = link_update::update(pin, program.fd()?)
            .and_then(|()| Ok(FdLink::from(PinnedLink::from_pin(pin)?)));
        match adopted {
            Ok(link) => {
                return Ok(Pinned {
                    link,
                    path: pin.to_path_buf(),
                    fresh: false,
                });
            }
            Err(err) => {
                debug!("pinned sock_release link not usable: {err:#}");
                let _ = fs::remove_file(pin);
            }
        }
    }
    let id = program.attach(cgroup, CgroupAttachMode::Single)?;
    let link = FdLink::try_from(program.take_link(id)?)
        .context("the socket hook is not a BPF link (Linux 5.7 or later)")?;
    Pinned::pin(link, pin)
}
