//! DNS entries -> `SVCLB_DNS`: puts what is new or changed, then deletes what is gone, each
//! write recorded in the programmed entries only when it succeeded.

use std::collections::{BTreeMap, BTreeSet};

use svclb_common::dns::{DnsAnswer, DnsKey};

use super::{MapWriter, SyncReport};

/// The programmed DNS entries.
pub type DnsEntries = BTreeMap<DnsKey, DnsAnswer>;

/// Brings `programmed` (what the kernel holds) to `desired` through `writer`.
pub fn sync<W: MapWriter>(
    writer: &mut W,
    programmed: &mut DnsEntries,
    desired: &DnsEntries,
) -> SyncReport {
    let gone: BTreeSet<DnsKey> = programmed
        .keys()
        .filter(|key| !desired.contains_key(key))
        .copied()
        .collect();
    apply(writer, programmed, desired, &gone)
}

/// Writes `put` where `programmed` differs from it, then deletes `gone` (but what `put` has).
pub fn apply<W: MapWriter>(
    writer: &mut W,
    programmed: &mut DnsEntries,
    put: &DnsEntries,
    gone: &BTreeSet<DnsKey>,
) -> SyncReport {
    let mut report = SyncReport::default();
    for (key, value) in put {
        if programmed.get(key) == Some(value) {
            continue;
        }
        if report.wrote(writer.put_dns(key, value), || name(key)) {
            programmed.insert(*key, *value);
        }
    }
    for key in gone {
        if put.contains_key(key) || !programmed.contains_key(key) {
            continue;
        }
        if report.wrote(writer.del_dns(key), || name(key)) {
            programmed.remove(key);
        }
    }
    report
}

/// A key as `name type N`, for errors.
pub fn name(key: &DnsKey) -> String {
    let wire = &key.name[..usize::from(key.len).min(key.name.len())];
    let mut labels = Vec::new();
    let mut at = 0;
    while let Some(&len) = wire.get(at) {
        if len == 0 {
            break;
        }
        let end = (at + 1 + usize::from(len)).min(wire.len());
        labels.push(String::from_utf8_lossy(&wire[at + 1..end]).into_owned());
        at = end;
    }
    format!("DNS name {}. type {}", labels.join("."), key.qtype)
}

#[cfg(test)]
#[path = "tests/dns_tests.rs"]
mod tests;
