//! `cargo xtask bench [--quick]`: svclb measured side by side with the alternatives, in one
//! run on one machine, written to `bench/results/<date>.md`. Every load loop is bounded in
//! count and time and only touches lab addresses or BPF_PROG_TEST_RUN.

mod chart;
#[path = "../../tests/svclb/common/mod.rs"]
mod common;
mod control_plane;
mod dns;
mod east_west;
mod kubeproxy;
mod latency;
mod maglev_cost;
mod north_south;
mod packet_cost;
mod report;
mod saturation;

use std::time::Instant;

use anyhow::{Context as _, Result, bail};

/// What a run measures, and how hard.
pub struct Settings {
    pub quick: bool,
    /// The saturation section's systems and loads to run (`--system KEY,KEY`, `--load
    /// KEY,KEY`, by their JSON keys); empty: all of them.
    pub systems: Vec<String>,
    pub loads: Vec<String>,
}

impl Settings {
    pub fn wants_system(&self, key: &str) -> bool {
        self.systems.is_empty() || self.systems.iter().any(|s| s == key)
    }

    pub fn wants_load(&self, key: &str) -> bool {
        self.loads.is_empty() || self.loads.iter().any(|s| s == key)
    }
}

/// The comma-separated values of flag `name`, if given.
fn list(args: &[String], name: &str) -> Vec<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|list| list.split(',').map(str::to_owned).collect())
        .unwrap_or_default()
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; our own flags are `--quick`, `--out FILE`,
    // `--only SECTION[,SECTION]` (packet, latency, north-south, saturation, east-west, dns,
    // control-plane or maglev), and `--system KEY,KEY` and `--load KEY,KEY` (the saturation section's systems
    // and loads).
    let quick = args.iter().any(|a| a == "--quick");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let wanted = |section: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|o| o == section))
    };
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .cloned();
    if !svclb_tests::is_root() {
        bail!("the benchmarks load BPF programs and build network namespaces: run them as root");
    }
    let settings = Settings {
        quick,
        systems: list(&args, "--system"),
        loads: list(&args, "--load"),
    };
    let started = Instant::now();
    let mut report = report::Report::new(quick, only.clone())?;

    if wanted("packet") {
        eprintln!("== per-packet cost (BPF_PROG_TEST_RUN)");
        report.packet = packet_cost::run(&settings)?;
    }
    if wanted("latency") {
        eprintln!("== new-connection latency and throughput through a cluster IP");
        report.latency = latency::run(&settings)?;
    }
    if wanted("north-south") {
        eprintln!("== north-south: XDP against TC");
        report.north_south = Some(north_south::run(&settings)?);
    }
    if wanted("saturation") {
        eprintln!("== north-south at saturation: Mpps per core");
        report.saturation = Some(saturation::run(&settings)?);
    }
    if wanted("east-west") {
        eprintln!("== east-west at saturation: connections per second");
        report.east_west = Some(east_west::run(&settings)?);
    }
    if wanted("dns") {
        eprintln!("== Service DNS: the kernel against CoreDNS");
        report.dns = Some(dns::run(&settings)?);
    }
    if wanted("control-plane") {
        eprintln!("== control plane");
        (report.cold, report.changes) = control_plane::run(&settings)?;
    }
    if wanted("maglev") {
        eprintln!("== Maglev table build");
        report.maglev = maglev_cost::run(&settings);
    }

    if let Some(out) = out.as_ref().filter(|_| !report.latency.is_empty()) {
        let png = std::path::Path::new(out).with_extension("png");
        chart::latency(&report.latency, &png)?;
        report.chart = png.file_name().map(|f| f.to_string_lossy().into_owned());
        eprintln!("chart written to {}", png.display());
    }
    report.took = started.elapsed();
    let text = report.render();
    println!("{text}");
    if let Some(out) = out {
        std::fs::write(&out, &text).with_context(|| format!("writing {out}"))?;
        eprintln!("results written to {out}");
        let json = std::path::Path::new(&out).with_extension("json");
        std::fs::write(&json, serde_json::to_string_pretty(&report.json())?)
            .with_context(|| format!("writing {}", json.display()))?;
        eprintln!("figures written to {}", json.display());
    }
    Ok(())
}
