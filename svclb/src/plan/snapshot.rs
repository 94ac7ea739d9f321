//! The planner's input: every object a source holds now. Each source (the manifests
//! directory, the Kubernetes API) fills one; the planner reads it and knows nothing of where it
//! came from.

use std::sync::Arc;

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};

use super::Diagnostic;

/// Everything a source holds now, shared with it: an object that did not change keeps its
/// allocation from one snapshot to the next (the incremental planner tells changed objects by
/// that).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub services: Vec<Arc<Service>>,
    pub slices: Vec<Arc<EndpointSlice>>,
    pub nodes: Vec<Arc<Node>>,
    /// Problems the source found in what it read (a file that does not parse, a duplicate).
    pub diagnostics: Vec<Diagnostic>,
    /// Services and EndpointSlices the plan leaves alone that still have DNS names: those of
    /// another service proxy (`service.kubernetes.io/service-proxy-name`), and headless
    /// Services' slices. The API source reads them only when the DNS responder is on.
    pub dns_services: Vec<Arc<Service>>,
    pub dns_slices: Vec<Arc<EndpointSlice>>,
}
