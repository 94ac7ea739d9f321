//! The addresses of the uplink devices, read over rtnetlink: where NodePorts listen when the
//! Node object gives no address of a family (or there is none, as on a dev box with manifests
//! only). Link-local addresses are left out: no load balancer or client reaches a NodePort
//! there.

use std::net::IpAddr;

use anyhow::{Context as _, Result};
use futures::TryStreamExt as _;
use netlink_packet_route::address::AddressAttribute;
use rtnetlink::Handle;

fn link_local(addr: &IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    }
}

/// The global addresses of the devices named `names`, sorted; a device that does not exist
/// contributes none (the device handling reports it).
pub async fn of_devices(handle: &Handle, names: &[String]) -> Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for name in names {
        let mut links = handle.link().get().match_name(name.clone()).execute();
        let Ok(Some(link)) = links.try_next().await else {
            continue;
        };
        let mut addresses = handle
            .address()
            .get()
            .set_link_index_filter(link.header.index)
            .execute();
        while let Some(message) = addresses
            .try_next()
            .await
            .with_context(|| format!("listing the addresses of {name}"))?
        {
            // IFA_LOCAL is the interface's own address; on a point-to-point link IFA_ADDRESS
            // is the peer's, so it counts only without a local one.
            let local = message.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(addr) => Some(*addr),
                _ => None,
            });
            let address = message.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(addr) => Some(*addr),
                _ => None,
            });
            if let Some(addr) = local.or(address)
                && !link_local(&addr)
            {
                out.push(addr);
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// [`of_devices`] on a connection of its own (for commands without one).
pub async fn of_devices_once(names: &[String]) -> Result<Vec<IpAddr>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let (connection, handle, _) =
        rtnetlink::new_connection().context("opening an rtnetlink socket")?;
    tokio::spawn(connection);
    of_devices(&handle, names).await
}
