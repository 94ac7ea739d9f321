//! `svclb list`: the frontends and backends the pinned maps hold.

use std::{net::IpAddr, path::Path};

use anyhow::Result;
use serde::Serialize;
use svclb_common::{
    backend::{BE_F_LOCAL, BE_F_TERMINATING},
    service::{SCOPE_INTERNAL_VIEW, SVC_F_MAGLEV, SVC_F_REJECT},
};

use crate::{
    entries::{MapState, ip_of},
    kernel::maps::Maps,
    plan::Protocol,
};

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ListedBackend {
    pub id: u32,
    pub address: IpAddr,
    pub port: u16,
    pub local: bool,
    pub terminating: bool,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ListedFrontend {
    pub id: u32,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: String,
    /// The entry pods get for an external frontend with a Local policy.
    pub internal_view: bool,
    /// `maglev/M` (Maglev with table size M) or `random`.
    pub pick: String,
    pub affinity_timeout_seconds: u32,
    /// `loadBalancerSourceRanges` enforced on this frontend (empty: any source).
    pub source_ranges: Vec<String>,
    /// `reject` when the frontend has no backend and refuses new connections.
    pub when_empty: Option<String>,
    pub backends: Vec<ListedBackend>,
    /// What the datapath counted for it (absent where the counters could not be read).
    pub flows: Option<Flows>,
}

/// A frontend's new flows, by the path that gave them a backend.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Flows {
    /// New flows the TC programs translated.
    pub tc: u64,
    /// Sockets the socket hooks connected to a backend.
    pub socket_connects: u64,
    /// Datagrams of unconnected sockets the socket hooks sent to a backend.
    pub socket_datagrams: u64,
    /// New flows, connects and datagrams refused or dropped for want of a backend (both paths).
    pub refused: u64,
}

#[derive(Debug, Serialize)]
pub struct Listing {
    pub frontends: Vec<ListedFrontend>,
    pub conntrack_entries: usize,
}

pub fn frontends(state: &MapState) -> Vec<ListedFrontend> {
    let mut out: Vec<ListedFrontend> = state
        .services
        .iter()
        .map(|(key, value)| ListedFrontend {
            id: value.id,
            address: ip_of(&key.addr, key.family),
            port: u16::from_be(key.port_be),
            protocol: Protocol::from_number(key.proto)
                .map_or_else(|| key.proto.to_string(), |p| p.to_string()),
            internal_view: key.scope == SCOPE_INTERNAL_VIEW,
            pick: if value.flags & SVC_F_MAGLEV != 0 {
                format!("maglev/{}", value.maglev_size)
            } else {
                "random".to_owned()
            },
            affinity_timeout_seconds: value.affinity_timeout_s,
            source_ranges: state
                .source_ranges
                .iter()
                .filter(|(id, _)| *id == value.id)
                .map(|(_, net)| net.to_string())
                .collect(),
            when_empty: (value.flags & SVC_F_REJECT != 0).then(|| "reject".to_owned()),
            backends: state
                .slots_of(value)
                .into_iter()
                .filter_map(|id| {
                    let be = state.backends.get(&id)?;
                    Some(ListedBackend {
                        id,
                        address: ip_of(&be.addr, be.family),
                        port: u16::from_be(be.port_be),
                        local: be.flags & BE_F_LOCAL != 0,
                        terminating: be.flags & BE_F_TERMINATING != 0,
                    })
                })
                .collect(),
            flows: None,
        })
        .collect();
    out.sort_by_key(|f| (f.address, f.port, f.protocol.clone()));
    out
}

pub fn read(dir: &Path) -> Result<Listing> {
    let maps = Maps::open_pinned(dir)?;
    let state = maps.read()?;
    let mut frontends = frontends(&state);
    for f in &mut frontends {
        let (tc, socket) = (maps.stats(f.id), maps.sock_stats(f.id));
        f.flows = tc.zip(socket).map(|(tc, socket)| Flows {
            tc: tc.new_flows,
            socket_connects: socket.connects,
            socket_datagrams: socket.datagrams,
            refused: tc.refused + socket.refused,
        });
    }
    Ok(Listing {
        frontends,
        conntrack_entries: maps.conntrack_len(),
    })
}

/// `addr:port`, with IPv6 addresses in brackets.
pub fn endpoint(address: IpAddr, port: u16) -> String {
    match address {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// `addr:port`, with `(local)`, `(terminating)` or both when they apply.
pub fn backend_label(address: IpAddr, port: u16, local: bool, terminating: bool) -> String {
    let tags: Vec<&str> = [(local, "local"), (terminating, "terminating")]
        .into_iter()
        .filter_map(|(set, tag)| set.then_some(tag))
        .collect();
    if tags.is_empty() {
        endpoint(address, port)
    } else {
        format!("{} ({})", endpoint(address, port), tags.join(","))
    }
}

fn backend_cell(b: &ListedBackend) -> String {
    backend_label(b.address, b.port, b.local, b.terminating)
}

/// The flows column: new flows the TC programs translated, then the connects and datagrams
/// the socket hooks gave a backend.
const FLOWS: &str = "FLOWS TC/SOCKET";

pub fn render_table(listing: &Listing) -> String {
    let rows: Vec<[String; 5]> = listing
        .frontends
        .iter()
        .map(|f| {
            let backends = if f.backends.is_empty() {
                match &f.when_empty {
                    Some(w) => format!("(none: {w})"),
                    None => "(none)".to_owned(),
                }
            } else {
                f.backends
                    .iter()
                    .map(backend_cell)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let view = if f.internal_view {
                " (internal view)"
            } else {
                ""
            };
            let mut pick = f.pick.clone();
            if f.affinity_timeout_seconds > 0 {
                pick.push_str(&format!(", affinity {}s", f.affinity_timeout_seconds));
            }
            if !f.source_ranges.is_empty() {
                pick.push_str(&format!(", from {}", f.source_ranges.join(" ")));
            }
            let flows = f.flows.map_or_else(
                || "-".to_owned(),
                |c| format!("{}/{}", c.tc, c.socket_connects + c.socket_datagrams),
            );
            [
                format!("{}/{}{view}", endpoint(f.address, f.port), f.protocol),
                f.id.to_string(),
                pick,
                flows,
                backends,
            ]
        })
        .collect();
    let w0 = rows
        .iter()
        .map(|r| r[0].len())
        .chain(["FRONTEND".len()])
        .max()
        .unwrap_or(0);
    let w1 = rows
        .iter()
        .map(|r| r[1].len())
        .chain(["ID".len()])
        .max()
        .unwrap_or(0);
    let w2 = rows
        .iter()
        .map(|r| r[2].len())
        .chain(["PICK".len()])
        .max()
        .unwrap_or(0);
    let w3 = rows
        .iter()
        .map(|r| r[3].len())
        .chain([FLOWS.len()])
        .max()
        .unwrap_or(0);
    let mut out = format!(
        "{:<w0$}  {:>w1$}  {:<w2$}  {FLOWS:>w3$}  BACKENDS\n",
        "FRONTEND", "ID", "PICK"
    );
    for [frontend, id, pick, flows, backends] in rows {
        out.push_str(&format!(
            "{frontend:<w0$}  {id:>w1$}  {pick:<w2$}  {flows:>w3$}  {backends}\n"
        ));
    }
    out.push_str(&format!(
        "{} frontends, {} conntrack entries\n",
        listing.frontends.len(),
        listing.conntrack_entries
    ));
    out
}
