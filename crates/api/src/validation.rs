//! Validation of objects on create and update, producing field errors the way kube-apiserver
//! reports them (`422 Invalid`, one `StatusCause` per [`FieldError`]).
//!
//! Messages follow apimachinery's `field.Error.ErrorBody()`: e.g. `metadata.name` /
//! `Invalid value: "Foo": a lowercase RFC 1123 subdomain must consist of ...`.

use serde_json::{Map, Value};

use crate::registry::Resource;
use crate::selector::LabelSelector;

pub use crate::openapi::unknown_fields;

/// The kind of a field error (`metav1.CauseType` without the `FieldValue` prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldErrorType {
    /// A required field is missing.
    Required,
    /// A value is malformed or out of range.
    Invalid,
    /// A value that must be unique is repeated.
    Duplicate,
    /// A value is not one of the supported ones.
    NotSupported,
    /// A value is too long.
    TooLong,
    /// The change or value is not allowed.
    Forbidden,
    /// A reference (e.g. a volume mount's volume) does not exist.
    NotFound,
}

/// One validation failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Field path, e.g. `spec.containers[0].image`.
    pub field: String,
    /// What kind of failure.
    pub reason: FieldErrorType,
    /// Upstream's error body, e.g. `Required value` or `Invalid value: "Foo": ...`; this is the
    /// `StatusCause.message`.
    pub message: String,
}

impl FieldError {
    /// `metav1.CauseType` for `StatusCause.reason`, e.g. `FieldValueRequired`.
    pub fn cause_type(&self) -> &'static str {
        match self.reason {
            FieldErrorType::Required => "FieldValueRequired",
            FieldErrorType::Invalid => "FieldValueInvalid",
            FieldErrorType::Duplicate => "FieldValueDuplicate",
            FieldErrorType::NotSupported => "FieldValueNotSupported",
            FieldErrorType::TooLong => "FieldValueTooLong",
            FieldErrorType::Forbidden => "FieldValueForbidden",
            FieldErrorType::NotFound => "FieldValueNotFound",
        }
    }

    /// `Required value` (`: detail`).
    pub fn required(field: impl Into<String>, detail: &str) -> Self {
        let message = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        Self {
            field: field.into(),
            reason: FieldErrorType::Required,
            message,
        }
    }

    /// `Invalid value: <value>: detail`.
    pub fn invalid(field: impl Into<String>, value: &Value, detail: &str) -> Self {
        let mut message = format!("Invalid value: {}", go_value(value));
        if !detail.is_empty() {
            message.push_str(": ");
            message.push_str(detail);
        }
        Self {
            field: field.into(),
            reason: FieldErrorType::Invalid,
            message,
        }
    }

    /// `Duplicate value: <value>`.
    pub fn duplicate(field: impl Into<String>, value: &Value) -> Self {
        Self {
            field: field.into(),
            reason: FieldErrorType::Duplicate,
            message: format!("Duplicate value: {}", go_value(value)),
        }
    }

    /// `Unsupported value: <value>: supported values: "a", "b"`.
    pub fn not_supported(field: impl Into<String>, value: &Value, supported: &[&str]) -> Self {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        Self {
            field: field.into(),
            reason: FieldErrorType::NotSupported,
            message: format!(
                "Unsupported value: {}: supported values: {}",
                go_value(value),
                list.join(", ")
            ),
        }
    }

    /// `Forbidden: detail`.
    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        Self {
            field: field.into(),
            reason: FieldErrorType::Forbidden,
            message: format!("Forbidden: {detail}"),
        }
    }

    /// `Too long: may not be more than N bytes`.
    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        Self {
            field: field.into(),
            reason: FieldErrorType::TooLong,
            message: format!("Too long: may not be more than {max} bytes"),
        }
    }

    /// `Not found: <value>`.
    pub fn not_found(field: impl Into<String>, value: &Value) -> Self {
        Self {
            field: field.into(),
            reason: FieldErrorType::NotFound,
            message: format!("Not found: {}", go_value(value)),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Joins errors as kube-apiserver does in `Status.message`:
/// `Pod "x" is invalid: [a: ..., b: ...]` (brackets only for more than one).
pub fn status_message(kind: &str, name: &str, errs: &[FieldError]) -> String {
    let parts: Vec<String> = errs.iter().map(ToString::to_string).collect();
    if parts.len() == 1 {
        format!("{kind} {name:?} is invalid: {}", parts[0])
    } else {
        format!("{kind} {name:?} is invalid: [{}]", parts.join(", "))
    }
}

fn go_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

// ---- name and label rules (apimachinery/pkg/util/validation) ----

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1035_LABEL_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";
const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const CONFIG_KEY_FMT: &str = "[-._a-zA-Z0-9]+";

fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    let mut s = format!("{msg} (e.g. ");
    for (i, e) in examples.iter().enumerate() {
        if i > 0 {
            s.push_str(" or ");
        }
        s.push_str(&format!("'{e}', "));
    }
    s.push_str(&format!("regex used for validation is '{fmt}')"));
    s
}

fn max_len_error(n: usize) -> String {
    format!("must be no more than {n} characters")
}

fn is_dns1123_label_chars(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Errors for a DNS-1123 label (namespaces, container and port names ...).
pub fn dns1123_label_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push(max_len_error(63));
    }
    if !is_dns1123_label_chars(s) {
        errs.push(regex_error(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
            DNS1123_LABEL_FMT,
            &["my-name", "123-abc"],
        ));
    }
    errs
}

/// Errors for a DNS-1123 subdomain (most object names).
pub fn dns1123_subdomain_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 253 {
        errs.push(max_len_error(253));
    }
    if s.is_empty() || !s.split('.').all(is_dns1123_label_chars) {
        errs.push(regex_error(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    errs
}

/// Errors for a DNS-1035 label (service names).
pub fn dns1035_label_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push(max_len_error(63));
    }
    if !is_dns1123_label_chars(s) || !s.as_bytes()[0].is_ascii_lowercase() {
        errs.push(regex_error(
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character",
            DNS1035_LABEL_FMT,
            &["my-name", "abc-123"],
        ));
    }
    errs
}

fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// Errors for a qualified name (label and annotation keys: `[prefix/]name`).
pub fn qualified_name_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = s.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else {
                for e in dns1123_subdomain_errors(prefix) {
                    errs.push(format!("prefix part {e}"));
                }
            }
            *name
        }
        _ => {
            errs.push(regex_error(
                "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"],
            ) + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')");
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        errs.push(format!("name part {}", max_len_error(63)));
    }
    if !name.is_empty() && !is_qualified_name_part(name) {
        errs.push(format!(
            "name part {}",
            regex_error(
                "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"],
            )
        ));
    }
    errs
}

/// Errors for a label value (may be empty).
pub fn label_value_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push(max_len_error(63));
    }
    if !s.is_empty() && !is_qualified_name_part(s) {
        errs.push(regex_error(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

/// Errors for a ConfigMap/Secret data key.
pub fn config_key_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 253 {
        errs.push(max_len_error(253));
    }
    if s.is_empty()
        || !s
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        errs.push(regex_error(
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
            CONFIG_KEY_FMT,
            &["key.name", "KEY_NAME", "key-name"],
        ));
    }
    if s == "." {
        errs.push("must not be '.'".into());
    } else if s == ".." {
        errs.push("must not be '..'".into());
    } else if s.starts_with("..") {
        errs.push("must not start with '..'".into());
    }
    errs
}

/// Errors for an IANA service name (port names): at most 15 characters, lower case
/// alphanumerics and '-', at least one letter, no leading/trailing/double '-'.
pub fn port_name_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 15 {
        errs.push(max_len_error(15));
    }
    if !s
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        errs.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into());
    }
    if s.contains("--") {
        errs.push("must not contain consecutive hyphens".into());
    }
    if !s.bytes().any(|c| c.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".into());
    }
    if s.starts_with('-') || s.ends_with('-') {
        errs.push("must not begin or end with a hyphen".into());
    }
    errs
}

fn path_segment_errors(s: &str) -> Vec<String> {
    if s == "." || s == ".." {
        return vec![format!("may not be '{s}'")];
    }
    let mut errs = Vec::new();
    for bad in ["/", "%"] {
        if s.contains(bad) {
            errs.push(format!("may not contain '{bad}'"));
        }
    }
    errs
}

/// Name rule per kind: DNS-1123 label for Namespace, DNS-1035 label for Service, path segment
/// for RBAC and Event, DNS-1123 subdomain for the rest.
pub fn name_errors(kind: &str, name: &str) -> Vec<String> {
    match kind {
        "Namespace" => dns1123_label_errors(name),
        "Service" => dns1035_label_errors(name),
        "Role" | "RoleBinding" | "ClusterRole" | "ClusterRoleBinding" | "Event" => {
            path_segment_errors(name)
        }
        _ => dns1123_subdomain_errors(name),
    }
}

// ---- helpers ----

fn s<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn arr<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn push_all(out: &mut Vec<FieldError>, field: &str, value: &str, msgs: Vec<String>) {
    for m in msgs {
        out.push(FieldError::invalid(
            field,
            &Value::String(value.to_string()),
            &m,
        ));
    }
}

fn validate_labels(labels: &Value, field: &str, out: &mut Vec<FieldError>) {
    let Some(m) = labels.as_object() else {
        return;
    };
    for (k, v) in m {
        push_all(out, field, k, qualified_name_errors(k));
        match v.as_str() {
            Some(val) => push_all(out, field, val, label_value_errors(val)),
            None => out.push(FieldError::invalid(
                field,
                v,
                "label values must be strings",
            )),
        }
    }
}

const TOTAL_ANNOTATION_SIZE: usize = 256 * 1024;

fn validate_annotations(ann: &Value, field: &str, out: &mut Vec<FieldError>) {
    let Some(m) = ann.as_object() else {
        return;
    };
    let mut total = 0;
    for (k, v) in m {
        // Annotation keys are checked case-insensitively upstream (lower-cased first).
        push_all(out, field, k, qualified_name_errors(&k.to_lowercase()));
        total += k.len() + v.as_str().map(str::len).unwrap_or(0);
    }
    if total > TOTAL_ANNOTATION_SIZE {
        out.push(FieldError::too_long(field, TOTAL_ANNOTATION_SIZE));
    }
}

fn validate_meta(resource: &Resource, obj: &Value, out: &mut Vec<FieldError>) {
    let meta = obj.get("metadata").unwrap_or(&Value::Null);
    match s(meta, "name") {
        Some(name) if !name.is_empty() => {
            push_all(out, "metadata.name", name, name_errors(resource.kind, name))
        }
        _ => {
            if s(meta, "generateName").is_none_or(str::is_empty) {
                out.push(FieldError::required(
                    "metadata.name",
                    "name or generateName is required",
                ));
            }
        }
    }
    if let Some(gn) = s(meta, "generateName").filter(|g| !g.is_empty()) {
        // Validated as a name with a placeholder suffix, as upstream does.
        let probe = format!("{gn}a");
        push_all(
            out,
            "metadata.generateName",
            gn,
            name_errors(resource.kind, &probe),
        );
    }
    match resource.scope {
        crate::registry::Scope::Namespaced => match s(meta, "namespace") {
            Some(ns) if !ns.is_empty() => {
                push_all(out, "metadata.namespace", ns, dns1123_label_errors(ns))
            }
            _ => out.push(FieldError::required("metadata.namespace", "")),
        },
        crate::registry::Scope::Cluster => {
            if let Some(ns) = s(meta, "namespace").filter(|n| !n.is_empty()) {
                out.push(FieldError::forbidden(
                    "metadata.namespace",
                    "not allowed on this type",
                ));
                let _ = ns;
            }
        }
    }
    validate_labels(
        meta.get("labels").unwrap_or(&Value::Null),
        "metadata.labels",
        out,
    );
    validate_annotations(
        meta.get("annotations").unwrap_or(&Value::Null),
        "metadata.annotations",
        out,
    );
    let mut seen = Vec::new();
    for (i, f) in arr(meta, "finalizers").iter().enumerate() {
        let field = format!("metadata.finalizers[{i}]");
        match f.as_str() {
            Some(name) => {
                push_all(out, &field, name, qualified_name_errors(name));
                if seen.contains(&name) {
                    out.push(FieldError::duplicate(&field, f));
                }
                seen.push(name);
            }
            None => out.push(FieldError::invalid(&field, f, "must be a string")),
        }
    }
}

// ---- pods ----

const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];

fn int(v: &Value, key: &str) -> Option<i64> {
    v.get(key).and_then(Value::as_i64)
}

fn validate_port_range(v: &Value, key: &str, field: &str, min: i64, out: &mut Vec<FieldError>) {
    if let Some(p) = v.get(key) {
        match p.as_i64() {
            Some(n) if (min..=65535).contains(&n) => {}
            _ => out.push(FieldError::invalid(
                field,
                p,
                if min == 0 {
                    "must be between 0 and 65535, inclusive"
                } else {
                    "must be between 1 and 65535, inclusive"
                },
            )),
        }
    }
}

fn validate_container(
    c: &Value,
    field: &str,
    volumes: &[&str],
    names: &mut Vec<String>,
    out: &mut Vec<FieldError>,
) {
    match s(c, "name") {
        Some(n) if !n.is_empty() => {
            push_all(out, &format!("{field}.name"), n, dns1123_label_errors(n));
            if names.iter().any(|x| x == n) {
                out.push(FieldError::duplicate(
                    format!("{field}.name"),
                    &Value::String(n.into()),
                ));
            }
            names.push(n.to_string());
        }
        _ => out.push(FieldError::required(format!("{field}.name"), "")),
    }
    if s(c, "image").is_none_or(|i| i.trim().is_empty()) {
        out.push(FieldError::required(format!("{field}.image"), ""));
    }
    if let Some(p) = c.get("imagePullPolicy") {
        if !matches!(p.as_str(), Some("Always" | "IfNotPresent" | "Never")) {
            out.push(FieldError::not_supported(
                format!("{field}.imagePullPolicy"),
                p,
                &["Always", "IfNotPresent", "Never"],
            ));
        }
    }
    if let Some(p) = c.get("terminationMessagePolicy") {
        if !matches!(p.as_str(), Some("File" | "FallbackToLogsOnError")) {
            out.push(FieldError::not_supported(
                format!("{field}.terminationMessagePolicy"),
                p,
                &["File", "FallbackToLogsOnError"],
            ));
        }
    }
    let mut port_names: Vec<&str> = Vec::new();
    for (i, p) in arr(c, "ports").iter().enumerate() {
        let pf = format!("{field}.ports[{i}]");
        if let Some(n) = s(p, "name") {
            let errs = port_name_errors(n);
            push_all(out, &format!("{pf}.name"), n, errs);
            if port_names.contains(&n) {
                out.push(FieldError::duplicate(
                    format!("{pf}.name"),
                    &Value::String(n.into()),
                ));
            }
            port_names.push(n);
        }
        match p.get("containerPort") {
            None => out.push(FieldError::required(format!("{pf}.containerPort"), "")),
            Some(_) => {
                validate_port_range(p, "containerPort", &format!("{pf}.containerPort"), 1, out)
            }
        }
        validate_port_range(p, "hostPort", &format!("{pf}.hostPort"), 0, out);
        if let Some(proto) = p.get("protocol") {
            if !proto.as_str().is_some_and(|x| PROTOCOLS.contains(&x)) {
                out.push(FieldError::not_supported(
                    format!("{pf}.protocol"),
                    proto,
                    PROTOCOLS,
                ));
            }
        }
    }
    let mut env_names = Vec::new();
    for (i, e) in arr(c, "env").iter().enumerate() {
        match s(e, "name") {
            Some(n) if !n.is_empty() => env_names.push(n),
            _ => out.push(FieldError::required(format!("{field}.env[{i}].name"), "")),
        }
    }
    for (i, m) in arr(c, "volumeMounts").iter().enumerate() {
        let mf = format!("{field}.volumeMounts[{i}]");
        match s(m, "name") {
            Some(n) if !n.is_empty() => {
                if !volumes.contains(&n) {
                    out.push(FieldError::not_found(
                        format!("{mf}.name"),
                        &Value::String(n.into()),
                    ));
                }
            }
            _ => out.push(FieldError::required(format!("{mf}.name"), "")),
        }
        if s(m, "mountPath").is_none_or(str::is_empty) {
            out.push(FieldError::required(format!("{mf}.mountPath"), ""));
        }
    }
}

/// Validates a PodSpec at `field` (`spec` or `spec.template.spec`).
pub fn validate_pod_spec(spec: &Value, field: &str, out: &mut Vec<FieldError>) {
    let mut volumes: Vec<&str> = Vec::new();
    for (i, v) in arr(spec, "volumes").iter().enumerate() {
        let vf = format!("{field}.volumes[{i}].name");
        match s(v, "name") {
            Some(n) if !n.is_empty() => {
                push_all(out, &vf, n, dns1123_label_errors(n));
                if volumes.contains(&n) {
                    out.push(FieldError::duplicate(&vf, &Value::String(n.into())));
                }
                volumes.push(n);
            }
            _ => out.push(FieldError::required(vf, "")),
        }
    }
    let containers = arr(spec, "containers");
    if containers.is_empty() {
        out.push(FieldError::required(format!("{field}.containers"), ""));
    }
    let mut names = Vec::new();
    for (i, c) in containers.iter().enumerate() {
        validate_container(
            c,
            &format!("{field}.containers[{i}]"),
            &volumes,
            &mut names,
            out,
        );
    }
    for (i, c) in arr(spec, "initContainers").iter().enumerate() {
        validate_container(
            c,
            &format!("{field}.initContainers[{i}]"),
            &volumes,
            &mut names,
            out,
        );
    }
    if let Some(p) = spec.get("restartPolicy") {
        if !matches!(p.as_str(), Some("Always" | "OnFailure" | "Never")) {
            out.push(FieldError::not_supported(
                format!("{field}.restartPolicy"),
                p,
                &["Always", "OnFailure", "Never"],
            ));
        }
    }
    if let Some(p) = spec.get("dnsPolicy") {
        const DNS: &[&str] = &["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"];
        if !p.as_str().is_some_and(|x| DNS.contains(&x)) {
            out.push(FieldError::not_supported(
                format!("{field}.dnsPolicy"),
                p,
                DNS,
            ));
        }
    }
    if let Some(n) = s(spec, "nodeName").filter(|n| !n.is_empty()) {
        push_all(
            out,
            &format!("{field}.nodeName"),
            n,
            dns1123_subdomain_errors(n),
        );
    }
    if let Some(g) = spec.get("terminationGracePeriodSeconds") {
        if g.as_i64().is_none() {
            out.push(FieldError::invalid(
                format!("{field}.terminationGracePeriodSeconds"),
                g,
                "must be an integer",
            ));
        }
    }
    if let Some(a) = spec.get("activeDeadlineSeconds") {
        if a.as_i64().is_none_or(|n| n <= 0) {
            out.push(FieldError::invalid(
                format!("{field}.activeDeadlineSeconds"),
                a,
                "must be between 1 and 2147483647, inclusive",
            ));
        }
    }
    for (i, t) in arr(spec, "tolerations").iter().enumerate() {
        let tf = format!("{field}.tolerations[{i}]");
        if let Some(op) = t.get("operator") {
            if !matches!(op.as_str(), Some("Equal" | "Exists")) {
                out.push(FieldError::not_supported(
                    format!("{tf}.operator"),
                    op,
                    &["Equal", "Exists"],
                ));
            }
        }
        if let Some(e) = t.get("effect") {
            if !matches!(
                e.as_str(),
                Some("NoSchedule" | "PreferNoSchedule" | "NoExecute" | "")
            ) {
                out.push(FieldError::not_supported(
                    format!("{tf}.effect"),
                    e,
                    &["NoExecute", "NoSchedule", "PreferNoSchedule"],
                ));
            }
        }
    }
}

// ---- workloads ----

fn validate_workload(kind: &str, obj: &Value, out: &mut Vec<FieldError>) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    if let Some(r) = spec.get("replicas") {
        if r.as_i64().is_none_or(|n| n < 0) {
            out.push(FieldError::invalid(
                "spec.replicas",
                r,
                "must be greater than or equal to 0",
            ));
        }
    }
    let template = spec.get("template").unwrap_or(&Value::Null);
    let tlabels = template
        .pointer("/metadata/labels")
        .cloned()
        .unwrap_or(Value::Null);
    match spec.get("selector") {
        None | Some(Value::Null) => out.push(FieldError::required("spec.selector", "")),
        Some(sel) => {
            let empty = sel
                .get("matchLabels")
                .and_then(Value::as_object)
                .is_none_or(Map::is_empty)
                && sel
                    .get("matchExpressions")
                    .and_then(Value::as_array)
                    .is_none_or(Vec::is_empty);
            if empty {
                out.push(FieldError::invalid(
                    "spec.selector",
                    sel,
                    &format!("empty selector is invalid for {}", kind.to_lowercase()),
                ));
            } else {
                match LabelSelector::from_match_labels_expressions(sel) {
                    Ok(ls) => {
                        if !ls.matches(&tlabels) {
                            out.push(FieldError::invalid(
                                "spec.template.metadata.labels",
                                &tlabels,
                                "`selector` does not match template `labels`",
                            ));
                        }
                    }
                    Err(e) => out.push(FieldError::invalid("spec.selector", sel, &e.to_string())),
                }
            }
        }
    }
    validate_labels(&tlabels, "spec.template.metadata.labels", out);
    let tspec = template.get("spec").unwrap_or(&Value::Null);
    validate_pod_spec(tspec, "spec.template.spec", out);
    if let Some(p) = tspec.get("restartPolicy") {
        if p.as_str() != Some("Always") {
            out.push(FieldError::not_supported(
                "spec.template.spec.restartPolicy",
                p,
                &["Always"],
            ));
        }
    }
    if kind == "Deployment" {
        if let Some(t) = spec.pointer("/strategy/type") {
            if !matches!(t.as_str(), Some("Recreate" | "RollingUpdate")) {
                out.push(FieldError::not_supported(
                    "spec.strategy.type",
                    t,
                    &["Recreate", "RollingUpdate"],
                ));
            } else if t.as_str() == Some("Recreate")
                && spec
                    .pointer("/strategy/rollingUpdate")
                    .is_some_and(|v| !v.is_null())
            {
                out.push(FieldError::forbidden(
                    "spec.strategy.rollingUpdate",
                    "may not be specified when strategy `type` is 'Recreate'",
                ));
            }
        }
    }
}

// ---- services ----

fn validate_service(obj: &Value, out: &mut Vec<FieldError>) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let ty = s(spec, "type").unwrap_or("ClusterIP");
    const TYPES: &[&str] = &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
    if !TYPES.contains(&ty) {
        out.push(FieldError::not_supported(
            "spec.type",
            spec.get("type").unwrap_or(&Value::Null),
            TYPES,
        ));
    }
    let cluster_ip = s(spec, "clusterIP").unwrap_or("");
    if !cluster_ip.is_empty()
        && cluster_ip != "None"
        && cluster_ip.parse::<std::net::IpAddr>().is_err()
    {
        out.push(FieldError::invalid(
            "spec.clusterIPs[0]",
            &Value::String(cluster_ip.into()),
            "must be empty, 'None', or a valid IP address",
        ));
    }
    if ty == "ExternalName" {
        match s(spec, "externalName") {
            Some(n) if !n.is_empty() => push_all(
                out,
                "spec.externalName",
                n,
                dns1123_subdomain_errors(n.trim_end_matches('.')),
            ),
            _ => out.push(FieldError::required("spec.externalName", "")),
        }
    }
    let ports = arr(spec, "ports");
    if ports.is_empty() && ty != "ExternalName" && cluster_ip != "None" {
        out.push(FieldError::required("spec.ports", ""));
    }
    let mut names: Vec<&str> = Vec::new();
    let mut pairs: Vec<(i64, &str)> = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let pf = format!("spec.ports[{i}]");
        match s(p, "name").filter(|n| !n.is_empty()) {
            Some(n) => {
                push_all(out, &format!("{pf}.name"), n, dns1123_label_errors(n));
                if names.contains(&n) {
                    out.push(FieldError::duplicate(
                        format!("{pf}.name"),
                        &Value::String(n.into()),
                    ));
                }
                names.push(n);
            }
            None => {
                if ports.len() > 1 {
                    out.push(FieldError::required(format!("{pf}.name"), ""));
                }
            }
        }
        match p.get("port") {
            None => out.push(FieldError::required(format!("{pf}.port"), "")),
            Some(_) => validate_port_range(p, "port", &format!("{pf}.port"), 1, out),
        }
        let proto = s(p, "protocol").unwrap_or("TCP");
        if !PROTOCOLS.contains(&proto) {
            out.push(FieldError::not_supported(
                format!("{pf}.protocol"),
                &Value::String(proto.into()),
                PROTOCOLS,
            ));
        }
        if let Some(port) = int(p, "port") {
            if pairs.contains(&(port, proto)) {
                out.push(FieldError::duplicate(
                    pf.clone(),
                    &serde_json::json!({"port": port, "protocol": proto}),
                ));
            }
            pairs.push((port, proto));
        }
        match p.get("targetPort") {
            Some(Value::Number(n)) if !n.as_i64().is_some_and(|n| (1..=65535).contains(&n)) => {
                out.push(FieldError::invalid(
                    format!("{pf}.targetPort"),
                    &Value::Number(n.clone()),
                    "must be between 1 and 65535, inclusive",
                ));
            }
            Some(Value::String(n)) => {
                push_all(out, &format!("{pf}.targetPort"), n, port_name_errors(n))
            }
            _ => {}
        }
        if let Some(np) = p
            .get("nodePort")
            .filter(|v| !v.is_null() && v.as_i64() != Some(0))
        {
            if !matches!(ty, "NodePort" | "LoadBalancer") {
                out.push(FieldError::forbidden(
                    format!("{pf}.nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            } else {
                validate_port_range(p, "nodePort", &format!("{pf}.nodePort"), 1, out);
            }
            let _ = np;
        }
    }
    if let Some(a) = spec.get("sessionAffinity") {
        if !matches!(a.as_str(), Some("None" | "ClientIP")) {
            out.push(FieldError::not_supported(
                "spec.sessionAffinity",
                a,
                &["ClientIP", "None"],
            ));
        }
    }
    if let Some(sel) = spec.get("selector") {
        validate_labels(sel, "spec.selector", out);
    }
}

fn validate_data_keys(obj: &Value, out: &mut Vec<FieldError>) {
    let mut seen: Vec<&str> = Vec::new();
    for key in ["data", "stringData", "binaryData"] {
        if let Some(m) = obj.get(key).and_then(Value::as_object) {
            for k in m.keys() {
                push_all(out, &format!("{key}[{k}]"), k, config_key_errors(k));
                if key == "binaryData" && seen.contains(&k.as_str()) {
                    out.push(FieldError::invalid(
                        format!("{key}[{k}]"),
                        &Value::String(k.clone()),
                        "duplicate of key present in data",
                    ));
                }
                seen.push(k);
            }
        }
    }
}

/// Validates an object being created (after defaulting). Empty means valid.
pub fn validate_create(resource: &Resource, obj: &Value) -> Vec<FieldError> {
    let mut out = Vec::new();
    validate_meta(resource, obj, &mut out);
    match (resource.group, resource.kind) {
        ("", "Pod") => validate_pod_spec(obj.get("spec").unwrap_or(&Value::Null), "spec", &mut out),
        ("apps", k @ ("Deployment" | "ReplicaSet" | "DaemonSet")) => {
            validate_workload(k, obj, &mut out)
        }
        ("", "Service") => validate_service(obj, &mut out),
        ("", "ConfigMap") => validate_data_keys(obj, &mut out),
        ("", "Secret") => {
            validate_data_keys(obj, &mut out);
            if let Some(t) = obj.get("type").and_then(Value::as_str) {
                push_all(&mut out, "type", t, qualified_name_errors(t));
            }
        }
        _ => {}
    }
    out
}

fn immutable(out: &mut Vec<FieldError>, field: &str, old: Option<&Value>, new: Option<&Value>) {
    let o = old.unwrap_or(&Value::Null);
    let n = new.unwrap_or(&Value::Null);
    if o != n {
        out.push(FieldError::invalid(field, n, "field is immutable"));
    }
}

const POD_UPDATE_FORBIDDEN: &str = "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

fn validate_pod_update(old: &Value, new: &Value, out: &mut Vec<FieldError>) {
    let (Some(os), Some(ns)) = (old.get("spec"), new.get("spec")) else {
        return;
    };
    // Copy the mutable fields from new into old; anything else differing is forbidden.
    let mut patched = os.clone();
    for list in ["containers", "initContainers"] {
        let new_list = arr(ns, list);
        if let Some(Value::Array(items)) = patched.get_mut(list) {
            if items.len() == new_list.len() {
                for (o, n) in items.iter_mut().zip(new_list) {
                    if let (Some(om), Some(img)) = (o.as_object_mut(), n.get("image")) {
                        om.insert("image".into(), img.clone());
                    }
                }
            }
        }
    }
    if let Some(pm) = patched.as_object_mut() {
        for key in ["activeDeadlineSeconds", "tolerations"] {
            match ns.get(key) {
                Some(v) => pm.insert(key.into(), v.clone()),
                None => pm.remove(key),
            };
        }
        if int(os, "terminationGracePeriodSeconds").is_some_and(|g| g < 0)
            && int(ns, "terminationGracePeriodSeconds") == Some(1)
        {
            pm.insert("terminationGracePeriodSeconds".into(), Value::from(1));
        }
    }
    if &patched != ns {
        out.push(FieldError::forbidden("spec", POD_UPDATE_FORBIDDEN));
    }
    let new_tol = arr(ns, "tolerations");
    if arr(os, "tolerations").iter().any(|t| !new_tol.contains(t)) {
        out.push(FieldError::forbidden(
            "spec.tolerations",
            "existing toleration can not be modified except its tolerationSeconds",
        ));
    }
    if let (Some(oa), Some(na)) = (
        int(os, "activeDeadlineSeconds"),
        int(ns, "activeDeadlineSeconds"),
    ) {
        if na > oa {
            out.push(FieldError::invalid(
                "spec.activeDeadlineSeconds",
                &Value::from(na),
                "must be less than or equal to previous value",
            ));
        }
    } else if os.get("activeDeadlineSeconds").is_some() && ns.get("activeDeadlineSeconds").is_none()
    {
        out.push(FieldError::invalid(
            "spec.activeDeadlineSeconds",
            &Value::Null,
            "must not update from a positive integer to nil value",
        ));
    }
}

/// Validates an update: everything [`validate_create`] checks on `new`, plus immutable fields.
pub fn validate_update(resource: &Resource, old: &Value, new: &Value) -> Vec<FieldError> {
    let mut out = validate_create(resource, new);
    for f in ["name", "namespace", "uid", "creationTimestamp"] {
        let o = old.pointer(&format!("/metadata/{f}"));
        let n = new.pointer(&format!("/metadata/{f}"));
        if f == "uid" || f == "creationTimestamp" {
            // Clients may omit these; the server keeps the old ones.
            if n.is_none() {
                continue;
            }
        }
        immutable(&mut out, &format!("metadata.{f}"), o, n);
    }
    match (resource.group, resource.kind) {
        ("", "Pod") => validate_pod_update(old, new, &mut out),
        ("apps", "Deployment" | "ReplicaSet" | "DaemonSet") => {
            immutable(
                &mut out,
                "spec.selector",
                old.pointer("/spec/selector"),
                new.pointer("/spec/selector"),
            );
        }
        ("", "Service") => {
            let o = old
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .unwrap_or("");
            let n = new
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .unwrap_or("");
            let ot = old
                .pointer("/spec/type")
                .and_then(Value::as_str)
                .unwrap_or("ClusterIP");
            let nt = new
                .pointer("/spec/type")
                .and_then(Value::as_str)
                .unwrap_or("ClusterIP");
            // Changing to/from ExternalName may drop or allocate the IP; otherwise it is fixed.
            if !o.is_empty() && o != n && ot != "ExternalName" && nt != "ExternalName" {
                out.push(FieldError::invalid(
                    "spec.clusterIPs[0]",
                    &Value::String(n.into()),
                    "may not change once set",
                ));
            }
        }
        ("", k @ ("ConfigMap" | "Secret")) => {
            if old.get("immutable").and_then(Value::as_bool) == Some(true) {
                for key in ["data", "binaryData"] {
                    if old.get(key) != new.get(key) {
                        out.push(FieldError::forbidden(
                            key,
                            "field is immutable when `immutable` is set",
                        ));
                    }
                }
                if new.get("immutable").and_then(Value::as_bool) != Some(true) {
                    out.push(FieldError::forbidden(
                        "immutable",
                        "field is immutable when `immutable` is set",
                    ));
                }
            }
            if k == "Secret" {
                immutable(&mut out, "type", old.get("type"), new.get("type"));
            }
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests;
