//! The programs the lab, the tests and the benchmarks run, and the Debian package of each: a
//! missing one is named with the command that installs it. `cargo xtask setup` installs all
//! of them.

/// (program, Debian package).
pub const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("bpftool", "bpftool"),
    ("curl", "curl"),
    ("socat", "socat"),
    ("sysctl", "procps"),
    // The lab turns transmit checksum offload off on its fabric ports (see `lab.rs`).
    ("ethtool", "ethtool"),
    // The benchmarks: kube-proxy's rule layouts.
    ("iptables-restore", "iptables"),
    ("nft", "nftables"),
    // The control plane's service-account signing key.
    ("openssl", "openssl"),
    // `.ci/run` starts the demo in a mount namespace of its own.
    ("unshare", "util-linux"),
    // Service DNS asked as users ask it (`lab_dns`).
    ("dig", "bind9-dnsutils"),
];

/// The Debian package that has `program`.
pub fn package_of(program: &str) -> Option<&'static str> {
    TOOLS
        .iter()
        .find(|(name, _)| *name == program)
        .map(|(_, package)| *package)
}

/// One line: `program` is missing, what needs it, and how to install it.
pub fn missing(program: &str, needed_for: &str) -> String {
    let install = package_of(program).map_or_else(
        || "install it".to_owned(),
        |package| format!("install it with `apt-get install {package}` (or `cargo xtask setup`)"),
    );
    format!("{program} is not installed, and is needed {needed_for}: {install}")
}
