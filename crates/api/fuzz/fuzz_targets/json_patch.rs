//! Input: JSON `[doc, patch]`: RFC 6902 and RFC 7386 patches. Must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(Value::Array(a)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let [doc, patch] = a.as_slice() else { return };
    let _ = dari_api::patch::json_patch(doc, patch);
    let _ = dari_api::patch::merge_patch(doc, patch);
});
