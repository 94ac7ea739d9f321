//! Building, running and tearing down a lab.

use std::{
    collections::BTreeSet,
    fs,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::{
    netns::{self, ip_in, sysctl_in},
    server::Backend,
};

/// MAC of every host-side pod device, as Calico does: pods reach their gateway through a
/// static neighbour entry, no proxy ARP needed.
const HOST_VETH_MAC: &str = "ee:ee:ee:ee:ee:ee";
const GATEWAY: &str = "169.254.1.1";
/// Prefix of every lab's names, so leftovers of a killed run can be found.
pub const LAB_PREFIX: &str = "svl";

#[derive(Clone, Debug)]
pub struct LabSpec {
    pub nodes: usize,
    pub pods_per_node: usize,
    /// Port the pods' backends listen on (TCP and UDP).
    pub backend_port: u16,
    /// Extra arguments for every agent.
    pub agent_args: Vec<String>,
    /// Dual stack: nodes and pods get IPv6 addresses too (`fd00:31::1N/64` on the fabric,
    /// `fd00:244:N::1P` for pods), with IPv6 routes between nodes, and backends listen on both
    /// families.
    pub ipv6: bool,
    /// Run the agents with these capabilities only (names as `setpriv` takes them: `bpf`,
    /// `net_admin`), not root's full set; `SVCLB_LAB_AGENT_CAPS` (comma separated) does it
    /// for every lab.
    pub agent_capabilities: Option<Vec<String>>,
}

impl Default for LabSpec {
    fn default() -> Self {
        Self {
            nodes: 2,
            pods_per_node: 3,
            backend_port: 8080,
            agent_args: Vec::new(),
            ipv6: false,
            agent_capabilities: None,
        }
    }
}

/// The command that starts `bin` with only `capabilities` (none given: as root is). Root's
/// capabilities after exec are its bounding set (and its inheritable set, emptied here), so
/// limiting the bounding set leaves the agent exactly these.
fn agent_command(bin: &Path, capabilities: Option<&[String]>) -> Command {
    let from_env = std::env::var("SVCLB_LAB_AGENT_CAPS")
        .ok()
        .map(|caps| caps.split(',').map(str::to_owned).collect::<Vec<_>>());
    let Some(caps) = capabilities.map(<[String]>::to_vec).or(from_env) else {
        return Command::new(bin);
    };
    let set: String = caps.iter().map(|c| format!(",+{c}")).collect();
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--bounding-set=-all{set}"))
        .args(["--inh-caps=-all", "--ambient-caps=-all", "--"])
        .arg(bin);
    command
}

#[derive(Clone, Debug)]
pub struct Pod {
    /// Pod name, also what its backend answers.
    pub name: String,
    pub ns: String,
    /// Name of the node it runs on.
    pub node: String,
    pub addr: Ipv4Addr,
    /// Its IPv6 address (configured in dual-stack labs only).
    pub addr6: Ipv6Addr,
    /// Its device in the node namespace.
    pub host_dev: String,
}

/// An external client behind a router (see [`Lab::add_client_behind_router`]).
#[derive(Clone, Debug)]
pub struct RoutedClient {
    pub ns: String,
    pub addr: Ipv4Addr,
    /// Its IPv6 address (dual-stack labs only).
    pub addr6: Ipv6Addr,
    /// The router's namespace.
    pub router_ns: String,
}

#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub ns: String,
    pub addr: Ipv4Addr,
    /// Its IPv6 address on the fabric (configured in dual-stack labs only).
    pub addr6: Ipv6Addr,
    pub index: u8,
    pub pods: Vec<Pod>,
    pub pin_dir: PathBuf,
    pub log: PathBuf,
    /// The node's cgroup (under the lab's): its agent's `--cgroup-root`, where its clients
    /// run (see [`Lab::run_client`]).
    pub cgroup: PathBuf,
}

struct Agent {
    child: Child,
}

pub struct Lab {
    pub id: String,
    pub spec: LabSpec,
    pub nodes: Vec<Node>,
    /// Namespace of the external client on the fabric.
    pub client_ns: String,
    pub client_addr: Ipv4Addr,
    /// The external client's IPv6 address on the fabric (dual-stack labs only).
    pub client_addr6: Ipv6Addr,
    pub manifests: PathBuf,
    work_dir: PathBuf,
    fabric_ns: String,
    namespaces: Vec<String>,
    backends: Vec<Backend>,
    agents: Vec<Option<Agent>>,
    bpffs_root: PathBuf,
    /// Agents watch the Kubernetes API through this instead of the manifests directory.
    kubeconfig: Option<PathBuf>,
    /// The lab's cgroups, removed after everything else.
    cgroup: Option<crate::cgroup::LabCgroup>,
    /// A real Kubernetes control plane, if started ([`Lab::start_control_plane`]).
    control_plane: Option<crate::control_plane::ControlPlane>,
}

/// `svl<pid>x<n>`: unique among running labs, and names the process that owns it so leftovers
/// of dead processes can be told from labs still in use.
fn unique_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{LAB_PREFIX}{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The svclb binary the lab runs: `$SVCLB_BIN`, or `svclb` next to the test's target directory.
pub fn svclb_bin() -> Result<PathBuf> {
    sibling_bin("svclb", "SVCLB_BIN").context("build it (`cargo build -p svclb`) or set SVCLB_BIN")
}

/// Binary `name`: `$env`, or in the target directory the running test is in.
fn sibling_bin(name: &str, env: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("binary {name} not found next to {}", exe.display())
}

impl Lab {
    /// Builds a lab: fabric, nodes, pods with running backends. Agents start with
    /// [`Lab::start_agents`].
    pub fn new(spec: LabSpec) -> Result<Self> {
        let id = unique_id();
        let work_dir = std::env::temp_dir().join(&id);
        let manifests = work_dir.join("manifests");
        fs::create_dir_all(&manifests)?;
        let mut lab = Self {
            fabric_ns: format!("{id}-fab"),
            client_ns: format!("{id}-ext"),
            client_addr: Ipv4Addr::new(172, 31, 0, 100),
            client_addr6: Ipv6Addr::new(0xfd00, 0x31, 0, 0, 0, 0, 0, 0x100),
            bpffs_root: PathBuf::from("/sys/fs/bpf").join(&id),
            id,
            spec,
            nodes: Vec::new(),
            manifests,
            work_dir,
            namespaces: Vec::new(),
            backends: Vec::new(),
            agents: Vec::new(),
            kubeconfig: None,
            cgroup: None,
            control_plane: None,
        };
        lab.build()
            .with_context(|| format!("building lab {}", lab.id))?;
        Ok(lab)
    }

    fn add_ns(&mut self, ns: &str) -> Result<()> {
        netns::ip(&["netns", "add", ns])?;
        // Recorded before anything else can fail, so drop removes it.
        self.namespaces.push(ns.to_owned());
        netns::ip_in(ns, &["link", "set", "lo", "up"])
    }

    fn build(&mut self) -> Result<()> {
        let cgroups = self
            .cgroup
            .insert(crate::cgroup::LabCgroup::create(&self.id)?);
        let node_cgroups = (1..=self.spec.nodes)
            .map(|i| cgroups.child(&format!("n{i}")))
            .collect::<Result<Vec<_>>>()?;
        let fab = self.fabric_ns.clone();
        self.add_ns(&fab)?;
        // A fresh machine has no bpf filesystem mounted: mount it as the agent would.
        svclb_common::host::prepare_bpffs(&self.bpffs_root)?;
        let pass = crate::xdp_pass::load()?;
        ip_in(&fab, &["link", "add", "br0", "type", "bridge"])?;
        ip_in(&fab, &["link", "set", "br0", "up"])?;

        let client = self.client_ns.clone();
        self.add_ns(&client)?;
        self.plug_into_fabric(&client, "ext", self.client_addr)?;
        if self.spec.ipv6 {
            let addr6 = format!("{}/64", self.client_addr6);
            ip_in(
                &client,
                &["-6", "addr", "add", &addr6, "dev", "eth0", "nodad"],
            )?;
        }

        for i in 1..=self.spec.nodes {
            let index = u8::try_from(i).context("too many nodes")?;
            let name = format!("n{i}");
            let ns = format!("{}-{name}", self.id);
            self.add_ns(&ns)?;
            for key in [
                "net.ipv4.conf.all.rp_filter",
                "net.ipv4.conf.default.rp_filter",
            ] {
                sysctl_in(&ns, key, "0")?;
            }
            sysctl_in(&ns, "net.ipv4.ip_forward", "1")?;
            let addr = Ipv4Addr::new(172, 31, 0, 10 + index);
            let addr6 = Ipv6Addr::new(0xfd00, 0x31, 0, 0, 0, 0, 0, 0x10 + u16::from(index));
            self.plug_into_fabric(&ns, &name, addr)?;
            // The fabric's side of a node's uplink takes what the node's XDP sends back.
            let pin = self.bpffs_root.join(format!("fabric-xdp-{name}"));
            crate::xdp_pass::attach(&fab, &name, &pass, &pin)?;
            if self.spec.ipv6 {
                sysctl_in(&ns, "net.ipv6.conf.all.forwarding", "1")?;
                ip_in(
                    &ns,
                    &[
                        "-6",
                        "addr",
                        "add",
                        &format!("{addr6}/64"),
                        "dev",
                        "eth0",
                        "nodad",
                    ],
                )?;
            }
            self.nodes.push(Node {
                cgroup: node_cgroups[i - 1].clone(),
                addr6,
                pin_dir: self.bpffs_root.join(&name),
                log: self.work_dir.join(format!("agent-{name}.log")),
                name,
                ns,
                addr,
                index,
                pods: Vec::new(),
            });
        }
        // Routes to every other node's pod CIDR over the fabric.
        for node in &self.nodes {
            for other in &self.nodes {
                if other.index != node.index {
                    let cidr = format!("10.244.{}.0/24", other.index);
                    ip_in(
                        &node.ns,
                        &["route", "add", &cidr, "via", &other.addr.to_string()],
                    )?;
                    if self.spec.ipv6 {
                        let cidr = format!("fd00:244:{}::/64", other.index);
                        ip_in(
                            &node.ns,
                            &["-6", "route", "add", &cidr, "via", &other.addr6.to_string()],
                        )?;
                    }
                }
            }
        }
        for node in 0..self.nodes.len() {
            for _ in 0..self.spec.pods_per_node {
                self.add_pod(node)?;
            }
        }
        Ok(())
    }

    /// A veth from `ns` (as eth0, with `addr`/24) to the fabric bridge (as `port`).
    ///
    /// The fabric's side sends frames with complete checksums, as a wire does: a veth would
    /// otherwise pass the sender's CHECKSUM_PARTIAL on, whose checksum field an XDP program
    /// (which cannot see that state) must not update as a full one.
    fn plug_into_fabric(&self, ns: &str, port: &str, addr: Ipv4Addr) -> Result<()> {
        let fab = &self.fabric_ns;
        ip_in(
            fab,
            &[
                "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ],
        )?;
        netns::run_in(fab, "ethtool", &["-K", port, "tx", "off"])?;
        ip_in(fab, &["link", "set", port, "master", "br0", "up"])?;
        ip_in(ns, &["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        ip_in(ns, &["link", "set", "eth0", "up"])
    }

    /// Adds a pod with a running backend to node `node` (an index into `nodes`); works while
    /// agents run, which must then attach to the new device.
    pub fn add_pod(&mut self, node: usize) -> Result<Pod> {
        let (node_ns, node_name, node_index, ordinal) = {
            let n = &self.nodes[node];
            (n.ns.clone(), n.name.clone(), n.index, n.pods.len() + 1)
        };
        let ordinal_u8 = u8::try_from(ordinal).context("too many pods")?;
        let pod = Pod {
            name: format!("{node_name}-pod{ordinal}"),
            ns: format!("{}-{node_name}p{ordinal}", self.id),
            node: node_name,
            addr: Ipv4Addr::new(10, 244, node_index, 10 + ordinal_u8),
            addr6: Ipv6Addr::new(
                0xfd00,
                0x244,
                u16::from(node_index),
                0,
                0,
                0,
                0,
                0x10 + u16::from(ordinal_u8),
            ),
            host_dev: format!("vethpod{ordinal}"),
        };
        self.add_ns(&pod.ns)?;
        let pod_mac = format!("02:00:00:00:{node_index:02x}:{ordinal_u8:02x}");
        let addr = pod.addr.to_string();
        ip_in(
            &node_ns,
            &[
                "link",
                "add",
                &pod.host_dev,
                "address",
                HOST_VETH_MAC,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "address",
                &pod_mac,
                "netns",
                &pod.ns,
            ],
        )?;
        ip_in(
            &pod.ns,
            &["addr", "add", &format!("{addr}/32"), "dev", "eth0"],
        )?;
        ip_in(&pod.ns, &["link", "set", "eth0", "up"])?;
        ip_in(
            &pod.ns,
            &["route", "add", GATEWAY, "dev", "eth0", "scope", "link"],
        )?;
        ip_in(
            &pod.ns,
            &["route", "add", "default", "via", GATEWAY, "dev", "eth0"],
        )?;
        ip_in(
            &pod.ns,
            &[
                "neigh",
                "add",
                GATEWAY,
                "lladdr",
                HOST_VETH_MAC,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
        )?;
        ip_in(&node_ns, &["link", "set", &pod.host_dev, "up"])?;
        ip_in(
            &node_ns,
            &["route", "add", &format!("{addr}/32"), "dev", &pod.host_dev],
        )?;
        ip_in(
            &node_ns,
            &[
                "neigh",
                "add",
                &addr,
                "lladdr",
                &pod_mac,
                "dev",
                &pod.host_dev,
                "nud",
                "permanent",
            ],
        )?;
        if self.spec.ipv6 {
            self.add_pod_ipv6(&node_ns, &pod, &pod_mac)?;
        }
        self.backends.push(Backend::start(
            &pod.ns,
            &pod.name,
            self.spec.backend_port,
            self.spec.ipv6,
        )?);
        self.nodes[node].pods.push(pod.clone());
        Ok(pod)
    }

    /// The pod's IPv6 address and routes: a default route through a link-local gateway whose
    /// neighbour entry is the host side (as the IPv4 one), a host route on the node.
    fn add_pod_ipv6(&self, node_ns: &str, pod: &Pod, pod_mac: &str) -> Result<()> {
        const GATEWAY6: &str = "fe80::1";
        let addr6 = pod.addr6.to_string();
        ip_in(
            &pod.ns,
            &[
                "-6",
                "addr",
                "add",
                &format!("{addr6}/128"),
                "dev",
                "eth0",
                "nodad",
            ],
        )?;
        ip_in(
            &pod.ns,
            &[
                "-6",
                "neigh",
                "add",
                GATEWAY6,
                "lladdr",
                HOST_VETH_MAC,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
        )?;
        ip_in(
            &pod.ns,
            &[
                "-6", "route", "add", "default", "via", GATEWAY6, "dev", "eth0",
            ],
        )?;
        ip_in(
            node_ns,
            &[
                "-6",
                "route",
                "add",
                &format!("{addr6}/128"),
                "dev",
                &pod.host_dev,
            ],
        )?;
        ip_in(
            node_ns,
            &[
                "-6",
                "neigh",
                "add",
                &addr6,
                "lladdr",
                pod_mac,
                "dev",
                &pod.host_dev,
                "nud",
                "permanent",
            ],
        )
    }

    /// Node objects for the nodes (their InternalIP is where NodePorts are served), as the
    /// manifests directory or the fake API server takes them.
    pub fn nodes_manifest(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let mut node = format!(
                    "apiVersion: v1\nkind: Node\nmetadata:\n  name: {}\nstatus:\n  addresses:\n  - type: InternalIP\n    address: {}\n",
                    n.name, n.addr
                );
                if self.spec.ipv6 {
                    node.push_str(&format!("  - type: InternalIP\n    address: '{}'\n", n.addr6));
                }
                node
            })
            .collect::<Vec<_>>()
            .join("---\n")
    }

    /// Adds a second external client, behind a router on the fabric whose link to it has an
    /// MTU of `mtu` (the client's own side keeps 1500, so its TCP MSS asks for more): larger
    /// packets with DF set get a fragmentation-needed from the router.
    pub fn add_client_behind_router(&mut self, mtu: u16) -> Result<RoutedClient> {
        let router = format!("{}-rtr", self.id);
        let far = format!("{}-far", self.id);
        let router_addr = Ipv4Addr::new(172, 31, 0, 200);
        let far_addr = Ipv4Addr::new(192, 168, 77, 2);
        self.add_ns(&router)?;
        self.add_ns(&far)?;
        sysctl_in(&router, "net.ipv4.ip_forward", "1")?;
        self.plug_into_fabric(&router, "rtr", router_addr)?;
        ip_in(
            &router,
            &[
                "link",
                "add",
                "far0",
                "mtu",
                &mtu.to_string(),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &far,
            ],
        )?;
        ip_in(&router, &["addr", "add", "192.168.77.1/24", "dev", "far0"])?;
        ip_in(&router, &["link", "set", "far0", "up"])?;
        ip_in(
            &far,
            &["addr", "add", &format!("{far_addr}/24"), "dev", "eth0"],
        )?;
        ip_in(&far, &["link", "set", "eth0", "up"])?;
        ip_in(&far, &["route", "add", "default", "via", "192.168.77.1"])?;
        for node in &self.nodes {
            ip_in(
                &node.ns,
                &[
                    "route",
                    "add",
                    "192.168.77.0/24",
                    "via",
                    &router_addr.to_string(),
                ],
            )?;
        }
        let far_addr6 = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 2);
        if self.spec.ipv6 {
            // IPv6 needs links of at least 1280 bytes.
            sysctl_in(&router, "net.ipv6.conf.all.forwarding", "1")?;
            ip_in(
                &router,
                &[
                    "-6",
                    "addr",
                    "add",
                    "fd00:31::200/64",
                    "dev",
                    "eth0",
                    "nodad",
                ],
            )?;
            ip_in(
                &router,
                &["-6", "addr", "add", "fd00:77::1/64", "dev", "far0", "nodad"],
            )?;
            ip_in(
                &far,
                &[
                    "-6",
                    "addr",
                    "add",
                    &format!("{far_addr6}/64"),
                    "dev",
                    "eth0",
                    "nodad",
                ],
            )?;
            ip_in(
                &far,
                &["-6", "route", "add", "default", "via", "fd00:77::1"],
            )?;
            for node in &self.nodes {
                ip_in(
                    &node.ns,
                    &["-6", "route", "add", "fd00:77::/64", "via", "fd00:31::200"],
                )?;
            }
        }
        Ok(RoutedClient {
            ns: far,
            addr6: far_addr6,
            addr: far_addr,
            router_ns: router,
        })
    }

    /// Routes `addr` (a load-balancer or external IP) from the external client through node
    /// `node`, as an upstream router would; replaces an earlier route.
    pub fn route_client_via(&self, addr: &str, node: usize) -> Result<()> {
        if addr.contains(':') {
            return ip_in(
                &self.client_ns,
                &[
                    "-6",
                    "route",
                    "replace",
                    &format!("{addr}/128"),
                    "via",
                    &self.nodes[node].addr6.to_string(),
                ],
            );
        }
        ip_in(
            &self.client_ns,
            &[
                "route",
                "replace",
                &format!("{addr}/32"),
                "via",
                &self.nodes[node].addr.to_string(),
            ],
        )
    }

    /// Routes every node's pod range from the external client's namespace to that node, so
    /// pods reach servers there (the control plane) and their answers come back.
    pub fn route_client_to_pods(&self) -> Result<()> {
        for node in &self.nodes {
            let cidr = format!("10.244.{}.0/24", node.index);
            ip_in(
                &self.client_ns,
                &["route", "replace", &cidr, "via", &node.addr.to_string()],
            )?;
        }
        Ok(())
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.nodes
            .iter()
            .flat_map(|n| &n.pods)
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("lab {} has no pod {name}", self.id))
    }

    /// Writes (or replaces) manifest `file` atomically, as a rename, so an agent never reads
    /// half a file.
    pub fn write_manifest(&self, file: &str, yaml: &str) -> Result<()> {
        let tmp = self.manifests.join(format!(".{file}.tmp"));
        fs::write(&tmp, yaml)?;
        fs::rename(&tmp, self.manifests.join(file))?;
        Ok(())
    }

    pub fn remove_manifest(&self, file: &str) -> Result<()> {
        fs::remove_file(self.manifests.join(file))
            .with_context(|| format!("removing manifest {file}"))
    }

    /// Starts a real control plane (etcd, kube-apiserver, kube-controller-manager) in the
    /// external client's namespace, creates the lab's Node objects in it (zone `zone-<node>`
    /// unless `zones` names one per node), installs the chart, and has agents started from
    /// now on watch it with a token of the chart's ServiceAccount (under the chart's RBAC).
    pub fn start_control_plane(
        &mut self,
        zones: &[&str],
    ) -> Result<&crate::control_plane::ControlPlane> {
        let plane = crate::control_plane::ControlPlane::start(
            &self.client_ns,
            &self.work_dir.join("kube"),
        )?;
        let nodes: Vec<(String, String, String)> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let zone = zones
                    .get(i)
                    .map_or_else(|| format!("zone-{}", n.name), |z| (*z).to_owned());
                (n.name.clone(), n.addr.to_string(), zone)
            })
            .collect();
        let nodes: Vec<(&str, &str, &str)> = nodes
            .iter()
            .map(|(n, a, z)| (n.as_str(), a.as_str(), z.as_str()))
            .collect();
        plane.create_nodes(&nodes)?;
        let token = plane.install_chart("")?;
        self.use_kubeconfig(&crate::control_plane::kubeconfig(&token, &plane.ca()))?;
        Ok(self.control_plane.insert(plane))
    }

    /// A lab of 3 pods a node whose agents answer Service DNS at `cluster_dns`
    /// (`--cluster-dns`), with a control plane (zones by node) its pods reach, for CoreDNS
    /// to run in one of them.
    pub fn with_dns_and_control_plane(cluster_dns: &str) -> Result<Self> {
        let mut lab = Self::new(LabSpec {
            pods_per_node: 3,
            agent_args: vec!["--cluster-dns".into(), cluster_dns.into()],
            ..LabSpec::default()
        })?;
        lab.start_control_plane(&[])?;
        lab.route_client_to_pods()?;
        Ok(lab)
    }

    /// The control plane [`Lab::start_control_plane`] started.
    pub fn control_plane(&self) -> Result<&crate::control_plane::ControlPlane> {
        self.control_plane
            .as_ref()
            .context("the lab has no control plane")
    }

    /// The control plane, to stop and start its parts.
    pub fn control_plane_mut(&mut self) -> Result<&mut crate::control_plane::ControlPlane> {
        self.control_plane
            .as_mut()
            .context("the lab has no control plane")
    }

    /// Agents started from now on watch the API server this kubeconfig names (reachable from
    /// the node namespaces, e.g. a server in the client namespace), not the manifests.
    pub fn use_kubeconfig(&mut self, kubeconfig: &str) -> Result<()> {
        let path = self.work_dir.join("kubeconfig");
        fs::write(&path, kubeconfig)?;
        self.kubeconfig = Some(path);
        Ok(())
    }

    /// Starts one agent per node, each in its node's namespace, and waits until all serve.
    pub fn start_agents(&mut self) -> Result<()> {
        for node in 0..self.nodes.len() {
            self.start_agent(node)?;
        }
        Ok(())
    }

    /// Starts the agent of node `node` and waits until it serves.
    pub fn start_agent(&mut self, node: usize) -> Result<()> {
        let bin = svclb_bin()?;
        while self.agents.len() <= node {
            self.agents.push(None);
        }
        if self.agents[node].is_some() {
            bail!("the agent of {} is already running", self.nodes[node].name);
        }
        let n = &self.nodes[node];
        let before = count_serving(&n.log);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)?;
        let netns_file = fs::File::open(format!("/run/netns/{}", n.ns))?;
        let mut command = agent_command(&bin, self.spec.agent_capabilities.as_deref());
        command
            .args([
                "agent",
                "--node-name",
                &n.name,
                "--devices",
                "eth0",
                "--pod-devices",
                "vethpod*",
            ])
            .arg(if self.kubeconfig.is_some() {
                "--kubeconfig"
            } else {
                "--manifests"
            })
            .arg(self.kubeconfig.as_ref().unwrap_or(&self.manifests))
            .arg("--bpffs-dir")
            .arg(&n.pin_dir)
            .arg("--cgroup-root")
            .arg(&n.cgroup)
            .args(&self.spec.agent_args)
            // The fabric sends complete checksums, as a wire does (see `plug_into_fabric`):
            // XDP may finish flows on the veth uplinks, unless the lab says otherwise.
            .args(
                (!self.spec.agent_args.iter().any(|a| a == "--xdp-finish"))
                    .then_some(["--xdp-finish", "always"])
                    .into_iter()
                    .flatten(),
            )
            .env(
                "RUST_LOG",
                std::env::var("SVCLB_LAB_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        netns::enter_on_exec(&mut command, &netns_file);
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        self.agents[node] = Some(Agent { child });
        self.wait_serving(node, before)
    }

    fn wait_serving(&mut self, node: usize, before: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if count_serving(&self.nodes[node].log) > before {
                return Ok(());
            }
            if let Some(agent) = self.agents[node].as_mut()
                && let Some(status) = agent.child.try_wait()?
            {
                self.agents[node] = None;
                bail!(
                    "agent of {} exited ({status}) before serving:\n{}",
                    self.nodes[node].name,
                    self.agent_log(node)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "agent of {} not serving after 30 s:\n{}",
                    self.nodes[node].name,
                    self.agent_log(node)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the agent of `node` with `signal` (SIGTERM for a clean stop, SIGKILL for a crash)
    /// and waits for it to exit.
    pub fn stop_agent(&mut self, node: usize, signal: Signal) -> Result<()> {
        let Some(mut agent) = self.agents.get_mut(node).and_then(Option::take) else {
            bail!("the agent of {} is not running", self.nodes[node].name);
        };
        stop_child(&mut agent.child, signal);
        Ok(())
    }

    /// The process id of node `node`'s running agent.
    pub fn agent_pid(&self, node: usize) -> Option<u32> {
        self.agents.get(node)?.as_ref().map(|a| a.child.id())
    }

    pub fn agent_log(&self, node: usize) -> String {
        fs::read_to_string(&self.nodes[node].log).unwrap_or_default()
    }

    /// GETs `path` from the agent of node `node` (its metrics endpoint, default port), from
    /// inside the node's namespace: the status code and body.
    pub fn agent_http(&self, node: usize, path: &str) -> Result<(u16, String)> {
        self.agent_http_at(node, ([127, 0, 0, 1], 9965).into(), path)
    }

    /// GETs `path` from `addr`, from inside node `node`'s namespace: the status code and the
    /// body.
    pub fn agent_http_at(
        &self,
        node: usize,
        addr: std::net::SocketAddr,
        path: &str,
    ) -> Result<(u16, String)> {
        let path = path.to_owned();
        let response = crate::netns::in_netns(&self.nodes[node].ns, move || {
            crate::client::http_get_path(addr, &path)
        })?;
        Ok((response.status, response.body))
    }

    /// Runs `svclb list -o json` on node `node`'s pins.
    pub fn list(&self, node: usize) -> Result<serde_json::Value> {
        let bin = svclb_bin()?;
        let dir = self.nodes[node].pin_dir.to_string_lossy().into_owned();
        let output = netns::run(
            &bin.to_string_lossy(),
            &["list", "--bpffs-dir", &dir, "-o", "json"],
        )?;
        Ok(serde_json::from_slice(&output.stdout)?)
    }

    /// The backend addresses `svclb list` shows on node `node` for frontend `address:port`
    /// (empty when there is no such frontend).
    pub fn backends_of(&self, node: usize, address: &str, port: u16) -> Result<BTreeSet<String>> {
        let listing = self.list(node)?;
        let frontends = listing["frontends"].as_array().cloned().unwrap_or_default();
        Ok(frontends
            .iter()
            .filter(|f| f["address"] == address && f["port"] == port)
            .flat_map(|f| f["backends"].as_array().cloned().unwrap_or_default())
            .filter_map(|b| b["address"].as_str().map(str::to_owned))
            .collect())
    }

    /// Runs `svclb status -o json` inside node `node`'s namespace (its agent's metrics
    /// address, its device names).
    /// Node `node`'s counter of what its XDP program did with eth0's packets (`finished`,
    /// `passed` or `dropped`), from its metrics; `None` when XDP never counted on eth0.
    pub fn xdp_packets(&self, node: usize, action: &str) -> Result<Option<u64>> {
        let metrics = self.agent_http(node, "/metrics")?.1;
        let series = format!("svclb_xdp_packets_total{{device=\"eth0\",action=\"{action}\"}} ");
        Ok(metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series)?.parse::<u64>().ok()))
    }

    /// Writes `content` to a file of the lab's own (removed with it); its path.
    pub fn work_file(&self, name: &str, content: &str) -> Result<PathBuf> {
        let path = self.work_dir.join(name);
        fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// The conntrack entries node `node`'s datapath holds (`svclb status`).
    pub fn conntrack_entries(&self, node: usize) -> Result<u64> {
        let status = self.status(node)?;
        status["maps"]
            .as_array()
            .and_then(|maps| maps.iter().find(|m| m["map"] == "SVCLB_CT"))
            .and_then(|m| m["entries"].as_u64())
            .with_context(|| format!("SVCLB_CT in {status}"))
    }

    /// Node `node`'s route epoch (see `svclb::kernel::routes`), read from its pin.
    pub fn route_epoch(&self, node: usize) -> Result<u32> {
        use aya::maps::{Array, Map, MapData};
        let pin = self.nodes[node]
            .pin_dir
            .join(svclb_common::limits::MAP_ROUTE_EPOCH);
        let data = MapData::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?;
        let array: Array<MapData, u32> = Array::try_from(Map::from_map_data(data)?)?;
        Ok(array.get(&0, 0)?)
    }

    pub fn status(&self, node: usize) -> Result<serde_json::Value> {
        let bin = svclb_bin()?;
        let dir = self.nodes[node].pin_dir.to_string_lossy().into_owned();
        let output = netns::run_in(
            &self.nodes[node].ns,
            &bin.to_string_lossy(),
            &["status", "--bpffs-dir", &dir, "-o", "json"],
        )?;
        Ok(serde_json::from_slice(&output.stdout)?)
    }

    /// The count of event `label` (as `svclb status` names it) on node `node`.
    pub fn event(&self, node: usize, label: &str) -> Result<u64> {
        let status = self.status(node)?;
        let events = status["events"]
            .as_array()
            .context("no events in the status")?;
        Ok(events
            .iter()
            .find(|e| e[0] == label)
            .and_then(|e| e[1].as_u64())
            .unwrap_or(0))
    }

    /// Polls `check` every 20 ms until it holds or `timeout` passes; returns how long it took.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut() -> bool,
    ) -> Result<Duration> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if check() {
                return Ok(start.elapsed());
            }
            thread::sleep(Duration::from_millis(20));
        }
        bail!("timed out after {timeout:?} waiting for {what}")
    }

    /// A client process (`svclb-lab-client ARGS`) in namespace `ns` (the node's, for a
    /// host-network client, or a pod's) and in node `node`'s cgroup, where its agent's socket
    /// hooks are; waits for it and returns its lines.
    pub fn run_client(&self, node: usize, ns: &str, args: &[&str]) -> Result<Vec<String>> {
        self.run_client_in(Some(node), ns, args)
    }

    /// [`Lab::run_client`] for a client outside every node (the external client): in no
    /// node's cgroup, so no agent's socket hooks see it.
    pub fn run_external_client(&self, args: &[&str]) -> Result<Vec<String>> {
        self.run_client_in(None, &self.client_ns, args)
    }

    fn run_client_in(&self, node: Option<usize>, ns: &str, args: &[&str]) -> Result<Vec<String>> {
        let (mut command, _open) = self.client_command(node, ns, args)?;
        let out = command
            .stdin(Stdio::null())
            .output()
            .context("running svclb-lab-client")?;
        if !out.status.success() {
            bail!(
                "svclb-lab-client {args:?} in {ns}: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?
            .lines()
            .map(str::to_owned)
            .collect())
    }

    /// Runs `program ARGS` as a host-network process of node `node`: in the node's namespace
    /// and cgroup, where its agent's socket hooks are; fails with its stderr.
    pub fn run_on_node(&self, node: usize, program: &str, args: &[&str]) -> Result<String> {
        self.run_in(node, &self.nodes[node].ns, program, args)
    }

    /// Runs `program ARGS` in network namespace `ns` (a pod's, or the node's) and node
    /// `node`'s cgroup, where its agent's socket hooks are; its output, or its stderr as the
    /// error.
    pub fn run_in(&self, node: usize, ns: &str, program: &str, args: &[&str]) -> Result<String> {
        let netns_file = fs::File::open(format!("/run/netns/{ns}"))
            .with_context(|| format!("opening network namespace {ns}"))?;
        let procs = crate::cgroup::procs_of(&self.nodes[node].cgroup)?;
        let mut command = Command::new(program);
        command.args(args).stdin(Stdio::null());
        netns::enter_on_exec(&mut command, &netns_file);
        crate::cgroup::join_on_exec(&mut command, &procs);
        let out = command
            .output()
            .with_context(|| format!("running {program} in {ns}"))?;
        if !out.status.success() {
            bail!(
                "{program} {args:?} in {ns}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Spawns the client [`Lab::run_client`] runs, its output piped.
    pub fn spawn_client(&self, node: usize, ns: &str, args: &[&str]) -> Result<Child> {
        let (mut command, _open) = self.client_command(Some(node), ns, args)?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting svclb-lab-client")
    }

    /// The client's command (in node `node`'s cgroup, if any), and the descriptors it needs
    /// open until it is spawned.
    fn client_command(
        &self,
        node: Option<usize>,
        ns: &str,
        args: &[&str],
    ) -> Result<(Command, Vec<fs::File>)> {
        let netns_file = fs::File::open(format!("/run/netns/{ns}"))
            .with_context(|| format!("opening network namespace {ns}"))?;
        let mut command = Command::new(sibling_bin("svclb-lab-client", "SVCLB_LAB_CLIENT")?);
        command.args(args);
        netns::enter_on_exec(&mut command, &netns_file);
        let mut open = vec![netns_file];
        if let Some(node) = node {
            let procs = crate::cgroup::procs_of(&self.nodes[node].cgroup)?;
            crate::cgroup::join_on_exec(&mut command, &procs);
            open.push(procs);
        }
        Ok((command, open))
    }

    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }
}

fn count_serving(log: &Path) -> usize {
    fs::read_to_string(log)
        .map(|s| s.matches(" serving ").count())
        .unwrap_or(0)
}

fn stop_child(child: &mut Child, signal: Signal) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // The child may have exited already; waiting below reaps it either way.
        let _ = kill(Pid::from_raw(pid), signal);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Lab {
    fn drop(&mut self) {
        for agent in self.agents.iter_mut().filter_map(Option::take) {
            let mut child = agent.child;
            stop_child(&mut child, Signal::SIGTERM);
        }
        if thread::panicking()
            && let Some(plane) = &self.control_plane
        {
            for name in ["kube-apiserver", "kube-controller-manager"] {
                eprintln!("--- {name} of {} ---\n{}", self.id, plane.log_tail(name));
            }
        }
        // Its processes run in the client namespace, which goes below.
        self.control_plane = None;
        if thread::panicking() {
            for (i, node) in self.nodes.iter().enumerate() {
                eprintln!(
                    "--- agent log of {} ({}) ---\n{}",
                    node.name,
                    self.id,
                    self.agent_log(i)
                );
            }
        }
        self.backends.clear();
        // Pods first, then nodes and the fabric: deleting a namespace removes its devices.
        for ns in self.namespaces.iter().rev() {
            if let Err(err) = netns::delete(ns) {
                eprintln!("lab {}: {err:#}", self.id);
            }
        }
        let _ = fs::remove_dir_all(&self.bpffs_root);
        let _ = fs::remove_dir_all(&self.work_dir);
        // Last: its hooks' pins are gone, and so are the processes moved into it.
        self.cgroup = None;
    }
}
