//! Small helpers over `serde_json::Value` objects: metadata access, timestamps, names.

use rand::Rng;
use serde_json::{json, Map, Value};

/// `metadata.<field>` as a string, if set.
pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

/// `metadata.name`, or "".
pub fn name(obj: &Value) -> &str {
    meta_str(obj, "name").unwrap_or("")
}

/// The metadata map, created if missing (a non-object body or metadata is replaced by `{}`;
/// validation has already rejected such bodies on the write paths).
pub fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = json!({});
    }
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    match &mut obj["metadata"] {
        Value::Object(m) => m,
        _ => unreachable!("metadata was just made an object"),
    }
}

/// Now, as Kubernetes writes timestamps (RFC 3339, seconds).
pub fn now_rfc3339() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Now with microseconds (`metav1.MicroTime`, used by Leases and events).
pub fn now_micro() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// The 5-character suffix kube-apiserver appends to `generateName`.
pub fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::thread_rng();
    (0..5).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
}

/// Deep-compares two objects ignoring `metadata.resourceVersion` and `metadata.managedFields` timestamps.
pub fn same_ignoring_rv(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        v
    };
    strip(a) == strip(b)
}

/// Everything but metadata and status: what a change to bumps `generation`.
pub fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffix_alphabet() {
        let s = random_suffix();
        assert_eq!(s.len(), 5);
        assert!(s.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
    }

    #[test]
    fn meta_mut_repairs_shape() {
        let mut v = json!({"metadata": 3});
        meta_mut(&mut v).insert("name".into(), json!("x"));
        assert_eq!(name(&v), "x");
        assert!(same_ignoring_rv(&json!({"metadata":{"resourceVersion":"1","name":"a"}}), &json!({"metadata":{"name":"a"}})));
    }
}
