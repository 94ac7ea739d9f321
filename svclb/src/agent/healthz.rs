//! kube-proxy's health server (`--healthz-bind-address`, 10256 by default), which cloud load
//! balancers probe for `externalTrafficPolicy: Cluster` services:
//!
//! - `/livez`: 200 while the agent applies changes (and while it starts); 503 once a change
//!   has waited longer than the timeout (`--healthz-timeout`, twice kube-proxy's sync period
//!   by default) with its writes failing. What does not fit the maps is not counted: it is
//!   reported (log, metrics, `svclb status`), and a restart would not make room.
//! - `/healthz`: 503 as `/livez` is, and also while this node is not eligible for traffic (its
//!   Node object gone, being deleted, or tainted `ToBeDeletedByClusterAutoscaler`), so a load
//!   balancer drains a node before it goes; and until the first sync is done (kube-proxy says
//!   200 while starting, but a node that has programmed nothing should get no traffic, and a
//!   rolling update should wait for it).
//!
//! Both answer JSON as kube-proxy does: `lastUpdated`, `currentTime` and, from `/healthz`,
//! `nodeEligible`. Every `healthCheckNodePort` fails while `/livez` does, as kube-proxy's
//! service health checks follow its proxier's health (see `health`).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::telemetry::http::{PROBE_LIMITS, Reply, bind, serve_with};

/// kube-proxy's default: twice its 30 s sync period.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct State {
    /// When the maps last took everything planned.
    last_updated: Option<SystemTime>,
    /// The oldest change not written yet.
    oldest_pending: Option<Instant>,
    /// Why this node should get no traffic, if it should not.
    ineligible: Option<String>,
}

/// The agent's health as kube-proxy reports it, shared by the sync loop (which tells it what
/// happens) and the servers (which answer from it).
#[derive(Debug)]
pub struct ProxyHealth {
    state: Mutex<State>,
    timeout: Duration,
}

/// One answer: healthy or not, and the JSON body.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub healthy: bool,
    pub body: String,
}

fn rfc3339(at: SystemTime) -> String {
    jiff::Timestamp::try_from(at).map_or_else(|_| String::new(), |t| t.to_string())
}

impl ProxyHealth {
    /// Health as of the agent's start: nothing written yet, nothing waiting (live while
    /// starting, as kube-proxy is), eligible until a Node object says otherwise.
    pub fn new(timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                last_updated: None,
                oldest_pending: None,
                ineligible: None,
            }),
            timeout,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A change arrived at `now` (the oldest one not written is what counts).
    pub fn queued(&self, now: Instant) {
        self.state().oldest_pending.get_or_insert(now);
    }

    /// A sync made every write it tried (what did not fit the maps is reported elsewhere: a
    /// restart would not make room, so it does not fail `/livez`).
    pub fn updated(&self) {
        let mut state = self.state();
        state.last_updated = Some(SystemTime::now());
        state.oldest_pending = None;
    }

    /// This node's eligibility for load-balancer traffic (`Err`: why not).
    pub fn set_node(&self, eligibility: Result<(), String>) {
        let mut state = self.state();
        let ineligible = eligibility.err();
        if state.ineligible != ineligible {
            match &ineligible {
                Some(why) => warn!("/healthz answers 503: {why}"),
                None => info!("this node is eligible for load-balancer traffic again"),
            }
        }
        state.ineligible = ineligible;
    }

    /// No change has waited longer than the timeout at `now`.
    fn live(&self, state: &State, now: Instant) -> bool {
        state
            .oldest_pending
            .is_none_or(|since| now.saturating_duration_since(since) < self.timeout)
    }

    /// What the health-check node ports follow: the `/livez` condition.
    pub fn proxy_healthy(&self, now: Instant) -> bool {
        self.live(&self.state(), now)
    }

    pub fn livez(&self, now: Instant) -> Answer {
        let state = self.state();
        Answer {
            healthy: self.live(&state, now),
            body: body(&state, None),
        }
    }

    pub fn healthz(&self, now: Instant) -> Answer {
        let state = self.state();
        let eligible = state.ineligible.is_none();
        Answer {
            healthy: self.live(&state, now) && eligible && state.last_updated.is_some(),
            body: body(&state, Some(eligible)),
        }
    }
}

/// kube-proxy's answer body: `lastUpdated`, `currentTime`, and `nodeEligible` when given.
fn body(state: &State, node_eligible: Option<bool>) -> String {
    let mut body = serde_json::json!({
        "lastUpdated": state.last_updated.map(rfc3339).unwrap_or_default(),
        "currentTime": rfc3339(SystemTime::now()),
    });
    if let Some(eligible) = node_eligible {
        body["nodeEligible"] = eligible.into();
    }
    format!("{body}\n")
}

/// The answer to a request for `path`.
fn answer(health: &ProxyHealth, path: &str) -> Reply {
    let now = Instant::now();
    let answer = match path {
        "/livez" => health.livez(now),
        "/healthz" => health.healthz(now),
        _ => {
            return Reply::new(
                404,
                "application/json",
                "{\"error\": \"try /livez or /healthz\"}\n",
            );
        }
    };
    let status = if answer.healthy { 200 } else { 503 };
    Reply::new(status, "application/json", answer.body)
}

/// Binds `addr` (an unspecified address: both families) and serves `/livez` and `/healthz`
/// from `health` until the agent stops.
pub async fn serve(addr: SocketAddr, health: Arc<ProxyHealth>) -> Result<JoinHandle<()>> {
    let listener = bind(addr)
        .with_context(|| format!("binding the health server on {addr} (--healthz-bind-address)"))?;
    info!(%addr, "kube-proxy's health server on /livez and /healthz");
    Ok(serve_with(listener, "health", PROBE_LIMITS, move |path| {
        answer(&health, path)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(60);

    fn json(answer: &Answer) -> serde_json::Value {
        serde_json::from_str(&answer.body).expect("JSON")
    }

    #[test]
    fn live_while_starting_and_not_healthy_until_the_first_sync() {
        let t0 = Instant::now();
        let h = ProxyHealth::new(TIMEOUT);
        assert!(h.livez(t0).healthy, "live while starting");
        assert!(
            h.livez(t0 + 2 * TIMEOUT).healthy,
            "a slow first list is no stuck change"
        );
        let before = h.healthz(t0);
        assert!(!before.healthy, "nothing programmed yet");
        assert_eq!(json(&before)["nodeEligible"], true);
        h.updated();
        let after = h.healthz(t0);
        assert!(after.healthy);
        let body = json(&after);
        assert_eq!(body["nodeEligible"], true);
        assert!(
            body["lastUpdated"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z')),
            "{body}"
        );
        assert!(
            body["currentTime"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z')),
            "{body}"
        );
        assert!(json(&h.livez(t0)).get("nodeEligible").is_none());
    }

    #[test]
    fn a_change_waiting_past_the_timeout_fails_both() {
        let t0 = Instant::now();
        let h = ProxyHealth::new(TIMEOUT);
        h.updated();
        h.queued(t0 + Duration::from_secs(1));
        h.queued(t0 + Duration::from_secs(50));
        let late = t0 + Duration::from_secs(61);
        assert!(!h.livez(late).healthy, "the oldest pending change counts");
        assert!(!h.healthz(late).healthy);
        assert!(
            !h.proxy_healthy(late),
            "the health-check ports follow /livez"
        );
        h.updated();
        assert!(h.livez(late).healthy && h.healthz(late).healthy);
    }

    #[test]
    fn a_node_being_drained_fails_healthz_only() {
        let t0 = Instant::now();
        let h = ProxyHealth::new(TIMEOUT);
        h.updated();
        h.set_node(Err(
            "its Node object carries the ToBeDeletedByClusterAutoscaler taint".into(),
        ));
        assert!(h.livez(t0).healthy);
        assert!(
            h.proxy_healthy(t0),
            "the health-check ports do not drain with the node"
        );
        let answer = h.healthz(t0);
        assert!(!answer.healthy);
        assert_eq!(json(&answer)["nodeEligible"], false);
        h.set_node(Ok(()));
        assert!(h.healthz(t0).healthy);
    }
}
