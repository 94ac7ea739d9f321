//! The way the host's own DNS queries reach the responder: a veth pair in the host's network
//! namespace, as Cilium's `cilium_host`/`cilium_net`. The cluster DNS addresses are routed
//! out of one end ([`HOST_END`], with a permanent neighbour entry per address that names the
//! other end's MAC address), so a host process's query arrives on the other end
//! ([`PROGRAM_END`]) as a pod's query arrives on its device, and the pod program answers it
//! there or sends it on through the service path. An answer goes back out of
//! [`PROGRAM_END`], arrives on [`HOST_END`] from the cluster DNS address, and is delivered
//! to the socket that asked.
//!
//! A query passed on leaves [`PROGRAM_END`] with a source address of this node, which the
//! stack drops as martian unless the device accepts local sources (`accept_local`), and with
//! no reverse-path filter on it (`rp_filter`; the effective value is the larger of the
//! device's and `all`'s, so a node with `net.ipv4.conf.all.rp_filter=1` drops them, as it
//! drops the TC path's replies: [`strict_reverse_path_filter`] says so). Both are set over
//! rtnetlink, as a container's `/proc/sys` is read-only.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context as _, Result, bail};
use futures::TryStreamExt as _;
use netlink_packet_core::{
    DefaultNla, Emitable as _, NLA_F_NESTED, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{AfSpecInet, AfSpecUnspec, LinkAttribute, LinkMessage},
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope},
};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// The end the host's queries leave by.
pub const HOST_END: &str = "svclb_host";
/// The end the pod program is attached to, where the host's queries arrive.
pub const PROGRAM_END: &str = "svclb_net";

/// The device named `name`, if there is one.
async fn link(handle: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        Err(rtnetlink::Error::NetlinkError(err)) if err.raw_code() == -libc::ENODEV => Ok(None),
        Err(err) => Err(err).with_context(|| format!("looking up device {name}")),
    }
}

fn mac_of(link: &LinkMessage) -> Option<Vec<u8>> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::Address(mac) => Some(mac.clone()),
        _ => None,
    })
}

/// The pair, made unless it is there (an earlier run's is kept, with its routes, so the
/// host's queries are answered across a restart), both ends up and [`PROGRAM_END`] set to
/// take the host's own source addresses.
pub async fn create(handle: &Handle) -> Result<()> {
    if link(handle, HOST_END).await?.is_none() || link(handle, PROGRAM_END).await?.is_none() {
        remove(handle).await?;
        handle
            .link()
            .add(LinkVeth::new(HOST_END, PROGRAM_END).build())
            .execute()
            .await
            .with_context(|| format!("creating the veth pair {HOST_END}, {PROGRAM_END}"))?;
    }
    let settings = ipv4_settings(&[(DEVCONF_RP_FILTER, 0), (DEVCONF_ACCEPT_LOCAL, 1)]);
    for (name, extra) in [(HOST_END, None), (PROGRAM_END, Some(settings))] {
        let mut change = LinkUnspec::new_with_name(name).up();
        if let Some(attribute) = extra {
            change = change.append_extra_attribute(attribute);
        }
        handle
            .link()
            .change(change.build())
            .execute()
            .await
            .with_context(|| format!("bringing {name} up"))?;
    }
    Ok(())
}

/// `IPV4_DEVCONF_RP_FILTER` and `IPV4_DEVCONF_ACCEPT_LOCAL` (linux/ip.h).
const DEVCONF_RP_FILTER: u16 = 8;
const DEVCONF_ACCEPT_LOCAL: u16 = 23;
/// `IFLA_INET_CONF` (linux/if_link.h).
const IFLA_INET_CONF: u16 = 1;

/// A device's IPv4 settings to change, as `IFLA_AF_SPEC` carries them: what
/// `/proc/sys/net/ipv4/conf/<device>/` holds, set over rtnetlink because a container's
/// `/proc/sys` is read-only. Each is an `IPV4_DEVCONF_*` and its value.
fn ipv4_settings(settings: &[(u16, u32)]) -> LinkAttribute {
    let nlas: Vec<DefaultNla> = settings
        .iter()
        .map(|&(kind, value)| DefaultNla::new(kind, value.to_ne_bytes().to_vec()))
        .collect();
    let mut nested = vec![0; nlas.as_slice().buffer_len()];
    nlas.as_slice().emit(&mut nested);
    let conf = DefaultNla::new(IFLA_INET_CONF | NLA_F_NESTED, nested);
    LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![AfSpecInet::Other(conf)])])
}

/// Routes `servers` out of [`HOST_END`], each with a permanent neighbour entry naming
/// [`PROGRAM_END`]'s MAC address; routes to other addresses there (an earlier run's
/// servers) are deleted.
pub async fn route(handle: &Handle, servers: &[IpAddr]) -> Result<()> {
    let host = link(handle, HOST_END)
        .await?
        .with_context(|| format!("device {HOST_END} is gone"))?;
    let peer = link(handle, PROGRAM_END)
        .await?
        .with_context(|| format!("device {PROGRAM_END} is gone"))?;
    let index = host.header.index;
    let Some(mac) = mac_of(&peer) else {
        bail!("device {PROGRAM_END} has no MAC address");
    };
    for &server in servers {
        handle
            .neighbours()
            .add(index, server)
            .link_layer_address(&mac)
            .replace()
            .execute()
            .await
            .with_context(|| format!("adding {server}'s neighbour entry on {HOST_END}"))?;
        handle
            .route()
            .add(route_to(server, index)?)
            .replace()
            .execute()
            .await
            .with_context(|| format!("routing {server} out of {HOST_END}"))?;
    }
    for stale in routes_out_of(handle, index).await? {
        if servers.contains(&stale) {
            continue;
        }
        match handle.route().del(route_to(stale, index)?).execute().await {
            // Gone meanwhile.
            Err(rtnetlink::Error::NetlinkError(err)) if err.raw_code() == -libc::ESRCH => {}
            done => {
                done.with_context(|| format!("deleting the route to {stale} out of {HOST_END}"))?
            }
        }
    }
    Ok(())
}

/// The host route to `server` out of device `index`.
fn route_to(server: IpAddr, index: u32) -> Result<RouteMessage> {
    let prefix = if server.is_ipv4() { 32 } else { 128 };
    Ok(RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(server, prefix)?
        .output_interface(index)
        .scope(RouteScope::Link)
        .build())
}

/// The host routes (/32, /128) of the main table out of device `index`, sorted (a kernel
/// without IPv6 answers the IPv6 dump with every family's routes).
async fn routes_out_of(handle: &Handle, index: u32) -> Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for query in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        let family = query.header.address_family;
        let mut routes = handle.route().get(query).execute();
        while let Some(route) = routes
            .try_next()
            .await
            .with_context(|| format!("listing the {family:?} routes"))?
        {
            if route.header.address_family == family
                && let Some(addr) = host_route_out_of(&route, index)
            {
                out.push(addr);
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn host_route_out_of(route: &RouteMessage, index: u32) -> Option<IpAddr> {
    let full = match route.header.address_family {
        AddressFamily::Inet => 32,
        AddressFamily::Inet6 => 128,
        _ => return None,
    };
    let attrs = &route.attributes;
    let out_of = attrs.contains(&RouteAttribute::Oif(index));
    if route.header.table != RouteHeader::RT_TABLE_MAIN
        || route.header.destination_prefix_length != full
        || !out_of
    {
        return None;
    }
    attrs.iter().find_map(|attr| match attr {
        RouteAttribute::Destination(RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        RouteAttribute::Destination(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    })
}

/// Deletes the pair (its routes and neighbour entries go with it); `false`: there was none.
pub async fn remove(handle: &Handle) -> Result<bool> {
    for name in [HOST_END, PROGRAM_END] {
        if let Some(link) = link(handle, name).await? {
            handle
                .link()
                .del(link.header.index)
                .execute()
                .await
                .with_context(|| format!("deleting device {name}"))?;
            // Its peer went with it.
            return Ok(true);
        }
    }
    Ok(false)
}

/// [`remove`] on a connection of its own (for `svclb agent --cleanup`).
pub async fn remove_once() -> Result<bool> {
    let (connection, handle, _) =
        rtnetlink::new_connection().context("opening an rtnetlink socket")?;
    tokio::spawn(connection);
    remove(&handle).await
}

/// The pair's device a link message says was deleted, if it is one of them.
pub fn deleted(message: &NetlinkMessage<RouteNetlinkMessage>) -> Option<&str> {
    let NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) = &message.payload else {
        return None;
    };
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::IfName(name) if name == HOST_END || name == PROGRAM_END => {
            Some(name.as_str())
        }
        _ => None,
    })
}

/// Whether `net.ipv4.conf.all.rp_filter` is strict (1), which drops the host's queries that
/// pass on (see the module's notes).
pub fn strict_reverse_path_filter() -> bool {
    fs::read_to_string("/proc/sys/net/ipv4/conf/all/rp_filter").is_ok_and(|v| v.trim() == "1")
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{Nla as _, NlaBuffer, NlasIterator};

    use super::*;

    #[test]
    fn settings_nest_each_value_under_inet_conf() {
        let LinkAttribute::AfSpecUnspec(specs) = ipv4_settings(&[(8, 0), (23, 1)]) else {
            panic!("not IFLA_AF_SPEC");
        };
        let [AfSpecUnspec::Inet(inet)] = &specs[..] else {
            panic!("not AF_INET: {specs:?}");
        };
        let [AfSpecInet::Other(conf)] = &inet[..] else {
            panic!("not one IFLA_INET_CONF: {inet:?}");
        };
        assert_eq!(conf.kind(), IFLA_INET_CONF | NLA_F_NESTED);
        let mut value = vec![0; conf.value_len()];
        conf.emit_value(&mut value);
        let entries: Vec<(u16, u32)> = NlasIterator::new(&value[..])
            .map(|nla| {
                let nla: NlaBuffer<&[u8]> = nla.unwrap();
                let bytes: [u8; 4] = nla.value().try_into().unwrap();
                (nla.kind(), u32::from_ne_bytes(bytes))
            })
            .collect();
        // A 0 is sent too: rp_filter is turned off, not left alone.
        assert_eq!(entries, [(8, 0), (23, 1)]);
    }

    #[test]
    fn only_main_table_host_routes_out_of_the_device_count() {
        let v4 = |addr: &str, prefix: u8, index: u32| {
            RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(addr.parse().unwrap(), prefix)
                .output_interface(index)
                .build()
        };
        let ten: IpAddr = "10.96.0.10".parse().unwrap();
        assert_eq!(host_route_out_of(&v4("10.96.0.10", 32, 7), 7), Some(ten));
        assert_eq!(host_route_out_of(&v4("10.96.0.10", 32, 8), 7), None);
        assert_eq!(host_route_out_of(&v4("10.96.0.0", 24, 7), 7), None);
        let mut local = v4("10.96.0.10", 32, 7);
        // The local table (255).
        local.header.table = 255;
        assert_eq!(host_route_out_of(&local, 7), None);
        let v6 = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix("fd00:96::a".parse().unwrap(), 128)
            .output_interface(7)
            .build();
        assert_eq!(
            host_route_out_of(&v6, 7),
            Some("fd00:96::a".parse().unwrap())
        );
        assert_eq!(host_route_out_of(&route_to(ten, 7).unwrap(), 7), Some(ten));
    }
}
