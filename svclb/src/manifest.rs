//! The manifests source: a directory of YAML files (several documents each) holding `v1`
//! Services, `discovery.k8s.io/v1` EndpointSlices and, optionally, `v1` Nodes (for this node's
//! zone and NodePort addresses).
//!
//! A file that stops parsing (an editor half-way through a save, a typo) keeps serving the
//! objects it held when it last parsed, so one bad write never takes services down.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs,
    path::{Component, Path, PathBuf},
    sync::Arc,
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use serde::Deserialize as _;

use crate::diag::Diagnostic;

/// A parsed object, shared: a snapshot holds the same allocation as the source's cache, and
/// an object that did not change keeps its allocation from one snapshot to the next (the
/// incremental planner tells changed objects by that).
#[derive(Clone, Debug)]
pub enum Object {
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    Node(Arc<Node>),
}

/// Everything the source holds now.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub services: Vec<Arc<Service>>,
    pub slices: Vec<Arc<EndpointSlice>>,
    pub nodes: Vec<Arc<Node>>,
    pub diagnostics: Vec<Diagnostic>,
}

pub struct ManifestSource {
    dir: PathBuf,
    /// Objects of each file as of its last successful parse.
    last_good: BTreeMap<PathBuf, Vec<Object>>,
    /// How many copies of each object (kind, namespace, name) `last_good` holds, kept up to
    /// date file by file, and how many objects have more than one: only then does a read
    /// pay for [`snapshot_of`]'s check of every object.
    copies: HashMap<String, u32>,
    duplicated: usize,
    /// What each file looked like when it was last read, so unchanged files are not parsed
    /// again (a change to one file of ten thousand costs one parse, not ten thousand).
    seen: BTreeMap<PathBuf, Fingerprint>,
    /// Diagnostics of each file's last read (files without any have no entry), repeated while
    /// the file is unchanged.
    file_diags: BTreeMap<PathBuf, Vec<Diagnostic>>,
    /// What changed since the last read, as the file watcher reported it.
    pending: Pending,
}

/// The changes waiting for the next read.
#[derive(Debug)]
enum Pending {
    /// These files (paths below the directory) were written, created or removed.
    Files(BTreeSet<PathBuf>),
    /// Anything may have changed: walk the whole directory (the first read, a lost event, a
    /// directory created or removed, a ConfigMap volume's `..data` swap).
    Everything,
}

/// A file's objects and problems, or why it could not be parsed at all.
type Parsed = Result<(Vec<Object>, Vec<Diagnostic>), Diagnostic>;

/// Reads and parses one file (named relative to `dir` in diagnostics).
fn parse_file(dir: &Path, path: &Path) -> Parsed {
    let shown = path.strip_prefix(dir).unwrap_or(path).display().to_string();
    fs::read_to_string(path)
        .map_err(|err| Diagnostic::new(format!("file {shown}"), format!("cannot be read: {err}")))
        .and_then(|text| parse_documents(&text, &shown))
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
                serde_yaml::from_value::<Service>(value).map(|svc| Object::Service(Arc::new(svc)))
            }
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                serde_yaml::from_value::<EndpointSlice>(value)
                    .map(|slice| Object::EndpointSlice(Arc::new(slice)))
            }
            ("v1", "Node") => {
                serde_yaml::from_value::<Node>(value).map(|node| Object::Node(Arc::new(node)))
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
                let (_, _, name) = object.identity();
                if name.is_empty() {
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

impl Snapshot {
    /// Adds `object` (sharing its allocation).
    fn push(&mut self, object: &Object) {
        match object {
            Object::Service(svc) => self.services.push(svc.clone()),
            Object::EndpointSlice(slice) => self.slices.push(slice.clone()),
            Object::Node(node) => self.nodes.push(node.clone()),
        }
    }
}

impl Object {
    /// Kind, namespace (empty for a Node) and name (empty when it has none): what makes two
    /// objects one.
    fn identity(&self) -> (&'static str, &str, &str) {
        let (kind, meta) = match self {
            Object::Service(o) => ("Service", &o.metadata),
            Object::EndpointSlice(o) => ("EndpointSlice", &o.metadata),
            Object::Node(o) => ("Node", &o.metadata),
        };
        let namespace = match self {
            Object::Node(_) => "",
            _ => meta.namespace.as_deref().unwrap_or("default"),
        };
        (kind, namespace, meta.name.as_deref().unwrap_or(""))
    }
}

/// The snapshot of `files` (each with its objects, in order): one copy of each object, the
/// first in file order (then in its file's order). Later copies are reported by file and
/// skipped. An API server never holds two objects of one name; a directory can (one object
/// in two files), and which copy counts must not depend on which file changed last.
pub fn snapshot_of<'a>(files: impl IntoIterator<Item = (&'a Path, &'a [Object])>) -> Snapshot {
    let mut snapshot = Snapshot::default();
    let mut first: HashMap<(&str, &str, &str), &Path> = HashMap::new();
    for (path, objects) in files {
        for object in objects {
            let (kind, namespace, name) = object.identity();
            if let Some(winner) = first.get(&(kind, namespace, name)) {
                let object = if namespace.is_empty() {
                    format!("{kind} {name}")
                } else {
                    format!("{kind} {namespace}/{name}")
                };
                snapshot.diagnostics.push(Diagnostic::new(
                    format!("{object} in file {}", path.display()),
                    format!(
                        "is also defined in file {}, whose copy is served; skipped",
                        winner.display()
                    ),
                ));
                continue;
            }
            first.insert((kind, namespace, name), path);
            snapshot.push(object);
        }
    }
    snapshot
}

impl ManifestSource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            last_good: BTreeMap::new(),
            copies: HashMap::new(),
            duplicated: 0,
            seen: BTreeMap::new(),
            file_diags: BTreeMap::new(),
            pending: Pending::Everything,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes note of a file watcher event: the next [`ManifestSource::read`] parses the files
    /// it names again, or walks the whole directory when the event may hide more than it says.
    pub fn note(&mut self, event: &notify::Event) {
        let Pending::Files(files) = &mut self.pending else {
            return;
        };
        if event.need_rescan() || event.paths.is_empty() {
            self.pending = Pending::Everything;
            return;
        }
        for path in &event.paths {
            let Ok(relative) = path.strip_prefix(&self.dir) else {
                self.pending = Pending::Everything;
                return;
            };
            let names: Vec<&std::ffi::OsStr> = relative
                .components()
                .filter_map(|c| match c {
                    Component::Normal(name) => Some(name),
                    _ => None,
                })
                .collect();
            let hidden = |prefix: &str| {
                names
                    .iter()
                    .any(|n| n.to_string_lossy().starts_with(prefix))
            };
            if hidden("..") {
                // A ConfigMap volume swaps its `..data` link: the visible files are symbolic
                // links that did not change themselves, so look at every file.
                self.pending = Pending::Everything;
                return;
            }
            if hidden(".") {
                // An editor's swap file, the temporary file of an atomic write: never read.
                continue;
            }
            if path.is_dir()
                || (!path.exists()
                    && !self.last_good.contains_key(path)
                    && self.last_good.keys().any(|known| known.starts_with(path)))
            {
                // A directory appeared or went away with files in it.
                self.pending = Pending::Everything;
                return;
            }
            if is_manifest(path) {
                files.insert(path.clone());
            }
        }
    }

    /// Marks everything as changed: the next read walks the whole directory (after the
    /// watcher reported an error, for example).
    pub fn note_everything(&mut self) {
        self.pending = Pending::Everything;
    }

    /// Re-reads what changed since the last read (the whole directory the first time, and
    /// whenever the watcher could not say what changed) and returns everything it holds.
    pub fn read(&mut self) -> Snapshot {
        let mut snapshot = Snapshot::default();
        match std::mem::replace(&mut self.pending, Pending::Files(BTreeSet::new())) {
            Pending::Everything => self.walk(&mut snapshot),
            Pending::Files(files) => {
                for path in files {
                    if path.is_file() {
                        self.refresh(&path);
                    } else {
                        self.forget(&path);
                        self.seen.remove(&path);
                        self.file_diags.remove(&path);
                    }
                }
            }
        }
        // One pass over each map, no lookups per file (at 10k files a lookup per file costs
        // more than everything else a sync does); one hash insert per object keeps one copy
        // of each.
        if self.duplicated == 0 {
            for object in self.last_good.values().flatten() {
                snapshot.push(object);
            }
        } else {
            let dir = &self.dir;
            let files = self.last_good.iter().map(|(path, objects)| {
                let shown = path.strip_prefix(dir).unwrap_or(path);
                (shown, objects.as_slice())
            });
            let diagnostics = std::mem::take(&mut snapshot.diagnostics);
            snapshot = snapshot_of(files);
            snapshot.diagnostics.splice(0..0, diagnostics);
        }
        // A file that never parsed has no objects, only its problem.
        for diags in self.file_diags.values() {
            snapshot.diagnostics.extend(diags.iter().cloned());
        }
        snapshot
    }

    /// Walks the whole directory: files gone are forgotten, files whose fingerprint changed
    /// are parsed again.
    fn walk(&mut self, snapshot: &mut Snapshot) {
        let mut files = Vec::new();
        if let Err(err) = manifest_files(&self.dir, &mut files) {
            snapshot.diagnostics.push(Diagnostic::new(
                format!("manifests directory {}", self.dir.display()),
                format!("cannot be read: {err}; serving its last readable contents"),
            ));
            // Look again at the next change.
            self.pending = Pending::Everything;
            return;
        }
        let present: std::collections::HashSet<&PathBuf> = files.iter().collect();
        let gone: Vec<PathBuf> = self
            .last_good
            .keys()
            .filter(|path| !present.contains(path))
            .cloned()
            .collect();
        for path in gone {
            self.forget(&path);
        }
        self.seen.retain(|path, _| present.contains(path));
        self.file_diags.retain(|path, _| present.contains(path));
        let stale: Vec<(PathBuf, Option<Fingerprint>)> = files
            .into_iter()
            .map(|path| {
                let print = fingerprint(&path);
                (path, print)
            })
            .filter(|(path, print)| self.is_stale(path, print.as_ref()))
            .collect();
        // Parsing dominates a cold start (10k files); it is spread over the cores.
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        let chunk = stale.len().div_ceil(threads).max(64);
        let dir = &self.dir;
        let parsed: Vec<Parsed> = std::thread::scope(|scope| {
            let workers: Vec<_> = stale
                .chunks(chunk)
                .map(|paths| {
                    scope.spawn(move || {
                        paths
                            .iter()
                            .map(|(p, _)| parse_file(dir, p))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("a manifest parser panicked"))
                .collect()
        });
        for ((path, print), parsed) in stale.into_iter().zip(parsed) {
            self.apply(&path, print, parsed);
        }
    }

    /// Drops a file's objects.
    fn forget(&mut self, path: &Path) {
        if let Some(objects) = self.last_good.remove(path) {
            self.count(&objects, false);
        }
    }

    /// Counts `objects` in (or out of) [`Self::copies`].
    fn count(&mut self, objects: &[Object], add: bool) {
        for object in objects {
            let (kind, namespace, name) = object.identity();
            let key = format!("{kind}\0{namespace}\0{name}");
            if add {
                let copies = self.copies.entry(key).or_insert(0);
                *copies += 1;
                if *copies == 2 {
                    self.duplicated += 1;
                }
            } else if let Some(copies) = self.copies.get_mut(&key) {
                *copies -= 1;
                match *copies {
                    0 => {
                        self.copies.remove(&key);
                    }
                    1 => self.duplicated -= 1,
                    _ => {}
                }
            }
        }
    }

    /// Whether `path` must be parsed again: its fingerprint is unknown or not the one seen.
    fn is_stale(&self, path: &Path, print: Option<&Fingerprint>) -> bool {
        print.is_none() || self.seen.get(path) != print
    }

    /// Parses `path` again unless its fingerprint says it is unchanged.
    fn refresh(&mut self, path: &Path) {
        let print = fingerprint(path);
        if self.is_stale(path, print.as_ref()) {
            let parsed = parse_file(&self.dir, path);
            self.apply(path, print, parsed);
        }
    }

    /// Takes a file's new parse (and the fingerprint it was read at), keeping its last good
    /// objects when it no longer parses.
    fn apply(&mut self, path: &Path, print: Option<Fingerprint>, parsed: Parsed) {
        match print {
            Some(print) => self.seen.insert(path.to_path_buf(), print),
            None => self.seen.remove(path),
        };
        let diags = match parsed {
            Ok((objects, diags)) => {
                // New copies counted before old ones go: an unchanged object never looks
                // duplicated afterwards. One map operation per file (a path lookup is dear).
                self.count(&objects, true);
                if let Some(old) = self.last_good.insert(path.to_path_buf(), objects) {
                    self.count(&old, false);
                }
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
        if diags.is_empty() {
            self.file_diags.remove(path);
        } else {
            self.file_diags.insert(path.to_path_buf(), diags);
        }
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
        source.note(&changed(dir.path(), "a.yaml"));
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
        source.note(&changed(dir.path(), "a.yaml"));
        assert_eq!(
            source.read().services.len(),
            1,
            "a removed file's objects go away"
        );
    }

    /// A watcher event about `file` below `dir`.
    fn changed(dir: &std::path::Path, file: &str) -> notify::Event {
        notify::Event::new(notify::EventKind::Any).add_path(dir.join(file))
    }

    /// One object in two files: the copy of the first file by path is served, whichever
    /// file was written last, and the other is reported by file; so for a Node, and for two
    /// copies in one file (the first counts).
    #[test]
    fn a_duplicate_object_is_served_once_from_the_first_file() {
        let dir = tempfile::tempdir().unwrap();
        let node = "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n";
        let other_ip = SVC.replace("10.96.0.1", "10.96.0.2");
        fs::write(dir.path().join("b.yaml"), format!("{other_ip}---\n{node}")).unwrap();
        fs::write(
            dir.path().join("a.yaml"),
            format!("{SVC}---\n{node}---\n{other_ip}"),
        )
        .unwrap();
        let mut source = ManifestSource::new(dir.path());
        let check = |snapshot: super::Snapshot| {
            assert_eq!(snapshot.services.len(), 1);
            let ip = snapshot.services[0]
                .spec
                .as_ref()
                .unwrap()
                .cluster_ip
                .clone();
            assert_eq!(ip.as_deref(), Some("10.96.0.1"), "not a.yaml's first copy");
            assert_eq!(snapshot.nodes.len(), 1);
            let diags: Vec<String> = snapshot
                .diagnostics
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(
                diags,
                [
                    "Service x/a in file a.yaml: is also defined in file a.yaml, whose copy is \
                     served; skipped",
                    "Service x/a in file b.yaml: is also defined in file a.yaml, whose copy is \
                     served; skipped",
                    "Node n1 in file b.yaml: is also defined in file a.yaml, whose copy is \
                     served; skipped",
                ]
            );
        };
        check(source.read());
        // b.yaml written again (the copy that came last in time): still a.yaml's.
        fs::write(
            dir.path().join("b.yaml"),
            format!("{other_ip}---\n{node}\n"),
        )
        .unwrap();
        source.note(&changed(dir.path(), "b.yaml"));
        check(source.read());
        // a.yaml gone: b.yaml's copy, unreported.
        fs::remove_file(dir.path().join("a.yaml")).unwrap();
        source.note(&changed(dir.path(), "a.yaml"));
        let only_b = source.read();
        assert_eq!(only_b.services.len(), 1);
        let ip = only_b.services[0].spec.as_ref().unwrap().cluster_ip.clone();
        assert_eq!(ip.as_deref(), Some("10.96.0.2"));
        assert!(only_b.diagnostics.is_empty(), "{:?}", only_b.diagnostics);
        // Back on the fast path: no object held twice.
        assert_eq!(source.duplicated, 0);
        assert_eq!(source.copies.len(), 2, "{:?}", source.copies);
    }

    fn names(source: &mut ManifestSource) -> Vec<String> {
        let mut names: Vec<String> = source
            .read()
            .services
            .iter()
            .map(|s| s.metadata.name.clone().unwrap_or_default())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn only_the_files_an_event_names_are_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let svc = |name: &str| SVC.replace("name: a", &format!("name: {name}"));
        fs::write(dir.path().join("a.yaml"), svc("a")).unwrap();
        fs::write(dir.path().join("b.yaml"), svc("b")).unwrap();
        let mut source = ManifestSource::new(dir.path());
        assert_eq!(names(&mut source), ["a", "b"]);
        let b_before = source.read().services[1].clone();

        // An atomic write: the hidden temporary file is ignored, the rename target is read.
        fs::write(dir.path().join(".a.yaml.tmp"), svc("a2")).unwrap();
        source.note(&changed(dir.path(), ".a.yaml.tmp"));
        fs::rename(dir.path().join(".a.yaml.tmp"), dir.path().join("a.yaml")).unwrap();
        source.note(
            &notify::Event::new(notify::EventKind::Any)
                .add_path(dir.path().join(".a.yaml.tmp"))
                .add_path(dir.path().join("a.yaml")),
        );
        assert_eq!(names(&mut source), ["a2", "b"]);
        assert!(
            std::sync::Arc::ptr_eq(&source.read().services[1], &b_before),
            "an untouched file keeps its objects, allocation and all"
        );

        // A file changed without an event is not seen until the watcher says so...
        fs::write(dir.path().join("b.yaml"), svc("b2")).unwrap();
        assert_eq!(names(&mut source), ["a2", "b"]);
        // ...or says it lost track: then everything is looked at.
        source.note(
            &notify::Event::new(notify::EventKind::Any).set_flag(notify::event::Flag::Rescan),
        );
        assert_eq!(names(&mut source), ["a2", "b2"]);

        // A directory moved in is walked; one removed takes its files' objects along.
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/c.yaml"), svc("c")).unwrap();
        source.note(&changed(dir.path(), "sub"));
        assert_eq!(names(&mut source), ["a2", "b2", "c"]);
        fs::remove_dir_all(dir.path().join("sub")).unwrap();
        source.note(&changed(dir.path(), "sub"));
        assert_eq!(names(&mut source), ["a2", "b2"]);

        // A ConfigMap volume swaps `..data`: the visible links did not change, so every file
        // is looked at again.
        fs::write(dir.path().join("a.yaml"), svc("a3")).unwrap();
        source.note(&changed(dir.path(), "..data"));
        assert_eq!(names(&mut source), ["a3", "b2"]);
    }
}
