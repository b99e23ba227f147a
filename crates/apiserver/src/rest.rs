//! The REST semantics of kube-apiserver over a [`Store`]: create, get, list, update, patch,
//! delete, deletecollection, with defaulting, validation, admission and optimistic concurrency.
//!
//! Objects are stored as JSON without `metadata.resourceVersion`; on every read the key's
//! modRevision becomes the resourceVersion, exactly as kube-apiserver does on etcd.

use std::net::IpAddr;
use std::sync::Arc;

use dari_api::registry::{self, Resource, Scope};
use dari_store::{KeyValue, ListOptions, Revision, Store, StoreError};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::alloc::{IpAllocator, PortAllocator};
use crate::claims::{Claim, ClaimError, Owner};
use crate::error::{ApiError, ApiResult, Cause};
use crate::object::{meta_mut, meta_str, name, now_rfc3339, random_suffix, same_ignoring_rv, spec_part};

/// Cluster-level settings the REST layer needs.
#[derive(Clone, Debug)]
pub struct ApiSettings {
    /// `--service-cluster-ip-range`.
    pub service_cidr: ipnet::Ipv4Net,
    /// `--service-node-port-range`.
    pub node_ports: (u16, u16),
    /// The address the `kubernetes` Service's endpoints point at.
    pub advertise_address: IpAddr,
    /// The secure port.
    pub secure_port: u16,
}

/// Options shared by writes.
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    /// `dryRun=All`.
    pub dry_run: bool,
    /// `fieldValidation`.
    pub field_validation: FieldValidation,
    /// `fieldManager`.
    pub field_manager: Option<String>,
    /// `force` (server-side apply).
    pub force: bool,
}

/// `fieldValidation` query parameter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FieldValidation {
    /// Unknown fields fail the request.
    Strict,
    /// Unknown fields come back as warnings (the default).
    #[default]
    Warn,
    /// Unknown fields are dropped silently.
    Ignore,
}

/// `DeleteOptions`, from the query and the body.
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    /// `gracePeriodSeconds`.
    pub grace_period: Option<i64>,
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub resource_version: Option<String>,
    /// `propagationPolicy`.
    pub propagation: Option<String>,
    /// `dryRun=All`.
    pub dry_run: bool,
}

/// List parameters.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    /// `labelSelector`.
    pub label_selector: Option<String>,
    /// `fieldSelector`.
    pub field_selector: Option<String>,
    /// `limit` (0 = all).
    pub limit: usize,
    /// `continue`.
    pub continue_token: Option<String>,
    /// `resourceVersion`.
    pub resource_version: Option<String>,
    /// `resourceVersionMatch`.
    pub resource_version_match: Option<String>,
}

/// A write's result: the object and any warnings for the `Warning` header.
#[derive(Clone, Debug)]
pub struct Written {
    /// The object as stored (or as it would be, for dry runs).
    pub object: Value,
    /// Warnings (unknown fields ...).
    pub warnings: Vec<String>,
    /// Whether an object was created (201 instead of 200).
    pub created: bool,
}

struct Allocations {
    ips: IpAllocator,
    ports: PortAllocator,
}

/// Compiled selectors of a list or watch.
pub struct Filter {
    labels: Option<dari_api::selector::LabelSelector>,
    fields: Option<dari_api::selector::FieldSelector>,
}

impl Filter {
    /// Parses the selectors of a query; bad selectors are 400.
    pub fn new(resource: &Resource, q: &ListQuery) -> ApiResult<Self> {
        let labels = match q.label_selector.as_deref().filter(|s| !s.trim().is_empty()) {
            Some(s) => Some(dari_api::selector::LabelSelector::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))?),
            None => None,
        };
        let fields = match q.field_selector.as_deref().filter(|s| !s.trim().is_empty()) {
            Some(s) => {
                let f = dari_api::selector::FieldSelector::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))?;
                f.validate(resource.kind).map_err(|e| ApiError::bad_request(e.to_string()))?;
                Some(f)
            }
            None => None,
        };
        Ok(Self { labels, fields })
    }

    /// Whether an object passes.
    pub fn matches(&self, obj: &Value) -> bool {
        if let Some(l) = &self.labels {
            let empty = json!({});
            let labels = obj.get("metadata").and_then(|m| m.get("labels")).unwrap_or(&empty);
            if !l.matches(labels) {
                return false;
            }
        }
        if let Some(f) = &self.fields {
            if !f.matches(obj) {
                return false;
            }
        }
        true
    }

    /// Whether there is any selector.
    pub fn is_empty(&self) -> bool {
        self.labels.is_none() && self.fields.is_none()
    }
}

/// The REST layer.
pub struct Api {
    store: Arc<dyn Store>,
    settings: ApiSettings,
    alloc: Mutex<Allocations>,
    repair_suspects: Mutex<std::collections::HashMap<Claim, Revision>>,
}

/// Decodes a stored value into an object whose resourceVersion is the key's modRevision.
pub fn decode(kv: &KeyValue) -> ApiResult<Value> {
    decode_at(&kv.value, kv.mod_revision, &kv.key)
}

/// Decodes stored bytes and stamps a resourceVersion.
pub fn decode_at(bytes: &[u8], rv: Revision, key: &str) -> ApiResult<Value> {
    let mut obj: Value = serde_json::from_slice(bytes).map_err(|e| ApiError::internal(format!("decoding stored object {key}: {e}")))?;
    meta_mut(&mut obj).insert("resourceVersion".into(), json!(rv.to_string()));
    Ok(obj)
}

fn encode(obj: &Value) -> ApiResult<Vec<u8>> {
    let mut o = obj.clone();
    meta_mut(&mut o).remove("resourceVersion");
    serde_json::to_vec(&o).map_err(|e| ApiError::internal(format!("encoding object: {e}")))
}

/// Kinds whose metadata.generation tracks spec changes.
fn has_generation(kind: &str) -> bool {
    matches!(kind, "Deployment" | "ReplicaSet" | "DaemonSet" | "Ingress" | "IngressClass" | "NetworkPolicy" | "StatefulSet")
}

fn store_err(e: StoreError, r: &Resource, name: &str) -> ApiError {
    match e {
        StoreError::NotFound { .. } => ApiError::not_found(r.group, r.plural, name),
        StoreError::AlreadyExists { .. } => ApiError::already_exists(r.group, r.plural, name),
        StoreError::Conflict { .. } => {
            ApiError::conflict(r.group, r.plural, name, "the object has been modified; please apply your changes to the latest version and try again")
        }
        other => ApiError::from(other),
    }
}

fn causes_from(errs: Vec<dari_api::validation::FieldError>) -> Vec<Cause> {
    errs.into_iter().map(|e| Cause { reason: e.cause_type().to_string(), message: e.message.clone(), field: e.field.clone() }).collect()
}

fn invalid(r: &Resource, name: &str, field: &str, reason: &str, message: String) -> ApiError {
    ApiError::invalid(r.group, r.kind, name, vec![Cause { reason: reason.into(), message, field: field.into() }])
}

/// Continue tokens: the revision of the first page and the last key returned.
#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    v: String,
    rv: Revision,
    start: String,
}

fn encode_continue(rv: Revision, start: &str) -> String {
    use base64::Engine;
    let t = ContinueToken { v: "meta.k8s.io/v1".into(), rv, start: start.into() };
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&t).unwrap_or_default())
}

fn decode_continue(s: &str, prefix: &str) -> ApiResult<ContinueToken> {
    use base64::Engine;
    let bad = || ApiError::bad_request("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).map_err(|_| bad())?;
    let t: ContinueToken = serde_json::from_slice(&raw).map_err(|_| bad())?;
    if t.v != "meta.k8s.io/v1" || !t.start.starts_with(prefix) || t.rv <= 0 {
        return Err(bad());
    }
    Ok(t)
}

impl Api {
    /// Builds the REST layer; the allocators are rebuilt from the stored Services and claims.
    pub async fn new(store: Arc<dyn Store>, settings: ApiSettings) -> ApiResult<Self> {
        let ips = IpAllocator::new(settings.service_cidr);
        let ports = PortAllocator::new(settings.node_ports.0, settings.node_ports.1);
        let api = Self { store, settings, alloc: Mutex::new(Allocations { ips, ports }), repair_suspects: Mutex::new(Default::default()) };
        api.repair_allocations().await?;
        Ok(api)
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Settings.
    pub fn settings(&self) -> &ApiSettings {
        &self.settings
    }

    /// GET one object.
    pub async fn get(&self, r: &Resource, ns: Option<&str>, name: &str) -> ApiResult<Value> {
        let key = r.key(ns, name);
        match self.store.get(&key).await? {
            Some(kv) => decode(&kv),
            None => Err(ApiError::not_found(r.group, r.plural, name)),
        }
    }

    async fn get_kv(&self, r: &Resource, ns: Option<&str>, name: &str) -> ApiResult<KeyValue> {
        self.store.get(&r.key(ns, name)).await?.ok_or_else(|| ApiError::not_found(r.group, r.plural, name))
    }

    /// LIST, with selectors and paging. Returns the items and the list metadata.
    pub async fn list(&self, r: &Resource, ns: Option<&str>, q: &ListQuery) -> ApiResult<(Vec<Value>, Value)> {
        let filter = Filter::new(r, q)?;
        let prefix = r.prefix(ns);
        let (mut revision, mut start) = (None, None);
        if let Some(c) = q.continue_token.as_deref().filter(|c| !c.is_empty()) {
            let t = decode_continue(c, &prefix)?;
            let compacted = self.store.compacted_revision().await?;
            if t.rv < compacted {
                return Err(ApiError::gone(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                ));
            }
            revision = Some(t.rv);
            start = Some(t.start);
        } else if let (Some(rv), Some("Exact")) = (q.resource_version.as_deref(), q.resource_version_match.as_deref()) {
            let rv: Revision = rv.parse().map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?;
            revision = Some(rv);
        }
        let mut items = Vec::new();
        let mut more;
        let mut list_rev;
        let mut count;
        loop {
            let want = if q.limit == 0 { 0 } else { q.limit - items.len() };
            let page = self
                .store
                .list(ListOptions { prefix: &prefix, start_after: start.as_deref(), limit: want, revision })
                .await
                .map_err(|e| match e {
                    StoreError::Compacted { .. } => ApiError::gone("The resourceVersion for the provided list is too old."),
                    other => ApiError::from(other),
                })?;
            list_rev = page.revision;
            revision = Some(page.revision);
            more = page.more;
            count = page.count;
            for kv in &page.items {
                start = Some(kv.key.clone());
                let obj = decode(kv)?;
                if filter.matches(&obj) {
                    items.push(obj);
                }
            }
            if !more || q.limit == 0 || items.len() >= q.limit {
                break;
            }
        }
        let mut meta = json!({"resourceVersion": list_rev.to_string()});
        if more {
            if let Some(s) = &start {
                meta["continue"] = json!(encode_continue(list_rev, s));
                if filter.is_empty() {
                    let remaining = count - items.len() as i64;
                    if remaining > 0 && q.continue_token.is_none() {
                        meta["remainingItemCount"] = json!(remaining);
                    }
                }
            }
        }
        Ok((items, meta))
    }

    async fn check_namespace(&self, r: &Resource, ns: Option<&str>, obj_name: &str) -> ApiResult<()> {
        if r.scope != Scope::Namespaced {
            return Ok(());
        }
        let ns = ns.unwrap_or("default");
        let nsr = registry::find("", "v1", "namespaces").ok_or_else(|| ApiError::internal("namespaces not registered"))?;
        let nsobj = self.get(nsr, None, ns).await?;
        let terminating = nsobj.get("metadata").and_then(|m| m.get("deletionTimestamp")).is_some()
            || nsobj.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating");
        if terminating {
            let mut e = ApiError::forbidden(format!(
                "{} \"{}\" is forbidden: unable to create new content in namespace {} because it is being terminated",
                qualified(r),
                obj_name,
                ns
            ));
            e.kind = Some(r.plural.into());
            e.name = Some(obj_name.into());
            return Err(e);
        }
        Ok(())
    }

    fn check_kind(r: &Resource, obj: &mut Value) -> ApiResult<()> {
        if !obj.is_object() {
            return Err(ApiError::bad_request(format!("the object provided is not a JSON object ({})", type_name(obj))));
        }
        let api_version = r.api_version();
        match obj.get("apiVersion").and_then(Value::as_str) {
            None | Some("") => {
                obj["apiVersion"] = json!(api_version);
            }
            Some(v) if v == api_version => {}
            Some(v) => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({v}) does not match the expected API version ({api_version})"
                )))
            }
        }
        match obj.get("kind").and_then(Value::as_str) {
            None | Some("") => obj["kind"] = json!(r.kind),
            Some(k) if k == r.kind => {}
            Some(k) => return Err(ApiError::bad_request(format!("the kind in the data ({k}) does not match the expected kind ({})", r.kind))),
        }
        if let Some(md) = obj.get("metadata") {
            if !md.is_object() {
                return Err(ApiError::bad_request("metadata must be an object"));
            }
        }
        Ok(())
    }

    fn unknown_fields(r: &Resource, obj: &Value, fv: FieldValidation) -> ApiResult<Vec<String>> {
        if fv == FieldValidation::Ignore {
            return Ok(vec![]);
        }
        let Some(def) = dari_api::openapi::definition_for(r.group, r.version, r.kind) else { return Ok(vec![]) };
        let unknown = dari_api::openapi::unknown_fields(def, obj);
        if unknown.is_empty() {
            return Ok(vec![]);
        }
        let msgs: Vec<String> = unknown.iter().map(|f| format!("unknown field \"{}\"", f.trim_start_matches('.'))).collect();
        if fv == FieldValidation::Strict {
            return Err(ApiError::bad_request(format!("strict decoding error: {}", msgs.join(", "))));
        }
        Ok(msgs)
    }

    /// CREATE.
    pub async fn create(&self, r: &Resource, ns: Option<&str>, mut obj: Value, opts: &WriteOptions) -> ApiResult<Written> {
        Self::check_kind(r, &mut obj)?;
        let warnings = Self::unknown_fields(r, &obj, opts.field_validation)?;
        // namespace from the URL wins; a different one in the body is an error
        if r.scope == Scope::Namespaced {
            let url_ns = ns.unwrap_or("default");
            match meta_str(&obj, "namespace") {
                Some(n) if !n.is_empty() && n != url_ns => {
                    return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"))
                }
                _ => {
                    meta_mut(&mut obj).insert("namespace".into(), json!(url_ns));
                }
            }
        } else {
            meta_mut(&mut obj).remove("namespace");
        }
        let generate = meta_str(&obj, "generateName").map(str::to_string).filter(|g| !g.is_empty());
        let explicit = meta_str(&obj, "name").map(str::to_string).filter(|n| !n.is_empty());
        if explicit.is_none() && generate.is_none() {
            return Err(invalid(r, "", "metadata.name", "FieldValueRequired", "Required value: name or generateName is required".into()));
        }
        {
            let md = meta_mut(&mut obj);
            md.remove("resourceVersion");
            md.remove("deletionTimestamp");
            md.remove("deletionGracePeriodSeconds");
            md.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            md.insert("creationTimestamp".into(), json!(now_rfc3339()));
            if has_generation(r.kind) {
                md.insert("generation".into(), json!(1));
            } else {
                md.remove("generation");
            }
        }
        dari_api::defaults::apply_defaults(r.group, r.kind, &mut obj);
        prepare_create(r, &mut obj);
        let obj_ns = if r.scope == Scope::Namespaced { Some(ns.unwrap_or("default").to_string()) } else { None };

        for attempt in 0..16 {
            let mut candidate = obj.clone();
            let cname = match (&explicit, &generate) {
                (Some(n), _) => n.clone(),
                (None, Some(g)) => format!("{g}{}", random_suffix()),
                (None, None) => String::new(),
            };
            meta_mut(&mut candidate).insert("name".into(), json!(cname));
            let errs = dari_api::validation::validate_create(r, &candidate);
            if !errs.is_empty() {
                return Err(ApiError::invalid(r.group, r.kind, &cname, causes_from(errs)));
            }
            self.check_namespace(r, obj_ns.as_deref(), &cname).await?;
            let key = r.key(obj_ns.as_deref(), &cname);
            let mut alloc = self.alloc.lock().await;
            let reserved = if r.kind == "Service" { self.admit_service_create(&mut alloc, r, &mut candidate)? } else { Reserved::default() };
            if opts.dry_run {
                reserved.release(&mut alloc);
                if self.store.get(&key).await?.is_some() {
                    return Err(ApiError::already_exists(r.group, r.plural, &cname));
                }
                return Ok(Written { object: candidate, warnings, created: true });
            }
            if !self.claim_service(&mut alloc, r, obj_ns.as_deref(), &candidate, &reserved).await? {
                continue; // another server took an automatically chosen value: choose again
            }
            match self.store.create(&key, encode(&candidate)?).await {
                Ok(kv) => {
                    drop(alloc);
                    let object = decode(&kv)?;
                    tracing::debug!(key, rv = kv.mod_revision, "created");
                    return Ok(Written { object, warnings, created: true });
                }
                Err(StoreError::AlreadyExists { .. }) if explicit.is_none() && attempt < 15 => {
                    self.unclaim(&mut alloc, r, obj_ns.as_deref(), &cname, &reserved.claims, &reserved).await;
                    continue;
                }
                Err(e) => {
                    self.unclaim(&mut alloc, r, obj_ns.as_deref(), &cname, &reserved.claims, &reserved).await;
                    return Err(store_err(e, r, &cname));
                }
            }
        }
        Err(ApiError::new(500, "AlreadyExists", "could not generate a unique name"))
    }

    /// UPDATE (PUT) of the object or its status/scale subresource.
    pub async fn update(&self, r: &Resource, ns: Option<&str>, obj_name: &str, sub: Option<&str>, mut body: Value, opts: &WriteOptions) -> ApiResult<Written> {
        if sub == Some("scale") {
            return self.update_scale(r, ns, obj_name, body, opts).await;
        }
        Self::check_kind(r, &mut body)?;
        let warnings = Self::unknown_fields(r, &body, opts.field_validation)?;
        let body_name = name(&body).to_string();
        if !body_name.is_empty() && body_name != obj_name {
            return Err(ApiError::bad_request(format!("the name of the object ({body_name}) does not match the name on the URL ({obj_name})")));
        }
        if let (Scope::Namespaced, Some(n)) = (r.scope, meta_str(&body, "namespace")) {
            if !n.is_empty() && Some(n) != ns {
                return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
            }
        }
        let precondition = meta_str(&body, "resourceVersion").filter(|s| !s.is_empty()).map(str::to_string);
        let body = std::sync::Arc::new(body);
        let mut w = self
            .update_with(r, ns, obj_name, sub, precondition.as_deref(), opts, move |_cur| Ok((*body).clone()))
            .await?;
        w.warnings.extend(warnings);
        Ok(w)
    }

    /// The core of every write to an existing object: read, transform, check, write with the read
    /// revision as precondition, retry on conflicts unless the client gave a resourceVersion.
    pub async fn update_with<F>(
        &self,
        r: &Resource,
        ns: Option<&str>,
        obj_name: &str,
        sub: Option<&str>,
        precondition: Option<&str>,
        opts: &WriteOptions,
        f: F,
    ) -> ApiResult<Written>
    where
        F: Fn(&Value) -> ApiResult<Value>,
    {
        for _attempt in 0..16 {
            let kv = self.get_kv(r, ns, obj_name).await?;
            let cur = decode(&kv)?;
            if let Some(p) = precondition {
                if p != kv.mod_revision.to_string() {
                    return Err(ApiError::conflict(
                        r.group,
                        r.plural,
                        obj_name,
                        "the object has been modified; please apply your changes to the latest version and try again",
                    ));
                }
            }
            let mut new = f(&cur)?;
            Self::check_kind(r, &mut new)?;
            let new = self.prepare_update(r, &cur, new, sub)?;
            let errs = if sub == Some("binding") { vec![] } else { dari_api::validation::validate_update(r, &cur, &new) };
            if !errs.is_empty() {
                return Err(ApiError::invalid(r.group, r.kind, obj_name, causes_from(errs)));
            }
            if same_ignoring_rv(&cur, &new) {
                return Ok(Written { object: cur, warnings: vec![], created: false });
            }
            // the last finalizer removed from an object being deleted: it goes away now
            let deleting = new.pointer("/metadata/deletionTimestamp").is_some();
            let finalizers_empty = new.pointer("/metadata/finalizers").and_then(Value::as_array).map(|a| a.is_empty()).unwrap_or(true)
                && new.pointer("/spec/finalizers").and_then(Value::as_array).map(|a| a.is_empty()).unwrap_or(true);
            let mut alloc = self.alloc.lock().await;
            let mut new = new;
            let reserved = if r.kind == "Service" { self.admit_service_update(&mut alloc, r, &cur, &mut new)? } else { Reserved::default() };
            if opts.dry_run {
                reserved.release(&mut alloc);
                return Ok(Written { object: new, warnings: vec![], created: false });
            }
            if !self.claim_service(&mut alloc, r, ns, &new, &reserved).await? {
                continue; // another server took an automatically chosen value: choose again
            }
            if deleting && finalizers_empty && !graceful_pod_pending(r, &new) {
                match self.store.delete(&kv.key, Some(kv.mod_revision)).await {
                    Ok((_prev, rev)) => {
                        release_service(&mut alloc, r, &cur);
                        self.unclaim(&mut alloc, r, ns, obj_name, &service_claims(&cur), &reserved).await;
                        let mut object = new;
                        meta_mut(&mut object).insert("resourceVersion".into(), json!(rev.to_string()));
                        return Ok(Written { object, warnings: vec![], created: false });
                    }
                    Err(StoreError::Conflict { .. }) if precondition.is_none() => {
                        self.unclaim(&mut alloc, r, ns, obj_name, &reserved.claims, &reserved).await;
                        continue;
                    }
                    Err(e) => {
                        self.unclaim(&mut alloc, r, ns, obj_name, &reserved.claims, &reserved).await;
                        return Err(store_err(e, r, obj_name));
                    }
                }
            }
            match self.store.update(&kv.key, encode(&new)?, Some(kv.mod_revision)).await {
                Ok(kv2) => {
                    reserved.commit_release(&mut alloc);
                    let dropped = reserved.released_claims();
                    if r.kind == "Service" && !dropped.is_empty() {
                        crate::claims::release_all(self.store.as_ref(), &dropped, &Owner::new(ns.unwrap_or(""), obj_name)).await;
                    }
                    return Ok(Written { object: decode(&kv2)?, warnings: vec![], created: false });
                }
                Err(StoreError::Conflict { .. }) if precondition.is_none() => {
                    self.unclaim(&mut alloc, r, ns, obj_name, &reserved.claims, &reserved).await;
                    continue;
                }
                Err(e) => {
                    self.unclaim(&mut alloc, r, ns, obj_name, &reserved.claims, &reserved).await;
                    return Err(store_err(e, r, obj_name));
                }
            }
        }
        Err(ApiError::conflict(r.group, r.plural, obj_name, "too many concurrent updates; please retry"))
    }

    fn prepare_update(&self, r: &Resource, cur: &Value, mut new: Value, sub: Option<&str>) -> ApiResult<Value> {
        match sub {
            Some("status") => {
                let mut out = cur.clone();
                out["status"] = new.get("status").cloned().unwrap_or(json!({}));
                // status writers may also touch labels/annotations (as kubelet does); keep them
                for f in ["labels", "annotations"] {
                    if let Some(v) = new.pointer(&format!("/metadata/{f}")) {
                        meta_mut(&mut out).insert(f.into(), v.clone());
                    }
                }
                return Ok(out);
            }
            Some("binding") => {
                // the scheduler's write: only spec.nodeName changes (set by `bind`)
                let mut out = cur.clone();
                out["spec"]["nodeName"] = new.pointer("/spec/nodeName").cloned().unwrap_or(Value::Null);
                return Ok(out);
            }
            Some("finalize") => {
                let mut out = cur.clone();
                out["spec"] = new.get("spec").cloned().unwrap_or(json!({}));
                return Ok(out);
            }
            Some(other) => return Err(ApiError::method_not_supported(&format!("{}/{}", r.plural, other), "update")),
            None => {}
        }
        if r.has_status() {
            match cur.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        dari_api::defaults::apply_defaults(r.group, r.kind, &mut new);
        if r.kind == "Service" {
            dari_api::defaults::carry_over_service_allocations(cur, &mut new);
        }
        let cm = cur.get("metadata").cloned().unwrap_or(json!({}));
        let md = meta_mut(&mut new);
        for f in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "name", "namespace", "generation"] {
            match cm.get(f) {
                Some(v) => {
                    md.insert(f.into(), v.clone());
                }
                None => {
                    md.remove(f);
                }
            }
        }
        md.remove("resourceVersion");
        if has_generation(r.kind) && spec_part(cur) != spec_part(&new) {
            let g = cur.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0) + 1;
            meta_mut(&mut new).insert("generation".into(), json!(g));
        }
        Ok(new)
    }

    /// PATCH, any of the four patch types.
    pub async fn patch(&self, r: &Resource, ns: Option<&str>, obj_name: &str, sub: Option<&str>, content_type: &str, patch: &[u8], opts: &WriteOptions) -> ApiResult<Written> {
        let ptype = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        let patch_value: Value = match ptype.as_str() {
            "application/apply-patch+yaml" => serde_yaml::from_slice(patch).map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?,
            "application/json-patch+json" | "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                serde_json::from_slice(patch).map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?
            }
            other => return Err(ApiError::unsupported_media_type(other)),
        };
        if ptype == "application/apply-patch+yaml" {
            return crate::apply::server_side_apply(self, r, ns, obj_name, sub, patch_value, opts).await;
        }
        if sub == Some("scale") {
            let cur = self.get_scale(r, ns, obj_name).await?;
            let scaled = apply_patch_value(&ptype, &cur, &patch_value, "io.k8s.api.autoscaling.v1.Scale")?;
            return self.update_scale(r, ns, obj_name, scaled, opts).await;
        }
        let definition = dari_api::openapi::definition_for(r.group, r.version, r.kind).unwrap_or("");
        let precondition = patch_value.pointer("/metadata/resourceVersion").and_then(Value::as_str).map(str::to_string);
        let warnings = std::sync::Mutex::new(Vec::new());
        let fv = opts.field_validation;
        let mut w = self
            .update_with(r, ns, obj_name, sub, precondition.as_deref(), opts, |cur| {
                let patched = apply_patch_value(&ptype, cur, &patch_value, definition)?;
                let unknown = Self::unknown_fields(r, &patched, fv)?;
                if let Ok(mut w) = warnings.lock() {
                    *w = unknown;
                }
                Ok(patched)
            })
            .await?;
        w.warnings.extend(warnings.into_inner().unwrap_or_default());
        Ok(w)
    }

    async fn get_scale(&self, r: &Resource, ns: Option<&str>, obj_name: &str) -> ApiResult<Value> {
        let obj = self.get(r, ns, obj_name).await?;
        Ok(scale_of(&obj))
    }

    /// GET …/scale.
    pub async fn scale(&self, r: &Resource, ns: Option<&str>, obj_name: &str) -> ApiResult<Value> {
        self.get_scale(r, ns, obj_name).await
    }

    async fn update_scale(&self, r: &Resource, ns: Option<&str>, obj_name: &str, scale: Value, opts: &WriteOptions) -> ApiResult<Written> {
        let replicas = scale.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0);
        if replicas < 0 {
            return Err(invalid(r, obj_name, "spec.replicas", "FieldValueInvalid", format!("Invalid value: {replicas}: must be greater than or equal to 0")));
        }
        let precondition = scale.pointer("/metadata/resourceVersion").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
        let w = self
            .update_with(r, ns, obj_name, None, precondition.as_deref(), opts, |cur| {
                let mut n = cur.clone();
                n["spec"]["replicas"] = json!(replicas);
                Ok(n)
            })
            .await?;
        Ok(Written { object: scale_of(&w.object), warnings: vec![], created: false })
    }

    /// POST pods/{name}/binding: the scheduler's write.
    pub async fn bind(&self, r: &Resource, ns: Option<&str>, pod: &str, binding: Value) -> ApiResult<Value> {
        let node = binding.pointer("/target/name").and_then(Value::as_str).unwrap_or("").to_string();
        if node.is_empty() {
            return Err(invalid(r, pod, "target.name", "FieldValueRequired", "Required value".into()));
        }
        self.update_with(r, ns, pod, Some("binding"), None, &WriteOptions::default(), |cur| {
            if let Some(n) = cur.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()) {
                return Err(ApiError::conflict("", "pods", pod, &format!("pod {pod} is already assigned to node \"{n}\"")));
            }
            if cur.pointer("/metadata/deletionTimestamp").is_some() {
                return Err(ApiError::conflict("", "pods", pod, "pod is being deleted, cannot be assigned to a host"));
            }
            let mut n = cur.clone();
            n["spec"]["nodeName"] = json!(node);
            Ok(n)
        })
        .await?;
        Ok(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}))
    }

    /// DELETE one object: immediate, or graceful (pods on a node), or blocked by finalizers.
    pub async fn delete(&self, r: &Resource, ns: Option<&str>, obj_name: &str, opts: &DeleteOptions) -> ApiResult<(Value, bool)> {
        for _ in 0..16 {
            let kv = self.get_kv(r, ns, obj_name).await?;
            let cur = decode(&kv)?;
            if let Some(uid) = &opts.uid {
                if meta_str(&cur, "uid") != Some(uid.as_str()) {
                    return Err(ApiError::conflict(r.group, r.plural, obj_name, &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {}", meta_str(&cur, "uid").unwrap_or(""))));
                }
            }
            if let Some(rv) = &opts.resource_version {
                if *rv != kv.mod_revision.to_string() {
                    return Err(ApiError::conflict(r.group, r.plural, obj_name, &format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}", kv.mod_revision)));
                }
            }
            let finalizers: Vec<Value> = cur.pointer("/metadata/finalizers").and_then(Value::as_array).cloned().unwrap_or_default();
            let graceful = self.grace_for(r, &cur, opts);
            let mut finalizers_after = finalizers.clone();
            match opts.propagation.as_deref() {
                Some("Foreground") if !finalizers_after.contains(&json!("foregroundDeletion")) => finalizers_after.push(json!("foregroundDeletion")),
                Some("Orphan") if !finalizers_after.contains(&json!("orphan")) => finalizers_after.push(json!("orphan")),
                _ => {}
            }
            let is_namespace = r.kind == "Namespace";
            if !finalizers_after.is_empty() || graceful.is_some() || is_namespace {
                // mark for deletion: set deletionTimestamp (once); the object stays until finalizers are gone
                let already = cur.pointer("/metadata/deletionTimestamp").is_some();
                let mut new = cur.clone();
                {
                    let md = meta_mut(&mut new);
                    if !already {
                        md.insert("deletionTimestamp".into(), json!(graceful_timestamp(graceful.unwrap_or(0))));
                        md.insert("deletionGracePeriodSeconds".into(), json!(graceful.unwrap_or(0)));
                    } else if let Some(g) = graceful {
                        // a shorter grace period may shorten an ongoing deletion
                        let old = md.get("deletionGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(i64::MAX);
                        if g < old {
                            md.insert("deletionGracePeriodSeconds".into(), json!(g));
                            md.insert("deletionTimestamp".into(), json!(graceful_timestamp(g)));
                        }
                    }
                    if finalizers_after != finalizers {
                        md.insert("finalizers".into(), Value::Array(finalizers_after.clone()));
                    }
                }
                if is_namespace {
                    new["status"]["phase"] = json!("Terminating");
                }
                if opts.dry_run {
                    return Ok((new, false));
                }
                if same_ignoring_rv(&cur, &new) {
                    return Ok((cur, false));
                }
                match self.store.update(&kv.key, encode(&new)?, Some(kv.mod_revision)).await {
                    Ok(kv2) => return Ok((decode(&kv2)?, false)),
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(store_err(e, r, obj_name)),
                }
            }
            if opts.dry_run {
                return Ok((cur, true));
            }
            let mut alloc = self.alloc.lock().await;
            match self.store.delete(&kv.key, Some(kv.mod_revision)).await {
                Ok((_prev, rev)) => {
                    release_service(&mut alloc, r, &cur);
                    self.unclaim(&mut alloc, r, ns, obj_name, &service_claims(&cur), &Reserved::default()).await;
                    let mut object = cur;
                    meta_mut(&mut object).insert("resourceVersion".into(), json!(rev.to_string()));
                    return Ok((object, true));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(store_err(e, r, obj_name)),
            }
        }
        Err(ApiError::conflict(r.group, r.plural, obj_name, "too many concurrent updates; please retry"))
    }

    /// Grace period for a pod on a node (None = delete now).
    fn grace_for(&self, r: &Resource, cur: &Value, opts: &DeleteOptions) -> Option<i64> {
        if r.kind != "Pod" {
            return None;
        }
        let on_node = cur.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
        let phase = cur.pointer("/status/phase").and_then(Value::as_str).unwrap_or("");
        if !on_node || phase == "Succeeded" || phase == "Failed" {
            return None;
        }
        let g = opts.grace_period.unwrap_or_else(|| cur.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(30));
        // grace 0 is forced deletion; upstream turns a requested 0 into 1 unless forced, but
        // kubectl sends 1 for --now and 0 only with --force
        (g > 0).then_some(g)
    }

    /// DELETE a collection (selectors apply).
    pub async fn delete_collection(&self, r: &Resource, ns: Option<&str>, q: &ListQuery, opts: &DeleteOptions) -> ApiResult<(Vec<Value>, Value)> {
        let (items, meta) = self.list(r, ns, q).await?;
        let mut out = Vec::new();
        for item in items {
            let item_ns = meta_str(&item, "namespace").map(str::to_string);
            match self.delete(r, item_ns.as_deref(), name(&item), opts).await {
                Ok((o, _)) => out.push(o),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok((out, meta))
    }

    // --- Service admission -------------------------------------------------------------

    fn admit_service_create(&self, alloc: &mut Allocations, r: &Resource, svc: &mut Value) -> ApiResult<Reserved> {
        let mut reserved = Reserved::default();
        let n = name(svc).to_string();
        let ty = svc.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP").to_string();
        if ty != "ExternalName" {
            let requested = svc.pointer("/spec/clusterIP").and_then(Value::as_str).unwrap_or("").to_string();
            let ip = if requested == "None" {
                None
            } else if requested.is_empty() {
                match alloc.ips.allocate_next() {
                    Ok(ip) => Some(ip.to_string()),
                    Err(e) => return Err(ApiError::internal(format!("failed to allocate a serviceIP: {e}"))),
                }
            } else {
                let parsed: IpAddr = requested.parse().map_err(|_| {
                    invalid(r, &n, "spec.clusterIPs[0]", "FieldValueInvalid", format!("Invalid value: \"{requested}\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"))
                })?;
                match alloc.ips.allocate(parsed) {
                    Ok(()) => reserved.ips.push(parsed),
                    // held as far as this server knows: the datastore claim decides
                    Err(crate::alloc::AllocError::Taken { .. }) => {}
                    Err(e) => {
                        return Err(invalid(r, &n, "spec.clusterIPs", "FieldValueInvalid", format!("Invalid value: []string{{\"{requested}\"}}: failed to allocate IP {requested}: {}", e)))
                    }
                }
                reserved.explicit.push(Claim::Ip(parsed));
                reserved.claims.push(Claim::Ip(parsed));
                Some(requested.clone())
            };
            if let Some(ip) = &ip {
                if let Ok(p) = ip.parse::<IpAddr>() {
                    if requested.is_empty() {
                        reserved.ips.push(p);
                        reserved.claims.push(Claim::Ip(p));
                    }
                }
                svc["spec"]["clusterIP"] = json!(ip);
                svc["spec"]["clusterIPs"] = json!([ip]);
            } else {
                svc["spec"]["clusterIPs"] = json!(["None"]);
            }
        }
        if let Err(e) = self.allocate_node_ports(alloc, r, &n, svc, &mut reserved, &[]) {
            reserved.release(alloc);
            return Err(e);
        }
        Ok(reserved)
    }

    fn allocate_node_ports(&self, alloc: &mut Allocations, r: &Resource, n: &str, svc: &mut Value, reserved: &mut Reserved, keep: &[u16]) -> ApiResult<()> {
        let ty = svc.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP").to_string();
        let wants = ty == "NodePort" || ty == "LoadBalancer";
        let Some(ports) = svc.pointer_mut("/spec/ports").and_then(Value::as_array_mut) else { return Ok(()) };
        for (i, p) in ports.iter_mut().enumerate() {
            if !wants {
                if let Some(m) = p.as_object_mut() {
                    m.remove("nodePort");
                }
                continue;
            }
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(np) if np != 0 => {
                    let np16 = u16::try_from(np).unwrap_or(0);
                    if keep.contains(&np16) {
                        continue;
                    }
                    match alloc.ports.allocate(np16) {
                        Ok(()) => reserved.ports.push(np16),
                        // held as far as this server knows: the datastore claim decides
                        Err(crate::alloc::AllocError::Taken { .. }) => {}
                        Err(e) => return Err(invalid(r, n, &format!("spec.ports[{i}].nodePort"), "FieldValueInvalid", format!("Invalid value: {np}: {}", e))),
                    }
                    reserved.explicit.push(Claim::Port(np16));
                    reserved.claims.push(Claim::Port(np16));
                }
                _ => {
                    let np = alloc.ports.allocate_next().map_err(|e| ApiError::internal(format!("failed to allocate a nodePort: {e}")))?;
                    reserved.ports.push(np);
                    reserved.claims.push(Claim::Port(np));
                    p["nodePort"] = json!(np);
                }
            }
        }
        Ok(())
    }

    fn admit_service_update(&self, alloc: &mut Allocations, r: &Resource, cur: &Value, new: &mut Value) -> ApiResult<Reserved> {
        let n = name(new).to_string();
        // clusterIP is immutable; an empty one in the update keeps the old one (as kubectl apply/replace expect)
        let old_ip = cur.pointer("/spec/clusterIP").cloned();
        let new_ip = new.pointer("/spec/clusterIP").and_then(Value::as_str).unwrap_or("").to_string();
        let old_type = cur.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP").to_string();
        let new_type = new.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP").to_string();
        let mut reserved = Reserved::default();
        if new_type == "ExternalName" && old_type != "ExternalName" {
            for ip in service_ips(cur) {
                reserved.release_after_commit_ips.push(ip);
            }
            if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            }
        } else if old_type == "ExternalName" && new_type != "ExternalName" {
            if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
                spec.insert("clusterIP".into(), json!(new_ip));
            }
            let mut tmp = Reserved::default();
            let mut copy = new.clone();
            copy["spec"]["type"] = json!("ClusterIP");
            let got = self.admit_service_create(alloc, r, &mut copy)?;
            tmp.ips = got.ips;
            tmp.ports = got.ports;
            tmp.claims = got.claims;
            tmp.explicit = got.explicit;
            new["spec"]["clusterIP"] = copy["spec"]["clusterIP"].clone();
            new["spec"]["clusterIPs"] = copy["spec"]["clusterIPs"].clone();
            reserved = tmp;
        } else if let Some(old) = old_ip {
            if new_ip.is_empty() {
                new["spec"]["clusterIP"] = old.clone();
                if let Some(ips) = cur.pointer("/spec/clusterIPs") {
                    new["spec"]["clusterIPs"] = ips.clone();
                }
            } else if Some(new_ip.as_str()) != old.as_str() {
                return Err(invalid(r, &n, "spec.clusterIPs[0]", "FieldValueInvalid", format!("Invalid value: []string{{\"{new_ip}\"}}: may not change once set")));
            } else if new.pointer("/spec/clusterIPs").is_none() {
                if let Some(ips) = cur.pointer("/spec/clusterIPs") {
                    new["spec"]["clusterIPs"] = ips.clone();
                }
            }
        }
        // NodePorts: keep the old ones for ports that still ask for them, allocate new, release dropped
        let old_ports = node_ports(cur);
        let wants = new_type == "NodePort" || new_type == "LoadBalancer";
        if wants {
            // ports without a nodePort in the update keep the old one of the same port/protocol
            let old_list = cur.pointer("/spec/ports").and_then(Value::as_array).cloned().unwrap_or_default();
            if let Some(ports) = new.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
                for p in ports.iter_mut() {
                    if p.get("nodePort").and_then(Value::as_i64).unwrap_or(0) == 0 {
                        if let Some(o) = old_list.iter().find(|o| o.get("port") == p.get("port") && o.get("protocol") == p.get("protocol")) {
                            if let Some(np) = o.get("nodePort") {
                                p["nodePort"] = np.clone();
                            }
                        }
                    }
                }
            }
        }
        let mut fresh = Reserved::default();
        self.allocate_node_ports(alloc, r, &n, new, &mut fresh, &old_ports).inspect_err(|_| {
            fresh.release(alloc);
            reserved.release(alloc);
        })?;
        let new_ports = node_ports(new);
        reserved.ports.extend(fresh.ports);
        reserved.claims.extend(fresh.claims);
        reserved.explicit.extend(fresh.explicit);
        for p in old_ports {
            if !new_ports.contains(&p) {
                reserved.release_after_commit_ports.push(p);
            }
        }
        Ok(reserved)
    }

    /// Claims a Service's newly reserved values in the datastore ([`crate::claims`]). `Ok(false)`:
    /// another server holds an automatically chosen value; it is marked taken here and the caller
    /// chooses again. A value the user asked for that another Service holds is a 422.
    async fn claim_service(&self, alloc: &mut Allocations, r: &Resource, ns: Option<&str>, svc: &Value, reserved: &Reserved) -> ApiResult<bool> {
        if r.kind != "Service" || reserved.claims.is_empty() {
            return Ok(true);
        }
        let owner = Owner::new(ns.unwrap_or(""), name(svc));
        match crate::claims::claim_all(self.store.as_ref(), &reserved.claims, &owner).await {
            Ok(()) => Ok(true),
            Err(ClaimError::Taken(c)) => {
                reserved.release(alloc);
                match c {
                    Claim::Ip(ip) => {
                        let _ = alloc.ips.allocate(ip);
                    }
                    Claim::Port(p) => {
                        let _ = alloc.ports.allocate(p);
                    }
                }
                tracing::debug!(claim = ?c, service = name(svc), "value held by another Service");
                if reserved.explicit.contains(&c) {
                    Err(taken_error(r, svc, c))
                } else {
                    Ok(false)
                }
            }
            Err(ClaimError::Store(e)) => {
                reserved.release(alloc);
                Err(store_err(e, r, name(svc)))
            }
        }
    }

    /// Undoes a write's local reservations and drops its claims (a failed write, or a deleted Service).
    async fn unclaim(&self, alloc: &mut Allocations, r: &Resource, ns: Option<&str>, obj_name: &str, claims: &[Claim], reserved: &Reserved) {
        reserved.release(alloc);
        if r.kind == "Service" && !claims.is_empty() {
            crate::claims::release_all(self.store.as_ref(), claims, &Owner::new(ns.unwrap_or(""), obj_name)).await;
        }
    }

    /// One pass of the allocation repair loop (run at start and periodically, as kube-apiserver's
    /// repair controllers): creates claims Services lack, deletes claims no Service holds (seen
    /// twice), and rebuilds the local allocators from what is in use cluster-wide.
    pub async fn repair_allocations(&self) -> ApiResult<()> {
        let mut suspects = self.repair_suspects.lock().await;
        let svc = registry::find("", "v1", "services").ok_or_else(|| ApiError::internal("services not registered"))?;
        let services = self.store.list(ListOptions { prefix: &svc.prefix(None), start_after: None, limit: 0, revision: None }).await?;
        let mut held = Vec::with_capacity(services.items.len());
        for kv in &services.items {
            let obj = decode(kv)?;
            let ns = meta_str(&obj, "namespace").unwrap_or("");
            held.push((Owner::new(ns, name(&obj)), service_claims(&obj)));
        }
        let mut claims = self.store.list(ListOptions { prefix: crate::claims::IP_PREFIX, start_after: None, limit: 0, revision: None }).await?.items;
        claims.extend(self.store.list(ListOptions { prefix: crate::claims::PORT_PREFIX, start_after: None, limit: 0, revision: None }).await?.items);
        let plan = crate::claims::plan_repair(&held, &claims, &suspects);
        crate::claims::apply_repair(self.store.as_ref(), &plan).await;
        let mut ips = IpAllocator::new(self.settings.service_cidr);
        let mut ports = PortAllocator::new(self.settings.node_ports.0, self.settings.node_ports.1);
        for c in &plan.in_use {
            match c {
                Claim::Ip(ip) => {
                    let _ = ips.allocate(*ip);
                }
                Claim::Port(p) => {
                    let _ = ports.allocate(*p);
                }
            }
        }
        for (c, _) in &plan.delete {
            match c {
                Claim::Ip(ip) => ips.release(*ip),
                Claim::Port(p) => ports.release(*p),
            }
        }
        *self.alloc.lock().await = Allocations { ips, ports };
        *suspects = plan.suspects;
        Ok(())
    }

    /// Ensures an object exists with the given content (used at start-up for built-in objects).
    pub async fn ensure(&self, r: &Resource, ns: Option<&str>, obj: Value) -> ApiResult<Value> {
        let n = name(&obj).to_string();
        match self.get(r, ns, &n).await {
            Ok(o) => Ok(o),
            Err(e) if e.code == 404 => match self.create(r, ns, obj, &WriteOptions::default()).await {
                Ok(w) => Ok(w.object),
                Err(e) if e.code == 409 => self.get(r, ns, &n).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        }
    }
}

/// Addresses and ports reserved by one write, to undo if the write fails.
#[derive(Default)]
struct Reserved {
    /// Values newly marked in the local allocators (undone if the write fails).
    ips: Vec<IpAddr>,
    ports: Vec<u16>,
    /// Values this write must claim in the datastore ([`crate::claims`]).
    claims: Vec<Claim>,
    /// Of those, the ones the user asked for (a collision is a 422, not a retry).
    explicit: Vec<Claim>,
    release_after_commit_ips: Vec<IpAddr>,
    release_after_commit_ports: Vec<u16>,
}

impl Reserved {
    fn release(&self, alloc: &mut Allocations) {
        for ip in &self.ips {
            alloc.ips.release(*ip);
        }
        for p in &self.ports {
            alloc.ports.release(*p);
        }
    }

    /// The claims to drop once the write that stopped using them is committed.
    fn released_claims(&self) -> Vec<Claim> {
        self.release_after_commit_ips.iter().map(|ip| Claim::Ip(*ip)).chain(self.release_after_commit_ports.iter().map(|p| Claim::Port(*p))).collect()
    }

    fn commit_release(&self, alloc: &mut Allocations) {
        for ip in &self.release_after_commit_ips {
            alloc.ips.release(*ip);
        }
        for p in &self.release_after_commit_ports {
            alloc.ports.release(*p);
        }
    }
}

fn release_service(alloc: &mut Allocations, r: &Resource, obj: &Value) {
    if r.kind != "Service" {
        return;
    }
    for ip in service_ips(obj) {
        alloc.ips.release(ip);
    }
    for p in node_ports(obj) {
        alloc.ports.release(p);
    }
}

/// Every value a stored Service holds (its ClusterIPs and NodePorts).
fn service_claims(obj: &Value) -> Vec<Claim> {
    service_ips(obj).into_iter().map(Claim::Ip).chain(node_ports(obj).into_iter().map(Claim::Port)).collect()
}

/// The 422 for a value the user asked for that another Service holds (upstream's wording).
fn taken_error(r: &Resource, svc: &Value, c: Claim) -> ApiError {
    let n = name(svc);
    match c {
        Claim::Ip(ip) => invalid(r, n, "spec.clusterIPs", "FieldValueInvalid", format!("Invalid value: []string{{\"{ip}\"}}: failed to allocate IP {ip}: provided IP is already allocated")),
        Claim::Port(p) => {
            let i = svc.pointer("/spec/ports").and_then(Value::as_array).and_then(|ps| ps.iter().position(|x| x.get("nodePort").and_then(Value::as_u64) == Some(u64::from(p)))).unwrap_or(0);
            invalid(r, n, &format!("spec.ports[{i}].nodePort"), "FieldValueInvalid", format!("Invalid value: {p}: provided port is already allocated"))
        }
    }
}

fn service_ips(obj: &Value) -> Vec<IpAddr> {
    let mut out = Vec::new();
    if let Some(ips) = obj.pointer("/spec/clusterIPs").and_then(Value::as_array) {
        out.extend(ips.iter().filter_map(Value::as_str).filter_map(|s| s.parse::<IpAddr>().ok()));
    }
    if let Some(ip) = obj.pointer("/spec/clusterIP").and_then(Value::as_str).and_then(|s| s.parse().ok()) {
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

fn node_ports(obj: &Value) -> Vec<u16> {
    obj.pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(|ps| ps.iter().filter_map(|p| p.get("nodePort").and_then(Value::as_u64)).filter_map(|p| u16::try_from(p).ok()).filter(|p| *p != 0).collect())
        .unwrap_or_default()
}

/// A pod on a node whose graceful deletion is still running: the kubelet finishes it with a
/// delete of grace 0, so removing finalizers alone does not remove it.
fn graceful_pod_pending(r: &Resource, obj: &Value) -> bool {
    r.kind == "Pod"
        && obj.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty())
        && obj.pointer("/metadata/deletionGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(0) > 0
}

fn graceful_timestamp(grace: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(grace)).format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn qualified(r: &Resource) -> String {
    if r.group.is_empty() {
        r.plural.to_string()
    } else {
        format!("{}.{}", r.plural, r.group)
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Status and fields the server owns on create.
fn prepare_create(r: &Resource, obj: &mut Value) {
    match r.kind {
        "Pod" => {
            let qos = dari_api::defaults::qos_class(obj.get("spec").unwrap_or(&Value::Null));
            // status is not writable on create, as upstream
            obj["status"] = json!({"phase": "Pending", "qosClass": qos});
        }
        "Service" => {
            obj["status"] = json!({"loadBalancer": {}});
        }
        "Namespace" => {
            obj["status"] = json!({"phase": "Active"});
        }
        k if r.has_status() && k != "Node" => {
            obj["status"] = json!({});
        }
        _ => {}
    }
}

fn scale_of(obj: &Value) -> Value {
    let selector = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect::<Vec<_>>().join(","))
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": obj.pointer("/metadata/name"),
            "namespace": obj.pointer("/metadata/namespace"),
            "uid": obj.pointer("/metadata/uid"),
            "resourceVersion": obj.pointer("/metadata/resourceVersion"),
            "creationTimestamp": obj.pointer("/metadata/creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(0))},
        "status": {"replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)), "selector": selector},
    })
}

/// Applies a JSON, merge or strategic-merge patch.
pub fn apply_patch_value(ptype: &str, cur: &Value, patch: &Value, definition: &str) -> ApiResult<Value> {
    let r = match ptype {
        "application/json-patch+json" => dari_api::patch::json_patch(cur, patch),
        "application/merge-patch+json" => dari_api::patch::merge_patch(cur, patch),
        "application/strategic-merge-patch+json" => {
            if definition.is_empty() {
                return Err(ApiError::unsupported_media_type(ptype));
            }
            dari_api::patch::strategic_merge_patch(cur, patch, definition)
        }
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    r.map_err(|e| ApiError::new(422, "Invalid", format!("the patch could not be applied: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_status_on_create_carries_the_qos_class() {
        let pods = registry::find("", "v1", "pods").expect("pods");
        for (spec, qos) in [
            (json!({"containers":[{"name":"a"}]}), "BestEffort"),
            (json!({"containers":[{"resources":{"limits":{"cpu":"1","memory":"1Gi"}}}]}), "Guaranteed"),
            (json!({"containers":[{"resources":{"requests":{"cpu":"1"}}}]}), "Burstable"),
        ] {
            let mut pod = json!({"spec": spec, "status": {"phase": "Running"}});
            prepare_create(pods, &mut pod);
            assert_eq!(pod["status"], json!({"phase": "Pending", "qosClass": qos}));
        }
    }

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        let t = encode_continue(42, "/registry/pods/default/b");
        let d = decode_continue(&t, "/registry/pods/").expect("valid token");
        assert_eq!((d.rv, d.start.as_str()), (42, "/registry/pods/default/b"));
        assert!(decode_continue(&t, "/registry/services/").is_err());
        assert!(decode_continue("!!!", "/registry/pods/").is_err());
    }

    #[test]
    fn scale_view() {
        let s = scale_of(&json!({"metadata":{"name":"d"},"spec":{"replicas":3,"selector":{"matchLabels":{"app":"x"}}},"status":{"replicas":2}}));
        assert_eq!(s["spec"]["replicas"], 3);
        assert_eq!(s["status"]["selector"], "app=x");
    }
}
