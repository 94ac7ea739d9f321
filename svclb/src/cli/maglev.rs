//! `svclb maglev`: the Maglev table for a set of backends, as svclb and Cilium compute it.

use std::net::SocketAddr;

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use svclb_common::maglev::{Maglev, Weighted, identity};

/// Parses `ADDR:PORT/PROTO[=WEIGHT]` (IPv6 as `[ADDR]:PORT/PROTO`).
pub fn parse_backend(spec: &str) -> Result<Weighted> {
    let (rest, weight) = match spec.rsplit_once('=') {
        Some((rest, w)) => (
            rest,
            w.parse::<u32>()
                .with_context(|| format!("backend {spec:?}: weight {w:?} is not a number"))?,
        ),
        None => (spec, 1),
    };
    let (addr, protocol) = rest
        .rsplit_once('/')
        .with_context(|| format!("backend {spec:?}: expected ADDR:PORT/PROTO[=WEIGHT]"))?;
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("backend {spec:?}: {addr:?} is not ADDR:PORT"))?;
    let protocol = protocol.to_ascii_uppercase();
    if !matches!(protocol.as_str(), "TCP" | "UDP" | "SCTP") {
        bail!("backend {spec:?}: protocol {protocol:?} is not TCP, UDP or SCTP");
    }
    Ok(Weighted {
        identity: identity(addr.ip(), addr.port(), &protocol),
        weight,
    })
}

#[derive(Serialize)]
struct Json<'a> {
    table_size: u32,
    table: &'a [u32],
}

pub fn render_json(maglev: &Maglev, table: &[u32]) -> String {
    serde_json::to_string(&Json {
        table_size: maglev.table_size,
        table,
    })
    .expect("plain data")
}

pub fn render_table(maglev: &Maglev, backends: &[Weighted], table: &[u32]) -> String {
    let mut counts = vec![0usize; backends.len()];
    for &i in table {
        counts[i as usize] += 1;
    }
    let width = backends
        .iter()
        .map(|b| b.identity.len())
        .max()
        .unwrap_or(0)
        .max("BACKEND".len());
    let mut out = format!(
        "table size {} (seed {:#010x}), {} backends\n{:>3}  {:<width$}  {:>6}  {:>7}  {:>7}\n",
        maglev.table_size,
        maglev.hash_seed,
        backends.len(),
        "#",
        "BACKEND",
        "WEIGHT",
        "SLOTS",
        "SHARE"
    );
    for (i, b) in backends.iter().enumerate() {
        out.push_str(&format!(
            "{i:>3}  {:<width$}  {:>6}  {:>7}  {:>6.2}%\n",
            b.identity,
            b.weight,
            counts[i],
            100.0 * counts[i] as f64 / table.len() as f64
        ));
    }
    let first: Vec<String> = table.iter().take(24).map(ToString::to_string).collect();
    out.push_str(&format!("first slots: {} ...\n", first.join(" ")));
    out
}

#[cfg(test)]
mod tests {
    use super::parse_backend;

    #[test]
    fn backend_specs() {
        let b = parse_backend("10.0.0.1:80/tcp=3").unwrap();
        assert_eq!(
            (b.identity.as_str(), b.weight),
            ("[10.0.0.1:80/TCP,State:active]", 3)
        );
        let b = parse_backend("[fd00::1]:53/UDP").unwrap();
        assert_eq!(
            (b.identity.as_str(), b.weight),
            ("[[fd00::1]:53/UDP,State:active]", 1)
        );
        for bad in [
            "10.0.0.1:80",
            "10.0.0.1/TCP",
            "10.0.0.1:80/ICMP",
            "10.0.0.1:80/TCP=x",
            "nothost:80/TCP",
        ] {
            assert!(parse_backend(bad).is_err(), "{bad} must be refused");
        }
    }
}
