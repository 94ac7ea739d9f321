//! The plan kept up to date change by change: [`Planner::update`] plans again only the
//! Services whose own object, EndpointSlices or node changed, and says which frontends of the
//! plan changed, so the maps can be brought in line in O(change), not O(cluster).
//!
//! Objects are told apart by allocation: sources hand out shared (`Arc`) objects and keep an
//! unchanged object's allocation from one snapshot to the next (kube-runtime's stores and the
//! manifests cache both do). The planner holds every object it has seen, so an address is
//! never reused while it is remembered. The result equals [`super::plan_for_node`] of the
//! same snapshot; a property test checks this over random sequences of changes.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};

use super::{
    AddressRule, Diagnostic, Frontend, FrontendKey, HealthCheck, NodeInfo, Plan, Snapshot,
    builder::{duplicate, plan_service},
    claims::{Claim, conflict, created},
    fields::{object_name, service_of},
    node::other_node_addresses,
};

/// What planning one Service gave.
#[derive(Default)]
struct Planned {
    /// Its frontends, each key once (the first wins, as in [`super::plan`]).
    frontends: Vec<(FrontendKey, Frontend)>,
    /// Its Service's creation time, as claims order it.
    created: i64,
    health_check: Option<HealthCheck>,
    diags: Vec<Diagnostic>,
}

impl Planned {
    fn frontend(&self, key: &FrontendKey) -> Option<&Frontend> {
        self.frontends
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, frontend)| frontend)
    }
}

fn address<T>(object: &Arc<T>) -> usize {
    Arc::as_ptr(object) as usize
}

pub struct Planner {
    node_name: String,
    /// Where NodePorts listen (`--nodeport-addresses`, the uplinks' addresses).
    nodeports: AddressRule,
    /// The uplink addresses changed since the node was last worked out.
    node_stale: bool,
    /// Every Node object the node was built from: this node's, and the others', whose
    /// addresses are reserved. Held, so that an allocation is never taken for another's.
    node_objects: Vec<Arc<Node>>,
    /// This node's Node object, and what it gave.
    node_object: Option<Arc<Node>>,
    node: NodeInfo,
    node_diags: Vec<Diagnostic>,
    /// Every Service seen in the last snapshot, by allocation, with its `namespace/name`.
    services: HashMap<usize, (String, Arc<Service>)>,
    /// The Services of each name, in the order they appeared (a name held twice is served
    /// once, by the first).
    by_name: HashMap<String, Vec<Arc<Service>>>,
    /// Every EndpointSlice seen, by allocation, with the Service it joins.
    slices: HashMap<usize, (Option<String>, Arc<EndpointSlice>)>,
    slices_of: HashMap<String, HashMap<usize, Arc<EndpointSlice>>>,
    planned: HashMap<String, Planned>,
    /// Which Services claim each frontend; the least claim serves it (see `claims`).
    claims: HashMap<FrontendKey, BTreeSet<Claim>>,
    /// Diagnostics of frontends claimed by more than one Service.
    conflicts: HashMap<FrontendKey, Vec<Diagnostic>>,
    health_checks: BTreeMap<String, HealthCheck>,
    plan: Plan,
}

impl Planner {
    pub fn new(node_name: &str, nodeports: AddressRule) -> Self {
        let (node, node_diags) = NodeInfo::from_node(node_name, None, &[], &nodeports);
        Self {
            node_name: node_name.to_owned(),
            nodeports,
            node_stale: false,
            node_objects: Vec::new(),
            node_object: None,
            node,
            node_diags,
            services: HashMap::new(),
            by_name: HashMap::new(),
            slices: HashMap::new(),
            slices_of: HashMap::new(),
            planned: HashMap::new(),
            claims: HashMap::new(),
            conflicts: HashMap::new(),
            health_checks: BTreeMap::new(),
            plan: Plan::default(),
        }
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn node(&self) -> &NodeInfo {
        &self.node
    }

    /// This node's Node object, as of the last update (`None`: the source has none).
    pub fn node_object(&self) -> Option<&Node> {
        self.node_object.as_deref()
    }

    /// Every diagnostic of the current plan (the node's, each Service's, the conflicts).
    pub fn diagnostics(&self) -> impl Iterator<Item = &Diagnostic> {
        self.node_diags
            .iter()
            .chain(self.planned.values().flat_map(|p| &p.diags))
            .chain(self.conflicts.values().flatten())
    }

    /// Brings the plan in line with `snapshot`; returns the frontends whose entry changed,
    /// appeared or went away.
    pub fn update(&mut self, snapshot: &Snapshot) -> BTreeSet<FrontendKey> {
        let mut dirty: HashSet<String> = HashSet::new();
        self.update_node(&snapshot.nodes, &mut dirty);
        self.update_services(&snapshot.services, &mut dirty);
        self.update_slices(&snapshot.slices, &mut dirty);

        let mut affected: BTreeSet<FrontendKey> = BTreeSet::new();
        let mut health_changed = false;
        for name in dirty {
            let planned = self.plan_one(&name);
            let old = match planned {
                Some(planned) => self.planned.insert(name.clone(), planned),
                None => self.planned.remove(&name),
            };
            let new = self.planned.get(&name);
            health_changed |= old.as_ref().and_then(|p| p.health_check.as_ref())
                != new.and_then(|p| p.health_check.as_ref());
            for (key, _) in old.iter().flat_map(|p| &p.frontends) {
                if let Some(claimants) = self.claims.get_mut(key) {
                    claimants.retain(|c| c.service != name);
                    if claimants.is_empty() {
                        self.claims.remove(key);
                    }
                }
                affected.insert(*key);
            }
            if let Some(planned) = new {
                for (key, frontend) in &planned.frontends {
                    let claim = Claim::new(frontend, planned.created);
                    self.claims.entry(*key).or_default().insert(claim);
                    affected.insert(*key);
                }
            }
            match new.and_then(|p| p.health_check.clone()) {
                Some(check) => self.health_checks.insert(name, check),
                None => self.health_checks.remove(&name),
            };
        }
        if health_changed {
            self.plan.health_checks = self.health_checks.values().cloned().collect();
            self.plan.health_checks.sort();
        }

        let mut changed = BTreeSet::new();
        for key in affected {
            let claimants = self.claims.get(&key);
            let winner = claimants.and_then(|c| c.first());
            let serving = winner.and_then(|w| self.planned.get(&w.service)?.frontend(&key));
            match claimants.filter(|c| c.len() > 1) {
                Some(claimants) => {
                    let winner = winner.expect("claimed");
                    let diags = claimants
                        .iter()
                        .skip(1)
                        .map(|loser| conflict(loser, &key, winner))
                        .collect();
                    self.conflicts.insert(key, diags);
                }
                None => {
                    self.conflicts.remove(&key);
                }
            }
            let before = self.plan.frontends.get(&key);
            if before == serving {
                continue;
            }
            match serving {
                Some(frontend) => self.plan.frontends.insert(key, frontend.clone()),
                None => self.plan.frontends.remove(&key),
            };
            changed.insert(key);
        }
        changed
    }

    /// Plans Service `name` from its current object and slices (`None` when it is gone).
    fn plan_one(&self, name: &str) -> Option<Planned> {
        let copies = self.by_name.get(name)?;
        let svc = copies.first()?;
        let slices: Vec<&EndpointSlice> = self
            .slices_of
            .get(name)
            .into_iter()
            .flat_map(HashMap::values)
            .map(AsRef::as_ref)
            .collect();
        let mut diags = Vec::new();
        if copies.len() > 1 {
            diags.push(duplicate(name));
        }
        let planned = plan_service(&self.node, name, svc, &slices, &mut diags);
        let mut frontends: Vec<(FrontendKey, Frontend)> =
            Vec::with_capacity(planned.frontends.len());
        for (key, frontend) in planned.frontends {
            if !frontends.iter().any(|(k, _)| *k == key) {
                frontends.push((key, frontend));
            }
        }
        diags.sort();
        diags.dedup();
        Some(Planned {
            frontends,
            created: created(svc),
            health_check: planned.health_check,
            diags,
        })
    }

    /// The uplinks' addresses (NodePorts fall back on them), taken in at the next update;
    /// whether they changed.
    pub fn set_uplink_addresses(&mut self, mut addresses: Vec<IpAddr>) -> bool {
        addresses.sort();
        addresses.dedup();
        if addresses == self.nodeports.uplinks {
            return false;
        }
        self.nodeports.uplinks = addresses;
        self.node_stale = true;
        true
    }

    /// A new Node object (or none any more), or new uplink addresses, plan every Service
    /// again, if they change the node.
    fn update_node(&mut self, nodes: &[Arc<Node>], dirty: &mut HashSet<String>) {
        let unchanged = nodes.len() == self.node_objects.len()
            && nodes
                .iter()
                .zip(&self.node_objects)
                .all(|(a, b)| Arc::ptr_eq(a, b));
        if unchanged && !self.node_stale {
            return;
        }
        self.node_objects = nodes.to_vec();
        self.node_stale = false;
        let object = nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(self.node_name.as_str()));
        self.node_object = object.cloned();
        let others = other_node_addresses(&self.node_name, nodes);
        let (node, diags) = NodeInfo::from_node(
            &self.node_name,
            object.map(AsRef::as_ref),
            &others,
            &self.nodeports,
        );
        self.node_diags = diags;
        if node != self.node {
            self.node = node;
            dirty.extend(self.by_name.keys().cloned());
        }
    }

    fn update_services(&mut self, services: &[Arc<Service>], dirty: &mut HashSet<String>) {
        let mut old = std::mem::take(&mut self.services);
        let mut added = Vec::new();
        for svc in services {
            let at = address(svc);
            match old.remove(&at) {
                Some(entry) => {
                    self.services.insert(at, entry);
                }
                // Listed twice in one snapshot: the first listing counts.
                None if self.services.contains_key(&at) => {}
                None => {
                    let name = object_name(&svc.metadata);
                    self.services.insert(at, (name.clone(), svc.clone()));
                    added.push((name, svc.clone()));
                }
            }
        }
        // What is left of the old map went away (or was replaced by a new allocation).
        for (at, (name, _)) in old {
            if let Some(copies) = self.by_name.get_mut(&name) {
                copies.retain(|svc| address(svc) != at);
                if copies.is_empty() {
                    self.by_name.remove(&name);
                }
            }
            dirty.insert(name);
        }
        for (name, svc) in added {
            self.by_name.entry(name.clone()).or_default().push(svc);
            dirty.insert(name);
        }
    }

    fn update_slices(&mut self, slices: &[Arc<EndpointSlice>], dirty: &mut HashSet<String>) {
        let mut old = std::mem::take(&mut self.slices);
        for slice in slices {
            let at = address(slice);
            if let Some(entry) = old.remove(&at) {
                self.slices.insert(at, entry);
            } else if !self.slices.contains_key(&at) {
                let service = service_of(slice);
                if let Some(service) = &service {
                    self.slices_of
                        .entry(service.clone())
                        .or_default()
                        .insert(at, slice.clone());
                    dirty.insert(service.clone());
                }
                self.slices.insert(at, (service, slice.clone()));
            }
        }
        for (at, (service, _)) in old {
            let Some(service) = service else { continue };
            if let Some(of) = self.slices_of.get_mut(&service) {
                of.remove(&at);
                if of.is_empty() {
                    self.slices_of.remove(&service);
                }
            }
            dirty.insert(service);
        }
    }
}

#[cfg(test)]
#[path = "tests/incremental_tests.rs"]
mod tests;
