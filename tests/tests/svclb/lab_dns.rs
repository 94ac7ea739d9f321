//! Service DNS answered by the datapath, through real agents (`--cluster-dns`): a pod's
//! queries for the cluster's names get their answers from the node it runs on, in the
//! client's case, with no flow made; everything else reaches the cluster's DNS service
//! through the service path.

use std::path::Path;

use anyhow::{Context as _, Result};
use nix::sys::signal::Signal;
use svclb_tests::{
    Lab, LabSpec, Pod,
    manifests::{DNS, WEB, cluster_ip_service, service},
    netns, require_root,
    server::STUB_ADDRESS,
};

const CLUSTER_DNS: &str = "10.96.0.10";

/// A lab whose agents answer the cluster DNS address, with `kube-dns` (its backend a stub
/// upstream on node 2), `web` (a cluster IP) and headless `db` (two pods): the lab and db's
/// pods.
fn dns_lab() -> Result<(Lab, [Pod; 2])> {
    let mut lab = Lab::new(LabSpec {
        agent_args: vec!["--cluster-dns".into(), CLUSTER_DNS.into()],
        ..LabSpec::default()
    })?;
    let server = lab.pod("n2-pod1").clone();
    let pods = [lab.pod("n1-pod2").clone(), lab.pod("n2-pod2").clone()];
    // The DNS server behind kube-dns is a lab backend, whose UDP server answers DNS queries
    // as a stub upstream (`svclb_tests::server`).
    lab.write_manifest(
        "kube-dns.yaml",
        &cluster_ip_service("kube-dns", CLUSTER_DNS, &[DNS], &[&server]),
    )?;
    lab.write_manifest(
        "web.yaml",
        &cluster_ip_service("web", "10.96.0.20", &[WEB], &[&server]),
    )?;
    lab.write_manifest("db.yaml", &service("db", "None", &[WEB], &pods, "", ""))?;
    lab.write_manifest(
        "ext.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: ext\n  namespace: default\nspec:\n  type: ExternalName\n  externalName: example.org\n",
    )?;
    lab.start_agents()?;
    Ok((lab, pods))
}

/// Asks the cluster DNS address for `name` and `qtype` from network namespace `ns` on node
/// 1: the reply's rcode, flags, answers and authority count.
fn ask(lab: &Lab, ns: &str, name: &str, qtype: &str) -> Result<Vec<String>> {
    let dns = format!("{CLUSTER_DNS}:53");
    let line = lab.run_client(0, ns, &["dns", &dns, name, qtype])?;
    let line = line.first().context("no output")?.clone();
    Ok(line.split('\t').map(str::to_owned).collect())
}

/// A resolv.conf as kubelet writes a pod's (ClusterFirst), in the lab's work directory.
fn resolv_conf(lab: &Lab) -> Result<String> {
    let conf = lab.work_file(
        "resolv.conf",
        &format!(
            "nameserver {CLUSTER_DNS}\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
        ),
    )?;
    Ok(conf.to_string_lossy().into_owned())
}

/// Resolves `name` with glibc from network namespace `ns` on node 1, through
/// [`resolv_conf`]: the addresses, space-separated.
fn resolve(lab: &Lab, ns: &str, name: &str) -> Result<String> {
    let out = lab.run_client(0, ns, &["resolve", &resolv_conf(lab)?, name])?;
    Ok(out.first().cloned().unwrap_or_default())
}

/// The same with musl's getaddrinfo (`resolver`, from [`svclb_tests::musl`]), in a mount
/// namespace where /etc/resolv.conf is [`resolv_conf`].
fn resolve_musl(lab: &Lab, ns: &str, resolver: &Path, name: &str) -> Result<String> {
    let script = format!(
        "mount --bind {} /etc/resolv.conf && exec {} {name}",
        resolv_conf(lab)?,
        resolver.display()
    );
    let out = lab.run_in(0, ns, "unshare", &["--mount", "sh", "-c", &script])?;
    Ok(out.trim().to_owned())
}

/// dig's reply (BIND's stub, with its EDNS cookie option) to `name`/`qtype` at the cluster
/// DNS address, from network namespace `ns` on node 1: the status, whether AA is set, and
/// each answer as `TTL TYPE DATA`, sorted.
fn dig(lab: &Lab, ns: &str, name: &str, qtype: &str) -> Result<(String, bool, Vec<String>)> {
    let server = format!("@{CLUSTER_DNS}");
    let args = [
        &server,
        "+tries=1",
        "+time=2",
        "+noall",
        "+comments",
        "+answer",
        name,
        qtype,
    ];
    let out = lab.run_in(0, ns, "dig", &args)?;
    let status = out
        .split("status: ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .with_context(|| format!("no status in {out}"))?
        .to_owned();
    let aa = out
        .lines()
        .find_map(|l| l.strip_prefix(";; flags:"))
        .is_some_and(|flags| flags.split(';').next().unwrap_or("").contains(" aa"));
    let mut answers: Vec<String> = out
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            // owner, TTL, class, type, data...
            format!("{} {} {}", fields[1], fields[3], fields[4..].join(" "))
        })
        .collect();
    answers.sort();
    Ok((status, aa, answers))
}

#[test]
#[ignore = "needs root"]
fn pods_get_the_cluster_names_answered_by_their_node() -> Result<()> {
    require_root()?;
    let (lab, pods) = dns_lab()?;
    let client = lab.pod("n1-pod1").ns.clone();
    let dns = format!("{CLUSTER_DNS}:53");
    let ask = |name: &str, qtype: &str| ask(&lab, &client, name, qtype);

    assert_eq!(
        ask("Web.Default.svc.Cluster.Local", "A")?,
        [
            "NoError",
            "aa",
            "Web.Default.svc.Cluster.Local. 5 10.96.0.20",
            "0"
        ]
    );
    let headless = ask("db.default.svc.cluster.local", "A")?;
    let mut addresses: Vec<&str> = headless[2].split("; ").collect();
    addresses.sort_unstable();
    let mut want: Vec<String> = pods
        .iter()
        .map(|p| format!("db.default.svc.cluster.local. 5 {}", p.addr))
        .collect();
    want.sort();
    assert_eq!(addresses, want, "{headless:?}");
    assert_eq!(
        ask("web.default.svc.cluster.local", "AAAA")?,
        ["NoError", "aa", "", "1"],
        "NODATA, with the SOA"
    );
    assert_eq!(
        ask("nosuch.default.svc.cluster.local", "A")?,
        ["NXDomain", "aa", "", "1"]
    );
    let answered = lab.event(0, "dns_answered")? + lab.event(0, "dns_nxdomain")?;
    assert!(answered >= 4, "node 1 answered {answered}");

    // glibc's way, 100,000 lookups (an A and an AAAA query back to back on one socket) from
    // 8 threads: none waits a second, and none makes a flow.
    let flows_before = lab.conntrack_entries(0)?;
    let load = lab.run_client(
        0,
        &client,
        &[
            "dns-load",
            &dns,
            "web.default.svc.cluster.local",
            "-",
            "8",
            "100000",
            "60",
        ],
    )?;
    let fields: Vec<u128> = load
        .first()
        .and_then(|l| l.strip_prefix("dns-load "))
        .context("no dns-load line")?
        .split(' ')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let [done, failed, _, _, slowest_ns, _] = fields[..] else {
        anyhow::bail!("{load:?}");
    };
    assert_eq!((done, failed), (100_000, 0), "{load:?}");
    assert!(
        slowest_ns < 1_000_000_000,
        "the slowest lookup took {slowest_ns} ns"
    );
    assert_eq!(
        lab.conntrack_entries(0)?,
        flows_before,
        "no flow for a cluster name"
    );

    // glibc, through a pod's resolv.conf as kubelet writes it (ClusterFirst): short names
    // found through the search list, whose misses are answered NXDOMAIN here.
    let resolve = |name: &str| resolve(&lab, &client, name);
    let mut db: Vec<String> = pods.iter().map(|p| p.addr.to_string()).collect();
    db.sort();
    for (name, want) in [
        ("web", "10.96.0.20".to_owned()),
        ("web.default", "10.96.0.20".to_owned()),
        ("Web.Default.svc.cluster.local.", "10.96.0.20".to_owned()),
        ("db", db.join(" ")),
    ] {
        assert_eq!(resolve(name)?, want, "getaddrinfo({name:?})");
    }

    // An endpoint leaves the headless Service: its address leaves the answers with the
    // sync that takes it out of the datapath.
    lab.write_manifest(
        "db.yaml",
        &service("db", "None", &[WEB], &pods[..1], "", ""),
    )?;
    let changed = std::time::Instant::now();
    let want = format!("db.default.svc.cluster.local. 5 {}", pods[0].addr);
    let gone = lab.wait_for(
        std::time::Duration::from_secs(5),
        "the address to leave",
        || ask("db.default.svc.cluster.local", "A").is_ok_and(|reply| reply[2] == want),
    )?;
    let took = changed.elapsed().min(gone);
    eprintln!("an endpoint left the DNS answers {took:?} after its slice changed");
    assert!(
        took <= std::time::Duration::from_millis(100),
        "the answers changed {took:?} after the slice (the file's watch and one sync)"
    );

    // A name outside the cluster reaches the DNS service's backend, a stub upstream: through
    // the search list (two misses answered NXDOMAIN here, one by the upstream), then as is.
    let passed_before = lab.event(0, "dns_passed_name")?;
    let nx_before = lab.event(0, "dns_nxdomain")?;
    assert_eq!(
        ask("example.com", "A")?,
        [
            "NoError",
            "ra",
            &format!("example.com. 30 {STUB_ADDRESS}"),
            "0"
        ]
    );
    assert_eq!(resolve("example.com")?, STUB_ADDRESS.to_string());
    // The A and AAAA of each of the four names glibc tries.
    assert_eq!(
        lab.event(0, "dns_nxdomain")? - nx_before,
        4,
        "two search-list misses"
    );
    assert_eq!(
        lab.event(0, "dns_passed_name")? - passed_before,
        1 + 4,
        "the query by hand, and two names through glibc"
    );
    Ok(())
}

/// The node's own processes (host network) get the same answers from the datapath: their
/// queries are routed into the agent's veth pair, whose far end carries the pod program.
/// What it does not answer goes on to the DNS service from there.
#[test]
#[ignore = "needs root"]
fn host_network_clients_get_the_cluster_names_answered_by_their_node() -> Result<()> {
    require_root()?;
    let (mut lab, pods) = dns_lab()?;
    let host = lab.nodes[0].ns.clone();
    let flows_before = lab.conntrack_entries(0)?;
    let answered_before = lab.event(0, "dns_answered")?;
    assert_eq!(
        ask(&lab, &host, "Web.Default.svc.Cluster.Local", "A")?,
        [
            "NoError",
            "aa",
            "Web.Default.svc.Cluster.Local. 5 10.96.0.20",
            "0"
        ]
    );
    assert_eq!(
        ask(&lab, &host, "nosuch.default.svc.cluster.local", "A")?,
        ["NXDomain", "aa", "", "1"]
    );
    let mut db: Vec<String> = pods.iter().map(|p| p.addr.to_string()).collect();
    db.sort();
    assert_eq!(resolve(&lab, &host, "db")?, db.join(" "), "getaddrinfo(db)");
    assert_eq!(
        resolve(&lab, &host, "web")?,
        "10.96.0.20",
        "getaddrinfo(web)"
    );
    // The A and AAAA of web and of db: the datapath's (NXDOMAIN counts apart).
    let answered = lab.event(0, "dns_answered")? - answered_before;
    assert!(
        answered >= 5,
        "node 1 answered {answered} of the host's queries"
    );
    assert_eq!(
        lab.conntrack_entries(0)?,
        flows_before,
        "no flow for a cluster name"
    );

    // An outside name reaches the stub upstream behind kube-dns, on node 2: the query leaves
    // the pair with the node's own address as its source, through the service path.
    let passed_before = lab.event(0, "dns_passed_name")?;
    assert_eq!(
        ask(&lab, &host, "example.com", "A")?,
        [
            "NoError",
            "ra",
            &format!("example.com. 30 {STUB_ADDRESS}"),
            "0"
        ]
    );
    assert_eq!(
        resolve(&lab, &host, "example.com")?,
        STUB_ADDRESS.to_string()
    );
    assert!(lab.event(0, "dns_passed_name")? > passed_before);

    // Restarts node 1's agent, and asks from the host: answered in the kernel (AA set).
    let restart_and_ask = |lab: &mut Lab, what: &str| -> Result<()> {
        lab.stop_agent(0, Signal::SIGTERM)?;
        lab.start_agent(0)?;
        let reply = ask(lab, &host, "web.default.svc.cluster.local", "A")?;
        assert_eq!(reply[..2], ["NoError", "aa"], "{what}");
        Ok(())
    };
    // Restarted as it was, the agent keeps the pair and its routes, and answers again.
    restart_and_ask(&mut lab, "answered by the restarted agent")?;

    // The pair deleted under the agent: the socket hooks send the host's queries to the DNS
    // service again (its stub upstream knows no cluster name: NXDOMAIN, RA set, AA clear).
    netns::ip_in(&host, &["link", "del", "svclb_host"])?;
    lab.wait_for(
        std::time::Duration::from_secs(5),
        "the host's queries to reach the DNS service",
        || {
            ask(&lab, &host, "web.default.svc.cluster.local", "A")
                .is_ok_and(|reply| reply[..2] == ["NXDomain", "ra"])
        },
    )?;
    restart_and_ask(
        &mut lab,
        "answered again once the restarted agent made the pair anew",
    )?;

    // Restarted without --cluster-dns, the agent takes the pair away, and the socket hooks
    // send the host's queries to the DNS service again: its stub upstream, which knows no
    // cluster name (NXDOMAIN, RA set, AA clear).
    assert_eq!(
        netns::tcx_ingress_programs(&host, "svclb_net")?,
        ["svclb_pod"],
        "the pod program on the pair's far end"
    );
    lab.stop_agent(0, Signal::SIGTERM)?;
    lab.spec.agent_args.clear();
    lab.start_agent(0)?;
    assert!(
        netns::ifindex(&host, "svclb_host").is_err(),
        "the pair outlived --cluster-dns"
    );
    assert_eq!(
        ask(&lab, &host, "web.default.svc.cluster.local", "A")?,
        ["NXDomain", "ra", "", "0"]
    );
    Ok(())
}

/// What users resolve with, from a pod and from the host: dig for every record type the
/// datapath answers (all answered in the kernel: AA set, no flow made), and musl's
/// getaddrinfo through the search list.
#[test]
#[ignore = "needs root"]
fn dig_and_musl_resolve_every_record_type_from_pods_and_the_host() -> Result<()> {
    require_root()?;
    let (lab, pods) = dns_lab()?;
    let resolver = svclb_tests::musl::resolver(lab.work_dir())?;
    let mut db: Vec<String> = pods.iter().map(|p| format!("5 A {}", p.addr)).collect();
    db.sort();
    let db: Vec<&str> = db.iter().map(String::as_str).collect();
    let cases: [(&str, &str, &str, &[&str]); 8] = [
        (
            "web.default.svc.cluster.local",
            "A",
            "NOERROR",
            &["5 A 10.96.0.20"],
        ),
        ("web.default.svc.cluster.local", "AAAA", "NOERROR", &[]),
        ("db.default.svc.cluster.local", "A", "NOERROR", &db),
        (
            "_http._tcp.web.default.svc.cluster.local",
            "SRV",
            "NOERROR",
            &["5 SRV 0 100 80 web.default.svc.cluster.local."],
        ),
        (
            "20.0.96.10.in-addr.arpa",
            "PTR",
            "NOERROR",
            &["5 PTR web.default.svc.cluster.local."],
        ),
        (
            "ext.default.svc.cluster.local",
            "CNAME",
            "NOERROR",
            &["5 CNAME example.org."],
        ),
        // CoreDNS gives this record a TTL of 8 hours.
        (
            "dns-version.cluster.local",
            "TXT",
            "NOERROR",
            &["28800 TXT \"1.1.0\""],
        ),
        ("nosuch.default.svc.cluster.local", "A", "NXDOMAIN", &[]),
    ];
    for ns in [lab.pod("n1-pod1").ns.clone(), lab.nodes[0].ns.clone()] {
        let flows_before = lab.conntrack_entries(0)?;
        for (name, qtype, status, answers) in cases {
            let (got_status, aa, got) = dig(&lab, &ns, name, qtype)?;
            let what = format!("dig {name} {qtype} from {ns}");
            assert_eq!((got_status.as_str(), aa), (status, true), "{what}");
            assert_eq!(got, answers, "{what}");
        }
        assert_eq!(lab.conntrack_entries(0)?, flows_before, "a flow from {ns}");
        let mut db_addrs: Vec<String> = pods.iter().map(|p| p.addr.to_string()).collect();
        db_addrs.sort();
        for (name, want) in [
            ("web", "10.96.0.20".to_owned()),
            ("db", db_addrs.join(" ")),
            ("example.com", STUB_ADDRESS.to_string()),
        ] {
            assert_eq!(
                resolve_musl(&lab, &ns, &resolver, name)?,
                want,
                "musl's getaddrinfo({name:?}) from {ns}"
            );
        }
    }
    Ok(())
}
