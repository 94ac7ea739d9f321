//! The agent's HTTP endpoint (`--metrics-addr`): `/metrics` (Prometheus), `/status` (what
//! `svclb status` reads) and `/healthz` (200 once the first full sync is done, 503 before: a
//! DaemonSet readiness probe, so a rolling update waits for it). And the few lines of HTTP/1.1
//! it and the health-check node ports need: read one request's path, write one response, close.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tracing::{debug, info};

use super::metrics::Metrics;

/// A client that has not sent its request headers by then is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The path of the request on `stream`, once its headers are in; `None` if the client sends
/// nothing usable in time.
pub async fn read_path(stream: &mut TcpStream) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") && n < buf.len() {
        match tokio::time::timeout(REQUEST_TIMEOUT, stream.read(&mut buf[n..])).await {
            Ok(Ok(read)) if read > 0 => n += read,
            _ => return None,
        }
    }
    let request = String::from_utf8_lossy(&buf[..n]);
    Some(request.split_whitespace().nth(1).unwrap_or("/").to_owned())
}

/// Writes a complete response and lets the connection close.
pub async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await
}

/// The answer to a request for `path`: status line, content type, body.
fn answer(metrics: &Metrics, path: &str) -> (&'static str, &'static str, String) {
    match path {
        "/metrics" => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        "/status" => (
            "200 OK",
            "application/json",
            serde_json::to_string(&*metrics.status()).unwrap_or_default(),
        ),
        "/healthz" if metrics.ready.load(Ordering::Relaxed) => {
            ("200 OK", "text/plain", "ok\n".to_owned())
        }
        "/healthz" => (
            "503 Service Unavailable",
            "text/plain",
            "waiting for the first full sync\n".to_owned(),
        ),
        _ => (
            "404 Not Found",
            "text/plain",
            "try /metrics, /healthz or /status\n".to_owned(),
        ),
    }
}

/// Answers every request on `listener` with `answer(path)` (status line, content type,
/// body), each on a task of its own, until aborted; `what` names the server in the log. The
/// one HTTP server loop of the agent: metrics, kube-proxy's health, health-check node ports.
pub fn serve_with<F>(listener: TcpListener, what: &'static str, answer: F) -> JoinHandle<()>
where
    F: Fn(&str) -> (&'static str, &'static str, String) + Send + Sync + 'static,
{
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut stream, peer)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let Some(path) = read_path(&mut stream).await else {
                    return;
                };
                let (status, content_type, body) = answer(&path);
                if let Err(err) = respond(&mut stream, status, content_type, &body).await {
                    debug!(%peer, %err, "{what} client went away");
                }
            });
        }
    })
}

/// Binds `addr` and serves `/metrics`, `/status` and `/healthz`; the returned task serves
/// until aborted (or the process ends).
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics endpoint on {addr} (--metrics-addr)"))?;
    info!(%addr, "metrics and health on /metrics and /healthz");
    Ok(serve_with(listener, "metrics", move |path| {
        answer(&metrics, path)
    }))
}
