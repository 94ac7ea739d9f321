//! The model on generated Services, EndpointSlices and Nodes, changed step by step: values
//! come from small pools of valid, edge and invalid ones so that names, addresses and ports
//! collide. After each step the incremental planner holds the plan from scratch and names
//! exactly the frontends that changed, and the plan passes `svclb_fuzz::check_plan`.

#![no_main]

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::Arc,
};

use k8s_openapi::{
    api::{
        core::v1::{
            ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Node, NodeAddress, NodeStatus,
            Service, ServicePort, ServiceSpec, ServiceStatus, SessionAffinityConfig,
        },
        discovery::v1::{
            Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForNode,
            ForZone,
        },
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use libfuzzer_sys::{
    arbitrary::{self, Unstructured},
    fuzz_target,
};
use svclb::{
    entries::Capacity,
    plan::{AddressRule, FrontendKey, Planner, SERVICE_NAME_LABEL},
    source::manifests::{Object, snapshot_of},
};

const NAMES: &[&str] = &["a", "b", "c"];
const NAMESPACES: &[Option<&str>] = &[Some("x"), Some("y"), None];
const TYPES: &[Option<&str>] = &[
    None,
    Some("ClusterIP"),
    Some("NodePort"),
    Some("LoadBalancer"),
    Some("ExternalName"),
    Some("Bogus"),
];
const CLUSTER_IPS: &[Option<&str>] = &[
    None,
    Some("10.96.0.1"),
    Some("10.96.0.2"),
    Some("None"),
    Some(""),
    Some("bad"),
    Some("fd00::1"),
    Some("10.96.0.1 "),
];
const PORTS: &[i32] = &[0, 53, 80, 443, 8080, 65535, 65536, -1];
const NODE_PORTS: &[Option<i32>] = &[None, Some(0), Some(30080), Some(30081), Some(70000)];
const PORT_NAMES: &[Option<&str>] = &[None, Some(""), Some("http"), Some("dns")];
const PROTOCOLS: &[Option<&str>] = &[None, Some("TCP"), Some("UDP"), Some("SCTP"), Some("tcp")];
const POLICIES: &[Option<&str>] = &[None, Some("Cluster"), Some("Local"), Some("local")];
const AFFINITIES: &[Option<&str>] = &[None, Some("None"), Some("ClientIP")];
const TIMEOUTS: &[Option<i32>] = &[
    None,
    Some(0),
    Some(1),
    Some(10_800),
    Some(86_400),
    Some(86_401),
];
const EXTERNAL_IPS: &[&str] = &[
    "172.31.0.200",
    "10.96.0.1",
    "bad",
    "fd00::5",
    "172.31.0.201",
];
const INGRESS_IPS: &[Option<&str>] = &[
    Some("172.31.0.200"),
    Some("172.31.0.201"),
    Some(""),
    Some("bad"),
    None,
];
const IP_MODES: &[Option<&str>] = &[None, Some("VIP"), Some("Proxy")];
const SOURCE_RANGES: &[&str] = &[
    "172.31.0.0/24",
    "0.0.0.0/0",
    "bad",
    "10.0.0.1/33",
    "fd00::/64",
    " 172.31.0.0/24 ",
];
const HEALTH_PORTS: &[Option<i32>] = &[None, Some(0), Some(31000), Some(70000)];
const ADDRESS_TYPES: &[&str] = &["IPv4", "IPv6", "FQDN"];
const ENDPOINT_ADDRESSES: &[&str] = &[
    "10.244.1.2",
    "10.244.2.2",
    "10.244.1.3",
    "bad",
    "fd00::2",
    "10.96.0.1",
];
const NODES: &[Option<&str>] = &[None, Some("n1"), Some("n2")];
const ZONES: &[Option<&str>] = &[None, Some("zone-a"), Some("zone-b")];
const CONDITIONS: &[Option<bool>] = &[None, Some(true), Some(false)];
const NODE_ADDRESSES: &[(&str, &str)] = &[
    ("InternalIP", "172.31.0.11"),
    ("ExternalIP", "172.31.0.111"),
    ("InternalIP", "fd00:31::11"),
    ("InternalIP", "bad"),
    ("Hostname", "n1"),
];

const CAPACITY: Capacity = Capacity {
    services: 24,
    slots: 48,
    backends: 12,
    maglev_tables: 2,
    maglev_size: 251,
    source_ranges: 4,
    ..Capacity::DEFAULT
};

fn pick<T: Copy>(u: &mut Unstructured, pool: &[T]) -> arbitrary::Result<T> {
    u.choose(pool).copied()
}

fn some_of<T: Copy>(u: &mut Unstructured, pool: &[T], most: usize) -> arbitrary::Result<Vec<T>> {
    let n = u.int_in_range(0..=most)?;
    (0..n).map(|_| pick(u, pool)).collect()
}

fn owned(v: Option<&str>) -> Option<String> {
    v.map(str::to_owned)
}

fn meta(u: &mut Unstructured, labels: Option<(&str, &str)>) -> arbitrary::Result<ObjectMeta> {
    Ok(ObjectMeta {
        name: Some(pick(u, NAMES)?.to_owned()),
        namespace: owned(pick(u, NAMESPACES)?),
        labels: labels.map(|(k, v)| [(k.to_owned(), v.to_owned())].into()),
        ..Default::default()
    })
}

fn service(u: &mut Unstructured) -> arbitrary::Result<Service> {
    let ports = (0..u.int_in_range(0..=3)?)
        .map(|_| {
            Ok(ServicePort {
                name: owned(pick(u, PORT_NAMES)?),
                port: pick(u, PORTS)?,
                protocol: owned(pick(u, PROTOCOLS)?),
                node_port: pick(u, NODE_PORTS)?,
                target_port: match u.int_in_range(0..=2)? {
                    0 => None,
                    1 => Some(IntOrString::Int(pick(u, PORTS)?)),
                    _ => Some(IntOrString::String(
                        pick(u, PORT_NAMES)?.unwrap_or("x").to_owned(),
                    )),
                },
                ..Default::default()
            })
        })
        .collect::<arbitrary::Result<Vec<_>>>()?;
    let cluster_ip = pick(u, CLUSTER_IPS)?;
    let ingress = (0..u.int_in_range(0..=2)?)
        .map(|_| {
            Ok(LoadBalancerIngress {
                ip: owned(pick(u, INGRESS_IPS)?),
                ip_mode: owned(pick(u, IP_MODES)?),
                ..Default::default()
            })
        })
        .collect::<arbitrary::Result<Vec<_>>>()?;
    let timeout = pick(u, TIMEOUTS)?;
    Ok(Service {
        metadata: meta(u, None)?,
        spec: Some(ServiceSpec {
            type_: owned(pick(u, TYPES)?),
            cluster_ip: owned(cluster_ip),
            cluster_ips: if u.arbitrary()? {
                Some(
                    some_of(u, CLUSTER_IPS, 2)?
                        .into_iter()
                        .flatten()
                        .map(str::to_owned)
                        .collect(),
                )
            } else {
                None
            },
            ports: Some(ports),
            external_traffic_policy: owned(pick(u, POLICIES)?),
            internal_traffic_policy: owned(pick(u, POLICIES)?),
            session_affinity: owned(pick(u, AFFINITIES)?),
            session_affinity_config: timeout.map(|t| SessionAffinityConfig {
                client_ip: Some(ClientIPConfig {
                    timeout_seconds: Some(t),
                }),
            }),
            external_ips: Some(
                some_of(u, EXTERNAL_IPS, 2)?
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
            ),
            load_balancer_source_ranges: Some(
                some_of(u, SOURCE_RANGES, 2)?
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
            ),
            health_check_node_port: pick(u, HEALTH_PORTS)?,
            ..Default::default()
        }),
        status: Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(ingress),
            }),
            ..Default::default()
        }),
    })
}

fn slice(u: &mut Unstructured) -> arbitrary::Result<EndpointSlice> {
    let service = pick(u, NAMES)?;
    let ports = (0..u.int_in_range(0..=2)?)
        .map(|_| {
            Ok(EndpointPort {
                name: owned(pick(u, PORT_NAMES)?),
                port: Some(pick(u, PORTS)?),
                protocol: owned(pick(u, PROTOCOLS)?),
                ..Default::default()
            })
        })
        .collect::<arbitrary::Result<Vec<_>>>()?;
    let endpoints = (0..u.int_in_range(0..=4)?)
        .map(|_| {
            let zones = some_of(u, ZONES, 2)?;
            // Node hints (`trafficDistribution: PreferSameNode`), on some endpoints only.
            let nodes = some_of(u, NODES, 2)?;
            let node_hinted: bool = u.arbitrary()?;
            Ok(Endpoint {
                addresses: some_of(u, ENDPOINT_ADDRESSES, 2)?
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
                conditions: Some(EndpointConditions {
                    ready: pick(u, CONDITIONS)?,
                    serving: pick(u, CONDITIONS)?,
                    terminating: pick(u, CONDITIONS)?,
                }),
                hints: u.arbitrary::<bool>()?.then(|| EndpointHints {
                    for_zones: Some(
                        zones
                            .into_iter()
                            .flatten()
                            .map(|z| ForZone { name: z.to_owned() })
                            .collect(),
                    ),
                    for_nodes: node_hinted.then(|| {
                        nodes
                            .into_iter()
                            .flatten()
                            .map(|n| ForNode { name: n.to_owned() })
                            .collect()
                    }),
                }),
                node_name: owned(pick(u, NODES)?),
                zone: owned(pick(u, ZONES)?),
                ..Default::default()
            })
        })
        .collect::<arbitrary::Result<Vec<_>>>()?;
    let labelled: bool = u.arbitrary()?;
    // `endpoints` may be left out altogether (optional since the 1.34 API): the same as none.
    let omitted: bool = u.arbitrary()?;
    Ok(EndpointSlice {
        metadata: meta(u, labelled.then_some((SERVICE_NAME_LABEL, service)))?,
        address_type: pick(u, ADDRESS_TYPES)?.to_owned(),
        endpoints: (!endpoints.is_empty() || !omitted).then_some(endpoints),
        ports: Some(ports),
    })
}

fn node(u: &mut Unstructured) -> arbitrary::Result<Node> {
    let zone = pick(u, ZONES)?;
    Ok(Node {
        metadata: ObjectMeta {
            name: Some(pick(u, &["n1", "n1", "n2"])?.to_owned()),
            labels: zone.map(|z| [(svclb::plan::ZONE_LABEL.to_owned(), z.to_owned())].into()),
            ..Default::default()
        },
        status: Some(NodeStatus {
            addresses: Some(
                some_of(u, NODE_ADDRESSES, 3)?
                    .into_iter()
                    .map(|(type_, address)| NodeAddress {
                        address: address.to_owned(),
                        type_: type_.to_owned(),
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Object slots a step may fill, replace or empty; two slots may hold one name (a duplicate).
const SLOTS: usize = 8;

fn run(data: &[u8]) -> arbitrary::Result<()> {
    let mut u = Unstructured::new(data);
    let mut planner = Planner::new(svclb_fuzz::NODE, AddressRule::default());
    let mut current: Vec<Option<Object>> = vec![None; SLOTS];
    let names: Vec<PathBuf> = (0..SLOTS)
        .map(|i| PathBuf::from(format!("slot{i}.yaml")))
        .collect();
    let mut before = planner.plan().clone();
    for _ in 0..u.int_in_range(1..=6)? {
        for _ in 0..u.int_in_range(1..=4)? {
            let slot = u.int_in_range(0..=SLOTS - 1)?;
            current[slot] = match u.int_in_range(0..=7)? {
                0 => None,
                // The same content in a new allocation (a relist).
                1 => current[slot].as_ref().map(|o| match o {
                    Object::Service(s) => Object::Service(Arc::new((**s).clone())),
                    Object::EndpointSlice(s) => Object::EndpointSlice(Arc::new((**s).clone())),
                    Object::Node(n) => Object::Node(Arc::new((**n).clone())),
                }),
                2..=4 => Some(Object::Service(Arc::new(service(&mut u)?))),
                5..=6 => Some(Object::EndpointSlice(Arc::new(slice(&mut u)?))),
                _ => Some(Object::Node(Arc::new(node(&mut u)?))),
            };
        }
        // Each slot a file of the manifests source, which serves one copy of each object.
        let files: Vec<(&Path, &[Object])> = current
            .iter()
            .zip(&names)
            .map(|(object, name)| (name.as_path(), object.as_slice()))
            .collect();
        let snapshot = snapshot_of(files);
        assert!(
            svclb_fuzz::unique_names(&snapshot.nodes, &snapshot.services),
            "the snapshot holds two copies of one object"
        );
        let changed = planner.update(&snapshot);
        let (reference, diags) = svclb_fuzz::check_plan(
            &snapshot.nodes,
            &snapshot.services,
            &snapshot.slices,
            CAPACITY,
        );
        assert_eq!(planner.plan(), &reference, "the incremental plan differs");
        let planner_diags: BTreeSet<String> =
            planner.diagnostics().map(ToString::to_string).collect();
        assert_eq!(planner_diags, diags, "the incremental diagnostics differ");
        let now = planner.plan();
        let differ: BTreeSet<FrontendKey> = before
            .frontends
            .keys()
            .chain(now.frontends.keys())
            .filter(|k| before.frontends.get(k) != now.frontends.get(k))
            .copied()
            .collect();
        assert_eq!(
            changed, differ,
            "the planner named other frontends than those that changed"
        );
        before = now.clone();
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
