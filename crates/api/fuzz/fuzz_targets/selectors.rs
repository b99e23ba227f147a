//! Input: text, parsed as label and field selector (query-string decoders). Must never panic;
//! a parsed label selector must reparse from its own rendering.
#![no_main]
use dari_api::selector::{FieldSelector, LabelSelector};
use libfuzzer_sys::fuzz_target;
use serde_json::json;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(sel) = LabelSelector::parse(s) {
        let _ = sel.matches(&json!({"a": "b"}));
        let again = LabelSelector::parse(&sel.to_string());
        assert!(
            again.is_ok(),
            "rendering of {s:?} does not reparse: {}",
            sel
        );
    }
    if let Ok(f) = FieldSelector::parse(s) {
        let _ = f.validate("Pod");
        let _ = f.matches(&json!({"spec": {"nodeName": "n"}}));
    }
});
