//! The DNS responder on the pod program (BPF_PROG_TEST_RUN): a query to the cluster DNS
//! address for a cluster name comes back as its reply, built from the agent's entries; one it
//! does not answer passes on untouched.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::{Context as _, Result};
use aya::maps::{Array, HashMap, MapData};
use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RData, RecordType, rdata::opt::EdnsOption},
};
use proptest::{prelude::*, test_runner::TestCaseError};
use svclb::{
    entries::dns::{Zone, table},
    plan::dns::records,
    source::manifests::{parse_documents, snapshot_of},
};
use svclb_common::{
    dns::{DnsAnswer, DnsKey, DnsZone},
    limits::{MAP_DNS, MAP_DNS_ZONE},
};
use svclb_tests::{
    packet::PacketSpec,
    packet6::{Ext, Packet6, l4_checksum_ok},
    require_root,
};

use crate::common::{datapath::Datapath, fixture::TC_ACT_OK};

const TC_ACT_REDIRECT: u32 = 7;
const CLIENT: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 1, 11), 40_000);
const DNS: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const CLIENT6: (Ipv6Addr, u16) = (Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 0x11), 40_000);
const DNS6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0xa);

const SERVICES: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  ports:
  - {name: http, port: 80}
---
apiVersion: v1
kind: Service
metadata: {name: big, namespace: shop}
spec: {clusterIP: None}
";

/// A headless Service with 100 ready endpoints.
fn big_slice() -> String {
    let addresses: Vec<String> = (0..100).map(|i| format!("10.244.2.{i}")).collect();
    format!(
        "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: big-1
  namespace: shop
  labels: {{kubernetes.io/service-name: big}}
addressType: IPv4
endpoints:
- addresses: {addresses:?}
"
    )
}

/// Writes the entries of `yaml`'s Services and the zone, as the agent does; the entries.
fn program(dp: &Datapath, yaml: &str) -> Result<BTreeMap<DnsKey, DnsAnswer>> {
    let (objects, diags) =
        parse_documents(yaml, "dns.yaml").map_err(|d| anyhow::anyhow!("{d:?}"))?;
    anyhow::ensure!(diags.is_empty(), "{diags:?}");
    let snapshot = snapshot_of([(Path::new("dns.yaml"), objects.as_slice())]);
    let zone = Zone::new("cluster.local", 1)?;
    let (entries, errors) = table(&records(&snapshot, "cluster.local"), &zone);
    anyhow::ensure!(errors.is_empty(), "{errors:?}");
    let mut map: HashMap<MapData, DnsKey, DnsAnswer> = HashMap::try_from(dp.pinned(MAP_DNS)?)?;
    for (key, value) in &entries {
        map.insert(key, value, 0)?;
    }
    let mut zones: Array<MapData, DnsZone> = Array::try_from(dp.pinned(MAP_DNS_ZONE)?)?;
    zones.set(0, &zone.entry(&[DNS.into(), DNS6.into()], 1)?, 0)?;
    Ok(entries)
}

/// A query frame from the pod to the cluster DNS address.
fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut message = Message::new();
    message
        .set_id(0x4242)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(size) = edns {
        let mut opt = Edns::new();
        opt.set_max_payload(size);
        message.set_edns(opt);
    }
    let mut spec = PacketSpec::udp(CLIENT, (DNS, 53));
    spec.payload = message.to_vec().unwrap();
    spec.build()
}

/// The reply in `frame`, checking its headers go from the DNS address back to the client.
fn reply(frame: &[u8]) -> Result<Message> {
    let ip = &frame[14..34];
    anyhow::ensure!(ip[12..16] == DNS.octets(), "source {:?}", &ip[12..16]);
    anyhow::ensure!(
        ip[16..20] == CLIENT.0.octets(),
        "destination {:?}",
        &ip[16..20]
    );
    let sum = svclb_tests::packet::checksum(&[ip]);
    anyhow::ensure!(sum == 0, "IPv4 header checksum does not add up: {sum:#x}");
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    anyhow::ensure!(
        14 + total == frame.len(),
        "IP length {total}, frame {}",
        frame.len()
    );
    let udp = &frame[34..42];
    anyhow::ensure!(udp[0..2] == 53u16.to_be_bytes(), "from port 53");
    anyhow::ensure!(udp[2..4] == CLIENT.1.to_be_bytes(), "to the client's port");
    anyhow::ensure!(usize::from(u16::from_be_bytes([udp[4], udp[5]])) == total - 20);
    Message::from_vec(&frame[42..]).context("the reply parses as DNS")
}

/// A query for `web` with EDNS whose OPT record's data is `options`, as written.
fn query_with_options(options: &[u8]) -> Vec<u8> {
    let frame = query("web.shop.svc.cluster.local.", RecordType::A, Some(1232));
    // The OPT record ends the message, with its data length last.
    let mut payload = frame[42..frame.len() - 2].to_vec();
    payload.extend(u16::try_from(options.len()).unwrap().to_be_bytes());
    payload.extend(options);
    let mut spec = PacketSpec::udp(CLIENT, (DNS, 53));
    spec.payload = payload;
    spec.build()
}

fn answer(dp: &mut Datapath, name: &str, qtype: RecordType, edns: Option<u16>) -> Result<Message> {
    let (verdict, out) = dp.run(&query(name, qtype, edns))?;
    anyhow::ensure!(
        verdict == TC_ACT_REDIRECT,
        "{name} {qtype}: verdict {verdict}"
    );
    let message = reply(&out).with_context(|| format!("{name} {qtype}"))?;
    assert_eq!(message.id(), 0x4242);
    assert_eq!(message.message_type(), MessageType::Response);
    assert!(message.authoritative() && message.recursion_desired());
    assert!(!message.recursion_available());
    Ok(message)
}

fn passes(dp: &mut Datapath, frame: &[u8], what: &str) -> Result<()> {
    let (verdict, out) = dp.run(frame)?;
    anyhow::ensure!(
        verdict == TC_ACT_OK && out == frame,
        "{what}: verdict {verdict}, expected to pass on untouched"
    );
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn cluster_names_are_answered_in_place() -> Result<()> {
    require_root()?;
    let mut dp = Datapath::load("dns")?;
    program(&dp, &format!("{SERVICES}---{}", big_slice()))?;

    let a = answer(&mut dp, "Web.Shop.svc.Cluster.Local.", RecordType::A, None)?;
    let [rr] = a.answers() else {
        panic!("one address: {a:?}");
    };
    assert_eq!(rr.name().to_string(), "Web.Shop.svc.Cluster.Local.");
    assert_eq!(rr.data(), &RData::A("10.96.0.20".parse()?));
    assert_eq!(rr.ttl(), 5);
    assert!(a.extensions().is_none());

    let nodata = answer(
        &mut dp,
        "web.shop.svc.cluster.local.",
        RecordType::AAAA,
        Some(1232),
    )?;
    assert_eq!(nodata.response_code(), ResponseCode::NoError);
    assert!(nodata.answers().is_empty());
    assert_eq!(nodata.name_servers().len(), 1, "the SOA");
    assert_eq!(
        nodata.extensions().as_ref().map(Edns::max_payload),
        Some(1232),
        "EDNS echoed"
    );

    let nx = answer(
        &mut dp,
        "nosuch.Shop.SVC.cluster.local.",
        RecordType::A,
        None,
    )?;
    assert_eq!(nx.response_code(), ResponseCode::NXDomain);
    let [soa] = nx.name_servers() else {
        panic!("{nx:?}");
    };
    assert_eq!(soa.name().to_string(), "cluster.local.");
    assert_eq!(soa.record_type(), RecordType::SOA);

    let srv = answer(
        &mut dp,
        "_http._tcp.web.shop.svc.cluster.local.",
        RecordType::SRV,
        None,
    )?;
    assert_eq!(srv.answers().len(), 1);
    assert_eq!(srv.additionals().len(), 1, "the target's address");
    Ok(())
}

/// Under `svc.<zone>`, a name with no entry is NXDOMAIN only where the agent's entries say
/// it cannot exist: a Service's name, or a name below a Service's that has none. A
/// namespace's name, or one below a known Service's (an endpoint of a Service with a cluster
/// IP by its address, loose SRV labels), is the DNS server's to answer.
#[test]
#[ignore = "needs root"]
fn names_the_entries_do_not_decide_pass_on() -> Result<()> {
    require_root()?;
    let mut dp = Datapath::load("dnsbelow")?;
    program(&dp, SERVICES)?;
    for name in [
        "empty.svc.cluster.local.",
        "10-244-1-5.web.shop.svc.cluster.local.",
        "_._TCP.Web.shop.svc.cluster.local.",
        "a.b.c.web.shop.svc.cluster.local.",
    ] {
        passes(&mut dp, &query(name, RecordType::A, None), name)?;
    }
    for name in [
        "nosuch.shop.svc.cluster.local.",
        "nosuch.empty.svc.cluster.local.",
        "x.nosuch.shop.svc.cluster.local.",
        "api.example.com.shop.svc.cluster.local.",
    ] {
        let nx = answer(&mut dp, name, RecordType::A, None)?;
        assert_eq!(nx.response_code(), ResponseCode::NXDomain, "{name}");
        assert_eq!(nx.name_servers().len(), 1, "{name}: the SOA");
    }
    // A known namespace, asked with an EDNS size below 512 (which hickory cannot write: the
    // OPT record's class, its last 11 bytes' fourth and fifth, is set by hand).
    let mut payload = query("Shop.svc.cluster.local.", RecordType::A, Some(512))[42..].to_vec();
    let n = payload.len();
    payload[n - 8..n - 6].copy_from_slice(&256u16.to_be_bytes());
    let mut spec = PacketSpec::udp(CLIENT, (DNS, 53));
    spec.payload = payload;
    let (verdict, out) = dp.run(&spec.build())?;
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(reply(&out)?.response_code(), ResponseCode::NoError);
    let n = out.len();
    assert_eq!(
        out[n - 8..n - 6],
        256u16.to_be_bytes(),
        "the client's EDNS size, as sent"
    );
    Ok(())
}

/// A query over IPv6 is answered the same way, with the UDP checksum IPv6 requires; one
/// with an extension header passes on.
#[test]
#[ignore = "needs root"]
fn ipv6_queries_are_answered_with_their_checksum() -> Result<()> {
    require_root()?;
    let mut dp = Datapath::load("dns6")?;
    program(&dp, &format!("{SERVICES}---{}", big_slice()))?;
    let ask = |dp: &mut Datapath, name: &str, edns: Option<u16>| -> Result<Vec<u8>> {
        let mut spec = Packet6::udp(CLIENT6, (DNS6, 53));
        spec.payload = query(name, RecordType::A, edns)[42..].to_vec();
        let (verdict, out) = dp.run(&spec.build())?;
        anyhow::ensure!(verdict == TC_ACT_REDIRECT, "{name}: verdict {verdict}");
        Ok(out)
    };
    for (name, edns, answers) in [
        ("Web.Shop.svc.cluster.local.", None, 1),
        ("big.shop.svc.cluster.local.", Some(4096), 73),
        ("nosuch.shop.svc.cluster.local.", None, 0),
    ] {
        let out = ask(&mut dp, name, edns)?;
        let ip = &out[14..54];
        assert_eq!(ip[8..24], DNS6.octets(), "{name}: from the DNS address");
        assert_eq!(ip[24..40], CLIENT6.0.octets(), "{name}: to the client");
        let payload = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
        assert_eq!(
            14 + 40 + payload,
            out.len(),
            "{name}: the IPv6 payload length"
        );
        assert!(l4_checksum_ok(&out), "{name}: the UDP checksum");
        let reply = Message::from_vec(&out[62..]).context("the reply parses")?;
        assert_eq!(reply.answers().len(), answers, "{name}: {reply:?}");
        assert_eq!(reply.queries()[0].name().to_string(), name);
    }
    let mut hop = Packet6::udp(CLIENT6, (DNS6, 53));
    hop.payload = query("web.shop.svc.cluster.local.", RecordType::A, None)[42..].to_vec();
    hop.ext = vec![Ext::Options(0)];
    let frame = hop.build();
    passes(&mut dp, &frame, "a query with a hop-by-hop header")?;
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn a_reply_too_big_is_cut_with_tc() -> Result<()> {
    require_root()?;
    let mut dp = Datapath::load("dnsbig")?;
    program(&dp, &format!("{SERVICES}---{}", big_slice()))?;
    let small = answer(&mut dp, "big.shop.svc.cluster.local.", RecordType::A, None)?;
    assert!(small.truncated());
    assert!(!small.answers().is_empty());
    let big = answer(
        &mut dp,
        "big.shop.svc.cluster.local.",
        RecordType::A,
        Some(4096),
    )?;
    assert!(
        big.truncated(),
        "100 addresses do not fit a 1,232-byte reply, the largest sent"
    );
    assert_eq!(big.answers().len(), 73);
    let frame_len = 14 + 20 + 8 + 12 + 32 + 73 * 16 + 11;
    assert!(
        frame_len <= 14 + 1280,
        "{frame_len} bytes fit any MTU from 1,280"
    );
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn what_is_not_answered_passes_on_untouched() -> Result<()> {
    require_root()?;
    let mut dp = Datapath::load("dnspass")?;
    program(&dp, SERVICES)?;
    passes(
        &mut dp,
        &query("example.com.", RecordType::A, None),
        "a name outside the zone",
    )?;
    passes(
        &mut dp,
        &query("web.shop.svc.cluster.local.", RecordType::MX, None),
        "a type not answered",
    )?;
    let mut two = Message::new();
    two.set_id(1)
        .add_query(Query::query(
            Name::from_ascii("web.shop.svc.cluster.local.")?,
            RecordType::A,
        ))
        .add_query(Query::query(
            Name::from_ascii("big.shop.svc.cluster.local.")?,
            RecordType::A,
        ));
    let mut spec = PacketSpec::udp(CLIENT, (DNS, 53));
    spec.payload = two.to_vec()?;
    passes(&mut dp, &spec.build(), "two questions")?;
    let mut other = PacketSpec::udp(CLIENT, (Ipv4Addr::new(10, 96, 0, 99), 53));
    other.payload = query("web.shop.svc.cluster.local.", RecordType::A, None)[42..].to_vec();
    passes(&mut dp, &other.build(), "a query to another address")?;
    let mut garbage = PacketSpec::udp(CLIENT, (DNS, 53));
    garbage.payload = vec![0xff; 40];
    passes(&mut dp, &garbage.build(), "garbage")?;
    // A cookie option that claims 8 bytes and has 3, then one that is only half a header.
    let cut = [0, 10, 0, 8, 1, 2, 3];
    passes(&mut dp, &query_with_options(&cut), "an option cut short")?;
    passes(&mut dp, &query_with_options(&[0x41]), "one byte of options")?;
    // A whole cookie (dig sends one), and the same with a byte too many.
    let cookie = [0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8];
    let (verdict, out) = dp.run(&query_with_options(&cookie))?;
    anyhow::ensure!(verdict == TC_ACT_REDIRECT, "a cookie: verdict {verdict}");
    let reply = reply(&out)?;
    anyhow::ensure!(reply.answers().len() == 1, "a cookie: {reply:?}");
    let long = [&cookie[..], &[0]].concat();
    passes(
        &mut dp,
        &query_with_options(&long),
        "a byte after the options",
    )?;
    // A client subnet, well formed (IPv4, /24): the server's to answer.
    let subnet = [0, 8, 0, 7, 0, 1, 24, 0, 10, 1, 2];
    passes(&mut dp, &query_with_options(&subnet), "a client subnet")?;
    Ok(())
}

/// Labels queries are made of: the cluster's names, near misses and strangers.
const LABELS: [&str; 13] = [
    "web",
    "db",
    "shop",
    "svc",
    "cluster",
    "local",
    "nosuch",
    "_http",
    "_tcp",
    "example",
    "com",
    "dns-version",
    "arpa",
];

/// A query's DNS message: a name of labels from [`LABELS`] in a random case, a type, maybe
/// EDNS; then damage: header bits, counts, bytes overwritten, the message cut or extended.
fn fuzzed_query() -> impl Strategy<Value = Vec<u8>> {
    // A few labels, then mostly a suffix of the cluster's.
    let suffixes = vec![
        "shop.svc.cluster.local",
        "shop.svc.cluster.local",
        "svc.cluster.local",
        "cluster.local",
        "in-addr.arpa",
        "example.com",
    ];
    let name = (
        prop::collection::vec((0..LABELS.len(), any::<u64>()), 0..3),
        prop::sample::select(suffixes),
        any::<u64>(),
    )
        .prop_map(|(mut labels, suffix, case)| {
            for label in suffix.split('.') {
                let i = LABELS.iter().position(|l| *l == label);
                labels.push(i.map_or((LABELS.len(), case), |i| (i, case)));
            }
            labels
        });
    let qtype = prop::sample::select(vec![1u16, 28, 33, 12, 16, 5, 15, 255, 6, 2, 0, 41]);
    let damage = prop::collection::vec((any::<u16>(), any::<u8>()), 0..3);
    // Half the queries intact.
    let damage = prop_oneof![Just((Vec::new(), 0)), (damage, -3i32..4)];
    // No EDNS, EDNS, or EDNS with a cookie option (as dig sends).
    (name, qtype, 0..3u8, damage).prop_map(|(labels, qtype, edns, (damage, resize))| {
        let name: Vec<String> = labels
            .iter()
            .map(|(i, case)| {
                LABELS
                    .get(*i)
                    .copied()
                    .unwrap_or("in-addr")
                    .chars()
                    .enumerate()
                    .map(|(j, c)| {
                        if case >> (j % 64) & 1 == 1 {
                            c.to_ascii_uppercase()
                        } else {
                            c
                        }
                    })
                    .collect()
            })
            .collect();
        let mut message = Message::new();
        message
            .set_id(7)
            .set_recursion_desired(true)
            .add_query(Query::query(
                Name::from_ascii(format!("{}.", name.join("."))).unwrap(),
                RecordType::from(qtype),
            ));
        if edns > 0 {
            let mut opt = Edns::new();
            if edns == 2 {
                let cookie = EdnsOption::Unknown(10, vec![7; 8]);
                opt.options_mut().insert(cookie);
            }
            message.set_edns(opt);
        }
        let mut bytes = message.to_vec().unwrap();
        for (at, value) in damage {
            let at = usize::from(at) % bytes.len();
            bytes[at] = value;
        }
        match resize {
            r if r < 0 => bytes.truncate(bytes.len().saturating_sub(r.unsigned_abs() as usize)),
            r if r > 0 => bytes.extend(std::iter::repeat_n(0x41, r as usize)),
            _ => {}
        }
        bytes
    })
}

/// The entry a query gets: its name and type's, else its name's; `None` when there is
/// none (the datapath then answers NXDOMAIN for some names under svc.cluster.local, passes
/// the others).
fn expected<'a>(
    entries: &'a BTreeMap<DnsKey, DnsAnswer>,
    query: &Message,
) -> Option<&'a DnsAnswer> {
    let q = query.queries().first()?;
    let exact = svclb::entries::dns::key(q.name(), u16::from(q.query_type())).ok()?;
    let name = svclb::entries::dns::key(q.name(), 0).ok()?;
    entries.get(&exact).or_else(|| entries.get(&name))
}

/// Whether the query's name, with no entry, does not exist: under `svc.cluster.local`, a
/// Service's name, or a name below a Service's name that has no entry (the datapath's rule,
/// from the other side).
fn nonexistent(entries: &BTreeMap<DnsKey, DnsAnswer>, query: &Message) -> bool {
    let Some(q) = query.queries().first() else {
        return false;
    };
    let suffix = Name::from_ascii("svc.cluster.local.").unwrap();
    if !suffix.zone_of(q.name()) {
        return false;
    }
    let below = q.name().num_labels() - suffix.num_labels();
    let service = q.name().trim_to(usize::from(suffix.num_labels()) + 2);
    match below {
        0 | 1 => false,
        2 => true,
        _ => svclb::entries::dns::key(&service, 0).is_ok_and(|k| !entries.contains_key(&k)),
    }
}

/// Queries, well formed and damaged: every reply the responder sends parses as DNS, answers
/// the question it was asked (the same ID and question, as its entries say), and whatever
/// it does not answer passes on untouched.
#[test]
#[ignore = "needs root"]
fn fuzzed_queries_get_a_right_answer_or_pass_untouched() -> Result<()> {
    require_root()?;
    let dp = std::cell::RefCell::new(Datapath::load("dnsfuzz")?);
    let entries = program(&dp.borrow(), &format!("{SERVICES}---{}", big_slice()))?;
    let config = ProptestConfig {
        cases: 5_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let answered = std::cell::Cell::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(config);
    runner
        .run(&fuzzed_query(), |payload| {
            let mut spec = PacketSpec::udp(CLIENT, (DNS, 53));
            spec.payload = payload.clone();
            let frame = spec.build();
            let (verdict, out) = dp
                .borrow_mut()
                .run(&frame)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            if verdict == TC_ACT_OK {
                prop_assert_eq!(&out, &frame, "passed on, but changed");
                return Ok(());
            }
            prop_assert_eq!(verdict, TC_ACT_REDIRECT, "neither answered nor passed on");
            let reply = reply(&out).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
            let query = Message::from_vec(&payload).map_err(|e| {
                TestCaseError::fail(format!("answered a query that does not parse: {e}"))
            })?;
            prop_assert_eq!(reply.id(), query.id());
            prop_assert_eq!(reply.queries(), query.queries(), "the question, as asked");
            let want = expected(&entries, &query);
            prop_assert!(
                want.is_some() || nonexistent(&entries, &query),
                "NXDOMAIN for a name that may exist"
            );
            let rcode = want.map_or(3, |e| e.rcode);
            prop_assert_eq!(u16::from(reply.response_code()), u16::from(rcode));
            if let Some(entry) = want {
                let cut = if reply.truncated()
                    && usize::from(entry.whole.answers) > reply.answers().len()
                {
                    entry.small
                } else {
                    entry.whole
                };
                prop_assert_eq!(reply.answers().len(), usize::from(cut.answers));
            }
            answered.set(answered.get() + 1);
            Ok(())
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert!(
        answered.get() > 500,
        "only {} of 5,000 answered",
        answered.get()
    );
    Ok(())
}
