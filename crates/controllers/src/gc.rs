//! Garbage collector over ownerReferences, for the kinds the controllers watch (Deployments,
//! ReplicaSets, DaemonSets, Pods, EndpointSlices, Endpoints; owners may also be Services or Nodes):
//! - background: a dependent whose owners are all gone (checked live against the API, never only in the
//!   cache) is deleted;
//! - foreground: dependents of an owner being deleted with the `foregroundDeletion` finalizer are deleted
//!   (foreground too), and the finalizer is removed once none is left;
//! - orphan: dependents of an owner carrying the `orphan` finalizer lose their ownerReference to it,
//!   then the finalizer is removed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PropagationPolicy};
use kube::{Client, Resource};
use serde_json::json;

/// One object as the collector sees it.
#[derive(Clone, Debug)]
pub struct Item {
    /// apiVersion.
    pub api_version: String,
    /// Kind.
    pub kind: String,
    /// Metadata.
    pub meta: ObjectMeta,
}

/// What to do with one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Delete it (background), its owners being gone — to be confirmed live.
    DeleteOrphaned,
    /// Delete it in the foreground: an owner is being deleted in the foreground.
    DeleteForeground,
    /// Remove the ownerReferences to these owner uids (they are orphaning).
    DropOwners(Vec<String>),
    /// Remove this finalizer from the object: nothing depends on it any more.
    RemoveFinalizer(&'static str),
}

/// Pure: the actions for a snapshot of objects (keyed by uid).
pub fn plan(items: &HashMap<String, Item>) -> Vec<(String, Action)> {
    let mut out = Vec::new();
    let mut has_dependents: HashMap<&str, usize> = HashMap::new();
    for it in items.values() {
        for o in it.meta.owner_references.iter().flatten() {
            *has_dependents.entry(o.uid.as_str()).or_default() += 1;
        }
    }
    for (uid, it) in items {
        let refs = it.meta.owner_references.clone().unwrap_or_default();
        if !refs.is_empty() {
            let owners: Vec<(&OwnerReference, Option<&Item>)> = refs.iter().map(|r| (r, items.get(&r.uid))).collect();
            let orphaning: Vec<String> = owners
                .iter()
                .filter(|(_, o)| o.is_some_and(|o| o.meta.deletion_timestamp.is_some() && o.meta.finalizers.iter().flatten().any(|f| f == "orphan")))
                .map(|(r, _)| r.uid.clone())
                .collect();
            if !orphaning.is_empty() {
                out.push((uid.clone(), Action::DropOwners(orphaning)));
                continue;
            }
            if it.meta.deletion_timestamp.is_none() {
                if owners.iter().all(|(_, o)| o.is_none()) {
                    out.push((uid.clone(), Action::DeleteOrphaned));
                    continue;
                }
                let fg = owners.iter().any(|(_, o)| o.is_some_and(|o| o.meta.deletion_timestamp.is_some() && o.meta.finalizers.iter().flatten().any(|f| f == "foregroundDeletion")));
                let all_going = owners.iter().all(|(_, o)| o.is_none_or(|o| o.meta.deletion_timestamp.is_some()));
                if fg && all_going {
                    out.push((uid.clone(), Action::DeleteForeground));
                    continue;
                }
            }
        }
        if it.meta.deletion_timestamp.is_some() && !has_dependents.contains_key(uid.as_str()) {
            for f in ["foregroundDeletion", "orphan"] {
                if it.meta.finalizers.iter().flatten().any(|x| x == f) {
                    out.push((uid.clone(), Action::RemoveFinalizer(f)));
                }
            }
        }
    }
    out
}

fn resource_for(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let plural = match kind {
        "Endpoints" => "endpoints".to_string(),
        k => format!("{}s", k.to_lowercase()),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), &plural)
}

/// Owner kinds whose REST path this collector knows for sure (a 404 there means gone).
const KNOWN_OWNER_KINDS: &[(&str, &str)] = &[
    ("apps/v1", "Deployment"),
    ("apps/v1", "ReplicaSet"),
    ("apps/v1", "DaemonSet"),
    ("v1", "Pod"),
    ("v1", "Service"),
    ("v1", "Node"),
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("v1", "ServiceAccount"),
    ("v1", "Endpoints"),
    ("discovery.k8s.io/v1", "EndpointSlice"),
];

fn cluster_scoped(kind: &str) -> bool {
    matches!(kind, "Node" | "Namespace")
}

fn dyn_api(client: &Client, api_version: &str, kind: &str, ns: Option<&str>) -> Api<DynamicObject> {
    let ar = resource_for(api_version, kind);
    match ns.filter(|_| !cluster_scoped(kind)) {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    }
}

fn items_of<K: Resource<DynamicType = ()> + Clone>(store: &kube::runtime::reflector::Store<K>, out: &mut HashMap<String, Item>) {
    for o in store.state() {
        let m = o.meta().clone();
        if let Some(uid) = m.uid.clone() {
            out.insert(uid, Item { api_version: K::api_version(&()).to_string(), kind: K::kind(&()).to_string(), meta: m });
        }
    }
}

/// The garbage collector.
pub struct GarbageCollector {
    client: Client,
    inf: Arc<tokio::sync::Notify>,
    snapshot: Box<dyn Fn() -> HashMap<String, Item> + Send + Sync>,
}

impl GarbageCollector {
    /// Wires the collector to the shared informers.
    pub fn new(client: Client, inf: &crate::Informers) -> Arc<Self> {
        let notify = Arc::new(tokio::sync::Notify::new());
        macro_rules! watch {
            ($i:expr) => {{
                let n = notify.clone();
                $i.on_change(move |_, _| n.notify_one());
            }};
        }
        watch!(inf.pods);
        watch!(inf.replicasets);
        watch!(inf.deployments);
        watch!(inf.daemonsets);
        watch!(inf.slices);
        watch!(inf.endpoints);
        watch!(inf.services);
        let (p, r, d, ds, s, e, sv, n) =
            (inf.pods.store(), inf.replicasets.store(), inf.deployments.store(), inf.daemonsets.store(), inf.slices.store(), inf.endpoints.store(), inf.services.store(), inf.nodes.store());
        let snapshot = Box::new(move || {
            let mut m = HashMap::new();
            items_of(&p, &mut m);
            items_of(&r, &mut m);
            items_of(&d, &mut m);
            items_of(&ds, &mut m);
            items_of(&s, &mut m);
            items_of(&e, &mut m);
            items_of(&sv, &mut m);
            items_of(&n, &mut m);
            m
        });
        Arc::new(GarbageCollector { client, inf: notify, snapshot })
    }

    /// Runs passes on every change (debounced 100 ms) and every 10 s.
    pub async fn run(self: Arc<Self>) {
        loop {
            let _ = tokio::time::timeout(Duration::from_secs(10), self.inf.notified()).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            self.pass().await;
        }
    }

    #[tracing::instrument(name = "gc_pass", skip(self))]
    async fn pass(&self) {
        let items = (self.snapshot)();
        for (uid, action) in plan(&items) {
            let Some(it) = items.get(&uid) else { continue };
            let ns = it.meta.namespace.as_deref();
            let name = it.meta.name.clone().unwrap_or_default();
            let api = dyn_api(&self.client, &it.api_version, &it.kind, ns);
            let res = match &action {
                Action::DeleteOrphaned => {
                    // confirm live: every owner is really gone (or replaced by another uid)
                    let mut gone = true;
                    for r in it.meta.owner_references.iter().flatten() {
                        if !KNOWN_OWNER_KINDS.contains(&(r.api_version.as_str(), r.kind.as_str())) {
                            // a kind we cannot resolve for sure: never delete on a guess
                            gone = false;
                            continue;
                        }
                        let oapi = dyn_api(&self.client, &r.api_version, &r.kind, ns);
                        match oapi.get_opt(&r.name).await {
                            Ok(Some(o)) if o.metadata.uid.as_deref() == Some(r.uid.as_str()) => gone = false,
                            Ok(_) => {}
                            Err(_) => gone = false,
                        }
                    }
                    if !gone {
                        continue;
                    }
                    tracing::info!(kind = %it.kind, ns = ?ns, %name, "deleting dependent whose owners are gone");
                    let dp = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), preconditions: Some(kube::api::Preconditions { uid: Some(uid.clone()), resource_version: None }), ..Default::default() };
                    api.delete(&name, &dp).await.map(|_| ())
                }
                Action::DeleteForeground => {
                    let dp = DeleteParams { propagation_policy: Some(PropagationPolicy::Foreground), preconditions: Some(kube::api::Preconditions { uid: Some(uid.clone()), resource_version: None }), ..Default::default() };
                    api.delete(&name, &dp).await.map(|_| ())
                }
                Action::DropOwners(uids) => {
                    let refs: Vec<&OwnerReference> = it.meta.owner_references.iter().flatten().filter(|r| !uids.contains(&r.uid)).collect();
                    let patch = json!({"metadata": {"ownerReferences": refs, "uid": uid}});
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ())
                }
                Action::RemoveFinalizer(f) => {
                    let fins: Vec<&String> = it.meta.finalizers.iter().flatten().filter(|x| x != f).collect();
                    let patch = json!({"metadata": {"finalizers": fins}});
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ())
                }
            };
            match res {
                Ok(()) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => tracing::warn!(kind = %it.kind, %name, ?action, error = %e, "garbage collection step failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn item(uid: &str, kind: &str, owners: &[&str], deleting: bool, fins: &[&str]) -> (String, Item) {
        (
            uid.into(),
            Item {
                api_version: "v1".into(),
                kind: kind.into(),
                meta: ObjectMeta {
                    uid: Some(uid.into()),
                    name: Some(uid.into()),
                    owner_references: (!owners.is_empty()).then(|| owners.iter().map(|o| OwnerReference { uid: o.to_string(), name: o.to_string(), kind: "ReplicaSet".into(), api_version: "apps/v1".into(), ..Default::default() }).collect()),
                    deletion_timestamp: deleting.then(|| Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)),
                    finalizers: (!fins.is_empty()).then(|| fins.iter().map(|f| f.to_string()).collect()),
                    ..Default::default()
                },
            },
        )
    }

    #[test]
    fn background_foreground_orphan() {
        // background: owner gone
        let m: HashMap<String, Item> = [item("pod", "Pod", &["rs"], false, &[])].into();
        assert_eq!(plan(&m), vec![("pod".into(), Action::DeleteOrphaned)]);
        // foreground: owner deleting with foregroundDeletion -> dependents deleted, owner keeps its finalizer
        let m: HashMap<String, Item> = [item("rs", "ReplicaSet", &[], true, &["foregroundDeletion"]), item("pod", "Pod", &["rs"], false, &[])].into();
        assert_eq!(plan(&m), vec![("pod".into(), Action::DeleteForeground)]);
        // ... and once no dependents are left, the finalizer goes
        let m: HashMap<String, Item> = [item("rs", "ReplicaSet", &[], true, &["foregroundDeletion"])].into();
        assert_eq!(plan(&m), vec![("rs".into(), Action::RemoveFinalizer("foregroundDeletion"))]);
        // orphan: dependents lose the reference
        let m: HashMap<String, Item> = [item("rs", "ReplicaSet", &[], true, &["orphan"]), item("pod", "Pod", &["rs"], false, &[])].into();
        assert_eq!(plan(&m), vec![("pod".into(), Action::DropOwners(vec!["rs".into()]))]);
        // a live owner protects its dependent
        let m: HashMap<String, Item> = [item("rs", "ReplicaSet", &[], false, &[]), item("pod", "Pod", &["rs"], false, &[])].into();
        assert!(plan(&m).is_empty());
    }
}
