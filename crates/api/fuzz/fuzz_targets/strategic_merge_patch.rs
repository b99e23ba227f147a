//! Input: JSON `[doc, patch]` (applied as a Pod and as a Deployment) or a bare patch (applied to
//! a fixed Pod). Must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let (doc, patch) = match v {
        Value::Array(mut a) if a.len() == 2 => {
            let p = a.pop().unwrap_or_default();
            (a.pop().unwrap_or_default(), p)
        }
        other => (
            json!({"metadata": {"name": "p", "finalizers": ["a"]},
                   "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}]}]}}),
            other,
        ),
    };
    for def in [
        "io.k8s.api.core.v1.Pod",
        "io.k8s.api.apps.v1.Deployment",
        "io.k8s.api.core.v1.Service",
    ] {
        let _ = dari_api::patch::strategic_merge_patch(&doc, &patch, def);
    }
});
