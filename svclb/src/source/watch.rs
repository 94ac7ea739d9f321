//! The sources as the agent and `svclb plan` run them: a manifests directory watched for
//! changes, or the Kubernetes API's watchers.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tracing::warn;

use super::{
    kubernetes::{self, KubeSource},
    manifests::ManifestSource,
};
use prometheus_client::metrics::counter::Counter;

use crate::plan::Snapshot;

/// What the agent (or `svclb plan`) reads.
#[derive(Clone, Debug)]
pub enum SourceConfig {
    /// A directory of YAML manifests, watched for changes.
    Manifests(PathBuf),
    /// The Kubernetes API, through `kubeconfig` or the in-cluster service account; with
    /// `dns`, also what only the DNS records need (see `KubeSource::start`).
    Kubernetes {
        kubeconfig: Option<PathBuf>,
        dns: bool,
    },
}

pub enum Source {
    Manifests {
        source: ManifestSource,
        changes: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
        _watcher: RecommendedWatcher,
        errors: Counter,
    },
    Kubernetes(KubeSource),
}

impl Source {
    /// Opens the source. For the API this starts the watchers; [`Source::wait_ready`] waits
    /// for their first lists. Watch failures are counted in `errors`.
    pub async fn open(config: &SourceConfig, errors: Counter) -> Result<Self> {
        match config {
            SourceConfig::Manifests(dir) => {
                if !dir.is_dir() {
                    bail!("manifests directory {} does not exist", dir.display());
                }
                let (tx, changes) = mpsc::unbounded_channel();
                let mut watcher =
                    notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                        // Reading the files raises access events of our own; only changes matter.
                        if let Ok(event) = &event
                            && matches!(event.kind, EventKind::Access(_))
                        {
                            return;
                        }
                        // The receiver lives as long as the source; a failed send means it is gone.
                        let _ = tx.send(event);
                    })
                    .context("creating a file watcher")?;
                watcher
                    .watch(dir, RecursiveMode::Recursive)
                    .with_context(|| format!("watching {}", dir.display()))?;
                Ok(Self::Manifests {
                    source: ManifestSource::new(dir),
                    changes,
                    _watcher: watcher,
                    errors,
                })
            }
            SourceConfig::Kubernetes { kubeconfig, dns } => {
                let client = kubernetes::client(kubeconfig.as_deref()).await?;
                Ok(Self::Kubernetes(KubeSource::start(&client, errors, *dns)))
            }
        }
    }

    /// Completes when the source has a complete view (the API's first lists); manifests are
    /// ready at once. Owns what it waits on.
    pub fn readiness(&self) -> futures::future::BoxFuture<'static, Result<()>> {
        match self {
            Self::Manifests { .. } => Box::pin(async { Ok(()) }),
            Self::Kubernetes(source) => Box::pin(source.readiness()),
        }
    }

    /// Waits until the source has a complete view (the API's first lists); manifests are
    /// ready at once.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        match self {
            Self::Manifests { .. } => Ok(()),
            Self::Kubernetes(source) => source.wait_ready(timeout).await,
        }
    }

    /// Waits for the next change notification. Cancel-safe: a notification is consumed only
    /// when this returns, so it can sit in a `select!` beside other branches. `None` when the
    /// source can report no more changes.
    pub async fn next_change(&mut self) -> Option<()> {
        match self {
            Self::Manifests {
                changes,
                source,
                errors,
                ..
            } => match changes.recv().await? {
                Ok(event) => source.note(&event),
                Err(err) => {
                    warn!("file watcher: {err}; reading the whole directory again");
                    errors.inc();
                    source.note_everything();
                }
            },
            Self::Kubernetes(source) => source.changes.recv().await?,
        }
        Some(())
    }

    pub fn snapshot(&mut self) -> Snapshot {
        match self {
            Self::Manifests { source, .. } => source.read(),
            Self::Kubernetes(source) => source.snapshot(),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Manifests { source, .. } => format!("manifests in {}", source.dir().display()),
            Self::Kubernetes(_) => "the Kubernetes API".to_owned(),
        }
    }
}
