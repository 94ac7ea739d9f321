//! The manifests source: a directory of YAML files (several documents each) holding `v1`
//! Services, `discovery.k8s.io/v1` EndpointSlices and, optionally, `v1` Nodes (for this node's
//! zone and NodePort addresses).
//!
//! A file that stops parsing (an editor half-way through a save, a typo) keeps serving the
//! objects it held when it last parsed, so one bad write never takes services down.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use serde::Deserialize as _;

use crate::diag::Diagnostic;

#[derive(Clone, Debug)]
pub enum Object {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    Node(Box<Node>),
}

/// Everything the directory holds now.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    pub nodes: Vec<Node>,
    pub diagnostics: Vec<Diagnostic>,
}

pub struct ManifestSource {
    dir: PathBuf,
    /// Objects of each file as of its last successful parse.
    last_good: BTreeMap<PathBuf, Vec<Object>>,
    /// What each file looked like when it was last read, so unchanged files are not parsed
    /// again (a change to one file of ten thousand costs one parse, not ten thousand).
    seen: BTreeMap<PathBuf, Fingerprint>,
    /// Diagnostics of each file's last read, repeated while the file is unchanged.
    file_diags: BTreeMap<PathBuf, Vec<Diagnostic>>,
}

/// Modification time, size and inode: a write or a rename-over changes at least one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fingerprint {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = fs::metadata(path).ok()?;
    Some(Fingerprint {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// The manifest files below `dir`. Symbolic links to files are followed (ConfigMap volumes
/// are made of them); links to directories are not, so a link loop cannot recurse forever.
fn manifest_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        // Hidden files include editor swap files and the `..data` of ConfigMap volumes
        // (whose content is also reachable through the visible symlinks).
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        if entry.file_type()?.is_dir() {
            manifest_files(&path, out)?;
        } else if is_manifest(&path) && path.is_file() {
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
            ("v1", "Node") => {
                serde_yaml::from_value::<Node>(value).map(|node| Object::Node(Box::new(node)))
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
                    Object::Node(node) => node.metadata.name.as_deref(),
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
            seen: BTreeMap::new(),
            file_diags: BTreeMap::new(),
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
            let present: std::collections::HashSet<&PathBuf> = files.iter().collect();
            self.last_good.retain(|path, _| present.contains(path));
            self.seen.retain(|path, _| present.contains(path));
            self.file_diags.retain(|path, _| present.contains(path));
        }
        files.sort();

        for path in &files {
            let print = fingerprint(path);
            if print.is_none() || self.seen.get(path) != print.as_ref() {
                self.reparse(path);
                if let Some(print) = print {
                    self.seen.insert(path.clone(), print);
                }
            }
            snapshot
                .diagnostics
                .extend(self.file_diags.get(path).into_iter().flatten().cloned());
            for object in self.last_good.get(path).into_iter().flatten() {
                match object {
                    Object::Service(svc) => snapshot.services.push((**svc).clone()),
                    Object::EndpointSlice(slice) => snapshot.slices.push((**slice).clone()),
                    Object::Node(node) => snapshot.nodes.push((**node).clone()),
                }
            }
        }
        snapshot
    }

    /// Parses `path` again, keeping its last good objects when it no longer parses.
    fn reparse(&mut self, path: &Path) {
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
        let diags = match parsed {
            Ok((objects, diags)) => {
                self.last_good.insert(path.to_path_buf(), objects);
                diags
            }
            Err(mut diag) => {
                if self.last_good.contains_key(path) {
                    diag.reason
                        .push_str("; serving the file's last good contents");
                }
                vec![diag]
            }
        };
        self.file_diags.insert(path.to_path_buf(), diags);
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::{ManifestSource, Object, parse_documents};

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: x}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n";

    #[test]
    fn documents_of_every_kind() {
        let text = format!(
            "{SVC}---\n# a comment-only document\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: d}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s, namespace: x}}\naddressType: IPv4\nendpoints: []\n"
        );
        let (objects, diags) = parse_documents(&text, "f.yaml").unwrap();
        assert!(diags.is_empty(), "{diags:?}");
        assert!(matches!(
            objects[..],
            [Object::Service(_), Object::EndpointSlice(_)]
        ));
    }

    #[test]
    fn schema_errors_skip_one_document_and_name_it() {
        let text = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: bad}}\nspec: {{ports: [{{port: eighty}}]}}\n---\n{SVC}---\nkind: Service\n---\napiVersion: v1\nkind: Service\nmetadata: {{namespace: x}}\n"
        );
        let (objects, diags) = parse_documents(&text, "f.yaml").unwrap();
        assert_eq!(objects.len(), 1);
        let shown: Vec<String> = diags.iter().map(ToString::to_string).collect();
        assert!(
            shown[0].starts_with("file f.yaml (document 1): invalid Service:"),
            "{shown:?}"
        );
        assert_eq!(
            shown[1],
            "file f.yaml (document 3): has no apiVersion or kind; skipped"
        );
        assert_eq!(
            shown[2],
            "file f.yaml (document 4): Service has no metadata.name; skipped"
        );
    }

    #[test]
    fn invalid_yaml_fails_the_file() {
        let err = parse_documents("a: [\n", "f.yaml").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("file f.yaml (document 1): not valid YAML"),
            "{err}"
        );
    }

    #[test]
    fn symlinked_files_are_read_and_symlinked_directories_are_not_walked() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("..data")).unwrap();
        fs::write(dir.path().join("..data/svc.yaml"), SVC).unwrap();
        std::os::unix::fs::symlink("..data/svc.yaml", dir.path().join("svc.yaml")).unwrap();
        std::os::unix::fs::symlink(".", dir.path().join("loop")).unwrap();
        let snapshot = ManifestSource::new(dir.path()).read();
        assert_eq!(snapshot.services.len(), 1);
        assert!(
            snapshot.diagnostics.is_empty(),
            "{:?}",
            snapshot.diagnostics
        );
    }

    #[test]
    fn a_file_that_breaks_keeps_its_last_good_objects() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.yaml"), SVC).unwrap();
        fs::write(dir.path().join(".swap.yaml"), "ignored: [").unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(
            dir.path().join("sub/b.yml"),
            SVC.replace("name: a", "name: b"),
        )
        .unwrap();
        fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();
        let mut source = ManifestSource::new(dir.path());
        let first = source.read();
        assert_eq!(first.services.len(), 2);
        assert!(first.diagnostics.is_empty(), "{:?}", first.diagnostics);

        fs::write(dir.path().join("a.yaml"), "kind: [").unwrap();
        let broken = source.read();
        assert_eq!(
            broken.services.len(),
            2,
            "the broken file still serves its last good objects"
        );
        assert!(
            broken.diagnostics[0]
                .reason
                .ends_with("serving the file's last good contents")
        );

        // Unchanged files are not parsed again, and their problems are still reported.
        let again = source.read();
        assert_eq!(again.services.len(), 2);
        assert_eq!(again.diagnostics, broken.diagnostics);

        fs::remove_file(dir.path().join("a.yaml")).unwrap();
        assert_eq!(
            source.read().services.len(),
            1,
            "a removed file's objects go away"
        );
    }
}
