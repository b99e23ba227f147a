//! Server-side apply (`PATCH` with `application/apply-patch+yaml`): field ownership per manager
//! in `metadata.managedFields` (FieldsV1), conflicts as 409 with one cause per field, `force` to
//! take ownership, and removal of fields a manager stops applying.
//!
//! Scope of this implementation: ownership is tracked for Apply operations; writes through
//! update/patch keep the managers' entries but are not themselves recorded as owners yet.

use std::collections::BTreeSet;

use dari_api::registry::Resource;
use serde_json::{json, Map, Value};

use crate::error::{ApiError, ApiResult, Cause};
use crate::object::{meta_mut, now_rfc3339};
use crate::rest::{Api, WriteOptions, Written};

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// `f:name`
    Field(String),
    /// `k:{"name":"x"}` — a list element by its key fields.
    Key(String),
    /// `v:"x"` — a set element.
    Value(String),
}

type Path = Vec<Step>;

/// Fields whose value identifies list elements (merge keys users meet).
const LIST_KEYS: &[&[&str]] = &[&["containerPort", "protocol"], &["port", "protocol"], &["name"], &["mountPath"], &["devicePath"], &["ip"], &["type"]];

fn element_key(el: &Value) -> Option<String> {
    let m = el.as_object()?;
    for keys in LIST_KEYS {
        if keys.iter().all(|k| m.contains_key(*k)) || (keys.len() == 2 && m.contains_key(keys[0])) {
            let mut km = Map::new();
            for k in *keys {
                if let Some(v) = m.get(*k) {
                    km.insert((*k).to_string(), v.clone());
                }
            }
            return serde_json::to_string(&Value::Object(km)).ok();
        }
    }
    None
}

/// Leaf paths set by an applied configuration (apiVersion, kind, name, namespace excluded).
pub fn leaf_paths(v: &Value) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    walk(v, &mut Vec::new(), &mut out, true);
    out
}

fn walk(v: &Value, prefix: &mut Path, out: &mut BTreeSet<Path>, top: bool) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                if top && matches!(k.as_str(), "apiVersion" | "kind" | "status") {
                    continue;
                }
                if prefix.len() == 1 && prefix[0] == Step::Field("metadata".into()) && matches!(k.as_str(), "name" | "namespace" | "resourceVersion" | "managedFields" | "uid" | "creationTimestamp" | "generation") {
                    continue;
                }
                prefix.push(Step::Field(k.clone()));
                walk(child, prefix, out, false);
                prefix.pop();
            }
        }
        Value::Array(items) if !items.is_empty() && items.iter().all(|i| element_key(i).is_some()) => {
            for it in items {
                if let Some(k) = element_key(it) {
                    prefix.push(Step::Key(k));
                    out.insert(prefix.clone());
                    walk(it, prefix, out, false);
                    prefix.pop();
                }
            }
        }
        _ => {
            out.insert(prefix.clone());
        }
    }
}

/// FieldsV1 JSON of a set of paths.
pub fn to_fields_v1(paths: &BTreeSet<Path>) -> Value {
    let mut root = Map::new();
    for p in paths {
        let mut node = &mut root;
        for step in p {
            let key = match step {
                Step::Field(f) => format!("f:{f}"),
                Step::Key(k) => format!("k:{k}"),
                Step::Value(v) => format!("v:{v}"),
            };
            let entry = node.entry(key).or_insert_with(|| json!({}));
            if !entry.is_object() {
                *entry = json!({});
            }
            if matches!(step, Step::Key(_)) {
                if let Some(m) = entry.as_object_mut() {
                    m.insert(".".into(), json!({}));
                }
            }
            node = match entry {
                Value::Object(m) => m,
                _ => return Value::Object(root),
            };
        }
    }
    Value::Object(root)
}

/// Paths of a FieldsV1 JSON (leaves and list elements).
pub fn from_fields_v1(v: &Value) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    fn rec(v: &Value, prefix: &mut Path, out: &mut BTreeSet<Path>) {
        let Some(m) = v.as_object() else { return };
        let children: Vec<_> = m.iter().filter(|(k, _)| k.as_str() != ".").collect();
        if children.is_empty() || m.contains_key(".") {
            if !prefix.is_empty() {
                out.insert(prefix.clone());
            }
        }
        for (k, child) in children {
            let step = if let Some(f) = k.strip_prefix("f:") {
                Step::Field(f.to_string())
            } else if let Some(kk) = k.strip_prefix("k:") {
                Step::Key(kk.to_string())
            } else if let Some(vv) = k.strip_prefix("v:") {
                Step::Value(vv.to_string())
            } else {
                continue;
            };
            prefix.push(step);
            rec(child, prefix, out);
            prefix.pop();
        }
    }
    rec(v, &mut Vec::new(), &mut out);
    out
}

fn get_at<'a>(v: &'a Value, path: &[Step]) -> Option<&'a Value> {
    let mut cur = v;
    for s in path {
        cur = match s {
            Step::Field(f) => cur.get(f)?,
            Step::Key(k) => cur.as_array()?.iter().find(|el| element_key(el).as_deref() == Some(k.as_str()))?,
            Step::Value(_) => return None,
        };
    }
    Some(cur)
}

fn remove_at(v: &mut Value, path: &[Step]) {
    let Some((last, parent)) = path.split_last() else { return };
    let mut cur = v;
    for s in parent {
        let next = match s {
            Step::Field(f) => cur.get_mut(f),
            Step::Key(k) => cur.as_array_mut().and_then(|a| a.iter_mut().find(|el| element_key(el).as_deref() == Some(k.as_str()))),
            Step::Value(_) => None,
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match last {
        Step::Field(f) => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(f);
            }
        }
        Step::Key(k) => {
            if let Some(a) = cur.as_array_mut() {
                a.retain(|el| element_key(el).as_deref() != Some(k.as_str()));
            }
        }
        Step::Value(_) => {}
    }
}

fn path_string(p: &[Step]) -> String {
    let mut s = String::new();
    for step in p {
        match step {
            Step::Field(f) => {
                s.push('.');
                s.push_str(f);
            }
            Step::Key(k) => {
                s.push('[');
                s.push_str(k);
                s.push(']');
            }
            Step::Value(v) => s.push_str(&format!("[={v}]")),
        }
    }
    s
}

/// Handles an apply request.
pub async fn server_side_apply(api: &Api, r: &Resource, ns: Option<&str>, name: &str, sub: Option<&str>, applied: Value, opts: &WriteOptions) -> ApiResult<Written> {
    let manager = opts
        .field_manager
        .clone()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::bad_request("PATCH, application/apply-patch+yaml requires fieldManager parameter"))?;
    if sub.is_some() {
        return Err(ApiError::method_not_supported(&format!("{}/{}", r.plural, sub.unwrap_or_default()), "apply"));
    }
    if !applied.is_object() {
        return Err(ApiError::bad_request("apply configuration must be an object"));
    }
    for (f, want) in [("apiVersion", r.api_version()), ("kind", r.kind.to_string())] {
        match applied.get(f).and_then(Value::as_str) {
            Some(v) if v == want => {}
            _ => return Err(ApiError::bad_request(format!("{f} must be set to {want} in an apply configuration"))),
        }
    }
    let applied_name = applied.pointer("/metadata/name").and_then(Value::as_str).unwrap_or(name);
    if applied_name != name {
        return Err(ApiError::bad_request(format!("the name of the object ({applied_name}) does not match the name on the URL ({name})")));
    }
    let paths = leaf_paths(&applied);
    let entry = json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": r.api_version(),
        "time": now_rfc3339(),
        "fieldsType": "FieldsV1",
        "fieldsV1": to_fields_v1(&paths),
    });
    match api.get(r, ns, name).await {
        Err(e) if e.code == 404 => {
            let mut obj = applied.clone();
            meta_mut(&mut obj).insert("managedFields".into(), json!([entry]));
            api.create(r, ns, obj, opts).await
        }
        Err(e) => Err(e),
        Ok(_) => {
            let definition = dari_api::openapi::definition_for(r.group, r.version, r.kind).unwrap_or("");
            let force = opts.force;
            api.update_with(r, ns, name, None, None, opts, |cur| {
                let managed: Vec<Value> = cur.pointer("/metadata/managedFields").and_then(Value::as_array).cloned().unwrap_or_default();
                let mut mine_before = BTreeSet::new();
                let mut others: Vec<(Value, BTreeSet<Path>)> = Vec::new();
                for m in &managed {
                    let set = m.get("fieldsV1").map(from_fields_v1).unwrap_or_default();
                    if m.get("manager").and_then(Value::as_str) == Some(manager.as_str()) && m.get("operation").and_then(Value::as_str) == Some("Apply") {
                        mine_before = set;
                    } else {
                        others.push((m.clone(), set));
                    }
                }
                // conflicts: a field another manager owns, applied with a different value
                let mut causes = Vec::new();
                for (m, set) in others.iter_mut() {
                    let owner = m.get("manager").and_then(Value::as_str).unwrap_or("").to_string();
                    let clashing: Vec<Path> = paths.iter().filter(|p| set.contains(*p) && get_at(cur, p) != get_at(&applied, p)).cloned().collect();
                    for p in clashing {
                        if force {
                            set.remove(&p);
                        } else {
                            causes.push(Cause { reason: "FieldManagerConflict".into(), message: format!("conflict with \"{owner}\""), field: path_string(&p) });
                        }
                    }
                }
                if !causes.is_empty() {
                    let n = causes.len();
                    let list = causes.iter().map(|c| format!("- {}: {}", c.message, c.field)).collect::<Vec<_>>().join("\n");
                    let mut e = ApiError::new(409, "Conflict", format!("Apply failed with {n} conflict{}: {list}", if n == 1 { "" } else { "s" }));
                    e.causes = causes;
                    e.kind = Some(r.plural.into());
                    e.name = Some(name.into());
                    return Err(e);
                }
                let mut merged = if definition.is_empty() {
                    dari_api::patch::merge_patch(cur, &applied)
                } else {
                    dari_api::patch::strategic_merge_patch(cur, &applied, definition)
                }
                .map_err(|e| ApiError::new(422, "Invalid", format!("the apply configuration could not be merged: {e}")))?;
                // fields this manager applied before and no longer does, owned by nobody else, go away
                let owned_by_others: BTreeSet<&Path> = others.iter().flat_map(|(_, s)| s.iter()).collect();
                for p in mine_before.difference(&paths) {
                    if !owned_by_others.contains(p) {
                        remove_at(&mut merged, p);
                    }
                }
                let mut new_managed: Vec<Value> = others
                    .into_iter()
                    .filter(|(_, s)| !s.is_empty())
                    .map(|(mut m, s)| {
                        m["fieldsV1"] = to_fields_v1(&s);
                        m
                    })
                    .collect();
                new_managed.push(entry.clone());
                meta_mut(&mut merged).insert("managedFields".into(), Value::Array(new_managed));
                Ok(merged)
            })
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_v1_round_trip() {
        let applied = json!({"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"d","labels":{"a":"b"}},
            "spec":{"replicas":2,"template":{"spec":{"containers":[{"name":"c","image":"nginx"}]}}}});
        let paths = leaf_paths(&applied);
        let f = to_fields_v1(&paths);
        assert!(f["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"]["f:image"].is_object());
        assert!(f["f:metadata"]["f:labels"]["f:a"].is_object());
        assert!(f["f:metadata"].get("f:name").is_none());
        assert_eq!(from_fields_v1(&f), paths);
    }

    #[test]
    fn remove_list_element_by_key() {
        let mut v = json!({"spec":{"containers":[{"name":"a"},{"name":"b"}]}});
        remove_at(&mut v, &[Step::Field("spec".into()), Step::Field("containers".into()), Step::Key("{\"name\":\"a\"}".into())]);
        assert_eq!(v, json!({"spec":{"containers":[{"name":"b"}]}}));
    }
}
