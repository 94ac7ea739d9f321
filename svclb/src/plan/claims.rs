//! Who serves a frontend that several Services claim.
//!
//! A Service's own cluster IP is its by allocation (the API server hands each out once), so
//! a ClusterIP claim wins over every other: an externalIP or load-balancer address that
//! another Service wrote cannot take it. Then the oldest Service (`creationTimestamp`), then
//! the first by `namespace/name`. Ordering by name alone let `externalIPs: [<kube-dns
//! ClusterIP>]` in a namespace that sorts first take cluster DNS from every pod
//! (CVE-2020-8554, made deterministic).

use k8s_openapi::api::core::v1::Service;

use super::{Diagnostic, Frontend, FrontendKey, FrontendKind, Kind};

/// One Service's claim on a frontend; the least claim serves it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Claim {
    /// `false` for the Service's own cluster IP, which sorts first.
    not_cluster_ip: bool,
    /// The Service's `creationTimestamp` in seconds since the epoch; `i64::MAX` without one
    /// (manifests), which sorts last.
    created: i64,
    /// `namespace/name`.
    pub(super) service: String,
}

/// When Service `svc` was created, as [`Claim`] orders it.
pub(super) fn created(svc: &Service) -> i64 {
    svc.metadata
        .creation_timestamp
        .as_ref()
        .map_or(i64::MAX, |t| t.0.as_second())
}

impl Claim {
    /// The claim `frontend` makes for its Service, created at `created` (see [`created`]).
    pub(super) fn new(frontend: &Frontend, created: i64) -> Self {
        Self {
            not_cluster_ip: frontend.kind != FrontendKind::ClusterIP,
            created,
            service: frontend.service.clone(),
        }
    }

    /// Why this claim beats `loser`.
    fn reason_over(&self, loser: &Self) -> &'static str {
        if self.not_cluster_ip != loser.not_cluster_ip {
            "its cluster IP"
        } else if self.created != loser.created {
            "created earlier"
        } else {
            "first by name"
        }
    }
}

/// `loser` claims frontend `key`, which `winner` serves.
pub(super) fn conflict(loser: &Claim, key: &FrontendKey, winner: &Claim) -> Diagnostic {
    Diagnostic::new(
        format!("Service {}", loser.service),
        format!(
            "frontend {key} is served by Service {} ({}); not by this one",
            winner.service,
            winner.reason_over(loser)
        ),
    )
    .of(Kind::Conflict)
}
