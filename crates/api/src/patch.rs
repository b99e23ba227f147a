//! JSON patch (RFC 6902), JSON merge patch (RFC 7386) and Kubernetes strategic merge patch.
//!
//! The strategic merge follows apimachinery's `strategicpatch.StrategicMergePatch` (the
//! server side of `kubectl apply`/`kubectl patch`): maps merge recursively, `null` deletes, lists
//! with `x-kubernetes-patch-strategy: merge` merge by `x-kubernetes-patch-merge-key` (or as a set
//! for primitives), other lists are replaced. Directives: `$patch: replace|delete` (map and list
//! element), `$retainKeys`, `$setElementOrder/<field>` and `$deleteFromPrimitiveList/<field>`.
//! Metadata comes from [`crate::openapi::schemas`].

use serde_json::{Map, Value};

pub use crate::openapi::definition_for;
use crate::openapi::{schemas, strategy, Schemas, Ty};

/// Why a patch could not be applied. All are client errors (HTTP 422/400).
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// The JSON patch document is not a list of operations.
    #[error("invalid JSON patch document")]
    JsonPatchDocument {
        /// Decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// A JSON patch operation failed (missing path, failed test ...).
    #[error("JSON patch could not be applied")]
    JsonPatchApply {
        /// The failing operation and path.
        #[source]
        source: json_patch::PatchError,
    },
    /// A document or patch that must be a JSON object is not.
    #[error("{what} must be a JSON object")]
    NotObject {
        /// "strategic merge patch", "object" ...
        what: &'static str,
    },
    /// The strategic merge patch is malformed or does not fit the object.
    #[error("strategic merge patch at {path}: {message}")]
    Strategic {
        /// JSON path inside the object, e.g. `.spec.containers`.
        path: String,
        /// What is wrong, in apimachinery's words where it has some.
        message: String,
    },
}

impl PatchError {
    /// The message with its causes, for a `metav1.Status` message.
    pub fn detail(&self) -> String {
        let mut s = self.to_string();
        let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(self);
        while let Some(e) = cur {
            s.push_str(": ");
            s.push_str(&e.to_string());
            cur = e.source();
        }
        s
    }
}

/// Applies an RFC 6902 JSON patch.
pub fn json_patch(doc: &Value, patch: &Value) -> Result<Value, PatchError> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|source| PatchError::JsonPatchDocument { source })?;
    let mut out = doc.clone();
    json_patch::patch(&mut out, &ops).map_err(|source| PatchError::JsonPatchApply { source })?;
    Ok(out)
}

/// Applies an RFC 7386 JSON merge patch (`null` deletes, objects merge, everything else replaces).
pub fn merge_patch(doc: &Value, patch: &Value) -> Result<Value, PatchError> {
    let mut out = doc.clone();
    json_patch::merge(&mut out, patch);
    Ok(out)
}

/// Applies a strategic merge patch to `doc`, with patch metadata from the OpenAPI definition
/// `definition` (e.g. `io.k8s.api.core.v1.Pod`; see [`definition_for`]). An unknown definition
/// merges maps and replaces lists.
pub fn strategic_merge_patch(
    doc: &Value,
    patch: &Value,
    definition: &str,
) -> Result<Value, PatchError> {
    strategic_merge_patch_with(schemas(), doc, patch, definition)
}

/// [`strategic_merge_patch`] with another schema table (tests, CRDs later).
pub fn strategic_merge_patch_with(
    sc: &Schemas,
    doc: &Value,
    patch: &Value,
    definition: &str,
) -> Result<Value, PatchError> {
    let Value::Object(p) = patch else {
        return Err(PatchError::NotObject {
            what: "strategic merge patch",
        });
    };
    let original = match doc {
        Value::Object(m) => m.clone(),
        Value::Null => Map::new(),
        _ => return Err(PatchError::NotObject { what: "object" }),
    };
    let ty = sc.ty(definition);
    let mut path = String::new();
    merge_map(sc, original, p.clone(), &ty, &mut path).map(Value::Object)
}

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ORDER: &str = "$setElementOrder/";
const DELETE_PRIMITIVE: &str = "$deleteFromPrimitiveList/";

static ANY: Ty = Ty::Any;

fn err(path: &str, message: impl Into<String>) -> PatchError {
    PatchError::Strategic {
        path: if path.is_empty() {
            ".".into()
        } else {
            path.to_string()
        },
        message: message.into(),
    }
}

/// Field metadata: (value shape, strategy bits, merge key).
fn meta<'a>(sc: &'a Schemas, ty: &'a Ty, key: &str) -> (&'a Ty, u8, Option<&'a str>) {
    match ty {
        Ty::Ref(i) => match sc.def(*i).and_then(|d| d.field(key)) {
            Some(f) => (&f.ty, f.strategy, f.merge_key.as_deref()),
            None => (&ANY, 0, None),
        },
        Ty::Map(elem) => (elem, 0, None),
        _ => (&ANY, 0, None),
    }
}

fn elem_ty(ty: &Ty) -> &Ty {
    match ty {
        Ty::Array(e) => e,
        _ => &ANY,
    }
}

fn kind(v: &Value) -> u8 {
    match v {
        Value::Null => 0,
        Value::Bool(_) => 1,
        Value::Number(_) => 2,
        Value::String(_) => 3,
        Value::Array(_) => 4,
        Value::Object(_) => 5,
    }
}

fn kind_name(v: &Value) -> &'static str {
    ["null", "bool", "number", "string", "list", "map"][kind(v) as usize]
}

fn merge_map(
    sc: &Schemas,
    mut original: Map<String, Value>,
    mut patch: Map<String, Value>,
    ty: &Ty,
    path: &mut String,
) -> Result<Map<String, Value>, PatchError> {
    if let Some(d) = patch.get(DIRECTIVE) {
        return match d.as_str() {
            Some("replace") => {
                patch.remove(DIRECTIVE);
                Ok(patch)
            }
            Some("delete") => Ok(Map::new()),
            _ => Err(err(path, format!("Unknown patch type: {d} in map"))),
        };
    }
    apply_retain_keys(&mut original, &mut patch, path)?;
    merge_set_element_order(sc, &mut original, &mut patch, ty, path)?;

    // Deletions from primitive lists go last, after additions to the same list.
    let (deletes, rest): (Vec<_>, Vec<_>) = patch
        .into_iter()
        .partition(|(k, _)| k.starts_with(DELETE_PRIMITIVE));
    let base = path.len();
    for (key, patch_v) in rest.into_iter().chain(deletes) {
        let (k, is_delete_list) = match key.strip_prefix(DELETE_PRIMITIVE) {
            Some(rest) => {
                if rest.is_empty() {
                    return Err(err(
                        path,
                        "invalid patch format of $deleteFromPrimitiveList",
                    ));
                }
                (rest.to_string(), true)
            }
            None => (key, false),
        };
        if k.starts_with('$') {
            return Err(err(path, format!("unknown directive {k}")));
        }
        path.push('.');
        path.push_str(&k);
        let (fty, strat, merge_key) = meta(sc, ty, &k);
        if patch_v.is_null() {
            original.remove(&k);
            path.truncate(base);
            continue;
        }
        let merged = match original.remove(&k) {
            None => {
                if is_delete_list {
                    path.truncate(base);
                    continue;
                }
                fresh(sc, patch_v, fty, path)?
            }
            Some(orig_v) => {
                if is_delete_list {
                    match (orig_v, patch_v) {
                        (Value::Array(o), Value::Array(p)) => {
                            Value::Array(o.into_iter().filter(|v| !p.contains(v)).collect())
                        }
                        (_, _) => {
                            return Err(err(
                                path,
                                "invalid patch format of $deleteFromPrimitiveList",
                            ))
                        }
                    }
                } else if kind(&orig_v) != kind(&patch_v) {
                    patch_v
                } else {
                    match (orig_v, patch_v) {
                        (Value::Object(o), Value::Object(p)) => {
                            if strat & strategy::REPLACE != 0 {
                                Value::Object(p)
                            } else {
                                Value::Object(merge_map(sc, o, p, fty, path)?)
                            }
                        }
                        (Value::Array(o), Value::Array(p)) => {
                            if strat & strategy::MERGE != 0 {
                                Value::Array(merge_slice(sc, o, p, elem_ty(fty), merge_key, path)?)
                            } else {
                                Value::Array(p)
                            }
                        }
                        (_, p) => p,
                    }
                }
            }
        };
        original.insert(k, merged);
        path.truncate(base);
    }
    Ok(original)
}

/// A patch value for a key the original lacks: directives and nulls are resolved against nothing.
fn fresh(sc: &Schemas, v: Value, ty: &Ty, path: &mut String) -> Result<Value, PatchError> {
    Ok(match v {
        Value::Object(m) => Value::Object(merge_map(sc, Map::new(), m, ty, path)?),
        Value::Array(items) => {
            let elem = elem_ty(ty);
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::Object(m) if m.contains_key(DIRECTIVE) => {
                        match m.get(DIRECTIVE).and_then(Value::as_str) {
                            Some("delete") | Some("replace") => {}
                            _ => {
                                return Err(err(
                                    path,
                                    format!("Unknown patch type: {} in list", m[DIRECTIVE]),
                                ))
                            }
                        }
                    }
                    Value::Object(m) => {
                        out.push(Value::Object(merge_map(sc, Map::new(), m, elem, path)?))
                    }
                    other => out.push(other),
                }
            }
            Value::Array(out)
        }
        other => other,
    })
}

fn apply_retain_keys(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
    path: &str,
) -> Result<(), PatchError> {
    let Some(list) = patch.remove(RETAIN_KEYS) else {
        return Ok(());
    };
    let Value::Array(list) = list else {
        return Err(err(path, "invalid patch format of retainKeys"));
    };
    let keep: Vec<&str> = list.iter().filter_map(Value::as_str).collect();
    for (k, v) in patch.iter() {
        if v.is_null() || k.starts_with(DELETE_PRIMITIVE) || k.starts_with(SET_ORDER) {
            continue;
        }
        if !keep.contains(&k.as_str()) {
            return Err(err(path, "invalid patch format of retainKeys"));
        }
    }
    original.retain(|k, _| keep.contains(&k.as_str()));
    Ok(())
}

fn merge_set_element_order(
    sc: &Schemas,
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
    ty: &Ty,
    path: &mut String,
) -> Result<(), PatchError> {
    let keys: Vec<String> = patch
        .keys()
        .filter(|k| k.starts_with(SET_ORDER))
        .cloned()
        .collect();
    let base = path.len();
    for key in keys {
        let Some(order) = patch.remove(&key) else {
            continue;
        };
        let Value::Array(order) = order else {
            return Err(err(path, "invalid patch format of setElementOrder list"));
        };
        let field = key.trim_start_matches(SET_ORDER).to_string();
        if field.is_empty() {
            return Err(err(path, "invalid patch format of setElementOrder list"));
        }
        path.push('.');
        path.push_str(&field);
        let (fty, strat, merge_key) = meta(sc, ty, &field);
        let orig_list = match original.remove(&field) {
            None => None,
            Some(Value::Array(a)) => Some(a),
            Some(other) => {
                return Err(err(
                    path,
                    format!("expected a list, got {}", kind_name(&other)),
                ))
            }
        };
        let patch_list = match patch.remove(&field) {
            None => None,
            Some(Value::Array(a)) => Some(a),
            Some(other) => {
                return Err(err(
                    path,
                    format!("expected a list, got {}", kind_name(&other)),
                ))
            }
        };
        let orig_copy = orig_list.clone().unwrap_or_default();
        let patch_copy = patch_list.clone().unwrap_or_default();
        let merged = match (orig_list, patch_list) {
            (Some(o), None) => o,
            (None, Some(p)) => match fresh(sc, Value::Array(p), fty, path)? {
                Value::Array(a) => a,
                _ => Vec::new(),
            },
            (Some(o), Some(p)) => {
                if strat & strategy::MERGE != 0 {
                    merge_slice(sc, o, p, elem_ty(fty), merge_key, path)?
                } else {
                    p
                }
            }
            (None, None) => {
                path.truncate(base);
                continue;
            }
        };
        let is_map = orig_copy.iter().chain(&patch_copy).any(Value::is_object);
        let key_name = if is_map { merge_key } else { None };
        if is_map && key_name.is_none() {
            original.insert(field, Value::Array(merged));
            path.truncate(base);
            continue;
        }
        let _ = patch_copy;
        let (in_order, server_only): (Vec<Value>, Vec<Value>) = merged
            .into_iter()
            .partition(|v| index_of(&order, v, key_name).is_some());
        let out = normalize_element_order(in_order, server_only, &order, &orig_copy, key_name);
        original.insert(field, Value::Array(out));
        path.truncate(base);
    }
    Ok(())
}

/// Position of `item` in `list`: by merge key value for maps, by equality for primitives.
fn index_of(list: &[Value], item: &Value, merge_key: Option<&str>) -> Option<usize> {
    match merge_key {
        Some(k) => {
            let want = item.get(k)?;
            list.iter().position(|v| v.get(k) == Some(want))
        }
        None => list.iter().position(|v| v == item),
    }
}

fn merge_slice(
    sc: &Schemas,
    original: Vec<Value>,
    patch: Vec<Value>,
    elem: &Ty,
    merge_key: Option<&str>,
    path: &mut String,
) -> Result<Vec<Value>, PatchError> {
    if original.is_empty() && patch.is_empty() {
        return Ok(original);
    }
    let mut first: Option<u8> = None;
    for v in original.iter().chain(&patch) {
        let k = kind(v);
        if k == 4 {
            return Err(err(path, "lists of lists are not supported"));
        }
        match first {
            None => first = Some(k),
            Some(f) if f != k => return Err(err(path, "list element types are not identical")),
            Some(_) => {}
        }
    }
    if first != Some(5) {
        // Primitives: union, original order first.
        let mut merged: Vec<Value> = Vec::with_capacity(original.len() + patch.len());
        for v in original.iter().chain(&patch) {
            if !merged.contains(v) {
                merged.push(v.clone());
            }
        }
        let (in_patch, server_only): (Vec<Value>, Vec<Value>) =
            merged.into_iter().partition(|v| patch.contains(v));
        return Ok(normalize_element_order(
            in_patch,
            server_only,
            &patch,
            &original,
            None,
        ));
    }
    let Some(mk) = merge_key else {
        return Err(err(
            path,
            "cannot merge lists without merge key for type map",
        ));
    };
    // Special elements ($patch: delete|replace|merge).
    let mut original = original;
    let mut plain: Vec<Value> = Vec::with_capacity(patch.len());
    let mut replace = false;
    for v in patch {
        let directive = v.get(DIRECTIVE).cloned();
        match directive {
            None => plain.push(v),
            Some(d) => match d.as_str() {
                Some("delete") => match v.get(mk) {
                    Some(mv) => original.retain(|o| o.get(mk) != Some(mv)),
                    None => {
                        return Err(err(
                            path,
                            format!("map: {v} does not contain declared merge key: {mk}"),
                        ))
                    }
                },
                Some("replace") => replace = true,
                Some("merge") => {
                    return Err(err(
                        path,
                        "merging lists cannot yet be specified in the patch",
                    ))
                }
                _ => {
                    return Err(err(
                        path,
                        format!("Unknown patch type: {d} in list element"),
                    ))
                }
            },
        }
    }
    if replace {
        original = plain;
        plain = Vec::new();
    }
    let mut merged = original.clone();
    for v in &plain {
        let Some(mv) = v.get(mk) else {
            return Err(err(
                path,
                format!("map: {v} does not contain declared merge key: {mk}"),
            ));
        };
        let pos = merged.iter().position(|o| o.get(mk) == Some(mv));
        match (pos, v) {
            (Some(i), Value::Object(pm)) => {
                let slot = std::mem::take(&mut merged[i]);
                let om = match slot {
                    Value::Object(m) => m,
                    _ => Map::new(),
                };
                merged[i] = Value::Object(merge_map(sc, om, pm.clone(), elem, path)?);
            }
            _ => merged.push(match v {
                Value::Object(pm) => {
                    Value::Object(merge_map(sc, Map::new(), pm.clone(), elem, path)?)
                }
                other => other.clone(),
            }),
        }
    }
    let (in_patch, server_only): (Vec<Value>, Vec<Value>) = merged
        .into_iter()
        .partition(|v| index_of(&plain, v, Some(mk)).is_some());
    Ok(normalize_element_order(
        in_patch,
        server_only,
        &plain,
        &original,
        Some(mk),
    ))
}

/// apimachinery's `normalizeElementOrder`: patch items in patch order, server-only items in
/// server order, interleaved where both positions are known on the server.
fn normalize_element_order(
    mut patch_items: Vec<Value>,
    mut server_only: Vec<Value>,
    patch_order: &[Value],
    server_order: &[Value],
    merge_key: Option<&str>,
) -> Vec<Value> {
    patch_items.sort_by_key(|v| index_of(patch_order, v, merge_key).unwrap_or(usize::MAX));
    server_only.sort_by_key(|v| index_of(server_order, v, merge_key).unwrap_or(usize::MAX));
    let mut out = Vec::with_capacity(patch_items.len() + server_only.len());
    let mut left = server_only.into_iter().peekable();
    let mut right = patch_items.into_iter().peekable();
    loop {
        match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => out.extend(left.next()),
            (None, Some(_)) => out.extend(right.next()),
            (Some(l), Some(r)) => {
                let li = index_of(server_order, l, merge_key);
                let ri = index_of(server_order, r, merge_key);
                match (li, ri) {
                    (Some(a), Some(b)) if a < b => out.extend(left.next()),
                    _ => out.extend(right.next()),
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
