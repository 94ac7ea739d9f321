//! The datapath's settings (`SVCLB_CONFIG`: socket-LB on or off and its scope, the service
//! loopback addresses), written at every start: the map is pinned, and what an earlier run
//! wrote must not outlive a change of flags.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, Result};
use aya::{Ebpf, maps::Array};
use svclb_common::{
    Config,
    config::{CFG_F_HOSTNS_ONLY, CFG_F_SOCKET_LB},
    limits::MAP_CONFIG,
};

/// What the agent sets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// The socket hooks translate.
    pub socket_lb: bool,
    /// ...only the host's sockets, the host's network namespace having this cookie.
    pub hostns_only: Option<u64>,
    /// `--service-loopback-address`: the source of hairpin flows on the TC path.
    pub loopback4: Option<Ipv4Addr>,
    pub loopback6: Option<Ipv6Addr>,
}

impl Settings {
    fn value(&self) -> Config {
        let mut config = Config::default();
        if self.socket_lb {
            config.flags |= CFG_F_SOCKET_LB;
        }
        if let Some(cookie) = self.hostns_only {
            config.flags |= CFG_F_HOSTNS_ONLY;
            config.host_netns = cookie;
        }
        if let Some(v4) = self.loopback4 {
            config.loopback4[..4].copy_from_slice(&v4.octets());
        }
        if let Some(v6) = self.loopback6 {
            config.loopback6 = v6.octets();
        }
        config
    }
}

/// Writes `settings` into the loaded object's `SVCLB_CONFIG`.
pub fn write(ebpf: &mut Ebpf, settings: &Settings) -> Result<()> {
    let map = ebpf
        .map_mut(MAP_CONFIG)
        .with_context(|| format!("the datapath object has no map {MAP_CONFIG}"))?;
    let mut array: Array<_, Config> = Array::try_from(map)?;
    array
        .set(0, &settings.value(), 0)
        .with_context(|| format!("writing {MAP_CONFIG}"))
}

#[cfg(test)]
mod tests {
    use super::Settings;
    use svclb_common::config::{CFG_F_HOSTNS_ONLY, CFG_F_SOCKET_LB};

    #[test]
    fn settings_become_the_kernel_value() {
        let value = Settings {
            socket_lb: true,
            hostns_only: Some(77),
            loopback4: Some("169.254.42.1".parse().unwrap()),
            loopback6: None,
        }
        .value();
        assert_eq!(value.flags, CFG_F_SOCKET_LB | CFG_F_HOSTNS_ONLY);
        assert_eq!(value.host_netns, 77);
        assert_eq!(value.loopback4[..4], [169, 254, 42, 1]);
        assert_eq!(value.loopback4[4..], [0; 12]);
        assert_eq!(value.loopback6, [0; 16]);
        assert_eq!(Settings::default().value().flags, 0);
    }
}
