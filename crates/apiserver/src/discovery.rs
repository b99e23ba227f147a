//! Discovery (`/api`, `/apis`, per group-version resource lists, aggregated discovery v2),
//! `/version`, and the OpenAPI v3 documents kubectl reads for `explain`, apply and validation.

use dari_api::registry::{self, Resource, Scope, RESOURCES};
use serde_json::{json, Value};

const VERBS: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": concat!("v1.32.0+dari-", env!("CARGO_PKG_VERSION")),
        "gitCommit": "dari",
        "gitTreeState": "clean",
        "buildDate": "2026-12-06T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("linux/{}", std::env::consts::ARCH),
    })
}

/// `/api`.
pub fn core_versions(server: &str) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}]})
}

fn group_json(g: &str) -> Value {
    let versions: Vec<&str> = {
        let mut v: Vec<&str> = RESOURCES.iter().filter(|r| r.group == g).map(|r| r.version).collect();
        v.dedup();
        v
    };
    let vs: Vec<Value> = versions.iter().map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v})).collect();
    json!({"name": g, "versions": vs, "preferredVersion": vs.first().cloned().unwrap_or(json!({}))})
}

/// `/apis`.
pub fn group_list() -> Value {
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": registry::groups().into_iter().map(group_json).collect::<Vec<_>>()})
}

/// `/apis/<group>`.
pub fn group(g: &str) -> Option<Value> {
    RESOURCES.iter().any(|r| r.group == g).then(|| {
        let mut v = group_json(g);
        v["kind"] = json!("APIGroup");
        v["apiVersion"] = json!("v1");
        v
    })
}

fn subresource_verbs(sub: &str) -> &'static [&'static str] {
    match sub {
        "status" | "scale" => &["get", "patch", "update"],
        "binding" | "eviction" => &["create"],
        "finalize" => &["update"],
        "log" => &["get"],
        "exec" | "attach" | "portforward" => &["create", "get"],
        _ => &["get"],
    }
}

fn subresource_kind(r: &Resource, sub: &str) -> (&'static str, &'static str, &'static str) {
    match sub {
        "scale" => ("autoscaling", "v1", "Scale"),
        "binding" => ("", "v1", "Binding"),
        "eviction" => ("policy", "v1", "Eviction"),
        "exec" | "attach" | "portforward" => ("", "v1", "Status"),
        _ => (r.group, r.version, r.kind),
    }
}

/// `/api/v1` or `/apis/<group>/<version>`.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let rs: Vec<&Resource> = RESOURCES.iter().filter(|r| r.group == group && r.version == version).collect();
    if rs.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for r in rs {
        let mut e = json!({
            "name": r.plural, "singularName": r.singular, "namespaced": r.scope == Scope::Namespaced,
            "kind": r.kind, "verbs": VERBS,
        });
        if !r.short_names.is_empty() {
            e["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            e["categories"] = json!(r.categories);
        }
        out.push(e);
        for sub in r.subresources {
            let (g, v, k) = subresource_kind(r, sub);
            let mut s = json!({"name": format!("{}/{}", r.plural, sub), "singularName": "", "namespaced": r.scope == Scope::Namespaced, "kind": k, "verbs": subresource_verbs(sub)});
            if g != r.group || v != r.version {
                s["group"] = json!(g);
                s["version"] = json!(v);
            }
            out.push(s);
        }
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out}))
}

/// Aggregated discovery v2 (`application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList`):
/// core for `/api`, the groups for `/apis`.
pub fn aggregated(core: bool) -> Value {
    let groups: Vec<&str> = if core { vec![""] } else { registry::groups() };
    let items: Vec<Value> = groups
        .into_iter()
        .map(|g| {
            let mut versions: Vec<&str> = RESOURCES.iter().filter(|r| r.group == g).map(|r| r.version).collect();
            versions.dedup();
            let vs: Vec<Value> = versions
                .into_iter()
                .map(|v| {
                    let resources: Vec<Value> = RESOURCES
                        .iter()
                        .filter(|r| r.group == g && r.version == v)
                        .map(|r| {
                            let mut e = json!({
                                "resource": r.plural,
                                "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                                "scope": if r.scope == Scope::Namespaced { "Namespaced" } else { "Cluster" },
                                "singularResource": r.singular,
                                "verbs": VERBS,
                            });
                            if !r.short_names.is_empty() {
                                e["shortNames"] = json!(r.short_names);
                            }
                            if !r.categories.is_empty() {
                                e["categories"] = json!(r.categories);
                            }
                            if !r.subresources.is_empty() {
                                e["subresources"] = json!(r
                                    .subresources
                                    .iter()
                                    .map(|s| {
                                        let (sg, sv, sk) = subresource_kind(r, s);
                                        json!({"subresource": s, "responseKind": {"group": sg, "version": sv, "kind": sk}, "verbs": subresource_verbs(s)})
                                    })
                                    .collect::<Vec<_>>());
                            }
                            e
                        })
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": g}, "versions": vs})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

/// `/openapi/v3`: the index of group-version documents.
pub fn openapi_v3_index() -> Value {
    let mut paths = serde_json::Map::new();
    let mut gvs: Vec<(String, String)> = RESOURCES
        .iter()
        .map(|r| (if r.group.is_empty() { format!("api/{}", r.version) } else { format!("apis/{}/{}", r.group, r.version) }, r.api_version()))
        .collect();
    gvs.dedup();
    for (p, _) in gvs {
        let url = format!("/openapi/v3/{p}?hash={}", openapi_hash());
        paths.insert(p, json!({"serverRelativeURL": url}));
    }
    json!({"paths": paths})
}

fn openapi_hash() -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(dari_api::openapi::SWAGGER_JSON.as_bytes());
    d.iter().take(16).map(|b| format!("{b:02X}")).collect()
}

/// `/openapi/v3/<api/v1 | apis/g/v>`: paths with the PATCH operations kubectl's
/// fieldValidation check looks for, and every schema as `components.schemas`.
pub fn openapi_v3_doc(gv_path: &str) -> Option<String> {
    let (group, version) = match gv_path.trim_matches('/').split('/').collect::<Vec<_>>().as_slice() {
        ["api", v] => (String::new(), v.to_string()),
        ["apis", g, v] => (g.to_string(), v.to_string()),
        _ => return None,
    };
    let rs: Vec<&Resource> = RESOURCES.iter().filter(|r| r.group == group && r.version == version).collect();
    if rs.is_empty() {
        return None;
    }
    let mut paths = serde_json::Map::new();
    let params = json!([
        {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
        {"name": "force", "in": "query", "schema": {"type": "boolean"}},
    ]);
    let base = if group.is_empty() { format!("/api/{version}") } else { format!("/apis/{group}/{version}") };
    for r in rs {
        let path = match r.scope {
            Scope::Namespaced => format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural),
            Scope::Cluster => format!("{base}/{}/{{name}}", r.plural),
        };
        let def = dari_api::openapi::definition_for(r.group, r.version, r.kind).unwrap_or("");
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let ok = json!({"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{def}")}}}}});
        paths.insert(
            path,
            json!({
                "get": {"operationId": format!("read{}", r.kind), "x-kubernetes-action": "get", "x-kubernetes-group-version-kind": gvk, "responses": ok},
                "put": {"operationId": format!("replace{}", r.kind), "x-kubernetes-action": "put", "x-kubernetes-group-version-kind": gvk, "parameters": params, "responses": ok},
                "patch": {"operationId": format!("patch{}", r.kind), "x-kubernetes-action": "patch", "x-kubernetes-group-version-kind": gvk, "parameters": params, "responses": ok},
                "delete": {"operationId": format!("delete{}", r.kind), "x-kubernetes-action": "delete", "x-kubernetes-group-version-kind": gvk, "responses": ok},
            }),
        );
    }
    // components.schemas: the swagger definitions, refs rewritten; spliced as text to avoid
    // holding a parsed copy of the whole document in memory
    let swagger = dari_api::openapi::SWAGGER_JSON;
    let start = swagger.find("\"definitions\":")? + "\"definitions\":".len();
    let defs = &swagger[start..swagger.len() - 1];
    let defs = defs.replace("#/definitions/", "#/components/schemas/");
    let head = json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"}, "paths": paths});
    let head = serde_json::to_string(&head).ok()?;
    Some(format!("{},\"components\":{{\"schemas\":{}}}}}", &head[..head.len() - 1], defs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_v3_doc_is_valid_json_with_gvk_paths() {
        let doc = openapi_v3_doc("api/v1").expect("core doc");
        let v: Value = serde_json::from_str(&doc).expect("valid json");
        assert!(v["components"]["schemas"]["io.k8s.api.core.v1.Pod"].is_object());
        let p = &v["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
        assert_eq!(p["x-kubernetes-group-version-kind"]["kind"], "Pod");
        assert!(!doc.contains("#/definitions/"));
        assert!(openapi_v3_doc("apis/nope/v1").is_none());
    }

    #[test]
    fn discovery_lists_subresources() {
        let l = resource_list("", "v1").expect("core");
        let names: Vec<&str> = l["resources"].as_array().expect("array").iter().filter_map(|r| r["name"].as_str()).collect();
        assert!(names.contains(&"pods/status") && names.contains(&"services") && names.contains(&"pods/log"));
        let a = resource_list("apps", "v1").expect("apps");
        let scale = a["resources"].as_array().expect("array").iter().find(|r| r["name"] == "deployments/scale").cloned().expect("scale");
        assert_eq!(scale["group"], "autoscaling");
        assert_eq!(aggregated(false)["items"].as_array().map(Vec::len), Some(registry::groups().len()));
    }
}
