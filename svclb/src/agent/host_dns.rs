//! The agent's side of `kernel::host_pair`: the veth pair that brings the host's own DNS
//! queries to the responder, made before the devices are attached and routed once the pod
//! program is on its far end. Any failure leaves the host's queries to the socket hooks,
//! which send them to the DNS service.

use std::net::IpAddr;

use anyhow::anyhow;
use rtnetlink::Handle;
use tracing::{error, warn};

use super::syncer::DnsNames;
use crate::{
    kernel::{attach::Devices, host_pair},
    telemetry::metrics::{ERROR_DEVICE, ErrorCounters},
};

/// Makes the veth pair that brings the host's own DNS queries to the responder
/// (`kernel::host_pair`) when it is on, or takes an earlier run's away. Whether the pair is
/// there; a failure is logged and counted, and the socket hooks keep sending the host's
/// queries to the DNS service.
pub(super) async fn prepare(handle: &Handle, dns_on: bool, errors: &ErrorCounters) -> bool {
    let made = if dns_on {
        host_pair::create(handle).await
    } else {
        host_pair::remove(handle).await.map(|_| ())
    };
    match made {
        Ok(()) => dns_on,
        Err(err) => {
            error!("the host's own DNS queries go to the DNS service: {err:#}");
            errors.counter(ERROR_DEVICE).inc();
            if let Err(err) = host_pair::remove(handle).await {
                warn!("{err:#}");
            }
            false
        }
    }
}

/// Routes the cluster DNS addresses into the pair once the pod program is on its far end,
/// and tells the responder the host's queries come that way; on failure the pair goes, and
/// the socket hooks keep sending the host's queries to the DNS service.
pub(super) async fn route(
    handle: &Handle,
    devices: &Devices,
    dns: &mut DnsNames,
    servers: &[IpAddr],
    errors: &ErrorCounters,
) {
    let attached = devices
        .attached_names()
        .iter()
        .any(|name| name == host_pair::PROGRAM_END);
    let routed = if attached {
        host_pair::route(handle, servers).await
    } else {
        Err(anyhow!(
            "the pod program is not attached to {}",
            host_pair::PROGRAM_END
        ))
    };
    match routed {
        Ok(()) => {
            dns.answer_host();
            if host_pair::strict_reverse_path_filter() {
                warn!(
                    "net.ipv4.conf.all.rp_filter is 1 (strict): the host's DNS queries the datapath does not answer are dropped on {}",
                    host_pair::PROGRAM_END
                );
            }
        }
        Err(err) => {
            error!("the host's own DNS queries go to the DNS service: {err:#}");
            errors.counter(ERROR_DEVICE).inc();
            if let Err(err) = host_pair::remove(handle).await {
                warn!("{err:#}");
            }
        }
    }
}
