//! Builds the eBPF programs of `svclb-ebpf` and leaves the objects in `OUT_DIR`: `svclb` (the
//! datapath) and `svclb-trafficgen` (the benchmarks' generator and sink).

use std::{env, fs, path::PathBuf};

use aya_build::{Package, Toolchain};

/// The toolchain `rust-toolchain.toml` pins, which builds the eBPF crate too.
fn pinned_toolchain() -> anyhow::Result<String> {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../rust-toolchain.toml");
    println!("cargo:rerun-if-changed={file}");
    let text = fs::read_to_string(file)?;
    svclb_common::toolchain::channel(&text)
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("{file} has no channel"))
}

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    if env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v == "true") {
        // `cargo check`/clippy without bpf-linker: an empty object keeps `include_bytes!`
        // compiling; loading it fails with a clear error.
        for object in ["svclb", "svclb-trafficgen"] {
            let stub = out_dir.join(object);
            if !stub.exists() {
                fs::write(stub, [])?;
            }
        }
    }
    // aya-build passes `-Z build-std=core` to the inner cargo only when RUSTC_BOOTSTRAP is "1"
    // (a stable toolchain otherwise refuses it).
    // SAFETY: build scripts are single-threaded; nothing reads the environment concurrently.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../svclb-ebpf");
    let toolchain = pinned_toolchain()?;
    aya_build::build_ebpf(
        [Package {
            name: "svclb-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
}
