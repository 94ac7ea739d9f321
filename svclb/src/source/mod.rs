//! Where Services, EndpointSlices and Nodes come from: a manifests directory or the
//! Kubernetes API. Both give the same [`Snapshot`], so everything after them is shared.
//!
//! A source counts what went wrong while it watched (a failed watch request, a lost file
//! event) in the counter it is given; it never reaches up into the agent's metrics.

//! The manifests parser is pure, and builds without the crate's `agent` feature (the fuzz
//! targets use it so); the watchers need it.

#[cfg(feature = "agent")]
pub mod kubernetes;
pub mod manifests;
#[cfg(feature = "agent")]
mod watch;

#[cfg(feature = "agent")]
pub use watch::{Source, SourceConfig};
