//! The manifests source: a directory of YAML files (several documents each) holding `v1`
//! Services, `discovery.k8s.io/v1` EndpointSlices and, optionally, `v1` Nodes (for this node's
//! zone and NodePort addresses).
//!
//! A file that stops parsing (an editor half-way through a save, a typo) keeps serving the
//! objects it held when it last parsed, so one bad write never takes services down.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs,
    path::{Path, PathBuf},
};

mod parse;

pub use parse::{Object, parse_documents, snapshot_of};

use crate::plan::{Diagnostic, Snapshot};

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
    #[cfg(feature = "agent")]
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
                    std::path::Component::Normal(name) => Some(name),
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
                object.add_to(&mut snapshot);
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
mod tests;
