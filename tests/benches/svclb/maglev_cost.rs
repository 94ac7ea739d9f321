//! Maglev table build time (what a backend change costs the agent per service).

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use svclb_common::maglev::{DEFAULT_SEED, Maglev, Weighted, identity};

use crate::Settings;

pub struct Row {
    pub table_size: u32,
    pub backends: usize,
    pub median_ms: f64,
    pub min_ms: f64,
}

pub fn run(settings: &Settings) -> Vec<Row> {
    let budget = if settings.quick {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(3)
    };
    let mut rows = Vec::new();
    for table_size in [16_381u32, 65_521] {
        for backends in [10usize, 100, 1000] {
            let set: Vec<Weighted> = (0..backends)
                .map(|i| Weighted {
                    identity: identity(
                        Ipv4Addr::new(10, 244, (i / 250) as u8, (i % 250) as u8 + 1).into(),
                        8080,
                        "TCP",
                    ),
                    weight: 1,
                })
                .collect();
            let maglev = Maglev::new(table_size, DEFAULT_SEED).expect("a valid size and seed");
            let mut times = Vec::new();
            let started = Instant::now();
            while times.len() < 200 && (times.len() < 5 || started.elapsed() < budget) {
                let t = Instant::now();
                let table = maglev.table(&set).expect("a table");
                times.push(t.elapsed());
                assert_eq!(table.len(), table_size as usize);
            }
            times.sort();
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            let row = Row {
                table_size,
                backends,
                median_ms: ms(times[times.len() / 2]),
                min_ms: ms(times[0]),
            };
            eprintln!(
                "  M={table_size} with {backends} backends: median {:.3} ms",
                row.median_ms
            );
            rows.push(row);
        }
    }
    rows
}
