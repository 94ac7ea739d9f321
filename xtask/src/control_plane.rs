//! `cargo xtask setup`, second half: builds the real Kubernetes components the tests and the
//! demo run (etcd, kube-apiserver, kube-controller-manager, kubectl, helm, CoreDNS) from their
//! Go modules, through the Go module proxy, into the cache `svclb_tests::kube_bins` names.
//! Nothing prebuilt is downloaded and nothing built is kept in the repository. Each component
//! is built in a small wrapper module that requires the upstream module at its pinned
//! version; a finished build leaves a stamp, so the next setup does nothing until the version
//! changes.

use std::{fmt::Write as _, fs, path::Path, process::Command, time::Instant};

use anyhow::{Context as _, Result, bail};
use svclb_tests::kube_bins::{COMPONENTS, Component, KUBERNETES};

/// The Go toolchain: `go` on the PATH, or where the official archive installs it.
fn go() -> Result<String> {
    for candidate in ["go", "/usr/local/go/bin/go"] {
        if Command::new(candidate)
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Ok(candidate.to_owned());
        }
    }
    bail!(
        "Go is not installed, and is needed to build the control plane the tests run (etcd, \
         kube-apiserver, kube-controller-manager, kubectl, helm, CoreDNS): install Go 1.26 or later \
         (https://go.dev/doc/install)"
    )
}

/// Builds every component not built yet.
pub fn setup() -> Result<()> {
    let missing: Vec<Component> = COMPONENTS.into_iter().filter(|c| !c.is_built()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let go = go()?;
    for component in missing {
        let started = Instant::now();
        println!(
            "setup: building {} from {}@{} (once per version; a cold build of all four \
             components took about 20 minutes on 2 cores)",
            component
                .binaries
                .iter()
                .map(|(b, _)| *b)
                .collect::<Vec<_>>()
                .join(", "),
            component.module,
            component.version
        );
        build(&go, &component)
            .with_context(|| format!("building {} {}", component.name, component.version))?;
        println!(
            "setup: built {} {} in {:.0?} into {}",
            component.name,
            component.version,
            started.elapsed(),
            component.bin_dir().display()
        );
    }
    Ok(())
}

fn build(go: &str, component: &Component) -> Result<()> {
    let module_dir = component.dir().join("module");
    if module_dir.exists() {
        fs::remove_dir_all(&module_dir)?;
    }
    fs::create_dir_all(&module_dir)?;
    let replaces = if component.module == KUBERNETES.module {
        staging_replaces(&upstream_go_mod(go, component)?, component.version)?
    } else {
        Vec::new()
    };
    fs::write(
        module_dir.join("go.mod"),
        wrapper_go_mod(component, &replaces),
    )?;
    fs::write(module_dir.join("tools.go"), tools_go(component))?;
    go_run(go, &module_dir, &["mod", "tidy"])?;
    let ldflags = ldflags(component);
    for (name, package) in component.binaries {
        // Named one by one: `-o DIR/` would name etcd's binary after its package (`server`).
        let out = component.bin_dir().join(name);
        let out = out.to_string_lossy();
        go_run(
            go,
            &module_dir,
            &["build", "-ldflags", &ldflags, "-o", &out, package],
        )?;
    }
    fs::write(
        component.stamp(),
        format!("{} {}\n", component.module, component.version),
    )?;
    Ok(())
}

/// `go ARGS` in `dir`, with the local toolchain only (no toolchain download).
fn go_run(go: &str, dir: &Path, args: &[&str]) -> Result<()> {
    let status = Command::new(go)
        .args(args)
        .current_dir(dir)
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .status()
        .with_context(|| format!("running {go} {}", args.join(" ")))?;
    if !status.success() {
        bail!(
            "`go {}` in {} failed ({status})",
            args.join(" "),
            dir.display()
        );
    }
    Ok(())
}

/// The upstream module's own go.mod, from the module proxy.
fn upstream_go_mod(go: &str, component: &Component) -> Result<String> {
    let module = format!("{}@{}", component.module, component.version);
    let out = Command::new(go)
        .args(["mod", "download", "-json", &module])
        .env("GOTOOLCHAIN", "local")
        .output()
        .with_context(|| format!("running go mod download {module}"))?;
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("go mod download {module} printed no JSON"))?;
    if let Some(err) = info["Error"].as_str() {
        bail!("go mod download {module}: {err}");
    }
    let path = info["GoMod"]
        .as_str()
        .context("go mod download named no go.mod")?;
    fs::read_to_string(path).with_context(|| format!("reading {path}"))
}

/// k8s.io/kubernetes requires its staging modules (k8s.io/api, k8s.io/client-go, ...) at
/// v0.0.0 and replaces them with directories of its own repository. Outside it, each maps to
/// its published tag: Kubernetes v1.X.Y's staging modules are tagged v0.X.Y.
fn staging_replaces(go_mod: &str, version: &str) -> Result<Vec<String>> {
    let tag = version
        .strip_prefix("v1.")
        .map(|rest| format!("v0.{rest}"))
        .with_context(|| format!("{version} is not a v1.x.y Kubernetes version"))?;
    let mut staging: Vec<&str> = go_mod
        .lines()
        .filter_map(|line| {
            let (module, target) = line.trim().split_once(" => ")?;
            target.starts_with("./staging/").then_some(module.trim())
        })
        .collect();
    // Only the modules upstream requires: a replace of one outside the build could name a
    // tag the proxy does not serve (k8s.io/sample-controller).
    staging.retain(|module| {
        go_mod
            .lines()
            .any(|line| line.split_whitespace().eq([*module, "v0.0.0"]))
    });
    if staging.is_empty() {
        bail!("the go.mod of k8s.io/kubernetes {version} replaces no staging module");
    }
    Ok(staging
        .into_iter()
        .map(|module| format!("{module} => {module} {tag}"))
        .collect())
}

fn wrapper_go_mod(component: &Component, replaces: &[String]) -> String {
    let mut text = format!(
        "// Generated by `cargo xtask setup`: builds {}.\nmodule svclb.invalid/build/{}\n\n\
         go 1.26\n\nrequire {} {}\n",
        component.module, component.name, component.module, component.version
    );
    if !replaces.is_empty() {
        text.push_str("\nreplace (\n");
        for line in replaces {
            let _ = writeln!(text, "\t{line}");
        }
        text.push_str(")\n");
    }
    text
}

/// A file that imports the packages to build, so `go mod tidy` records what they need.
fn tools_go(component: &Component) -> String {
    let mut text = String::from("//go:build tools\n\npackage tools\n\nimport (\n");
    for (_, package) in component.binaries {
        let _ = writeln!(text, "\t_ \"{package}\"");
    }
    text.push_str(")\n");
    text
}

/// The version stamps upstream's own build sets, so that `/version` and `--version` tell the
/// truth (the tree state is "archive": built from a module archive, not a git checkout).
fn ldflags(component: &Component) -> String {
    let version = component.version;
    let date = utc_now();
    match component.name {
        "kubernetes" => {
            let mut parts = version.trim_start_matches('v').split('.');
            let (major, minor) = (parts.next().unwrap_or("1"), parts.next().unwrap_or("0"));
            [
                "k8s.io/client-go/pkg/version",
                "k8s.io/component-base/version",
            ]
            .iter()
            .flat_map(|package| {
                [
                    ("gitVersion", version),
                    ("gitMajor", major),
                    ("gitMinor", minor),
                    ("gitTreeState", "archive"),
                    ("buildDate", date.as_str()),
                ]
                .map(|(key, value)| format!("-X '{package}.{key}={value}'"))
            })
            .collect::<Vec<_>>()
            .join(" ")
        }
        "helm" => format!(
            "-X helm.sh/helm/v4/internal/version.version={version} \
             -X helm.sh/helm/v4/internal/version.gitTreeState=archive"
        ),
        _ => String::new(),
    }
}

/// Now, as `YYYY-MM-DDTHH:MM:SSZ` (what upstream's builds stamp), from `date`.
fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::staging_replaces;

    #[test]
    fn staging_modules_map_to_their_published_tags() {
        let go_mod = "module k8s.io/kubernetes\n\nrequire (\n\tk8s.io/api v0.0.0\n\t\
                      k8s.io/client-go v0.0.0\n\tgithub.com/x/y v1.2.3\n)\n\nreplace (\n\t\
                      k8s.io/api => ./staging/src/k8s.io/api\n\t\
                      k8s.io/client-go => ./staging/src/k8s.io/client-go\n\t\
                      k8s.io/sample-controller => ./staging/src/k8s.io/sample-controller\n)\n";
        assert_eq!(
            staging_replaces(go_mod, "v1.37.2").unwrap(),
            [
                "k8s.io/api => k8s.io/api v0.37.2",
                "k8s.io/client-go => k8s.io/client-go v0.37.2"
            ]
        );
        assert!(staging_replaces("module x\n", "v1.37.2").is_err());
        assert!(staging_replaces(go_mod, "v2.0.0").is_err());
    }
}
