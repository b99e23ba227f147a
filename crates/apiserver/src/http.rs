//! The HTTPS edge: TLS with optional client certificates, authentication, authorization,
//! routing, content negotiation (JSON, Table, PartialObjectMetadata), and streaming watches.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dari_api::registry::Resource;
use futures::StreamExt;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{json, Value};
use tracing::Instrument;

use crate::auth::{Attributes, Authorizer, UserInfo};
use crate::discovery;
use crate::error::{ApiError, ApiResult};
use crate::request::{self, ResourceRequest, Target};
use crate::rest::{Api, DeleteOptions, FieldValidation, ListQuery, WriteOptions, Written};
use crate::watch::{self, WatchQuery};

/// Largest request body accepted (as kube-apiserver: 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// Response body type.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Shared state of the HTTP layer.
pub struct Http {
    /// The REST layer.
    pub api: Arc<Api>,
    /// Who may do what.
    pub authorizer: Arc<dyn Authorizer>,
    /// `host:port` advertised in `/api`.
    pub advertise: String,
    /// Bookmark interval for watches.
    pub bookmark_interval: Duration,
    /// The cluster PKI (join endpoint, kubelet client).
    pub pki: Arc<dari_pki::Pki>,
    /// The secret half of the node join token (`<ca hash>::<secret>`).
    pub join_secret: String,
    /// TLS client for the node agents' streaming endpoints (logs, exec, attach, port-forward).
    pub kubelet: Arc<crate::nodeproxy::KubeletClient>,
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed_unsync()
}

fn json_response(code: u16, v: &Value, warnings: &[String]) -> Response<Body> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut b = Response::builder().status(code).header(header::CONTENT_TYPE, "application/json");
    for w in warnings {
        b = b.header("Warning", format!("299 - \"{}\"", w.replace('"', "\\\"")));
    }
    b.body(full(body)).unwrap_or_else(|_| Response::new(full("{}")))
}

fn error_response(e: &ApiError) -> Response<Body> {
    let mut r = json_response(e.code, &e.to_status(), &[]);
    if let Some(s) = e.retry_after {
        if let Ok(v) = header::HeaderValue::from_str(&s.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    r
}

fn text(code: u16, s: &str) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(full(s.to_string()))
        .unwrap_or_else(|_| Response::new(full("")))
}

/// Percent-decodes a query component (`+` is a space).
fn pct_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parsed query string.
#[derive(Default, Debug)]
pub struct Query(pub(crate) Vec<(String, String)>);

impl Query {
    /// Parses `a=b&c=d`.
    pub fn parse(q: Option<&str>) -> Self {
        Query(
            q.unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (pct_decode(k), pct_decode(v)),
                    None => (pct_decode(p), String::new()),
                })
                .collect(),
        )
    }

    /// First value of a key.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.as_str())
    }

    fn flag(&self, k: &str) -> bool {
        // Go's strconv.ParseBool, as kube-apiserver parses query booleans
        matches!(self.get(k), Some("true" | "1" | "t" | "T" | "TRUE" | "True" | ""))
    }

    fn list(&self) -> ApiResult<ListQuery> {
        let limit = match self.get("limit") {
            Some(l) if !l.is_empty() => l.parse::<i64>().map_err(|_| ApiError::bad_request(format!("invalid limit: {l}")))?.max(0) as usize,
            _ => 0,
        };
        Ok(ListQuery {
            label_selector: self.get("labelSelector").map(str::to_string),
            field_selector: self.get("fieldSelector").map(str::to_string),
            limit,
            continue_token: self.get("continue").map(str::to_string),
            resource_version: self.get("resourceVersion").map(str::to_string).filter(|s| !s.is_empty()),
            resource_version_match: self.get("resourceVersionMatch").map(str::to_string),
        })
    }

    fn write(&self) -> ApiResult<WriteOptions> {
        let field_validation = match self.get("fieldValidation") {
            None | Some("") | Some("Warn") => FieldValidation::Warn,
            Some("Strict") => FieldValidation::Strict,
            Some("Ignore") => FieldValidation::Ignore,
            Some(o) => return Err(ApiError::bad_request(format!("fieldValidation must be one of Ignore, Warn or Strict, got {o}"))),
        };
        Ok(WriteOptions {
            dry_run: dry_run(self)?,
            field_validation,
            field_manager: self.get("fieldManager").map(str::to_string),
            force: self.flag("force") && self.get("force").is_some(),
        })
    }
}

fn dry_run(q: &Query) -> ApiResult<bool> {
    match q.get("dryRun") {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(o) => Err(ApiError::bad_request(format!("unsupported dry run value: {o}"))),
    }
}

/// How the client wants objects rendered.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Render {
    Json,
    Table,
    Metadata,
}

fn render_of(accept: &str) -> Render {
    // the first acceptable clause wins, as in kube-apiserver's negotiation
    for clause in accept.split(',') {
        let c = clause.trim();
        if c.contains("as=Table") {
            return Render::Table;
        }
        if c.contains("as=PartialObjectMetadata") {
            return Render::Metadata;
        }
        if c.starts_with("application/json") || c.starts_with("*/*") || c.starts_with("application/yaml") || c.is_empty() {
            return Render::Json;
        }
    }
    Render::Json
}

fn partial(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata").cloned().unwrap_or(json!({}))})
}

impl Http {
    /// Handles one request.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>, user: Option<UserInfo>, peer: SocketAddr) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let span = tracing::info_span!("request", %method, path = %path, user = user.as_ref().map(|u| u.name.as_str()).unwrap_or("anonymous"), %peer);
        let started = std::time::Instant::now();
        let resp = match self.route(req, user).instrument(span.clone()).await {
            Ok(r) => r,
            Err(e) => error_response(&e),
        };
        span.in_scope(|| tracing::debug!(code = resp.status().as_u16(), ms = started.elapsed().as_millis() as u64, "done"));
        resp
    }

    async fn route(self: Arc<Self>, req: Request<Incoming>, user: Option<UserInfo>) -> ApiResult<Response<Body>> {
        let path = req.uri().path().to_string();
        let query = Query::parse(req.uri().query());
        match path.as_str() {
            "/healthz" | "/livez" | "/readyz" => {
                // ready = the store answers
                self.api.store().current_revision().await.map_err(|e| ApiError::unavailable(format!("store: {e}")))?;
                return Ok(text(200, "ok"));
            }
            "/version" | "/version/" => return Ok(json_response(200, &discovery::version(), &[])),
            _ => {}
        }
        if path.starts_with("/healthz/") || path.starts_with("/livez/") || path.starts_with("/readyz/") {
            return Ok(text(200, "ok"));
        }
        if path == "/cacerts" {
            // the CA itself is public; agents check it against the hash in their join token
            return Ok(text(200, self.pki.ca_pem()));
        }
        if path == crate::join::JOIN_PATH && req.method() == Method::POST {
            let auth = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let body = read_body(req).await?;
            return crate::join::issue(&self.pki, &self.join_secret, &auth, user.as_ref(), &body).map(|v| json_response(200, &v, &[]));
        }
        let Some(user) = user else { return Err(ApiError::unauthorized()) };
        let accept = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let method = req.method().clone();
        if method == Method::GET {
            let wants_aggregated = accept.split(',').next().is_some_and(|c| c.contains("as=APIGroupDiscoveryList"));
            let discovery_ct = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
            match path.trim_end_matches('/') {
                "/api" if wants_aggregated => return Ok(with_ct(json_response(200, &discovery::aggregated(true), &[]), discovery_ct)),
                "/apis" if wants_aggregated => return Ok(with_ct(json_response(200, &discovery::aggregated(false), &[]), discovery_ct)),
                "/api" => return Ok(json_response(200, &discovery::core_versions(&self.advertise), &[])),
                "/apis" => return Ok(json_response(200, &discovery::group_list(), &[])),
                "/openapi/v3" => return Ok(json_response(200, &discovery::openapi_v3_index(), &[])),
                "/metrics" => return Ok(text(200, &self.metrics().await)),
                _ => {}
            }
            if let Some(gv) = path.strip_prefix("/openapi/v3/") {
                return match discovery::openapi_v3_doc(gv) {
                    Some(doc) => Ok(Response::builder()
                        .status(200)
                        .header(header::CONTENT_TYPE, "application/json")
                        .header(header::CACHE_CONTROL, "public, immutable")
                        .body(full(doc))
                        .map_err(|e| ApiError::internal(e.to_string()))?),
                    None => Err(ApiError::new(404, "NotFound", "the server could not find the requested resource")),
                };
            }
            let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
            match parts.as_slice() {
                ["api", v] => return discovery::resource_list("", v).map(|l| json_response(200, &l, &[])).ok_or_else(not_found_path),
                ["apis", g] => return discovery::group(g).map(|l| json_response(200, &l, &[])).ok_or_else(not_found_path),
                ["apis", g, v] => return discovery::resource_list(g, v).map(|l| json_response(200, &l, &[])).ok_or_else(not_found_path),
                _ => {}
            }
        }
        let rr = match request::parse(&path)? {
            Target::Resource(rr) => rr,
            Target::Other => return Err(not_found_path()),
        };
        let verb = verb_of(&method, &rr, &query);
        let attrs = Attributes { verb, group: rr.resource.group, resource: rr.resource.plural, subresource: rr.subresource.clone(), namespace: rr.namespace.clone(), name: rr.name.clone() };
        if !self.authorizer.authorize(&user, &attrs) {
            return Err(ApiError::forbidden(format!(
                "{} \"{}\" is forbidden: User \"{}\" cannot {} resource \"{}\" in API group \"{}\"",
                rr.resource.plural,
                rr.name.clone().unwrap_or_default(),
                user.name,
                verb,
                rr.resource.plural,
                rr.resource.group
            )));
        }
        let render = render_of(&accept);
        let include_object = match query.get("includeObject") {
            Some("None") => dari_table::IncludeObject::None,
            Some("Object") => dari_table::IncludeObject::Object,
            _ => dari_table::IncludeObject::Metadata,
        };
        if matches!(rr.subresource.as_deref(), Some("exec" | "attach" | "portforward")) {
            let pod = self.api.get(rr.resource, rr.namespace.as_deref(), rr.name.as_deref().unwrap_or("")).await?;
            let sub = rr.subresource.clone().unwrap_or_default();
            return crate::nodeproxy::upgrade(&self.api, &self.kubelet, &pod, &sub, req).await;
        }
        let ct = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/json").to_string();
        let body = if method == Method::POST || method == Method::PUT || method == Method::PATCH || method == Method::DELETE {
            read_body(req).await?
        } else {
            Bytes::new()
        };
        let r = rr.resource;
        let ns = rr.namespace.as_deref();
        match (verb, rr.subresource.as_deref()) {
            ("get", Some("scale")) => Ok(json_response(200, &self.api.scale(r, ns, rr.name.as_deref().unwrap_or("")).await?, &[])),
            ("get", Some("log")) => {
                let pod = self.api.get(r, ns, rr.name.as_deref().unwrap_or("")).await?;
                crate::nodeproxy::logs(&self.api, &self.kubelet, &pod, &query).await
            }
            ("get", sub) => {
                let obj = self.api.get(r, ns, rr.name.as_deref().unwrap_or("")).await?;
                let _ = sub;
                Ok(json_response(200, &self.render_one(r, obj, render, include_object), &[]))
            }
            ("list", _) => {
                let lq = query.list()?;
                let (items, meta) = self.api.list(r, ns, &lq).await?;
                Ok(json_response(200, &self.render_list(r, items, meta, render, include_object), &[]))
            }
            ("watch", _) => self.watch(r, rr.namespace.clone(), rr.name.clone(), &query, render, include_object).await,
            ("create", Some("binding")) => {
                let b = decode_body(&ct, &body)?;
                Ok(json_response(201, &self.api.bind(r, ns, rr.name.as_deref().unwrap_or(""), b).await?, &[]))
            }
            ("create", Some("eviction")) => {
                let (obj, _) = self.api.delete(r, ns, rr.name.as_deref().unwrap_or(""), &DeleteOptions::default()).await?;
                let _ = obj;
                Ok(json_response(201, &json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Success","code":201}), &[]))
            }
            ("create", None) => {
                let obj = decode_body(&ct, &body)?;
                let w = self.api.create(r, ns, obj, &query.write()?).await?;
                Ok(self.written(r, w, render, include_object))
            }
            ("update", sub) => {
                let obj = decode_body(&ct, &body)?;
                let w = self.api.update(r, ns, rr.name.as_deref().unwrap_or(""), sub, obj, &query.write()?).await?;
                Ok(self.written(r, w, render, include_object))
            }
            ("patch", sub) => {
                let w = self.api.patch(r, ns, rr.name.as_deref().unwrap_or(""), sub, &ct, &body, &query.write()?).await?;
                Ok(self.written(r, w, render, include_object))
            }
            ("delete", None) => {
                let opts = delete_options(&query, &body)?;
                let (obj, gone) = self.api.delete(r, ns, rr.name.as_deref().unwrap_or(""), &opts).await?;
                let _ = gone;
                Ok(json_response(200, &self.render_one(r, obj, render, include_object), &[]))
            }
            ("deletecollection", None) => {
                let opts = delete_options(&query, &body)?;
                let (items, meta) = self.api.delete_collection(r, ns, &query.list()?, &opts).await?;
                Ok(json_response(200, &self.render_list(r, items, meta, render, include_object), &[]))
            }
            (v, sub) => Err(ApiError::method_not_supported(&format!("{}{}", r.plural, sub.map(|s| format!("/{s}")).unwrap_or_default()), v)),
        }
    }

    fn written(&self, r: &Resource, w: Written, render: Render, inc: dari_table::IncludeObject) -> Response<Body> {
        let code = if w.created { 201 } else { 200 };
        json_response(code, &self.render_one(r, w.object, render, inc), &w.warnings)
    }

    fn render_one(&self, r: &Resource, obj: Value, render: Render, inc: dari_table::IncludeObject) -> Value {
        match render {
            Render::Json => obj,
            Render::Metadata => partial(&obj),
            Render::Table => {
                let rv = obj.pointer("/metadata/resourceVersion").cloned();
                let mut t = dari_table::table(r.group, r.plural, std::slice::from_ref(&obj), &table_opts(inc, false));
                if let Some(rv) = rv {
                    t["metadata"]["resourceVersion"] = rv;
                }
                t
            }
        }
    }

    fn render_list(&self, r: &Resource, items: Vec<Value>, meta: Value, render: Render, inc: dari_table::IncludeObject) -> Value {
        match render {
            Render::Table => {
                let mut t = dari_table::table(r.group, r.plural, &items, &table_opts(inc, false));
                t["metadata"] = meta;
                t
            }
            Render::Metadata => json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "items": items.iter().map(partial).collect::<Vec<_>>()}),
            Render::Json => json!({"kind": format!("{}List", r.kind), "apiVersion": r.api_version(), "metadata": meta, "items": items}),
        }
    }

    async fn watch(&self, r: &'static Resource, ns: Option<String>, name: Option<String>, query: &Query, render: Render, inc: dari_table::IncludeObject) -> ApiResult<Response<Body>> {
        let mut lq = query.list()?;
        if let Some(n) = name {
            // GET …/pods/x?watch=1 is a watch on one name
            let sel = format!("metadata.name={n}");
            lq.field_selector = Some(match lq.field_selector.take().filter(|s| !s.is_empty()) {
                Some(s) => format!("{s},{sel}"),
                None => sel,
            });
        }
        let wq = WatchQuery {
            list: lq,
            bookmarks: query.flag("allowWatchBookmarks") && query.get("allowWatchBookmarks").is_some(),
            send_initial_events: query.get("sendInitialEvents").map(|v| v == "true"),
            timeout: query.get("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()).map(Duration::from_secs),
            bookmark_interval: self.bookmark_interval,
        };
        let events = watch::watch(self.api.clone(), r, ns, wq).await?;
        let mut first = true;
        let lines = events.map(move |ev| {
            let object = match (render, ev.kind) {
                (_, "ERROR") | (_, "BOOKMARK") => ev.object,
                (Render::Json, _) => ev.object,
                (Render::Metadata, _) => partial(&ev.object),
                (Render::Table, _) => {
                    let rv = ev.object.pointer("/metadata/resourceVersion").cloned();
                    let mut t = dari_table::table(r.group, r.plural, std::slice::from_ref(&ev.object), &table_opts(inc, !first));
                    first = false;
                    if let Some(rv) = rv {
                        t["metadata"]["resourceVersion"] = rv;
                    }
                    t
                }
            };
            let mut line = serde_json::to_vec(&json!({"type": ev.kind, "object": object})).unwrap_or_default();
            line.push(b'\n');
            Ok::<_, Infallible>(Frame::data(Bytes::from(line)))
        });
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::TRANSFER_ENCODING, "chunked")
            .body(BodyExt::boxed_unsync(StreamBody::new(lines)))
            .map_err(|e| ApiError::internal(e.to_string()))
    }

    async fn metrics(&self) -> String {
        let rev = self.api.store().current_revision().await.unwrap_or(-1);
        format!("# HELP dari_store_revision Current datastore revision.\n# TYPE dari_store_revision gauge\ndari_store_revision {rev}\n")
    }
}

fn with_ct(mut r: Response<Body>, ct: &'static str) -> Response<Body> {
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(ct));
    r
}

fn table_opts(inc: dari_table::IncludeObject, no_headers: bool) -> dari_table::TableOptions {
    dari_table::TableOptions { include_object: inc, now: chrono::Utc::now(), no_headers }
}

fn not_found_path() -> ApiError {
    ApiError::new(404, "NotFound", "the server could not find the requested resource")
}

fn verb_of(method: &Method, rr: &ResourceRequest, q: &Query) -> &'static str {
    let watch = q.flag("watch") && q.get("watch").is_some();
    match *method {
        Method::GET if watch => "watch",
        Method::GET if rr.name.is_none() => "list",
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if rr.name.is_none() => "deletecollection",
        Method::DELETE => "delete",
        _ => "unknown",
    }
}

async fn read_body(req: Request<Incoming>) -> ApiResult<Bytes> {
    if let Some(len) = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok()) {
        if len > MAX_BODY {
            return Err(ApiError::too_large(MAX_BODY));
        }
    }
    let limited = Limited::new(req.into_body(), MAX_BODY);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(ApiError::too_large(MAX_BODY)),
        Err(e) => Err(ApiError::bad_request(format!("reading request body: {e}"))),
    }
}

/// Decodes a JSON or YAML body.
pub fn decode_body(ct: &str, body: &[u8]) -> ApiResult<Value> {
    let ct = ct.split(';').next().unwrap_or("").trim();
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    match ct {
        "application/yaml" | "application/x-yaml" | "text/yaml" => {
            serde_yaml::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
        }
        "application/json" | "" | "*/*" => serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding JSON: {e}"))),
        // kubectl's typed commands (create configmap|deployment|ns…, run, expose) send protobuf
        "application/vnd.kubernetes.protobuf" => dari_kubeproto::decode(body).map_err(|e| ApiError::bad_request(format!("error decoding protobuf body: {e}"))),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

fn delete_options(q: &Query, body: &[u8]) -> ApiResult<DeleteOptions> {
    let mut o = DeleteOptions { dry_run: dry_run(q)?, ..Default::default() };
    if !body.iter().all(u8::is_ascii_whitespace) {
        let v: Value = serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?;
        o.grace_period = v.get("gracePeriodSeconds").and_then(Value::as_i64);
        o.propagation = v.get("propagationPolicy").and_then(Value::as_str).map(str::to_string);
        if v.get("orphanDependents").and_then(Value::as_bool) == Some(true) && o.propagation.is_none() {
            o.propagation = Some("Orphan".into());
        }
        o.uid = v.pointer("/preconditions/uid").and_then(Value::as_str).map(str::to_string);
        o.resource_version = v.pointer("/preconditions/resourceVersion").and_then(Value::as_str).map(str::to_string);
        if v.get("dryRun").and_then(Value::as_array).is_some_and(|a| a.iter().any(|x| x == "All")) {
            o.dry_run = true;
        }
    }
    if let Some(g) = q.get("gracePeriodSeconds").and_then(|g| g.parse().ok()) {
        o.grace_period = Some(g);
    }
    if let Some(p) = q.get("propagationPolicy") {
        o.propagation = Some(p.to_string());
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = Query::parse(Some("labelSelector=app%3Dweb%2Ctier+in+(a)&watch=1&limit=500"));
        assert_eq!(q.get("labelSelector"), Some("app=web,tier in (a)"));
        assert!(q.flag("watch"));
        assert_eq!(q.list().expect("list query").limit, 500);
        assert!(Query::parse(Some("limit=x")).list().is_err());
        assert_eq!(pct_decode("%zz%2"), "%zz%2");
    }

    #[test]
    fn negotiation() {
        assert_eq!(render_of("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"), Render::Table);
        assert_eq!(render_of("application/json"), Render::Json);
        assert_eq!(render_of("application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"), Render::Metadata);
    }

    #[test]
    fn bodies() {
        assert_eq!(decode_body("application/json", b"{\"a\":1}").expect("json")["a"], 1);
        assert_eq!(decode_body("application/yaml", b"a: 1\n").expect("yaml")["a"], 1);
        assert_eq!(decode_body("application/json", b"{").err().map(|e| e.code), Some(400));
        assert_eq!(decode_body("application/json", b"  ").err().map(|e| e.code), Some(400));
        assert_eq!(decode_body("text/html", b"x").err().map(|e| e.code), Some(415));
    }
}
