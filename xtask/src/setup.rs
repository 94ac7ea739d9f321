//! `cargo xtask setup`: installs what a fresh Debian 12 machine lacks, and nothing when all is
//! there (a few tens of milliseconds).

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

/// bpf-linker must link with the LLVM of the pinned rustc.
const LLVM: &str = "22";
const BPF_LINKER_VERSION: &str = "0.13";
/// Runs the fuzz targets (`cargo xtask fuzz`, and briefly in `cargo xtask test`).
const CARGO_FUZZ_VERSION: &str = "0.13";

/// Debian packages: LLVM for bpf-linker, and the tools the lab, demo and tests call.
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libclang-22-dev",
    "libpolly-22-dev",
    "iproute2",
    "bpftool",
    "curl",
    "socat",
    "procps",
    // The lab turns transmit checksum offload off on its fabric ports (see `tests/src/lab.rs`).
    "ethtool",
    // The benchmarks: kube-proxy's rule layouts, and a font for the chart.
    "iptables",
    "nftables",
    "fonts-dejavu-core",
];

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn missing_packages() -> Vec<&'static str> {
    let mut args = vec!["-W", "-f=${Package} ${db:Status-Abbrev}\n"];
    args.extend_from_slice(PACKAGES);
    // dpkg-query fails when any package is unknown; the listing still has the known ones.
    let listing = Command::new("dpkg-query")
        .args(&args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    PACKAGES
        .iter()
        .copied()
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

fn has_bpf_linker() -> bool {
    output("bpf-linker", &["--version"])
        .is_some_and(|v| v.contains(&format!("bpf-linker {BPF_LINKER_VERSION}")))
}

fn has_cargo_fuzz() -> bool {
    output("cargo", &["fuzz", "--version"])
        .is_some_and(|v| v.contains(&format!("cargo-fuzz {CARGO_FUZZ_VERSION}")))
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
    if !has_cargo_fuzz() {
        println!("setup: installing cargo-fuzz {CARGO_FUZZ_VERSION} (about a minute)");
        crate::run(Command::new("cargo").args([
            &format!("+{toolchain}"),
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            &format!("~{CARGO_FUZZ_VERSION}"),
        ]))
        .context("installing cargo-fuzz")?;
    }
    Ok(())
}
