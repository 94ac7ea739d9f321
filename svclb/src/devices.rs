//! Attaching the TC program to the uplinks and to every pod-facing device that matches a glob,
//! including devices that appear later (followed over rtnetlink).

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        tc::{SchedClassifierLinkId, TcAttach},
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

use crate::ebpf::INGRESS_PROGRAM;

/// Which devices get the program.
#[derive(Clone, Debug)]
pub struct DeviceSelector {
    pub uplinks: Vec<String>,
    pub pod_devices: Option<Pattern>,
}

impl DeviceSelector {
    pub fn matches(&self, name: &str) -> bool {
        self.uplinks.iter().any(|u| u == name)
            || self.pod_devices.as_ref().is_some_and(|p| p.matches(name))
    }
}

struct Attachment {
    name: String,
    link: SchedClassifierLinkId,
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
        let program: &mut SchedClassifier = ebpf
            .program_mut(INGRESS_PROGRAM)
            .with_context(|| format!("the datapath object has no program {INGRESS_PROGRAM}"))?
            .try_into()?;
        program
            .load()
            .with_context(|| format!("loading program {INGRESS_PROGRAM} (is BPF available?)"))?;
        Ok(Self {
            ebpf,
            selector,
            attached: BTreeMap::new(),
        })
    }

    fn program(&mut self) -> Result<&mut SchedClassifier> {
        Ok(self
            .ebpf
            .program_mut(INGRESS_PROGRAM)
            .with_context(|| format!("the datapath object has no program {INGRESS_PROGRAM}"))?
            .try_into()?)
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
            if let Ok(program) = self.program()
                && let Err(err) = program.detach(gone.link)
            {
                debug!(device = %gone.name, %err, "detach after removal");
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
        let link = self.program()?.attach(index, attach).with_context(|| {
            format!(
                "attaching {INGRESS_PROGRAM} to {name} ingress with tcx (needs Linux 6.6 or later)"
            )
        })?;
        info!(device = name, ifindex = index, "attached");
        self.attached.insert(
            index,
            Attachment {
                name: name.to_owned(),
                link,
            },
        );
        Ok(())
    }

    fn detach(&mut self, index: u32) {
        if let Some(attachment) = self.attached.remove(&index) {
            let result = self.program().and_then(|p| Ok(p.detach(attachment.link)?));
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
