//! End to end: kube-proxy's health server (`--healthz-bind-address`, port 10256), as cloud load
//! balancers probe it. `/healthz` follows this node's Node object (a node tainted for deletion
//! is drained), with Node objects from the manifests directory and from the Kubernetes API.
//! `/livez` follows the syncs: a change whose writes the kernel refuses fails it after the
//! timeout, and every health-check node port with it.

use std::{
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use svclb_tests::{
    Lab, LabSpec,
    client::{at, http_get, http_get_path},
    manifests::{WEB, cluster_ip_service, service},
    netns::in_netns,
    require_root,
};

const HEALTHZ: u16 = 10256;
const HEALTH_CHECK_PORT: u16 = 32005;

/// GETs `path` of `addr` from the lab's external client: status and JSON body; checks the
/// content type kube-proxy sends.
fn probe(lab: &Lab, addr: SocketAddr, path: &'static str) -> Result<(u16, serde_json::Value)> {
    let response = in_netns(&lab.client_ns, move || http_get_path(addr, path))?;
    assert_eq!(response.content_type, "application/json", "{response:?}");
    let json =
        serde_json::from_str(&response.body).with_context(|| format!("{path}: {response:?}"))?;
    Ok((response.status, json))
}

/// The health-check node port's status and `serviceProxyHealthy`.
fn health_check(lab: &Lab, addr: SocketAddr) -> Result<(u16, serde_json::Value)> {
    let (status, body) = in_netns(&lab.client_ns, move || http_get(addr))?;
    let json: serde_json::Value = serde_json::from_str(&body)?;
    Ok((status, json["serviceProxyHealthy"].clone()))
}

/// The lab's Node objects, node 1's tainted for deletion by the cluster autoscaler when
/// `tainted`.
fn nodes(lab: &Lab, tainted: bool) -> String {
    let manifest = lab.nodes_manifest();
    if !tainted {
        return manifest;
    }
    manifest.replacen(
        "metadata:\n  name: n1\n",
        "metadata:\n  name: n1\nspec:\n  taints:\n  - {key: ToBeDeletedByClusterAutoscaler, value: '1700000000', effect: NoSchedule}\n",
        1,
    )
}

/// A LoadBalancer Service with `externalTrafficPolicy: Local` and its endpoint on node 1.
fn local_service(lab: &Lab) -> String {
    service(
        "web",
        "10.96.0.70",
        &[WEB.with_node_port(30070)],
        &[lab.pod("n1-pod2")],
        &format!(
            "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: {HEALTH_CHECK_PORT}\n"
        ),
        "",
    )
}

/// Waits until `path` on `addr` answers `status`.
fn wait_status(lab: &Lab, addr: SocketAddr, path: &'static str, status: u16) -> Result<()> {
    lab.wait_for(
        Duration::from_secs(10),
        &format!("{path} of {addr} answering {status}"),
        || probe(lab, addr, path).is_ok_and(|(s, _)| s == status),
    )
    .map(|_| ())
}

#[test]
#[ignore = "needs root"]
fn healthz_drains_a_node_tainted_for_deletion() -> Result<()> {
    require_root()?;
    let mut lab = Lab::new(LabSpec::default())?;
    lab.write_manifest("nodes.yaml", &nodes(&lab, false))?;
    lab.write_manifest("web.yaml", &local_service(&lab))?;
    lab.start_agents()?;
    let node1 = lab.nodes[0].addr.to_string();
    let (healthz, check) = (at(&node1, HEALTHZ), at(&node1, HEALTH_CHECK_PORT));

    let (status, body) = probe(&lab, healthz, "/healthz")?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["nodeEligible"], true, "{body}");
    for field in ["lastUpdated", "currentTime"] {
        assert!(
            body[field].as_str().is_some_and(|t| t.ends_with('Z')),
            "{field}: {body}"
        );
    }
    let (status, body) = probe(&lab, healthz, "/livez")?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(health_check(&lab, check)?, (200, true.into()));

    lab.write_manifest("nodes.yaml", &nodes(&lab, true))?;
    wait_status(&lab, healthz, "/healthz", 503)?;
    let (_, body) = probe(&lab, healthz, "/healthz")?;
    assert_eq!(body["nodeEligible"], false, "{body}");
    assert_eq!(probe(&lab, healthz, "/livez")?.0, 200, "live all the same");
    assert_eq!(
        health_check(&lab, check)?,
        (200, true.into()),
        "the health-check node port follows the agent's sync health, not the node's draining \
         (as kube-proxy's)"
    );
    let node2 = lab.nodes[1].addr.to_string();
    assert_eq!(
        probe(&lab, at(&node2, HEALTHZ), "/healthz")?.0,
        200,
        "node 2 is not drained"
    );

    lab.write_manifest("nodes.yaml", &nodes(&lab, false))?;
    wait_status(&lab, healthz, "/healthz", 200)?;
    assert_eq!(health_check(&lab, check)?, (200, true.into()));
    Ok(())
}

/// Fills node 1's services map to its capacity behind the agent's back, with entries of no
/// family the datapath serves: the kernel then refuses the agent's next new frontend.
fn fill_services_map(lab: &Lab, capacity: u64) -> Result<()> {
    let status = lab.status(0)?;
    let held = status["maps"]
        .as_array()
        .and_then(|maps| maps.iter().find(|m| m["map"] == "SVCLB_SERVICES"))
        .and_then(|m| m["entries"].as_u64())
        .context("SVCLB_SERVICES in svclb status")?;
    let map = lab.nodes[0].pin_dir.join("SVCLB_SERVICES");
    let map = map.to_string_lossy().into_owned();
    for n in 0..capacity.saturating_sub(held) {
        let mut key = vec!["0".to_owned(); 24];
        key[0] = format!("{}", 200 + n);
        key[19] = "9".to_owned(); // family 9: neither IPv4 nor IPv6
        let value = vec!["0".to_owned(); 24];
        let mut args = vec!["map", "update", "pinned", map.as_str(), "key"];
        args.extend(key.iter().map(String::as_str));
        args.push("value");
        args.extend(value.iter().map(String::as_str));
        svclb_tests::netns::run("bpftool", &args)?;
    }
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn livez_fails_when_a_change_cannot_be_written_in_time() -> Result<()> {
    require_root()?;
    let mut lab = Lab::new(LabSpec {
        agent_args: ["--healthz-timeout", "2", "--services-map-size", "8"]
            .map(str::to_owned)
            .to_vec(),
        ..LabSpec::default()
    })?;
    lab.write_manifest("nodes.yaml", &nodes(&lab, false))?;
    // Node 1's frontends: the cluster IP, the NodePorts (on the node's address and on
    // 127.0.0.1) and their internal views; the rest of the map is filled below.
    lab.write_manifest("web.yaml", &local_service(&lab))?;
    lab.start_agents()?;
    let node1 = lab.nodes[0].addr.to_string();
    let (livez, check) = (at(&node1, HEALTHZ), at(&node1, HEALTH_CHECK_PORT));
    assert_eq!(probe(&lab, livez, "/livez")?.0, 200);
    assert_eq!(health_check(&lab, check)?, (200, true.into()));

    fill_services_map(&lab, 8)?;
    let web = lab.pod("n1-pod2").clone();
    lab.write_manifest(
        "b.yaml",
        &cluster_ip_service("b", "10.96.0.72", &[WEB], &[&web]),
    )?;
    wait_status(&lab, livez, "/livez", 503)?;
    assert_eq!(
        probe(&lab, livez, "/healthz")?.0,
        503,
        "/healthz fails with /livez"
    );
    assert_eq!(
        health_check(&lab, check)?,
        (503, false.into()),
        "the health-check node port fails with /livez"
    );
    let node2 = lab.nodes[1].addr.to_string();
    assert_eq!(
        probe(&lab, at(&node2, HEALTHZ), "/livez")?.0,
        200,
        "node 2 wrote it"
    );

    lab.remove_manifest("b.yaml")?;
    wait_status(&lab, livez, "/livez", 200)?;
    wait_status(&lab, livez, "/healthz", 200)?;
    assert_eq!(health_check(&lab, check)?, (200, true.into()));
    Ok(())
}

/// The same through a real API server: the Node object the agent watches (under the chart's
/// RBAC) is tainted and untainted with kubectl, then deleted.
#[test]
#[ignore = "needs root"]
fn healthz_follows_the_node_object_from_the_kubernetes_api() -> Result<()> {
    require_root()?;
    let mut lab = Lab::new(LabSpec::default())?;
    lab.start_control_plane(&[])?;
    lab.start_agents()?;
    let healthz = at(&lab.nodes[0].addr.to_string(), HEALTHZ);
    wait_status(&lab, healthz, "/healthz", 200)?;
    let plane = lab.control_plane()?;
    let taint = "ToBeDeletedByClusterAutoscaler=1700000000:NoSchedule";
    plane.kubectl(&["taint", "node", "n1", taint])?;
    wait_status(&lab, healthz, "/healthz", 503)?;
    assert_eq!(probe(&lab, healthz, "/healthz")?.1["nodeEligible"], false);
    assert_eq!(probe(&lab, healthz, "/livez")?.0, 200, "live while drained");
    plane.kubectl(&["taint", "node", "n1", &format!("{taint}-")])?;
    wait_status(&lab, healthz, "/healthz", 200)?;
    // The Node object goes away: no eligible node any more.
    plane.kubectl(&["delete", "node", "n1"])?;
    wait_status(&lab, healthz, "/healthz", 503)?;
    Ok(())
}

/// Connections a hostile client opens to each server in each attack: more than the room the
/// test leaves in the agent's open-files limit ([`ROOM`]), so an agent that accepted them
/// all would run out.
const ATTACK_CONNECTIONS: usize = 1500;
/// Files the agent may open beyond those it has open while it is attacked.
const ROOM: u64 = 500;

/// How a hostile client uses its connections.
#[derive(Clone, Copy, Debug)]
enum Attack {
    /// A request that never ends: a header line, then one byte a second.
    Slowloris,
    /// A whole request, and the answer never read.
    NeverRead,
}

/// From the lab's external client, `count` connections to each of `targets`, used as
/// `attack` says for `hold`; the number of connections the servers had closed by the end (a
/// failed write or a read of end-of-file), out of those opened.
fn attack(
    lab: &Lab,
    targets: Vec<SocketAddr>,
    (attack, count): (Attack, usize),
    hold: Duration,
) -> Result<(usize, usize)> {
    use std::io::{Read as _, Write as _};
    in_netns(&lab.client_ns, move || {
        let mut open = Vec::new();
        for target in targets.iter().cycle().take(count * targets.len()) {
            // Refused or reset at once is a server shedding load: not counted as held.
            let Ok(mut stream) = TcpStream::connect_timeout(target, Duration::from_millis(500))
            else {
                continue;
            };
            let first: &[u8] = match attack {
                Attack::Slowloris => b"GET /livez HTTP/1.1\r\nHost: x\r\n",
                Attack::NeverRead => b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n",
            };
            if stream.write_all(first).is_ok() {
                stream.set_nonblocking(true)?;
                open.push(stream);
            }
        }
        let (started, mut closed) = (Instant::now(), vec![false; open.len()]);
        while started.elapsed() < hold {
            std::thread::sleep(Duration::from_secs(1));
            for (stream, closed) in open.iter_mut().zip(&mut closed) {
                let ended = match attack {
                    Attack::Slowloris => stream.write_all(b"X").is_err() || read_eof(stream),
                    Attack::NeverRead => false,
                };
                *closed |= ended;
            }
        }
        if matches!(attack, Attack::NeverRead) {
            // Only now look: the answer (if any) and the server's close are waiting.
            for (stream, closed) in open.iter_mut().zip(&mut closed) {
                let mut buf = [0u8; 4096];
                *closed = loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) if !would_block(stream) => break true,
                        Ok(_) => continue,
                        _ => break false,
                    }
                };
            }
        }
        Ok((closed.iter().filter(|c| **c).count(), open.len()))
    })
}

/// The server closed `stream`'s reading side (a non-blocking read sees end-of-file or an
/// error other than "would block").
fn read_eof(stream: &mut TcpStream) -> bool {
    use std::io::Read as _;
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(err) => return err.kind() != std::io::ErrorKind::WouldBlock,
        }
    }
}

/// Whether a read on `stream` would block now (nothing more to read, not closed).
fn would_block(stream: &mut TcpStream) -> bool {
    use std::io::Read as _;
    matches!(stream.read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// `/livez` and the health-check port of node 1, probed from node 1's own address (a client
/// other than the attacker), each answered 200 within 2 s.
fn probes_answer(lab: &Lab) -> Result<()> {
    let node = lab.nodes[0].addr.to_string();
    for (addr, path) in [
        (at(&node, HEALTHZ), "/livez"),
        (at(&node, HEALTH_CHECK_PORT), "/"),
    ] {
        let response = in_netns(&lab.nodes[0].ns, move || http_get_path(addr, path))
            .with_context(|| format!("{addr}{path} during the attack"))?;
        anyhow::ensure!(response.status == 200, "{addr}{path}: {response:?}");
    }
    Ok(())
}

/// Runs `attack` against node 1's health servers while probing them from elsewhere: every
/// probe answers throughout; the number of attacking connections closed by the servers.
fn under_attack(lab: &Lab, kind: Attack, hold: Duration) -> Result<(usize, usize)> {
    let node = lab.nodes[0].addr.to_string();
    let targets = vec![at(&node, HEALTHZ), at(&node, HEALTH_CHECK_PORT)];
    let attacking = std::thread::scope(|scope| {
        let attacker = scope.spawn(|| attack(lab, targets, (kind, ATTACK_CONNECTIONS), hold));
        let mut probed = 0;
        while !attacker.is_finished() {
            probes_answer(lab).with_context(|| format!("{kind:?}, {probed} probes in"))?;
            probed += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
        attacker
            .join()
            .map_err(|_| anyhow::anyhow!("the attacker panicked"))?
    })?;
    probes_answer(lab).with_context(|| format!("after {kind:?}"))?;
    Ok(attacking)
}

/// Hostile clients of the health servers (kube-proxy's 10256 and a health-check node port),
/// which every pod can reach: a slowloris, clients that never read, and an agent out of file
/// descriptors. The agent's soft open-files limit is cut to what it has open plus [`ROOM`], so
/// a server that accepted every attacking connection would run out. Each time, probes from
/// another client keep answering; trickling connections are closed at the deadline;
/// accepting resumes once descriptors are free again.
#[test]
#[ignore = "needs root"]
fn hostile_clients_leave_the_health_servers_answering() -> Result<()> {
    require_root()?;
    raise_own_open_files_limit()?;
    let mut lab = Lab::new(LabSpec::default())?;
    lab.write_manifest("nodes.yaml", &nodes(&lab, false))?;
    lab.write_manifest("web.yaml", &local_service(&lab))?;
    lab.start_agents()?;
    let node1 = lab.nodes[0].addr.to_string();
    wait_status(&lab, at(&node1, HEALTHZ), "/healthz", 200)?;
    probes_answer(&lab)?;
    let pid = lab.agent_pid(0).context("node 1's agent")?;
    let limit = set_open_files_limit(pid, open_files(pid)? + ROOM)?;

    let (closed, opened) = under_attack(&lab, Attack::Slowloris, Duration::from_secs(8))?;
    assert_eq!(
        closed, opened,
        "every trickling connection is closed at its 5 s deadline"
    );
    let (closed, opened) = under_attack(&lab, Attack::NeverRead, Duration::from_secs(8))?;
    assert_eq!(closed, opened, "every unread answer is done with");

    // Out of file descriptors: the agent may open two more. Accepts fail meanwhile (and the
    // listen backlog fills, so fewer connections: a full backlog drops SYNs); once the
    // attackers are gone and the limit is back, the servers answer again.
    set_open_files_limit(pid, open_files(pid)? + 2)?;
    let _ = attack(
        &lab,
        vec![at(&node1, HEALTHZ), at(&node1, HEALTH_CHECK_PORT)],
        (Attack::NeverRead, 20),
        Duration::from_secs(2),
    )?;
    set_open_files_limit(pid, limit)?;
    lab.wait_for(Duration::from_secs(5), "the probes answering again", || {
        probes_answer(&lab).is_ok()
    })?;
    assert!(
        lab.agent_log(0).contains("accepting a connection"),
        "accept failed and was retried:\n{}",
        lab.agent_log(0)
    );
    Ok(())
}

/// This test process opens thousands of connections: its soft open-files limit goes up to
/// the hard one.
fn raise_own_open_files_limit() -> Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(())
}

/// Files process `pid` has open.
fn open_files(pid: u32) -> Result<u64> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64)
}

/// Sets process `pid`'s soft open-files limit to `limit` (its hard limit stays: raising it
/// back needs CAP_SYS_RESOURCE); the soft limit it had.
fn set_open_files_limit(pid: u32, limit: u64) -> Result<u64> {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let pid = pid as libc::pid_t;
    // SAFETY: a null new limit only reads; `old` is a live rlimit.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    anyhow::ensure!(rc == 0, "prlimit: {}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: limit.min(old.rlim_max),
        rlim_max: old.rlim_max,
    };
    // SAFETY: a live rlimit, and no old value asked for.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
    anyhow::ensure!(rc == 0, "prlimit: {}", std::io::Error::last_os_error());
    Ok(old.rlim_cur)
}

/// Fills node `node`'s conntrack with `n` tracked TCP flow directions, all seen just now (so
/// the sweep leaves them).
fn fill_conntrack(lab: &Lab, node: usize, n: u32) -> Result<()> {
    use aya::maps::{HashMap, Map, MapData};
    use svclb_common::{CT_DIR_FORWARD, CtEntry, CtKey, CtRoute, FAMILY_V4, IPPROTO_TCP, addr::v4};
    let data = MapData::from_pin(lab.nodes[node].pin_dir.join(svclb_common::limits::MAP_CT))?;
    let mut conntrack: HashMap<MapData, CtKey, CtEntry> =
        HashMap::try_from(Map::from_map_data(data)?)?;
    let now = svclb::kernel::sweep::monotonic_ns();
    for i in 0..n {
        let [_, _, c, d] = (i >> 8).to_be_bytes();
        let key = CtKey {
            saddr: v4([10, 200, c, d]),
            daddr: v4([10, 96, 0, 70]),
            sport_be: (1024 + (i & 0xff) as u16).to_be(),
            dport_be: 80u16.to_be(),
            proto: IPPROTO_TCP,
            family: FAMILY_V4,
            dir: CT_DIR_FORWARD,
            _pad: 0,
        };
        let entry = CtEntry {
            nat_addr: v4([10, 244, 1, 2]),
            nat_port_be: 8080u16.to_be(),
            flags: 0,
            backend_id: 1,
            svc_id: 1,
            snat_port_be: 0,
            _pad: 0,
            snat_addr: v4([0, 0, 0, 0]),
            created_ns: now,
            last_seen_ns: now,
            route: CtRoute::NONE,
        };
        conntrack.insert(&key, &entry, 0)?;
    }
    Ok(())
}

/// A scrape of `/metrics` in a loop, against a conntrack of 200,000 entries, holds up
/// nothing: `/livez` (on the same runtime as the syncs) answers with a p99 under 100 ms.
#[test]
#[ignore = "needs root"]
fn scrapes_never_stall_livez_however_full_the_conntrack() -> Result<()> {
    require_root()?;
    let mut lab = Lab::new(LabSpec::default())?;
    lab.write_manifest("nodes.yaml", &nodes(&lab, false))?;
    lab.write_manifest("web.yaml", &local_service(&lab))?;
    lab.start_agents()?;
    let livez = at(&lab.nodes[0].addr.to_string(), HEALTHZ);
    wait_status(&lab, livez, "/livez", 200)?;
    fill_conntrack(&lab, 0, 200_000)?;

    let done = std::sync::atomic::AtomicBool::new(false);
    let (scrapes, mut took) = std::thread::scope(|scope| -> Result<(usize, Vec<Duration>)> {
        let scraper = scope.spawn(|| {
            let mut scrapes = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                scrapes += usize::from(lab.agent_http(0, "/metrics").is_ok_and(|(s, _)| s == 200));
            }
            scrapes
        });
        let ns = lab.nodes[0].ns.clone();
        let took = in_netns(&ns, move || {
            let mut took = Vec::new();
            for _ in 0..200 {
                let started = Instant::now();
                let response = http_get_path(livez, "/livez")?;
                anyhow::ensure!(response.status == 200, "{response:?}");
                took.push(started.elapsed());
            }
            Ok(took)
        });
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let scrapes = scraper
            .join()
            .map_err(|_| anyhow::anyhow!("the scraper panicked"))?;
        Ok((scrapes, took?))
    })?;
    took.sort();
    let p99 = took[took.len() * 99 / 100];
    eprintln!(
        "/livez p99 {p99:?} over {} probes, {scrapes} scrapes meanwhile",
        took.len()
    );
    assert!(scrapes >= 5, "only {scrapes} scrapes while probing");
    assert!(
        p99 < Duration::from_millis(100),
        "/livez p99 {p99:?} while scraping ({scrapes} scrapes)"
    );
    Ok(())
}
