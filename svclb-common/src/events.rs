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
/// An unconnected socket sent a datagram to more backends than its storage keeps
/// (`socket::SOCK_PEERS`): the oldest was let go, and a late reply from it shows the
/// backend's address.
pub const EV_SOCK_PEER_DROPPED: u32 = 4;
/// An unconnected socket's storage could not be made: its replies show the backend's
/// address.
pub const EV_SOCK_PEERS_FAILED: u32 = 5;
/// A RST or ICMP unreachable not sent: its source had its share of answers (100 a second
/// after a burst of 200), so a spoofed flood cannot turn this node against its victim.
pub const EV_ANSWERS_LIMITED: u32 = 6;

/// A DNS query to a cluster DNS address answered in place (see `svclb_common::dns`).
pub const EV_DNS_ANSWERED: u32 = 24;
/// ... answered NXDOMAIN: a name under `svc.<zone>` that does not exist.
pub const EV_DNS_NXDOMAIN: u32 = 25;
/// ... answered with its records cut, TC set: the client asks again over TCP.
pub const EV_DNS_TRUNCATED: u32 = 26;
/// ... passed on to the cluster's DNS server: a name not answered here.
pub const EV_DNS_PASSED_NAME: u32 = 27;
/// ... passed on: a query type or class not answered here.
pub const EV_DNS_PASSED_TYPE: u32 = 28;
/// ... passed on: not one plain question (malformed, several questions, another opcode or
/// EDNS version, IP options, IPv6).
pub const EV_DNS_PASSED_FORM: u32 = 29;

/// Slots of the array: room for events to come without a new layout.
pub const EVENTS_MAX: usize = 32;

/// Every event with its metric label and what it means, for the agent.
pub const EVENTS: [(u32, &str, &str); 13] = [
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
        EV_SOCK_PEER_DROPPED,
        "socket_peer_dropped",
        "backends an unconnected socket sent to that its storage let go for a newer one",
    ),
    (
        EV_SOCK_PEERS_FAILED,
        "socket_peers_failed",
        "unconnected sockets whose storage of peers could not be made",
    ),
    (
        EV_ANSWERS_LIMITED,
        "answers_limited",
        "RSTs and ICMP unreachables not sent because their source had its share (dropped instead)",
    ),
    (
        EV_DNS_ANSWERED,
        "dns_answered",
        "DNS queries to a cluster DNS address answered in place",
    ),
    (
        EV_DNS_NXDOMAIN,
        "dns_nxdomain",
        "DNS queries answered NXDOMAIN in place (names under svc.<zone> that do not exist)",
    ),
    (
        EV_DNS_TRUNCATED,
        "dns_truncated",
        "DNS queries answered in place with records cut and TC set (the client retries over TCP)",
    ),
    (
        EV_DNS_PASSED_NAME,
        "dns_passed_name",
        "DNS queries passed to the cluster's DNS server: names not answered in place",
    ),
    (
        EV_DNS_PASSED_TYPE,
        "dns_passed_type",
        "DNS queries passed to the cluster's DNS server: types or classes not answered in place",
    ),
    (
        EV_DNS_PASSED_FORM,
        "dns_passed_form",
        "DNS queries passed to the cluster's DNS server: not one plain question",
    ),
];

/// The flow maps the datapath fills are LRU hashes: when one is full, an insert evicts the
/// least recently used entry, silently. So each has its bookkeeping in this array, four
/// counters from its base ([`LRU_MAPS`]): entries the datapath inserted (new keys only),
/// deleted, failed to insert, and entries the agent deleted (a slot the agent alone
/// writes). What the map lost to eviction is then what went in, less what was deleted and
/// what it holds now (which the agent counts by walking it).
pub const LRU_INSERTED: u32 = 0;
pub const LRU_DELETED: u32 = 1;
pub const LRU_FAILED: u32 = 2;
pub const LRU_AGENT_DELETED: u32 = 3;
pub const LRU_CT: u32 = 8;
pub const LRU_AFFINITY: u32 = 12;
pub const LRU_FRAGS: u32 = 16;
pub const LRU_SOCK_REVERSE: u32 = 20;

/// Each LRU map's bookkeeping base, by map name.
pub const LRU_MAPS: [(u32, &str); 4] = [
    (LRU_CT, crate::limits::MAP_CT),
    (LRU_AFFINITY, crate::limits::MAP_AFFINITY),
    (LRU_FRAGS, crate::limits::MAP_FRAGS),
    (LRU_SOCK_REVERSE, crate::limits::MAP_SOCK_REVERSE),
];

const _: () = {
    // Events in increasing slots, none in an LRU map's bookkeeping.
    let mut i = 0;
    while i < EVENTS.len() {
        let slot = EVENTS[i].0;
        assert!((slot as usize) < EVENTS_MAX && (i == 0 || slot > EVENTS[i - 1].0));
        let mut m = 0;
        while m < LRU_MAPS.len() {
            assert!(slot < LRU_MAPS[m].0 || slot >= LRU_MAPS[m].0 + 4);
            m += 1;
        }
        i += 1;
    }
    let mut m = 0;
    while m < LRU_MAPS.len() {
        assert!(LRU_MAPS[m].0 as usize + 4 <= EVENTS_MAX);
        assert!(m == 0 || LRU_MAPS[m].0 >= LRU_MAPS[m - 1].0 + 4);
        m += 1;
    }
};
