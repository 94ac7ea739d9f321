//! kube-proxy's rule layouts for N services, generated the way kube-proxy lays them out, to
//! load with Debian's iptables-restore and nft.
//!
//! iptables: `KUBE-SERVICES` (one rule per service port, matched in order) jumps to a
//! `KUBE-SVC-*` chain that picks an endpoint with `statistic --mode random --probability`,
//! each endpoint a `KUBE-SEP-*` chain with the DNAT. nftables: one verdict map keyed on
//! `daddr . proto . dport`, a chain per service picking with `numgen random mod N`. kube-proxy
//! gives each endpoint a chain of its own too (for the hairpin masquerade mark); here the pick
//! maps straight to the DNAT target. That is no slower per packet, and it loads in minutes
//! rather than hours at 30k services (nft spends most of a load on per-chain work). Both
//! masquerade in postrouting what was marked (`KUBE-MARK-MASQ`, `mark-for-masquerade`): an
//! external frontend's packets, and a pod's hairpin to itself.

use std::{fmt::Write as _, net::IpAddr};

/// One service: its frontend and backends (of the frontend's family).
pub struct Svc {
    pub vip: IpAddr,
    pub port: u16,
    pub backends: Vec<(IpAddr, u16)>,
}

/// What kind of frontends the rules serve.
#[derive(Clone, Copy)]
pub struct Layout {
    /// The protocols each service's port has ("tcp", "udp"): a rule, chains and endpoints of
    /// its own for each, as kube-proxy gives each service port.
    pub protos: &'static [&'static str],
    /// External frontends (LoadBalancer IPs with the Cluster traffic policy): kube-proxy marks
    /// their packets for masquerading (`KUBE-EXT-*`, `mark-for-masquerade`) and masquerades
    /// them in postrouting, as for traffic from outside the cluster.
    pub external: bool,
}

impl Layout {
    /// A cluster IP's TCP port, with no masquerading.
    pub const CLUSTER_TCP: Self = Self {
        protos: &["tcp"],
        external: false,
    };
}

/// `addr` as a rule writes it: `a.b.c.d` or `[v6]` before a port.
fn with_port(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

fn host_prefix(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

/// Services in the order they are given; the last is the one a test targets, so in the
/// iptables layout it is matched after every other service's rule. For `iptables-restore`
/// or `ip6tables-restore`, by the services' family.
pub fn iptables(services: &[Svc], layout: Layout) -> String {
    let mut chains = String::new();
    let mut rules = String::new();
    for (s, svc) in services.iter().enumerate() {
        for (p, proto) in layout.protos.iter().enumerate() {
            service_port(
                &mut chains,
                &mut rules,
                svc,
                (s << 4) | p,
                proto,
                layout.external,
            );
        }
    }
    format!(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n{chains}-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n-A KUBE-POSTROUTING -j MASQUERADE --random-fully\n{rules}COMMIT\n"
    )
}

/// One service port's chains and rules (`id` names its chains).
fn service_port(
    chains: &mut String,
    rules: &mut String,
    svc: &Svc,
    id: usize,
    proto: &str,
    external: bool,
) {
    let svc_chain = format!("KUBE-SVC-{id:016X}");
    let _ = writeln!(chains, ":{svc_chain} - [0:0]");
    let entry = if external {
        let ext_chain = format!("KUBE-EXT-{id:016X}");
        let _ = writeln!(chains, ":{ext_chain} - [0:0]");
        let _ = writeln!(rules, "-A {ext_chain} -j KUBE-MARK-MASQ");
        let _ = writeln!(rules, "-A {ext_chain} -j {svc_chain}");
        ext_chain
    } else {
        svc_chain.clone()
    };
    let _ = writeln!(
        rules,
        "-A KUBE-SERVICES -d {} -p {proto} -m comment --comment \"default/svc{}:{proto}\" -m {proto} --dport {} -j {entry}",
        host_prefix(svc.vip),
        id >> 4,
        svc.port
    );
    let n = svc.backends.len();
    for (b, (addr, port)) in svc.backends.iter().enumerate() {
        let sep = format!("KUBE-SEP-{id:010X}{b:06X}");
        let _ = writeln!(chains, ":{sep} - [0:0]");
        let remaining = n - b;
        if remaining > 1 {
            let _ = writeln!(
                rules,
                "-A {svc_chain} -m statistic --mode random --probability {:.10} -j {sep}",
                1.0 / remaining as f64
            );
        } else {
            let _ = writeln!(rules, "-A {svc_chain} -j {sep}");
        }
        let _ = writeln!(
            rules,
            "-A {sep} -s {} -j KUBE-MARK-MASQ",
            host_prefix(*addr)
        );
        let _ = writeln!(
            rules,
            "-A {sep} -p {proto} -m {proto} -j DNAT --to-destination {}",
            with_port(*addr, *port)
        );
    }
}

/// kube-proxy's nftables layout for `nft -f`, in a table of the services' family.
pub fn nftables(services: &[Svc], layout: Layout) -> String {
    let v6 = services.first().is_some_and(|s| s.vip.is_ipv6());
    let (family, addr_type) = if v6 {
        ("ip6", "ipv6_addr")
    } else {
        ("ip", "ipv4_addr")
    };
    let mut elements = Vec::with_capacity(services.len());
    let mut chains = String::new();
    for (s, svc) in services.iter().enumerate() {
        for proto in layout.protos {
            let chain = format!("service-{s}-{proto}");
            let entry = if layout.external {
                let _ = writeln!(
                    chains,
                    "  chain external-{s}-{proto} {{\n    jump mark-for-masquerade\n    goto {chain}\n  }}"
                );
                format!("external-{s}-{proto}")
            } else {
                chain.clone()
            };
            elements.push(format!(
                "{} . {proto} . {} : goto {entry}",
                svc.vip, svc.port
            ));
            let picks: Vec<String> = svc
                .backends
                .iter()
                .enumerate()
                .map(|(b, (addr, port))| format!("{b} : {addr} . {port}"))
                .collect();
            let _ = writeln!(
                chains,
                "  chain {chain} {{\n    meta l4proto {proto} dnat {family} to numgen random mod {} map {{ {} }}\n  }}",
                svc.backends.len(),
                picks.join(", ")
            );
        }
    }
    format!(
        "table {family} kube-proxy {{\n  map service-ips {{\n    type {addr_type} . inet_proto . inet_service : verdict\n    elements = {{ {} }}\n  }}\n  chain services {{\n    {family} daddr . meta l4proto . th dport vmap @service-ips\n  }}\n  chain nat-prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    jump services\n  }}\n  chain mark-for-masquerade {{\n    meta mark set meta mark | 0x4000\n  }}\n  chain masquerading {{\n    meta mark & 0x4000 == 0 return\n    meta mark set meta mark ^ 0x4000\n    masquerade fully-random\n  }}\n  chain nat-postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    jump masquerading\n  }}\n{chains}}}\n",
        elements.join(",\n      ")
    )
}
