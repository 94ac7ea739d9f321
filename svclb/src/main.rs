use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use glob::Pattern;
use ipnet::IpNet;
use prometheus_client::metrics::counter::Counter;
use svclb::{
    agent::{self, AgentConfig, DnsConfig},
    cli::{list, maglev as maglev_cmd, plan as plan_output, status},
    entries::Capacity,
    kernel::{
        addresses,
        attach::{DeviceSelector, XdpAttach, XdpFinish},
        config::SnatPorts,
        host_pair, loader, pins,
        socket::SocketLb,
    },
    plan::{self, AddressRule},
    source::{Source, SourceConfig},
};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "svclb",
    version,
    about = "Kubernetes Service load balancer in the Linux kernel"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Program the datapath from Services and EndpointSlices and keep it in sync.
    Agent(Box<AgentArgs>),
    /// Print what the agent would program for a node, without touching the kernel.
    Plan {
        /// The node to plan for (its Node object, if present, gives zone and addresses).
        #[arg(long, env = "SVCLB_NODE_NAME")]
        node_name: String,
        #[command(flatten)]
        source: SourceArgs,
        /// Serve NodePorts only on node addresses inside these CIDRs.
        #[arg(long, value_delimiter = ',')]
        nodeport_addresses: Vec<IpNet>,
        /// Uplink devices, comma separated: NodePorts fall back on their addresses for a
        /// family the Node object gives none of (or without a Node object).
        #[arg(long, value_delimiter = ',')]
        devices: Vec<String>,
        /// NodePorts on 127.0.0.1 and ::1 too, as an agent with socket-level load balancing
        /// serves them (`--localhost-nodeports`).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        localhost_nodeports: bool,
        #[command(flatten)]
        external_ips: ExternalIpArgs,
        /// Also show the cluster's DNS records under this domain (kubelet's
        /// `--cluster-domain`, e.g. cluster.local), as the Kubernetes DNS specification gives
        /// them.
        #[arg(long)]
        cluster_domain: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Print the Maglev lookup table of a set of backends (the same table Cilium computes).
    Maglev {
        /// Table size: a prime from 251 to 131071.
        #[arg(long, default_value_t = svclb_common::maglev::DEFAULT_TABLE_SIZE)]
        table_size: u32,
        /// Seed: base64 of 12 bytes (Cilium's default unless given).
        #[arg(long, default_value = svclb_common::maglev::DEFAULT_SEED)]
        seed: String,
        /// A backend as ADDR:PORT/PROTO[=WEIGHT]; repeat for each.
        #[arg(long = "backend", required = true)]
        backends: Vec<String>,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// What to read first: the agent (version, node, last sync), the attached links and
    /// their programs, the maps' fill, warnings.
    Status {
        #[arg(long, default_value = DEFAULT_BPFFS_DIR)]
        bpffs_dir: PathBuf,
        /// The agent's --metrics-addr (its /status endpoint).
        #[arg(long, default_value = "127.0.0.1:9965")]
        agent_addr: std::net::SocketAddr,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Print the frontends and backends the pinned maps hold.
    List {
        #[arg(long, default_value = DEFAULT_BPFFS_DIR)]
        bpffs_dir: PathBuf,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Mount a bpf filesystem on /sys/fs/bpf unless one is there, make --bpffs-dir in it, and
    /// exit: the chart's init container, the one step that needs a privileged container (a
    /// mount the host must see), so the agent's own container needs none.
    MountBpffs {
        #[arg(long, default_value = DEFAULT_BPFFS_DIR)]
        bpffs_dir: PathBuf,
    },
}

const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/svclb";

/// Which externalIPs are refused (besides the special ranges: loopback, link-local, ...).
#[derive(clap::Args)]
struct ExternalIpArgs {
    /// The service CIDRs (kube-apiserver's `--service-cluster-ip-range`): no externalIP is
    /// served inside them.
    #[arg(long, value_delimiter = ',')]
    service_cidrs: Vec<IpNet>,
    /// Serve externalIPs inside the service CIDRs and on this node's own addresses (by
    /// default refused: such an externalIP captures that address's traffic).
    #[arg(long)]
    allow_reserved_external_ips: bool,
}

impl ExternalIpArgs {
    /// The address rule of NodePorts inside `nodeport_cidrs`, with these externalIP limits.
    fn rule(self, nodeport_cidrs: Vec<IpNet>) -> AddressRule {
        AddressRule {
            cidrs: nodeport_cidrs,
            service_cidrs: self.service_cidrs,
            allow_reserved_external_ips: self.allow_reserved_external_ips,
            ..AddressRule::default()
        }
    }
}

/// Where objects come from: a manifests directory, a kubeconfig, or (neither given) the
/// in-cluster service account.
#[derive(clap::Args)]
struct SourceArgs {
    /// Directory of Service, EndpointSlice and Node YAML manifests, watched for changes.
    #[arg(long, conflicts_with = "kubeconfig")]
    manifests: Option<PathBuf>,
    /// Watch the Kubernetes API with this kubeconfig (default: in-cluster configuration).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

impl SourceArgs {
    /// The source; with `dns`, reading what only the DNS records need too.
    fn config(self, dns: bool) -> SourceConfig {
        match self.manifests {
            Some(dir) => SourceConfig::Manifests(dir),
            None => SourceConfig::Kubernetes {
                kubeconfig: self.kubeconfig,
                dns,
            },
        }
    }
}

#[derive(clap::Args)]
struct AgentArgs {
    /// Remove everything svclb attached and pinned in --bpffs-dir (links, so the datapath
    /// detaches, and maps), then exit.
    #[arg(long)]
    cleanup: bool,
    /// Build the configuration from the other flags, print it and exit, starting nothing (no
    /// root needed): checks what a chart or a unit file passes.
    #[arg(long, conflicts_with = "cleanup")]
    check_config: bool,
    /// Name of this node (EndpointSlice `nodeName` equal to it marks local endpoints).
    #[arg(long, env = "SVCLB_NODE_NAME", required_unless_present = "cleanup")]
    node_name: Option<String>,
    #[command(flatten)]
    source: SourceArgs,
    /// Uplink devices, comma separated.
    #[arg(long, value_delimiter = ',', required_unless_present = "cleanup")]
    devices: Vec<String>,
    /// Glob of pod-facing devices, e.g. 'veth*'; devices created later are attached too.
    #[arg(long)]
    pod_devices: Option<String>,
    /// Serve NodePorts only on node addresses inside these CIDRs (default: all the addresses
    /// of this node's Node object).
    #[arg(long, value_delimiter = ',')]
    nodeport_addresses: Vec<IpNet>,
    #[command(flatten)]
    external_ips: ExternalIpArgs,
    /// Where maps are pinned. Pins survive the agent so a restart adopts their entries.
    #[arg(long, default_value = DEFAULT_BPFFS_DIR)]
    bpffs_dir: PathBuf,
    /// Where `/metrics` (Prometheus), `/status` and `/healthz` (ready once the first full sync
    /// is done) are served: this node only by default, as kube-proxy's metrics are. An
    /// unspecified address (`0.0.0.0`, `::`) is every address of both families.
    #[arg(long, default_value = "127.0.0.1:9965")]
    metrics_addr: std::net::SocketAddr,
    /// Where kube-proxy's health server (`/livez`, `/healthz`) listens, as cloud load
    /// balancers probe it; "" turns it off. An unspecified address (`0.0.0.0`, `::`) is
    /// every address of both families, as in kube-proxy.
    #[arg(long, default_value = "0.0.0.0:10256")]
    healthz_bind_address: String,
    /// Seconds a change may wait unwritten before `/livez` (and `/healthz`) fail.
    #[arg(long, default_value_t = svclb::agent::healthz::DEFAULT_TIMEOUT.as_secs())]
    healthz_timeout: u64,
    /// Seconds between two sweeps of the conntrack for flows that are over (Cilium's
    /// `--conntrack-gc-interval`); 0 turns the sweep off, leaving the datapath to take over
    /// the entries of ended flows when it needs their room or SNAT ports.
    #[arg(long, default_value_t = svclb::agent::conntrack::SWEEP_EVERY.as_secs())]
    conntrack_gc_interval: u64,
    /// Capacity of the services map (frontends).
    #[arg(long, default_value_t = Capacity::DEFAULT.services)]
    services_map_size: usize,
    /// Capacity of the backends map.
    #[arg(long, default_value_t = Capacity::DEFAULT.backends)]
    backends_map_size: usize,
    /// Capacity of the slots map (sum of backends over frontends).
    #[arg(long, default_value_t = Capacity::DEFAULT.slots)]
    slots_map_size: usize,
    /// Capacity of the conntrack map (two entries per flow).
    #[arg(long, default_value_t = Capacity::DEFAULT.conntrack)]
    conntrack_map_size: usize,
    /// How many NodePort, LoadBalancer and external-IP frontends get a Maglev table (each
    /// takes 4 x M bytes of kernel memory); frontends beyond pick at random.
    #[arg(long, default_value_t = Capacity::DEFAULT.maglev_tables)]
    maglev_map_size: usize,
    /// Capacity of the session-affinity map (one entry per client and service).
    #[arg(long, default_value_t = Capacity::DEFAULT.affinity)]
    affinity_map_size: usize,
    /// Capacity of the source-ranges map (loadBalancerSourceRanges entries).
    #[arg(long, default_value_t = Capacity::DEFAULT.source_ranges)]
    source_ranges_map_size: usize,
    /// Capacity of the fragments map (fragmented datagrams in flight through frontends; the
    /// least recently used goes first).
    #[arg(long, default_value_t = Capacity::DEFAULT.fragments)]
    fragments_map_size: usize,
    /// Capacity of the socket reverse map (connected UDP sockets socket-level load balancing
    /// sent to a backend; the least recently used goes first).
    #[arg(long, default_value_t = Capacity::DEFAULT.sock_reverse)]
    sock_reverse_map_size: usize,
    /// Maglev table size M (a prime from 251 to 131071; Cilium's sizes).
    #[arg(long, default_value_t = svclb_common::maglev::DEFAULT_TABLE_SIZE)]
    maglev_table_size: u32,
    /// Maglev seed: base64 of 12 bytes, the same on every node (and as Cilium's, to move a
    /// fleet between the two without reshuffling flows).
    #[arg(long, default_value = svclb_common::maglev::DEFAULT_SEED)]
    maglev_seed: String,
    /// How the XDP program is attached to uplinks.
    #[arg(long, value_enum, default_value_t = XdpAttach::Auto)]
    xdp_mode: XdpAttach,
    /// On which uplinks XDP translates and sends out north-south flows to remote backends
    /// itself: `auto` every uplink but veth, netkit and tun/tap devices (whose peers may send
    /// partial checksums), `always`, or `never` (XDP only drops early).
    #[arg(long, value_enum, default_value_t = XdpFinish::Auto)]
    xdp_finish: XdpFinish,
    /// Socket-level load balancing: cgroup hooks give every socket under --cgroup-root (host
    /// processes and pods) its backend at connect time, with no per-packet translation;
    /// `--socket-lb=false` leaves every client to the TC programs.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    socket_lb: bool,
    /// Socket-level load balancing for the host's own sockets only: pods' connections keep
    /// the service address and go through the TC programs (as sidecar meshes need).
    #[arg(long)]
    socket_lb_hostns_only: bool,
    /// The cgroup v2 directory the socket hooks attach to (default: the cgroup2 mount, from
    /// /proc/mounts).
    #[arg(long)]
    cgroup_root: Option<PathBuf>,
    /// Serve NodePorts on 127.0.0.1 and ::1 to the node's own processes (with socket-level
    /// load balancing), as kube-proxy's localhost NodePorts.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    localhost_nodeports: bool,
    /// The source address a hairpin connection gets on the TC path (a pod reaching a service
    /// it backs, and picked: it would drop a packet from its own address), as Cilium's;
    /// "" turns hairpin SNAT off.
    #[arg(long, default_value = "169.254.42.1")]
    service_loopback_address: String,
    /// The same for IPv6: a unique-local address, as pods reach a link-local one on their own
    /// link only.
    #[arg(long, default_value = "fd00:a9fe:2a01::1")]
    service_loopback_address6: String,
    /// Source ports of flows SNATed to remote backends (NodePorts and LoadBalancer IPs with
    /// the Cluster policy): MIN-MAX, or "auto": the longest run outside the node's ephemeral
    /// ports (net.ipv4.ip_local_port_range) and the NodePort range 30000-32767, 1024-29999
    /// on a default node.
    #[arg(long, default_value = "auto")]
    snat_ports: SnatPorts,
    /// The cluster DNS addresses (kubelet's --cluster-dns: the kube-dns Service's cluster
    /// IPs), comma-separated: queries pods send them for the cluster's own names are
    /// answered by the datapath, everything else goes on to the DNS service. None: off.
    #[arg(long, value_delimiter = ',')]
    cluster_dns: Vec<std::net::IpAddr>,
    /// The cluster's DNS domain (kubelet's --cluster-domain).
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
}

/// An optional address flag: "" is none.
fn optional_ip<T: std::str::FromStr>(flag: &str, value: &str) -> Result<Option<T>> {
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| anyhow::anyhow!("{flag} {value:?} is not an address of its family"))
}

/// How long `svclb plan` waits for the API's first lists.
const PLAN_READY: std::time::Duration = std::time::Duration::from_secs(30);

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Writes command output; a reader that went away (`| head`) ends the command quietly.
fn emit(text: &str) -> Result<()> {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => Ok(result?),
    }
}

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

fn agent_config(args: AgentArgs) -> Result<AgentConfig> {
    let pod_devices = args
        .pod_devices
        .as_deref()
        .map(Pattern::new)
        .transpose()
        .context("--pod-devices is not a valid glob")?;
    let socket_lb = if args.socket_lb {
        Some(SocketLb {
            cgroup: args.cgroup_root,
            hostns_only: args.socket_lb_hostns_only,
        })
    } else {
        None
    };
    let dns_on = !args.cluster_dns.is_empty();
    if dns_on && args.pod_devices.is_none() {
        bail!(
            "--cluster-dns needs --pod-devices: the pods' queries are answered by the program on their devices, and the socket hooks leave them to it"
        );
    }
    Ok(AgentConfig {
        node_name: args.node_name.context("--node-name is required")?,
        localhost_nodeports: args.localhost_nodeports && socket_lb.is_some(),
        service_loopback: (
            optional_ip("--service-loopback-address", &args.service_loopback_address)?,
            optional_ip(
                "--service-loopback-address6",
                &args.service_loopback_address6,
            )?,
        ),
        socket_lb,
        snat_ports: args.snat_ports,
        dns: (!args.cluster_dns.is_empty()).then(|| DnsConfig {
            servers: args.cluster_dns,
            domain: args
                .cluster_domain
                .trim_end_matches('.')
                .to_ascii_lowercase(),
        }),
        addresses: args.external_ips.rule(args.nodeport_addresses),
        source: args.source.config(dns_on),
        devices: DeviceSelector {
            uplinks: args.devices,
            pod_devices,
            host_pair: dns_on,
            xdp: args.xdp_mode,
            xdp_finish: args.xdp_finish,
        },
        maglev: svclb_common::maglev::Maglev::new(args.maglev_table_size, &args.maglev_seed)
            .context("--maglev-table-size/--maglev-seed")?,
        bpffs_dir: args.bpffs_dir,
        metrics_addr: args.metrics_addr,
        healthz_addr: (!args.healthz_bind_address.is_empty())
            .then(|| args.healthz_bind_address.parse())
            .transpose()
            .with_context(|| {
                format!(
                    "--healthz-bind-address {:?} is not ADDRESS:PORT (or \"\" to turn it off)",
                    args.healthz_bind_address
                )
            })?,
        healthz_timeout: std::time::Duration::from_secs(args.healthz_timeout),
        conntrack_gc_interval: (args.conntrack_gc_interval > 0)
            .then(|| std::time::Duration::from_secs(args.conntrack_gc_interval)),
        capacity: Capacity {
            services: args.services_map_size,
            backends: args.backends_map_size,
            slots: args.slots_map_size,
            conntrack: args.conntrack_map_size,
            maglev_tables: args.maglev_map_size,
            affinity: args.affinity_map_size,
            source_ranges: args.source_ranges_map_size,
            fragments: args.fragments_map_size,
            sock_reverse: args.sock_reverse_map_size,
            maglev_size: args.maglev_table_size,
        },
    })
}

/// `svclb plan`: reads the source once and prints what the node would serve.
fn plan_command(
    node_name: &str,
    source: SourceArgs,
    mut rule: AddressRule,
    devices: &[String],
    cluster_domain: Option<&str>,
    output: Output,
) -> Result<()> {
    let (snapshot, uplinks) = runtime()?.block_on(async {
        // `svclb plan` reads once: nothing counts its watch errors.
        let mut source =
            Source::open(&source.config(cluster_domain.is_some()), Counter::default()).await?;
        source.wait_ready(PLAN_READY).await?;
        let uplinks = addresses::of_devices_once(devices).await?;
        anyhow::Ok((source.snapshot(), uplinks))
    })?;
    rule.uplinks = uplinks;
    let dns = cluster_domain.map(|zone| plan::dns::records(&snapshot, zone));
    let (node, plan, mut diags) = plan::plan_for_node(
        node_name,
        &rule,
        &snapshot.nodes,
        &snapshot.services,
        &snapshot.slices,
    );
    diags.splice(0..0, snapshot.diagnostics);
    match output {
        Output::Table => {
            let mut out = plan_output::render_table(&node, &plan, &diags);
            if let Some(records) = &dns {
                out.push_str(&plan_output::render_dns(records));
            }
            emit(&out)
        }
        Output::Json => {
            let json = plan_output::render_json(&node, &plan, dns.as_deref(), &diags);
            emit(&(json + "\n"))
        }
    }
}

/// Errors end the process with one line naming the object and the cause (no backtrace, even
/// with RUST_BACKTRACE set: these are operator errors, not bugs).
fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("svclb: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Agent(args) if args.cleanup => {
            loader::require_root("svclb agent --cleanup")?;
            let removed = pins::cleanup(&args.bpffs_dir)?;
            if runtime()?.block_on(host_pair::remove_once())? {
                emit(&format!(
                    "removed the devices {}, {}\n",
                    host_pair::HOST_END,
                    host_pair::PROGRAM_END
                ))?;
            }
            emit(&format!(
                "removed {removed} pins from {}: the datapath is detached\n",
                args.bpffs_dir.display()
            ))
        }
        Command::Agent(args) if args.check_config => {
            let config = agent_config(*args)?;
            emit(&format!("{config:#?}\n"))
        }
        Command::Agent(args) => {
            let config = agent_config(*args)?;
            runtime()?.block_on(agent::run(config))
        }
        Command::Plan {
            node_name,
            source,
            nodeport_addresses,
            devices,
            localhost_nodeports,
            external_ips,
            cluster_domain,
            output,
        } => {
            let rule = AddressRule {
                localhost: localhost_nodeports,
                ..external_ips.rule(nodeport_addresses)
            };
            let dns = cluster_domain.as_deref();
            plan_command(&node_name, source, rule, &devices, dns, output)
        }
        Command::Maglev {
            table_size,
            seed,
            backends,
            output,
        } => {
            let maglev = svclb_common::maglev::Maglev::new(table_size, &seed)?;
            let backends = backends
                .iter()
                .map(|b| maglev_cmd::parse_backend(b))
                .collect::<Result<Vec<_>>>()?;
            let table = maglev.table(&backends)?;
            match output {
                Output::Table => emit(&maglev_cmd::render_table(&maglev, &backends, &table)),
                Output::Json => emit(&(maglev_cmd::render_json(&maglev, &table) + "\n")),
            }
        }
        Command::Status {
            bpffs_dir,
            agent_addr,
            output,
        } => {
            loader::require_root("svclb status")?;
            let status = status::read(&bpffs_dir, agent_addr)?;
            match output {
                Output::Table => emit(&status::render_table(
                    &status,
                    svclb::telemetry::report::unix_ms(),
                ))?,
                Output::Json => emit(&(serde_json::to_string_pretty(&status)? + "\n"))?,
            }
            Ok(())
        }
        Command::MountBpffs { bpffs_dir } => {
            loader::require_root("svclb mount-bpffs")?;
            let bpffs = svclb_common::host::prepare_bpffs(&bpffs_dir)?;
            let what = if bpffs.mounted {
                "mounted a bpf filesystem on /sys/fs/bpf"
            } else {
                "a bpf filesystem was on /sys/fs/bpf"
            };
            emit(&format!("{what}; pins go in {}\n", bpffs_dir.display()))
        }
        Command::List { bpffs_dir, output } => {
            let listing = list::read(&bpffs_dir)?;
            match output {
                Output::Table => emit(&list::render_table(&listing))?,
                Output::Json => emit(&(serde_json::to_string_pretty(&listing)? + "\n"))?,
            }
            Ok(())
        }
    }
}
