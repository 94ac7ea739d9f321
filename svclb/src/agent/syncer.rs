//! One sync: read the source, update the plan, bring the maps in line (incrementally when the
//! last sync wrote everything, in full otherwise), then tell the health checks, the traffic
//! counters, the purge worker, the log and the metrics what happened.

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use tracing::{debug, error, info, warn};

use svclb_common::dns::DnsZone;

use super::{DnsConfig, conntrack::Purger, health::HealthChecks, healthz::ProxyHealth};
use crate::{
    entries::{
        self, Capacity, MapState, Refusal,
        dns::{Table, Zone},
    },
    kernel::maps::Maps,
    plan::{Diagnostic, FrontendKey, Planner, Snapshot, dns::Records},
    reconcile::{
        self, Index, SyncReport,
        dns::{self, DnsEntries},
    },
    source::Source,
    telemetry::{
        metrics::{ERROR_MAP_WRITE, Metrics},
        report::{LastSync, unix_ms},
        traffic::TrafficCollector,
    },
};

/// The DNS responder's names, kept in line with the Services and EndpointSlices at every
/// sync (`--cluster-dns`).
pub(crate) struct DnsNames {
    zone: Zone,
    /// The responder's settings, written once a sync has written every name (until then a
    /// name not written yet would be answered NXDOMAIN); `None` once written.
    settings: Option<DnsZone>,
    programmed: DnsEntries,
    /// The records, and the entries per name: a sync encodes only the names whose records
    /// changed.
    records: Records,
    table: Table,
    /// The last sync wrote every change: the next one writes only its own. Otherwise (the
    /// first sync, a failed write) it encodes and compares every name.
    complete: bool,
    /// The host's queries are routed to the responder (`kernel::host_pair`).
    host_answered: bool,
}

impl DnsNames {
    /// Prepares the responder as `config` says (its entries left by an earlier run are
    /// adopted, and brought in line by the first sync, which then turns it on), or turns it
    /// off (its entries deleted).
    pub(crate) fn start(maps: &mut Maps, config: Option<&DnsConfig>) -> Result<Option<Self>> {
        let mut programmed = maps.read_dns()?;
        let Some(config) = config else {
            maps.set_dns_zone(None)?;
            let report = dns::sync(maps, &mut programmed, &DnsEntries::new());
            if let Some(err) = report.errors.first() {
                bail!("deleting the DNS names of an earlier run: {err}");
            }
            return Ok(None);
        };
        // The SOA serial: this start's time, as CoreDNS's is its last change's.
        let serial = (unix_ms() / 1000) as u32;
        let zone = Zone::new(&config.domain, serial)?;
        let host_netns = crate::kernel::socket::netns_cookie()?;
        maps.set_dns_host_netns(host_netns)?;
        let settings = zone.entry(&config.servers, host_netns)?;
        info!(
            servers = ?config.servers,
            domain = %config.domain,
            adopted = programmed.len(),
            "answering the cluster's DNS names in the datapath once the first sync wrote them"
        );
        Ok(Some(Self {
            zone,
            settings: Some(settings),
            programmed,
            records: Records::new(&config.domain),
            table: Table::default(),
            complete: false,
            host_answered: false,
        }))
    }

    /// The host's own queries reach the responder now (through `kernel::host_pair`): the
    /// socket hooks are to leave them addressed to the servers too. Called before the first
    /// sync, which writes the settings.
    pub(crate) fn answer_host(&mut self) {
        if let Some(settings) = self.settings.as_mut() {
            settings.host_netns = 0;
            self.host_answered = true;
        }
    }

    /// The host's queries no longer reach the responder (its veth pair was deleted): the
    /// socket hooks are to send them to the DNS service again. Whether they reached it.
    pub(crate) fn host_pair_gone(&mut self, maps: &mut Maps) -> Result<bool> {
        if !std::mem::take(&mut self.host_answered) {
            return Ok(false);
        }
        let cookie = crate::kernel::socket::netns_cookie()?;
        if let Some(settings) = self.settings.as_mut() {
            settings.host_netns = cookie;
        }
        maps.set_dns_host_netns(cookie)?;
        Ok(true)
    }

    /// Brings the names in line with `snapshot`, and turns the responder on after the first
    /// sync that wrote them all. The writes that failed, each named.
    fn sync(&mut self, snapshot: &Snapshot, maps: &mut Maps) -> Vec<String> {
        let changed = self.records.update(snapshot);
        let of = |name: &str| self.records.of(name);
        let delta = if self.complete {
            self.table
                .update(changed.iter().map(String::as_str), &of, &self.zone)
        } else {
            self.table = Table::default();
            self.table.update(self.records.names(), &of, &self.zone)
        };
        for name in &delta.refused {
            warn!("passed on to the DNS service: {name}");
        }
        let mut report = if self.complete {
            dns::apply(maps, &mut self.programmed, &delta.put, &delta.gone)
        } else {
            // From an empty table, `put` is every entry.
            dns::sync(maps, &mut self.programmed, &delta.put)
        };
        self.complete = report.errors.is_empty();
        if report.errors.is_empty()
            && let Some(settings) = self.settings.take()
            && let Err(err) = maps.set_dns_zone(Some(&settings))
        {
            self.settings = Some(settings);
            report.errors.push(format!("{err:#}"));
        }
        report.errors
    }
}

/// The programmed state and what is needed to move it.
pub(super) struct Syncer {
    /// The DNS responder's names (`None`: off).
    pub(super) dns: Option<DnsNames>,
    pub(super) source: Source,
    /// The plan, kept up to date change by change.
    pub(super) planner: Planner,
    pub(super) maps: Maps,
    pub(super) programmed: MapState,
    /// Lookups into `programmed` for O(change) syncs; rebuilt after every full sync.
    pub(super) index: Index,
    /// The last sync wrote everything it decided: the next one may write only what changed.
    /// Otherwise (the first sync, a failed write) it compares everything.
    pub(super) complete: bool,
    /// Under pressure (see [`Pressure`]): the frontends refused room, and what waits for
    /// the next full sync.
    pub(super) pressure: Pressure,
    pub(super) capacity: Capacity,
    /// Diagnostics already logged, so each problem is logged once, not at every sync.
    pub(super) reported: BTreeSet<Diagnostic>,
    /// Frontends planned but left out of the maps at the last sync.
    pub(super) not_programmed: usize,
    pub(super) metrics: Arc<Metrics>,
    /// Answers the health-check node ports of Local-policy services.
    pub(super) health: HealthChecks,
    /// Names the frontends whose counters `/metrics` exports.
    pub(super) traffic: Option<Arc<TrafficCollector>>,
    /// Removes flows and affinities of departed backends, in the background.
    pub(super) purger: Purger,
    /// kube-proxy's health (`/livez`, `/healthz`), told what each sync did.
    pub(super) proxy_health: Arc<ProxyHealth>,
    /// A Node object for this node has been seen (one gone since makes it ineligible).
    pub(super) node_seen: bool,
    /// The NodePort addresses and their origin last logged.
    pub(super) nodeports_logged: Option<(Vec<std::net::IpAddr>, Vec<String>)>,
}

/// How often a full sync may run while the maps are full. A change that does not fit them
/// needs one (it decides who gets the room); changes meanwhile wait for it, so a full map
/// never makes every change compare every entry.
pub const PRESSURE_FULL_SYNC_EVERY: Duration = Duration::from_secs(10);

/// The maps' pressure, as the last full sync left it.
#[derive(Default)]
pub(super) struct Pressure {
    /// The frontends it refused room (or some of the room they wanted), with why; pruned as
    /// incremental syncs write them.
    refusals: Vec<Refusal>,
    /// When it ran.
    last_full: Option<Instant>,
    /// Changes that did not fit, waiting for the next full sync.
    pending: BTreeSet<FrontendKey>,
    /// A full sync is wanted as soon as one may run: changes wait for it.
    full_wanted: bool,
}

impl Pressure {
    /// When the next full sync may run, if one is wanted.
    pub(super) fn full_due(&self) -> Option<Instant> {
        self.full_wanted.then(|| self.full_allowed_at())
    }

    fn full_allowed_at(&self) -> Instant {
        self.last_full
            .map_or_else(Instant::now, |at| at + PRESSURE_FULL_SYNC_EVERY)
    }
}

/// What bringing the maps in line did.
struct Applied {
    report: SyncReport,
    /// It compared everything rather than the change.
    full: bool,
}

/// How long each step took, for the log.
struct Timings {
    read_us: u64,
    plan_us: u64,
    took: Duration,
}

impl Syncer {
    /// Reads the sources and brings the maps in line. Returns whether something could not be
    /// written (a full map, a failed write), so the sync should be retried.
    pub(super) fn sync(&mut self) -> bool {
        let started = Instant::now();
        let snapshot = self.source.snapshot();
        let read_us = started.elapsed().as_micros() as u64;
        let changed = self.planner.update(&snapshot);
        self.health.update(&self.planner.plan().health_checks);
        let plan_us = started.elapsed().as_micros() as u64 - read_us;
        let applied = self.apply(&changed);
        // The names' own failures: retried by the next sync, and kept apart from the
        // frontends' (they neither force a full sync nor fail the health checks).
        let dns_errors = match &mut self.dns {
            Some(dns) => dns.sync(&snapshot, &mut self.maps),
            None => Vec::new(),
        };
        for err in &dns_errors {
            error!("DNS map write failed: {err}");
        }
        self.metrics
            .count_errors(ERROR_MAP_WRITE, dns_errors.len() as u64);
        self.update_traffic(&changed, applied.full);
        let plan = self.planner.plan();
        self.not_programmed = plan
            .frontends
            .len()
            .saturating_sub(self.programmed.services.len());
        // Refusals are the maps' steady state under pressure, reported, not retried: only a
        // failed write makes the next sync compare everything again.
        let incomplete = !applied.report.errors.is_empty();
        self.complete = !incomplete;
        let node = self.planner.node_object();
        self.node_seen |= node.is_some();
        self.proxy_health
            .set_node(crate::plan::eligibility(node, self.node_seen));
        if applied.report.errors.is_empty() {
            self.proxy_health.updated();
        }
        self.purger.purge(applied.report.departed.clone());
        let refusals = self.pressure.refusals.iter().map(|(_, diag)| diag.clone());
        self.report_diagnostics(snapshot.diagnostics, refusals.collect());
        self.report_nodeports();
        for err in &applied.report.errors {
            error!("map write failed: {err}");
        }
        let timings = Timings {
            read_us,
            plan_us,
            took: started.elapsed(),
        };
        self.record(&timings, &applied.report, applied.full);
        self.log(&timings, &applied, changed.len());
        incomplete || !dns_errors.is_empty()
    }

    /// The incremental sync when the last one wrote everything and the change fits, the full
    /// one otherwise; under pressure, at most one full sync every
    /// [`PRESSURE_FULL_SYNC_EVERY`], changes that do not fit waiting for it.
    fn apply(&mut self, changed: &BTreeSet<FrontendKey>) -> Applied {
        let now = Instant::now();
        self.pressure.pending.extend(changed.iter().copied());
        let full_allowed = now >= self.pressure.full_allowed_at();
        if self.complete && !(self.pressure.full_wanted && full_allowed) {
            if let Some(report) = self.apply_change() {
                return Applied {
                    report,
                    full: false,
                };
            }
            if !full_allowed {
                self.pressure.full_wanted = true;
                return Applied {
                    report: SyncReport::default(),
                    full: false,
                };
            }
        }
        let plan = self.planner.plan();
        let (desired, refusals) = entries::desired(plan, &self.programmed, self.capacity);
        let report = reconcile::full::sync(&mut self.programmed, &desired, &mut self.maps);
        self.index = Index::of(&self.programmed);
        self.pressure = Pressure {
            refusals,
            last_full: Some(now),
            ..Pressure::default()
        };
        Applied { report, full: true }
    }

    /// The incremental sync of the pending changes; `None` when they do not fit.
    fn apply_change(&mut self) -> Option<SyncReport> {
        let plan = self.planner.plan();
        let room = |state: &MapState| {
            (
                state.services.len(),
                state.slots.len(),
                state.backends.len(),
            )
        };
        let before = room(&self.programmed);
        let report = reconcile::incremental::sync(
            plan,
            &self.pressure.pending,
            &mut self.programmed,
            &mut self.index,
            self.capacity,
            &mut self.maps,
        )?;
        let written = std::mem::take(&mut self.pressure.pending);
        self.pressure
            .refusals
            .retain(|(key, _)| !written.contains(key) && plan.frontends.contains_key(key));
        let after = room(&self.programmed);
        let freed = after.0 < before.0 || after.1 < before.1 || after.2 < before.2;
        let mut report = report;
        if freed && !self.pressure.refusals.is_empty() {
            self.admit_waiting(&mut report);
        }
        Some(report)
    }

    /// Room was freed: the frontends refused room get it, Service by Service in the fair
    /// order the full sync refused them in, as far as it goes (each Service whole, by the
    /// incremental sync).
    fn admit_waiting(&mut self, report: &mut SyncReport) {
        let plan = self.planner.plan();
        let mut services: Vec<(&str, BTreeSet<FrontendKey>)> = Vec::new();
        for (key, diag) in &self.pressure.refusals {
            match services.last_mut() {
                Some((object, keys)) if *object == diag.object => {
                    keys.insert(*key);
                }
                _ => services.push((&diag.object, BTreeSet::from([*key]))),
            }
        }
        let mut admitted = BTreeSet::new();
        for (_, keys) in services {
            let Some(more) = reconcile::incremental::sync(
                plan,
                &keys,
                &mut self.programmed,
                &mut self.index,
                self.capacity,
                &mut self.maps,
            ) else {
                continue;
            };
            report.writes += more.writes;
            report.errors.extend(more.errors);
            report.departed.extend(more.departed);
            admitted.extend(keys);
        }
        self.pressure
            .refusals
            .retain(|(key, _)| !admitted.contains(key));
    }

    fn update_traffic(&self, changed: &BTreeSet<FrontendKey>, full: bool) {
        let Some(traffic) = &self.traffic else {
            return;
        };
        let plan = self.planner.plan();
        if full {
            traffic.rebuild(plan, &self.programmed);
        } else {
            traffic.update(plan, &self.programmed, changed);
        }
    }

    /// Logs each new problem once; remembers them all for the next sync and the metrics.
    fn report_diagnostics(&mut self, source: Vec<Diagnostic>, maps: Vec<Diagnostic>) {
        let diags: BTreeSet<Diagnostic> = source
            .into_iter()
            .chain(self.planner.diagnostics().cloned())
            .chain(maps)
            .collect();
        for diag in diags.difference(&self.reported) {
            warn!("{diag}");
        }
        self.metrics.set_refusals(&diags);
        self.reported = diags;
    }

    /// Says where the NodePort addresses come from (log and `/status`), at the first sync
    /// and when that changes; a family without any is a warning.
    fn report_nodeports(&mut self) {
        let node = self.planner.node();
        if self
            .nodeports_logged
            .as_ref()
            .is_some_and(|(addresses, origin)| {
                *addresses == node.nodeport_addresses && *origin == node.nodeport_origin
            })
        {
            return;
        }
        info!("NodePort addresses: {}", node.nodeport_summary());
        for family in node.nodeport_gaps() {
            warn!(
                "no {family} address for NodePorts: neither the Node object nor the uplinks \
                 (--devices) have one inside --nodeport-addresses; {family} NodePorts are not \
                 served"
            );
        }
        {
            let mut status = self.metrics.status();
            status.nodeport_addresses = node
                .nodeport_addresses
                .iter()
                .map(ToString::to_string)
                .collect();
            status.nodeport_origin.clone_from(&node.nodeport_origin);
        }
        self.nodeports_logged = Some((
            node.nodeport_addresses.clone(),
            node.nodeport_origin.clone(),
        ));
    }

    fn record(&self, timings: &Timings, report: &SyncReport, full: bool) {
        let m = &self.metrics;
        {
            let mut status = m.status();
            status.syncs += 1;
            status.last_sync = Some(LastSync {
                at_unix_ms: unix_ms(),
                duration_ms: timings.took.as_secs_f64() * 1e3,
                full,
                writes: report.writes,
                errors: report.errors.len(),
            });
            status.frontends_not_programmed = self.not_programmed;
            status.objects_skipped = self.reported.len();
        }
        m.sync_duration.observe(timings.took.as_secs_f64());
        m.syncs.inc();
        m.entries_written.inc_by(report.writes as u64);
        m.write_errors.inc_by(report.errors.len() as u64);
        m.count_errors(ERROR_MAP_WRITE, report.errors.len() as u64);
        m.frontends.set(self.programmed.services.len() as i64);
        m.backends.set(self.programmed.backends.len() as i64);
        m.frontends_not_programmed.set(self.not_programmed as i64);
        m.objects_skipped.set(self.reported.len() as i64);
        for (map, entries) in self.programmed.fills() {
            m.set_map(map, entries, self.capacity.of(map));
        }
    }

    fn log(&self, timings: &Timings, applied: &Applied, changed: usize) {
        let report = &applied.report;
        let took_us = timings.took.as_micros() as u64;
        let (frontends, backends) = (
            self.programmed.services.len(),
            self.programmed.backends.len(),
        );
        if report.writes == 0 && report.errors.is_empty() {
            debug!(frontends, backends, took_us, "synced, nothing changed");
            return;
        }
        info!(
            frontends,
            backends,
            changed,
            full = applied.full,
            writes = report.writes,
            errors = report.errors.len(),
            read_us = timings.read_us,
            plan_us = timings.plan_us,
            took_us,
            "synced"
        );
    }
}
