//! The Kubernetes source: kube-runtime watchers with reflector stores for Services,
//! EndpointSlices and Node objects (every node's addresses are reserved: see
//! `plan::reserved`; only this node's object is read otherwise).
//!
//! The watchers relist on 410 Gone, back off on errors and take bookmarks (kube-runtime does
//! all three). A store is replaced only when a (re)list completes, so a relist never shows a
//! transient empty state, and while the API server is unreachable the stores keep the last
//! state they saw, which the agent keeps serving.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result};
use futures::{FutureExt as _, Stream, StreamExt as _};
use k8s_openapi::{
    api::{
        core::v1::{Node, NodeStatus, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    serde::de::DeserializeOwned,
};
use kube::{
    Api, Client, Config, Resource,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher,
    },
};
use prometheus_client::metrics::counter::Counter;
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{debug, info, warn};

use crate::plan::Snapshot;

/// Services and EndpointSlices with this label belong to another service proxy.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// EndpointSlices of headless services carry this label.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// A client from `kubeconfig`, or the in-cluster configuration (service account) without one.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None => Config::incluster().context(
            "no --kubeconfig and not running in a cluster (KUBERNETES_SERVICE_HOST unset); \
             give --kubeconfig PATH or --manifests DIR",
        )?,
    };
    Client::try_from(config).context("creating the Kubernetes client")
}

/// Stores of the three kinds, kept current by background watchers.
pub struct KubeSource {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    /// One message per watch event (the agent debounces them).
    pub changes: mpsc::UnboundedReceiver<()>,
    tasks: Vec<JoinHandle<()>>,
}

/// Where each watch reports: a message per event, and a count of failed watch requests.
#[derive(Clone)]
struct Reports {
    changes: mpsc::UnboundedSender<()>,
    errors: Counter,
}

/// Watches `api` into a store of objects cut down by `trim` (managed fields always go).
fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    trim: fn(&mut K),
    reports: Reports,
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config.any_semantic())
        .default_backoff()
        .modify(move |object| {
            // Managed fields are large and never read.
            object.meta_mut().managed_fields = None;
            trim(object);
        })
        .reflect(writer);
    let task = tokio::spawn(drive(K::kind(&()).into_owned(), stream, reports));
    (reader, task)
}

async fn drive<S, K>(kind: String, stream: S, reports: Reports)
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    let mut lists = 0u64;
    while let Some(event) = stream.next().await {
        match event {
            // kube-runtime lists again only when the watch cannot resume (410 Gone).
            Ok(watcher::Event::Init) => {
                lists += 1;
                if lists > 1 {
                    info!(kind, lists, "listing again: the watch could not resume");
                }
            }
            Ok(watcher::Event::InitApply(_)) => {}
            Ok(_) => {
                if reports.changes.send(()).is_err() {
                    return;
                }
            }
            // The backoff retries; the store keeps what it has.
            Err(err) => {
                warn!(kind, "watch failed, retrying: {err}");
                reports.errors.inc();
            }
        }
    }
    debug!(kind, "watch stream ended");
}

/// What the plan reads of a Node: its labels (the zone), taints, deletion, and addresses. The
/// rest (images, conditions, capacity, annotations) is most of a Node object's size, and
/// every node's object is kept.
fn trim_node(node: &mut Node) {
    node.metadata.annotations = None;
    if let Some(status) = &mut node.status {
        *status = NodeStatus {
            addresses: status.addresses.take(),
            ..NodeStatus::default()
        };
    }
}

impl KubeSource {
    /// Starts watching. As kube-proxy does, Services and EndpointSlices that name another
    /// service proxy (`service.kubernetes.io/service-proxy-name`) are not watched, nor the
    /// EndpointSlices of headless services, unless `dns` (their names are answered too). Every Node is watched, kept with its labels,
    /// taints and addresses only (see [`trim_node`]). Failed watch requests are counted in
    /// `errors`.
    /// With `dns`, every Service and EndpointSlice is watched, and those the plan leaves
    /// alone are kept apart for the DNS records (see `Snapshot::dns_services`).
    pub fn start(client: &Client, errors: Counter, dns: bool) -> Self {
        let (tx, changes) = mpsc::unbounded_channel();
        let reports = Reports {
            changes: tx,
            errors,
        };
        let selected = |labels: String| {
            if dns {
                watcher::Config::default()
            } else {
                watcher::Config::default().labels(&labels)
            }
        };
        let (services, t1) = watch(
            Api::<Service>::all(client.clone()),
            selected(format!("!{SERVICE_PROXY_NAME_LABEL}")),
            |_| {},
            reports.clone(),
        );
        let (slices, t2) = watch(
            Api::<EndpointSlice>::all(client.clone()),
            selected(format!("!{SERVICE_PROXY_NAME_LABEL},!{HEADLESS_LABEL}")),
            |_| {},
            reports.clone(),
        );
        let (nodes, t3) = watch(
            Api::<Node>::all(client.clone()),
            watcher::Config::default(),
            trim_node,
            reports,
        );
        Self {
            services,
            slices,
            nodes,
            changes,
            tasks: vec![t1, t2, t3],
        }
    }

    /// Completes when every store has finished its first list, so the first sync never
    /// programs a partial view (a restart must not drop services it simply has not seen yet).
    /// The future owns what it waits on, so it can be held across other work.
    pub fn readiness(&self) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        let (services, slices, nodes) = (
            self.services.clone(),
            self.slices.clone(),
            self.nodes.clone(),
        );
        async move {
            services.wait_until_ready().await?;
            slices.wait_until_ready().await?;
            nodes.wait_until_ready().await?;
            Ok::<(), reflector::store::WriterDropped>(())
        }
        .map(|r| r.context("a watcher stopped before its first list"))
    }

    /// [`KubeSource::readiness`] with a deadline.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        tokio::time::timeout(timeout, self.readiness())
            .await
            .with_context(|| format!("the Kubernetes API did not list Services, EndpointSlices and Nodes within {timeout:?}"))?
    }

    /// The stores' objects, shared with them: an object the watch did not touch keeps its
    /// allocation, which is how the planner knows it is unchanged.
    pub fn snapshot(&self) -> Snapshot {
        let labelled = |meta: &ObjectMeta, label: &str| {
            meta.labels.as_ref().is_some_and(|l| l.contains_key(label))
        };
        let (dns_services, services) = self
            .services
            .state()
            .into_iter()
            .partition(|s| labelled(&s.metadata, SERVICE_PROXY_NAME_LABEL));
        let (dns_slices, slices) = self.slices.state().into_iter().partition(|s| {
            labelled(&s.metadata, SERVICE_PROXY_NAME_LABEL) || labelled(&s.metadata, HEADLESS_LABEL)
        });
        Snapshot {
            services,
            slices,
            nodes: self.nodes.state(),
            diagnostics: Vec::new(),
            dns_services,
            dns_slices,
        }
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
