//! The one HTTP client of the project: `svclb status`, the lab and its clients ask an agent's
//! servers (or etcd's JSON gateway) with hyper, one request per connection, the whole exchange
//! bounded by one deadline.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result, bail};
use http_body_util::{BodyExt as _, Full};
pub use hyper::Method;
use hyper::{
    Request,
    body::Bytes,
    header::{CONTENT_TYPE, HOST},
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What came back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// The `Content-Type` header ("" without one).
    pub content_type: String,
    pub body: String,
}

/// GETs `path` from `addr` within `deadline`.
pub async fn get(addr: SocketAddr, path: &str, deadline: Duration) -> Result<Response> {
    request(addr, Method::GET, path, None, deadline).await
}

/// One request (`json` sent as an `application/json` body), answered within `deadline`.
pub async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    json: Option<String>,
    deadline: Duration,
) -> Result<Response> {
    let what = format!("{method} http://{addr}{path}");
    tokio::time::timeout(deadline, exchange(addr, method, path, json))
        .await
        .with_context(|| format!("{what}: no answer within {deadline:?}"))?
        .with_context(|| what)
}

async fn exchange(
    addr: SocketAddr,
    method: Method,
    path: &str,
    json: Option<String>,
) -> Result<Response> {
    let stream = TcpStream::connect(addr).await.context("connecting")?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake")?;
    let driver = tokio::spawn(connection);
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, addr.to_string());
    if json.is_some() {
        builder = builder.header(CONTENT_TYPE, "application/json");
    }
    let request = builder.body(Full::new(Bytes::from(json.unwrap_or_default())))?;
    let response = sender.send_request(request).await.context("sending")?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response
        .into_body()
        .collect()
        .await
        .context("reading the body")?;
    driver.abort();
    let Ok(body) = String::from_utf8(body.to_bytes().to_vec()) else {
        bail!("the body is not UTF-8");
    };
    Ok(Response {
        status,
        content_type,
        body,
    })
}

/// [`request`] from synchronous code, on a runtime of its own (in the calling thread, so in
/// its network namespace).
pub fn request_blocking(
    addr: SocketAddr,
    method: Method,
    path: &str,
    json: Option<String>,
    deadline: Duration,
) -> Result<Response> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting an HTTP client runtime")?
        .block_on(request(addr, method, path, json, deadline))
}

/// [`get`] from synchronous code (see [`request_blocking`]).
pub fn get_blocking(addr: SocketAddr, path: &str, deadline: Duration) -> Result<Response> {
    request_blocking(addr, Method::GET, path, None, deadline)
}
