//! The real Kubernetes components the tests and the demo run (etcd, kube-apiserver,
//! kube-controller-manager, kubectl, helm, and CoreDNS, the reference the kernel's DNS
//! answers are compared with): their pinned versions, and where `cargo xtask
//! setup` keeps what it built from their Go modules. The cache is outside the repository,
//! one directory per component and version, so a build happens once per version.

use std::path::PathBuf;

use anyhow::{Result, bail};

/// A component built from one Go module.
#[derive(Clone, Copy, Debug)]
pub struct Component {
    /// Its cache directory's name, before the version.
    pub name: &'static str,
    /// The Go module its binaries come from.
    pub module: &'static str,
    pub version: &'static str,
    /// (binary, package) pairs built from the module.
    pub binaries: &'static [(&'static str, &'static str)],
}

/// etcd: the binary is the server module's own main package.
pub const ETCD: Component = Component {
    name: "etcd",
    module: "go.etcd.io/etcd/server/v3",
    version: "v3.6.17",
    binaries: &[("etcd", "go.etcd.io/etcd/server/v3")],
};

/// The newest v1.3x release the Go module proxy serves that k8s-openapi's `v1_37` feature
/// describes.
pub const KUBERNETES: Component = Component {
    name: "kubernetes",
    module: "k8s.io/kubernetes",
    version: "v1.37.2",
    binaries: &[
        ("kube-apiserver", "k8s.io/kubernetes/cmd/kube-apiserver"),
        (
            "kube-controller-manager",
            "k8s.io/kubernetes/cmd/kube-controller-manager",
        ),
        ("kubectl", "k8s.io/kubernetes/cmd/kubectl"),
    ],
};

pub const HELM: Component = Component {
    name: "helm",
    module: "helm.sh/helm/v4",
    version: "v4.3.2",
    binaries: &[("helm", "helm.sh/helm/v4/cmd/helm")],
};

/// CoreDNS as its releases build it: the module's own main package, with every plugin of
/// its `plugin.cfg` (the kubernetes plugin among them).
pub const COREDNS: Component = Component {
    name: "coredns",
    module: "github.com/coredns/coredns",
    version: "v1.15.0",
    binaries: &[("coredns", "github.com/coredns/coredns")],
};

pub const COMPONENTS: [Component; 4] = [ETCD, KUBERNETES, HELM, COREDNS];

/// The cache: `$SVCLB_CACHE_DIR`, else `$XDG_CACHE_HOME/svclb`, else `~/.cache/svclb`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SVCLB_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache"),
        PathBuf::from,
    );
    base.join("svclb")
}

impl Component {
    /// This version's directory in the cache.
    pub fn dir(&self) -> PathBuf {
        cache_dir().join(format!("{}-{}", self.name, self.version))
    }

    /// Where its binaries are.
    pub fn bin_dir(&self) -> PathBuf {
        self.dir().join("bin")
    }

    /// The stamp a finished build leaves: the binaries are complete.
    pub fn stamp(&self) -> PathBuf {
        self.dir().join("built")
    }

    pub fn is_built(&self) -> bool {
        self.stamp().is_file()
    }
}

/// The path of binary `name` of one of [`COMPONENTS`], failing with what to run when it has
/// not been built.
pub fn bin(name: &str) -> Result<PathBuf> {
    let Some(component) = COMPONENTS
        .iter()
        .find(|c| c.binaries.iter().any(|(bin, _)| *bin == name))
    else {
        bail!("{name} is not one of the control plane's binaries");
    };
    if !component.is_built() {
        bail!(
            "{name} {} is not built: run `cargo xtask setup` (it builds {} from its Go module \
             into {})",
            component.version,
            component.module,
            component.dir().display()
        );
    }
    Ok(component.bin_dir().join(name))
}
