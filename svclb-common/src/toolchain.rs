//! The Rust toolchain `rust-toolchain.toml` pins, read from the file's text. The agent's build
//! script builds the eBPF crate with it and `cargo xtask setup` installs it: both read it
//! here, so the version is written in one place and read by one function.

/// The `channel` of a `rust-toolchain.toml` (`None` when it has none).
pub fn channel(toml: &str) -> Option<&str> {
    toml.lines().find_map(|line| {
        let value = line
            .trim()
            .strip_prefix("channel")?
            .trim()
            .strip_prefix('=')?;
        Some(value.trim().trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::channel;

    #[test]
    fn reads_the_channel_of_the_toolchain_section() {
        let toml = "[toolchain]\nchannel = \"1.98.0\"\ncomponents = [\"rust-src\"]\n";
        assert_eq!(channel(toml), Some("1.98.0"));
        assert_eq!(
            channel("[toolchain]\n  channel=\"nightly\"\n"),
            Some("nightly")
        );
        assert_eq!(channel("[toolchain]\nprofile = \"minimal\"\n"), None);
    }

    #[test]
    fn the_repository_pins_a_toolchain() {
        let toml = include_str!("../../rust-toolchain.toml");
        assert!(channel(toml).is_some_and(|c| !c.is_empty()), "{toml}");
    }
}
