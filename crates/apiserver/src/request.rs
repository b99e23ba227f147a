//! Turning a URL into what it asks for, as kube-apiserver's `RequestInfoFactory` does.

use dari_api::registry::{self, Resource, Scope};

use crate::error::{ApiError, ApiResult};

/// A request against a resource.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceRequest {
    /// The resource.
    pub resource: &'static Resource,
    /// Namespace from the URL, if any.
    pub namespace: Option<String>,
    /// Object name, if any.
    pub name: Option<String>,
    /// Subresource, if any (`status`, `scale`, `binding`, `log` ...).
    pub subresource: Option<String>,
}

/// What a path addresses.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// A resource (collection, object or subresource).
    Resource(ResourceRequest),
    /// Anything else (discovery, health, openapi): handled by the caller.
    Other,
}

/// Parses an API path (without the query).
pub fn parse(path: &str) -> ApiResult<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').filter(|p| !p.is_empty()).collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] if !rest.is_empty() => ("", *v, rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (*g, *v, rest),
        _ => return Ok(Target::Other),
    };
    let mut rest: &[&str] = rest;
    let mut namespace = None;
    if rest[0] == "namespaces" && rest.len() > 1 {
        namespace = Some(rest[1].to_string());
        if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
            rest = &rest[2..];
        } else {
            // `/api/v1/namespaces/{name}[/status]`: the namespace object itself.
            let ns = find(group, version, "namespaces")?;
            return Ok(Target::Resource(ResourceRequest {
                resource: ns,
                namespace: None,
                name: Some(rest[1].to_string()),
                subresource: rest.get(2).map(|s| s.to_string()),
            }));
        }
    }
    let resource = find(group, version, rest[0])?;
    if resource.scope == Scope::Cluster && namespace.is_some() {
        return Err(ApiError::not_found(group, rest[0], ""));
    }
    let name = rest.get(1).map(|s| s.to_string());
    let subresource = rest.get(2).map(|s| s.to_string());
    if rest.len() > 3 {
        return Err(ApiError::new(404, "NotFound", format!("the server could not find the requested resource ({path})")));
    }
    if let Some(sub) = &subresource {
        if !resource.subresources.contains(&sub.as_str()) {
            return Err(ApiError::new(404, "NotFound", format!("the server could not find the requested resource ({path})")));
        }
    }
    Ok(Target::Resource(ResourceRequest { resource, namespace, name, subresource }))
}

fn find(group: &str, version: &str, plural: &str) -> ApiResult<&'static Resource> {
    registry::find(group, version, plural)
        .ok_or_else(|| ApiError::new(404, "NotFound", "the server could not find the requested resource"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rr(path: &str) -> ResourceRequest {
        match parse(path) {
            Ok(Target::Resource(r)) => r,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn core_and_group_paths() {
        let r = rr("/api/v1/namespaces/default/pods/web/status");
        assert_eq!((r.resource.plural, r.namespace.as_deref(), r.name.as_deref(), r.subresource.as_deref()), ("pods", Some("default"), Some("web"), Some("status")));
        let r = rr("/apis/apps/v1/deployments");
        assert_eq!((r.resource.plural, r.namespace, r.name), ("deployments", None, None));
        let r = rr("/api/v1/namespaces/kube-system");
        assert_eq!((r.resource.plural, r.name.as_deref()), ("namespaces", Some("kube-system")));
        let r = rr("/api/v1/namespaces/x/finalize");
        assert_eq!((r.resource.plural, r.name.as_deref(), r.subresource.as_deref()), ("namespaces", Some("x"), Some("finalize")));
        let r = rr("/api/v1/nodes/n1/status");
        assert_eq!((r.resource.plural, r.name.as_deref(), r.subresource.as_deref()), ("nodes", Some("n1"), Some("status")));
        assert_eq!(parse("/api").ok(), Some(Target::Other));
        assert_eq!(parse("/apis/apps/v1").ok(), Some(Target::Other));
    }

    #[test]
    fn unknown_resources_are_404() {
        assert_eq!(parse("/api/v1/foos").err().map(|e| e.code), Some(404));
        assert_eq!(parse("/api/v1/namespaces/a/pods/b/nope").err().map(|e| e.code), Some(404));
        assert_eq!(parse("/api/v1/namespaces/a/nodes/b").err().map(|e| e.code), Some(404));
    }
}
