//! svclb: a Kubernetes Service load balancer in the Linux kernel.
//!
//! The agent's folders are the stages its data flows through, lowest first:
//!
//! - [`plan`]: Kubernetes objects ([`plan::Snapshot`]) -> [`plan::Plan`]; pure.
//! - [`source`]: where objects come from (a manifests directory, the Kubernetes API); each
//!   fills a snapshot.
//! - [`entries`]: plan -> exact map entries with stable ids, within the maps' capacity; pure.
//! - [`reconcile`]: map entries -> writes, in one order shared by the full and the incremental
//!   sync; pure (behind a writer trait).
//! - [`kernel`]: the datapath object, its pinned maps and links, attaching to devices.
//! - [`telemetry`]: metrics, traffic counters, the HTTP endpoint, the status report.
//! - [`agent`]: start-up and the serve loop that runs all of the above.
//! - [`cli`]: what the other commands print.
//!
//! A folder imports only folders above it in this list (`tests/layers.rs` checks it), so
//! everything before [`kernel`] runs and is tested without root. Everything from [`kernel`]
//! on, the Kubernetes watchers and the binary need the `agent` feature (on by default):
//! without it the crate is the pure stages, which the fuzz targets build.

#[cfg(feature = "agent")]
pub mod agent;
#[cfg(feature = "agent")]
pub mod cli;
pub mod entries;
#[cfg(feature = "agent")]
pub mod kernel;
pub mod plan;
pub mod reconcile;
pub mod source;
#[cfg(feature = "agent")]
pub mod telemetry;
