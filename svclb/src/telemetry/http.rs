//! The agent's HTTP servers, all served by [`serve_with`] with hyper: the metrics endpoint
//! (`--metrics-addr`: `/metrics`, `/status` for `svclb status`, and `/healthz`, 200 once the
//! first full sync is done: the DaemonSet's readiness probe), kube-proxy's health server (see
//! `agent::healthz`) and the health-check node ports (see `agent::health`).
//!
//! Every one of them is reachable from every pod, so each is bounded ([`Limits`]):
//! - one request per connection, and one deadline for reading it and writing its answer: a
//!   client that sends a byte every few seconds, or never reads its answer, holds its
//!   connection that long at most;
//! - a cap on connections per listener (file descriptors, and answers held in memory), and a
//!   smaller one per client address, past which a client's connections are closed at once, so
//!   that one client cannot take the places load balancers' probes need;
//! - answers are made on the blocking pool: encoding `/metrics` must not hold up the agent's
//!   single-threaded runtime, which syncs and answers `/livez`;
//! - accept errors (EMFILE, out of file descriptors) are retried with a backoff: a server
//!   never ends by itself.
//!
//! tower's concurrency limit and timeout layers bound requests, not connections: a connection
//! that never completes its request headers never reaches them. So the caps are taken at
//! accept, and the deadline spans the whole connection.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result};
use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, header::CONTENT_TYPE, service::service_fn};
use hyper_util::rt::TokioIo;
use nix::sys::socket::{setsockopt, sockopt::Ipv6V6Only};
use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinHandle,
};
use tracing::{debug, info, warn};

use super::metrics::Metrics;

/// An answer: status code, content type, body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type,
            body: body.into(),
        }
    }
}

/// How much one listener serves at once, and for how long.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections open at once; more wait in the listen backlog.
    pub connections: usize,
    /// Connections open at once from one client address; more are closed at once.
    pub per_client: usize,
    /// From accept to the last byte of the answer.
    pub deadline: Duration,
}

/// kube-proxy's health server and the health-check node ports: small answers, probed every
/// few seconds by a handful of load balancers.
pub const PROBE_LIMITS: Limits = Limits {
    connections: 256,
    per_client: 8,
    deadline: Duration::from_secs(5),
};

/// The metrics endpoint: answers of megabytes at 10,000 services, so fewer at once.
pub const METRICS_LIMITS: Limits = Limits {
    connections: 16,
    per_client: 4,
    deadline: Duration::from_secs(10),
};

/// The first wait after a failed accept; it doubles up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Binds `addr` for a server. An unspecified address (`0.0.0.0` or `::`) means every address
/// of both families, as Go's listeners (kube-proxy's) take it: one IPv6 socket that takes IPv4
/// too, or IPv4 alone on a host without IPv6. (A Rust `0.0.0.0` socket is IPv4 only, and
/// IPv6-primary clusters probe the node's IPv6 address.)
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    if addr.ip().is_unspecified() {
        let dual = SocketAddr::from((Ipv6Addr::UNSPECIFIED, addr.port()));
        return listen(dual, true).or_else(|_| {
            listen(
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port())),
                false,
            )
        });
    }
    listen(addr, false)
}

fn listen(addr: SocketAddr, dual_stack: bool) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if dual_stack {
        setsockopt(&socket, Ipv6V6Only, &false)?;
    }
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Connections open per client address.
#[derive(Default)]
struct PerClient(Mutex<HashMap<IpAddr, usize>>);

/// One client's place, given back on drop.
struct ClientSlot {
    clients: Arc<PerClient>,
    ip: IpAddr,
}

impl PerClient {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<ClientSlot> {
        let mut open = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = open.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            clients: self.clone(),
            ip,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self
            .clients
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Answers every request on `listener` with `answer(path)`, within `limits`, until aborted;
/// `what` names the server in the log. The one HTTP server loop of the agent.
pub fn serve_with<F>(
    listener: TcpListener,
    what: &'static str,
    limits: Limits,
    answer: F,
) -> JoinHandle<()>
where
    F: Fn(&str) -> Reply + Send + Sync + 'static,
{
    let answer = Arc::new(answer);
    let places = Arc::new(Semaphore::new(limits.connections));
    let clients = Arc::new(PerClient::default());
    tokio::spawn(async move {
        let mut backoff = ACCEPT_BACKOFF_MIN;
        loop {
            let place = places
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    warn!(what, "accepting a connection: {err}; again in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            };
            backoff = ACCEPT_BACKOFF_MIN;
            // Over its share, a client's connection is closed (dropped) at once.
            if let Some(slot) = clients.take(peer.ip().to_canonical(), limits.per_client) {
                let answer = answer.clone();
                tokio::spawn(connection(stream, (place, slot), limits, answer, what));
            } else {
                debug!(what, %peer, "over its share of connections: closed");
            }
        }
    })
}

/// Serves one request on `stream` within the deadline, holding its places until done.
async fn connection<F>(
    stream: TcpStream,
    places: (OwnedSemaphorePermit, ClientSlot),
    limits: Limits,
    answer: Arc<F>,
    what: &'static str,
) where
    F: Fn(&str) -> Reply + Send + Sync + 'static,
{
    let _places = places;
    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
        let answer = answer.clone();
        async move {
            let path = request.uri().path().to_owned();
            let reply = tokio::task::spawn_blocking(move || answer(&path))
                .await
                .unwrap_or_else(|_| Reply::new(500, "text/plain", "the answer panicked\n"));
            Ok::<_, Infallible>(response(reply))
        }
    });
    let serving = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(limits.deadline, serving).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => debug!(what, "connection: {err}"),
        Err(_) => debug!(what, "connection closed at its deadline"),
    }
}

fn response(reply: Reply) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(reply.body)));
    *response.status_mut() = hyper::StatusCode::from_u16(reply.status)
        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(value) = reply.content_type.parse() {
        response.headers_mut().insert(CONTENT_TYPE, value);
    }
    response
}

/// The answer to a request for `path`.
fn answer(metrics: &Metrics, path: &str) -> Reply {
    match path {
        "/metrics" => Reply::new(
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        "/status" => Reply::new(
            200,
            "application/json",
            serde_json::to_string(&*metrics.status()).unwrap_or_default(),
        ),
        "/healthz" if metrics.ready.load(Ordering::Relaxed) => {
            Reply::new(200, "text/plain", "ok\n")
        }
        "/healthz" => Reply::new(503, "text/plain", "waiting for the first full sync\n"),
        _ => Reply::new(404, "text/plain", "try /metrics, /healthz or /status\n"),
    }
}

/// Binds `addr` and serves `/metrics`, `/status` and `/healthz`; the returned task serves
/// until aborted (or the process ends).
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<JoinHandle<()>> {
    let listener = bind(addr)
        .with_context(|| format!("binding the metrics endpoint on {addr} (--metrics-addr)"))?;
    info!(%addr, "metrics and health on /metrics and /healthz");
    Ok(serve_with(
        listener,
        "metrics",
        METRICS_LIMITS,
        move |path| answer(&metrics, path),
    ))
}
