//! Attaching the programs: on uplinks the XDP program (unless `--xdp-mode off`) and the uplink
//! TC program; on every pod-facing device that matches a glob, including devices that appear
//! later (followed over rtnetlink), the pod TC program.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        tc::{SchedClassifierLinkId, TcAttach},
        xdp::XdpLinkId,
    },
};
use futures::TryStreamExt as _;
use glob::Pattern;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
};
use rtnetlink::Handle;
use tracing::{debug, info, warn};

use crate::ebpf::{POD_PROGRAM, UPLINK_PROGRAM, XDP_PROGRAM};

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

/// Which devices get which programs.
#[derive(Clone, Debug)]
pub struct DeviceSelector {
    pub uplinks: Vec<String>,
    pub pod_devices: Option<Pattern>,
    pub xdp: XdpAttach,
}

impl DeviceSelector {
    fn is_uplink(&self, name: &str) -> bool {
        self.uplinks.iter().any(|u| u == name)
    }

    pub fn matches(&self, name: &str) -> bool {
        self.is_uplink(name) || self.pod_devices.as_ref().is_some_and(|p| p.matches(name))
    }
}

struct Attachment {
    name: String,
    /// The TC program it carries.
    program: &'static str,
    link: SchedClassifierLinkId,
    xdp: Option<(XdpLinkId, XdpMode)>,
}

/// Owns the loaded object (for its program) and the attachments.
pub struct Devices {
    ebpf: Ebpf,
    selector: DeviceSelector,
    attached: BTreeMap<u32, Attachment>,
}

fn link_name(msg: &LinkMessage) -> Option<&str> {
    msg.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::IfName(name) => Some(name.as_str()),
        _ => None,
    })
}

impl Devices {
    pub fn new(mut ebpf: Ebpf, selector: DeviceSelector) -> Result<Self> {
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
        Ok(Self {
            ebpf,
            selector,
            attached: BTreeMap::new(),
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

    /// Attaches the XDP program to uplink `index` in the configured mode.
    fn attach_xdp(&mut self, index: u32, name: &str) -> Result<Option<(XdpLinkId, XdpMode)>> {
        let modes: &[XdpMode] = match self.selector.xdp {
            XdpAttach::Off => return Ok(None),
            XdpAttach::Auto => &[XdpMode::Driver, XdpMode::Skb],
            XdpAttach::Native => &[XdpMode::Driver],
            XdpAttach::Generic => &[XdpMode::Skb],
        };
        let mut last = None;
        for &mode in modes {
            match self.xdp_program()?.attach(index, mode) {
                Ok(link) => {
                    info!(device = name, ?mode, "XDP attached");
                    return Ok(Some((link, mode)));
                }
                Err(err) => last = Some((mode, err)),
            }
        }
        let (mode, err) = last.expect("at least one mode is tried");
        Err(anyhow::Error::new(err).context(format!(
            "attaching {XDP_PROGRAM} to {name} in {mode:?} mode (try --xdp-mode generic, or off)"
        )))
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
        Ok(())
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
        Ok(())
    }

    /// Handles one rtnetlink link notification.
    pub fn on_message(&mut self, message: NetlinkMessage<RouteNetlinkMessage>) {
        match message.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(msg)) => self.on_link(&msg),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(msg)) => {
                self.forget(msg.header.index);
            }
            _ => {}
        }
    }

    /// A device went away: the kernel released the attachment with it; detaching only closes
    /// our link descriptor.
    fn forget(&mut self, index: u32) {
        if let Some(gone) = self.attached.remove(&index) {
            info!(device = %gone.name, "device removed");
            if let Ok(program) = self.program(gone.program)
                && let Err(err) = program.detach(gone.link)
            {
                debug!(device = %gone.name, %err, "detach after removal");
            }
            if let Some((link, _)) = gone.xdp
                && let Ok(program) = self.xdp_program()
                && let Err(err) = program.detach(link)
            {
                debug!(device = %gone.name, %err, "XDP detach after removal");
            }
        }
    }

    fn on_link(&mut self, msg: &LinkMessage) {
        let index = msg.header.index;
        let Some(name) = link_name(msg).map(str::to_owned) else {
            return;
        };
        let wanted = self.selector.matches(&name);
        match (self.attached.get_mut(&index), wanted) {
            (Some(existing), true) => existing.name = name,
            (Some(_), false) => self.detach(index),
            (None, true) => {
                if let Err(err) = self.attach(index, &name) {
                    warn!(device = %name, "cannot attach: {err:#}");
                }
            }
            (None, false) => {}
        }
    }

    fn attach(&mut self, index: u32, name: &str) -> Result<()> {
        // tcx links only: they belong to this process and vanish with it, so a crashed agent
        // never leaves an attachment behind. They need Linux 6.6.
        let attach = TcAttach::Tcx {
            attach_type: TcAttachType::Ingress,
            order: LinkOrder::default(),
        };
        let uplink = self.selector.is_uplink(name);
        let program = if uplink { UPLINK_PROGRAM } else { POD_PROGRAM };
        let link = self
            .program(program)?
            .attach(index, attach)
            .with_context(|| {
                format!("attaching {program} to {name} ingress with tcx (needs Linux 6.6 or later)")
            })?;
        let xdp = if uplink {
            match self.attach_xdp(index, name) {
                Ok(xdp) => xdp,
                Err(err) => {
                    let _ = self.program(program).map(|p| p.detach(link));
                    return Err(err);
                }
            }
        } else {
            None
        };
        info!(device = name, ifindex = index, program, "attached");
        self.attached.insert(
            index,
            Attachment {
                name: name.to_owned(),
                program,
                link,
                xdp,
            },
        );
        Ok(())
    }

    fn detach(&mut self, index: u32) {
        if let Some(attachment) = self.attached.remove(&index) {
            let mut result = self
                .program(attachment.program)
                .and_then(|p| Ok(p.detach(attachment.link)?));
            if let Some((link, _)) = attachment.xdp {
                result = result.and(self.xdp_program().and_then(|p| Ok(p.detach(link)?)));
            }
            match result {
                Ok(()) => info!(device = %attachment.name, "detached"),
                Err(err) => warn!(device = %attachment.name, "detach failed: {err:#}"),
            }
        }
    }

    /// Detaches from every device.
    pub fn detach_all(&mut self) {
        let indexes: Vec<u32> = self.attached.keys().copied().collect();
        for index in indexes {
            self.detach(index);
        }
    }

    pub fn attached_names(&self) -> Vec<String> {
        self.attached.values().map(|a| a.name.clone()).collect()
    }
}
