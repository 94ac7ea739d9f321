//! Map entries -> maps: writes only what differs between the programmed state and the desired
//! one, through the [`MapWriter`] trait (the kernel's maps, or an in-memory kernel in tests),
//! in an order that never exposes a half-written frontend ([`write`]). Two syncs share that
//! order: [`full`] compares everything, [`incremental`] only the frontends that changed,
//! helped by the [`Index`]. Every write that fails is reported and the programmed state keeps
//! describing exactly what the kernel holds. [`dns`] does the same for the DNS responder's
//! names, which no frontend refers to.

pub mod dns;
pub mod full;
pub mod incremental;
mod index;
#[cfg(test)]
pub(crate) mod test_kernel;
mod write;

use std::collections::BTreeSet;

pub use index::Index;
use ipnet::IpNet;
use svclb_common::{
    Backend, ServiceKey, ServiceValue, SlotKey,
    dns::{DnsAnswer, DnsKey},
};

use crate::entries::{MaglevSpec, frontend_key};

/// The writes the reconciler needs from the maps.
/// One frontend's Maglev table for [`MapWriter::put_tables`].
pub struct TableWrite<'a> {
    pub id: u32,
    pub spec: &'a MaglevSpec,
    /// Backend ids and entries, in slot order.
    pub backends: &'a [(u32, Backend)],
}

pub trait MapWriter {
    type Error: std::fmt::Display;
    fn put_backend(&mut self, id: u32, backend: &Backend) -> Result<(), Self::Error>;
    fn del_backend(&mut self, id: u32) -> Result<(), Self::Error>;
    fn put_slot(&mut self, key: SlotKey, backend_id: u32) -> Result<(), Self::Error>;
    fn del_slot(&mut self, key: SlotKey) -> Result<(), Self::Error>;
    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), Self::Error>;
    fn del_service(&mut self, key: &ServiceKey) -> Result<(), Self::Error>;
    /// Builds frontend `id`'s Maglev table over `backends` (id and entry, in slot order) and
    /// puts it in place of the old one in one step.
    fn put_table(
        &mut self,
        id: u32,
        spec: &MaglevSpec,
        backends: &[(u32, Backend)],
    ) -> Result<(), Self::Error>;
    /// Puts several frontends' tables, each as [`Self::put_table`] does: one result per
    /// table, in order. A writer may swap them in together, faster than one by one.
    fn put_tables(&mut self, tables: &[TableWrite<'_>]) -> Vec<Result<(), Self::Error>> {
        tables
            .iter()
            .map(|t| self.put_table(t.id, t.spec, t.backends))
            .collect()
    }
    fn del_table(&mut self, id: u32) -> Result<(), Self::Error>;
    fn put_source_range(&mut self, id: u32, net: IpNet) -> Result<(), Self::Error>;
    fn del_source_range(&mut self, id: u32, net: IpNet) -> Result<(), Self::Error>;
    /// A DNS name's reply to a query type (see `svclb_common::dns`).
    fn put_dns(&mut self, key: &DnsKey, value: &DnsAnswer) -> Result<(), Self::Error>;
    fn del_dns(&mut self, key: &DnsKey) -> Result<(), Self::Error>;
}

/// What one sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Map entries written or deleted.
    pub writes: usize,
    /// Writes that failed, each naming the entry and the cause.
    pub errors: Vec<String>,
    /// (frontend id, backend id) pairs programmed before and not now: flows and session
    /// affinities of such a frontend must let go of such a backend, even when the backend
    /// itself stays (another frontend still uses it). A frontend that goes away departs from
    /// all its backends.
    pub departed: BTreeSet<(u32, u32)>,
}

impl SyncReport {
    /// Counts a write that succeeded, or records why it failed, naming the entry with
    /// `what`; whether it succeeded.
    fn wrote<E: std::fmt::Display>(
        &mut self,
        result: Result<(), E>,
        what: impl FnOnce() -> String,
    ) -> bool {
        match result {
            Ok(()) => {
                self.writes += 1;
                true
            }
            Err(err) => {
                self.errors.push(format!("{}: {err}", what()));
                false
            }
        }
    }
}

fn frontend_name(key: &ServiceKey) -> String {
    match frontend_key(key) {
        Some(frontend) => frontend.to_string(),
        None => format!("{key:?}"),
    }
}
