//! Maglev lookup tables (Eisenbud et al., NSDI 2016), computed exactly as Cilium computes
//! them, so a fleet behind an ECMP router can move node by node between Cilium and svclb
//! without reshuffling flows.
//!
//! - The table size M is one of [`TABLE_SIZES`]; the seed is base64 of 12 bytes, and the hash
//!   seed is the big-endian u32 of its first four.
//! - A backend's identity is `[ADDR:PORT/PROTO,State:active]` (`[[ADDR]:PORT/...` for IPv6),
//!   never a node-local id; backends are sorted by it, byte order.
//! - MurmurHash3 x64_128 of the identity gives h1, h2: offset = h1 mod M,
//!   skip = h2 mod (M - 1) + 1.
//! - The fill is the paper's round robin, one slot per turn, with Cilium's weights: they apply
//!   only when weight_sum / N (integer division) exceeds 1; backend i then starts a counter at
//!   weight_i / N and, at turn n, gives its turn away while (n + 1) * weight_i is below the
//!   counter's floor, adding weight_sum to the counter whenever it takes a slot.

use std::{fmt, net::IpAddr};

use base64::Engine as _;

/// Allowed table sizes (primes).
pub const TABLE_SIZES: [u32; 10] = [
    251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071,
];
pub const DEFAULT_TABLE_SIZE: u32 = 16381;
/// Cilium's default seed.
pub const DEFAULT_SEED: &str = "JLfvgnHc2kaSUFaI";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MaglevError {
    TableSize(u32),
    SeedNotBase64(String),
    SeedLength(usize),
    NoBackends,
    ZeroWeight(String),
}

impl fmt::Display for MaglevError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TableSize(m) => write!(
                f,
                "table size {m} is not one of {}",
                TABLE_SIZES.map(|s| s.to_string()).join(", ")
            ),
            Self::SeedNotBase64(seed) => write!(f, "seed {seed:?} is not base64"),
            Self::SeedLength(n) => write!(f, "seed decodes to {n} bytes, not 12"),
            Self::NoBackends => f.write_str("no backends"),
            Self::ZeroWeight(id) => write!(f, "backend {id} has weight 0 (weights start at 1)"),
        }
    }
}

impl std::error::Error for MaglevError {}

/// Table size and hash seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Maglev {
    pub table_size: u32,
    pub hash_seed: u32,
}

impl Default for Maglev {
    fn default() -> Self {
        Self::new(DEFAULT_TABLE_SIZE, DEFAULT_SEED).expect("the defaults are valid")
    }
}

/// One backend: its identity string and weight (1 for Kubernetes endpoints).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Weighted {
    pub identity: String,
    pub weight: u32,
}

/// `[ADDR:PORT/PROTO,State:active]`, the identity Cilium hashes.
pub fn identity(address: IpAddr, port: u16, protocol: &str) -> String {
    let protocol = protocol.to_ascii_uppercase();
    match address {
        IpAddr::V4(a) => format!("[{a}:{port}/{protocol},State:active]"),
        IpAddr::V6(a) => format!("[[{a}]:{port}/{protocol},State:active]"),
    }
}

impl Maglev {
    pub fn new(table_size: u32, seed: &str) -> Result<Self, MaglevError> {
        if !TABLE_SIZES.contains(&table_size) {
            return Err(MaglevError::TableSize(table_size));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(seed)
            .map_err(|_| MaglevError::SeedNotBase64(seed.to_owned()))?;
        if bytes.len() != 12 {
            return Err(MaglevError::SeedLength(bytes.len()));
        }
        Ok(Self {
            table_size,
            hash_seed: u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        })
    }

    fn offset_and_skip(&self, identity: &str) -> (u64, u64) {
        let m = u64::from(self.table_size);
        let mut bytes = identity.as_bytes();
        let hash = murmur3::murmur3_x64_128(&mut bytes, self.hash_seed)
            .expect("hashing a byte slice cannot fail");
        let (h1, h2) = (hash as u64, (hash >> 64) as u64);
        (h1 % m, h2 % (m - 1) + 1)
    }

    /// The lookup table: for each of the M slots, the index into `backends` of the backend it
    /// sends to. The result does not depend on the order of `backends`.
    pub fn table(&self, backends: &[Weighted]) -> Result<Vec<u32>, MaglevError> {
        if backends.is_empty() {
            return Err(MaglevError::NoBackends);
        }
        if let Some(b) = backends.iter().find(|b| b.weight == 0) {
            return Err(MaglevError::ZeroWeight(b.identity.clone()));
        }
        let m = self.table_size as usize;
        let n = backends.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|a, b| {
            backends[*a]
                .identity
                .as_bytes()
                .cmp(backends[*b].identity.as_bytes())
        });

        // Each backend walks its permutation (offset + j * skip) mod M; `position` is where
        // its walk stands, so the M x N permutation never needs to exist in memory.
        let mut position = Vec::with_capacity(n);
        let mut skip = Vec::with_capacity(n);
        for &b in &order {
            let (o, s) = self.offset_and_skip(&backends[b].identity);
            position.push(o);
            skip.push(s);
        }
        let weight_sum: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
        let weighted = weight_sum / n as u64 > 1;
        let mut counter: Vec<f64> = order
            .iter()
            .map(|&b| f64::from(backends[b].weight) / n as f64)
            .collect();

        const EMPTY: u32 = u32::MAX;
        let mut table = vec![EMPTY; m];
        let m64 = m as u64;
        for turn in 0..m64 {
            let mut i = (turn % n as u64) as usize;
            if weighted {
                loop {
                    let weight = u64::from(backends[order[i]].weight);
                    if (turn + 1) * weight < counter[i] as u64 {
                        i = (i + 1) % n;
                        continue;
                    }
                    counter[i] += weight_sum as f64;
                    break;
                }
            }
            let mut slot = position[i];
            while table[slot as usize] != EMPTY {
                slot = (slot + skip[i]) % m64;
            }
            table[slot as usize] = order[i] as u32;
            position[i] = (slot + skip[i]) % m64;
        }
        Ok(table)
    }
}

#[cfg(test)]
#[path = "tests/maglev_tests.rs"]
mod tests;
