//! What exists in every cluster from the first start: the four namespaces, the `kubernetes`
//! Service on the first service IP with Endpoints and an EndpointSlice pointing at this server,
//! and the namespace finalizer that empties a terminating namespace before removing it.

use std::sync::Arc;

use dari_api::registry::{self, Resource, Scope, RESOURCES};
use futures::StreamExt;
use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::rest::{Api, DeleteOptions, ListQuery, WriteOptions};

fn res(group: &str, plural: &str) -> ApiResult<&'static Resource> {
    registry::find(group, "v1", plural).ok_or_else(|| ApiError::internal(format!("{plural} not registered")))
}

/// Creates the built-in objects if missing and points the `kubernetes` endpoints at this server.
pub async fn bootstrap(api: &Api) -> ApiResult<()> {
    let ns = res("", "namespaces")?;
    for n in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        api.ensure(ns, None, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "labels": {"kubernetes.io/metadata.name": n}}})).await?;
    }
    let s = api.settings().clone();
    let first = crate::alloc::IpAllocator::new(s.service_cidr).nth(1).ok_or_else(|| ApiError::internal("service range has no first IP"))?;
    let svc = res("", "services")?;
    api.ensure(
        svc,
        Some("default"),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kubernetes", "namespace": "default",
            "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"type": "ClusterIP", "clusterIP": first.to_string(), "sessionAffinity": "None",
                "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": s.secure_port}]}}),
    )
    .await?;
    let addr = s.advertise_address.to_string();
    let ep = res("", "endpoints")?;
    let want_ep = json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "kubernetes", "namespace": "default",
        "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": addr}], "ports": [{"name": "https", "port": s.secure_port, "protocol": "TCP"}]}]});
    upsert(api, ep, "default", want_ep).await?;
    let eps = res("discovery.k8s.io", "endpointslices")?;
    let want_slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "kubernetes", "namespace": "default",
        "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": if s.advertise_address.is_ipv4() { "IPv4" } else { "IPv6" },
        "endpoints": [{"addresses": [addr], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": s.secure_port, "protocol": "TCP"}]});
    upsert(api, eps, "default", want_slice).await?;
    Ok(())
}

async fn upsert(api: &Api, r: &Resource, ns: &str, want: Value) -> ApiResult<()> {
    let name = want["metadata"]["name"].as_str().unwrap_or_default().to_string();
    match api.get(r, Some(ns), &name).await {
        Ok(cur) => {
            let differs = ["subsets", "endpoints", "ports", "addressType"].iter().any(|f| cur.get(*f) != want.get(*f));
            if differs {
                let want = want.clone();
                api.update_with(r, Some(ns), &name, None, None, &WriteOptions::default(), move |cur| {
                    let mut n = cur.clone();
                    for f in ["subsets", "endpoints", "ports", "addressType"] {
                        if let Some(v) = want.get(f) {
                            n[f] = v.clone();
                        }
                    }
                    Ok(n)
                })
                .await?;
            }
            Ok(())
        }
        Err(e) if e.code == 404 => api.create(r, Some(ns), want, &WriteOptions::default()).await.map(|_| ()),
        Err(e) => Err(e),
    }
}

/// Watches namespaces; a terminating one is emptied, then its `kubernetes` finalizer is removed,
/// which deletes it (the namespace controller's job in kube-controller-manager).
pub async fn run_namespace_finalizer(api: Arc<Api>) {
    let Ok(ns) = res("", "namespaces") else { return };
    loop {
        let from = match api.store().current_revision().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "namespace finalizer: store unavailable");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        // handle the ones already terminating (e.g. after a restart), then follow changes
        if let Ok((items, _)) = api.list(ns, None, &ListQuery::default()).await {
            for n in items {
                finalize_if_terminating(&api, ns, &n).await;
            }
        }
        let mut events = match api.store().watch(&ns.prefix(None), from).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "namespace finalizer: watch failed");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(ev) = events.next().await {
            let Ok(dari_store::Event::Put { kv, .. }) = ev else { continue };
            if let Ok(obj) = crate::rest::decode(&kv) {
                let api = api.clone();
                tokio::spawn(async move { finalize_if_terminating(&api, ns, &obj).await });
            }
        }
    }
}

async fn finalize_if_terminating(api: &Api, ns: &'static Resource, obj: &Value) {
    if obj.pointer("/metadata/deletionTimestamp").is_none() {
        return;
    }
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
    let span = tracing::info_span!("reconcile", controller = "namespace", namespace = %name);
    let _g = span.enter();
    drop(_g);
    let force = DeleteOptions { grace_period: Some(0), ..Default::default() };
    for r in RESOURCES.iter().filter(|r| r.scope == Scope::Namespaced) {
        let Ok((items, _)) = api.list(r, Some(&name), &ListQuery::default()).await else { continue };
        for item in items {
            let n = item.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
            if let Err(e) = api.delete(r, Some(&name), n, &force).await {
                if e.code != 404 {
                    tracing::warn!(resource = r.plural, name = n, error = %e, "namespace finalizer: delete failed");
                }
            }
        }
    }
    // anything left (objects held by finalizers) keeps the namespace; the next event retries
    for r in RESOURCES.iter().filter(|r| r.scope == Scope::Namespaced) {
        if let Ok((items, _)) = api.list(r, Some(&name), &ListQuery::default()).await {
            if !items.is_empty() {
                return;
            }
        }
    }
    let res = api
        .update_with(ns, None, &name, Some("finalize"), None, &WriteOptions::default(), |cur| {
            let mut n = cur.clone();
            n["spec"]["finalizers"] = json!([]);
            Ok(n)
        })
        .await;
    match res {
        Ok(_) => tracing::info!(namespace = %name, "namespace emptied and removed"),
        Err(e) if e.code == 404 => {}
        Err(e) => tracing::warn!(namespace = %name, error = %e, "namespace finalizer: finalize failed"),
    }
}
