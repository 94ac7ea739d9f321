//! The results file: machine, kernel, every figure, and the ratios computed from this run.

use std::{fmt::Write as _, time::Duration};

use anyhow::Result;

use crate::{
    control_plane, dns, east_west,
    latency::{self, System},
    maglev_cost, north_south, packet_cost, saturation,
};

pub struct Report {
    pub quick: bool,
    /// `--only SECTION`, when given.
    pub only: Option<String>,
    pub machine: String,
    pub kernel: String,
    pub date: String,
    pub took: Duration,
    pub packet: Vec<packet_cost::Row>,
    pub maglev: Vec<maglev_cost::Row>,
    pub cold: Vec<control_plane::Cold>,
    pub changes: Vec<control_plane::Change>,
    pub latency: Vec<latency::Row>,
    pub north_south: Option<north_south::Results>,
    pub saturation: Option<saturation::Results>,
    pub east_west: Option<east_west::Results>,
    pub dns: Option<dns::Results>,
    /// File name of the latency chart, beside the results file.
    pub chart: Option<String>,
}

fn command(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

impl Report {
    pub fn new(quick: bool, only: Option<String>) -> Result<Self> {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")?
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let memory = std::fs::read_to_string("/proc/meminfo")?
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:").map(|m| m.trim().to_owned()))
            .unwrap_or_default();
        Ok(Self {
            quick,
            only,
            machine: format!("{cpu}, {cores} cores, {memory} memory"),
            kernel: command("uname", &["-r"]),
            date: command("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            took: Duration::ZERO,
            packet: Vec::new(),
            maglev: Vec::new(),
            cold: Vec::new(),
            changes: Vec::new(),
            latency: Vec::new(),
            north_south: None,
            saturation: None,
            east_west: None,
            dns: None,
            chart: None,
        })
    }

    /// The machine-readable figures of the run (`bench/results/<run>.json`): the saturation
    /// sections, with their ratios.
    pub fn json(&self) -> serde_json::Value {
        let north_south = self.saturation.as_ref().map(|r| {
            serde_json::json!({
                "results": r,
                "ratios": saturation::ratios(r),
            })
        });
        let east_west = self.east_west.as_ref().map(|r| {
            serde_json::json!({
                "results": r,
                "ratios": east_west::ratios(r),
            })
        });
        let dns = self.dns.as_ref().map(|r| {
            serde_json::json!({
                "results": r,
                "ratios": dns::ratios(r),
            })
        });
        serde_json::json!({
            "date": self.date,
            "machine": self.machine,
            "kernel": self.kernel,
            "quick": self.quick,
            "north_south": north_south,
            "east_west": east_west,
            "dns": dns,
        })
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# svclb benchmarks, {}\n", self.date);
        let _ = writeln!(
            out,
            "Machine: {}. Kernel {}. Run: `cargo xtask bench{}{}`, {:.0?} in all.\n",
            self.machine,
            self.kernel,
            if self.quick { " --quick" } else { "" },
            self.only
                .as_ref()
                .map(|o| format!(" --only {o}"))
                .unwrap_or_default(),
            self.took
        );
        if !self.packet.is_empty() {
            let _ = writeln!(
                out,
                "## Per-packet cost of the TC program (BPF_PROG_TEST_RUN, ns/packet)\n"
            );
            let _ = writeln!(
                out,
                "The kernel's own timing of the program, averaged over many runs. The DNAT cases (new flow,\n\
                 tracked flow, reply) run once per call on a fresh copy of the packet, since an in-place\n\
                 rewrite would otherwise be measured on its own output; a single timed run carries a fixed\n\
                 overhead, shown by the last column (untouched traffic timed the same way). Untouched\n\
                 traffic is also timed over 1000 runs per call, which amortizes that overhead.\n"
            );
            let _ = writeln!(
                out,
                "| family | services | backends each | new flow | tracked flow | reply (reverse NAT) | other traffic (1000 runs/call) | other traffic (1 run/call) |"
            );
            let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
            for r in &self.packet {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
                    if r.ipv6 { "IPv6" } else { "IPv4" },
                    r.services,
                    r.backends,
                    r.new_flow,
                    r.tracked,
                    r.reply,
                    r.other,
                    r.other_single
                );
            }
            let v4 = self.packet.iter().filter(|r| !r.ipv6);
            let one = v4.clone().find(|r| r.services == 1);
            let most = v4
                .clone()
                .filter(|r| r.backends == 10)
                .max_by_key(|r| r.services);
            let six = self.packet.iter().find(|r| r.ipv6);
            let four = six.and_then(|six| {
                v4.clone()
                    .find(|r| r.services == six.services && r.backends == six.backends)
            });
            if let (Some(six), Some(four)) = (six, four) {
                let _ = writeln!(
                    out,
                    "\nIPv6 to IPv4 at {} services x {} backends: new flow {:.2}x, tracked flow {:.2}x, reply {:.2}x, other traffic {:.2}x.",
                    six.services,
                    six.backends,
                    six.new_flow / four.new_flow,
                    six.tracked / four.tracked,
                    six.reply / four.reply,
                    six.other / four.other
                );
            }
            if let (Some(one), Some(most)) = (one, most) {
                let _ = writeln!(
                    out,
                    "\nRatio at {} services to 1 service: new flow {:.2}x, tracked flow {:.2}x, other traffic {:.2}x (target: at most 1.2x).\n",
                    most.services,
                    most.new_flow / one.new_flow,
                    most.tracked / one.tracked,
                    most.other / one.other
                );
            }
        }
        if !self.latency.is_empty() {
            self.render_latency(&mut out);
        }
        if let Some(saturation) = &self.saturation {
            saturation::render(saturation, &mut out);
        }
        if let Some(east_west) = &self.east_west {
            east_west::render(east_west, &mut out);
        }
        if let Some(dns) = &self.dns {
            dns::render(dns, &mut out);
        }
        if let Some(north_south) = &self.north_south {
            north_south::render(north_south, &mut out);
        }
        if !self.cold.is_empty() || !self.changes.is_empty() {
            self.render_control_plane(&mut out);
        }
        if !self.maglev.is_empty() {
            let _ = writeln!(out, "## Maglev table build (ms)\n");
            let _ = writeln!(out, "| table size M | backends | median | fastest |");
            let _ = writeln!(out, "|---:|---:|---:|---:|");
            for r in &self.maglev {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.3} | {:.3} |",
                    r.table_size, r.backends, r.median_ms, r.min_ms
                );
            }
        }
        out
    }

    fn render_control_plane(&self, out: &mut String) {
        let ms = |v: f64| {
            if v.is_nan() {
                "-".to_owned()
            } else {
                format!("{v:.0} ms")
            }
        };
        let _ = writeln!(out, "## Control plane\n");
        let _ = writeln!(
            out,
            "Cold start: the agent started on N services x {} endpoints, from a manifests directory\n\
             or from a real kube-apiserver (the objects created through it beforehand), until it\n\
             serves (load, attach, read, plan, program); its first sync alone; its peak RSS. The\n\
             API source's ready time is also given as a ratio to the manifests source's. Beside\n\
             them, loading kube-proxy's equivalent rule sets with iptables-restore and nft -f.\n",
            control_plane::ENDPOINTS
        );
        let _ = writeln!(
            out,
            "| services | source | svclb ready | ratio to manifests | svclb first sync | svclb peak RSS | iptables-restore | nft -f |"
        );
        let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|---:|---:|");
        for c in &self.cold {
            let base = self
                .cold
                .iter()
                .find(|b| b.services == c.services && b.source == control_plane::Source::Manifests)
                .map_or(f64::NAN, |b| c.ready_ms / b.ready_ms);
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} ms | {base:.2}x | {:.0} ms | {:.1} MB | {} | {} |",
                c.services,
                c.source.name(),
                c.ready_ms,
                c.sync_ms,
                c.peak_rss_mb,
                ms(c.iptables_restore_ms),
                ms(c.nft_ms)
            );
        }
        let _ = writeln!(
            out,
            "\nOne endpoint change: a manifest rewritten (atomic rename), or the service's EndpointSlice\n\
             patched through the API server, until the new backend is in the kernel's maps, polled\n\
             every 0.2 ms.\n"
        );
        let _ = writeln!(
            out,
            "| services | source | changes | p50 | p99 | max | agent sync (p50) | agent peak RSS |"
        );
        let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|---:|---:|");
        for c in &self.changes {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} MB |",
                c.services,
                c.source.name(),
                c.samples,
                c.p50_ms,
                c.p99_ms,
                c.max_ms,
                c.sync_p50_ms,
                c.peak_rss_mb
            );
        }
        let _ = writeln!(out);
    }

    fn render_latency(&self, out: &mut String) {
        let _ = writeln!(out, "## New-connection latency through a cluster IP\n");
        let _ = writeln!(
            out,
            "From a pod to a service with one backend on the same node, among N services: connect, one\n\
             request, one answer, close, {} times per system in all; requests answered per second over\n\
             one connection (the median of the rounds), all measured by one client process\n\
             (`svclb-lab-client bench`) in the node's lab cgroup. \"svclb TC\" runs with\n\
             `--socket-lb=false`; \"svclb socket-LB\" with its cgroup hooks on that cgroup. Each system\n\
             runs in a lab of its own; the five labs of a size are built, left to settle for a few\n\
             seconds, then measured in interleaved\n\
             rounds (each round visits the systems in another order, after 10 unmeasured connections),\n\
             so the machine's noise spreads over all of them. The floor is a direct connection to the\n\
             pod. kube-proxy's layouts are loaded in the node's namespace with `{}` and `{}`; the\n\
             target service is the last rule of KUBE-SERVICES.\n",
            self.latency.first().map_or(0, |r| r.connections + r.failed),
            command("iptables-restore", &["--version"]),
            command("nft", &["--version"])
        );
        if let Some(chart) = &self.chart {
            let _ = writeln!(out, "![p99 latency against services]({chart})\n");
        }
        let _ = writeln!(
            out,
            "| services | system | p50 (µs) | p90 (µs) | p99 (µs) | p99 / direct | requests/s | failed | rules loaded in |"
        );
        let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|---:|---:|---:|");
        for r in &self.latency {
            let floor = self.latency_of(r.services, System::Direct);
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.0} | {:.0} | {:.2}x | {:.0} | {} | {} |",
                r.services,
                r.system.name(),
                r.p50_us,
                r.p90_us,
                r.p99_us,
                r.p99_us / floor.map_or(f64::NAN, |f| f.p99_us),
                r.requests_per_s,
                r.failed,
                r.load_ms
                    .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.0} ms"))
            );
        }
        let sizes: Vec<usize> = {
            let mut s: Vec<usize> = self.latency.iter().map(|r| r.services).collect();
            s.dedup();
            s
        };
        let _ = writeln!(out);
        for n in sizes {
            let p99 = |system| self.latency_of(n, system).map_or(f64::NAN, |r| r.p99_us);
            let svclb = p99(System::Svclb);
            let _ = writeln!(
                out,
                "At {n} services, svclb TC's p99 is {:.2}x the iptables layout's (target at 10000: at most 0.2x), {:.2}x the nftables layout's (target: at most 1x) and {:.2}x the direct floor (target: at most 1.1x).",
                svclb / p99(System::Iptables),
                svclb / p99(System::Nftables),
                svclb / p99(System::Direct)
            );
            let (Some(socket), Some(direct)) = (
                self.latency_of(n, System::SvclbSocket),
                self.latency_of(n, System::Direct),
            ) else {
                continue;
            };
            let _ = writeln!(
                out,
                "At {n} services, svclb socket-LB's p50 is {:.2}x and its p99 {:.2}x the direct floor's (target at 30000: within 5%, 1.05x); its connect4 hook costs {} per connect.",
                socket.p50_us / direct.p50_us,
                socket.p99_us / direct.p99_us,
                socket
                    .hook_ns
                    .map_or_else(|| "?".to_owned(), |ns| format!("{ns:.0} ns"))
            );
        }
        let _ = writeln!(out);
    }

    fn latency_of(&self, services: usize, system: System) -> Option<&latency::Row> {
        self.latency
            .iter()
            .find(|r| r.services == services && r.system == system)
    }
}
