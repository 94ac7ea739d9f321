//! BPF programs attached to the machine itself: its cgroup2 root (every process of the
//! machine goes through those) and the devices of its own network namespace. A lab attaches
//! only to its own namespaces and cgroups, so anything here came from elsewhere: an agent
//! started by hand without `--cgroup-root`, or another tool. [`crate::sweep`] names these
//! and the command that would detach each, and never detaches them itself.

use std::{collections::BTreeMap, ffi::CString, fs, path::Path, process::Command};

use aya::programs::{SchedClassifier, TcAttachType, loaded_links};
use serde_json::Value;
use svclb_common::host::cgroup2_mount;

/// One line per program attached to the machine's cgroup2 root or to a device of the
/// machine's network namespace (the caller's), each with the command that would detach it.
pub fn to_the_machine() -> Vec<String> {
    match cgroup2_mount() {
        Ok(root) => attached(&root),
        Err(err) => vec![format!("{err:#}")],
    }
}

/// One line per program attached to `cgroup` or to a device of the calling thread's network
/// namespace, each with the command that would detach it.
pub fn attached(cgroup: &Path) -> Vec<String> {
    let links = links_by_program();
    let mut found = Vec::new();
    match bpftool(&["cgroup", "show"], Some(cgroup)) {
        Ok(Value::Array(programs)) => {
            let cgroup = cgroup.display();
            for p in &programs {
                let hook = p["attach_type"].as_str().unwrap_or("?");
                let detach = format!("bpftool cgroup detach {cgroup} {hook} id {}", p["id"]);
                let place = format!("cgroup {cgroup} ({hook})");
                found.push(describe(p, &place, &links, &detach));
            }
        }
        Ok(_) => {}
        Err(err) => found.push(err),
    }
    found.extend(on_devices(&links));
    found
}

/// A program's line: what it is, where, and the command that detaches it (through its link
/// when it has one: a pinned link stays attached until it is detached or unpinned).
fn describe(program: &Value, place: &str, links: &BTreeMap<u64, u32>, fallback: &str) -> String {
    let id = program["id"].as_u64().unwrap_or_default();
    let name = program["name"].as_str().unwrap_or("?");
    let detach = links.get(&id).map_or_else(
        || fallback.to_owned(),
        |link| format!("bpftool link detach id {link}"),
    );
    format!("BPF program {id} ({name}) is attached to {place}: `{detach}` detaches it")
}

/// Program id -> link id, for the programs attached through a BPF link.
fn links_by_program() -> BTreeMap<u64, u32> {
    loaded_links()
        .flatten()
        .map(|link| (u64::from(link.program_id()), link.id()))
        .collect()
}

/// XDP and tc programs (from bpftool), and tcx programs (bpftool of Debian 12 predates tcx:
/// queried directly), on every device of this network namespace.
fn on_devices(links: &BTreeMap<u64, u32>) -> Vec<String> {
    let mut found = Vec::new();
    match bpftool(&["net", "show"], None) {
        Ok(Value::Array(sections)) => {
            for section in &sections {
                for (kind, list) in section.as_object().into_iter().flatten() {
                    for p in list.as_array().into_iter().flatten() {
                        let dev = p["devname"].as_str().unwrap_or("?");
                        let fallback = match kind.as_str() {
                            "xdp" => format!("ip link set dev {dev} xdp off"),
                            "tc" => format!(
                                "tc filter del dev {dev} {}",
                                p["kind"].as_str().unwrap_or("ingress")
                            ),
                            _ => format!("bpftool net detach {kind} dev {dev}"),
                        };
                        let id = p["id"].clone();
                        let program = serde_json::json!({"id": id, "name": p["name"]});
                        found.push(describe(
                            &program,
                            &format!("device {dev} ({kind})"),
                            links,
                            &fallback,
                        ));
                    }
                }
            }
        }
        Ok(_) => {}
        Err(err) => found.push(err),
    }
    for dev in devices() {
        for (hook, attach) in [
            ("tcx ingress", TcAttachType::Ingress),
            ("tcx egress", TcAttachType::Egress),
        ] {
            let Ok(name) = CString::new(dev.as_str()) else {
                continue;
            };
            let Ok((_, programs)) = SchedClassifier::query_tcx(name.as_c_str(), attach) else {
                continue;
            };
            for p in programs {
                let program =
                    serde_json::json!({"id": p.id(), "name": p.name_as_str().unwrap_or("?")});
                let fallback = "detach it with the tool that attached it";
                found.push(describe(
                    &program,
                    &format!("device {dev} ({hook})"),
                    links,
                    fallback,
                ));
            }
        }
    }
    found
}

/// The devices of the calling thread's network namespace (/sys/class/net shows those of the
/// namespace sysfs was mounted in instead).
fn devices() -> Vec<String> {
    let dev = fs::read_to_string("/proc/thread-self/net/dev").unwrap_or_default();
    // Two header lines, then `NAME: counters...` per device.
    dev.lines()
        .skip(2)
        .filter_map(|line| Some(line.split_once(':')?.0.trim().to_owned()))
        .collect()
}

/// `bpftool -j ARGS [PATH]`, parsed; a line saying what went wrong otherwise.
fn bpftool(args: &[&str], path: Option<&Path>) -> Result<Value, String> {
    let mut command = Command::new("bpftool");
    command.arg("-j").args(args);
    if let Some(path) = path {
        command.arg(path);
    }
    let out = command.output().map_err(|_| {
        crate::tools::missing("bpftool", "to list BPF programs attached to the machine")
    })?;
    if !out.status.success() {
        return Err(format!(
            "`bpftool {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    // With nothing attached, `bpftool -j cgroup show` prints nothing at all.
    if out.stdout.trim_ascii().is_empty() {
        return Ok(Value::Array(Vec::new()));
    }
    serde_json::from_slice(&out.stdout).map_err(|err| {
        format!(
            "`bpftool {}` printed what is not JSON: {err}",
            args.join(" ")
        )
    })
}
