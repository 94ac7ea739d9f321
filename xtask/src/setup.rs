//! `cargo xtask setup`: installs what a fresh Debian 12 machine lacks, and nothing when all is
//! there (a few tens of milliseconds).

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

/// bpf-linker must link with the LLVM of the pinned rustc.
const LLVM: &str = "22";
const BPF_LINKER_VERSION: &str = "0.13";
/// Runs the fuzz targets (`cargo xtask fuzz`, and briefly in `cargo xtask test`).
const CARGO_FUZZ_VERSION: &str = "0.13";
/// Finds unused dependencies (`cargo xtask lint`).
const CARGO_MACHETE_VERSION: &str = "0.9";

/// Debian packages: LLVM for bpf-linker, a font for the benchmarks' charts, and (from
/// `svclb_tests::tools`) the tools the lab, demo and tests call.
const BUILD_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libclang-22-dev",
    "libpolly-22-dev",
    "fonts-dejavu-core",
];

fn packages() -> Vec<&'static str> {
    let tools = svclb_tests::tools::TOOLS
        .iter()
        .map(|(_, package)| *package);
    let mut all: Vec<&str> = BUILD_PACKAGES.iter().copied().chain(tools).collect();
    all.sort_unstable();
    all.dedup();
    all
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn missing_packages() -> Vec<&'static str> {
    let packages = packages();
    let mut args = vec!["-W", "-f=${Package} ${db:Status-Abbrev}\n"];
    args.extend_from_slice(&packages);
    // dpkg-query fails when any package is unknown; the listing still has the known ones.
    let listing = Command::new("dpkg-query")
        .args(&args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    packages
        .into_iter()
        .filter(|pkg| {
            !listing
                .lines()
                .any(|line| line.starts_with(&format!("{pkg} ii")))
        })
        .collect()
}

fn install_packages(packages: &[&str]) -> Result<()> {
    if !svclb_tests::is_root() {
        bail!(
            "missing Debian packages: {} (run `sudo cargo xtask setup`)",
            packages.join(" ")
        );
    }
    println!("setup: installing Debian packages: {}", packages.join(" "));
    crate::run(Command::new("apt-get").arg("update").arg("-q"))?;
    crate::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn has_rust_src(toolchain: &str) -> bool {
    output("rustup", &["run", toolchain, "rustc", "--print", "sysroot"]).is_some_and(|sysroot| {
        Path::new(sysroot.trim())
            .join("lib/rustlib/src/rust/library/core")
            .is_dir()
    })
}

/// Whether `toolchain` has the standard library of `target`.
fn has_target(toolchain: &str, target: &str) -> bool {
    output("rustup", &["run", toolchain, "rustc", "--print", "sysroot"]).is_some_and(|sysroot| {
        Path::new(sysroot.trim())
            .join("lib/rustlib")
            .join(target)
            .join("lib")
            .is_dir()
    })
}

fn has_bpf_linker() -> bool {
    output("bpf-linker", &["--version"])
        .is_some_and(|v| v.contains(&format!("bpf-linker {BPF_LINKER_VERSION}")))
}

/// Whether `TOOL --version` prints `version` (as `cargo-fuzz 0.13.2`, or as `0.9.2` alone).
/// The binary is called by its own name: cargo-machete run as `cargo machete` under a cargo
/// command (as xtask is) takes its subcommand's name for a directory.
fn has_cargo_tool(tool: &str, version: &str) -> bool {
    output(tool, &["--version"]).is_some_and(|v| {
        v.split_whitespace()
            .any(|word| word == version || word.starts_with(&format!("{version}.")))
    })
}

/// `cargo install TOOL --locked --version ~VERSION` with the pinned toolchain.
fn install_cargo_tool(toolchain: &str, tool: &str, version: &str) -> Result<()> {
    println!("setup: installing {tool} {version} (about a minute)");
    crate::run(Command::new("cargo").args([
        &format!("+{toolchain}"),
        "install",
        tool,
        "--locked",
        "--version",
        &format!("~{version}"),
    ]))
    .with_context(|| format!("installing {tool}"))
}

pub fn setup() -> Result<()> {
    let missing = missing_packages();
    if !missing.is_empty() {
        install_packages(&missing)?;
    }
    let toolchain = crate::pinned_toolchain()?;
    if !has_rust_src(&toolchain) {
        println!("setup: installing toolchain {toolchain} with rust-src");
        crate::run(Command::new("rustup").args([
            "toolchain",
            "install",
            &toolchain,
            "--profile",
            "minimal",
            "--component",
            "rust-src,clippy,rustfmt",
        ]))?;
    }
    let musl = svclb_tests::musl::TARGET;
    if !has_target(&toolchain, musl) {
        println!("setup: adding the {musl} target (the DNS lab's musl resolver)");
        crate::run(Command::new("rustup").args([
            "target",
            "add",
            "--toolchain",
            &toolchain,
            musl,
        ]))?;
    }
    if !has_bpf_linker() {
        println!(
            "setup: installing bpf-linker {BPF_LINKER_VERSION} for LLVM {LLVM} (about a minute)"
        );
        let path = format!(
            "/usr/lib/llvm-{LLVM}/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        crate::run(
            Command::new("cargo")
                .args([
                    &format!("+{toolchain}"),
                    "install",
                    "bpf-linker",
                    "--locked",
                    "--version",
                    &format!("~{BPF_LINKER_VERSION}"),
                    "--no-default-features",
                    "--features",
                    &format!("llvm-{LLVM}"),
                ])
                .env("PATH", path),
        )
        .context("installing bpf-linker")?;
    }
    for (tool, version) in [
        ("cargo-fuzz", CARGO_FUZZ_VERSION),
        ("cargo-machete", CARGO_MACHETE_VERSION),
    ] {
        if !has_cargo_tool(tool, version) {
            install_cargo_tool(&toolchain, tool, version)?;
        }
    }
    crate::control_plane::setup()
}
