//! The Maglev builder on any backend set, table size and seed: every slot names one of the
//! backends; the table does not depend on the order of the backends; equal weights give every
//! backend its share to within one slot; weights give shares in proportion.

#![no_main]

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use base64::Engine as _;
use libfuzzer_sys::{
    arbitrary::{self, Unstructured},
    fuzz_target,
};
use svclb_common::maglev::{Maglev, TABLE_SIZES, Weighted, identity};

fn backends(u: &mut Unstructured) -> arbitrary::Result<Vec<Weighted>> {
    let weighted: bool = u.arbitrary()?;
    let count = u.int_in_range(0..=300usize)?;
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for _ in 0..count {
        let address: IpAddr = if u.ratio(1, 4)? {
            Ipv6Addr::from(u.arbitrary::<u128>()?).into()
        } else {
            Ipv4Addr::from(u.arbitrary::<u32>()?).into()
        };
        let port = u.arbitrary::<u16>()?;
        let protocol = *u.choose(&["TCP", "UDP", "udp"])?;
        let id = identity(address, port, protocol);
        let weight = if weighted {
            u.int_in_range(0..=200u32)?
        } else {
            1
        };
        // Identities are unique in a frontend's backend set (the plan keeps each endpoint once).
        if seen.insert(id.clone()) {
            out.push(Weighted {
                identity: id,
                weight,
            });
        }
    }
    Ok(out)
}

fn check(data: &[u8]) -> arbitrary::Result<()> {
    let mut u = Unstructured::new(data);
    // The small sizes keep a run fast; the largest ones are covered by the unit tests.
    let size = *u.choose(&TABLE_SIZES[..5])?;
    let seed = if u.arbitrary()? {
        svclb_common::maglev::DEFAULT_SEED.to_owned()
    } else {
        let bytes: [u8; 12] = u.arbitrary()?;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    let maglev = Maglev::new(size, &seed).expect("a valid size and a 12-byte seed");
    let backends = backends(&mut u)?;
    let table = match maglev.table(&backends) {
        Ok(table) => table,
        Err(err) => {
            assert!(
                backends.is_empty() || backends.iter().any(|b| b.weight == 0),
                "refused a valid backend set: {err}"
            );
            return Ok(());
        }
    };
    assert!(!backends.is_empty() && backends.iter().all(|b| b.weight > 0));
    assert_eq!(table.len(), size as usize);
    assert!(table.iter().all(|&i| (i as usize) < backends.len()));

    // Order independence: the same identity in every slot.
    let mut reversed = backends.clone();
    reversed.reverse();
    let rotate = u.int_in_range(0..=reversed.len() - 1)?;
    reversed.rotate_left(rotate);
    let again = maglev.table(&reversed).expect("the same set");
    for (a, b) in table.iter().zip(&again) {
        assert_eq!(
            backends[*a as usize].identity,
            reversed[*b as usize].identity
        );
    }

    let mut counts: BTreeMap<usize, u64> = (0..backends.len()).map(|i| (i, 0)).collect();
    for &i in &table {
        *counts.get_mut(&(i as usize)).expect("a backend index") += 1;
    }
    let n = backends.len() as u64;
    let m = u64::from(size);
    let weight_sum: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    if weight_sum / n > 1 {
        // Weighted: each backend's share is its weight's, give or take one round of turns.
        for (i, count) in &counts {
            let ideal = m * u64::from(backends[*i].weight) / weight_sum;
            assert!(
                count.abs_diff(ideal) <= n + 1,
                "backend {} of weight {} has {count} slots, ideal {ideal} (M {m}, {n} backends, total weight {weight_sum})",
                backends[*i].identity,
                backends[*i].weight,
            );
        }
    } else {
        // Equal turns: shares differ by at most one slot.
        let max = counts.values().max().expect("backends");
        let min = counts.values().min().expect("backends");
        assert!(max - min <= 1, "shares from {min} to {max} slots");
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = check(data);
});
