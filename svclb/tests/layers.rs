//! The agent's folders are stages, lowest first: `plan`; `source` and `entries`; `reconcile`;
//! `kernel`; `telemetry`; `agent` and `cli`. A folder may use only folders below it, so no
//! import runs back up and no folders import each other in a circle. The pure stages (`plan`,
//! `source`, `entries`, `reconcile`) use nothing that touches the kernel (`aya`, `kernel`,
//! `agent`, `telemetry`, `cli`), and within a folder no two files import each other.
//!
//! What is checked is the source text: every `crate::` path (grouped `use crate::{..}` lists
//! included) and every `super::` path naming a sibling file. Test modules (files under a
//! `tests/` folder, the in-memory test kernel) may use fixtures of other stages and are left
//! out; comments are ignored.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// Each folder's rank: a folder may use folders of a lower rank only.
const LAYERS: &[(&str, u32)] = &[
    ("plan", 0),
    ("source", 1),
    ("entries", 1),
    ("reconcile", 2),
    ("kernel", 3),
    ("telemetry", 4),
    ("agent", 5),
    ("cli", 5),
];

/// The stages that run and are tested without root.
const PURE: &[&str] = &["plan", "source", "entries", "reconcile"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rank(folder: &str) -> Option<u32> {
    LAYERS.iter().find(|(f, _)| *f == folder).map(|(_, r)| *r)
}

/// Whether a path is test code (a `tests/` folder, a `tests.rs`, the in-memory test kernel).
fn is_test(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    matches!(name, "tests" | "tests.rs" | "test_kernel.rs")
}

/// The `.rs` files under `dir`, sorted; test code too when `with_tests`.
fn rust_files(dir: &Path, with_tests: bool, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if !with_tests && is_test(&path) {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, with_tests, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The `.rs` files under `dir`, test code left out.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    rust_files(dir, false, out);
}

/// The text of a file without its comments (line comments and doc comments).
fn code(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first segments of the paths that follow `prefix` (`crate::` or `super::`): `a` of
/// `crate::a::b`, and `a`, `b` of `crate::{a::x, b}`.
fn first_segments(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let after = &rest[at + prefix.len()..];
        if let Some(group) = after.strip_prefix('{') {
            let mut depth = 1;
            let mut item = String::new();
            let mut items = Vec::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 1 => items.push(std::mem::take(&mut item)),
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
                if depth == 1 && c != ',' {
                    item.push(c);
                }
            }
            items.push(item);
            for item in items {
                let head: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !head.is_empty() {
                    out.insert(head);
                }
            }
        } else {
            let head: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.insert(head);
        }
        rest = after;
    }
    out
}

/// The top-level folder a file is in (`None` for `lib.rs` and `main.rs`).
fn folder_of(path: &Path) -> Option<String> {
    let relative = path.strip_prefix(src()).ok()?;
    let mut parts = relative.components();
    let first = parts.next()?.as_os_str().to_str()?.to_owned();
    parts.next().map(|_| first)
}

#[test]
fn every_folder_has_a_layer_and_lib_rs_declares_exactly_those() {
    let folders: BTreeSet<String> = fs::read_dir(src())
        .expect("src")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    let layered: BTreeSet<String> = LAYERS.iter().map(|(f, _)| (*f).to_owned()).collect();
    assert_eq!(
        folders, layered,
        "each folder of svclb/src has its place in LAYERS"
    );
    let lib = code(&src().join("lib.rs"));
    for folder in &folders {
        assert!(
            lib.contains(&format!("pub mod {folder};")),
            "lib.rs declares {folder}"
        );
    }
}

#[test]
fn no_folder_imports_its_way_back_up() {
    let mut files = Vec::new();
    sources(&src(), &mut files);
    let mut wrong = Vec::new();
    for path in &files {
        let Some(folder) = folder_of(path) else {
            continue;
        };
        let own = rank(&folder).unwrap_or_else(|| panic!("{folder} has no layer"));
        for used in first_segments(&code(path), "crate::") {
            let Some(used_rank) = rank(&used) else {
                continue;
            };
            if used != folder && used_rank >= own {
                wrong.push(format!("{} uses crate::{used}", path.display()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_pure_stages_touch_no_kernel() {
    let mut wrong = Vec::new();
    for folder in PURE {
        let mut files = Vec::new();
        sources(&src().join(folder), &mut files);
        assert!(!files.is_empty(), "{folder} has sources");
        for path in files {
            let code = code(&path);
            if code.contains("aya::") || code.contains("use aya") {
                wrong.push(format!("{} uses aya", path.display()));
            }
            for used in first_segments(&code, "crate::") {
                if ["kernel", "agent", "telemetry", "cli"].contains(&used.as_str()) {
                    wrong.push(format!("{} uses crate::{used}", path.display()));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "pure stages touching the kernel:\n{}",
        wrong.join("\n")
    );
}

/// Finds a circle in `edges` (file -> sibling files it names), if any.
fn circle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            return Some(path[at..].to_vec());
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, edges, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|node| visit(node, edges, &mut Vec::new(), &mut done))
}

#[test]
fn no_two_files_of_a_folder_import_each_other_in_a_circle() {
    let mut dirs = vec![src()];
    let mut found = Vec::new();
    while let Some(dir) = dirs.pop() {
        let mut modules: BTreeMap<String, PathBuf> = BTreeMap::new();
        for entry in fs::read_dir(&dir).expect("dir") {
            let path = entry.expect("entry").path();
            let name = path
                .file_stem()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            if path.is_dir() {
                if name != "tests" {
                    dirs.push(path.clone());
                    modules.insert(name, path.join("mod.rs"));
                }
            } else if path.extension().is_some_and(|e| e == "rs")
                && !["mod", "lib", "main", "tests", "test_kernel"].contains(&name.as_str())
            {
                modules.insert(name, path);
            }
        }
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (name, path) in &modules {
            if !path.is_file() {
                continue;
            }
            let used = first_segments(&code(path), "super::");
            let siblings = used
                .into_iter()
                .filter(|u| u != name && modules.contains_key(u));
            edges.entry(name.clone()).or_default().extend(siblings);
        }
        if let Some(circle) = circle(&edges) {
            found.push(format!("{}: {}", dir.display(), circle.join(" -> ")));
        }
    }
    assert!(found.is_empty(), "import circles:\n{}", found.join("\n"));
}

#[test]
fn no_file_of_the_agent_is_over_600_lines() {
    let mut files = Vec::new();
    rust_files(&src(), true, &mut files);
    let long: Vec<String> = files
        .iter()
        .map(|p| (p, fs::read_to_string(p).expect("source").lines().count()))
        .filter(|(_, n)| *n > 600)
        .map(|(p, n)| format!("{}: {n} lines", p.display()))
        .collect();
    assert!(
        long.is_empty(),
        "files over 600 lines:\n{}",
        long.join("\n")
    );
}

#[test]
fn the_checker_sees_grouped_and_plain_paths() {
    let code = "use crate::{plan::{A, B}, entries::C};\nfn f() { crate::kernel::x(); }\n";
    let seen = first_segments(code, "crate::");
    assert_eq!(
        seen,
        BTreeSet::from(["entries".to_owned(), "kernel".to_owned(), "plan".to_owned()])
    );
}
