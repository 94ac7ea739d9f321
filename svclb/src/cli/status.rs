//! `svclb status`: the screen to read first. What the agent says of itself (from its
//! `/status` endpoint: version, node, source, last sync), what the kernel holds (the pinned
//! links with their program ids, the maps' fill), and warnings. It works without an agent,
//! from the pins alone, and says so.

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};
use aya::{
    maps::MapData,
    programs::links::{FdLink, PinnedLink},
};
use serde::Serialize;
use svclb_common::http;

use crate::{
    entries::MapState,
    kernel::{
        maps::Maps,
        pins::{LINKS_DIR, PinName, pins},
    },
    telemetry::{report::AgentStatus, traffic::device_name},
};

/// A map this full gets a warning.
const FULL_WARNING_PERCENT: f64 = 90.0;

/// One pinned link.
#[derive(Debug, Serialize)]
pub struct LinkStatus {
    pub pin: String,
    /// `tc ingress`, `xdp (<mode>)` or `cgroup <hook>` (a socket hook).
    pub hook: String,
    pub ifindex: u32,
    /// The cgroup id a socket hook is attached to.
    pub cgroup_id: Option<u64>,
    /// The device's name in this network namespace (`None` when no device has the index here).
    pub device: Option<String>,
    pub link_id: u32,
    pub program_id: u32,
}

/// What the XDP program did with an uplink's packets.
#[derive(Debug, Serialize)]
pub struct UplinkXdp {
    pub device: String,
    pub ifindex: u32,
    /// Translated and sent out by the XDP program itself.
    pub finished: u64,
    /// Passed on to the stack and the TC program.
    pub passed: u64,
    pub dropped: u64,
}

#[derive(Debug, Serialize)]
pub struct MapFill {
    pub map: String,
    pub entries: usize,
    pub capacity: u32,
    /// For an LRU flow map: entries lost to eviction, and inserts that failed, since the map
    /// was made.
    pub evicted: Option<u64>,
    pub insert_failures: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct Status {
    /// This command's version (the agent's is in `agent`).
    pub version: String,
    pub bpffs_dir: String,
    pub agent: Option<AgentStatus>,
    /// Why the agent did not answer.
    pub agent_error: Option<String>,
    pub links: Vec<LinkStatus>,
    pub frontends: usize,
    pub backends: usize,
    /// Of those, the IPv6 ones.
    pub frontends_ipv6: usize,
    pub backends_ipv6: usize,
    pub maps: Vec<MapFill>,
    /// Per uplink, since its counters began.
    pub xdp: Vec<UplinkXdp>,
    /// The datapath events that happened (see `svclb_common::events`), by label, since the
    /// maps were made.
    pub events: Vec<(String, u64)>,
    pub warnings: Vec<String>,
}

/// GETs `path` from the agent at `addr`: the body of a 200 answer.
fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let response = http::get_blocking(addr, path, Duration::from_secs(2))
        .with_context(|| format!("asking the agent at {addr}"))?;
    if response.status != 200 {
        bail!(
            "the agent at {addr} answered {} for {path}",
            response.status
        );
    }
    Ok(response.body)
}

fn links(dir: &Path) -> Vec<LinkStatus> {
    let mut out = Vec::new();
    for path in pins(&dir.join(LINKS_DIR)) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let PinName {
            hook,
            ifindex,
            cgroup,
        } = PinName::parse(&name);
        let info = PinnedLink::from_pin(&path)
            .ok()
            .and_then(|pinned| FdLink::from(pinned).info().ok());
        out.push(LinkStatus {
            hook,
            device: cgroup
                .is_none()
                .then(|| nix::net::if_::if_indextoname(ifindex).ok())
                .flatten()
                .map(|n| n.to_string_lossy().into_owned()),
            ifindex,
            cgroup_id: cgroup,
            link_id: info.as_ref().map_or(0, aya::programs::links::LinkInfo::id),
            program_id: info
                .as_ref()
                .map_or(0, aya::programs::links::LinkInfo::program_id),
            pin: name,
        });
    }
    out
}

fn capacity(dir: &Path, map: &str) -> u32 {
    MapData::from_pin(dir.join(map))
        .ok()
        .and_then(|data| data.info().ok())
        .map_or(0, |info| info.max_entries())
}

/// What the pinned maps tell: entries, fill, XDP counters and datapath events.
#[derive(Default)]
struct Pinned {
    state: MapState,
    fills: Vec<MapFill>,
    xdp: Vec<UplinkXdp>,
    events: Vec<(String, u64)>,
}

/// Reads the pinned maps (an error, with why, when nothing is pinned in `dir`).
fn pinned(dir: &Path) -> Result<Pinned> {
    let maps = Maps::open_pinned(dir).with_context(|| {
        format!(
            "nothing pinned in {} (is the agent running with --bpffs-dir {}?)",
            dir.display(),
            dir.display()
        )
    })?;
    let state = maps.read()?;
    let planned = state.fills().into_iter().map(|(map, entries)| MapFill {
        map: map.to_owned(),
        entries,
        capacity: capacity(dir, map),
        evicted: None,
        insert_failures: None,
    });
    let flows = maps
        .lru_fills(maps.conntrack_len())
        .into_iter()
        .map(|fill| MapFill {
            evicted: Some(fill.evicted()),
            insert_failures: Some(fill.failed),
            map: fill.map,
            entries: fill.entries,
            capacity: fill.capacity,
        });
    let fills = planned.chain(flows).collect();
    let xdp = maps
        .xdp_stats()
        .into_iter()
        .map(|(ifindex, stats)| UplinkXdp {
            device: device_name(ifindex),
            ifindex,
            finished: stats.finished,
            passed: stats.passed,
            dropped: stats.dropped,
        })
        .collect();
    let events = maps
        .events()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(event, n)| (event.to_owned(), n))
        .collect();
    Ok(Pinned {
        state,
        fills,
        xdp,
        events,
    })
}

/// Gathers the status of the agent at `agent` and of the datapath pinned in `dir`. Nothing
/// pinned is an error unless the agent answers (its pins may be where this process cannot
/// see them: a bpffs of its own mount namespace).
pub fn read(dir: &Path, agent: SocketAddr) -> Result<Status> {
    let (agent_status, agent_error) = match http_get(agent, "/status")
        .and_then(|body| serde_json::from_str::<AgentStatus>(&body).context("the agent's /status"))
    {
        Ok(status) => (Some(status), None),
        Err(err) => (None, Some(format!("{err:#}"))),
    };
    let (pinned, unpinned) = match pinned(dir) {
        Ok(pinned) => (pinned, None),
        Err(err) if agent_status.is_some() => (Pinned::default(), Some(err)),
        Err(err) => return Err(err),
    };
    let Pinned {
        state,
        fills: maps,
        xdp,
        events,
    } = pinned;
    let links = links(dir);
    let mut warnings = warnings(
        agent,
        agent_status.as_ref(),
        agent_error.as_deref(),
        &maps,
        &links,
    );
    if let Some(err) = unpinned {
        warnings.insert(0, format!("{err:#}: the maps cannot be read from here"));
    }
    Ok(Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        bpffs_dir: dir.display().to_string(),
        agent: agent_status,
        agent_error,
        links,
        frontends: state.services.len(),
        backends: state.backends.len(),
        frontends_ipv6: state
            .services
            .keys()
            .filter(|k| k.family == svclb_common::FAMILY_V6)
            .count(),
        backends_ipv6: state
            .backends
            .values()
            .filter(|b| b.family == svclb_common::FAMILY_V6)
            .count(),
        maps,
        xdp,
        events,
        warnings,
    })
}

/// What `svclb status` warns of: an agent that does not answer or is not ready, frontends not
/// programmed, write errors, devices attached in part, skipped objects, maps nearly full,
/// links missing or of devices this namespace lacks.
fn warnings(
    agent: SocketAddr,
    agent_status: Option<&AgentStatus>,
    agent_error: Option<&str>,
    maps: &[MapFill],
    links: &[LinkStatus],
) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Some(err) = agent_error {
        warnings.push(format!(
            "no agent answers at {agent} ({err}); the datapath serves what the maps hold"
        ));
    }
    if let Some(a) = agent_status {
        if a.private_pins {
            warnings.push(
                "the agent mounted its own bpffs in a mount namespace of its own (as under `ip \
                 netns exec`): its pinned maps and links vanish when it exits, and a restart \
                 starts from nothing"
                    .to_owned(),
            );
        }
        if !a.ready {
            warnings.push("the agent has not finished its first sync".to_owned());
        }
        if a.frontends_not_programmed > 0 {
            warnings.push(format!(
                "{} planned frontends are not programmed (a full map: see the agent log)",
                a.frontends_not_programmed
            ));
        }
        if a.last_sync.as_ref().is_some_and(|s| s.errors > 0) {
            warnings.push("the last sync had map write errors; it is retried".to_owned());
        }
        warnings.extend(a.device_problems.iter().cloned());
        if a.objects_skipped > 0 {
            warnings.push(format!(
                "{} objects (or parts) are skipped by validation (see the agent log)",
                a.objects_skipped
            ));
        }
    }
    for fill in maps {
        let percent = percent(fill.entries, fill.capacity);
        if percent >= FULL_WARNING_PERCENT {
            warnings.push(format!(
                "map {} is {percent:.0}% full ({} of {})",
                fill.map, fill.entries, fill.capacity
            ));
        }
        if let Some(evicted) = fill.evicted.filter(|n| *n > 0) {
            warnings.push(format!(
                "map {} lost {evicted} entries to eviction: it is too small for this node's flows",
                fill.map
            ));
        }
    }
    if links.is_empty() {
        warnings.push("no pinned links: the datapath is not attached".to_owned());
    }
    for link in links
        .iter()
        .filter(|l| l.device.is_none() && l.cgroup_id.is_none())
    {
        warnings.push(format!(
            "link {} is for interface index {}, which this network namespace lacks",
            link.pin, link.ifindex
        ));
    }
    warnings
}

fn percent(entries: usize, capacity: u32) -> f64 {
    if capacity == 0 {
        0.0
    } else {
        entries as f64 * 100.0 / f64::from(capacity)
    }
}

fn ago(now_ms: u64, then_ms: u64) -> String {
    let s = now_ms.saturating_sub(then_ms) as f64 / 1e3;
    if s < 120.0 {
        format!("{s:.1}s ago")
    } else {
        format!("{:.0}m ago", s / 60.0)
    }
}

pub fn render_table(status: &Status, now_ms: u64) -> String {
    let mut out = String::new();
    match &status.agent {
        Some(a) => {
            out.push_str(&format!(
                "agent      svclb {} on node {} (pid {}), {}, reading {}\n",
                a.version,
                a.node,
                a.pid,
                if a.ready { "ready" } else { "not ready" },
                a.source
            ));
            match &a.last_sync {
                Some(s) => out.push_str(&format!(
                    "last sync  {} took {:.1} ms ({}, {} writes, {} errors); {} sync{} since the start {}\n",
                    ago(now_ms, s.at_unix_ms),
                    s.duration_ms,
                    if s.full { "full" } else { "changes only" },
                    s.writes,
                    s.errors,
                    a.syncs,
                    if a.syncs == 1 { "" } else { "s" },
                    ago(now_ms, a.started_unix * 1000),
                )),
                None => out.push_str("last sync  none yet\n"),
            }
            if !a.nodeport_origin.is_empty() {
                let addresses = if a.nodeport_addresses.is_empty() {
                    "none".to_owned()
                } else {
                    a.nodeport_addresses.join(", ")
                };
                out.push_str(&format!(
                    "nodeports  {addresses} ({})\n",
                    a.nodeport_origin.join("; ")
                ));
            }
        }
        None => out.push_str("agent      not reachable\n"),
    }
    if let Some(socket_lb) = status.agent.as_ref().map(|a| &a.socket_lb) {
        out.push_str(&format!(
            "socket-lb  {}\n",
            socket_lb
                .as_deref()
                .unwrap_or("off (the TC programs serve every client)")
        ));
    }
    // Families are told apart once there is IPv6 at all.
    let split = |all: usize, v6: usize| {
        if status.frontends_ipv6 + status.backends_ipv6 == 0 {
            String::new()
        } else {
            format!(" ({} IPv4, {v6} IPv6)", all - v6)
        }
    };
    out.push_str(&format!(
        "datapath   {} frontends{}, {} backends{}, pinned in {}\n",
        status.frontends,
        split(status.frontends, status.frontends_ipv6),
        status.backends,
        split(status.backends, status.backends_ipv6),
        status.bpffs_dir
    ));
    for uplink in &status.xdp {
        out.push_str(&format!(
            "xdp        {}: {} finished in XDP, {} passed to TC, {} dropped\n",
            uplink.device, uplink.finished, uplink.passed, uplink.dropped
        ));
    }
    if !status.events.is_empty() {
        let events: Vec<String> = status
            .events
            .iter()
            .map(|(event, n)| format!("{event} {n}"))
            .collect();
        out.push_str(&format!("events     {}\n", events.join(", ")));
    }
    out.push_str("\nDEVICE          HOOK                    LINK  PROGRAM\n");
    for link in &status.links {
        let device = match (&link.device, link.cgroup_id) {
            (Some(device), _) => device.clone(),
            (None, Some(cgroup)) => format!("cgroup:{cgroup}"),
            (None, None) => format!("#{}", link.ifindex),
        };
        out.push_str(&format!(
            "{device:<14}  {:<20}  {:>6}  {}\n",
            link.hook, link.link_id, link.program_id
        ));
    }
    out.push_str("\nMAP                  ENTRIES  CAPACITY   FILL  EVICTED  FAILED\n");
    for fill in &status.maps {
        let count = |n: Option<u64>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
        out.push_str(&format!(
            "{:<19}  {:>7}  {:>8}  {:>4.0}%  {:>7}  {:>6}\n",
            fill.map,
            fill.entries,
            fill.capacity,
            percent(fill.entries, fill.capacity),
            count(fill.evicted),
            count(fill.insert_failures)
        ));
    }
    if status.warnings.is_empty() {
        out.push_str("\nno warnings\n");
    } else {
        out.push_str("\nwarnings:\n");
        for warning in &status.warnings {
            out.push_str(&format!("  - {warning}\n"));
        }
    }
    out
}

#[cfg(test)]
#[path = "tests/status_tests.rs"]
mod tests;
