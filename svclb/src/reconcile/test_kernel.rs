//! Test support: an in-memory kernel that checks, at every single write, that the datapath
//! could never see a frontend pointing at a slot or backend that is not there; plans built
//! from small tables; and an oracle for departed backends.

use std::{
    collections::{BTreeSet, HashSet},
    net::{IpAddr, Ipv4Addr},
};

use ipnet::IpNet;
use proptest::prelude::*;
use svclb_common::{
    Backend, ServiceKey, ServiceValue, SlotKey,
    dns::{DnsAnswer, DnsKey},
    service::SVC_F_MAGLEV,
};

use super::{MapWriter, full};
use crate::{
    entries::{Capacity, MaglevSpec, MapState, desired},
    plan::{Frontend, FrontendKey, FrontendKind, Plan, PlanBackend, Protocol, Scope},
};

#[derive(Default)]
pub(crate) struct FakeKernel {
    pub(crate) maps: MapState,
    pub(crate) writes: usize,
    /// Backend ids whose put fails (a full map).
    pub(crate) fail_backends: BTreeSet<u32>,
    /// Slots whose put fails.
    pub(crate) fail_slots: BTreeSet<SlotKey>,
    /// The DNS responder's entries.
    pub(crate) dns: super::dns::DnsEntries,
    /// DNS query types whose put fails.
    pub(crate) fail_dns_types: BTreeSet<u16>,
}

impl FakeKernel {
    /// What the datapath can reach must always be complete.
    fn check_reachable(&self) {
        for (id, table) in &self.maps.tables {
            for backend in &table.backends {
                assert!(
                    self.maps.backends.contains_key(backend),
                    "Maglev table {id} -> missing backend {backend}"
                );
            }
        }
        for (key, value) in &self.maps.services {
            if value.flags & SVC_F_MAGLEV != 0 {
                let table = self.maps.tables.get(&value.id);
                assert!(
                    table.is_some_and(|t| t.size == value.maglev_size),
                    "{key:?} uses Maglev table {} of size {}: {table:?}",
                    value.id,
                    value.maglev_size
                );
            }
            for slot in 0..value.count {
                let backend = self.maps.slots.get(&SlotKey {
                    svc_id: value.id,
                    slot,
                });
                let backend = backend.unwrap_or_else(|| panic!("{key:?} slot {slot} missing"));
                assert!(
                    self.maps.backends.contains_key(backend),
                    "{key:?} slot {slot} -> missing backend {backend}"
                );
            }
        }
    }
}

impl MapWriter for FakeKernel {
    type Error = String;

    fn put_backend(&mut self, id: u32, backend: &Backend) -> Result<(), String> {
        if self.fail_backends.contains(&id) {
            return Err("map full".into());
        }
        self.writes += 1;
        self.maps.backends.insert(id, *backend);
        self.check_reachable();
        Ok(())
    }

    fn del_backend(&mut self, id: u32) -> Result<(), String> {
        self.writes += 1;
        self.maps.backends.remove(&id).ok_or("no such backend")?;
        self.check_reachable();
        Ok(())
    }

    fn put_slot(&mut self, key: SlotKey, backend_id: u32) -> Result<(), String> {
        if self.fail_slots.contains(&key) {
            return Err("map full".into());
        }
        self.writes += 1;
        self.maps.slots.insert(key, backend_id);
        self.check_reachable();
        Ok(())
    }

    fn del_slot(&mut self, key: SlotKey) -> Result<(), String> {
        self.writes += 1;
        self.maps.slots.remove(&key).ok_or("no such slot")?;
        self.check_reachable();
        Ok(())
    }

    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), String> {
        self.writes += 1;
        self.maps.services.insert(*key, *value);
        self.check_reachable();
        Ok(())
    }

    fn del_service(&mut self, key: &ServiceKey) -> Result<(), String> {
        self.writes += 1;
        self.maps.services.remove(key).ok_or("no such service")?;
        self.check_reachable();
        Ok(())
    }

    fn put_table(
        &mut self,
        id: u32,
        spec: &MaglevSpec,
        backends: &[(u32, Backend)],
    ) -> Result<(), String> {
        assert_eq!(
            backends.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            spec.backends,
            "the writer gets the table's backends in slot order"
        );
        self.writes += 1;
        self.maps.tables.insert(id, spec.clone());
        self.check_reachable();
        Ok(())
    }

    fn del_table(&mut self, id: u32) -> Result<(), String> {
        self.writes += 1;
        self.maps.tables.remove(&id).ok_or("no such table")?;
        self.check_reachable();
        Ok(())
    }

    fn put_source_range(&mut self, id: u32, net: IpNet) -> Result<(), String> {
        self.writes += 1;
        self.maps.source_ranges.insert((id, net));
        Ok(())
    }

    fn del_source_range(&mut self, id: u32, net: IpNet) -> Result<(), String> {
        self.writes += 1;
        if !self.maps.source_ranges.remove(&(id, net)) {
            return Err("no such source range".into());
        }
        Ok(())
    }

    fn put_dns(&mut self, key: &DnsKey, value: &DnsAnswer) -> Result<(), String> {
        if self.fail_dns_types.contains(&key.qtype) {
            return Err("map full".into());
        }
        self.writes += 1;
        self.dns.insert(*key, *value);
        Ok(())
    }

    fn del_dns(&mut self, key: &DnsKey) -> Result<(), String> {
        self.writes += 1;
        self.dns.remove(key).ok_or("no such name")?;
        Ok(())
    }
}

pub(crate) const CAPACITY: Capacity = Capacity {
    services: 1000,
    slots: 1000,
    backends: 1000,
    maglev_tables: 1000,
    maglev_size: 251,
    source_ranges: 1000,
    ..Capacity::DEFAULT
};

/// A plan from (vip last octet, backend last octets) pairs; all TCP port 80 -> 8080.
pub(crate) fn plan(frontends: &[(u8, &[u8])]) -> Plan {
    let mut plan = Plan::default();
    for (vip, backends) in frontends {
        plan.frontends.insert(
            FrontendKey::new(
                IpAddr::V4(Ipv4Addr::new(10, 96, 0, *vip)),
                80,
                Protocol::Tcp,
            ),
            Frontend::new(
                format!("default/svc{vip}"),
                FrontendKind::ClusterIP,
                Scope::Internal,
                backends
                    .iter()
                    .map(|b| PlanBackend::remote(IpAddr::V4(Ipv4Addr::new(10, 244, 0, *b)), 8080))
                    .collect(),
            ),
        );
    }
    plan
}

/// Plans and syncs; returns the writes of this sync.
pub(crate) fn apply(kernel: &mut FakeKernel, programmed: &mut MapState, p: &Plan) -> usize {
    let before = kernel.writes;
    let (want, diags) = desired(p, programmed, CAPACITY);
    assert!(diags.is_empty(), "{diags:?}");
    let report = full::sync(programmed, &want, kernel);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.writes, kernel.writes - before);
    assert_eq!(
        &kernel.maps, programmed,
        "programmed state mirrors the kernel"
    );
    assert_eq!(programmed, &want);
    kernel.writes - before
}

pub(crate) fn arb_plan() -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
    prop::collection::btree_map(1u8..20, prop::collection::btree_set(1u8..30, 0..6), 0..12)
        .prop_map(|m| {
            m.into_iter()
                .map(|(k, v)| (k, v.into_iter().collect()))
                .collect()
        })
}

/// The (frontend id, backend id) pairs `before` programs and `desired` does not, computed
/// from the two states alone: the oracle the syncs' [`super::SyncReport::departed`] is checked
/// against. A frontend whose id changes or that goes away departs from all its backends.
pub(crate) fn departed(before: &MapState, desired: &MapState) -> BTreeSet<(u32, u32)> {
    let mut out = BTreeSet::new();
    for (key, value) in &before.services {
        let want = desired.services.get(key).filter(|want| want.id == value.id);
        // Most frontends are unchanged: compared slot by slot, without collecting them.
        let unchanged = want.is_some_and(|want| {
            want.count == value.count
                && (0..value.count).all(|slot| {
                    let key = SlotKey {
                        svc_id: value.id,
                        slot,
                    };
                    before.slots.get(&key) == desired.slots.get(&key)
                })
        });
        if unchanged {
            continue;
        }
        let old = before.slots_of(value);
        let kept: HashSet<u32> = want
            .map(|want| desired.slots_of(want))
            .unwrap_or_default()
            .into_iter()
            .collect();
        out.extend(
            old.into_iter()
                .filter(|id| !kept.contains(id))
                .map(|id| (value.id, id)),
        );
    }
    out
}
