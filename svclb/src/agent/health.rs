//! `healthCheckNodePort`s of services with `externalTrafficPolicy: Local`, answered as
//! kube-proxy does: an external load balancer asks every node and sends traffic only to those
//! that say 200 (at least one local ready endpoint); the others say 503. Every port also says
//! 503 while the agent's own `/livez` does (changes stuck unwritten), as kube-proxy's follow
//! its proxier's health since 1.28.

use std::{
    collections::BTreeMap,
    net::{Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
};

use serde_json::json;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::healthz::ProxyHealth;
use crate::{
    plan::HealthCheck,
    telemetry::http::{PROBE_LIMITS, Reply, bind, serve_with},
};

/// What one port answers: the service and its local endpoint count.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Answer {
    service: String,
    local_endpoints: usize,
}

/// The servers, one per health-check port.
pub struct HealthChecks {
    answers: Arc<Mutex<BTreeMap<u16, Answer>>>,
    servers: BTreeMap<u16, JoinHandle<()>>,
    /// The agent's own health: every port fails while its `/livez` does.
    proxy: Arc<ProxyHealth>,
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        for server in self.servers.values() {
            server.abort();
        }
    }
}

/// The body kube-proxy sends; `proxy_healthy` is the agent's own `/healthz`.
fn body(answer: &Answer, proxy_healthy: bool) -> String {
    let (namespace, name) = answer
        .service
        .split_once('/')
        .unwrap_or(("", answer.service.as_str()));
    let body = json!({
        "service": {"namespace": namespace, "name": name},
        "localEndpoints": answer.local_endpoints,
        "serviceProxyHealthy": proxy_healthy,
    });
    format!("{body}\n")
}

impl HealthChecks {
    /// No health-check ports yet; they answer from `proxy` too.
    pub fn new(proxy: Arc<ProxyHealth>) -> Self {
        Self {
            answers: Arc::default(),
            servers: BTreeMap::new(),
            proxy,
        }
    }

    /// Serves exactly `checks`: new ports are bound, gone ones closed, counts updated. A port
    /// that cannot be bound is reported by service and retried at the next update.
    pub fn update(&mut self, checks: &[HealthCheck]) {
        let wanted: BTreeMap<u16, Answer> = checks
            .iter()
            .map(|c| {
                (
                    c.port,
                    Answer {
                        service: c.service.clone(),
                        local_endpoints: c.local_endpoints,
                    },
                )
            })
            .collect();
        *self.answers.lock().expect("health-check answers lock") = wanted.clone();
        self.servers.retain(|port, server| {
            let keep = wanted.contains_key(port) && !server.is_finished();
            if !keep {
                server.abort();
                info!(port, "health-check port closed");
            }
            keep
        });
        for (port, answer) in wanted {
            if self.servers.contains_key(&port) {
                continue;
            }
            // Both families on one socket; IPv4 alone on a host without IPv6.
            let listener = match bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))) {
                Ok(listener) => listener,
                Err(err) => {
                    warn!(
                        "Service {}: cannot serve its healthCheckNodePort {port}: {err}",
                        answer.service
                    );
                    continue;
                }
            };
            info!(port, service = %answer.service, "health-check port open");
            let (answers, proxy) = (self.answers.clone(), self.proxy.clone());
            let server = serve_with(listener, "health-check", PROBE_LIMITS, move |_| {
                respond_for(&answers, &proxy, port)
            });
            self.servers.insert(port, server);
        }
    }
}

/// What health-check port `port` answers: 200 with its local endpoint count while it has
/// any and the agent is live, 503 otherwise.
fn respond_for(answers: &Mutex<BTreeMap<u16, Answer>>, proxy: &ProxyHealth, port: u16) -> Reply {
    let answer = answers
        .lock()
        .expect("health-check answers lock")
        .get(&port)
        .cloned();
    let proxy_healthy = proxy.proxy_healthy(std::time::Instant::now());
    match answer {
        Some(a) if a.local_endpoints > 0 && proxy_healthy => {
            Reply::new(200, "application/json", body(&a, true))
        }
        Some(a) => Reply::new(503, "application/json", body(&a, proxy_healthy)),
        None => Reply::new(
            503,
            "application/json",
            "{\"error\": \"no such service\"}\n",
        ),
    }
}
