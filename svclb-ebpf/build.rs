use std::{env, path::PathBuf};

/// Rebuild the eBPF object when bpf-linker changes (a new LLVM can change the output), the way
/// the aya template does.
fn main() {
    let linker = env::var_os("PATH")
        .and_then(|paths| {
            env::split_paths(&paths)
                .map(|dir| dir.join("bpf-linker"))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| PathBuf::from("bpf-linker"));
    println!("cargo:rerun-if-changed={}", linker.display());
}
