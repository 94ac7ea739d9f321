//! kube-proxy's rule layouts for N services, generated the way kube-proxy lays them out, to
//! load with Debian's iptables-restore and nft.
//!
//! iptables: `KUBE-SERVICES` (one rule per service port, matched in order) jumps to a
//! `KUBE-SVC-*` chain that picks an endpoint with `statistic --mode random --probability`,
//! each endpoint a `KUBE-SEP-*` chain with the DNAT. nftables: one verdict map keyed on
//! `daddr . proto . dport`, a chain per service picking with `numgen random mod N`. kube-proxy
//! gives each endpoint a chain of its own too (for the hairpin masquerade mark); here the pick
//! maps straight to the DNAT target. That is no slower per packet, and it loads in minutes
//! rather than hours at 30k services (nft spends most of a load on per-chain work).

use std::fmt::Write as _;

/// One service: its frontend and backends.
pub struct Svc {
    pub vip: std::net::Ipv4Addr,
    pub port: u16,
    pub backends: Vec<(std::net::Ipv4Addr, u16)>,
}

/// Services in the order they are given; the last is the one a test targets, so in the
/// iptables layout it is matched after every other service's rule.
pub fn iptables(services: &[Svc]) -> String {
    let mut chains = String::new();
    let mut rules = String::new();
    for (s, svc) in services.iter().enumerate() {
        let svc_chain = format!("KUBE-SVC-{s:016X}");
        let _ = writeln!(chains, ":{svc_chain} - [0:0]");
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"default/svc{s}:http cluster IP\" -m tcp --dport {} -j {svc_chain}",
            svc.vip, svc.port
        );
        let n = svc.backends.len();
        for (b, (addr, port)) in svc.backends.iter().enumerate() {
            let sep = format!("KUBE-SEP-{s:010X}{b:06X}");
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
                "-A {sep} -s {addr}/32 -j MARK --set-xmark 0x4000/0x4000"
            );
            let _ = writeln!(
                rules,
                "-A {sep} -p tcp -m tcp -j DNAT --to-destination {addr}:{port}"
            );
        }
    }
    format!(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n{chains}-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n{rules}COMMIT\n"
    )
}

pub fn nftables(services: &[Svc]) -> String {
    let mut elements = Vec::with_capacity(services.len());
    let mut chains = String::new();
    for (s, svc) in services.iter().enumerate() {
        elements.push(format!(
            "{} . tcp . {} : goto service-{s}",
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
            "  chain service-{s} {{\n    meta l4proto tcp dnat ip to numgen random mod {} map {{ {} }}\n  }}",
            svc.backends.len(),
            picks.join(", ")
        );
    }
    format!(
        "table ip kube-proxy {{\n  map service-ips {{\n    type ipv4_addr . inet_proto . inet_service : verdict\n    elements = {{ {} }}\n  }}\n  chain services {{\n    ip daddr . meta l4proto . th dport vmap @service-ips\n  }}\n  chain nat-prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    jump services\n  }}\n{chains}}}\n",
        elements.join(",\n      ")
    )
}
