//! A real Kubernetes control plane for a lab: etcd, kube-apiserver and
//! kube-controller-manager (the EndpointSlice, EndpointSlice-mirroring and ServiceAccount
//! controllers), as
//! `cargo xtask setup` built them (see [`crate::kube_bins`]). They run in the lab's external
//! client namespace, where the API server listens on the fabric (172.31.0.100:6443), so the
//! agents in the node namespaces reach it as they would a cluster's. Tests talk to it with
//! the real kubectl, run in that namespace.
//!
//! The API server authenticates with static tokens (an admin in `system:masters`), authorizes
//! with RBAC, signs service-account tokens with a key of its own, and serves the Service IP
//! range the lab's services use. There is no kubelet: nodes are created through the API, and
//! [`ControlPlane::run_pod`] creates a pod bound to a node and patches its status to Running
//! and Ready with the lab pod's address, as a kubelet would report it. Everything stops, and
//! its directory goes, when the control plane is dropped (also on panic); a killed run's is
//! swept with its lab (`cargo xtask sweep`: its processes are in the lab's namespaces).
//! [`ControlPlane::start_coredns`] adds CoreDNS, in a pod's namespace, watching the same API
//! server.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::{
    client::{at, http_post_json},
    kube_bins::bin,
    netns::{self, in_netns},
};

/// Where the API server listens: the external client's address on the lab fabric.
pub const API_ADDR: &str = "172.31.0.100";
pub const API_PORT: u16 = 6443;
/// The Service IP range: every ClusterIP the lab's tests use is in it.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

/// A running control plane.
pub struct ControlPlane {
    /// Its namespace (the lab's external client's).
    ns: String,
    dir: PathBuf,
    admin_token: String,
    /// etcd, kube-apiserver, kube-controller-manager (and CoreDNS, if started), in start
    /// order.
    processes: Vec<Process>,
}

/// One of the control plane's processes.
struct Process {
    name: &'static str,
    /// The network namespace it runs in.
    ns: String,
    args: Vec<String>,
    child: Child,
}

/// A random token: 32 hex digits from /dev/urandom.
fn token() -> Result<String> {
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A kubeconfig for `token` at the lab's API server, whose certificate clients verify
/// against `ca`: the file where kube-apiserver writes the certificate it made for itself
/// (for its advertise address) and the CA it signed it with.
pub fn kubeconfig(token: &str, ca: &Path) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: \
         https://{API_ADDR}:{API_PORT}\n    certificate-authority: {}\ncontexts:\n- name: \
         lab\n  context:\n    cluster: lab\n    user: user\ncurrent-context: lab\nusers:\n- \
         name: user\n  user:\n    token: {token}\n",
        ca.display()
    )
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager in namespace `ns`, keeping
    /// their data and logs in `dir`, and waits until the API server is ready and the
    /// controller manager healthy.
    pub fn start(ns: &str, dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir)?;
        let mut plane = Self {
            ns: ns.to_owned(),
            dir: dir.to_path_buf(),
            admin_token: token()?,
            processes: Vec::new(),
        };
        plane.write_credentials()?;
        plane.spawn("etcd", ns, &plane.etcd_args())?;
        plane.spawn("kube-apiserver", ns, &plane.apiserver_args())?;
        plane.wait_until("the API server is ready", |p| {
            p.kubectl(&["get", "--raw", "/readyz"]).is_ok()
        })?;
        plane.spawn(
            "kube-controller-manager",
            ns,
            &plane.controller_manager_args(),
        )?;
        plane.wait_until("the controller manager is healthy", |_| {
            netns::run_in(ns, "curl", &["-skf", "https://127.0.0.1:10257/healthz"]).is_ok()
        })?;
        plane.wait_until("namespace default has its ServiceAccount", |p| {
            p.kubectl(&["get", "serviceaccount", "default", "-n", "default"])
                .is_ok()
        })?;
        Ok(plane)
    }

    /// The admin's kubeconfig (a member of `system:masters`).
    pub fn admin_kubeconfig(&self) -> String {
        kubeconfig(&self.admin_token, &self.ca())
    }

    /// Where kube-apiserver writes its self-made certificate and CA (it exists once the API
    /// server has started).
    pub fn ca(&self) -> PathBuf {
        self.dir.join("certs/apiserver.crt")
    }

    /// The admin's kubeconfig file.
    pub fn admin_kubeconfig_path(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// The static tokens, the service-account signing key, and the admin's kubeconfig.
    fn write_credentials(&self) -> Result<()> {
        fs::write(
            self.dir.join("tokens.csv"),
            format!("{},admin,admin,system:masters\n", self.admin_token),
        )?;
        fs::write(self.admin_kubeconfig_path(), self.admin_kubeconfig())?;
        let key = self.dir.join("sa.key");
        netns::run(
            "openssl",
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                &key.to_string_lossy(),
            ],
        )?;
        netns::run(
            "openssl",
            &[
                "pkey",
                "-in",
                &key.to_string_lossy(),
                "-pubout",
                "-out",
                &self.dir.join("sa.pub").to_string_lossy(),
            ],
        )?;
        Ok(())
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    fn etcd_args(&self) -> Vec<String> {
        [
            format!("--data-dir={}", self.path("etcd")),
            "--listen-client-urls=http://127.0.0.1:2379".into(),
            "--advertise-client-urls=http://127.0.0.1:2379".into(),
            "--listen-peer-urls=http://127.0.0.1:2380".into(),
            "--initial-advertise-peer-urls=http://127.0.0.1:2380".into(),
            "--initial-cluster=default=http://127.0.0.1:2380".into(),
            // A test's cluster lives for seconds: durability is not worth an fsync a write.
            "--unsafe-no-fsync=true".into(),
            "--log-level=warn".into(),
        ]
        .into()
    }

    fn apiserver_args(&self) -> Vec<String> {
        [
            "--etcd-servers=http://127.0.0.1:2379".into(),
            format!("--bind-address={API_ADDR}"),
            format!("--advertise-address={API_ADDR}"),
            format!("--secure-port={API_PORT}"),
            format!("--cert-dir={}", self.path("certs")),
            format!("--token-auth-file={}", self.path("tokens.csv")),
            "--authorization-mode=RBAC".into(),
            format!("--service-account-key-file={}", self.path("sa.pub")),
            format!("--service-account-signing-key-file={}", self.path("sa.key")),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--allow-privileged=true".into(),
        ]
        .into()
    }

    fn controller_manager_args(&self) -> Vec<String> {
        [
            format!("--kubeconfig={}", self.admin_kubeconfig_path().display()),
            // The slices, and the `default` ServiceAccount every namespace's pods need.
            "--controllers=endpointslice,endpointslicemirroring,serviceaccount".into(),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            "--secure-port=10257".into(),
            // Slices follow pods at once (the default batches for a second).
            "--endpointslice-updates-batch-period=0s".into(),
        ]
        .into()
    }

    /// Starts `name` in network namespace `ns`, its output in `<dir>/<name>.log`.
    fn spawn(&mut self, name: &'static str, ns: &str, args: &[String]) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))?;
        let netns_file = fs::File::open(format!("/run/netns/{ns}"))
            .with_context(|| format!("opening namespace {ns}"))?;
        let mut command = Command::new(bin(name)?);
        command
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        netns::enter_on_exec(&mut command, &netns_file);
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.processes.retain(|p| p.name != name);
        self.processes.push(Process {
            name,
            ns: ns.to_owned(),
            args: args.to_vec(),
            child,
        });
        Ok(())
    }

    /// Starts CoreDNS in network namespace `ns` (a lab pod's), serving cluster domain
    /// `domain` on port 53 from this API server with the kubernetes plugin as a cluster's
    /// Corefile sets it up (pod records answered without checking the pod, reverse zones
    /// passed on when no Service has the address, TTL 5 s), then the plugin lines `plugins`
    /// (such as `forward . ADDRESS` and `cache 30`); waits until its `ready` plugin says the
    /// kubernetes plugin has synced with the API server.
    pub fn start_coredns(&mut self, ns: &str, domain: &str, plugins: &[&str]) -> Result<()> {
        let corefile = self.dir.join("Corefile");
        let mut text = format!(
            ".:53 {{\n    errors\n    ready 127.0.0.1:8181\n    kubernetes {domain} in-addr.arpa \
             ip6.arpa {{\n        kubeconfig {}\n        pods insecure\n        fallthrough \
             in-addr.arpa ip6.arpa\n        ttl 5\n    }}\n",
            self.admin_kubeconfig_path().display()
        );
        for plugin in plugins {
            text.push_str(&format!("    {plugin}\n"));
        }
        text.push_str("}\n");
        fs::write(&corefile, text)?;
        let args = vec!["-conf".to_owned(), corefile.to_string_lossy().into_owned()];
        self.spawn("coredns", ns, &args)?;
        let ns = ns.to_owned();
        self.wait_until("CoreDNS is ready", move |_| {
            netns::run_in(&ns, "curl", &["-sf", "http://127.0.0.1:8181/ready"]).is_ok()
        })
    }

    /// The endpoints (as JSON) of the EndpointSlices of Service `service` in namespace
    /// `default`.
    pub fn endpoints(&self, service: &str) -> Result<Vec<serde_json::Value>> {
        let out = self.kubectl(&[
            "get",
            "endpointslices",
            "-n",
            "default",
            "-l",
            &format!("kubernetes.io/service-name={service}"),
            "-o",
            "json",
        ])?;
        let list: serde_json::Value = serde_json::from_str(&out)?;
        Ok(list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .collect())
    }

    /// The process ID of `name` (`etcd`, `kube-apiserver`, ..., `coredns`), if it runs.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.processes
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.child.id())
    }

    /// The last lines of `name`'s log.
    pub fn log_tail(&self, name: &str) -> String {
        let log = fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Polls `ready` (every 100 ms, 60 s at most), failing early when a process exits.
    fn wait_until(&mut self, what: &str, ready: impl Fn(&Self) -> bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if ready(self) {
                return Ok(());
            }
            if let Some((name, status)) = self.exited()? {
                bail!(
                    "{name} exited ({status}) while waiting until {what}:\n{}",
                    self.log_tail(name)
                );
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .processes
                    .iter()
                    .map(|p| format!("--- {}\n{}", p.name, self.log_tail(p.name)))
                    .collect();
                bail!("waited 60 s until {what}:\n{}", logs.join("\n"));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The first of the processes that has exited, if one has.
    fn exited(&mut self) -> Result<Option<(&'static str, std::process::ExitStatus)>> {
        for process in &mut self.processes {
            if let Some(status) = process.child.try_wait()? {
                return Ok(Some((process.name, status)));
            }
        }
        Ok(None)
    }

    /// Runs kubectl as the admin in the control plane's namespace; its standard output.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kubectl_with_input(args, None)
    }

    /// Runs kubectl as the admin, with `input` on its standard input (`apply -f -`).
    pub fn kubectl_with_input(&self, args: &[&str], input: Option<&str>) -> Result<String> {
        let netns_file = fs::File::open(format!("/run/netns/{}", self.ns))?;
        let mut command = Command::new(bin("kubectl")?);
        command
            .arg(format!(
                "--kubeconfig={}",
                self.admin_kubeconfig_path().display()
            ))
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        netns::enter_on_exec(&mut command, &netns_file);
        let mut child = command.spawn().context("starting kubectl")?;
        if let Some(input) = input {
            child
                .stdin
                .take()
                .context("kubectl's input")?
                .write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// `kubectl apply -f -` of `yaml`.
    pub fn apply(&self, yaml: &str) -> Result<()> {
        self.kubectl_with_input(&["apply", "-f", "-"], Some(yaml))
            .map(drop)
    }

    /// Applies every object of `yaml` (documents of Services, EndpointSlices, Nodes...) and
    /// then its `status`, which an apply leaves out (a LoadBalancer's ingress, a Node's
    /// addresses): what a cloud controller or a kubelet would report.
    pub fn apply_objects(&self, yaml: &str) -> Result<()> {
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let object: serde_json::Value =
                serde::Deserialize::deserialize(doc).context("a YAML document")?;
            if object.is_null() {
                continue;
            }
            self.kubectl_with_input(&["apply", "-f", "-"], Some(&object.to_string()))?;
            let Some(status) = object.get("status") else {
                continue;
            };
            let kind = object["kind"]
                .as_str()
                .context("an object without a kind")?;
            let name = object["metadata"]["name"]
                .as_str()
                .context("an object without a name")?;
            let kind = match object["metadata"]["namespace"].as_str() {
                Some(namespace) => format!("{kind} -n {namespace}"),
                None => kind.to_owned(),
            };
            self.set_status(
                &kind,
                name,
                &serde_json::json!({ "status": status }).to_string(),
            )?;
        }
        Ok(())
    }

    /// Installs the repository's chart as the real helm renders it with `values` (YAML),
    /// creating its objects (ServiceAccount, ClusterRole and binding, DaemonSet) through the
    /// API server, and returns a token of its ServiceAccount: what the agent's pods would run
    /// with, so a verb missing from the chart's RBAC fails the agent as on a user's cluster.
    pub fn install_chart(&self, values: &str) -> Result<String> {
        let rendered =
            crate::helm::template(&crate::helm::chart_dir(), "svclb", "kube-system", values)?;
        let objects: String = rendered
            .iter()
            .map(|r| format!("---\n{}\n", r.text))
            .collect();
        self.kubectl_with_input(&["create", "-f", "-"], Some(&objects))?;
        let token = self.kubectl(&[
            "create",
            "token",
            "svclb",
            "--namespace",
            "kube-system",
            "--duration=6h",
        ])?;
        Ok(token.trim().to_owned())
    }

    /// Kills kube-apiserver (SIGKILL, as a crash), and waits until it has exited.
    pub fn kill_api_server(&mut self) -> Result<()> {
        let process = self
            .processes
            .iter_mut()
            .find(|p| p.name == "kube-apiserver")
            .context("no kube-apiserver")?;
        stop(&mut process.child, Signal::SIGKILL);
        Ok(())
    }

    /// Starts kube-apiserver again, as it was, and waits until it is ready.
    pub fn restart_api_server(&mut self) -> Result<()> {
        let process = self
            .processes
            .iter()
            .find(|p| p.name == "kube-apiserver")
            .context("no kube-apiserver")?;
        let (ns, args) = (process.ns.clone(), process.args.clone());
        self.spawn("kube-apiserver", &ns, &args)?;
        self.wait_until("the API server is ready again", |p| {
            p.kubectl(&["get", "--raw", "/readyz"]).is_ok()
        })
    }

    /// Writes a key outside the API server's prefix (so etcd's revision moves on), then
    /// compacts etcd's history up to that revision, through etcd's JSON gateway. A watch that
    /// resumes from an older resource version than the API server's cache holds then gets 410
    /// Gone, as after a compaction in a long-lived cluster.
    pub fn compact_etcd(&self) -> Result<()> {
        let etcd = |path: &'static str, body: String| {
            in_netns(&self.ns, move || {
                let answer = http_post_json(at("127.0.0.1", 2379), path, &body)?;
                anyhow::ensure!(answer.status == 200, "etcd {path}: {answer:?}");
                Ok(answer.body)
            })
        };
        // The key and value are base64: "svclb-lab", "1".
        let put = etcd(
            "/v3/kv/put",
            r#"{"key":"c3ZjbGItbGFi","value":"MQ=="}"#.into(),
        )?;
        let answer: serde_json::Value =
            serde_json::from_str(&put).with_context(|| format!("etcd put: {put}"))?;
        let revision = answer["header"]["revision"]
            .as_str()
            .with_context(|| format!("no revision in etcd's answer {put}"))?;
        etcd(
            "/v3/kv/compaction",
            format!(r#"{{"revision":"{revision}","physical":true}}"#),
        )
        .map(drop)
    }

    /// A Node object for each of `nodes` (name, address, zone).
    pub fn create_nodes(&self, nodes: &[(&str, &str, &str)]) -> Result<()> {
        for (name, addr, zone) in nodes {
            self.apply(&format!(
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    \
                 topology.kubernetes.io/zone: {zone}\n"
            ))?;
            self.set_status(
                "node",
                name,
                &format!(
                    r#"{{"status":{{"addresses":[{{"type":"InternalIP","address":"{addr}"}}],"conditions":[{{"type":"Ready","status":"True"}}]}}}}"#
                ),
            )?;
        }
        Ok(())
    }

    /// Creates the lab pod `pod` in namespace default, labelled `app: APP`, bound to its node
    /// and listening on `port` (named `http`), then reports it Running and Ready at its
    /// address as its kubelet would; the EndpointSlice controller takes it from there.
    pub fn run_pod(&self, pod: &crate::Pod, app: &str, port: u16) -> Result<()> {
        self.run_pod_with(pod, app, port, "")
    }

    /// [`ControlPlane::run_pod`], with `spec` (lines of YAML indented two spaces, e.g. a
    /// `hostname` and `subdomain`) added to the pod's spec.
    pub fn run_pod_with(&self, pod: &crate::Pod, app: &str, port: u16, spec: &str) -> Result<()> {
        let (name, node, ip) = (&pod.name, &pod.node, pod.addr);
        self.apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  \
             labels:\n    app: {app}\nspec:\n{spec}  nodeName: {node}\n  containers:\n  - name: \
             app\n    image: lab\n    ports:\n    - name: http\n      containerPort: {port}\n"
        ))?;
        self.set_status(
            "pod -n default",
            name,
            &format!(
                r#"{{"status":{{"phase":"Running","podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}],"conditions":[{{"type":"Ready","status":"True"}}]}}}}"#
            ),
        )
    }

    /// Merges `patch` into the status of `kind` (with `-n NAMESPACE` when namespaced) `name`.
    fn set_status(&self, kind: &str, name: &str, patch: &str) -> Result<()> {
        let mut args: Vec<&str> = vec!["patch"];
        args.extend(kind.split_whitespace());
        args.extend([name, "--subresource=status", "--type=merge", "-p", patch]);
        self.kubectl(&args).map(drop)
    }
}

/// Signals `child` and waits (5 s at most, then SIGKILL) until it has exited.
fn stop(child: &mut Child, signal: Signal) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), signal);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Last started, first stopped: the controller manager, the API server, then etcd.
        for process in self.processes.iter_mut().rev() {
            stop(&mut process.child, Signal::SIGTERM);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
