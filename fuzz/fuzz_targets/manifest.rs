//! The manifests parser on any text, and the model on whatever it accepts: no panic, every
//! problem named by file and document, an object only with a name, and the plan checks of
//! `svclb_fuzz::check_plan`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use svclb::{
    manifest::{Object, parse_documents},
    mapstate::Capacity,
};

const CAPACITY: Capacity = Capacity {
    services: 64,
    slots: 256,
    backends: 64,
    maglev_tables: 8,
    maglev_size: 251,
    source_ranges: 16,
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
    let (mut services, mut slices, mut nodes) = (Vec::new(), Vec::new(), Vec::new());
    for object in objects {
        let name = match &object {
            Object::Service(o) => o.metadata.name.clone(),
            Object::EndpointSlice(o) => o.metadata.name.clone(),
            Object::Node(o) => o.metadata.name.clone(),
        };
        assert!(
            name.is_some_and(|n| !n.is_empty()),
            "an object without a name was kept"
        );
        match object {
            Object::Service(o) => services.push(o),
            Object::EndpointSlice(o) => slices.push(o),
            Object::Node(o) => nodes.push(o),
        }
    }
    svclb_fuzz::check_plan(&nodes, &services, &slices, CAPACITY);
});
