//! The real helm (v4, built from its Go module by `cargo xtask setup`, see
//! [`crate::kube_bins`]) on the repository's chart: `helm lint`, `helm template`, and the
//! release notes of a client-side dry-run install.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// One rendered template file.
pub struct Rendered {
    /// Its path in the chart, `templates/daemonset.yaml`.
    pub file: String,
    pub text: String,
}

/// The repository's chart.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/svclb")
}

/// Runs helm with `args`, `values` (YAML) as its values file on standard input.
fn helm(args: &[&str], values: &str) -> Result<String> {
    let mut child = Command::new(crate::kube_bins::bin("helm")?)
        .args(args)
        .args(["--values", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting helm")?;
    child
        .stdin
        .take()
        .context("helm's input")?
        .write_all(values.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "helm {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// `helm lint --strict` of `chart` with `values`.
pub fn lint(chart: &Path, values: &str) -> Result<()> {
    helm(&["lint", "--strict", &chart.to_string_lossy()], values).map(drop)
}

/// `helm template RELEASE CHART --namespace NAMESPACE` with `values`: each template's
/// objects, by file.
pub fn template(
    chart: &Path,
    release: &str,
    namespace: &str,
    values: &str,
) -> Result<Vec<Rendered>> {
    let out = helm(
        &[
            "template",
            release,
            &chart.to_string_lossy(),
            "--namespace",
            namespace,
        ],
        values,
    )?;
    let mut rendered: Vec<Rendered> = Vec::new();
    for doc in out.split("\n---\n") {
        let Some((_, rest)) = doc.split_once("# Source: ") else {
            continue;
        };
        let (source, text) = rest.split_once('\n').unwrap_or((rest, ""));
        // `svclb/templates/daemonset.yaml`: the chart's name first.
        let file = source.split_once('/').map_or(source, |(_, f)| f).to_owned();
        rendered.push(Rendered {
            file,
            text: text.to_owned(),
        });
    }
    Ok(rendered)
}

/// The release notes (`templates/NOTES.txt`) of installing `chart` as `release` in
/// `namespace` with `values`, from a client-side dry run.
pub fn notes(chart: &Path, release: &str, namespace: &str, values: &str) -> Result<String> {
    let out = helm(
        &[
            "install",
            release,
            &chart.to_string_lossy(),
            "--namespace",
            namespace,
            "--dry-run=client",
        ],
        values,
    )?;
    out.split_once("NOTES:\n")
        .map(|(_, notes)| notes.to_owned())
        .context("the dry run printed no NOTES")
}
