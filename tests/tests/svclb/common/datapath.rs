//! A loaded datapath for BPF_PROG_TEST_RUN, with maps seeded through the agent's own
//! plan -> maps path. Shared by the datapath fixtures and the benchmarks.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{DevMapHash, HashMap, MapData},
    programs::{
        LinkOrder, SchedClassifier, TcAttach, TcAttachType, TestRun as _, TestRunOptions, Xdp,
        XdpMode, tc::SchedClassifierLink, xdp::XdpLink,
    },
};
use svclb::{
    entries::{self, Capacity, MapState},
    kernel::{
        config, loader,
        maps::Maps,
        object::{POD_PROGRAM, UPLINK_PROGRAM, XDP_PROGRAM},
        routes::RouteEpoch,
        sweep::{self, Sweeper},
    },
    plan::{Frontend, FrontendKey, FrontendKind, Plan, PlanBackend, Protocol, Scope},
    reconcile,
};
use svclb_common::{
    CtEntry, CtKey,
    limits::{MAP_CT, MAP_XDP_PORTS},
};

/// A frontend to program: address, port, protocol and its backends' addresses and ports.
pub type FrontendSpec<'a> = (Ipv4Addr, u16, Protocol, &'a [(Ipv4Addr, u16)]);

/// A cluster IP frontend of either family: address, port, protocol and its backends.
pub type ClusterIp = (IpAddr, u16, Protocol, Vec<(IpAddr, u16)>);

/// A loaded datapath with its maps pinned in a private directory, removed on drop.
pub struct Datapath {
    ebpf: Ebpf,
    maps: Maps,
    route_epoch: RouteEpoch,
    programmed: MapState,
    pin_dir: PathBuf,
    sizes: Capacity,
    /// What [`Self::attach_uplink`] attached, detached when dropped.
    uplink_links: (Vec<SchedClassifierLink>, Vec<XdpLink>),
}

impl Datapath {
    pub fn load(name: &str) -> Result<Self> {
        Self::load_with(name, Capacity::DEFAULT)
    }

    /// Loads the datapath with its maps pinned in a scratch directory, removed again if the
    /// load fails (a program the verifier refuses) as when the fixture is dropped.
    pub fn load_with(name: &str, sizes: Capacity) -> Result<Self> {
        let pin_dir = Path::new(svclb_common::host::BPFFS_ROOT)
            .join(svclb_tests::sweep::scratch_name(&format!("fixture-{name}")));
        Self::load_in(pin_dir.clone(), sizes).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&pin_dir);
        })
    }

    fn load_in(pin_dir: PathBuf, sizes: Capacity) -> Result<Self> {
        svclb_common::host::prepare_bpffs(&pin_dir)?;
        // A fixture's pins are fresh: nothing to migrate.
        let (mut ebpf, _) = loader::load(&pin_dir, &sizes)?;
        let maps = Maps::take(&mut ebpf, svclb_common::maglev::Maglev::default())?;
        let route_epoch = RouteEpoch::take(&mut ebpf)?;
        for name in [POD_PROGRAM, UPLINK_PROGRAM] {
            let program: &mut SchedClassifier =
                ebpf.program_mut(name).context("program")?.try_into()?;
            program.load()?;
        }
        let xdp: &mut Xdp = ebpf
            .program_mut(XDP_PROGRAM)
            .context("program")?
            .try_into()?;
        xdp.load()?;
        Ok(Self {
            ebpf,
            maps,
            route_epoch,
            programmed: MapState::default(),
            pin_dir,
            sizes,
            uplink_links: (Vec::new(), Vec::new()),
        })
    }

    /// Loads the conntrack sweep program and pins it beside the maps, as the agent does.
    pub fn sweeper(&mut self) -> Result<Sweeper> {
        sweep::install(&mut self.ebpf, &self.pin_dir)?;
        Sweeper::open(&self.pin_dir)
    }

    /// The conntrack map, opened from its pin (to seed and read entries).
    pub fn conntrack(&self) -> Result<HashMap<MapData, CtKey, CtEntry>> {
        let data = MapData::from_pin(self.pin_dir.join(MAP_CT))?;
        Ok(HashMap::try_from(aya::maps::Map::from_map_data(data)?)?)
    }

    /// What the kernel charges for each pinned map (its `memlock`, bytes), by name.
    pub fn memlock(&self) -> Result<std::collections::BTreeMap<String, u64>> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let mut out = std::collections::BTreeMap::new();
        for entry in std::fs::read_dir(&self.pin_dir)? {
            let path = entry?.path();
            let Ok(data) = MapData::from_pin(&path) else {
                continue;
            };
            let fd = data.fd().as_fd().as_raw_fd();
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
            let memlock = info
                .lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .with_context(|| format!("no memlock for {}", path.display()))?
                .trim()
                .parse()?;
            let name = path.file_name().context("a name")?.to_string_lossy();
            out.insert(name.into_owned(), memlock);
        }
        Ok(out)
    }

    /// Writes the datapath's settings, as the agent does at start (a fixture starts with none:
    /// every setting's default).
    pub fn configure(&mut self, settings: &config::Settings) -> Result<()> {
        config::write(&mut self.ebpf, settings)
    }

    /// A map, opened from its pin (to write what the agent would).
    pub fn pinned(&self, name: &str) -> Result<aya::maps::Map> {
        let data = MapData::from_pin(self.pin_dir.join(name))?;
        Ok(aya::maps::Map::from_map_data(data)?)
    }

    /// Starts a new route epoch, as the agent does on a route, neighbour or link notification.
    pub fn bump_route_epoch(&mut self) -> Result<()> {
        self.route_epoch.bump()
    }

    /// The agent's handles on the maps.
    pub fn maps_mut(&mut self) -> &mut Maps {
        &mut self.maps
    }

    /// Programs cluster IP `frontends` (address, port, protocol, backends) through the agent's
    /// pipeline.
    pub fn program_services(&mut self, frontends: &[FrontendSpec<'_>]) {
        let frontends: Vec<ClusterIp> = frontends
            .iter()
            .map(|(addr, port, protocol, backends)| {
                let backends = backends.iter().map(|(a, p)| (IpAddr::V4(*a), *p)).collect();
                (IpAddr::V4(*addr), *port, *protocol, backends)
            })
            .collect();
        self.program_cluster_ips(&frontends);
    }

    /// [`Self::program_services`] for addresses of either family.
    pub fn program_cluster_ips(&mut self, frontends: &[ClusterIp]) {
        let mut plan = Plan::default();
        for (addr, port, protocol, backends) in frontends {
            plan.frontends.insert(
                FrontendKey::new(*addr, *port, *protocol),
                Frontend::new(
                    format!("default/svc-{addr}"),
                    FrontendKind::ClusterIP,
                    Scope::Internal,
                    backends
                        .iter()
                        .map(|(a, p)| PlanBackend::remote(*a, *p))
                        .collect(),
                ),
            );
        }
        self.program(&plan);
    }

    /// Programs `plan` through the agent's pipeline.
    pub fn program(&mut self, plan: &Plan) {
        let capacity = Capacity {
            maglev_size: svclb_common::maglev::DEFAULT_TABLE_SIZE,
            ..self.sizes
        };
        let (desired, diags) = entries::desired(plan, &self.programmed, capacity);
        assert!(diags.is_empty(), "{diags:?}");
        let report = reconcile::full::sync(&mut self.programmed, &desired, &mut self.maps);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
    }

    /// Runs the pod-device program once on `frame`: its verdict and output frame.
    pub fn run(&mut self, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        let (verdict, out, _) = self.run_repeat(frame, 1)?;
        Ok((verdict, out))
    }

    /// Runs the uplink program once on `frame`.
    pub fn run_uplink(&mut self, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        let (verdict, out, _) = self.run_program(UPLINK_PROGRAM, frame, 1, None)?;
        Ok((verdict, out))
    }

    /// Runs the uplink program once on `frame` as if it arrived on device `ifindex` of the
    /// calling thread's namespace (whose routes and neighbours its FIB lookups then see).
    pub fn run_uplink_on(&mut self, ifindex: u32, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        let (verdict, out, _) = self.run_uplink_repeat(ifindex, frame, 1)?;
        Ok((verdict, out))
    }

    /// [`Self::run_uplink_on`] `repeat` times on one copy of `frame`, with the kernel's average
    /// time per run.
    pub fn run_uplink_repeat(
        &mut self,
        ifindex: u32,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(u32, Vec<u8>, std::time::Duration)> {
        // `struct __sk_buff` up to `ifindex` (11th word); the kernel wants the rest zero.
        let mut ctx = [0u8; 44];
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        self.run_program(UPLINK_PROGRAM, frame, repeat, Some(&ctx))
    }

    /// Lets the XDP program finish flows on device `ifindex` of the calling thread's
    /// namespace, as the agent does for the uplinks `--xdp-finish` allows.
    pub fn finish_xdp_on(&mut self, ifindex: u32) -> Result<()> {
        let data = MapData::from_pin(self.pin_dir.join(MAP_XDP_PORTS))?;
        let mut ports = DevMapHash::try_from(aya::maps::Map::from_map_data(data)?)?;
        ports.insert(ifindex, ifindex, None, 0)?;
        Ok(())
    }

    /// Attaches the uplink programs to device `ifindex` of the calling thread's namespace, as
    /// the agent does: TC on tcx ingress, and XDP in `xdp` mode unless `None`. They stay
    /// attached until [`Self::detach_uplinks`] or the datapath's drop.
    pub fn attach_uplink(&mut self, ifindex: u32, xdp: Option<XdpMode>) -> Result<()> {
        let tc: &mut SchedClassifier = self
            .ebpf
            .program_mut(UPLINK_PROGRAM)
            .context("program")?
            .try_into()?;
        let attach = TcAttach::Tcx {
            attach_type: TcAttachType::Ingress,
            order: LinkOrder::default(),
        };
        let id = tc
            .attach(ifindex, attach)
            .context("attaching the uplink program (tcx)")?;
        self.uplink_links.0.push(tc.take_link(id)?);
        if let Some(mode) = xdp {
            let program: &mut Xdp = self
                .ebpf
                .program_mut(XDP_PROGRAM)
                .context("program")?
                .try_into()?;
            let id = program
                .attach(ifindex, mode)
                .with_context(|| format!("attaching the XDP program ({mode:?})"))?;
            self.uplink_links.1.push(program.take_link(id)?);
        }
        Ok(())
    }

    /// Detaches what [`Self::attach_uplink`] attached.
    pub fn detach_uplinks(&mut self) {
        self.uplink_links = (Vec::new(), Vec::new());
    }

    /// The kernel's ids of the uplink's XDP and TC programs.
    pub fn uplink_program_ids(&self) -> Result<(u32, u32)> {
        let id = |name: &str| -> Result<u32> {
            let program = self.ebpf.program(name).context("program")?;
            Ok(program.info()?.id())
        };
        Ok((id(XDP_PROGRAM)?, id(UPLINK_PROGRAM)?))
    }

    /// Runs the XDP program once on `frame` as if it arrived on device `ifindex` of the calling
    /// thread's namespace: its action and output frame.
    pub fn run_xdp_on(&mut self, ifindex: u32, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        let (action, out, _) = self.run_xdp_repeat(ifindex, frame, 1)?;
        Ok((action, out))
    }

    /// [`Self::run_xdp_on`] `repeat` times on one copy of `frame`, with the kernel's average
    /// time per run.
    pub fn run_xdp_repeat(
        &mut self,
        ifindex: u32,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(u32, Vec<u8>, std::time::Duration)> {
        // `struct xdp_md`: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex, as offsets into the frame (no metadata before it).
        let mut ctx = [0u8; 24];
        let len = u32::try_from(frame.len()).context("frame too long")?;
        ctx[4..8].copy_from_slice(&len.to_ne_bytes());
        ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        let program: &mut Xdp = self
            .ebpf
            .program_mut(XDP_PROGRAM)
            .context("program")?
            .try_into()?;
        let mut out = vec![0u8; frame.len() + 256];
        let result = program.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat,
            ..TestRunOptions::default()
        })?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out, result.duration))
    }

    /// Runs the program `repeat` times on one copy of `frame` (a program that rewrites the
    /// frame sees its own output from the second run on): verdict, output, and the kernel's
    /// average time per run.
    pub fn run_repeat(
        &mut self,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(u32, Vec<u8>, std::time::Duration)> {
        self.run_program(POD_PROGRAM, frame, repeat, None)
    }

    fn run_program(
        &mut self,
        name: &str,
        frame: &[u8],
        repeat: u32,
        ctx_in: Option<&[u8]>,
    ) -> Result<(u32, Vec<u8>, std::time::Duration)> {
        let program: &mut SchedClassifier =
            self.ebpf.program_mut(name).context("program")?.try_into()?;
        // Room for an answer that grows the frame (a DNS reply, up to a 1500-byte MTU).
        let mut out = vec![0u8; frame.len().max(1514) + 256];
        let result = program.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in,
            repeat,
            ..TestRunOptions::default()
        })?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out, result.duration))
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}
