//! What the agent tells the outside: Prometheus metrics and error counters ([`metrics`]),
//! per-frontend traffic counters read from the datapath at each scrape ([`traffic`]), its
//! HTTP endpoint ([`http`]) and the status report it serves ([`report`]).

pub mod http;
pub mod metrics;
pub mod report;
pub mod traffic;
