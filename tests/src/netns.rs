//! Named network namespaces (`ip netns`), commands inside them, and running Rust code in them.

use std::{
    fs::File,
    process::{Command, Output},
    thread,
};

use anyhow::{Context as _, Result, bail};
use nix::sched::{CloneFlags, setns};

/// Why `program` did not start: missing, named with its package, or the error.
fn not_started(program: &str, err: std::io::Error) -> anyhow::Error {
    if err.kind() == std::io::ErrorKind::NotFound {
        anyhow::anyhow!(crate::tools::missing(program, "by the lab"))
    } else {
        anyhow::Error::new(err).context(format!("running {program}"))
    }
}

/// Runs `ip ARGS...` and fails with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    run("ip", args).map(drop)
}

/// Runs a command and fails with its stderr when it fails.
pub fn run(program: &str, args: &[&str]) -> Result<Output> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|err| not_started(program, err))?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

/// Runs a command in namespace `ns` by `setns` alone (not `ip netns exec`, which mounts a
/// sysfs of the namespace over /sys and so hides the host's bpffs); fails with its stderr.
pub fn run_in(ns: &str, program: &str, args: &[&str]) -> Result<Output> {
    let netns = File::open(format!("/run/netns/{ns}"))
        .with_context(|| format!("opening namespace {ns}"))?;
    let mut command = Command::new(program);
    command.args(args);
    enter_on_exec(&mut command, &netns);
    let output = command
        .output()
        .map_err(|err| not_started(program, err))
        .with_context(|| format!("in network namespace {ns}"))?;
    drop(netns);
    if !output.status.success() {
        bail!(
            "`{program} {}` in {ns} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

/// Makes `command` enter the network namespace open as `netns` (a `/run/netns/NAME` file)
/// when it starts, by `setns` between fork and exec. `netns` must stay open until the command
/// is spawned.
pub fn enter_on_exec(command: &mut Command, netns: &File) {
    use std::os::{fd::AsRawFd as _, unix::process::CommandExt as _};
    let fd = netns.as_raw_fd();
    // SAFETY: setns is async-signal-safe, and the caller keeps the descriptor open until the
    // spawn.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Runs `ip -n NS ARGS...`.
pub fn ip_in(ns: &str, args: &[&str]) -> Result<()> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    ip(&all)
}

/// Sets a sysctl inside a namespace.
pub fn sysctl_in(ns: &str, key: &str, value: &str) -> Result<()> {
    let setting = format!("{key}={value}");
    run("ip", &["netns", "exec", ns, "sysctl", "-qw", &setting]).map(drop)
}

pub fn delete(ns: &str) -> Result<()> {
    ip(&["netns", "del", ns])
}

/// Names of all named namespaces.
pub fn list() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Enters namespace `ns` in the calling thread.
pub fn enter(ns: &str) -> Result<()> {
    let file = File::open(format!("/run/netns/{ns}"))
        .with_context(|| format!("opening network namespace {ns}"))?;
    setns(file, CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering network namespace {ns}"))
}

/// Runs `f` on a new thread that has entered `ns`. Sockets created there stay in `ns` wherever
/// they are used afterwards.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let ns = ns.to_owned();
    thread::spawn(move || {
        enter(&ns)?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in namespace panicked"))?
}

/// The index of device `dev` in namespace `ns`.
pub fn ifindex(ns: &str, dev: &str) -> Result<u32> {
    let out = run("ip", &["-n", ns, "-o", "link", "show", dev])?;
    String::from_utf8(out.stdout)?
        .split(':')
        .next()
        .unwrap_or_default()
        .trim()
        .parse()
        .with_context(|| format!("the index of {dev} in {ns}"))
}

/// Names of the programs attached to the tcx ingress hook of device `dev` in namespace `ns`.
pub fn tcx_ingress_programs(ns: &str, dev: &str) -> Result<Vec<String>> {
    use aya::programs::{SchedClassifier, TcAttachType};
    let dev = std::ffi::CString::new(dev)?;
    in_netns(ns, move || {
        let (_, programs) = SchedClassifier::query_tcx(dev.as_c_str(), TcAttachType::Ingress)
            .with_context(|| format!("querying tcx ingress of {dev:?}"))?;
        Ok(programs
            .iter()
            .map(|p| p.name_as_str().unwrap_or("?").to_owned())
            .collect())
    })
}
