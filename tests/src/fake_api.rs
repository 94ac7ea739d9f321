//! A fake Kubernetes API server for Services, EndpointSlices and Nodes that speaks the real
//! list/watch protocol over HTTP/1.1 (served by hyper), enough to drive kube-runtime's
//! watchers unmodified:
//!
//! - LIST returns every object of a kind (field selector `metadata.name=` honoured) with the
//!   collection's `resourceVersion`.
//! - WATCH (`?watch=1&resourceVersion=N`) streams chunked JSON events newer than N, then new
//!   ones as they happen, with BOOKMARK events when `allowWatchBookmarks` is set; a
//!   resourceVersion older than the last compaction gets an ERROR event with a 410 Status,
//!   as the real server does.
//! - Tests add and change objects, compact history, drop every open connection, or
//!   make the server unreachable (503), and read counters of what clients asked.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use http_body_util::{
    BodyExt as _, Full,
    channel::{Channel, Sender},
    combinators::BoxBody,
};
use hyper::{
    body::{Bytes, Incoming},
    header::{CONTENT_TYPE, HeaderValue},
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

/// Every answer's body: whole, or a watch's stream of events.
type Body = BoxBody<Bytes, std::io::Error>;

/// The kinds served, with their collection path.
const KINDS: [(&str, &str, &str); 3] = [
    ("Service", "v1", "/api/v1/services"),
    (
        "EndpointSlice",
        "discovery.k8s.io/v1",
        "/apis/discovery.k8s.io/v1/endpointslices",
    ),
    ("Node", "v1", "/api/v1/nodes"),
];

/// How often an open watch sends a bookmark when the client allows them.
const BOOKMARK_EVERY: Duration = Duration::from_millis(300);

#[derive(Clone)]
struct Event {
    rv: u64,
    kind: &'static str,
    kind_type: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// (kind, namespace, name) -> object.
    objects: BTreeMap<(String, String, String), Value>,
    events: Vec<Event>,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted: u64,
    unavailable: bool,
    /// Requests seen, per "LIST kind" / "WATCH kind" / "GONE kind".
    counts: BTreeMap<String, usize>,
}

/// A running fake API server; stops when dropped.
pub struct FakeApi {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    /// Bumped on every change; watches wait on it.
    changed: watch::Sender<u64>,
    /// Bumped to drop every open connection.
    generation: watch::Sender<u64>,
    task: JoinHandle<()>,
}

fn kind_of(object: &Value) -> Result<&'static str> {
    let kind = object["kind"].as_str().unwrap_or_default();
    KINDS
        .iter()
        .map(|(k, _, _)| *k)
        .find(|k| *k == kind)
        .with_context(|| format!("the fake API serves no kind {kind:?}"))
}

fn key_of(object: &Value) -> Result<(String, String, String)> {
    let meta = &object["metadata"];
    Ok((
        kind_of(object)?.to_owned(),
        meta["namespace"].as_str().unwrap_or_default().to_owned(),
        meta["name"]
            .as_str()
            .context("object without metadata.name")?
            .to_owned(),
    ))
}

impl FakeApi {
    /// Serves on 127.0.0.1 on a free port.
    pub fn start() -> Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let (changed, _) = watch::channel(0);
        let (generation, _) = watch::channel(0);
        let task = {
            let (state, changed, generation) = (state.clone(), changed.clone(), generation.clone());
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (state, changed, generation) =
                        (state.clone(), changed.clone(), generation.clone());
                    let service = service_fn(move |request: hyper::Request<Incoming>| {
                        let reply = answer(
                            &request,
                            state.clone(),
                            changed.subscribe(),
                            generation.subscribe(),
                        );
                        async move { Ok::<_, Infallible>(reply) }
                    });
                    tokio::spawn(
                        hyper::server::conn::http1::Builder::new()
                            .keep_alive(false)
                            .serve_connection(TokioIo::new(stream), service),
                    );
                }
            })
        };
        Ok(Self {
            addr,
            state,
            changed,
            generation,
            task,
        })
    }

    /// A kubeconfig for this server.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\nusers:\n- name: fake\n  user:\n    token: fake-token\n",
            self.addr
        )
    }

    fn record(&self, kind_type: &'static str, mut object: Value) -> Result<u64> {
        let mut state = self.state.lock().expect("fake API state");
        state.rv += 1;
        let rv = state.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        state.objects.insert(key_of(&object)?, object.clone());
        let kind = kind_of(&object)?;
        state.events.push(Event {
            rv,
            kind,
            kind_type,
            object,
        });
        drop(state);
        self.changed.send_replace(rv);
        Ok(rv)
    }

    /// Creates or replaces an object (JSON with apiVersion, kind and metadata).
    pub fn apply(&self, object: Value) -> Result<u64> {
        let exists = self
            .state
            .lock()
            .expect("fake API state")
            .objects
            .contains_key(&key_of(&object)?);
        self.record(if exists { "MODIFIED" } else { "ADDED" }, object)
    }

    /// Forgets history: a watch resuming from a version before the current one gets 410 Gone
    /// and must relist; one resuming from the current version (a bookmark's) missed nothing.
    pub fn compact(&self) {
        let mut state = self.state.lock().expect("fake API state");
        state.compacted = state.rv;
        state.events.clear();
    }

    /// Cuts every open connection (watches end abruptly, as when an API server restarts).
    pub fn drop_connections(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// While set, every request gets 503 and open connections are cut.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.state.lock().expect("fake API state").unavailable = unavailable;
        if unavailable {
            self.drop_connections();
        }
    }

    /// How many requests or events of a sort there were, e.g. `count("LIST Service")`,
    /// `count("GONE EndpointSlice")`, `count("REFUSED Service")` (a request answered 503
    /// while unavailable), `count("BOOKMARK Service")` (a bookmark sent on a watch).
    pub fn count(&self, what: &str) -> usize {
        self.state
            .lock()
            .expect("fake API state")
            .counts
            .get(what)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
        self.drop_connections();
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Request {
    kind: &'static str,
    api_version: &'static str,
    query: BTreeMap<String, String>,
}

fn parse_request(request: &hyper::Request<Incoming>) -> Option<Request> {
    let (kind, api_version, _) = KINDS.iter().find(|(_, _, p)| *p == request.uri().path())?;
    let query = request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    Some(Request {
        kind,
        api_version,
        query,
    })
}

/// Field selector `metadata.name=NAME`, and label selectors made of `key`, `!key`, `key=value`
/// and `key!=value` terms (the forms kube-proxy and svclb use).
fn matches_selector(object: &Value, query: &BTreeMap<String, String>) -> bool {
    if let Some(name) = query
        .get("fieldSelector")
        .and_then(|s| s.strip_prefix("metadata.name="))
        && object["metadata"]["name"].as_str() != Some(name)
    {
        return false;
    }
    let labels = &object["metadata"]["labels"];
    query.get("labelSelector").is_none_or(|selector| {
        selector.split(',').filter(|t| !t.is_empty()).all(|term| {
            if let Some(key) = term.strip_prefix('!') {
                labels.get(key).is_none()
            } else if let Some((key, value)) = term.split_once("!=") {
                labels.get(key).and_then(Value::as_str) != Some(value)
            } else if let Some((key, value)) = term.split_once('=') {
                labels.get(key).and_then(Value::as_str) == Some(value.trim_start_matches('='))
            } else {
                labels.get(term).is_some()
            }
        })
    })
}

/// The objects of the request's kind that match its selectors, and the current version.
fn current(state: &Mutex<State>, request: &Request) -> (Vec<Value>, u64) {
    let s = state.lock().expect("fake API state");
    let objects = s
        .objects
        .iter()
        .filter(|((kind, _, _), object)| {
            kind == request.kind && matches_selector(object, &request.query)
        })
        .map(|(_, object)| object.clone())
        .collect();
    (objects, s.rv)
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// A whole answer of `code` with a JSON body.
fn respond(code: u16, body: &Value) -> hyper::Response<Body> {
    let full = Full::new(Bytes::from(body.to_string()))
        .map_err(|never| match never {})
        .boxed();
    let mut response = hyper::Response::new(full);
    *response.status_mut() =
        hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The answer to one request: a list, an error, or a watch whose events a task of its own
/// streams (chunked) until the client goes, the watch times out, or connections are cut.
fn answer(
    request: &hyper::Request<Incoming>,
    state: Arc<Mutex<State>>,
    changed: watch::Receiver<u64>,
    generation: watch::Receiver<u64>,
) -> hyper::Response<Body> {
    let Some(request) = parse_request(request) else {
        return respond(
            404,
            &status(404, "NotFound", "the fake API serves no such path"),
        );
    };
    let watching = matches!(
        request.query.get("watch").map(String::as_str),
        Some("1" | "true")
    );
    let unavailable = {
        let mut s = state.lock().expect("fake API state");
        let what = format!(
            "{} {}",
            if watching { "WATCH" } else { "LIST" },
            request.kind
        );
        *s.counts.entry(what).or_default() += 1;
        if s.unavailable {
            *s.counts
                .entry(format!("REFUSED {}", request.kind))
                .or_default() += 1;
        }
        s.unavailable
    };
    if unavailable {
        return respond(
            503,
            &status(503, "ServiceUnavailable", "the fake API is down"),
        );
    }
    if !watching {
        let (items, rv) = current(&state, &request);
        let list = json!({"apiVersion": request.api_version, "kind": format!("{}List", request.kind),
                          "metadata": {"resourceVersion": rv.to_string()}, "items": items});
        return respond(200, &list);
    }
    let (events, body) = Channel::<Bytes, std::io::Error>::new(16);
    tokio::spawn(stream_watch(request, state, events, (changed, generation)));
    let mut response = hyper::Response::new(body.boxed());
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Sends one watch event (a JSON line) down the body.
async fn send(events: &mut Sender<Bytes, std::io::Error>, event: &Value) -> Result<()> {
    events
        .send_data(Bytes::from(format!("{event}\n")))
        .await
        .map_err(|_| anyhow::anyhow!("the watcher went away"))
}

/// Streams a watch's events into `events`: 410 Gone for a compacted version, else the
/// events after it, then new ones as they come, with bookmarks if asked, until the watch's
/// timeout (the body ends) or a cut of every connection (the body fails, so the connection
/// ends without the final chunk, as a dying server's would).
async fn stream_watch(
    request: Request,
    state: Arc<Mutex<State>>,
    mut events: Sender<Bytes, std::io::Error>,
    (mut changed, mut generation): (watch::Receiver<u64>, watch::Receiver<u64>),
) -> Result<()> {
    let from: u64 = request
        .query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = request
        .query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true" || v == "1");
    let timeout = request
        .query
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(290), Duration::from_secs);
    let gone = {
        let mut s = state.lock().expect("fake API state");
        let gone = from < s.compacted;
        if gone {
            *s.counts
                .entry(format!("GONE {}", request.kind))
                .or_default() += 1;
        }
        gone
    };
    if gone {
        let error = status(410, "Expired", &format!("too old resource version: {from}"));
        return send(&mut events, &json!({"type": "ERROR", "object": error})).await;
    }
    let start_generation = *generation.borrow_and_update();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut sent = from;
    if from == 0 {
        // A watch from version 0 starts with the current state as ADDED events (the real
        // server's "any version" start), then follows changes from there.
        let (current, rv) = current(&state, &request);
        for object in current {
            send(&mut events, &json!({"type": "ADDED", "object": object})).await?;
        }
        sent = rv;
    }
    loop {
        // The events to send and the version they bring the watch to, read together: a change
        // recorded while they are being written is picked up on the next pass, never skipped.
        changed.borrow_and_update();
        let (pending, upto) = {
            let s = state.lock().expect("fake API state");
            let pending: Vec<Event> = s
                .events
                .iter()
                .filter(|e| {
                    e.rv > sent
                        && e.kind == request.kind
                        && matches_selector(&e.object, &request.query)
                })
                .cloned()
                .collect();
            (pending, s.rv)
        };
        for event in pending {
            send(
                &mut events,
                &json!({"type": event.kind_type, "object": event.object}),
            )
            .await?;
        }
        sent = sent.max(upto);
        tokio::select! {
            _ = changed.changed() => {}
            _ = generation.changed() => {
                if *generation.borrow() != start_generation {
                    events.abort(std::io::Error::other("connections cut"));
                    return Ok(());
                }
            }
            () = tokio::time::sleep(BOOKMARK_EVERY), if bookmarks => {
                let bookmark = json!({"type": "BOOKMARK", "object": {"kind": request.kind, "apiVersion": request.api_version,
                                      "metadata": {"resourceVersion": sent.to_string()}}});
                send(&mut events, &bookmark).await?;
                *state
                    .lock()
                    .expect("fake API state")
                    .counts
                    .entry(format!("BOOKMARK {}", request.kind))
                    .or_default() += 1;
            }
            () = tokio::time::sleep_until(deadline) => return Ok(()),
        }
    }
}
