//! `cargo xtask fuzz`: the cargo-fuzz targets of `fuzz/`, each for a bounded time.
//!
//! Each target starts from its committed seeds (`fuzz/seeds/TARGET`) and the working corpus
//! (`fuzz/corpus/TARGET`, not committed, grown by every run). A failing input is left in
//! `fuzz/artifacts/TARGET/` and the task fails naming it.

use std::process::Command;

use anyhow::{Result, bail};

/// The targets, in `fuzz/Cargo.toml`.
pub const TARGETS: &[&str] = &["manifest", "plan", "maglev"];

fn cargo_fuzz() -> Command {
    let mut command = Command::new("cargo");
    command
        .arg("fuzz")
        // cargo-fuzz passes `-Z` flags (sanitizers, coverage) to the pinned stable rustc.
        .env("RUSTC_BOOTSTRAP", "1")
        // The targets test pure logic: no eBPF object is built for them.
        .env("AYA_BUILD_SKIP", "1");
    command
}

/// How the targets are built.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// cargo-fuzz's default: optimized, with AddressSanitizer (about ten minutes from cold on
    /// two cores, then about 2000 plan inputs a second).
    Full,
    /// Unoptimized and without a sanitizer: about four minutes from cold, seven times fewer
    /// inputs a second. What `cargo xtask test` runs, for a short time.
    Quick,
}

impl Build {
    fn args(self) -> &'static [&'static str] {
        match self {
            Self::Full => &[],
            // Its own target directory: switching builds never rebuilds the other.
            Self::Quick => &[
                "--dev",
                "--sanitizer",
                "none",
                "--target-dir",
                "fuzz/target/quick",
            ],
        }
    }
}

/// Builds the targets and runs each named one (all when `only` is empty) for `seconds`.
pub fn fuzz(only: &[String], seconds: u64, build: Build) -> Result<()> {
    for target in only {
        if !TARGETS.contains(&target.as_str()) {
            bail!(
                "no fuzz target {target:?} (there are: {})",
                TARGETS.join(", ")
            );
        }
    }
    let root = crate::workspace_root().join("fuzz");
    crate::run(cargo_fuzz().arg("build").args(build.args()))?;
    for target in TARGETS
        .iter()
        .filter(|t| only.is_empty() || only.iter().any(|o| o == *t))
    {
        let corpus = root.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        println!("== fuzz {target} for {seconds} s");
        crate::run(
            cargo_fuzz()
                .arg("run")
                .args(build.args())
                .arg(target)
                .arg(&corpus)
                .arg(root.join("seeds").join(target))
                .args([
                    "--",
                    &format!("-max_total_time={seconds}"),
                    // One input taking 10 s is a hang worth reporting.
                    "-timeout=10",
                    "-rss_limit_mb=4096",
                    "-print_final_stats=1",
                ]),
        )?;
    }
    Ok(())
}
