//! `cargo xtask run`: a demo lab with an agent per node serving `examples/`.

use std::{fs, net::SocketAddr, process::Command, sync::mpsc, time::Duration};

use anyhow::{Context as _, Result, bail};
use svclb_tests::{
    Lab, LabSpec,
    client::{tally, tcp_ask_many, udp_ask_many},
};

const WEB: &str = "10.96.0.10:80";
const DNS: &str = "10.96.0.53:53";
const CLIENT_POD: &str = "n1-pod1";
const TIMEOUT: Duration = Duration::from_secs(2);

/// Prints the answers; how many requests failed.
fn show(kind: &str, target: &str, answers: &[Result<String>]) -> usize {
    println!(
        "{} {kind} requests from pod {CLIENT_POD} to {target}:",
        answers.len()
    );
    for (i, answer) in answers.iter().enumerate() {
        match answer {
            Ok(name) => println!("  {:>2}  answered by {name}", i + 1),
            Err(err) => println!("  {:>2}  FAILED: {err:#}", i + 1),
        }
    }
    let summary: Vec<String> = tally(answers)
        .iter()
        .map(|(who, n)| format!("{who} x{n}"))
        .collect();
    println!("  spread: {}\n", summary.join(", "));
    answers.iter().filter(|a| a.is_err()).count()
}

/// The examples, served from the manifests directory, or with `kubernetes` applied through
/// a real API server (the lab's control plane); says where the user finds them.
fn serve_examples(lab: &mut Lab, kubernetes: bool) -> Result<String> {
    let examples = crate::workspace_root().join("examples");
    let mut files: Vec<_> = fs::read_dir(&examples)
        .context("reading examples/")?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml"));
    files.sort();
    if !kubernetes {
        for path in &files {
            fs::copy(path, lab.manifests.join(path.file_name().expect("a file")))?;
        }
        return Ok(format!(
            "manifests: {} (copied from examples/)",
            lab.manifests.display()
        ));
    }
    let ns = lab.client_ns.clone();
    let plane = lab.start_control_plane(&[])?;
    for path in &files {
        let yaml = fs::read_to_string(path)?;
        plane
            .apply_objects(&yaml)
            .with_context(|| format!("applying {}", path.display()))?;
    }
    let kubectl = svclb_tests::kube_bins::bin("kubectl")?;
    Ok(format!(
        "Kubernetes: etcd, kube-apiserver {} and kube-controller-manager in namespace {} \
         (https://172.31.0.100:6443), examples/ applied through the API; the agents watch it \
         with the chart's ServiceAccount.\nkubeconfig: {}\n  nsenter --net=/run/netns/{} {} \
         --kubeconfig {} get svc,endpointslices",
        svclb_tests::kube_bins::KUBERNETES.version,
        ns,
        plane.admin_kubeconfig_path().display(),
        ns,
        kubectl.display(),
        plane.admin_kubeconfig_path().display(),
    ))
}

pub fn run(once: bool, kubernetes: bool) -> Result<()> {
    // Installed first: Ctrl-C while the lab is being built must still tear it down.
    let (tx, stop) = mpsc::channel();
    ctrlc::set_handler(move || {
        // Only the first signal matters; later sends find the receiver gone.
        let _ = tx.send(());
    })
    .context("installing a Ctrl-C handler")?;

    let svclb = crate::build_svclb()?;
    let lab_client = crate::build_lab_client()?;
    // SAFETY: set before any thread of ours starts; the lab reads them when starting agents
    // and clients.
    unsafe {
        std::env::set_var("SVCLB_BIN", &svclb);
        std::env::set_var("SVCLB_LAB_CLIENT", &lab_client);
    }

    let mut lab = Lab::new(LabSpec::default())?;
    let source = serve_examples(&mut lab, kubernetes)?;
    lab.start_agents()?;
    let client = lab.pod(CLIENT_POD).ns.clone();
    println!(
        "\nsvclb demo lab {}: {} nodes with an agent each, {} pods serving their name on :8080",
        lab.id,
        lab.nodes.len(),
        lab.nodes.iter().map(|n| n.pods.len()).sum::<usize>()
    );
    println!("{source}\n");

    let web: SocketAddr = WEB.parse()?;
    let dns: SocketAddr = DNS.parse()?;
    let mut failed = show(
        "TCP",
        &format!("service web ({WEB})"),
        &tcp_ask_many(&client, web, 8, TIMEOUT)?,
    );
    failed += show(
        "UDP",
        &format!("service dns ({DNS})"),
        &udp_ask_many(&client, dns, 4, TIMEOUT)?,
    );

    // A process in node n1's own namespace and cgroup: what socket-LB serves at connect time.
    let node_ns = lab.nodes[0].ns.clone();
    let host: Vec<Result<String>> = lab
        .run_client(0, &node_ns, &["tcp", WEB, "4"])?
        .into_iter()
        .map(|line| {
            svclb_tests::client::parse_reply(&line)
                .map(|r| format!("{} (its socket's peer: {})", r.backend, r.peer))
        })
        .collect();
    println!(
        "{} TCP requests from node n1's own namespace (a host-network client) to service web ({WEB}):",
        host.len()
    );
    for (i, answer) in host.iter().enumerate() {
        match answer {
            Ok(what) => println!("  {:>2}  answered by {what}", i + 1),
            Err(err) => println!("  {:>2}  FAILED: {err:#}", i + 1),
        }
    }
    println!();
    failed += host.iter().filter(|a| a.is_err()).count();
    if host.is_empty() {
        failed += 1;
    }

    let pins = lab.nodes[0].pin_dir.display().to_string();
    println!("$ svclb list --bpffs-dir {pins}");
    crate::run(Command::new(&svclb).args(["list", "--bpffs-dir", &pins]))?;

    // Inside the node's namespace: its agent's metrics address, its device names.
    println!("\n$ nsenter --net=/run/netns/{node_ns} svclb status --bpffs-dir {pins}");
    let status = svclb_tests::netns::run_in(
        &node_ns,
        &svclb.to_string_lossy(),
        &["status", "--bpffs-dir", &pins],
    )?;
    print!("{}", String::from_utf8_lossy(&status.stdout));

    println!("\nTry it by hand (as root, while this runs):");
    println!("  ip netns exec {client} curl -s http://10.96.0.10/");
    println!("  echo hi | ip netns exec {client} socat -t1 - UDP:10.96.0.53:53");
    println!(
        "  sh -c 'echo $$ > {}/cgroup.procs && exec ip netns exec {node_ns} curl -s http://10.96.0.10/'",
        lab.nodes[0].cgroup.display()
    );
    println!("  {} list --bpffs-dir {pins}", svclb.display());
    println!(
        "  nsenter --net=/run/netns/{node_ns} {} status --bpffs-dir {pins}",
        svclb.display()
    );
    println!("  bpftool map dump pinned {pins}/SVCLB_SERVICES");
    if kubernetes {
        println!(
            "  kubectl edit service web (as above, through nsenter): the agents follow within a \
             second (logs: {})",
            lab.work_dir().display()
        );
    } else {
        println!(
            "  edit {}/demo.yaml: the agents apply changes within a second (logs: {})",
            lab.manifests.display(),
            lab.work_dir().display()
        );
    }
    if failed > 0 {
        for (i, node) in lab.nodes.iter().enumerate() {
            println!("--- agent log of {} ---\n{}", node.name, lab.agent_log(i));
        }
        bail!("{failed} of the tour's requests went unanswered");
    }
    if once {
        println!("\n--once: tearing the lab down");
        return Ok(());
    }
    println!("\nCtrl-C tears the lab down.");
    stop.recv().context("waiting for Ctrl-C")?;
    println!("tearing the lab down");
    Ok(())
}
