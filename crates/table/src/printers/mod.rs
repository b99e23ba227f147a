//! One printer per resource: column definitions plus a row function, transcribed from
//! kubernetes/pkg/printers/internalversion/printers.go (`AddHandlers` and the `print*` funcs).
//! Rows are generated with `Wide: true`, as kube-apiserver's TableConvertor does.

mod apps;
mod core;
mod generic;
mod networking;
mod rbac;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::duration::human_duration;
use crate::json::{arr_at, str_at, time_at};

/// Per-conversion context.
pub(crate) struct Ctx<'a> {
    pub now: DateTime<Utc>,
    /// API group of the request (events exist in "" and "events.k8s.io" with different fields).
    pub group: &'a str,
}

impl Ctx<'_> {
    /// `translateTimestampSince`: `<unknown>` for a missing time, else HumanDuration(now - t).
    pub fn since(&self, t: Option<DateTime<Utc>>) -> String {
        match t {
            None => "<unknown>".to_string(),
            Some(t) => human_duration(self.now - t),
        }
    }

    /// AGE of an object: since `metadata.creationTimestamp`.
    pub fn age(&self, obj: &Value) -> Value {
        Value::from(self.since(time_at(obj, &["metadata", "creationTimestamp"])))
    }
}

/// A `TableColumnDefinition`.
pub(crate) struct Column {
    pub name: &'static str,
    pub kind: &'static str,
    pub format: &'static str,
    pub description: &'static str,
    pub priority: i32,
}

impl Column {
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "type": self.kind,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        })
    }
}

/// Priority-0 column.
pub(crate) const fn col(
    name: &'static str,
    kind: &'static str,
    description: &'static str,
) -> Column {
    Column {
        name,
        kind,
        format: "",
        description,
        priority: 0,
    }
}

/// Priority-1 column (shown by kubectl only with `-o wide`).
pub(crate) const fn wide(
    name: &'static str,
    kind: &'static str,
    description: &'static str,
) -> Column {
    Column {
        name,
        kind,
        format: "",
        description,
        priority: 1,
    }
}

/// The NAME column every printer starts with.
pub(crate) const NAME: Column = Column {
    name: "Name",
    kind: "string",
    format: "name",
    description: NAME_DOC,
    priority: 0,
};

/// The AGE column (a human duration string, type "string" as upstream declares it).
pub(crate) const AGE: Column = col("Age", "string", CREATION_DOC);

/// `metav1.ObjectMeta{}.SwaggerDoc()["name"]`.
pub(crate) const NAME_DOC: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";

/// `metav1.ObjectMeta{}.SwaggerDoc()["creationTimestamp"]`.
pub(crate) const CREATION_DOC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

pub(crate) const CONTAINERS_DOC: &str = "Names of each container in the template.";
pub(crate) const IMAGES_DOC: &str = "Images referenced by each container in the template.";

/// One row: its cells and its `conditions` (only pods set `Completed`).
pub(crate) struct Row {
    pub cells: Vec<Value>,
    pub conditions: Vec<Value>,
}

impl Row {
    pub fn new(cells: Vec<Value>) -> Self {
        Self {
            cells,
            conditions: Vec::new(),
        }
    }
}

/// A resource's printer.
pub(crate) struct Printer {
    pub columns: fn() -> Vec<Column>,
    pub row: fn(&Value, &Ctx<'_>) -> Row,
}

/// The printer for `group`/`resource`, or the generic one.
pub(crate) fn lookup(group: &str, resource: &str) -> Printer {
    match (group, resource) {
        ("", "pods") => core::PODS,
        ("", "services") => core::SERVICES,
        ("", "endpoints") => core::ENDPOINTS,
        ("", "nodes") => core::NODES,
        ("", "namespaces") => core::NAMESPACES,
        ("", "configmaps") => core::CONFIGMAPS,
        ("", "secrets") => core::SECRETS,
        ("", "serviceaccounts") => core::SERVICEACCOUNTS,
        ("", "events") | ("events.k8s.io", "events") => core::EVENTS,
        ("apps", "deployments") => apps::DEPLOYMENTS,
        ("apps", "replicasets") => apps::REPLICASETS,
        ("apps", "daemonsets") => apps::DAEMONSETS,
        ("apps", "statefulsets") => apps::STATEFULSETS,
        ("batch", "jobs") => apps::JOBS,
        ("batch", "cronjobs") => apps::CRONJOBS,
        ("discovery.k8s.io", "endpointslices") => networking::ENDPOINTSLICES,
        ("networking.k8s.io", "ingresses") => networking::INGRESSES,
        ("networking.k8s.io", "ingressclasses") => networking::INGRESSCLASSES,
        ("networking.k8s.io", "networkpolicies") => networking::NETWORKPOLICIES,
        ("coordination.k8s.io", "leases") => generic::LEASES,
        ("rbac.authorization.k8s.io", "rolebindings") => rbac::ROLEBINDINGS,
        ("rbac.authorization.k8s.io", "clusterrolebindings") => rbac::CLUSTERROLEBINDINGS,
        ("rbac.authorization.k8s.io", "roles" | "clusterroles") => generic::CREATED_AT,
        _ => generic::NAME_AGE,
    }
}

/// `layoutContainerCells`: container names and images, each joined by ",".
pub(crate) fn container_cells(pod_spec_containers: &[Value]) -> (Value, Value) {
    let names: Vec<&str> = pod_spec_containers
        .iter()
        .map(|c| str_at(c, &["name"]))
        .collect();
    let images: Vec<&str> = pod_spec_containers
        .iter()
        .map(|c| str_at(c, &["image"]))
        .collect();
    (Value::from(names.join(",")), Value::from(images.join(",")))
}

/// Containers of `spec.template.spec` of a workload.
pub(crate) fn template_containers(obj: &Value) -> &[Value] {
    arr_at(obj, &["spec", "template", "spec", "containers"])
}

/// `listWithMoreString`: up to `max` items joined by ",", then " + N more...", `<unset>` if empty.
pub(crate) fn list_with_more(items: &[String], total: usize, max: usize) -> String {
    let shown: Vec<&str> = items.iter().take(max).map(String::as_str).collect();
    let ret = shown.join(",");
    if total > max {
        return format!("{ret} + {} more...", total - max);
    }
    if ret.is_empty() {
        return "<unset>".to_string();
    }
    ret
}
