//! The manifests parser on any text, and the model on whatever it accepts: no panic, every
//! problem named by file and document, an object only with a name, one copy of each object
//! served, and the plan checks of `svclb_fuzz::check_plan`.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use svclb::{
    entries::Capacity,
    source::manifests::{Object, parse_documents, snapshot_of},
};

const CAPACITY: Capacity = Capacity {
    services: 64,
    slots: 256,
    backends: 64,
    maglev_tables: 8,
    maglev_size: 251,
    source_ranges: 16,
    ..Capacity::DEFAULT
};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (objects, diags) = match parse_documents(&text, "fuzz.yaml") {
        Ok(parsed) => parsed,
        Err(diag) => {
            assert!(
                diag.object.starts_with("file fuzz.yaml (document "),
                "{diag}"
            );
            return;
        }
    };
    for diag in &diags {
        assert!(
            diag.object.starts_with("file fuzz.yaml (document "),
            "{diag}"
        );
    }
    for object in &objects {
        let name = match object {
            Object::Service(o) => o.metadata.name.as_deref(),
            Object::EndpointSlice(o) => o.metadata.name.as_deref(),
            Object::Node(o) => o.metadata.name.as_deref(),
        };
        assert!(
            name.is_some_and(|n| !n.is_empty()),
            "an object without a name was kept"
        );
    }
    // What the manifests source serves: one copy of each object, the others named.
    let snapshot = snapshot_of([(Path::new("fuzz.yaml"), objects.as_slice())]);
    for diag in &snapshot.diagnostics {
        assert!(diag.object.ends_with(" in file fuzz.yaml"), "{diag}");
    }
    assert!(
        svclb_fuzz::unique_names(&snapshot.nodes, &snapshot.services),
        "the snapshot holds two copies of one object"
    );
    svclb_fuzz::check_plan(
        &snapshot.nodes,
        &snapshot.services,
        &snapshot.slices,
        CAPACITY,
    );
});
