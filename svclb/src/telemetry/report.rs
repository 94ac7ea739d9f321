//! What the agent says of itself at `/status`: version, node, source, devices, last sync.
//! The agent fills it, the endpoint serves it, `svclb status` reads it.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the agent reports of itself at `/status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct AgentStatus {
    pub version: String,
    pub node: String,
    pub source: String,
    pub pid: u32,
    /// Seconds since the Unix epoch.
    pub started_unix: u64,
    /// The first full sync is done (what `/healthz` says).
    pub ready: bool,
    pub devices: Vec<String>,
    /// Devices attached only in part, each with what is missing and why.
    #[serde(default)]
    pub device_problems: Vec<String>,
    pub syncs: u64,
    pub last_sync: Option<LastSync>,
    pub frontends_not_programmed: usize,
    pub objects_skipped: usize,
    /// The addresses NodePorts listen on, and where each family's came from (the Node
    /// object, the uplinks, none).
    #[serde(default)]
    pub nodeport_addresses: Vec<String>,
    #[serde(default)]
    pub nodeport_origin: Vec<String>,
    /// The agent mounted its own bpf filesystem in a mount namespace of its own: its pins
    /// vanish when it exits, so a restart starts from nothing.
    #[serde(default)]
    pub private_pins: bool,
    /// Socket-level load balancing: its cgroup and hooks (`None`: off).
    #[serde(default)]
    pub socket_lb: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LastSync {
    /// When it ended, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    pub duration_ms: f64,
    /// It compared everything (the first sync, a full map, a retry) rather than the change.
    pub full: bool,
    pub writes: usize,
    pub errors: usize,
}
