//! svclb: a Kubernetes Service load balancer in the Linux kernel.
//!
//! The agent turns Services and EndpointSlices into BPF map entries:
//! sources ([`manifest`]) -> [`model`] -> [`plan`] -> [`mapstate`] -> [`reconcile`] -> maps.
//! Everything before the maps is pure and unit-tested without root.

pub mod agent;
pub mod delta;
pub mod devices;
pub mod diag;
pub mod ebpf;
pub mod healthcheck;
pub mod http;
pub mod kernel_maps;
pub mod kube_source;
pub mod list;
pub mod loader;
pub mod maglev_cmd;
pub mod manifest;
pub mod mapstate;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod plan_output;
pub mod purge;
pub mod reconcile;
pub mod source;
pub mod status;
pub mod sweeper;
pub mod traffic;
