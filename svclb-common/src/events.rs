//! Datapath events that belong to no frontend (`SVCLB_EVENTS`, a per-CPU array of counters
//! indexed by event): what the datapath refused, and the state it had to give up. The agent
//! sums the CPUs and exports each as `svclb_datapath_events_total{event}`; `svclb status`
//! lists those that happened.

/// A TCP segment other than a SYN to a frontend, of no tracked flow: dropped (only a SYN opens
/// a flow, so spoofed segments cannot take conntrack entries or SNAT ports).
pub const EV_TCP_WITHOUT_FLOW: u32 = 0;
/// A new flow took over the SNAT port of a half-open one (see `conntrack::reclaimable`).
pub const EV_SNAT_PORT_RECLAIMED: u32 = 1;
/// A new flow found no SNAT port free: dropped (its client retries).
pub const EV_SNAT_PORTS_EXHAUSTED: u32 = 2;
/// A new flow's reply tuple was another live flow's (one client port, two frontends, one
/// backend): the new flow was SNATed to this node instead, so both get their replies right.
pub const EV_REPLY_TUPLE_TAKEN: u32 = 3;
/// A conntrack insert failed: the flow's packet was dropped.
pub const EV_CT_INSERT_FAILED: u32 = 4;

/// Slots of the array: room for events to come without a new layout.
pub const EVENTS_MAX: usize = 32;

/// Every event with its metric label and what it means, for the agent.
pub const EVENTS: [(u32, &str, &str); 5] = [
    (
        EV_TCP_WITHOUT_FLOW,
        "tcp_without_flow",
        "TCP segments other than a SYN to a frontend, of no tracked flow (dropped)",
    ),
    (
        EV_SNAT_PORT_RECLAIMED,
        "snat_port_reclaimed",
        "SNAT ports a new flow took over from a half-open one",
    ),
    (
        EV_SNAT_PORTS_EXHAUSTED,
        "snat_ports_exhausted",
        "new flows dropped for want of a free SNAT port",
    ),
    (
        EV_REPLY_TUPLE_TAKEN,
        "reply_tuple_taken",
        "new flows SNATed because their reply tuple was another live flow's",
    ),
    (
        EV_CT_INSERT_FAILED,
        "conntrack_insert_failed",
        "conntrack inserts that failed (the packet was dropped)",
    ),
];
const _: () = {
    let mut i = 0;
    while i < EVENTS.len() {
        assert!(EVENTS[i].0 as usize == i && i < EVENTS_MAX);
        i += 1;
    }
};
