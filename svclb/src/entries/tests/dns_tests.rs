//! The DNS entries, read back the way a client does: each entry's sections spliced after a
//! question in the client's own case, parsed as a whole message.

use std::{collections::BTreeMap, path::Path};

use hickory_proto::{
    op::{Message, ResponseCode},
    rr::{Name, RData, RecordType},
};
use svclb_common::dns::{
    DNS_F_CUT, DNS_F_PASS, DnsAnswer, DnsCut, DnsKey, QTYPE_NAME, RCODE_NXDOMAIN,
};

use super::{Zone, key, table};
use crate::{
    plan::dns::records,
    source::manifests::{parse_documents, snapshot_of},
};

const SERIAL: u32 = 1_765_000_000;

fn entries(yaml: &str) -> BTreeMap<DnsKey, DnsAnswer> {
    let (objects, diags) = parse_documents(yaml, "test.yaml").expect("valid YAML");
    assert!(diags.is_empty(), "{diags:?}");
    let snapshot = snapshot_of([(Path::new("test.yaml"), objects.as_slice())]);
    let zone = Zone::new("cluster.local", SERIAL).unwrap();
    let (table, errors) = table(&records(&snapshot, "cluster.local"), &zone);
    assert!(errors.is_empty(), "{errors:?}");
    table
}

/// The reply a client asking `qname` (in its own case) for `qtype` gets from `entry`, cut
/// at `cut`.
fn reply(qname: &str, qtype: u16, entry: &DnsAnswer, cut: &DnsCut) -> Message {
    let mut bytes = vec![0x12, 0x34, 0x84, entry.rcode];
    for count in [1, cut.answers, cut.authorities, cut.additionals] {
        bytes.extend(count.to_be_bytes());
    }
    for label in qname.trim_end_matches('.').split('.') {
        bytes.push(label.len() as u8);
        bytes.extend(label.as_bytes());
    }
    bytes.push(0);
    bytes.extend(qtype.to_be_bytes());
    bytes.extend(1u16.to_be_bytes());
    bytes.extend(&entry.data[..usize::from(cut.len)]);
    Message::from_vec(&bytes).expect("the reply parses")
}

/// The entry of `qname` (any case) and `qtype`.
fn entry<'a>(table: &'a BTreeMap<DnsKey, DnsAnswer>, qname: &str, qtype: u16) -> &'a DnsAnswer {
    let name = Name::from_ascii(qname).unwrap();
    table
        .get(&key(&name, qtype).unwrap())
        .unwrap_or_else(|| panic!("no entry for {qname} type {qtype}"))
}

fn answers(message: &Message) -> Vec<String> {
    message
        .answers()
        .iter()
        .map(|rr| format!("{} {} {}", rr.name(), rr.ttl(), rr.data()))
        .collect()
}

const WEB: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIPs: [10.96.0.10, 'fd00:96::a']
  ports:
  - {name: http, port: 80}
";

#[test]
fn an_address_reply_names_the_owner_as_the_client_wrote_it() {
    let table = entries(WEB);
    let qname = "Web.SHOP.svc.Cluster.local.";
    let a = entry(&table, qname, 1);
    assert_eq!(a.flags, 0);
    let message = reply(qname, 1, a, &a.whole);
    assert_eq!(message.response_code(), ResponseCode::NoError);
    assert_eq!(
        answers(&message),
        ["Web.SHOP.svc.Cluster.local. 5 10.96.0.10"]
    );
    let aaaa = entry(&table, qname, 28);
    assert_eq!(
        answers(&reply(qname, 28, aaaa, &aaaa.whole)),
        ["Web.SHOP.svc.Cluster.local. 5 fd00:96::a"]
    );
}

#[test]
fn other_types_of_a_name_get_nodata_with_the_zones_soa_in_the_clients_case() {
    let table = entries(WEB);
    let qname = "web.shop.SVC.CLUSTER.local.";
    let nodata = entry(&table, qname, QTYPE_NAME);
    let message = reply(qname, 15, nodata, &nodata.whole);
    assert_eq!(message.response_code(), ResponseCode::NoError);
    assert!(message.answers().is_empty());
    let [soa] = message.name_servers() else {
        panic!("one SOA: {message:?}");
    };
    assert_eq!(soa.name().to_string(), "CLUSTER.local.");
    assert_eq!(soa.ttl(), 5);
    let RData::SOA(soa) = soa.data() else {
        panic!("{soa:?}");
    };
    assert_eq!(soa.mname().to_string(), "ns.dns.CLUSTER.local.");
    assert_eq!(soa.rname().to_string(), "hostmaster.CLUSTER.local.");
    assert_eq!(
        (
            soa.serial(),
            soa.refresh(),
            soa.retry(),
            soa.expire(),
            soa.minimum()
        ),
        (SERIAL, 7200, 1800, 86_400, 5)
    );
}

#[test]
fn srv_replies_carry_their_targets_addresses() {
    let table = entries(WEB);
    let qname = "_http._tcp.web.shop.svc.cluster.local.";
    let srv = entry(&table, qname, 33);
    let message = reply(qname, 33, srv, &srv.whole);
    assert_eq!(
        answers(&message),
        ["_http._tcp.web.shop.svc.cluster.local. 5 0 50 80 web.shop.svc.cluster.local."]
    );
    let mut glue: Vec<String> = message
        .additionals()
        .iter()
        .map(|rr| format!("{} {}", rr.name(), rr.data()))
        .collect();
    glue.sort();
    assert_eq!(
        glue,
        [
            "web.shop.svc.cluster.local. 10.96.0.10",
            "web.shop.svc.cluster.local. fd00:96::a"
        ]
    );
    assert!(
        table.contains_key(&key(&Name::from_ascii(qname).unwrap(), QTYPE_NAME).unwrap()),
        "an SRV name exists: its other types get NODATA"
    );
    // SRV of the Service's own name (every port, unnamed ones too) is the DNS service's.
    let bare = entry(&table, "web.shop.svc.cluster.local.", 33);
    assert_eq!(bare.flags, DNS_F_PASS);
    // RFC 2782: the target is not compressed.
    let target = b"\x03web\x04shop\x03svc\x07cluster\x05local\x00";
    let data = &srv.data[..usize::from(srv.whole.len)];
    assert!(
        data.windows(target.len()).any(|w| w == target),
        "{data:02x?}"
    );
}

/// SRV of an endpoint's name: CoreDNS answers one per port of its slice, named or not; the
/// DNS service does.
#[test]
fn srv_of_an_endpoint_name_passes_on() {
    let table = entries(
        "
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec: {clusterIP: None, ports: [{name: pg, port: 5432}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-1, namespace: shop, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: pg, port: 5432, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.5], hostname: db-0}
",
    );
    let name = "Db-0.db.shop.svc.cluster.local.";
    assert_eq!(entry(&table, name, 33).flags, DNS_F_PASS);
    let a = entry(&table, name, 1);
    assert_eq!(
        answers(&reply(name, 1, a, &a.whole)),
        ["Db-0.db.shop.svc.cluster.local. 5 10.244.1.5"]
    );
}

#[test]
fn the_zones_negative_answer_points_at_the_zone_in_any_question() {
    let zone = Zone::new("cluster.local", SERIAL).unwrap();
    let entry = zone.entry(&["10.96.0.10".parse().unwrap()], 1).unwrap();
    assert_eq!(entry.servers[0][..4], [10, 96, 0, 10]);
    assert_eq!(entry.server_families, [4, 0, 0, 0]);
    assert_eq!(
        &entry.name[..usize::from(entry.len)],
        b"\x07cluster\x05local\x00"
    );
    let qname = "nosuch.Shop.SVC.Cluster.Local.";
    let qlen = 1 + 6 + 1 + 4 + 1 + 3 + 1 + 7 + 1 + 5 + 1;
    // What the datapath does: the pointers at the zone's place in the question.
    let mut soa = entry.soa[..usize::from(entry.soa_len)].to_vec();
    let at = (12 + qlen - usize::from(entry.len)) as u16;
    for pointer in entry.soa_pointers {
        let p = usize::from(pointer);
        soa[p..p + 2].copy_from_slice(&(0xc000 | at).to_be_bytes());
    }
    let mut answer = DnsAnswer {
        rcode: RCODE_NXDOMAIN,
        flags: 0,
        _pad: [0; 6],
        whole: DnsCut {
            len: soa.len() as u16,
            answers: 0,
            authorities: 1,
            additionals: 0,
        },
        small: DnsCut::default(),
        data: [0; svclb_common::dns::DNS_SECTIONS_MAX],
    };
    answer.data[..soa.len()].copy_from_slice(&soa);
    let message = reply(qname, 1, &answer, &answer.whole);
    assert_eq!(message.response_code(), ResponseCode::NXDomain);
    let [soa] = message.name_servers() else {
        panic!("{message:?}");
    };
    assert_eq!(soa.name().to_string(), "Cluster.Local.");
    let RData::SOA(soa) = soa.data() else {
        panic!("{soa:?}");
    };
    assert_eq!(soa.mname().to_string(), "ns.dns.Cluster.Local.");
    assert_eq!(soa.rname().to_string(), "hostmaster.Cluster.Local.");
}

#[test]
fn a_namespace_exists_with_its_services_and_has_no_txt() {
    let table = entries(WEB);
    for qname in ["shop.svc.cluster.local.", "svc.cluster.local."] {
        let nodata = entry(&table, qname, QTYPE_NAME);
        assert_eq!(nodata.rcode, 0, "{qname}");
        let txt = entry(&table, qname, 16);
        let message = reply(qname, 16, txt, &txt.whole);
        assert_eq!(message.response_code(), ResponseCode::NXDomain, "{qname}");
        assert_eq!(message.name_servers().len(), 1, "{qname}: the SOA");
        assert_eq!(txt.rcode, RCODE_NXDOMAIN);
    }
    let version = entry(&table, "dns-version.cluster.local.", 16);
    assert_eq!(
        answers(&reply(
            "dns-version.cluster.local.",
            16,
            version,
            &version.whole
        )),
        ["dns-version.cluster.local. 28800 1.1.0"]
    );
    let ptr = entry(&table, "10.0.96.10.in-addr.arpa.", 12);
    assert_eq!(
        answers(&reply("10.0.96.10.in-addr.arpa.", 12, ptr, &ptr.whole)),
        ["10.0.96.10.in-addr.arpa. 5 web.shop.svc.cluster.local."]
    );
}

#[test]
fn an_external_name_answers_its_cname_and_passes_the_rest_on() {
    let table = entries(
        "
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec: {type: ExternalName, externalName: db.example.com}
",
    );
    let qname = "db.shop.svc.cluster.local.";
    let cname = entry(&table, qname, 5);
    assert_eq!(
        answers(&reply(qname, 5, cname, &cname.whole)),
        ["db.shop.svc.cluster.local. 5 db.example.com."]
    );
    assert_eq!(entry(&table, qname, QTYPE_NAME).flags, DNS_F_PASS);
    assert!(
        !table.contains_key(&key(&Name::from_ascii(qname).unwrap(), 1).unwrap()),
        "the target's addresses are the server's to find"
    );
}

#[test]
fn a_reply_too_big_for_a_small_message_is_cut_at_a_record() {
    let addresses: Vec<String> = (0..120).map(|i| format!("10.244.1.{i}")).collect();
    let table = entries(&format!(
        "
apiVersion: v1
kind: Service
metadata: {{name: big, namespace: shop}}
spec: {{clusterIP: None}}
---
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
    ));
    let qname = "big.shop.svc.cluster.local.";
    let a = entry(&table, qname, 1);
    // 16 bytes an address (a pointer to the question as owner): 73 fit a 1,232-byte
    // message with its header, question (32 bytes) and OPT.
    assert_eq!(a.whole.answers, 73);
    assert_eq!(usize::from(a.whole.len), 73 * 16);
    assert_eq!(a.flags & DNS_F_CUT, DNS_F_CUT, "120 do not");
    assert_eq!(reply(qname, 1, a, &a.whole).answers().len(), 73);
    let small = reply(qname, 1, a, &a.small);
    assert_eq!(small.answers().len(), usize::from(a.small.answers));
    let message_len = 12 + 28 + 4 + usize::from(a.small.len);
    assert!(
        message_len + 11 <= 512 && message_len + 11 + 16 > 512,
        "{message_len}"
    );
    assert_eq!(RecordType::A, small.answers()[0].record_type());
}

/// A Service named `name` in namespace `ns` on `cluster_ip` ("None": headless), its port
/// `port` (named `port_name`), and a slice of `endpoints` (address, hostname or "").
fn service(
    name: &str,
    ns: &str,
    cluster_ip: &str,
    port_name: &str,
    endpoints: &[(&str, &str)],
) -> String {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  clusterIP: {cluster_ip}\n  ports:\n  - name: {port_name}\n    port: 80\n    protocol: TCP\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: {ns}\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nports:\n- name: {port_name}\n  port: 8080\n  protocol: TCP\nendpoints:\n"
    );
    for (address, hostname) in endpoints {
        yaml += &format!("- addresses: [{address}]\n  conditions: {{ready: true}}\n");
        if !hostname.is_empty() {
            yaml += &format!("  hostname: {hostname}\n");
        }
    }
    yaml + "---\n"
}

/// Headless `db` with port `sql` and one endpoint (hostname `h`) in a slice with that port,
/// and another slice, without ports, holding `other` under the same hostname.
fn shared_hostname(other: &str) -> String {
    let with_port = service("db", "shop", "None", "sql", &[("10.244.0.6", "h")]);
    format!(
        "{with_port}apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: db-2\n  namespace: shop\n  labels:\n    kubernetes.io/service-name: db\naddressType: IPv4\nendpoints:\n- addresses: [{other}]\n  conditions: {{ready: true}}\n  hostname: h\n---\n"
    )
}

/// A table kept from update to update holds, after each, what a table made from scratch
/// holds, and an update that changes one Service touches only that Service's names.
#[test]
fn an_updated_table_matches_one_made_from_scratch() {
    let external = "apiVersion: v1\nkind: Service\nmetadata:\n  name: ext\n  namespace: other\nspec:\n  type: ExternalName\n  externalName: example.org\n---\n";
    let web = service("web", "shop", "10.96.0.10", "http", &[("10.244.0.9", "")]);
    let db = |endpoints: &[(&str, &str)]| service("db", "shop", "None", "sql", endpoints);
    let two = [("10.244.0.1", "db-0"), ("10.244.0.2", "")];
    let moved = service("web", "shop", "10.96.0.11", "web", &[("10.244.0.1", "")]);
    let steps = [
        format!("{web}{}{external}", db(&two)),
        // Nothing changed.
        format!("{web}{}{external}", db(&two)),
        // An endpoint left.
        format!("{web}{}{external}", db(&two[..1])),
        // A renamed port, a new cluster IP, and web's endpoint now db's too (its PTR goes).
        format!("{moved}{}{external}", db(&two[..1])),
        // A namespace's only Service went.
        format!("{moved}{}", db(&two[..1])),
        // Two slices of one headless Service, one without the SRV's port, whose endpoints
        // share a hostname: the SRV name's records stay, its target's addresses change.
        format!("{moved}{}", shared_hostname("10.244.0.7")),
        format!("{moved}{}", shared_hostname("10.244.0.8")),
    ];
    let zone = Zone::new("cluster.local", SERIAL).unwrap();
    let mut kept_records = crate::plan::dns::Records::new("cluster.local");
    let mut kept = super::Table::default();
    let mut state = BTreeMap::new();
    // The objects of the step before, reused where a step repeats one, as a source does.
    let mut objects_before: Vec<crate::source::manifests::Object> = Vec::new();
    for (step, yaml) in steps.iter().enumerate() {
        let (parsed, diags) = parse_documents(yaml, "test.yaml").expect("valid YAML");
        assert!(diags.is_empty(), "{diags:?}");
        let objects: Vec<_> = parsed
            .into_iter()
            .map(|object| {
                let same = objects_before.iter().find(|o| same_object(o, &object));
                same.cloned().unwrap_or(object)
            })
            .collect();
        let snapshot = snapshot_of([(Path::new("test.yaml"), objects.as_slice())]);
        let changed = kept_records.update(&snapshot);
        let of = |name: &str| kept_records.of(name);
        let delta = kept.update(changed.iter().map(String::as_str), &of, &zone);
        let records = records(&snapshot, "cluster.local");
        assert_eq!(kept_records.all(), records, "step {step}: the records kept");
        objects_before = objects;
        assert!(delta.refused.is_empty(), "{:?}", delta.refused);
        for key in &delta.gone {
            assert!(!delta.put.contains_key(key), "step {step}: put and gone");
            assert!(
                state.remove(key).is_some(),
                "step {step}: gone, but never put"
            );
        }
        let changed = delta.put.len() + delta.gone.len();
        state.extend(delta.put);
        let (scratch, _) = table(&records, &zone);
        let differ: Vec<String> = (state.keys().chain(scratch.keys()))
            .filter(|key| state.get(key) != scratch.get(key))
            .map(crate::reconcile::dns::name)
            .collect();
        assert!(differ.is_empty(), "step {step}: {differ:?}");
        match step {
            0 => assert_eq!(changed, scratch.len()),
            1 => assert_eq!(changed, 0, "nothing changed"),
            // db's A, its SRV name's SRV and A (one address fewer), and the leaver's own
            // names gone: its dashed name's (A, NODATA, SRV passed on) and its PTR name's.
            2 => assert!(
                (1..=10).contains(&changed),
                "{changed} entries for one endpoint"
            ),
            _ => assert!(
                changed < scratch.len(),
                "step {step}: every entry rewritten"
            ),
        }
    }
}

/// Whether two parsed objects are the same object, field for field.
fn same_object(a: &crate::source::manifests::Object, b: &crate::source::manifests::Object) -> bool {
    use crate::source::manifests::Object;
    match (a, b) {
        (Object::Service(a), Object::Service(b)) => a == b,
        (Object::EndpointSlice(a), Object::EndpointSlice(b)) => a == b,
        _ => false,
    }
}
