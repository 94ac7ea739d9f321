//! Project tasks: `cargo xtask setup | test | run | lint | bench | fuzz`.

mod control_plane;
mod demo;
mod fuzz;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (Debian packages, rust-src, bpf-linker).
    Setup,
    /// Unit, datapath-fixture and lab tests (needs root).
    Test {
        /// Only tests whose name contains this.
        filter: Option<String>,
    },
    /// The cargo-fuzz targets (manifest parser, model -> plan, Maglev), each for a bounded time
    /// (optimized, with AddressSanitizer; `cargo xtask test` runs a quick build briefly).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only these targets (manifest, plan, maglev).
        targets: Vec<String>,
    },
    /// rustfmt check, clippy over user space and the eBPF crate (its own target), and no
    /// unused dependencies (cargo machete).
    Lint,
    /// Removes what labs, benches and killed test runs left behind (namespaces, pins, cgroups,
    /// processes, work directories); names BPF programs attached to the machine itself.
    Sweep,
    /// svclb and the alternatives measured side by side; results in bench/results/ (root).
    Bench {
        /// A smoke run: smaller sizes and fewer samples (a minute or two).
        #[arg(long)]
        quick: bool,
        /// Only these sections, comma-separated: packet, latency, north-south, saturation,
        /// east-west, control-plane or maglev (the results file is named after them).
        #[arg(long)]
        only: Option<String>,
        /// The saturation section's systems, by key (svclb_xdp_native, svclb_xdp_generic,
        /// svclb_tc_only, iptables_legacy, iptables_nft, nftables, null_redirect, routing).
        #[arg(long, value_delimiter = ',')]
        system: Vec<String>,
        /// The saturation section's loads, by key (tracked_1, tracked_1024, tracked_65536,
        /// new_flows).
        #[arg(long, value_delimiter = ',')]
        load: Vec<String>,
    },
    /// Without arguments: a demo lab with an agent per node. With `-- ARGS`: `svclb agent ARGS`
    /// on this machine.
    Run {
        /// Exit after the demo instead of waiting for Ctrl-C.
        #[arg(long)]
        once: bool,
        /// Serve the examples through a real Kubernetes control plane (etcd, kube-apiserver,
        /// kube-controller-manager) instead of a manifests directory.
        #[arg(long)]
        kubernetes: bool,
        /// Arguments for `svclb agent` on the real machine.
        #[arg(last = true)]
        agent_args: Vec<String>,
    },
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs a command in the workspace root, failing when it fails.
pub fn run(command: &mut Command) -> Result<()> {
    let shown = format!("{command:?}");
    let status = command
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// Builds the agent and returns the path of its binary.
pub fn build_svclb() -> Result<PathBuf> {
    run(Command::new("cargo").args(["build", "--package", "svclb"]))?;
    Ok(target_dir().join("debug/svclb"))
}

/// Cargo's target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

/// Builds the lab's client process (`svclb-lab-client`, what runs in a lab cgroup); its path.
pub fn build_lab_client() -> Result<PathBuf> {
    run(Command::new("cargo").args([
        "build",
        "--package",
        "svclb-tests",
        "--bin",
        "svclb-lab-client",
    ]))?;
    Ok(target_dir().join("debug/svclb-lab-client"))
}

/// The toolchain `rust-toolchain.toml` pins: the one place its version is written.
pub fn pinned_toolchain() -> Result<String> {
    let file = workspace_root().join("rust-toolchain.toml");
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    svclb_common::toolchain::channel(&text)
        .map(str::to_owned)
        .with_context(|| format!("{} has no channel", file.display()))
}

/// How long `cargo xtask test` runs each fuzz target (`cargo xtask fuzz` runs longer).
const FUZZ_SECONDS_IN_TEST: u64 = 15;

fn test(filter: Option<String>) -> Result<()> {
    if !svclb_tests::is_root() {
        bail!(
            "`cargo xtask test` runs privileged datapath and lab tests and needs root \
             (unit tests alone: `cargo test`)"
        );
    }
    let started = Instant::now();
    sweep();
    let filter: Vec<String> = filter.into_iter().collect();
    // Both runs select the same packages and build tests, so cargo resolves one feature set
    // and builds each crate once: the agent binary the lab runs is the one built here.
    let svclb = target_dir().join("debug/svclb");
    let cargo_test = |targets: &[&str], harness: &[&str]| {
        run(Command::new("cargo")
            .args(["test", "--workspace", "--exclude", "svclb-ebpf"])
            .args(targets)
            .arg("--")
            .args(harness)
            .args(&filter)
            .env("SVCLB_BIN", &svclb))
    };

    println!("== unit tests, and the tests that need no root");
    cargo_test(&["--tests"], &[])?;
    let unit = started.elapsed();

    // A filtered run is someone after particular tests; a full one fuzzes briefly too. The
    // fuzz targets build meanwhile, on the CPU the lab tests leave idle.
    let fuzz_build = filter
        .is_empty()
        .then(|| fuzz::BackgroundBuild::start(fuzz::Build::Quick))
        .transpose()?;
    println!("== datapath fixtures and lab tests, two at a time");
    // Tests that need root are `#[ignore = "needs root"]`: a plain `cargo test` lists them as
    // ignored, and this run (as root) runs them, and only them.
    // Two at a time: each lab has namespaces, a cgroup, pins and scratch names of its own, and
    // most of a lab test's time is spent waiting (on an agent, a connection, a timeout).
    cargo_test(&["--test", "svclb"], &["--ignored", "--test-threads=2"])?;
    if let Some(build) = fuzz_build {
        build.wait()?;
        println!("== fuzz targets, {FUZZ_SECONDS_IN_TEST} s each");
        fuzz::fuzz(&[], FUZZ_SECONDS_IN_TEST, fuzz::Build::Quick)?;
    }
    println!(
        "== all tests passed in {:.0?} (build and unit tests {:.0?})",
        started.elapsed(),
        unit
    );
    Ok(())
}

fn bench(quick: bool, only: Option<&str>, systems: &[String], loads: &[String]) -> Result<()> {
    if !svclb_tests::is_root() {
        bail!(
            "`cargo xtask bench` loads BPF programs and builds network namespaces: run it as root"
        );
    }
    sweep();
    // The agent measured is the release build.
    run(Command::new("cargo").args(["build", "--release", "--package", "svclb"]))?;
    let target = target_dir();
    let date = String::from_utf8(
        Command::new("date")
            .args(["-u", "+%Y-%m-%d"])
            .output()?
            .stdout,
    )?;
    let dir = workspace_root().join("bench/results");
    std::fs::create_dir_all(&dir)?;
    let out = dir.join(format!(
        "{}{}{}.md",
        date.trim(),
        only.map(|o| format!("-{}", o.replace(',', "-")))
            .unwrap_or_default(),
        if quick { "-quick" } else { "" }
    ));
    let mut args = vec![
        "bench",
        "--package",
        "svclb-tests",
        "--bench",
        "svclb",
        "--",
    ];
    if quick {
        args.push("--quick");
    }
    if let Some(only) = only {
        args.extend(["--only", only]);
    }
    let (systems, loads) = (systems.join(","), loads.join(","));
    for (flag, list) in [("--system", &systems), ("--load", &loads)] {
        if !list.is_empty() {
            args.extend([flag, list.as_str()]);
        }
    }
    let out_arg = out.to_string_lossy().into_owned();
    args.extend(["--out", &out_arg]);
    run(Command::new("cargo")
        .args(&args)
        .env("SVCLB_BIN", target.join("release/svclb")))
}

/// Sweeps, printing what it removed and found (nothing when there was nothing).
fn sweep() {
    let sweep = svclb_tests::sweep::sweep();
    for line in &sweep.removed {
        println!("sweep: removed {line}");
    }
    for line in &sweep.warnings {
        println!("sweep: {line}");
    }
}

fn lint() -> Result<()> {
    run(Command::new("cargo").args(["fmt", "--all", "--", "--check"]))?;
    // Every declared dependency is used (the workspace's crates and the fuzz targets).
    // (Called by its own name: as `cargo machete` under xtask it takes "machete" for a
    // directory.)
    run(Command::new("cargo-machete").arg("."))?;
    let fuzz_manifest = workspace_root().join("fuzz/Cargo.toml");
    let fuzz_manifest = fuzz_manifest.to_string_lossy();
    run(Command::new("cargo").args(["fmt", "--manifest-path", &fuzz_manifest, "--", "--check"]))?;
    run(Command::new("cargo")
        .args([
            "clippy",
            "--manifest-path",
            &fuzz_manifest,
            "--",
            "-D",
            "warnings",
        ])
        .env("AYA_BUILD_SKIP", "1"))?;
    // Clippy needs svclb's eBPF object only to exist (`include_bytes!`), not built: the
    // build is linted by the pass below.
    run(Command::new("cargo")
        .args([
            "clippy",
            "--workspace",
            "--exclude",
            "svclb-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
        .env("AYA_BUILD_SKIP", "1"))?;
    run(Command::new("cargo")
        .args([
            "clippy",
            "--package",
            "svclb-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ])
        .env("RUSTC_BOOTSTRAP", "1"))
}

fn main() -> std::process::ExitCode {
    match run_task(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_task(cli: Cli) -> Result<()> {
    match cli.command {
        Task::Setup => setup::setup(),
        Task::Sweep => {
            if !svclb_tests::is_root() {
                bail!("`cargo xtask sweep` removes namespaces, cgroups and pins: run it as root");
            }
            sweep();
            Ok(())
        }
        Task::Lint => {
            setup::setup()?;
            lint()
        }
        Task::Bench {
            quick,
            only,
            system,
            load,
        } => {
            setup::setup()?;
            bench(quick, only.as_deref(), &system, &load)
        }
        Task::Fuzz { seconds, targets } => {
            setup::setup()?;
            fuzz::fuzz(&targets, seconds, fuzz::Build::Full)
        }
        Task::Test { filter } => {
            setup::setup()?;
            test(filter)
        }
        Task::Run {
            once,
            kubernetes,
            agent_args,
        } => {
            setup::setup()?;
            if agent_args.is_empty() {
                demo::run(once, kubernetes)
            } else {
                let svclb = build_svclb()?;
                run(Command::new(svclb).arg("agent").args(agent_args))
            }
        }
    }
}
