//! End to end through the Kubernetes API: agents in the lab watch the fake API server (served
//! from the client namespace on the fabric); a Service and an EndpointSlice created there
//! become connections that reach the backends.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Result;
use svclb_tests::{
    Lab, LabSpec,
    client::{TIMEOUT, at, tally, tcp_ask_many, udp_ask_many},
    manifests::{DNS, WEB, cluster_ip_service, to_json_objects},
    require_root,
};

#[test]
#[ignore = "needs root"]
fn services_created_through_the_api_reach_their_backends() -> Result<()> {
    require_root()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let _enter = runtime.enter();
    let mut lab = Lab::new(LabSpec::default())?;
    let api = lab.serve_fake_api()?;
    lab.start_agents()?;
    let client = lab.pod("n1-pod1").ns.clone();

    let (local, remote) = (lab.pod("n1-pod2").clone(), lab.pod("n2-pod1").clone());
    for object in to_json_objects(&cluster_ip_service(
        "web",
        "10.96.5.1",
        &[WEB, DNS],
        &[&local, &remote],
    ))? {
        api.apply(object)?;
    }
    lab.wait_for(
        Duration::from_secs(5),
        "the service in node n1's maps",
        || {
            lab.list(0)
                .is_ok_and(|l| l["frontends"].as_array().is_some_and(|f| f.len() == 2))
        },
    )
    .map_err(|e| e.context(lab.agent_log(0)))?;
    let tcp = tally(&tcp_ask_many(&client, at("10.96.5.1", 80), 60, TIMEOUT)?);
    assert_eq!(
        tcp.keys().cloned().collect::<Vec<_>>(),
        [local.name.clone(), remote.name.clone()],
        "{tcp:?}"
    );
    let udp = tally(&udp_ask_many(&client, at("10.96.5.1", 53), 60, TIMEOUT)?);
    assert_eq!(
        udp.keys().cloned().collect::<Vec<_>>(),
        [local.name.clone(), remote.name.clone()],
        "{udp:?}"
    );

    // The API goes away: the agents keep serving the last state they saw, also once both
    // agents' watchers have met the outage (two Service requests refused).
    api.set_unavailable(true);
    lab.wait_for(
        Duration::from_secs(10),
        "both agents' Service watches refused",
        || api.count("REFUSED Service") >= 2,
    )?;
    assert_eq!(
        tally(&tcp_ask_many(&client, at("10.96.5.1", 80), 10, TIMEOUT)?)
            .values()
            .sum::<usize>(),
        10
    );

    // It comes back with the endpoint on n1 gone: the watch resumes and the maps follow.
    for object in to_json_objects(&cluster_ip_service(
        "web",
        "10.96.5.1",
        &[WEB, DNS],
        &[&remote],
    ))? {
        api.apply(object)?;
    }
    api.set_unavailable(false);
    lab.wait_for(
        Duration::from_secs(40),
        "the endpoint change in node n1's maps",
        || {
            lab.list(0).is_ok_and(|l| {
                l["frontends"][0]["backends"]
                    .as_array()
                    .is_some_and(|b| b.len() == 1)
            })
        },
    )?;
    assert_eq!(
        tally(&tcp_ask_many(&client, at("10.96.5.1", 80), 10, TIMEOUT)?),
        BTreeMap::from([(remote.name.clone(), 10)])
    );
    assert!(lab.agent_log(0).contains("source=the Kubernetes API"));
    Ok(())
}
