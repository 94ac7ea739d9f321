//! Writing the DNS entries: only what changed, and a failed write left out of what the kernel
//! is believed to hold.

use std::path::Path;

use svclb_common::dns::QTYPE_AAAA;

use super::{DnsEntries, sync};
use crate::{
    entries::dns::{Zone, table},
    plan::dns::records,
    reconcile::test_kernel::FakeKernel,
    source::manifests::{parse_documents, snapshot_of},
};

fn entries(yaml: &str) -> DnsEntries {
    let (objects, diags) = parse_documents(yaml, "t.yaml").expect("valid YAML");
    assert!(diags.is_empty(), "{diags:?}");
    let snapshot = snapshot_of([(Path::new("t.yaml"), objects.as_slice())]);
    let zone = Zone::new("cluster.local", 1).unwrap();
    let (table, errors) = table(&records(&snapshot, "cluster.local"), &zone);
    assert!(errors.is_empty(), "{errors:?}");
    table
}

fn service(name: &str, ips: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{clusterIPs: {ips}}}\n"
    )
}

#[test]
fn a_sync_writes_what_changed_and_deletes_what_went() {
    let mut kernel = FakeKernel::default();
    let mut programmed = DnsEntries::new();
    let first = entries(&service("web", "[10.96.0.10]"));
    let report = sync(&mut kernel, &mut programmed, &first);
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(report.writes, first.len());
    assert_eq!(kernel.dns, first);
    assert_eq!(programmed, first);

    // One address moves: its A entry and its PTR entries change, nothing else.
    let moved = entries(&service("web", "[10.96.0.11]"));
    let changed = moved
        .iter()
        .filter(|(k, v)| first.get(k) != Some(v))
        .count()
        + first.keys().filter(|k| !moved.contains_key(k)).count();
    let report = sync(&mut kernel, &mut programmed, &moved);
    assert_eq!(report.writes, changed);
    assert!(changed <= 3, "{changed} writes for one address");
    assert_eq!(kernel.dns, moved);

    let report = sync(&mut kernel, &mut programmed, &DnsEntries::new());
    assert_eq!(report.writes, moved.len());
    assert!(kernel.dns.is_empty() && programmed.is_empty());
}

#[test]
fn a_failed_write_is_named_and_not_believed() {
    let mut kernel = FakeKernel {
        fail_dns_types: [QTYPE_AAAA].into(),
        ..FakeKernel::default()
    };
    let mut programmed = DnsEntries::new();
    let desired = entries(&service("web", "[10.96.0.10, 'fd00::a']"));
    let report = sync(&mut kernel, &mut programmed, &desired);
    assert_eq!(report.errors.len(), 1, "{report:?}");
    assert!(
        report.errors[0].starts_with("DNS name web.shop.svc.cluster.local. type 28: map full"),
        "{report:?}"
    );
    assert_eq!(
        programmed, kernel.dns,
        "the programmed entries are the kernel's"
    );
    assert_eq!(programmed.len(), desired.len() - 1);
    // The next sync tries it again.
    kernel.fail_dns_types.clear();
    let report = sync(&mut kernel, &mut programmed, &desired);
    assert_eq!((report.writes, report.errors.len()), (1, 0));
    assert_eq!(kernel.dns, desired);
}
