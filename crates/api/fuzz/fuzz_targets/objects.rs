//! Input: a JSON object, decoded and run through defaulting, validation and unknown-field
//! detection for every served kind. Must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(obj) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    for r in dari_api::RESOURCES {
        let mut o = obj.clone();
        dari_api::defaults::apply_defaults(r.group, r.kind, &mut o);
        let _ = dari_api::validation::validate_create(r, &o);
        let _ = dari_api::validation::validate_update(r, &obj, &o);
        if let Some(def) = dari_api::openapi::definition_for(r.group, r.version, r.kind) {
            let _ = dari_api::validation::unknown_fields(def, &o);
        }
    }
});
