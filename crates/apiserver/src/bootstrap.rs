//! What exists in every cluster from the first start: the four namespaces, the `kubernetes`
//! Service on the first service IP with Endpoints and an EndpointSlice listing every live API server,
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
    reconcile_apiserver_endpoints(api).await
}

/// Where each API server records that it is alive (kube-apiserver's "lease" endpoint reconciler
/// keeps `/registry/masterleases/<ip>` with a TTL; dari stores the renew time in the value).
pub const APISERVERS_PREFIX: &str = "/registry/dari.dev/apiservers/";
/// A server that has not renewed for this long is dropped from the `kubernetes` endpoints.
pub const APISERVER_TTL_SECONDS: i64 = 30;
/// How often each server renews and reconciles.
pub const APISERVER_RENEW_SECONDS: u64 = 10;

/// The live API server addresses among the recorded ones, and the keys (with their revisions) of
/// those that expired. Pure.
pub fn live_apiservers(recorded: &[dari_store::KeyValue], now: i64, ttl: i64) -> (Vec<String>, Vec<(String, i64)>) {
    let mut live = Vec::new();
    let mut expired = Vec::new();
    for kv in recorded {
        let Some(ip) = kv.key.strip_prefix(APISERVERS_PREFIX) else { continue };
        let renewed = serde_json::from_slice::<Value>(&kv.value).ok().and_then(|v| v["renewTime"].as_i64()).unwrap_or(0);
        if now - renewed <= ttl {
            live.push(ip.to_string());
        } else {
            expired.push((kv.key.clone(), kv.mod_revision));
        }
    }
    live.sort();
    (live, expired)
}

/// Renews this server's record and points the `kubernetes` Endpoints and EndpointSlice at every
/// live API server (so with two servers on one etcd both are listed; a dead one drops out after
/// [`APISERVER_TTL_SECONDS`]).
pub async fn reconcile_apiserver_endpoints(api: &Api) -> ApiResult<()> {
    let s = api.settings().clone();
    let store = api.store();
    let me = format!("{APISERVERS_PREFIX}{}", s.advertise_address);
    let now = chrono::Utc::now().timestamp();
    let value = serde_json::to_vec(&json!({"renewTime": now, "port": s.secure_port})).unwrap_or_default();
    match store.update(&me, value.clone(), None).await {
        Ok(_) => {}
        Err(dari_store::StoreError::NotFound { .. }) => match store.create(&me, value).await {
            Ok(_) | Err(dari_store::StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        },
        Err(e) => return Err(e.into()),
    }
    let recorded = store.list(dari_store::ListOptions { prefix: APISERVERS_PREFIX, ..Default::default() }).await?;
    let (mut live, expired) = live_apiservers(&recorded.items, now, APISERVER_TTL_SECONDS);
    for (key, rev) in expired {
        let _ = store.delete(&key, Some(rev)).await;
    }
    if live.is_empty() {
        live.push(s.advertise_address.to_string());
    }
    let ep = res("", "endpoints")?;
    let addresses: Vec<Value> = live.iter().map(|ip| json!({"ip": ip})).collect();
    let want_ep = json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "kubernetes", "namespace": "default",
        "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": addresses, "ports": [{"name": "https", "port": s.secure_port, "protocol": "TCP"}]}]});
    upsert(api, ep, "default", want_ep).await?;
    let eps = res("discovery.k8s.io", "endpointslices")?;
    let endpoints: Vec<Value> = live.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect();
    let want_slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "kubernetes", "namespace": "default",
        "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": if s.advertise_address.is_ipv4() { "IPv4" } else { "IPv6" },
        "endpoints": endpoints,
        "ports": [{"name": "https", "port": s.secure_port, "protocol": "TCP"}]});
    upsert(api, eps, "default", want_slice).await?;
    Ok(())
}

/// Renews this server's record and reconciles the `kubernetes` endpoints every
/// [`APISERVER_RENEW_SECONDS`].
pub async fn run_apiserver_endpoints(api: Arc<Api>) {
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(APISERVER_RENEW_SECONDS));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // bootstrap just did the first pass
    loop {
        ticker.tick().await;
        if let Err(e) = reconcile_apiserver_endpoints(&api).await {
            tracing::warn!(error = %e.message, "reconciling the kubernetes endpoints failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(ip: &str, renew: i64, rev: i64) -> dari_store::KeyValue {
        dari_store::KeyValue { key: format!("{APISERVERS_PREFIX}{ip}"), value: serde_json::to_vec(&json!({"renewTime": renew})).unwrap_or_default(), create_revision: rev, mod_revision: rev }
    }

    #[test]
    fn servers_that_stop_renewing_drop_out() {
        let (live, expired) = live_apiservers(&[kv("10.0.0.2", 100, 7), kv("10.0.0.1", 95, 8), kv("10.0.0.3", 60, 9)], 120, 30);
        assert_eq!(live, vec!["10.0.0.1", "10.0.0.2"]);
        assert_eq!(expired, vec![(format!("{APISERVERS_PREFIX}10.0.0.3"), 9)]);
    }
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
