//! Attaching the programs: on uplinks the XDP program (unless `--xdp-mode off`) and the uplink
//! TC program; on every pod-facing device that matches a glob, including devices that appear
//! later (followed over rtnetlink), the pod TC program.
//!
//! Every attachment is a BPF link pinned under `<bpffs-dir>/links/` (`tc-<ifindex>`,
//! `xdp-<ifindex>-<mode>`), so the datapath keeps running while no agent does: a restart or an
//! upgrade finds the pinned links and swaps its freshly loaded programs in with one
//! `bpf_link_update` each, atomically, packets never meeting an empty hook. Links of devices
//! that are gone or no longer wanted are unpinned, which detaches them;
//! `svclb agent --cleanup` unpins everything.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::programs::{
    LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
    links::{FdLink, PinnedLink},
    tc::{SchedClassifierLink, TcAttach},
    xdp::XdpLink,
};
use aya::{
    Ebpf,
    maps::{DevMapHash, MapData},
};
use futures::TryStreamExt as _;
use glob::Pattern;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
};
use rtnetlink::Handle;
use tracing::{debug, error, info, warn};

use prometheus_client::metrics::counter::Counter;
use svclb_common::limits::MAP_XDP_PORTS;

use super::{
    host_pair,
    object::{POD_PROGRAM, UPLINK_PROGRAM, XDP_PROGRAM},
    pins::{LINKS_DIR, Pinned, is_cgroup_pin, pins, tc_pin, xdp_pin},
};

/// `--xdp-mode`: how the XDP program is attached to uplinks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpAttach {
    /// Native (driver) mode where the driver supports it, else generic.
    Auto,
    /// Driver mode only: an uplink whose driver lacks XDP is an error.
    Native,
    /// Generic (skb) mode: works on every device, after the skb is built.
    Generic,
    /// No XDP: the TC program makes every decision.
    Off,
}

/// `--xdp-finish`: on which uplinks the XDP program translates and sends out north-south
/// flows itself (elsewhere it makes the early drops and passes the rest to TC).
///
/// XDP updates checksums as complete ones, which is what a NIC delivers. A virtual device
/// whose peer is a local stack (veth, netkit, tun/tap) can deliver CHECKSUM_PARTIAL packets,
/// whose checksum field holds only the pseudo-header sum: translating those in XDP would
/// corrupt them, so `auto` leaves them to TC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpFinish {
    /// Every uplink but veth, netkit and tun/tap devices.
    Auto,
    /// Every uplink (a veth whose peer sends complete checksums, as a lab's does).
    Always,
    /// None: XDP only drops early.
    Never,
}

impl XdpFinish {
    /// Whether XDP finishes flows on a device of link kind `kind` (`None`: a physical NIC).
    fn allows(self, kind: Option<&InfoKind>) -> bool {
        match self {
            Self::Always => true,
            Self::Never => false,
            Self::Auto => !matches!(
                kind,
                Some(InfoKind::Veth | InfoKind::Netkit | InfoKind::Tun)
            ),
        }
    }
}

/// Which devices get which programs.
#[derive(Clone, Debug)]
pub struct DeviceSelector {
    pub uplinks: Vec<String>,
    pub pod_devices: Option<Pattern>,
    /// The pod program also goes on [`host_pair::PROGRAM_END`] (`--cluster-dns`).
    pub host_pair: bool,
    pub xdp: XdpAttach,
    pub xdp_finish: XdpFinish,
}

impl DeviceSelector {
    fn is_uplink(&self, name: &str) -> bool {
        self.uplinks.iter().any(|u| u == name)
    }

    pub fn matches(&self, name: &str) -> bool {
        self.is_uplink(name)
            || self.pod_devices.as_ref().is_some_and(|p| p.matches(name))
            || (self.host_pair && name == host_pair::PROGRAM_END)
    }
}

struct Attachment {
    name: String,
    /// The TC program it carries.
    program: &'static str,
    tc: Pinned,
    xdp: Option<(Pinned, XdpMode)>,
    /// Whether XDP finishes north-south flows here (see [`XdpFinish`]).
    finishes: bool,
}

/// Owns the loaded object (for its program) and the attachments.
pub struct Devices {
    ebpf: Ebpf,
    selector: DeviceSelector,
    attached: BTreeMap<u32, Attachment>,
    /// Devices attached only in part, by index: what is missing and why (an uplink whose
    /// driver or kernel cannot take XDP in the configured mode is served through tc alone).
    problems: BTreeMap<u32, String>,
    /// Where links are pinned.
    links_dir: PathBuf,
    /// `SVCLB_XDP_PORTS`: the uplinks the XDP program finishes flows on (and may redirect to).
    ports: DevMapHash<MapData>,
    /// Counts devices that could not be attached (or only in part).
    errors: Counter,
}

/// The device's link kind (`veth`, `bond`...; none for a physical NIC).
fn link_kind(msg: &LinkMessage) -> Option<&InfoKind> {
    msg.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|info| match info {
            LinkInfo::Kind(kind) => Some(kind),
            _ => None,
        }),
        _ => None,
    })
}

fn link_name(msg: &LinkMessage) -> Option<&str> {
    msg.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::IfName(name) => Some(name.as_str()),
        _ => None,
    })
}

impl Devices {
    /// Loads the programs of `ebpf` for attaching to the devices `selector` names, with links
    /// pinned under `bpffs_dir`; devices that cannot be attached are counted in `errors`.
    pub fn new(
        mut ebpf: Ebpf,
        selector: DeviceSelector,
        bpffs_dir: &Path,
        errors: Counter,
    ) -> Result<Self> {
        let links_dir = bpffs_dir.join(LINKS_DIR);
        fs::create_dir_all(&links_dir)
            .with_context(|| format!("creating {}", links_dir.display()))?;
        for name in [POD_PROGRAM, UPLINK_PROGRAM] {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("the datapath object has no program {name}"))?
                .try_into()?;
            program
                .load()
                .with_context(|| format!("loading program {name} (is BPF available?)"))?;
        }
        if selector.xdp != XdpAttach::Off {
            let program: &mut Xdp = ebpf
                .program_mut(XDP_PROGRAM)
                .with_context(|| format!("the datapath object has no program {XDP_PROGRAM}"))?
                .try_into()?;
            program
                .load()
                .with_context(|| format!("loading program {XDP_PROGRAM}"))?;
        }
        let ports = ebpf
            .take_map(MAP_XDP_PORTS)
            .with_context(|| format!("the datapath object has no map {MAP_XDP_PORTS}"))?;
        let ports = DevMapHash::try_from(ports).with_context(|| format!("map {MAP_XDP_PORTS}"))?;
        Ok(Self {
            ebpf,
            selector,
            attached: BTreeMap::new(),
            problems: BTreeMap::new(),
            links_dir,
            ports,
            errors,
        })
    }

    fn program(&mut self, name: &str) -> Result<&mut SchedClassifier> {
        Ok(self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("the datapath object has no program {name}"))?
            .try_into()?)
    }

    fn xdp_program(&mut self) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(XDP_PROGRAM)
            .with_context(|| format!("the datapath object has no program {XDP_PROGRAM}"))?
            .try_into()?)
    }

    /// Puts the XDP program on uplink `index` in the configured mode: on the link an earlier
    /// run pinned in an acceptable mode, else on a new one.
    fn attach_xdp(&mut self, index: u32, name: &str) -> Result<Option<(Pinned, XdpMode)>> {
        let modes: &[XdpMode] = match self.selector.xdp {
            XdpAttach::Off => &[],
            XdpAttach::Auto => &[XdpMode::Driver, XdpMode::Skb],
            XdpAttach::Native => &[XdpMode::Driver],
            XdpAttach::Generic => &[XdpMode::Skb],
        };
        let links_dir = self.links_dir.clone();
        let path = |mode: XdpMode| xdp_pin(&links_dir, index, mode);
        for mode in [XdpMode::Driver, XdpMode::Skb] {
            let pin = path(mode);
            if !pin.exists() {
                continue;
            }
            if modes.contains(&mode) {
                match self.adopt_xdp(&pin) {
                    Ok(link) => {
                        info!(
                            device = name,
                            ?mode,
                            "XDP program replaced on its pinned link"
                        );
                        let pinned = Pinned {
                            link,
                            path: pin,
                            fresh: false,
                        };
                        return Ok(Some((pinned, mode)));
                    }
                    Err(err) => debug!(device = name, "pinned XDP link not usable: {err:#}"),
                }
            }
            // Another mode than wanted, or a link whose device went away: let it go.
            let _ = fs::remove_file(&pin);
        }
        if modes.is_empty() {
            return Ok(None);
        }
        let mut last = None;
        for &mode in modes {
            match self.xdp_program()?.attach(index, mode) {
                Ok(id) => {
                    let link: XdpLink = self.xdp_program()?.take_link(id)?;
                    let link = FdLink::try_from(link)
                        .context("the XDP attachment is not a BPF link (Linux 5.9 or later)")?;
                    let pinned = Pinned::pin(link, &path(mode))?;
                    info!(device = name, ?mode, "XDP attached");
                    return Ok(Some((pinned, mode)));
                }
                Err(err) => last = Some((mode, err)),
            }
        }
        let (mode, err) = last.expect("at least one mode is tried");
        Err(anyhow::Error::new(err).context(format!(
            "attaching {XDP_PROGRAM} to {name} in {mode:?} mode (try --xdp-mode generic, or off)"
        )))
    }

    /// Swaps the XDP program in on the link pinned at `pin`.
    fn adopt_xdp(&mut self, pin: &Path) -> Result<FdLink> {
        let link = XdpLink::try_from(FdLink::from(PinnedLink::from_pin(pin)?))?;
        let program = self.xdp_program()?;
        let id = program.attach_to_link(link)?;
        Ok(FdLink::try_from(program.take_link(id)?)?)
    }

    /// Swaps TC program `program` in on the link pinned at `pin`.
    fn adopt_tc(&mut self, program: &str, pin: &Path) -> Result<FdLink> {
        let link = SchedClassifierLink::try_from(FdLink::from(PinnedLink::from_pin(pin)?))?;
        let program = self.program(program)?;
        let id = program.attach_to_link(link)?;
        Ok(FdLink::try_from(program.take_link(id)?)?)
    }

    /// Puts TC program `program` on the tcx ingress hook of device `index`: on the link an
    /// earlier run pinned, else on a new one.
    fn attach_tc(&mut self, program: &'static str, index: u32, name: &str) -> Result<Pinned> {
        let pin = tc_pin(&self.links_dir, index);
        if pin.exists() {
            match self.adopt_tc(program, &pin) {
                Ok(link) => {
                    info!(
                        device = name,
                        program, "program replaced on its pinned link"
                    );
                    return Ok(Pinned {
                        link,
                        path: pin,
                        fresh: false,
                    });
                }
                // The device it was made for went away (and its index came back).
                Err(err) => {
                    debug!(device = name, "pinned link not usable: {err:#}");
                    let _ = fs::remove_file(&pin);
                }
            }
        }
        let attach = TcAttach::Tcx {
            attach_type: TcAttachType::Ingress,
            order: LinkOrder::default(),
        };
        let tc = self.program(program)?;
        let id = tc.attach(index, attach).with_context(|| {
            format!("attaching {program} to {name} ingress with tcx (needs Linux 6.6 or later)")
        })?;
        let link = FdLink::try_from(tc.take_link(id)?)?;
        Pinned::pin(link, &pin)
    }

    /// Attaches to every existing device that matches; every uplink must exist.
    pub async fn attach_existing(&mut self, handle: &Handle) -> Result<()> {
        let mut links = handle.link().get().execute();
        let mut seen = Vec::new();
        while let Some(msg) = links.try_next().await.context("listing network devices")? {
            if let Some(name) = link_name(&msg) {
                seen.push(name.to_owned());
            }
            self.on_link(&msg);
        }
        let missing: Vec<&str> = self
            .selector
            .uplinks
            .iter()
            .filter(|u| !seen.contains(u))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            bail!("uplink device {} does not exist", missing.join(", "));
        }
        for uplink in &self.selector.uplinks {
            if !self.attached.values().any(|a| &a.name == uplink) {
                bail!("could not attach to uplink device {uplink}");
            }
        }
        // Also when no uplink changed: an earlier run's entries may be stale.
        self.sync_ports();
        self.prune();
        Ok(())
    }

    /// Unpins the links no attachment of this run holds (devices gone, or no longer wanted,
    /// while no agent ran).
    fn prune(&self) {
        let held: Vec<&Path> = self
            .attached
            .values()
            .flat_map(|a| {
                std::iter::once(a.tc.path.as_path())
                    .chain(a.xdp.as_ref().map(|(p, _)| p.path.as_path()))
            })
            .collect();
        for pin in pins(&self.links_dir) {
            if !held.contains(&pin.as_path()) && !is_cgroup_pin(&pin) {
                match fs::remove_file(&pin) {
                    Ok(()) => info!(pin = %pin.display(), "unpinned a link no device needs"),
                    Err(err) => warn!(pin = %pin.display(), "cannot unpin: {err}"),
                }
            }
        }
    }

    /// Lists the devices again: attaches to matching ones a lost notification hid, and forgets
    /// attachments whose device is gone.
    pub async fn rescan(&mut self, handle: &Handle) -> Result<()> {
        let mut links = handle.link().get().execute();
        let mut present = Vec::new();
        while let Some(msg) = links.try_next().await.context("listing network devices")? {
            present.push(msg.header.index);
            self.on_link(&msg);
        }
        let gone: Vec<u32> = self
            .attached
            .keys()
            .filter(|index| !present.contains(index))
            .copied()
            .collect();
        for index in gone {
            self.forget(index);
        }
        self.sync_ports();
        self.prune();
        Ok(())
    }

    /// Handles one rtnetlink link notification.
    pub fn on_message(&mut self, message: NetlinkMessage<RouteNetlinkMessage>) {
        match message.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(msg)) => self.on_link(&msg),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(msg)) => {
                let before = self.finishing();
                self.forget(msg.header.index);
                if self.finishing() != before {
                    self.sync_ports();
                }
            }
            _ => {}
        }
    }

    /// A device went away: the kernel released the attachment with it; what is left is the
    /// pin, removed here.
    fn forget(&mut self, index: u32) {
        self.problems.remove(&index);
        if let Some(gone) = self.attached.remove(&index) {
            info!(device = %gone.name, "device removed");
            for pin in std::iter::once(gone.tc).chain(gone.xdp.map(|(p, _)| p)) {
                if let Err(err) = pin.unpin() {
                    debug!(device = %gone.name, %err, "unpinning after removal");
                }
            }
        }
    }

    /// Makes `SVCLB_XDP_PORTS` the uplinks XDP is attached to and finishes flows on now (an
    /// earlier run's entries included: the map is pinned).
    fn sync_ports(&mut self) {
        let want = self.finishing();
        let present: Vec<u32> = self.ports.keys().filter_map(Result::ok).collect();
        let stale = present.iter().filter(|index| !want.contains(index));
        for &index in stale {
            if let Err(err) = self.ports.remove(index) {
                warn!(
                    ifindex = index,
                    "cannot remove an XDP redirect target: {err}"
                );
            }
        }
        for index in want.into_iter().filter(|index| !present.contains(index)) {
            if let Err(err) = self.ports.insert(index, index, None, 0) {
                warn!(ifindex = index, "cannot add an XDP redirect target: {err}");
            }
        }
    }

    /// The uplinks XDP is attached to and finishes flows on.
    fn finishing(&self) -> Vec<u32> {
        self.attached
            .iter()
            .filter(|(_, a)| a.xdp.is_some() && a.finishes)
            .map(|(index, _)| *index)
            .collect()
    }

    /// Handles a device appearing or changing; `SVCLB_XDP_PORTS` follows when the uplinks XDP
    /// finishes flows on changed (pod devices come and go without touching it).
    fn on_link(&mut self, msg: &LinkMessage) {
        let before = self.finishing();
        self.on_link_change(msg);
        if self.finishing() != before {
            self.sync_ports();
        }
    }

    fn on_link_change(&mut self, msg: &LinkMessage) {
        let index = msg.header.index;
        let Some(name) = link_name(msg).map(str::to_owned) else {
            return;
        };
        let wanted = self.selector.matches(&name);
        match (self.attached.get_mut(&index), wanted) {
            (Some(existing), true) => existing.name = name,
            (Some(_), false) => self.detach(index),
            (None, true) => {
                let finishes = self.selector.xdp_finish.allows(link_kind(msg));
                if let Err(err) = self.attach(index, &name, finishes) {
                    warn!(device = %name, "cannot attach: {err:#}");
                    self.errors.inc();
                }
            }
            (None, false) => {}
        }
    }

    fn attach(&mut self, index: u32, name: &str, finishes: bool) -> Result<()> {
        let uplink = self.selector.is_uplink(name);
        let program = if uplink { UPLINK_PROGRAM } else { POD_PROGRAM };
        let tc = self.attach_tc(program, index, name)?;
        let xdp = if uplink {
            match self.attach_xdp(index, name) {
                Ok(xdp) => xdp,
                Err(err) => {
                    // tc does everything XDP does for an uplink, only later in the stack: a
                    // missing XDP feature costs speed, not service.
                    let problem =
                        format!("uplink {name}: XDP not attached, served through tc only: {err:#}");
                    error!("{problem}");
                    self.errors.inc();
                    self.problems.insert(index, problem);
                    None
                }
            }
        } else {
            // A device that was an uplink when an earlier run pinned its XDP link (most have
            // no such pin: a missing file is the usual answer, not an error).
            for mode in [XdpMode::Driver, XdpMode::Skb] {
                let _ = fs::remove_file(xdp_pin(&self.links_dir, index, mode));
            }
            None
        };
        info!(
            device = name,
            ifindex = index,
            program,
            adopted = !tc.fresh,
            "attached"
        );
        if xdp.is_some() && !finishes {
            info!(
                device = name,
                "XDP makes early drops only here and leaves translation to TC (a virtual \
                 device may deliver partial checksums; --xdp-finish always overrides)"
            );
        }
        self.attached.insert(
            index,
            Attachment {
                name: name.to_owned(),
                program,
                tc,
                xdp,
                finishes,
            },
        );
        Ok(())
    }

    /// Detaches from device `index` (it no longer matches): its links are unpinned.
    fn detach(&mut self, index: u32) {
        self.problems.remove(&index);
        if let Some(attachment) = self.attached.remove(&index) {
            let mut result = attachment.tc.unpin();
            if let Some((xdp, _)) = attachment.xdp {
                result = result.and(xdp.unpin());
            }
            match result {
                Ok(()) => {
                    info!(device = %attachment.name, program = attachment.program, "detached")
                }
                Err(err) => warn!(device = %attachment.name, "detach failed: {err}"),
            }
        }
    }

    /// After a start that failed half-way: detaches what this run attached afresh, and keeps
    /// the links it adopted (carrying this run's programs, over the same maps).
    pub fn abandon(&mut self) {
        let fresh: Vec<u32> = self
            .attached
            .iter()
            .filter(|(_, a)| a.tc.fresh)
            .map(|(index, _)| *index)
            .collect();
        for index in fresh {
            self.detach(index);
        }
    }

    /// Devices attached only in part, each with what is missing and why.
    pub fn problems(&self) -> Vec<String> {
        self.problems.values().cloned().collect()
    }

    pub fn attached_names(&self) -> Vec<String> {
        self.attached.values().map(|a| a.name.clone()).collect()
    }
}
