//! The manifests source: a directory of YAML files (several documents each) holding `v1`
//! Services and `discovery.k8s.io/v1` EndpointSlices.
//!
//! A file that stops parsing (an editor half-way through a save, a typo) keeps serving the
//! objects it held when it last parsed, so one bad write never takes services down.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde::Deserialize as _;

use crate::diag::Diagnostic;

#[derive(Clone, Debug)]
pub enum Object {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
}

/// Everything the directory holds now.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    pub diagnostics: Vec<Diagnostic>,
}

pub struct ManifestSource {
    dir: PathBuf,
    /// Objects of each file as of its last successful parse.
    last_good: BTreeMap<PathBuf, Vec<Object>>,
}

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn manifest_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // Hidden files include editor swap files and the `..data` of ConfigMap volumes
        // (whose content is also reachable through the visible symlinks).
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            manifest_files(&path, out)?;
        } else if is_manifest(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// Parses the documents of one file. Documents of other kinds are ignored; a document that is
/// not valid YAML makes the whole file fail (`Err`), one that does not fit its kind's schema is
/// reported and skipped.
pub fn parse_documents(
    text: &str,
    file: &str,
) -> Result<(Vec<Object>, Vec<Diagnostic>), Diagnostic> {
    let mut objects = Vec::new();
    let mut diags = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let where_ = format!("file {file} (document {})", index + 1);
        let value = serde_yaml::Value::deserialize(document)
            .map_err(|err| Diagnostic::new(&where_, format!("not valid YAML: {err}")))?;
        if value.is_null() {
            continue;
        }
        let field = |name: &str| {
            value
                .get(name)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_owned()
        };
        let (api_version, kind) = (field("apiVersion"), field("kind"));
        let parsed = match (api_version.as_str(), kind.as_str()) {
            ("v1", "Service") => {
                serde_yaml::from_value::<Service>(value).map(|svc| Object::Service(Box::new(svc)))
            }
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                serde_yaml::from_value::<EndpointSlice>(value)
                    .map(|slice| Object::EndpointSlice(Box::new(slice)))
            }
            ("", _) | (_, "") => {
                diags.push(Diagnostic::new(
                    &where_,
                    "has no apiVersion or kind; skipped",
                ));
                continue;
            }
            _ => continue,
        };
        match parsed {
            Ok(object) => {
                let name = match &object {
                    Object::Service(svc) => svc.metadata.name.as_deref(),
                    Object::EndpointSlice(slice) => slice.metadata.name.as_deref(),
                };
                if name.is_none_or(str::is_empty) {
                    diags.push(Diagnostic::new(
                        &where_,
                        format!("{kind} has no metadata.name; skipped"),
                    ));
                } else {
                    objects.push(object);
                }
            }
            Err(err) => diags.push(Diagnostic::new(
                &where_,
                format!("invalid {kind}: {err}; skipped"),
            )),
        }
    }
    Ok((objects, diags))
}

impl ManifestSource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            last_good: BTreeMap::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Re-reads the directory.
    pub fn read(&mut self) -> Snapshot {
        let mut snapshot = Snapshot::default();
        let mut files = Vec::new();
        if let Err(err) = manifest_files(&self.dir, &mut files) {
            snapshot.diagnostics.push(Diagnostic::new(
                format!("manifests directory {}", self.dir.display()),
                format!("cannot be read: {err}; serving its last readable contents"),
            ));
            files = self.last_good.keys().cloned().collect();
        } else {
            self.last_good.retain(|path, _| files.contains(path));
        }
        files.sort();

        for path in &files {
            let shown = path
                .strip_prefix(&self.dir)
                .unwrap_or(path)
                .display()
                .to_string();
            let parsed = fs::read_to_string(path)
                .map_err(|err| {
                    Diagnostic::new(format!("file {shown}"), format!("cannot be read: {err}"))
                })
                .and_then(|text| parse_documents(&text, &shown));
            match parsed {
                Ok((objects, diags)) => {
                    snapshot.diagnostics.extend(diags);
                    self.last_good.insert(path.clone(), objects);
                }
                Err(mut diag) => {
                    if self.last_good.contains_key(path) {
                        diag.reason
                            .push_str("; serving the file's last good contents");
                    }
                    snapshot.diagnostics.push(diag);
                }
            }
            for object in self.last_good.get(path).into_iter().flatten() {
                match object {
                    Object::Service(svc) => snapshot.services.push((**svc).clone()),
                    Object::EndpointSlice(slice) => snapshot.slices.push((**slice).clone()),
                }
            }
        }
        snapshot
    }
}
