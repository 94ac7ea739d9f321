//! A stub resolver that is musl's: `tests/musl/resolve.rs`, built for the musl target (which
//! `cargo xtask setup` adds to the pinned toolchain), prints a name's addresses as musl's
//! getaddrinfo finds them.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// The target the resolver is built for.
pub const TARGET: &str = "x86_64-unknown-linux-musl";

/// Builds the resolver into `dir`; its path.
pub fn resolver(dir: &Path) -> Result<PathBuf> {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = dir.join("resolve-musl");
    let built = Command::new("rustc")
        .args(["--edition", "2024", "-O", "--target", TARGET, "-o"])
        .arg(&out)
        .arg(crate_dir.join("musl/resolve.rs"))
        // The pinned toolchain (rust-toolchain.toml).
        .current_dir(crate_dir)
        .output()
        .context("running rustc")?;
    if !built.status.success() {
        bail!(
            "building the musl resolver (is the {TARGET} target installed? `cargo xtask setup` adds it): {}",
            String::from_utf8_lossy(&built.stderr).trim()
        );
    }
    Ok(out)
}
