//! The kernel's DNS answers against the reference: CoreDNS, built from its Go module, with
//! the kubernetes plugin, watching the same real API server as the agents. A generated corpus
//! of Services (ClusterIP, headless with and without selectors and hostnames, ExternalName,
//! without endpoints, several namespaces, named and unnamed ports of every protocol) is
//! asked, from a pod, every name and type the specification lists and more, in random case,
//! with and without EDNS, with garbage mixed in: once at the cluster DNS address (the node's
//! kernel answers, or passes the query to the kube-dns Service, whose backend is that same
//! CoreDNS) and once at CoreDNS's own address. The answers must be the same, but for TTLs and
//! the authority section; every other difference accepted is named in [`accepted`].

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query},
    rr::{DNSClass, Name, RData, RecordType, rdata::SOA},
};
use proptest::{
    prelude::RngExt,
    test_runner::{RngAlgorithm, TestRng},
};
use svclb_tests::{Lab, netns::in_netns, require_root};

const CLUSTER_DNS: &str = "10.96.0.10";
const DOMAIN: &str = "cluster.local";
const NAMESPACES: [&str; 3] = ["default", "shop", "ops-1"];
/// How long one query waits for its answers (both are asked at once).
const WAIT: Duration = Duration::from_millis(400);

/// Pods of the lab (3 a node): the client, CoreDNS, and the `app: web` pods with the hostname
/// (under the headless Service `db`) each has, if one.
const CLIENT: &str = "n1-pod1";
const COREDNS_POD: &str = "n2-pod1";
const WEB_PODS: [(&str, Option<&str>); 4] = [
    ("n1-pod2", Some("alpha")),
    ("n1-pod3", None),
    ("n2-pod2", Some("beta")),
    ("n2-pod3", None),
];

#[test]
#[ignore = "needs root"]
fn kernel_answers_are_coredns_answers_for_a_generated_corpus() -> Result<()> {
    require_root()?;
    let mut lab = Lab::with_dns_and_control_plane(CLUSTER_DNS)?;
    let mut rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
    let plane = lab.control_plane()?;
    plane.apply(&corpus(&mut rng))?;
    plane.run_pod(lab.pod(COREDNS_POD), "kube-dns", 53)?;
    for (pod, hostname) in WEB_PODS {
        let spec = hostname.map_or_else(String::new, |h| {
            format!("  hostname: {h}\n  subdomain: db\n")
        });
        plane.run_pod_with(lab.pod(pod), "web", 8080, &spec)?;
    }
    wait_for_slices(&lab)?;
    let coredns_ns = lab.pod(COREDNS_POD).ns.clone();
    lab.control_plane_mut()?
        .start_coredns(&coredns_ns, DOMAIN, &[])?;
    lab.start_agents()?;

    let cluster = Cluster::read(&lab)?;
    let questions = questions(&cluster, &mut rng);
    let garbage = garbage(&questions, &mut rng);
    let client = lab.pod(CLIENT).ns.clone();
    let coredns = SocketAddr::from((lab.pod(COREDNS_POD).addr, 53));
    wait_until_the_kernel_answers(&lab, &client)?;

    let answerable = questions
        .iter()
        .filter(|(_, bytes)| of_an_answered_type(bytes))
        .count() as u64;
    let answered_before = answered(&lab)?;
    let mut pairs = in_netns(&client, move || ask_both(questions, coredns))?;
    let answered = answered(&lab)? - answered_before;
    pairs.extend(in_netns(&client, move || ask_both(garbage, coredns))?);
    let count = pairs.len();

    let differences: Vec<String> = pairs
        .iter()
        .filter(|pair| pair.differ(Case::Strict) && accepted(pair).is_none())
        .map(Pair::describe)
        .collect();
    let accepted_count = pairs
        .iter()
        .filter(|p| p.differ(Case::Strict) && accepted(p).is_some())
        .count();
    eprintln!(
        "{count} queries ({answerable} of the types answered in the kernel), {answered} \
         answered in the kernel, {accepted_count} accepted differences, {} others",
        differences.len()
    );
    assert!(
        differences.is_empty(),
        "{} of {count} answers differ:\n{}",
        differences.len(),
        differences[..differences.len().min(25)].join("\n")
    );
    // Not a comparison of CoreDNS with itself: of the questions of the types the kernel
    // answers, it answered at least 45% (53% when this was written; the others are names it
    // passes on: pods', outside the zone, PTR of addresses behind a cluster IP, SRV of a
    // Service's own name, names below a known Service).
    assert!(
        answered * 20 >= answerable * 9,
        "the kernel answered {answered} of {answerable} questions of its types"
    );
    Ok(())
}

/// Whether `query` asks for a type the kernel answers.
fn of_an_answered_type(query: &[u8]) -> bool {
    Message::from_vec(query).is_ok_and(|m| {
        m.queries().iter().all(|q| {
            matches!(
                q.query_type(),
                RecordType::A
                    | RecordType::AAAA
                    | RecordType::SRV
                    | RecordType::TXT
                    | RecordType::PTR
                    | RecordType::CNAME
            )
        })
    })
}

/// The Services, in YAML: a `db` headless Service for the web pods (whose hostnames are
/// under it), kube-dns at the cluster DNS address, and 24 generated ones.
fn corpus(rng: &mut TestRng) -> String {
    let mut yaml: String = NAMESPACES[1..]
        .iter()
        .map(|ns| format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n---\n"))
        .collect();
    yaml.push_str(&service_yaml(
        "db",
        "default",
        "  clusterIP: None\n  selector:\n    app: web\n",
        &[("http", "TCP", 80)],
        8080,
    ));
    yaml.push_str(&service_yaml(
        "kube-dns",
        "default",
        &format!("  clusterIP: {CLUSTER_DNS}\n  selector:\n    app: kube-dns\n"),
        &[("dns", "UDP", 53), ("dns-tcp", "TCP", 53)],
        53,
    ));
    for i in 0..24 {
        let ns = NAMESPACES[rng.random_range(0..NAMESPACES.len())];
        let ports = ports(rng);
        let spec = match rng.random_range(0..6) {
            0 | 1 => "  selector:\n    app: web\n".to_owned(),
            2 => "  clusterIP: None\n  selector:\n    app: web\n".to_owned(),
            3 => "  clusterIP: None\n".to_owned(),
            4 => {
                let targets = [
                    "example.com",
                    "mail.example.org",
                    "db.default.svc.cluster.local",
                    "a.long.external.name.example.net",
                ];
                let target = targets[rng.random_range(0..targets.len())];
                format!("  type: ExternalName\n  externalName: {target}\n")
            }
            _ => String::new(),
        };
        // ExternalName and headless Services may have no ports; ClusterIPs need one.
        let ports = if ports.is_empty()
            && !spec.contains("clusterIP: None")
            && !spec.contains("ExternalName")
        {
            vec![("", "TCP", 80)]
        } else {
            ports
        };
        yaml.push_str(&service_yaml(
            &format!("s{i}-{}", ["a", "bc", "web"][i % 3]),
            ns,
            &spec,
            &ports,
            8080,
        ));
    }
    yaml
}

/// Up to three ports: named (unnamed when alone), of any protocol.
fn ports(rng: &mut TestRng) -> Vec<(&'static str, &'static str, u16)> {
    let count = rng.random_range(0..4);
    let names = ["http", "dns", "grpc-api", "metrics"];
    let protocols = ["TCP", "UDP", "SCTP"];
    (0..count)
        .map(|i| {
            let name = if count == 1 && rng.random_bool(0.5) {
                ""
            } else {
                names[i]
            };
            let protocol = protocols[rng.random_range(0..protocols.len())];
            (name, protocol, rng.random_range(1..10_000))
        })
        .collect()
}

/// A Service whose ports all target `target`.
fn service_yaml(
    name: &str,
    ns: &str,
    spec: &str,
    ports: &[(&str, &str, u16)],
    target: u16,
) -> String {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec}"
    );
    if !ports.is_empty() {
        yaml.push_str("  ports:\n");
        for (port_name, protocol, port) in ports {
            if !port_name.is_empty() {
                yaml.push_str(&format!("  - name: {port_name}\n    port: {port}\n"));
            } else {
                yaml.push_str(&format!("  - port: {port}\n"));
            }
            yaml.push_str(&format!(
                "    protocol: {protocol}\n    targetPort: {target}\n"
            ));
        }
    }
    yaml + "---\n"
}

/// Waits until the EndpointSlice controller has put the web pods in `db`'s slices, with their
/// hostnames, and CoreDNS's pod in kube-dns's.
fn wait_for_slices(lab: &Lab) -> Result<()> {
    let plane = lab.control_plane()?;
    let count = |service: &str, hostname: bool| -> usize {
        plane.endpoints(service).map_or(0, |endpoints| {
            endpoints
                .iter()
                .filter(|e| !hostname || e["hostname"].is_string())
                .count()
        })
    };
    lab.wait_for(
        Duration::from_secs(30),
        "the slices of db and kube-dns",
        || count("db", true) == 2 && count("kube-dns", false) == 1,
    )
    .map(drop)
}

/// What the API server holds, as the questions need it.
struct Cluster {
    services: Vec<Svc>,
    endpoints: Vec<Endpoint>,
}

struct Svc {
    name: String,
    ns: String,
    ips: Vec<String>,
    /// (name, protocol).
    ports: Vec<(String, String)>,
}

/// One address of an EndpointSlice.
struct Endpoint {
    service: String,
    ns: String,
    addr: String,
    hostname: Option<String>,
}

impl Cluster {
    fn read(lab: &Lab) -> Result<Self> {
        let plane = lab.control_plane()?;
        let get = |kind: &str| -> Result<Vec<serde_json::Value>> {
            let out = plane.kubectl(&["get", kind, "-A", "-o", "json"])?;
            let list: serde_json::Value = serde_json::from_str(&out)?;
            Ok(list["items"].as_array().cloned().unwrap_or_default())
        };
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
        let services = get("services")?
            .iter()
            .map(|s| {
                let ips = s["spec"]["clusterIPs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(text)
                    .collect();
                let ports = s["spec"]["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| (text(&p["name"]), text(&p["protocol"])))
                    .collect();
                Svc {
                    name: text(&s["metadata"]["name"]),
                    ns: text(&s["metadata"]["namespace"]),
                    ips,
                    ports,
                }
            })
            .collect();
        let mut endpoints = Vec::new();
        for slice in get("endpointslices")? {
            let service = text(&slice["metadata"]["labels"]["kubernetes.io/service-name"]);
            let ns = text(&slice["metadata"]["namespace"]);
            for endpoint in slice["endpoints"].as_array().into_iter().flatten() {
                for addr in endpoint["addresses"].as_array().into_iter().flatten() {
                    let hostname = endpoint["hostname"].as_str().map(str::to_owned);
                    endpoints.push(Endpoint {
                        service: service.clone(),
                        ns: ns.clone(),
                        addr: text(addr),
                        hostname,
                    });
                }
            }
        }
        Ok(Self {
            services,
            endpoints,
        })
    }
}

/// One query as sent, and the two answers.
struct Pair {
    what: String,
    /// The answers as received (`None`: no answer within [`WAIT`]).
    kernel: Option<Vec<u8>>,
    coredns: Option<Vec<u8>>,
}

impl Pair {
    /// Whether the two answers differ, in strict or [`Case::Loose`] comparison.
    fn differ(&self, case: Case) -> bool {
        comparable(self.kernel.as_deref(), case) != comparable(self.coredns.as_deref(), case)
    }

    fn describe(&self) -> String {
        format!(
            "{}\n  kernel:  {}\n  CoreDNS: {}",
            self.what,
            comparable(self.kernel.as_deref(), Case::Strict),
            comparable(self.coredns.as_deref(), Case::Strict)
        )
    }
}

/// How names are compared: all as sent, or only the question's and the answer records'
/// owners (the names the client's case must come back in), every other name in lowercase.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Case {
    Strict,
    Loose,
}

/// The names to ask about: every Service's, its ports' SRV names (and with the other
/// protocol), its endpoints' hostnames and dashed addresses, reverse names of every address,
/// and the names around them (namespaces, the zone, wildcards, missing ones, deeper ones).
fn names(cluster: &Cluster) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for Svc {
        name: svc,
        ns,
        ips,
        ports,
    } in &cluster.services
    {
        let base = format!("{svc}.{ns}.svc.{DOMAIN}");
        for (port, protocol) in ports {
            let protocol = protocol.to_lowercase();
            if !port.is_empty() {
                names.insert(format!("_{port}._{protocol}.{base}"));
                names.insert(format!("_{port}._udp.{base}"));
            }
            names.insert(format!("_{protocol}.{base}"));
        }
        for ip in ips.iter().filter(|ip| ip.parse::<Ipv4Addr>().is_ok()) {
            names.insert(reverse(ip));
        }
        names.insert(format!("nosuch.{base}"));
        names.insert(format!("a.b.{base}"));
        names.insert(format!("{svc}.nosuchns.svc.{DOMAIN}"));
        names.insert(format!("*.{ns}.svc.{DOMAIN}"));
        names.insert(format!("{svc}.*.svc.{DOMAIN}"));
        names.insert(format!("{ns}.svc.{DOMAIN}"));
        names.insert(base);
    }
    for Endpoint {
        service: svc,
        ns,
        addr,
        hostname,
    } in &cluster.endpoints
    {
        let base = format!("{svc}.{ns}.svc.{DOMAIN}");
        names.insert(format!("{}.{base}", addr.replace('.', "-")));
        if let Some(hostname) = hostname {
            names.insert(format!("{hostname}.{base}"));
        }
        names.insert(reverse(addr));
    }
    for name in [
        DOMAIN.to_owned(),
        format!("svc.{DOMAIN}"),
        format!("dns-version.{DOMAIN}"),
        format!("1-2-3-4.default.pod.{DOMAIN}"),
        format!("web.default.svc.{DOMAIN}.example"),
        "10.255.96.10.in-addr.arpa".to_owned(),
        "example.com".to_owned(),
    ] {
        names.insert(name);
    }
    names
}

fn reverse(ip: &str) -> String {
    let mut octets: Vec<&str> = ip.split('.').collect();
    octets.reverse();
    format!("{}.in-addr.arpa", octets.join("."))
}

const TYPES: [RecordType; 11] = [
    RecordType::A,
    RecordType::AAAA,
    RecordType::SRV,
    RecordType::TXT,
    RecordType::PTR,
    RecordType::CNAME,
    RecordType::ANY,
    RecordType::MX,
    RecordType::NS,
    RecordType::SOA,
    RecordType::CAA,
];

/// Every name with every type, in random case, with a random ID, with or without EDNS (1,232
/// or 4,096 bytes, DO set or not), recursion desired or not: (description, query bytes).
fn questions(cluster: &Cluster, rng: &mut TestRng) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for name in names(cluster) {
        for qtype in TYPES {
            let cased: String = name
                .chars()
                .map(|c| {
                    if rng.random_bool(0.5) {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect();
            let Ok(qname) = Name::from_ascii(format!("{cased}.")) else {
                continue;
            };
            let mut message = Message::new();
            message
                .set_id(rng.random())
                .set_message_type(MessageType::Query)
                .set_op_code(OpCode::Query)
                .set_recursion_desired(rng.random_bool(0.8))
                .add_query(Query::query(qname, qtype));
            let edns = match rng.random_range(0..3) {
                0 => "",
                1 => {
                    let mut edns = Edns::new();
                    edns.set_max_payload(1232);
                    message.set_edns(edns);
                    " edns 1232"
                }
                _ => {
                    let mut edns = Edns::new();
                    edns.set_max_payload(4096);
                    edns.set_dnssec_ok(true);
                    message.set_edns(edns);
                    " edns 4096 do"
                }
            };
            if let Ok(bytes) = message.to_vec() {
                out.push((format!("{cased} {qtype}{edns}"), bytes));
            }
        }
    }
    out
}

/// Queries that are not questions the kernel may answer: random bytes, valid queries with
/// bytes flipped or cut short, two questions, other opcodes and classes, and a response.
fn garbage(questions: &[(String, Vec<u8>)], rng: &mut TestRng) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for i in 0..30 {
        let len = rng.random_range(0..80);
        out.push((
            format!("random bytes #{i}"),
            (0..len).map(|_| rng.random()).collect(),
        ));
    }
    for i in 0..60 {
        let (what, bytes) = &questions[rng.random_range(0..questions.len())];
        let mut bytes = bytes.clone();
        if i % 3 == 0 {
            bytes.truncate(rng.random_range(0..bytes.len()));
            out.push((format!("{what}, cut to {} bytes", bytes.len()), bytes));
        } else {
            let at = rng.random_range(0..bytes.len());
            bytes[at] = rng.random();
            out.push((format!("{what}, byte {at} set to {}", bytes[at]), bytes));
        }
    }
    let name = Name::from_ascii(format!("db.default.svc.{DOMAIN}.")).unwrap_or_default();
    type Change = fn(&mut Message);
    let variants: [(&str, Change); 4] = [
        ("two questions", |m| {
            m.add_query(Query::query(
                Name::from_ascii(format!("kube-dns.default.svc.{DOMAIN}.")).unwrap_or_default(),
                RecordType::A,
            ));
        }),
        ("opcode STATUS", |m| {
            m.set_op_code(OpCode::Status);
        }),
        ("a response", |m| {
            m.set_message_type(MessageType::Response);
        }),
        ("class CH", |m| {
            let query = m.queries()[0].clone();
            let mut query = query;
            query.set_query_class(DNSClass::CH);
            m.take_queries();
            m.add_query(query);
        }),
    ];
    for (what, change) in variants {
        let mut message = Message::new();
        message
            .set_id(rng.random())
            .set_recursion_desired(true)
            .add_query(Query::query(name.clone(), RecordType::A));
        change(&mut message);
        if let Ok(bytes) = message.to_vec() {
            out.push((format!("db A, {what}"), bytes));
        }
    }
    out
}

/// Sends each query to the cluster DNS address and to CoreDNS at once, from two sockets;
/// their answers (or `no answer`) in comparable form.
fn ask_both(queries: Vec<(String, Vec<u8>)>, coredns: SocketAddr) -> Result<Vec<Pair>> {
    let cluster_dns = SocketAddr::from((CLUSTER_DNS.parse::<Ipv4Addr>()?, 53));
    let kernel_socket = UdpSocket::bind("0.0.0.0:0")?;
    let coredns_socket = UdpSocket::bind("0.0.0.0:0")?;
    let mut pairs = Vec::with_capacity(queries.len());
    for (what, bytes) in queries {
        kernel_socket.send_to(&bytes, cluster_dns)?;
        coredns_socket.send_to(&bytes, coredns)?;
        let sent = Instant::now();
        let id = bytes.get(..2);
        pairs.push(Pair {
            kernel: receive(&kernel_socket, id, sent),
            coredns: receive(&coredns_socket, id, sent),
            what,
        });
    }
    Ok(pairs)
}

/// The first datagram on `socket` within [`WAIT`] of `sent` that starts with the query's ID
/// `id` (a late answer to an earlier query is skipped).
fn receive(socket: &UdpSocket, id: Option<&[u8]>, sent: Instant) -> Option<Vec<u8>> {
    let mut buf = [0u8; 65_536];
    loop {
        // At least one try: the other socket's wait may have used the time up while this
        // one's answer was already in.
        let left = WAIT.saturating_sub(sent.elapsed());
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        let n = socket.recv(&mut buf).ok()?;
        if id.is_none_or(|id| buf[..n].starts_with(id)) {
            return Some(buf[..n].to_vec());
        }
    }
}

/// A DNS message as text to compare: its header, question and answer and additional
/// records, and authority records, in order of their text, with every TTL and SOA serial 0
/// (CoreDNS's serial is the time of the last change it saw, the agent's its start), and its
/// EDNS. Bytes that do not parse, as hex.
fn comparable(bytes: Option<&[u8]>, case: Case) -> String {
    let Some(bytes) = bytes else {
        return "no answer".into();
    };
    let Ok(message) = Message::from_vec(bytes) else {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        return format!("unparsed {hex}");
    };
    // A record as text; loose, all but an answer's owner in lowercase.
    let text = |r: &hickory_proto::rr::Record, owner_kept: bool| -> String {
        let mut r = r.clone();
        r.set_ttl(0);
        if let RData::SOA(soa) = r.data().clone() {
            r.set_data(RData::SOA(SOA::new(
                soa.mname().clone(),
                soa.rname().clone(),
                0,
                soa.refresh(),
                soa.retry(),
                soa.expire(),
                soa.minimum(),
            )));
        }
        let text = r.to_string();
        if case == Case::Strict {
            return text;
        }
        let owner = r.name().to_string();
        let rest = text.strip_prefix(&owner).unwrap_or(&text).to_lowercase();
        if owner_kept {
            owner + &rest
        } else {
            owner.to_lowercase() + &rest
        }
    };
    let records = |records: &[hickory_proto::rr::Record], owner_kept: bool| -> Vec<String> {
        let mut texts: Vec<String> = records.iter().map(|r| text(r, owner_kept)).collect();
        texts.sort();
        texts
    };
    let header = message.header();
    let questions: Vec<String> = message
        .queries()
        .iter()
        .map(|q| format!("{} {} {}", q.name(), q.query_class(), q.query_type()))
        .collect();
    let edns = message.extensions().as_ref().map(|e| {
        format!(
            "edns {} do={} version={} options={:?}",
            e.max_payload(),
            e.flags().dnssec_ok,
            e.version(),
            e.options()
        )
    });
    format!(
        "id={} {:?} {:?} aa={} tc={} rd={} ra={} ad={} cd={} {:?} q={questions:?} an={:?} \
         ns={:?} ad={:?} {}",
        header.id(),
        header.message_type(),
        header.op_code(),
        header.authoritative(),
        header.truncated(),
        header.recursion_desired(),
        header.recursion_available(),
        header.authentic_data(),
        header.checking_disabled(),
        message.response_code(),
        records(message.answers(), true),
        records(message.name_servers(), true),
        records(message.additionals(), false),
        edns.unwrap_or_default()
    )
}

/// Why a difference between the two answers is accepted; `None` when it is not.
fn accepted(pair: &Pair) -> Option<&'static str> {
    // CoreDNS writes an SRV target, and its address records' owner, as the Service's and
    // namespace's names in lowercase and the zone in the question's case; the kernel writes
    // the target in lowercase (uncompressed, RFC 2782) and the glue's owner pointing into the
    // question. Names compare without case (RFC 4343); the question and the answers' owners,
    // whose case a client may check, are the same.
    let srv = pair
        .kernel
        .as_deref()
        .and_then(|bytes| Message::from_vec(bytes).ok())
        .is_some_and(|m| {
            m.queries()
                .iter()
                .all(|q| q.query_type() == RecordType::SRV)
        });
    (srv && !pair.differ(Case::Loose))
        .then_some("the case of SRV targets and their addresses' owners")
}

/// Waits until node 1's kernel answers a cluster name (its first DNS sync is in).
fn wait_until_the_kernel_answers(lab: &Lab, client: &str) -> Result<()> {
    let name = Name::from_ascii(format!("db.default.svc.{DOMAIN}."))?;
    let mut message = Message::new();
    message.add_query(Query::query(name, RecordType::A));
    let bytes = message.to_vec()?;
    let started = answered(lab)?;
    lab.wait_for(Duration::from_secs(10), "node 1's kernel to answer", || {
        let bytes = bytes.clone();
        let _ = in_netns(client, move || {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.set_read_timeout(Some(WAIT))?;
            socket.send_to(&bytes, (CLUSTER_DNS, 53))?;
            let mut buf = [0u8; 2048];
            socket.recv(&mut buf).context("no answer")
        });
        answered(lab).is_ok_and(|now| now > started)
    })
    .map(drop)
}

/// Queries node 1's kernel answered (with records, NODATA or NXDOMAIN).
fn answered(lab: &Lab) -> Result<u64> {
    Ok(lab.event(0, "dns_answered")? + lab.event(0, "dns_nxdomain")?)
}
