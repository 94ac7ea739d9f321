//! Kubernetes objects -> [`Plan`], with no I/O and no kernel: the frontends this node serves,
//! each with its backend set, computed the same way from every source.
//!
//! - [`types`]: the plan itself (frontends, backends, health checks).
//! - [`Snapshot`]: the input, filled by each source; [`Diagnostic`]: a problem with one object.
//! - [`builder`]: the plan from scratch ([`plan_for_node`]); [`ports`] and [`fields`] read a
//!   Service's ports and fields, [`endpoints`] picks endpoints, [`node`] describes this node.
//! - [`incremental`]: the [`Planner`], which keeps the plan up to date change by change and
//!   names the frontends that changed.
//! - [`dns`]: the cluster's DNS records, from the same Services and EndpointSlices.
//! - `claims`: which Service serves a frontend that several claim (both planners use it);
//!   `reserved`: the addresses an externalIP may not take.

pub mod builder;
mod claims;
mod diag;
pub mod dns;
mod dns_rules;
pub mod endpoints;
pub mod fields;
pub mod incremental;
pub mod node;
pub mod ports;
mod reserved;
mod snapshot;
pub mod types;

pub use builder::{plan, plan_for_node};
pub use diag::{Diagnostic, Kind};
pub use endpoints::Topology;
pub use fields::{AFFINITY_TIMEOUT_DEFAULT, AFFINITY_TIMEOUT_MAX, Family, SERVICE_NAME_LABEL};
pub use incremental::Planner;
pub use node::{AddressRule, NodeInfo, TO_BE_DELETED_TAINT, ZONE_LABEL, eligibility};
pub use snapshot::Snapshot;
pub use types::{
    Frontend, FrontendKey, FrontendKind, HealthCheck, Plan, PlanBackend, Protocol, Scope, WhenEmpty,
};

#[cfg(test)]
#[path = "tests/builder_tests.rs"]
mod builder_tests;

#[cfg(test)]
#[path = "tests/semantics_tests.rs"]
mod semantics_tests;

#[cfg(test)]
#[path = "tests/topology_tests.rs"]
mod topology_tests;
