//! API errors as `metav1.Status` bodies with the HTTP code and reason kube-apiserver uses.

use serde_json::{json, Value};

/// One cause inside `details.causes` (per-field validation errors, patch conflicts).
#[derive(Clone, Debug, PartialEq)]
pub struct Cause {
    /// e.g. `FieldValueInvalid`.
    pub reason: String,
    /// Human message.
    pub message: String,
    /// Field path, e.g. `spec.ports[0].port`.
    pub field: String,
}

/// An API error: everything needed to write a `Status`.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `metav1.StatusReason`, e.g. `NotFound`.
    pub reason: &'static str,
    /// Message shown by kubectl.
    pub message: String,
    /// `details.name`.
    pub name: Option<String>,
    /// `details.group`.
    pub group: Option<String>,
    /// `details.kind` (the resource, as upstream fills it).
    pub kind: Option<String>,
    /// `details.causes`.
    pub causes: Vec<Cause>,
    /// `details.retryAfterSeconds`.
    pub retry_after: Option<u32>,
}

/// Result alias for handlers.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// A bare error.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into(), name: None, group: None, kind: None, causes: vec![], retry_after: None }
    }

    fn with_details(mut self, group: &str, resource: &str, name: &str) -> Self {
        self.group = Some(group.to_string()).filter(|g| !g.is_empty());
        self.kind = Some(resource.to_string());
        self.name = Some(name.to_string()).filter(|n| !n.is_empty());
        self
    }

    /// `pods "x" not found`
    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{} \"{}\" not found", qualified(group, resource), name)).with_details(group, resource, name)
    }

    /// `pods "x" already exists`
    pub fn already_exists(group: &str, resource: &str, name: &str) -> Self {
        Self::new(409, "AlreadyExists", format!("{} \"{}\" already exists", qualified(group, resource), name))
            .with_details(group, resource, name)
    }

    /// Optimistic concurrency failure.
    pub fn conflict(group: &str, resource: &str, name: &str, why: &str) -> Self {
        Self::new(409, "Conflict", format!("Operation cannot be fulfilled on {} \"{}\": {}", qualified(group, resource), name, why))
            .with_details(group, resource, name)
    }

    /// 422 with causes.
    pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<Cause>) -> Self {
        let list: Vec<String> = causes.iter().map(|c| if c.field.is_empty() { c.message.clone() } else { format!("{}: {}", c.field, c.message) }).collect();
        let summary = if list.len() == 1 { list[0].clone() } else { format!("[{}]", list.join(", ")) };
        let mut e = Self::new(422, "Invalid", format!("{} \"{}\" is invalid: {}", qualified_kind(group, kind), name, summary));
        e.group = Some(group.to_string()).filter(|g| !g.is_empty());
        e.kind = Some(kind.to_string());
        e.name = Some(name.to_string());
        e.causes = causes;
        e
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 403 (also used for writes into a terminating namespace).
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    /// 401 for anonymous requests.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// 405.
    pub fn method_not_supported(resource: &str, verb: &str) -> Self {
        Self::new(405, "MethodNotAllowed", format!("{verb} is not supported on resources of kind \"{resource}\""))
    }

    /// 410 for a compacted resourceVersion.
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 413.
    pub fn too_large(limit: usize) -> Self {
        Self::new(413, "RequestEntityTooLarge", format!("Request entity too large: limit is {limit}"))
    }

    /// 415.
    pub fn unsupported_media_type(ct: &str) -> Self {
        Self::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (got {ct:?})"))
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", format!("Internal error occurred: {}", message.into()))
    }

    /// 503.
    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut e = Self::new(503, "ServiceUnavailable", message);
        e.retry_after = Some(1);
        e
    }

    /// 504 (watch/timeout).
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(504, "Timeout", message)
    }

    /// The `metav1.Status` body.
    pub fn to_status(&self) -> Value {
        let mut details = serde_json::Map::new();
        if let Some(n) = &self.name {
            details.insert("name".into(), json!(n));
        }
        if let Some(g) = &self.group {
            details.insert("group".into(), json!(g));
        }
        if let Some(k) = &self.kind {
            details.insert("kind".into(), json!(k));
        }
        if !self.causes.is_empty() {
            details.insert(
                "causes".into(),
                Value::Array(self.causes.iter().map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field})).collect()),
            );
        }
        if let Some(r) = self.retry_after {
            details.insert("retryAfterSeconds".into(), json!(r));
        }
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if !details.is_empty() {
            status["details"] = Value::Object(details);
        }
        status
    }
}

fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

fn qualified_kind(group: &str, kind: &str) -> String {
    if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    }
}

impl From<dari_store::StoreError> for ApiError {
    fn from(e: dari_store::StoreError) -> Self {
        use dari_store::StoreError as S;
        match &e {
            S::Compacted { .. } => ApiError::gone(format!("too old resource version: {e}")),
            S::FutureRevision { .. } => ApiError::timeout(format!("Too large resource version: {e}")),
            S::Unavailable { .. } => {
                let cause = std::error::Error::source(&e).map(|s| format!(": {s}")).unwrap_or_default();
                ApiError::unavailable(format!("{e}{cause}"))
            }
            _ => {
                let mut chain = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    chain.push_str(": ");
                    chain.push_str(&s.to_string());
                    src = s.source();
                }
                ApiError::internal(chain)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_matches_upstream_wording() {
        let e = ApiError::not_found("", "pods", "web");
        assert_eq!(e.message, "pods \"web\" not found");
        let s = e.to_status();
        assert_eq!(s["code"], 404);
        assert_eq!(s["reason"], "NotFound");
        assert_eq!(s["details"]["kind"], "pods");
        let d = ApiError::not_found("apps", "deployments", "x");
        assert_eq!(d.message, "deployments.apps \"x\" not found");
    }

    #[test]
    fn invalid_lists_causes() {
        let e = ApiError::invalid(
            "",
            "Service",
            "s",
            vec![Cause { reason: "FieldValueInvalid".into(), message: "Invalid value: 0: must be between 1 and 65535".into(), field: "spec.ports[0].port".into() }],
        );
        assert_eq!(e.code, 422);
        assert!(e.message.starts_with("Service \"s\" is invalid: spec.ports[0].port: Invalid value"));
        assert_eq!(e.to_status()["details"]["causes"][0]["field"], "spec.ports[0].port");
    }
}
