//! Parsing manifests: the YAML documents of one file into shared objects, and the snapshot of
//! a set of files, with one copy of each object.

use std::{collections::HashMap, path::Path, sync::Arc};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use serde::Deserialize as _;

use crate::plan::{Diagnostic, Snapshot};

/// A parsed object, shared: a snapshot holds the same allocation as the source's cache, and
/// an object that did not change keeps its allocation from one snapshot to the next (the
/// incremental planner tells changed objects by that).
#[derive(Clone, Debug)]
pub enum Object {
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    Node(Arc<Node>),
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

impl Object {
    /// Adds this object to `snapshot` (sharing its allocation).
    pub(super) fn add_to(&self, snapshot: &mut Snapshot) {
        match self {
            Object::Service(svc) => snapshot.services.push(svc.clone()),
            Object::EndpointSlice(slice) => snapshot.slices.push(slice.clone()),
            Object::Node(node) => snapshot.nodes.push(node.clone()),
        }
    }

    /// Kind, namespace (empty for a Node) and name (empty when it has none): what makes two
    /// objects one.
    pub(super) fn identity(&self) -> (&'static str, &str, &str) {
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
            object.add_to(&mut snapshot);
        }
    }
    snapshot
}
