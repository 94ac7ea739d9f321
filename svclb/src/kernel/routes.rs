//! The route epoch (`SVCLB_ROUTE_EPOCH`). The XDP program caches in each flow's conntrack
//! entry the route its packets leave by (`svclb_common::CtRoute`), and trusts it only in the
//! epoch it was found in: the agent bumps the epoch on the route, neighbour and link
//! notifications that may change a route ([`Watch`]), so a changed next hop or MAC address is
//! looked up again by the next packet.
//! Notifications lost (a netlink buffer overrun) or an agent not running cost at most the
//! cache's age bound (about 5 s).

use std::{collections::HashMap, net::IpAddr};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, MapData},
};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
};
use rtnetlink::MulticastGroup;
use svclb_common::limits::MAP_ROUTE_EPOCH;

/// The notifications the agent subscribes to for the epoch (links are subscribed to anyway,
/// for attaching).
pub const GROUPS: [MulticastGroup; 3] = [
    MulticastGroup::Ipv4Route,
    MulticastGroup::Ipv6Route,
    MulticastGroup::Neigh,
];

/// The agent's handle on the epoch.
pub struct RouteEpoch {
    map: Array<MapData, u32>,
    value: u32,
}

impl RouteEpoch {
    /// Takes the map from the loaded object, and bumps the epoch: routes cached before this
    /// start (the map is pinned) may predate changes nobody was told of.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let map = ebpf
            .take_map(MAP_ROUTE_EPOCH)
            .with_context(|| format!("the datapath object has no map {MAP_ROUTE_EPOCH}"))?;
        let map: Array<MapData, u32> =
            Array::try_from(map).with_context(|| format!("map {MAP_ROUTE_EPOCH}"))?;
        let value = map
            .get(&0, 0)
            .with_context(|| format!("reading {MAP_ROUTE_EPOCH}"))?;
        let mut epoch = Self { map, value };
        epoch.bump()?;
        Ok(epoch)
    }

    /// Starts a new epoch.
    pub fn bump(&mut self) -> Result<()> {
        let next = self.value.wrapping_add(1);
        self.map
            .set(0, &next, 0)
            .with_context(|| format!("writing {MAP_ROUTE_EPOCH}"))?;
        self.value = next;
        Ok(())
    }
}

/// What the agent has been told of neighbours, to tell a change of route from a neighbour
/// merely being confirmed: the MAC address of each valid one, by device and address.
#[derive(Default)]
pub struct Watch {
    neighbours: HashMap<(u32, IpAddr), Vec<u8>>,
}

impl Watch {
    /// Whether a notification may change a route a flow's packets leave by: a route, a link
    /// (its MAC address, or gone), an IP neighbour that is new, gone, no longer valid or has
    /// another MAC address. A neighbour moving between valid states with the same MAC address
    /// (reachable, stale, delay, probe: every few seconds for one in use) changes nothing,
    /// nor does a bridge's forwarding entry.
    pub fn invalidates(&mut self, message: &NetlinkMessage<RouteNetlinkMessage>) -> bool {
        use RouteNetlinkMessage as M;
        match &message.payload {
            NetlinkPayload::InnerMessage(M::NewNeighbour(n)) => self.neighbour(n, false),
            NetlinkPayload::InnerMessage(M::DelNeighbour(n)) => self.neighbour(n, true),
            NetlinkPayload::InnerMessage(
                M::NewRoute(_) | M::DelRoute(_) | M::NewLink(_) | M::DelLink(_),
            ) => true,
            // Notifications were lost (the socket's buffer ran over): any may have changed.
            NetlinkPayload::Overrun(_) => true,
            _ => false,
        }
    }

    fn neighbour(&mut self, message: &NeighbourMessage, deleted: bool) -> bool {
        let Some(addr) = message.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
            _ => None,
        }) else {
            return false;
        };
        let key = (message.header.ifindex, addr);
        let mac = message.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(mac) => Some(mac.clone()),
            _ => None,
        });
        match mac.filter(|_| !deleted && valid(message.header.state)) {
            Some(mac) => self.neighbours.insert(key, mac.clone()) != Some(mac),
            None => {
                self.neighbours.remove(&key);
                true
            }
        }
    }
}

/// Whether a neighbour in `state` has a MAC address the FIB hands out (`NUD_VALID`).
fn valid(state: NeighbourState) -> bool {
    use NeighbourState as S;
    matches!(
        state,
        S::Reachable | S::Stale | S::Delay | S::Probe | S::Noarp | S::Permanent
    )
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
    use netlink_packet_route::{
        AddressFamily, RouteNetlinkMessage,
        address::AddressMessage,
        link::LinkMessage,
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
        route::RouteMessage,
    };

    use super::Watch;

    fn message(inner: RouteNetlinkMessage) -> NetlinkMessage<RouteNetlinkMessage> {
        NetlinkMessage::new(Default::default(), NetlinkPayload::InnerMessage(inner))
    }

    fn neighbour(state: NeighbourState, addr: Option<[u8; 4]>, mac: u8) -> NeighbourMessage {
        let mut n = NeighbourMessage::default();
        n.header.family = AddressFamily::Inet;
        n.header.ifindex = 3;
        n.header.state = state;
        if let Some(addr) = addr {
            n.attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                    addr.into(),
                )));
        }
        n.attributes.push(NeighbourAttribute::LinkLayerAddress(vec![
            2, 0, 0, 0, 0, mac,
        ]));
        n
    }

    #[test]
    fn routes_and_links_start_a_new_epoch() {
        use RouteNetlinkMessage as M;
        let mut watch = Watch::default();
        for inner in [
            M::NewRoute(RouteMessage::default()),
            M::DelRoute(RouteMessage::default()),
            M::NewLink(LinkMessage::default()),
            M::DelLink(LinkMessage::default()),
        ] {
            let what = format!("{inner:?}");
            assert!(watch.invalidates(&message(inner)), "{what}");
        }
        assert!(!watch.invalidates(&message(M::NewAddress(AddressMessage::default()))));
    }

    #[test]
    fn a_neighbour_starts_a_new_epoch_when_its_mac_address_changes_or_it_goes() {
        use NeighbourState as S;
        use RouteNetlinkMessage as M;
        let mut watch = Watch::default();
        let mut told = |m: M| watch.invalidates(&message(m));
        let node = Some([172, 31, 0, 12]);
        assert!(
            told(M::NewNeighbour(neighbour(S::Reachable, node, 12))),
            "new"
        );
        assert!(
            !told(M::NewNeighbour(neighbour(S::Stale, node, 12))),
            "aged"
        );
        assert!(
            !told(M::NewNeighbour(neighbour(S::Reachable, node, 12))),
            "confirmed"
        );
        assert!(
            told(M::NewNeighbour(neighbour(S::Reachable, node, 13))),
            "moved"
        );
        assert!(
            told(M::NewNeighbour(neighbour(S::Failed, node, 13))),
            "failed"
        );
        assert!(
            told(M::NewNeighbour(neighbour(S::Reachable, node, 13))),
            "back"
        );
        assert!(
            told(M::DelNeighbour(neighbour(S::Reachable, node, 13))),
            "deleted"
        );
        assert!(
            !told(M::NewNeighbour(neighbour(S::Reachable, None, 14))),
            "a bridge's forwarding entry"
        );
    }
}
