//! The agent: starts everything ([`run`]), then serves: follows the source, syncs on the
//! [`schedule`], attaches devices as they come and go, until SIGTERM or Ctrl-C. A stopped
//! agent leaves the datapath attached and serving (its links and maps are pinned).
//!
//! - [`syncer`]: one sync, source -> plan -> entries -> maps;
//! - [`schedule`]: when the next sync is due (debounce, retry with backoff);
//! - [`health`]: the health-check node ports of Local-policy services;
//! - [`conntrack`]: the worker that purges departed backends' flows and sweeps ended ones.

pub mod conntrack;
pub mod health;
pub mod healthz;
mod host_dns;
pub mod schedule;
mod syncer;

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use futures::{StreamExt as _, stream::BoxStream};
use netlink_packet_core::NetlinkMessage;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::{Handle, MulticastGroup, new_multicast_connection};
use svclb_common::{
    limits::{SNAT_PORT_MAX, SNAT_PORT_MIN},
    maglev::Maglev,
};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::{error, info, warn};

use self::{
    conntrack::Purger,
    health::HealthChecks,
    healthz::ProxyHealth,
    schedule::SyncSchedule,
    syncer::{DnsNames, Pressure, Syncer},
};
use crate::{
    entries::{Capacity, MapState},
    kernel::{
        self, addresses,
        attach::{DeviceSelector, Devices},
        config::{Settings, SnatPorts},
        host_pair, loader,
        maps::Maps,
        migrate::Migration,
        routes::{self, RouteEpoch},
        socket::{self, SocketHooks, SocketLb},
        sweep,
    },
    plan::{AddressRule, Planner},
    reconcile::Index,
    source::{Source, SourceConfig},
    telemetry::{
        http,
        metrics::{ERROR_DEVICE, ERROR_MAP_WRITE, ERROR_WATCH, ErrorCounters, Metrics},
        report::{AgentStatus, unix_ms},
        traffic::TrafficCollector,
    },
};

/// What the agent says when its pins will vanish with it.
pub const PRIVATE_PINS: &str =
    "the pinned maps and links will not outlive this agent, and a restart starts from nothing";

/// Devices are listed again this often, in case a link notification was lost.
const RESCAN: Duration = Duration::from_secs(10);
/// While the first lists are outstanding, say so this often.
const READY_LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node_name: String,
    /// `--nodeport-addresses` (NodePorts only on node addresses inside these), and which
    /// externalIPs are refused (`--service-cidrs`, `--allow-reserved-external-ips`).
    pub addresses: AddressRule,
    pub source: SourceConfig,
    pub devices: DeviceSelector,
    pub bpffs_dir: PathBuf,
    /// Every map's size, and the size of each Maglev table.
    pub capacity: Capacity,
    /// Table size and seed of every Maglev table.
    pub maglev: Maglev,
    /// Where `/metrics` and `/healthz` are served.
    pub metrics_addr: SocketAddr,
    /// Where kube-proxy's health server (`/livez`, `/healthz`) listens (`None`: nowhere).
    pub healthz_addr: Option<SocketAddr>,
    /// How long a change may wait unwritten before `/livez` fails.
    pub healthz_timeout: Duration,
    /// Time between two conntrack sweeps (`None`: no sweep).
    pub conntrack_gc_interval: Option<Duration>,
    /// Socket-level load balancing (`None`: off, `--socket-lb=false`).
    pub socket_lb: Option<SocketLb>,
    /// NodePorts on the loopback addresses too (served by the socket hooks).
    pub localhost_nodeports: bool,
    /// `--service-loopback-address` (IPv4, IPv6): the source of hairpin flows on the TC path.
    pub service_loopback: (Option<Ipv4Addr>, Option<Ipv6Addr>),
    /// `--snat-ports`: the source ports of flows SNATed to remote backends.
    pub snat_ports: SnatPorts,
    /// The DNS responder (`None`: off, no `--cluster-dns`).
    pub dns: Option<DnsConfig>,
}

/// `--cluster-dns` and `--cluster-domain`.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    pub servers: Vec<IpAddr>,
    pub domain: String,
}

/// A started agent: what the serve loop drives.
struct Agent {
    config: AgentConfig,
    syncer: Syncer,
    devices: Devices,
    /// rtnetlink: a handle for listing links, and the link, route and neighbour
    /// notifications.
    handle: Handle,
    link_events: BoxStream<'static, NetlinkMessage<RouteNetlinkMessage>>,
    /// The epoch of the routes XDP caches, bumped on the notifications that change them.
    route_epoch: RouteEpoch,
    route_watch: routes::Watch,
    metrics: Arc<Metrics>,
    errors: ErrorCounters,
    /// Serves `/metrics`, `/status` and `/healthz` while the agent runs.
    _http: tokio::task::JoinHandle<()>,
    /// kube-proxy's health server, when there is one.
    _healthz: Option<tokio::task::JoinHandle<()>>,
}

pub async fn run(config: AgentConfig) -> Result<()> {
    loader::require_root("svclb agent")?;
    let sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let sigint = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    raise_open_files_limit();
    let agent = start(config).await?;
    let bpffs_dir = agent.config.bpffs_dir.clone();
    agent.serve(sigterm, sigint).await?;
    info!(
        "stopped; the datapath stays attached, its links and maps pinned in {} (`svclb agent --cleanup` removes them)",
        bpffs_dir.display()
    );
    Ok(())
}

/// Raises the soft limit on open files to the hard one (as Go programs do at start): the
/// servers hold a file per connection, and running out makes every accept fail.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(err) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                warn!("raising the open files limit from {soft} to {hard}: {err}");
            }
        }
        Ok(_) => {}
        Err(err) => warn!("reading the open files limit: {err}"),
    }
}

/// Opens the source, loads the datapath (adopting what an earlier run pinned), attaches the
/// devices and starts the metrics endpoint.
async fn start(config: AgentConfig) -> Result<Agent> {
    let errors = ErrorCounters::default();
    let source = Source::open(&config.source, errors.counter(ERROR_WATCH)).await?;
    let (mut ebpf, mut maps, programmed, private_pins, migration) = open_datapath(&config)?;
    let mut dns = DnsNames::start(&mut maps, config.dns.as_ref())?;
    let mut sockets = socket_hooks(&mut ebpf, &config, &errors)?;
    // Whatever fails from here takes the hooks this start attached back off.
    let started = async {
        // Subscribe before listing, so a device created in between is not missed.
        let mut groups = vec![MulticastGroup::Link];
        groups.extend(routes::GROUPS);
        let (connection, handle, link_events) =
            new_multicast_connection(&groups).context("opening an rtnetlink socket")?;
        tokio::spawn(connection);
        let route_epoch = RouteEpoch::take(&mut ebpf)?;
        let host_pair = host_dns::prepare(&handle, config.dns.is_some(), &errors).await;
        let mut devices = Devices::new(
            ebpf,
            config.devices.clone(),
            &config.bpffs_dir,
            errors.counter(ERROR_DEVICE),
        )?;
        if let Err(err) = devices.attach_existing(&handle).await {
            devices.abandon();
            return Err(err);
        }
        // The old programs are detached now: what they added meanwhile comes over too.
        migration.finish()?;
        if let (true, Some(dns), Some(config)) = (host_pair, dns.as_mut(), config.dns.as_ref()) {
            host_dns::route(&handle, &devices, dns, &config.servers, &errors).await;
        }

        let traffic = match TrafficCollector::open(&config.bpffs_dir) {
            Ok(traffic) => Some(Arc::new(traffic)),
            Err(err) => {
                warn!("per-frontend counters are not exported: {err:#}");
                None
            }
        };
        let metrics = Metrics::new(errors.clone(), traffic.clone());
        *metrics.status() = AgentStatus {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            node: config.node_name.clone(),
            source: source.describe(),
            pid: std::process::id(),
            started_unix: unix_ms() / 1000,
            private_pins,
            socket_lb: match &sockets {
                Ok(hooks) => Some(hooks.describe()),
                Err(None) => None,
                Err(Some(err)) => Some(format!("not attached: {err:#}")),
            },
            ..AgentStatus::default()
        };
        metrics.bpffs_private.set(i64::from(private_pins));
        metrics.set_devices(devices.attached_names(), devices.problems());
        let http = http::serve(config.metrics_addr, metrics.clone()).await?;
        let proxy_health = ProxyHealth::new(config.healthz_timeout);
        let healthz = match config.healthz_addr {
            Some(addr) => Some(healthz::serve(addr, proxy_health.clone()).await?),
            None => None,
        };
        let mut planner = Planner::new(
            &config.node_name,
            AddressRule {
                localhost: config.localhost_nodeports && sockets.is_ok(),
                ..config.addresses.clone()
            },
        );
        // Without them NodePorts still listen on the Node object's addresses; the rescan tries
        // again.
        match addresses::of_devices(&handle, &config.devices.uplinks).await {
            Ok(found) => {
                planner.set_uplink_addresses(found);
            }
            Err(err) => {
                warn!("reading the uplinks' addresses: {err:#}");
                errors.counter(ERROR_DEVICE).inc();
            }
        }
        let syncer = Syncer {
            dns,
            metrics: metrics.clone(),
            planner,
            not_programmed: 0,
            source,
            maps,
            programmed,
            index: Index::default(),
            complete: false,
            pressure: Pressure::default(),
            traffic,
            purger: Purger::start(
                &config.bpffs_dir,
                metrics.clone(),
                config.conntrack_gc_interval,
            )?,
            capacity: config.capacity,
            reported: BTreeSet::new(),
            health: HealthChecks::new(proxy_health.clone()),
            proxy_health,
            node_seen: false,
            nodeports_logged: None,
        };
        Ok(Agent {
            config,
            syncer,
            devices,
            handle,
            link_events: link_events.map(|(message, _)| message).boxed(),
            route_epoch,
            route_watch: routes::Watch::default(),
            metrics,
            errors,
            _http: http,
            _healthz: healthz,
        })
    }
    .await;
    if started.is_err()
        && let Ok(hooks) = sockets.as_mut()
    {
        hooks.abandon();
    }
    started
}

/// Attaches the socket hooks as configured, or detaches those of an earlier run, and writes
/// the datapath's settings to match. A failure to attach is counted and reported
/// (`Err(Some)`), and the TC programs serve every client; `Err(None)`: socket-LB is off.
fn socket_hooks(
    ebpf: &mut aya::Ebpf,
    config: &AgentConfig,
    errors: &ErrorCounters,
) -> Result<Result<SocketHooks, Option<anyhow::Error>>> {
    let hooks = match &config.socket_lb {
        Some(lb) => SocketHooks::attach(ebpf, lb, &config.bpffs_dir).map_err(|err| {
            error!(
                "socket-level load balancing is off, the TC programs serve every client: {err:#}"
            );
            errors.counter(ERROR_DEVICE).inc();
            Some(err)
        }),
        None => Err(None),
    };
    if hooks.is_err() {
        let n = socket::detach(&config.bpffs_dir);
        if n > 0 {
            info!("socket-level load balancing is off: {n} socket hooks detached");
        }
    }
    let mut hooks = hooks;
    let hostns_only = config
        .socket_lb
        .as_ref()
        .filter(|lb| lb.hostns_only && hooks.is_ok())
        .map(|_| socket::netns_cookie())
        .transpose();
    let written = hostns_only.and_then(|hostns_only| {
        let settings = Settings {
            socket_lb: hooks.is_ok(),
            hostns_only,
            loopback4: config.service_loopback.0,
            loopback6: config.service_loopback.1,
            snat_ports: snat_ports(config.snat_ports),
        };
        kernel::config::write(ebpf, &settings)
    });
    if let Err(err) = written {
        if let Ok(hooks) = hooks.as_mut() {
            hooks.abandon();
        }
        return Err(err);
    }
    Ok(hooks)
}

/// Loads the datapath with its maps pinned, and takes over what an earlier run left: its
/// entries are the starting point of the diff, so the first sync deletes whatever is stale
/// and rewrites nothing that is right.
/// The SNAT port range for the datapath: `--snat-ports`, resolved; none (the datapath's
/// default, logged) when `auto` finds no room.
fn snat_ports(flag: SnatPorts) -> Option<(u16, u16)> {
    match flag.resolve() {
        Ok((min, max)) => {
            info!("flows SNATed to remote backends get source ports {min}-{max}");
            Some((min, max))
        }
        Err(err) => {
            warn!(
                "{err:#}: flows SNATed to remote backends get source ports {SNAT_PORT_MIN}-{SNAT_PORT_MAX}, which the node's own connections may be given too"
            );
            None
        }
    }
}

fn open_datapath(config: &AgentConfig) -> Result<(aya::Ebpf, Maps, MapState, bool, Migration)> {
    let private = svclb_common::host::prepare_bpffs(&config.bpffs_dir)?.private();
    if private {
        warn!(
            "{PRIVATE_PINS}: {} is on a bpf filesystem of this agent's own mount namespace (as \
             under `ip netns exec`), not the host's; run it in the host's mount namespace \
             (`nsenter --net`) or with the host's bpffs mounted",
            config.bpffs_dir.display()
        );
    }
    let (mut ebpf, migration) = loader::load(&config.bpffs_dir, &config.capacity)?;
    let mut maps = Maps::take(&mut ebpf, config.maglev)?;
    sweep::install(&mut ebpf, &config.bpffs_dir)?;
    let programmed = maps.read().context("reading the pinned maps")?;
    maps.settle_counters(&programmed)
        .context("giving the adopted frontends their counters")?;
    info!(
        frontends = programmed.services.len(),
        slots = programmed.slots.len(),
        backends = programmed.backends.len(),
        pin_dir = %config.bpffs_dir.display(),
        "adopted pinned maps"
    );
    Ok((ebpf, maps, programmed, private, migration))
}

/// Sleeps until `due`; never, when nothing is due.
async fn until(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

impl Agent {
    /// Serves until SIGTERM or Ctrl-C. The first sync waits for a complete view: programming
    /// a half-listed cluster would delete the services not seen yet. Meanwhile the maps keep
    /// serving what they hold, and devices keep being attached.
    async fn serve(mut self, mut sigterm: Signal, mut sigint: Signal) -> Result<()> {
        let mut rescan = tokio::time::interval_at(tokio::time::Instant::now() + RESCAN, RESCAN);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut waiting_log = tokio::time::interval_at(
            tokio::time::Instant::now() + READY_LOG_EVERY,
            READY_LOG_EVERY,
        );
        let (mut link_events_open, mut source_open, mut ready) = (true, true, false);
        let mut readiness = self.syncer.source.readiness();
        let mut schedule = SyncSchedule::default();
        loop {
            tokio::select! {
                _ = sigterm.recv() => { info!("SIGTERM: stopping"); break; }
                _ = sigint.recv() => { info!("interrupted: stopping"); break; }
                result = &mut readiness, if !ready => {
                    result?;
                    ready = true;
                    schedule.now(Instant::now());
                }
                _ = waiting_log.tick(), if !ready => {
                    warn!("{} has not listed everything yet; waiting, serving what the maps hold", self.syncer.source.describe());
                }
                message = self.link_events.next(), if link_events_open => match message {
                    Some(message) => self.on_link_message(message),
                    None => {
                        link_events_open = false;
                        error!("link notifications stopped; new devices are found by the rescan every {RESCAN:?}");
                    }
                },
                _ = rescan.tick() => {
                    self.rescan().await;
                    if self.refresh_uplink_addresses().await && ready {
                        let now = Instant::now();
                        schedule.now(now);
                        self.syncer.proxy_health.queued(now);
                    }
                }
                change = self.syncer.source.next_change(), if source_open => match change {
                    Some(()) => {
                        let now = Instant::now();
                        schedule.changed(now);
                        self.syncer.proxy_health.queued(now);
                    }
                    None => {
                        source_open = false;
                        error!("{} reports no more changes; serving the last state", self.syncer.source.describe());
                    }
                },
                () = until(schedule.due()), if ready => self.sync(&mut schedule),
            }
        }
        Ok(())
    }

    fn on_link_message(&mut self, message: NetlinkMessage<RouteNetlinkMessage>) {
        if let Some(device) = host_pair::deleted(&message) {
            self.host_pair_gone(device);
        }
        if self.route_watch.invalidates(&message)
            && let Err(err) = self.route_epoch.bump()
        {
            warn!("routes cached by XDP live out their age: {err:#}");
            self.errors.counter(ERROR_MAP_WRITE).inc();
        }
        self.devices.on_message(message);
        self.report_devices();
    }

    /// The DNS responder's veth pair was deleted under the agent: the host's queries go to
    /// the DNS service again, until a restart makes the pair anew.
    fn host_pair_gone(&mut self, device: &str) {
        let syncer = &mut self.syncer;
        let Some(dns) = syncer.dns.as_mut() else {
            return;
        };
        match dns.host_pair_gone(&mut syncer.maps) {
            Ok(true) => {
                error!(
                    device,
                    "the DNS responder's device was deleted: the host's own DNS queries go to the DNS service until the agent restarts"
                );
                self.errors.counter(ERROR_DEVICE).inc();
            }
            Ok(false) => {}
            Err(err) => {
                error!(device, "the DNS responder's device was deleted: {err:#}");
                self.errors.counter(ERROR_MAP_WRITE).inc();
            }
        }
    }

    async fn rescan(&mut self) {
        if let Err(err) = self.devices.rescan(&self.handle).await {
            warn!("device rescan: {err:#}");
            self.errors.counter(ERROR_DEVICE).inc();
        }
        self.report_devices();
    }

    /// Reads the uplinks' addresses again (NodePorts fall back on them); whether they
    /// changed, so a sync should follow.
    async fn refresh_uplink_addresses(&mut self) -> bool {
        match addresses::of_devices(&self.handle, &self.config.devices.uplinks).await {
            Ok(found) => self.syncer.planner.set_uplink_addresses(found),
            Err(err) => {
                warn!("reading the uplinks' addresses: {err:#}");
                self.errors.counter(ERROR_DEVICE).inc();
                false
            }
        }
    }

    fn report_devices(&self) {
        self.metrics
            .set_devices(self.devices.attached_names(), self.devices.problems());
    }

    /// Runs the sync that is due and schedules what follows; the first one makes the agent
    /// ready.
    fn sync(&mut self, schedule: &mut SyncSchedule) {
        let first = !self.metrics.ready.load(Ordering::Relaxed);
        if schedule.begin(first) {
            info!("retrying what could not be written");
        }
        let incomplete = self.syncer.sync();
        schedule.end(Instant::now(), incomplete);
        if let Some(at) = self.syncer.pressure.full_due() {
            schedule.at(at);
        }
        if first {
            self.metrics.ready.store(true, Ordering::Relaxed);
            self.metrics.status().ready = true;
            info!(
                node = %self.config.node_name,
                devices = ?self.devices.attached_names(),
                source = %self.syncer.source.describe(),
                "serving"
            );
        }
    }
}
