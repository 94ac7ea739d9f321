//! The manifests source: parsing, last good objects, duplicates, and reading only what changed.

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
    source.note(&notify::Event::new(notify::EventKind::Any).set_flag(notify::event::Flag::Rescan));
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
