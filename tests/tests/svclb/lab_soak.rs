//! End-to-end churn soak: continuous TCP and UDP traffic to a service whose backends go
//! 10 -> 1 -> 10 and back again (each leaving through the terminating state first, as a
//! rollout has it), while other services come and go. Every backend pod keeps serving
//! throughout, so every connection must succeed: a failure is the datapath's or the
//! control plane's fault. Bounded to 20 s in CI; `SVCLB_SOAK_SECS` runs it longer.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;
use svclb_tests::{
    Lab, LabSpec, Pod,
    client::{TIMEOUT, at, tcp_ask, udp_ask},
    manifests::{DNS, WEB, service},
    netns::in_netns,
    require_root,
};

/// Time between two steps of the churn.
const STEP: Duration = Duration::from_millis(150);
/// At most this many requests per traffic loop, whatever the duration.
const MAX_REQUESTS: usize = 200_000;

#[derive(Debug, Default)]
struct Tally {
    attempted: usize,
    failed: usize,
    /// The first few failures, for the report.
    samples: Vec<String>,
    by_backend: BTreeMap<String, usize>,
}

/// Requests answered or failed, over every traffic loop.
static DONE: AtomicUsize = AtomicUsize::new(0);

/// Asks `ask` until `stop` (or [`MAX_REQUESTS`]), in namespace `ns`.
fn traffic(
    ns: &str,
    stop: Arc<AtomicBool>,
    ask: impl Fn() -> Result<String> + Send + 'static,
) -> thread::JoinHandle<Result<Tally>> {
    let ns = ns.to_owned();
    thread::spawn(move || {
        in_netns(&ns, move || {
            let mut tally = Tally::default();
            while !stop.load(Ordering::Relaxed) && tally.attempted < MAX_REQUESTS {
                tally.attempted += 1;
                let answer = ask();
                DONE.fetch_add(1, Ordering::Relaxed);
                match answer {
                    Ok(name) => *tally.by_backend.entry(name).or_default() += 1,
                    Err(err) => {
                        tally.failed += 1;
                        if tally.samples.len() < 5 {
                            tally.samples.push(format!("{err:#}"));
                        }
                    }
                }
            }
            Ok(tally)
        })
    })
}

/// The churned service with `ready` serving normally and `terminating` on their way out.
fn churned(ready: &[Pod], terminating: &[Pod]) -> String {
    let all: Vec<&Pod> = ready.iter().chain(terminating).collect();
    let mut yaml = service("churn", "10.96.5.1", &[WEB, DNS], &all, "", "");
    for pod in terminating {
        yaml = yaml.replace(
            &format!(
                "- addresses: [\"{}\"]\n  conditions: {{ready: true, serving: true, terminating: false}}",
                pod.addr
            ),
            &format!(
                "- addresses: [\"{}\"]\n  conditions: {{ready: false, serving: true, terminating: true}}",
                pod.addr
            ),
        );
    }
    yaml
}

/// The backend sets of one cycle: 10 -> 1 -> 10, one pod at a time, each leaving through
/// the terminating state.
fn cycle(pods: &[Pod]) -> Vec<(Vec<Pod>, Vec<Pod>)> {
    let mut steps = Vec::new();
    for gone in 0..pods.len() - 1 {
        steps.push((pods[gone + 1..].to_vec(), vec![pods[gone].clone()]));
        steps.push((pods[gone + 1..].to_vec(), Vec::new()));
    }
    for back in (0..pods.len() - 1).rev() {
        steps.push((pods[back..].to_vec(), Vec::new()));
    }
    steps
}

#[test]
#[ignore = "needs root"]
fn churn_keeps_every_connection_to_a_serving_backend() -> Result<()> {
    require_root()?;
    let budget = Duration::from_secs(
        std::env::var("SVCLB_SOAK_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20),
    );
    let mut lab = Lab::new(LabSpec {
        pods_per_node: 6,
        ..LabSpec::default()
    })?;
    // The first pod of each node is a client; the other ten serve.
    let servers: Vec<Pod> = lab
        .nodes
        .iter()
        .flat_map(|n| n.pods.iter().skip(1).cloned())
        .collect();
    assert_eq!(servers.len(), 10);
    lab.write_manifest("churn.yaml", &churned(&servers, &[]))?;
    lab.start_agents()?;

    let stop = Arc::new(AtomicBool::new(false));
    let vip: SocketAddr = at("10.96.5.1", 80);
    let dns: SocketAddr = at("10.96.5.1", 53);
    let loops = [
        (
            "TCP from n1",
            traffic(&lab.pod("n1-pod1").ns, stop.clone(), move || {
                tcp_ask(vip, TIMEOUT)
            }),
        ),
        (
            "TCP from n2",
            traffic(&lab.pod("n2-pod1").ns, stop.clone(), move || {
                tcp_ask(vip, TIMEOUT)
            }),
        ),
        (
            "UDP from n1",
            traffic(&lab.pod("n1-pod1").ns, stop.clone(), move || {
                udp_ask(dns, TIMEOUT)
            }),
        ),
    ];

    let started = Instant::now();
    let (mut steps, mut cycles, mut extra) = (0usize, 0usize, 0usize);
    'churn: loop {
        for (ready, terminating) in cycle(&servers) {
            if started.elapsed() >= budget {
                break 'churn;
            }
            lab.write_manifest("churn.yaml", &churned(&ready, &terminating))?;
            // Other services come and go meanwhile.
            let name = format!("extra{}", steps % 7);
            if steps % 14 < 7 {
                lab.write_manifest(
                    &format!("{name}.yaml"),
                    &service(
                        &name,
                        &format!("10.96.6.{}", steps % 7 + 1),
                        &[WEB],
                        &servers[steps % 10..],
                        "",
                        "",
                    ),
                )?;
                extra += 1;
            } else {
                lab.remove_manifest(&format!("{name}.yaml"))?;
            }
            steps += 1;
            thread::sleep(STEP);
        }
        cycles += 1;
    }
    // Back to all ten, settled while traffic still runs; then traffic stops.
    lab.write_manifest("churn.yaml", &churned(&servers, &[]))?;
    lab.wait_for(
        Duration::from_secs(3),
        "all ten backends programmed",
        || {
            lab.list(0).is_ok_and(|l| {
                l["frontends"].as_array().is_some_and(|f| {
                    f.iter().any(|f| {
                        f["address"] == "10.96.5.1"
                            && f["port"] == 80
                            && f["backends"].as_array().map(Vec::len) == Some(10)
                    })
                })
            })
        },
    )?;
    // Traffic against the settled service: every loop asks a few times more (each request
    // counts once it is answered or failed).
    let settled = DONE.load(Ordering::Relaxed);
    lab.wait_for(
        Duration::from_secs(5),
        "traffic against the settled service",
        || DONE.load(Ordering::Relaxed) >= settled + 20 * loops.len(),
    )?;
    stop.store(true, Ordering::Relaxed);
    let mut report = Vec::new();
    let mut failed = 0;
    for (what, handle) in loops {
        let tally = handle.join().expect("a traffic thread panicked")?;
        report.push(format!(
            "{what}: {} attempted, {} failed, {} backends answered {:?}",
            tally.attempted,
            tally.failed,
            tally.by_backend.len(),
            tally.samples
        ));
        assert!(tally.attempted > 100, "{what} hardly ran: {tally:?}");
        assert!(tally.by_backend.len() >= 5, "{what} spread: {tally:?}");
        failed += tally.failed;
    }
    eprintln!(
        "soak: {:.0?}, {cycles} full cycles, {steps} steps, {extra} services added\n  {}",
        started.elapsed(),
        report.join("\n  ")
    );
    assert_eq!(
        failed,
        0,
        "every backend kept serving, so nothing may fail:\n{}",
        report.join("\n")
    );

    // The maps end as the manifests say: the churned service with all ten backends.
    let listing = lab.list(0)?;
    let churn = listing["frontends"]
        .as_array()
        .and_then(|f| {
            f.iter()
                .find(|f| f["address"] == "10.96.5.1" && f["port"] == 80)
        })
        .cloned()
        .expect("the churned frontend");
    assert_eq!(
        churn["backends"].as_array().map(Vec::len),
        Some(10),
        "{churn}"
    );
    Ok(())
}
