//! `cargo xtask fuzz`: the cargo-fuzz targets of `fuzz/`, each for a bounded time.
//!
//! Each target starts from its committed seeds (`fuzz/seeds/TARGET`) and the working corpus
//! (`fuzz/corpus/TARGET`, not committed, grown by every run). A failing input is left in
//! `fuzz/artifacts/TARGET/` and the task fails naming it.

use std::{
    fs::File,
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};

/// The targets, in `fuzz/Cargo.toml`.
pub const TARGETS: &[&str] = &["manifest", "plan", "maglev", "packet"];

fn cargo_fuzz() -> Command {
    cargo_fuzz_with(Command::new("cargo"))
}

/// `command` (cargo, or a wrapper running it) with cargo-fuzz's arguments and environment.
fn cargo_fuzz_with(mut command: Command) -> Command {
    command
        .arg("fuzz")
        // cargo-fuzz passes `-Z` flags (sanitizers, coverage) to the pinned stable rustc.
        .env("RUSTC_BOOTSTRAP", "1")
        // The targets test pure logic: no eBPF object is built for them.
        .env("AYA_BUILD_SKIP", "1");
    command
}

/// A build of the targets running beside other work at the lowest CPU priority (`nice 19`),
/// so that it takes only the CPU time that work leaves idle: the lab tests mostly wait on
/// the network and on their agents. Its output goes to a log, shown if it fails. Dropped
/// unfinished (the tests failed), it is killed with everything it started; a Ctrl-C, which
/// its own process group does not receive, leaves it to finish by itself.
pub struct BackgroundBuild {
    child: Child,
    log: PathBuf,
}

impl BackgroundBuild {
    pub fn start(build: Build) -> Result<Self> {
        let log = crate::target_dir().join("fuzz-build.log");
        let mut nice = Command::new("nice");
        nice.args(["-n", "19", "cargo"]);
        let mut command = cargo_fuzz_with(nice);
        command.arg("build").args(build.args());
        let child = spawn_logged(&mut command, &log).context("starting the fuzz targets' build")?;
        Ok(Self { child, log })
    }

    /// Waits until the build is done; its log if it failed.
    pub fn wait(mut self) -> Result<()> {
        let status = self.child.wait()?;
        if !status.success() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            bail!("building the fuzz targets failed ({status}):\n{log}");
        }
        Ok(())
    }
}

impl Drop for BackgroundBuild {
    fn drop(&mut self) {
        stop_group(&mut self.child);
    }
}

/// How the targets are built.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// cargo-fuzz's default: optimized, with AddressSanitizer (minutes from cold on
    /// two cores, then about 2000 plan inputs a second).
    Full,
    /// Unoptimized and without a sanitizer: 71 s from cold on two cores (the targets build the
    /// agent crate without its `agent` feature: its pure stages only), seven times fewer
    /// inputs a second. What `cargo xtask test` runs, for a short time.
    Quick,
}

impl Build {
    fn args(self) -> &'static [&'static str] {
        match self {
            Self::Full => &[],
            // Its own target directory: switching builds never rebuilds the other.
            Self::Quick => &[
                "--dev",
                "--sanitizer",
                "none",
                "--target-dir",
                "fuzz/target/quick",
            ],
        }
    }
}

/// Builds the targets and runs each named one (all when `only` is empty) for `seconds`, as
/// many side by side as there are CPUs: each libFuzzer process is single-threaded.
pub fn fuzz(only: &[String], seconds: u64, build: Build) -> Result<()> {
    for target in only {
        if !TARGETS.contains(&target.as_str()) {
            bail!(
                "no fuzz target {target:?} (there are: {})",
                TARGETS.join(", ")
            );
        }
    }
    crate::run(cargo_fuzz().arg("build").args(build.args()))?;
    let chosen: Vec<&str> = TARGETS
        .iter()
        .copied()
        .filter(|t| only.is_empty() || only.iter().any(|o| o == t))
        .collect();
    let side_by_side = std::thread::available_parallelism().map_or(1, usize::from);
    for batch in chosen.chunks(side_by_side) {
        println!("== fuzz {} for {seconds} s", batch.join(", "));
        let runs = batch
            .iter()
            .map(|target| Run::start(target, seconds, build))
            .collect::<Result<Vec<_>>>()?;
        for run in runs {
            run.finish()?;
        }
    }
    Ok(())
}

/// One target's libFuzzer run, its output in `target/fuzz-TARGET.log`.
struct Run {
    target: &'static str,
    child: Child,
    log: PathBuf,
}

impl Run {
    fn start(target: &'static str, seconds: u64, build: Build) -> Result<Self> {
        let root = crate::workspace_root().join("fuzz");
        let corpus = root.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        let log = crate::target_dir().join(format!("fuzz-{target}.log"));
        let mut command = cargo_fuzz();
        command
            .arg("run")
            .args(build.args())
            .arg(target)
            .arg(&corpus)
            .arg(root.join("seeds").join(target))
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                // One input taking 10 s is a hang worth reporting.
                "-timeout=10",
                "-rss_limit_mb=4096",
                "-print_final_stats=1",
            ]);
        let child = spawn_logged(&mut command, &log)
            .with_context(|| format!("starting the fuzz target {target}"))?;
        Ok(Self { target, child, log })
    }

    /// Waits for the run; prints its final statistics, or its log's end if it failed (a
    /// finding names its input, left in `fuzz/artifacts/TARGET/`).
    fn finish(mut self) -> Result<()> {
        let status = self.child.wait()?;
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        if !status.success() {
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(60)..].join("\n");
            bail!(
                "fuzz target {} failed ({status}); the end of {}:\n{tail}",
                self.target,
                self.log.display()
            );
        }
        for line in log.lines().filter(|l| l.starts_with("stat::")) {
            println!("{}: {line}", self.target);
        }
        Ok(())
    }
}

impl Drop for Run {
    /// A run left unfinished (another target's run failed first) is stopped.
    fn drop(&mut self) {
        stop_group(&mut self.child);
    }
}

/// Starts `command` in the workspace root with its output in `log`, as the leader of a
/// process group of its own (so that [`stop_group`] stops what it started too).
fn spawn_logged(command: &mut Command, log: &std::path::Path) -> Result<Child> {
    let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    Ok(command
        .current_dir(crate::workspace_root())
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()?)
}

/// Kills a child started as a process group's leader, with everything it started, unless it
/// has ended.
fn stop_group(child: &mut Child) {
    if matches!(child.try_wait(), Ok(None))
        && let Ok(pid) = i32::try_from(child.id())
    {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = child.wait();
    }
}
