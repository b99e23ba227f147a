//! Server-side printing for dari's API server.
//!
//! When kubectl lists or gets objects it sends
//! `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`, and kube-apiserver answers with a
//! `meta.k8s.io/v1 Table` built by the printers in `kubernetes/pkg/printers/internalversion`.
//! This crate is those printers, as pure functions over stored JSON objects:
//!
//! * start from [`table`]: `(group, plural resource, objects, options) -> Table JSON`;
//! * [`render_text`] prints a Table the way kubectl does (tabwriter, `-o wide`), for tests and
//!   for humans;
//! * [`human_duration`] is apimachinery's `duration.HumanDuration`, used for every AGE cell.
//!
//! Like kube-apiserver (`printerstorage.TableConvertor` calls the generator with `Wide: true`),
//! every row carries all cells, including `priority: 1` ones; kubectl hides those unless
//! `-o wide`. Row `object`s follow `includeObject` (`PartialObjectMetadata` by default).
//!
//! Resources without an upstream printer get the generic columns: NAME and CREATED AT for the
//! built-in RBAC roles (kube-apiserver's `rest.NewDefaultTableConvertor`), NAME and AGE for
//! anything else (what apiextensions-apiserver shows for a CRD without printer columns).

mod duration;
mod json;
mod printers;
mod render;
mod selector;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

pub use duration::{human_duration, human_duration_nanos};
pub use render::render_text;

/// What each row's `object` holds: `?includeObject=None|Metadata|Object` (metav1.IncludeObjectPolicy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IncludeObject {
    /// `object: null`.
    None,
    /// A `meta.k8s.io/v1 PartialObjectMetadata` carrying the object's `metadata`, as upstream
    /// does when the parameter is absent.
    #[default]
    Metadata,
    /// The whole stored object.
    Object,
}

impl IncludeObject {
    /// Parse the `includeObject` query parameter; an empty value is the default (`Metadata`).
    /// `None` for anything else (upstream answers 400 "unrecognized includeObject value").
    pub fn from_query(value: &str) -> Option<Self> {
        match value {
            "None" => Some(Self::None),
            "" | "Metadata" => Some(Self::Metadata),
            "Object" => Some(Self::Object),
            _ => None,
        }
    }
}

/// Options of one Table conversion.
#[derive(Debug, Clone)]
pub struct TableOptions {
    /// Contents of each row's `object`.
    pub include_object: IncludeObject,
    /// The instant AGE and other relative times are computed against (injected: no clock here).
    pub now: DateTime<Utc>,
    /// `TableOptions.noHeaders`: leave `columnDefinitions` null (used by kubectl on watches).
    pub no_headers: bool,
}

impl Default for TableOptions {
    fn default() -> Self {
        Self {
            include_object: IncludeObject::default(),
            now: Utc::now(),
            no_headers: false,
        }
    }
}

/// Convert `objects` of `group`/`resource` (plural, lower case: `"pods"`, `"deployments"`) into a
/// `meta.k8s.io/v1 Table`, as kube-apiserver would for a list or a get.
///
/// The returned `metadata` is empty: the caller sets `resourceVersion` and `continue` (see
/// [`set_list_meta`]). Fields missing from an object read as their Go zero value, so a partial
/// object still prints; nothing here can fail.
pub fn table(group: &str, resource: &str, objects: &[Value], opts: &TableOptions) -> Value {
    let printer = printers::lookup(group, resource);
    let ctx = printers::Ctx {
        now: opts.now,
        group,
    };
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let row = (printer.row)(obj, &ctx);
            let mut out = Map::new();
            out.insert("cells".into(), Value::Array(row.cells));
            if !row.conditions.is_empty() {
                out.insert("conditions".into(), Value::Array(row.conditions));
            }
            out.insert("object".into(), row_object(obj, opts.include_object));
            Value::Object(out)
        })
        .collect();
    let columns = if opts.no_headers {
        Value::Null
    } else {
        Value::Array(
            (printer.columns)()
                .iter()
                .map(printers::Column::to_json)
                .collect(),
        )
    };
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {},
        "columnDefinitions": columns,
        "rows": rows,
    })
}

/// Set the Table's list metadata (`resourceVersion`, and `continue` when non-empty) the way
/// kube-apiserver copies it from the list it converted.
pub fn set_list_meta(table: &mut Value, resource_version: &str, continue_token: Option<&str>) {
    let mut meta = Map::new();
    if !resource_version.is_empty() {
        meta.insert("resourceVersion".into(), Value::from(resource_version));
    }
    if let Some(c) = continue_token.filter(|c| !c.is_empty()) {
        meta.insert("continue".into(), Value::from(c));
    }
    if let Some(t) = table.as_object_mut() {
        t.insert("metadata".into(), Value::Object(meta));
    }
}

fn row_object(obj: &Value, include: IncludeObject) -> Value {
    match include {
        IncludeObject::None => Value::Null,
        IncludeObject::Object => obj.clone(),
        IncludeObject::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn opts(include_object: IncludeObject, no_headers: bool) -> TableOptions {
        TableOptions {
            include_object,
            now: Utc
                .with_ymd_and_hms(2024, 5, 1, 12, 0, 0)
                .single()
                .expect("valid time"),
            no_headers,
        }
    }

    fn pod() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default", "uid": "u1", "resourceVersion": "7",
                         "creationTimestamp": "2024-05-01T11:59:00Z", "labels": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Succeeded"}
        })
    }

    #[test]
    fn table_shape_matches_meta_v1_table() {
        let t = table("", "pods", &[pod()], &opts(IncludeObject::Metadata, false));
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(t["metadata"], json!({}));
        let cols = t["columnDefinitions"].as_array().expect("columns");
        let names: Vec<&str> = cols.iter().filter_map(|c| c["name"].as_str()).collect();
        assert_eq!(
            names,
            [
                "Name",
                "Ready",
                "Status",
                "Restarts",
                "Age",
                "IP",
                "Node",
                "Nominated Node",
                "Readiness Gates"
            ]
        );
        assert_eq!(cols[0]["format"], "name");
        assert_eq!(cols[0]["priority"], 0);
        assert_eq!(cols[5]["priority"], 1);
        for c in cols {
            for key in ["name", "type", "format", "description", "priority"] {
                assert!(c.get(key).is_some(), "column {c} lacks {key}");
            }
        }
        let row = &t["rows"][0];
        assert_eq!(
            row["cells"],
            json!([
                "p",
                "0/1",
                "Succeeded",
                "0",
                "60s",
                "<none>",
                "<none>",
                "<none>",
                "<none>"
            ])
        );
        assert_eq!(
            row["conditions"],
            json!([{"type": "Completed", "status": "True", "reason": "Succeeded", "message": "The pod has completed successfully."}])
        );
        assert_eq!(
            row["object"],
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": pod()["metadata"]})
        );
    }

    #[test]
    fn include_object_and_no_headers() {
        let t = table("", "pods", &[pod()], &opts(IncludeObject::Object, true));
        assert_eq!(t["columnDefinitions"], Value::Null);
        assert_eq!(t["rows"][0]["object"], pod());
        assert_eq!(t["rows"][0]["cells"].as_array().map(Vec::len), Some(9));
        let t = table("", "pods", &[pod()], &opts(IncludeObject::None, false));
        assert_eq!(t["rows"][0]["object"], Value::Null);
        assert!(t["rows"][0].get("object").is_some());
        let empty = table(
            "apps",
            "deployments",
            &[],
            &opts(IncludeObject::Metadata, false),
        );
        assert_eq!(empty["rows"], json!([]));
        assert_eq!(render_text(&empty, false), "");
    }

    #[test]
    fn include_object_query_values() {
        assert_eq!(IncludeObject::from_query(""), Some(IncludeObject::Metadata));
        assert_eq!(
            IncludeObject::from_query("Metadata"),
            Some(IncludeObject::Metadata)
        );
        assert_eq!(IncludeObject::from_query("None"), Some(IncludeObject::None));
        assert_eq!(
            IncludeObject::from_query("Object"),
            Some(IncludeObject::Object)
        );
        assert_eq!(IncludeObject::from_query("object"), None);
    }

    #[test]
    fn list_meta_is_set_by_caller() {
        let mut t = table("", "pods", &[], &opts(IncludeObject::Metadata, false));
        set_list_meta(&mut t, "42", Some("abc"));
        assert_eq!(
            t["metadata"],
            json!({"resourceVersion": "42", "continue": "abc"})
        );
        set_list_meta(&mut t, "43", None);
        assert_eq!(t["metadata"], json!({"resourceVersion": "43"}));
    }

    #[test]
    fn render_cuts_multiline_cells_and_hides_wide_columns() {
        let t = json!({
            "columnDefinitions": [
                {"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0},
                {"name": "Message", "type": "string", "format": "", "description": "", "priority": 0},
                {"name": "Extra", "type": "string", "format": "", "description": "", "priority": 1}
            ],
            "rows": [{"cells": ["a", "line one\nline two", "x"]}, {"cells": ["bbbbbbbb", 3, true]}]
        });
        assert_eq!(
            render_text(&t, false),
            "NAME       MESSAGE\na          line one...\nbbbbbbbb   3\n"
        );
        assert_eq!(
            render_text(&t, true),
            "NAME       MESSAGE       EXTRA\na          line one...   x\nbbbbbbbb   3             true\n"
        );
    }
}
