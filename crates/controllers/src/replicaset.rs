//! ReplicaSet controller: keeps `spec.replicas` active pods per ReplicaSet, adopting orphans that match
//! its selector and releasing pods that no longer match, and reports status (replicas, fullyLabeled,
//! ready, available, observedGeneration, ReplicaFailure).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::runtime::{controller_of, get, key_of, owner_ref, Expectations, Informer, Queue, Recorder};
use crate::util::{pod_active, pod_available, pod_ready, selector_matches, selector_selects};
use crate::ControllersError;

/// Most pods created or deleted in one sync.
const BURST: usize = 500;

/// The ReplicaSet controller.
pub struct ReplicaSetController {
    client: Client,
    rs: Store<ReplicaSet>,
    pods: Store<Pod>,
    queue: Queue,
    exp: Arc<Expectations>,
    rec: Recorder,
}

impl ReplicaSetController {
    /// Wires the controller to the shared informers.
    pub fn new(client: Client, rs: &Informer<ReplicaSet>, pods: &Informer<Pod>, rec: Recorder) -> Arc<Self> {
        let queue = Queue::new();
        let exp = Arc::new(Expectations::default());
        {
            let q = queue.clone();
            rs.on_change(move |_, new| {
                if let Some(n) = new {
                    q.add(key_of(&n.metadata));
                }
            });
        }
        {
            let q = queue.clone();
            let exp = exp.clone();
            let rs_store = rs.store();
            pods.on_change(move |old, new| {
                let pod = match (old, new) {
                    (_, Some(p)) | (Some(p), None) => p,
                    (None, None) => return,
                };
                let ns = pod.namespace().unwrap_or_default();
                let owner_key = |p: &Pod| controller_of(&p.metadata).filter(|o| o.kind == "ReplicaSet").map(|o| format!("{ns}/{}", o.name));
                match (old, new) {
                    (None, Some(n)) => {
                        if let Some(k) = owner_key(n) {
                            if n.metadata.deletion_timestamp.is_none() {
                                exp.creation_observed(&k);
                            }
                        }
                    }
                    (Some(o), None) => {
                        if let Some(k) = owner_key(o) {
                            exp.deletion_observed(&k, &o.name_any());
                        }
                    }
                    (Some(o), Some(n)) => {
                        if o.metadata.deletion_timestamp.is_none() && n.metadata.deletion_timestamp.is_some() {
                            if let Some(k) = owner_key(n) {
                                exp.deletion_observed(&k, &n.name_any());
                            }
                        }
                    }
                    _ => {}
                }
                let mut keys = Vec::new();
                for p in [old, new].into_iter().flatten() {
                    match owner_key(p) {
                        Some(k) => keys.push(k),
                        None if controller_of(&p.metadata).is_none() => {
                            // an orphan: every ReplicaSet that selects it may adopt it
                            let labels = p.labels();
                            for r in rs_store.state() {
                                if r.namespace().as_deref() == Some(ns.as_str()) && selector_selects(r.spec.as_ref().map(|s| &s.selector), labels) {
                                    keys.push(key_of(&r.metadata));
                                }
                            }
                        }
                        None => {}
                    }
                }
                keys.dedup();
                for k in keys {
                    q.add(k);
                }
            });
        }
        Arc::new(ReplicaSetController { client, rs: rs.store(), pods: pods.store(), queue, exp, rec })
    }

    /// Runs the workers.
    pub async fn run(self: Arc<Self>, workers: usize) {
        let me = self.clone();
        crate::runtime::run_workers("replicaset", self.queue.clone(), workers, move |k| me.clone().reconcile(k)).await
    }

    #[tracing::instrument(name = "reconcile_replicaset", skip(self))]
    async fn reconcile(self: Arc<Self>, key: String) -> Result<Option<Duration>, ControllersError> {
        let Some(rs) = get(&self.rs, &key) else {
            self.exp.forget(&key);
            return Ok(None);
        };
        let ns = rs.namespace().unwrap_or_default();
        let spec = rs.spec.clone().unwrap_or_default();
        let uid = rs.metadata.uid.clone().unwrap_or_default();
        let deleting = rs.metadata.deletion_timestamp.is_some();
        let pods_api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        // claim
        let mut owned: Vec<Arc<Pod>> = Vec::new();
        for p in self.pods.state() {
            if p.namespace().as_deref() != Some(ns.as_str()) || !pod_active(&p) {
                continue;
            }
            let matches = selector_selects(Some(&spec.selector), p.labels());
            match controller_of(&p.metadata) {
                Some(o) if o.uid == uid => {
                    if matches {
                        owned.push(p);
                    } else if !deleting {
                        let refs: Vec<OwnerReference> = p.owner_references().iter().filter(|o| o.uid != uid).cloned().collect();
                        let patch = json!({"metadata": {"ownerReferences": refs}});
                        if let Err(e) = pods_api.patch(&p.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
                            if !is_not_found(&e) {
                                return Err(ControllersError::kube("releasing pod", format!("{ns}/{}", p.name_any()), e));
                            }
                        }
                    }
                }
                Some(_) => {}
                None => {
                    if matches && !deleting {
                        let mut refs: Vec<OwnerReference> = p.owner_references().to_vec();
                        refs.push(owner_ref(&*rs));
                        let patch = json!({"metadata": {"ownerReferences": refs}});
                        match pods_api.patch(&p.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
                            Ok(np) => owned.push(Arc::new(np)),
                            Err(e) if is_not_found(&e) => {}
                            Err(e) => return Err(ControllersError::kube("adopting pod", format!("{ns}/{}", p.name_any()), e)),
                        }
                    }
                }
            }
        }
        let want = usize::try_from(spec.replicas.unwrap_or(1)).unwrap_or(0);
        let mut failure: Option<String> = None;
        if !deleting && self.exp.satisfied(&key) {
            if owned.len() < want {
                let n = (want - owned.len()).min(BURST);
                self.exp.expect_creations(&key, i64::try_from(n).unwrap_or(0));
                let tmpl = spec.template.clone().unwrap_or_default();
                let tm = tmpl.metadata.clone().unwrap_or_default();
                let pod = Pod {
                    metadata: ObjectMeta {
                        generate_name: Some(format!("{}-", rs.name_any())),
                        namespace: Some(ns.clone()),
                        labels: tm.labels.clone(),
                        annotations: tm.annotations.clone(),
                        owner_references: Some(vec![owner_ref(&*rs)]),
                        ..Default::default()
                    },
                    spec: tmpl.spec.clone(),
                    status: None,
                };
                // slow start: 1, 2, 4, ... stop at the first failure
                let pp = PostParams::default();
                let mut done = 0usize;
                let mut batch = 1usize;
                'outer: while done < n {
                    let size = batch.min(n - done);
                    let futs = (0..size).map(|_| pods_api.create(&pp, &pod));
                    let results = futures::future::join_all(futs).await;
                    let mut failed = false;
                    for r in results {
                        match r {
                            Ok(p) => self.rec.event(&*rs, "Normal", "SuccessfulCreate", format!("Created pod: {}", p.name_any())),
                            Err(e) => {
                                self.exp.creation_observed(&key);
                                let msg = kube_message(&e);
                                self.rec.event(&*rs, "Warning", "FailedCreate", format!("Error creating: {msg}"));
                                failure = Some(msg);
                                failed = true;
                            }
                        }
                    }
                    done += size;
                    if failed {
                        // the rest were never attempted
                        for _ in done..n {
                            self.exp.creation_observed(&key);
                        }
                        break 'outer;
                    }
                    batch *= 2;
                }
            } else if owned.len() > want {
                let n = (owned.len() - want).min(BURST);
                let mut ranked = owned.clone();
                ranked.sort_by_key(|p| deletion_rank(p));
                let victims: Vec<Arc<Pod>> = ranked.into_iter().take(n).collect();
                self.exp.expect_deletions(&key, victims.iter().map(|p| p.name_any()));
                let futs = victims.iter().map(|p| {
                    let api = pods_api.clone();
                    let name = p.name_any();
                    async move { (name.clone(), api.delete(&name, &DeleteParams::default()).await) }
                });
                for (name, r) in futures::future::join_all(futs).await {
                    match r {
                        Ok(_) => self.rec.event(&*rs, "Normal", "SuccessfulDelete", format!("Deleted pod: {name}")),
                        Err(e) => {
                            self.exp.deletion_observed(&key, &name);
                            if !is_not_found(&e) {
                                let msg = kube_message(&e);
                                self.rec.event(&*rs, "Warning", "FailedDelete", format!("Error deleting: {msg}"));
                                failure = Some(msg);
                            }
                        }
                    }
                }
            }
        }
        // status
        let now = Timestamp::now();
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let tmpl_labels = spec.template.as_ref().and_then(|t| t.metadata.as_ref()).and_then(|m| m.labels.clone()).unwrap_or_default();
        let replicas = owned.len();
        let fully = owned.iter().filter(|p| selector_matches(&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector { match_labels: Some(tmpl_labels.clone()), match_expressions: None }, p.labels())).count();
        let ready = owned.iter().filter(|p| pod_ready(p)).count();
        let available = owned.iter().filter(|p| pod_available(p, min_ready, now)).count();
        let cur = rs.status.clone().unwrap_or_default();
        let mut conditions = cur.conditions.clone().unwrap_or_default();
        conditions.retain(|c| c.type_ != "ReplicaFailure" || failure.is_some());
        if let Some(msg) = &failure {
            if !conditions.iter().any(|c| c.type_ == "ReplicaFailure") {
                conditions.push(k8s_openapi::api::apps::v1::ReplicaSetCondition {
                    type_: "ReplicaFailure".into(),
                    status: "True".into(),
                    reason: Some("FailedCreate".into()),
                    message: Some(msg.clone()),
                    last_transition_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now)),
                });
            }
        }
        let as_i32 = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
        let changed = cur.replicas != as_i32(replicas)
            || cur.fully_labeled_replicas.unwrap_or(0) != as_i32(fully)
            || cur.ready_replicas.unwrap_or(0) != as_i32(ready)
            || cur.available_replicas.unwrap_or(0) != as_i32(available)
            || cur.observed_generation != rs.metadata.generation
            || cur.conditions.clone().unwrap_or_default() != conditions;
        if changed {
            let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &ns);
            let patch = json!({"status": {
                "replicas": replicas, "fullyLabeledReplicas": fully, "readyReplicas": ready, "availableReplicas": available,
                "observedGeneration": rs.metadata.generation, "conditions": if conditions.is_empty() { serde_json::Value::Null } else { json!(conditions) },
            }});
            match api.patch_status(&rs.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(ControllersError::kube("updating status of", key.clone(), e)),
            }
        }
        if min_ready > 0 && ready > available {
            return Ok(Some(Duration::from_secs(u64::try_from(min_ready).unwrap_or(1))));
        }
        Ok(None)
    }
}

/// Deletion preference (smaller goes first), as upstream's ActivePodsWithRanks: unassigned before
/// assigned, Pending before Unknown before Running, not ready before ready, recently ready first,
/// more restarts first, newer first.
pub fn deletion_rank(p: &Pod) -> (u8, u8, u8, i64, i64, i64) {
    let assigned = u8::from(p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some_and(|n| !n.is_empty()));
    let phase = match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0,
        Some("Unknown") => 1,
        _ => 2,
    };
    let ready_since = crate::util::pod_ready_since(p);
    let ready = u8::from(ready_since.is_some());
    let ready_at = ready_since.map(|t| -t.as_second()).unwrap_or(0);
    let restarts: i64 = p.status.as_ref().and_then(|s| s.container_statuses.as_ref()).map(|cs| cs.iter().map(|c| i64::from(c.restart_count)).sum()).unwrap_or(0);
    let created = p.metadata.creation_timestamp.as_ref().map(|t| -t.0.as_second()).unwrap_or(0);
    (assigned, phase, ready, ready_at, -restarts, created)
}

/// 404 from the API.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// The API's message for an error.
pub fn kube_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn pod(name: &str, node: Option<&str>, phase: &str, ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            spec: Some(PodSpec { node_name: node.map(str::to_string), ..Default::default() }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: Some(vec![PodCondition { type_: "Ready".into(), status: if ready { "True" } else { "False" }.into(), last_transition_time: Some(Time(Timestamp::UNIX_EPOCH)), ..Default::default() }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn deletes_unassigned_then_pending_then_unready_first() {
        let mut pods = [pod("running-ready", Some("n1"), "Running", true), pod("running-unready", Some("n1"), "Running", false), pod("pending", Some("n1"), "Pending", false), pod("unassigned", None, "Pending", false)];
        pods.sort_by_key(deletion_rank);
        let names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
        assert_eq!(names, ["unassigned", "pending", "running-unready", "running-ready"]);
    }
}
