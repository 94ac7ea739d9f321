//! The datapath's settings (`SVCLB_CONFIG`: socket-LB on or off and its scope, the service
//! loopback addresses, the SNAT ports), written at every start: the map is pinned, and what
//! an earlier run wrote must not outlive a change of flags.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    ops::RangeInclusive,
    str::FromStr,
};

use anyhow::{Context as _, Result, bail};
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
    /// The source ports of SNATed flows, inclusive (none: the datapath's default).
    pub snat_ports: Option<(u16, u16)>,
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
        if let Some((min, max)) = self.snat_ports {
            (config.snat_port_min, config.snat_port_max) = (min, max);
        }
        config
    }
}

/// `--snat-ports`: the source ports this node gives flows it SNATs to remote backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnatPorts {
    /// The longest run of ports that no socket of the node's own can be given, and that is
    /// no NodePort (see [`SnatPorts::resolve`]).
    Auto,
    Range(u16, u16),
}

/// The fewest ports a SNAT range may have: each remote backend's flows from this node share
/// them.
const MIN_SNAT_PORTS: u32 = 1024;
/// Kubernetes' default NodePort range: a SNAT port there would make a backend's replies look
/// like new connections to a NodePort.
const NODE_PORTS: RangeInclusive<u16> = 30_000..=32_767;
/// Where the kernel keeps the host's ephemeral port range.
const EPHEMERAL_PORTS: &str = "/proc/sys/net/ipv4/ip_local_port_range";

impl FromStr for SnatPorts {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Self> {
        if text == "auto" {
            return Ok(Self::Auto);
        }
        let range = text.split_once('-').and_then(|(a, b)| {
            Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?))
        });
        match range {
            Some((min, max)) if min >= 1024 && max >= min && ports(min, max) >= MIN_SNAT_PORTS => {
                Ok(Self::Range(min, max))
            }
            _ => bail!(
                "--snat-ports {text:?}: expected \"auto\" or MIN-MAX, at least {MIN_SNAT_PORTS} ports from 1024 up"
            ),
        }
    }
}

impl SnatPorts {
    /// The range: as given, or, for [`SnatPorts::Auto`], the longest run of ports from 1024 up
    /// outside the host's ephemeral range (`net.ipv4.ip_local_port_range`: a local
    /// connection to a backend could be given a port its replies would be taken from) and
    /// outside [`NODE_PORTS`].
    pub fn resolve(self) -> Result<(u16, u16)> {
        match self {
            Self::Range(min, max) => Ok((min, max)),
            Self::Auto => auto_range(),
        }
    }
}

fn auto_range() -> Result<(u16, u16)> {
    let text = std::fs::read_to_string(EPHEMERAL_PORTS)
        .with_context(|| format!("reading {EPHEMERAL_PORTS}"))?;
    let ephemeral =
        parse_ephemeral(&text).with_context(|| format!("{EPHEMERAL_PORTS} holds {text:?}"))?;
    longest_free_run(ephemeral.clone()).with_context(|| {
        format!(
            "--snat-ports auto: fewer than {MIN_SNAT_PORTS} ports outside the ephemeral range {}-{} ({EPHEMERAL_PORTS}) and the NodePort range; pass --snat-ports MIN-MAX",
            ephemeral.start(),
            ephemeral.end()
        )
    })
}

fn ports(min: u16, max: u16) -> u32 {
    u32::from(max) - u32::from(min) + 1
}

fn parse_ephemeral(text: &str) -> Option<RangeInclusive<u16>> {
    let mut fields = text.split_whitespace().map(str::parse::<u16>);
    let (Some(Ok(low)), Some(Ok(high)), None) = (fields.next(), fields.next(), fields.next())
    else {
        return None;
    };
    Some(low..=high)
}

/// The longest run of ports from 1024 up in neither `ephemeral` nor [`NODE_PORTS`], if it
/// has [`MIN_SNAT_PORTS`] (the lowest of equal runs).
fn longest_free_run(ephemeral: RangeInclusive<u16>) -> Option<(u16, u16)> {
    let mut best: Option<(u16, u16)> = None;
    let mut start = None;
    for port in 1024..=u16::MAX {
        if ephemeral.contains(&port) || NODE_PORTS.contains(&port) {
            start = None;
            continue;
        }
        let first = *start.get_or_insert(port);
        if best.is_none_or(|(min, max)| ports(first, port) > ports(min, max)) {
            best = Some((first, port));
        }
    }
    best.filter(|(min, max)| ports(*min, *max) >= MIN_SNAT_PORTS)
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
    use super::{Settings, SnatPorts, longest_free_run, parse_ephemeral};
    use svclb_common::{
        config::{CFG_F_HOSTNS_ONLY, CFG_F_SOCKET_LB},
        limits::{SNAT_PORT_MAX, SNAT_PORT_MIN},
    };

    #[test]
    fn settings_become_the_kernel_value() {
        let value = Settings {
            socket_lb: true,
            hostns_only: Some(77),
            loopback4: Some("169.254.42.1".parse().unwrap()),
            loopback6: None,
            snat_ports: Some((1024, 29_999)),
        }
        .value();
        assert_eq!(value.flags, CFG_F_SOCKET_LB | CFG_F_HOSTNS_ONLY);
        assert_eq!(value.host_netns, 77);
        assert_eq!(value.loopback4[..4], [169, 254, 42, 1]);
        assert_eq!(value.loopback4[4..], [0; 12]);
        assert_eq!(value.loopback6, [0; 16]);
        assert_eq!(value.snat_ports(), (1024, 28_976));
        assert_eq!(Settings::default().value().flags, 0);
        assert_eq!(
            Settings::default().value().snat_ports(),
            (SNAT_PORT_MIN, u32::from(SNAT_PORT_MAX - SNAT_PORT_MIN) + 1)
        );
    }

    #[test]
    fn auto_snat_ports_avoid_the_ephemeral_and_node_port_ranges() {
        // Linux's default ephemeral range: below the NodePorts is the longest run.
        assert_eq!(longest_free_run(32_768..=60_999), Some((1024, 29_999)));
        // Ephemeral ports from 1024: what is left above them.
        assert_eq!(longest_free_run(1024..=49_999), Some((50_000, 65_535)));
        // Next to nothing left.
        assert_eq!(longest_free_run(1024..=65_000), None);
        assert_eq!(parse_ephemeral("32768\t60999\n"), Some(32_768..=60_999));
        assert_eq!(parse_ephemeral("32768"), None);
    }

    #[test]
    fn snat_ports_flag() {
        assert_eq!("auto".parse::<SnatPorts>().unwrap(), SnatPorts::Auto);
        assert_eq!(
            "40000-50000".parse::<SnatPorts>().unwrap(),
            SnatPorts::Range(40_000, 50_000)
        );
        assert_eq!(
            SnatPorts::Range(40_000, 50_000).resolve().unwrap(),
            (40_000, 50_000)
        );
        for bad in ["", "1-2000", "50000-40000", "60000-60100", "a-b", "40000"] {
            let err = bad.parse::<SnatPorts>().unwrap_err().to_string();
            assert!(err.contains("--snat-ports"), "{bad}: {err}");
        }
    }
}
