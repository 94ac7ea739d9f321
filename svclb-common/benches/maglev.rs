//! Maglev table build time: `cargo bench -p svclb-common --features user`.
//! Builds each table repeatedly (bounded: at most 200 builds or 3 s per case) and prints the
//! fastest and the median build.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use svclb_common::maglev::{DEFAULT_SEED, Maglev, Weighted, identity};

fn main() {
    println!(
        "{:>7}  {:>8}  {:>10}  {:>10}  {:>6}",
        "M", "backends", "min ms", "median ms", "runs"
    );
    for m in [16381u32, 65521] {
        for n in [10usize, 100, 1000] {
            let backends: Vec<Weighted> = (0..n)
                .map(|i| Weighted {
                    identity: identity(
                        Ipv4Addr::new(10, 244, (i / 250) as u8, (i % 250) as u8 + 1).into(),
                        8080,
                        "TCP",
                    ),
                    weight: 1,
                })
                .collect();
            let maglev = Maglev::new(m, DEFAULT_SEED).expect("valid");
            let mut times = Vec::new();
            let started = Instant::now();
            while times.len() < 200 && started.elapsed() < Duration::from_secs(3) {
                let t = Instant::now();
                let table = maglev.table(&backends).expect("a table");
                times.push(t.elapsed());
                assert_eq!(table.len(), m as usize);
            }
            times.sort();
            println!(
                "{m:>7}  {n:>8}  {:>10.3}  {:>10.3}  {:>6}",
                times[0].as_secs_f64() * 1e3,
                times[times.len() / 2].as_secs_f64() * 1e3,
                times.len()
            );
        }
    }
}
