//! The status table as it renders.

use super::{AgentStatus, LinkStatus, MapFill, Status, UplinkXdp, render_table};
use crate::telemetry::report::LastSync;

#[test]
fn the_table_says_what_matters_first() {
    let status = Status {
        version: "0.1.0".into(),
        bpffs_dir: "/sys/fs/bpf/svclb".into(),
        agent: Some(AgentStatus {
            version: "0.1.0".into(),
            node: "n1".into(),
            source: "manifests in /m".into(),
            pid: 42,
            started_unix: 1_000,
            ready: true,
            devices: vec!["eth0".into()],
            device_problems: Vec::new(),
            syncs: 7,
            last_sync: Some(LastSync {
                at_unix_ms: 1_000_000,
                duration_ms: 1.3,
                full: false,
                writes: 3,
                errors: 0,
            }),
            frontends_not_programmed: 0,
            objects_skipped: 0,
            nodeport_addresses: vec!["172.31.0.11".into()],
            nodeport_origin: vec![
                "IPv4: the uplinks (no Node object)".into(),
                "IPv6: none".into(),
            ],
            private_pins: false,
            socket_lb: Some("cgroup /sys/fs/cgroup (9 hooks)".into()),
        }),
        agent_error: None,
        links: vec![LinkStatus {
            pin: "cgroup-connect4-4242".into(),
            hook: "cgroup connect4".into(),
            ifindex: 0,
            cgroup_id: Some(4242),
            device: None,
            link_id: 7,
            program_id: 9,
        }],
        frontends: 2,
        backends: 3,
        frontends_ipv6: 0,
        backends_ipv6: 0,
        maps: vec![
            MapFill {
                map: "SVCLB_SERVICES".into(),
                entries: 2,
                capacity: 4,
                evicted: None,
                insert_failures: None,
            },
            MapFill {
                map: "SVCLB_CT".into(),
                entries: 1024,
                capacity: 1024,
                evicted: Some(4976),
                insert_failures: Some(0),
            },
        ],
        xdp: vec![UplinkXdp {
            device: "eth0".into(),
            ifindex: 2,
            finished: 5000,
            passed: 120,
            dropped: 3,
        }],
        events: vec![
            ("tcp_without_flow".into(), 12),
            ("snat_port_reclaimed".into(), 3),
        ],
        warnings: vec!["map X is 95% full (95 of 100)".into()],
    };
    let table = render_table(&status, 1_002_500);
    assert!(
        table.starts_with(
            "agent      svclb 0.1.0 on node n1 (pid 42), ready, reading manifests in /m\n"
        ),
        "{table}"
    );
    assert!(
        table.contains(
            "last sync  2.5s ago took 1.3 ms (changes only, 3 writes, 0 errors); 7 syncs"
        ),
        "{table}"
    );
    assert!(
        table.contains("SVCLB_SERVICES             2         4    50%        -       -\n"),
        "{table}"
    );
    assert!(
        table.contains("SVCLB_CT                1024      1024   100%     4976       0\n"),
        "{table}"
    );
    assert!(
        table.contains("socket-lb  cgroup /sys/fs/cgroup (9 hooks)\n"),
        "{table}"
    );
    assert!(
        table.contains("xdp        eth0: 5000 finished in XDP, 120 passed to TC, 3 dropped\n"),
        "{table}"
    );
    assert!(
        table.contains("events     tcp_without_flow 12, snat_port_reclaimed 3\n"),
        "{table}"
    );
    assert!(
        table.contains("cgroup:4242     cgroup connect4            7  9\n"),
        "{table}"
    );
    assert!(
        table.contains("  - map X is 95% full (95 of 100)"),
        "{table}"
    );
    assert!(
        table.contains("datapath   2 frontends, 3 backends, pinned in /sys/fs/bpf/svclb\n"),
        "{table}"
    );
    assert!(
        table.contains("nodeports  172.31.0.11 (IPv4: the uplinks (no Node object); IPv6: none)\n"),
        "{table}"
    );
    // With IPv6 entries, both families are counted.
    let status = Status {
        frontends_ipv6: 1,
        backends_ipv6: 2,
        ..status
    };
    let table = render_table(&status, 1_002_500);
    assert!(
        table.contains(
            "datapath   2 frontends (1 IPv4, 1 IPv6), 3 backends (1 IPv4, 2 IPv6), pinned in"
        ),
        "{table}"
    );
}
