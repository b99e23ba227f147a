//! DaemonSet controller: one pod per eligible node (nodeSelector, taints vs tolerations, with the
//! tolerations upstream adds to daemon pods), pinned with a `metadata.name` node-affinity term the
//! scheduler honours; RollingUpdate replaces out-of-date pods (label `controller-revision-hash`) at
//! most maxUnavailable at a time; OnDelete leaves them. Status as `kubectl rollout status ds` reads it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::replicaset::{is_not_found, kube_message};
use crate::runtime::{controller_of, get, key_of, owner_ref, Expectations, Queue, Recorder};
use crate::util::{map_selector_matches, pod_active, pod_available, pod_ready, untolerated};
use crate::ControllersError;

/// Label with the template hash of a daemon pod.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// Tolerations every daemon pod gets (upstream `AddOrUpdateDaemonPodTolerations`).
pub fn daemon_tolerations(mut tols: Vec<Toleration>) -> Vec<Toleration> {
    let add = |tols: &mut Vec<Toleration>, key: &str, effect: &str| {
        if !tols.iter().any(|t| t.key.as_deref() == Some(key) && t.effect.as_deref() == Some(effect)) {
            tols.push(Toleration { key: Some(key.into()), operator: Some("Exists".into()), effect: Some(effect.into()), ..Default::default() });
        }
    };
    add(&mut tols, "node.kubernetes.io/not-ready", "NoExecute");
    add(&mut tols, "node.kubernetes.io/unreachable", "NoExecute");
    add(&mut tols, "node.kubernetes.io/disk-pressure", "NoSchedule");
    add(&mut tols, "node.kubernetes.io/memory-pressure", "NoSchedule");
    add(&mut tols, "node.kubernetes.io/pid-pressure", "NoSchedule");
    add(&mut tols, "node.kubernetes.io/unschedulable", "NoSchedule");
    tols
}

/// Pure: should a daemon pod of `ds` run on `node`?
pub fn should_run(ds: &DaemonSet, node: &Node) -> bool {
    let spec = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref());
    if let Some(sel) = spec.and_then(|s| s.node_selector.as_ref()) {
        if !map_selector_matches(sel, node.labels()) {
            return false;
        }
    }
    let tols = daemon_tolerations(spec.and_then(|s| s.tolerations.clone()).unwrap_or_default());
    let taints = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
    untolerated(&taints, &tols, &["NoSchedule", "NoExecute"]).is_none()
}

/// The DaemonSet controller.
pub struct DaemonSetController {
    client: Client,
    ds: Store<DaemonSet>,
    nodes: Store<Node>,
    pods: Store<Pod>,
    queue: Queue,
    exp: Arc<Expectations>,
    rec: Recorder,
}

impl DaemonSetController {
    /// Wires the controller to the shared informers.
    pub fn new(client: Client, inf: &crate::Informers, rec: Recorder) -> Arc<Self> {
        let queue = Queue::new();
        let exp = Arc::new(Expectations::default());
        {
            let q = queue.clone();
            inf.daemonsets.on_change(move |_, new| {
                if let Some(d) = new {
                    q.add(key_of(&d.metadata));
                }
            });
        }
        {
            let q = queue.clone();
            let ds = inf.daemonsets.store();
            inf.nodes.on_change(move |old, new| {
                let changed = match (old, new) {
                    (Some(o), Some(n)) => o.labels() != n.labels() || o.spec != n.spec,
                    _ => true,
                };
                if changed {
                    for d in ds.state() {
                        q.add(key_of(&d.metadata));
                    }
                }
            });
        }
        {
            let q = queue.clone();
            let exp = exp.clone();
            inf.pods.on_change(move |old, new| {
                for p in [old, new].into_iter().flatten() {
                    if let Some(o) = controller_of(&p.metadata).filter(|o| o.kind == "DaemonSet") {
                        let k = format!("{}/{}", p.namespace().unwrap_or_default(), o.name);
                        match (old, new) {
                            (None, Some(_)) => exp.creation_observed(&k),
                            (Some(_), None) => exp.deletion_observed(&k, &p.name_any()),
                            (Some(a), Some(b)) if a.metadata.deletion_timestamp.is_none() && b.metadata.deletion_timestamp.is_some() => exp.deletion_observed(&k, &p.name_any()),
                            _ => {}
                        }
                        q.add(k);
                    }
                }
            });
        }
        Arc::new(DaemonSetController { client, ds: inf.daemonsets.store(), nodes: inf.nodes.store(), pods: inf.pods.store(), queue, exp, rec })
    }

    /// Runs the workers.
    pub async fn run(self: Arc<Self>, workers: usize) {
        let me = self.clone();
        crate::runtime::run_workers("daemonset", self.queue.clone(), workers, move |k| me.clone().reconcile(k)).await
    }

    #[tracing::instrument(name = "reconcile_daemonset", skip(self))]
    async fn reconcile(self: Arc<Self>, key: String) -> Result<Option<Duration>, ControllersError> {
        let Some(ds) = get(&self.ds, &key) else {
            self.exp.forget(&key);
            return Ok(None);
        };
        if ds.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let ns = ds.namespace().unwrap_or_default();
        let uid = ds.metadata.uid.clone().unwrap_or_default();
        let spec = ds.spec.clone().unwrap_or_default();
        let hash = crate::deployment::template_hash(&spec.template, None);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let mut by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
        for p in self.pods.state() {
            if p.namespace().as_deref() == Some(ns.as_str()) && pod_active(&p) && controller_of(&p.metadata).is_some_and(|o| o.uid == uid) {
                let node = pinned_node(&p).unwrap_or_default();
                by_node.entry(node).or_default().push(p);
            }
        }
        let nodes = self.nodes.state();
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let now = Timestamp::now();
        let (mut desired, mut current, mut misscheduled, mut ready, mut updated, mut available) = (0, 0, 0, 0, 0, 0);
        let mut to_create: Vec<String> = Vec::new();
        let mut to_delete: Vec<Arc<Pod>> = Vec::new();
        let mut outdated: Vec<Arc<Pod>> = Vec::new();
        let mut unavailable_now = 0;
        for n in &nodes {
            let name = n.name_any();
            let pods = by_node.remove(&name).unwrap_or_default();
            if should_run(&ds, n) {
                desired += 1;
                if pods.is_empty() {
                    to_create.push(name);
                    unavailable_now += 1;
                    continue;
                }
                current += 1;
                let mut sorted = pods.clone();
                sorted.sort_by_key(|p| p.metadata.creation_timestamp.clone());
                to_delete.extend(sorted.iter().skip(1).cloned());
                let p = &sorted[0];
                if pod_ready(p) {
                    ready += 1;
                }
                let avail = pod_available(p, min_ready, now);
                if avail {
                    available += 1;
                } else {
                    unavailable_now += 1;
                }
                if p.labels().get(REVISION_LABEL) == Some(&hash) {
                    updated += 1;
                } else {
                    outdated.push(p.clone());
                }
            } else if !pods.is_empty() {
                misscheduled += 1;
                to_delete.extend(pods);
            }
        }
        // pods for nodes that no longer exist
        for (_, pods) in by_node {
            to_delete.extend(pods);
        }
        if self.exp.satisfied(&key) {
            // rolling update: replace outdated pods within maxUnavailable
            let rolling = spec.update_strategy.as_ref().and_then(|s| s.type_.as_deref()).unwrap_or("RollingUpdate") == "RollingUpdate";
            if rolling && !outdated.is_empty() {
                let mu = spec.update_strategy.as_ref().and_then(|s| s.rolling_update.as_ref()).and_then(|r| r.max_unavailable.as_ref());
                let max_unavail = crate::deployment::resolve(mu, 0, desired, true).max(1);
                outdated.sort_by_key(|p| pod_available(p, min_ready, now));
                let mut budget = max_unavail - unavailable_now;
                for p in outdated {
                    let avail = pod_available(&p, min_ready, now);
                    if avail && budget <= 0 {
                        break;
                    }
                    if avail {
                        budget -= 1;
                    }
                    to_delete.push(p);
                }
            }
            self.exp.expect_creations(&key, i64::try_from(to_create.len()).unwrap_or(0));
            self.exp.expect_deletions(&key, to_delete.iter().map(|p| p.name_any()));
            let mut tmpl = spec.template.clone();
            let mut md = tmpl.metadata.clone().unwrap_or_default();
            md.labels.get_or_insert_with(BTreeMap::new).insert(REVISION_LABEL.into(), hash.clone());
            tmpl.metadata = Some(md.clone());
            for node in &to_create {
                let mut pspec = tmpl.spec.clone().unwrap_or_default();
                pspec.tolerations = Some(daemon_tolerations(pspec.tolerations.unwrap_or_default()));
                let mut aff = pspec.affinity.clone().unwrap_or_default();
                aff.node_affinity = Some(serde_json::from_value(json!({"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]}}))
                .unwrap_or_default());
                pspec.affinity = Some(aff);
                let pod = Pod {
                    metadata: ObjectMeta {
                        generate_name: Some(format!("{}-", ds.name_any())),
                        namespace: Some(ns.clone()),
                        labels: md.labels.clone(),
                        annotations: md.annotations.clone(),
                        owner_references: Some(vec![owner_ref(&*ds)]),
                        ..Default::default()
                    },
                    spec: Some(pspec),
                    status: None,
                };
                match api.create(&PostParams::default(), &pod).await {
                    Ok(p) => self.rec.event(&*ds, "Normal", "SuccessfulCreate", format!("Created pod: {}", p.name_any())),
                    Err(e) => {
                        self.exp.creation_observed(&key);
                        self.rec.event(&*ds, "Warning", "FailedCreate", format!("Error creating: {}", kube_message(&e)));
                    }
                }
            }
            for p in &to_delete {
                match api.delete(&p.name_any(), &DeleteParams::default()).await {
                    Ok(_) => self.rec.event(&*ds, "Normal", "SuccessfulDelete", format!("Deleted pod: {}", p.name_any())),
                    Err(e) => {
                        self.exp.deletion_observed(&key, &p.name_any());
                        if !is_not_found(&e) {
                            return Err(ControllersError::kube("deleting daemon pod", format!("{ns}/{}", p.name_any()), e));
                        }
                    }
                }
            }
        }
        let st = ds.status.clone().unwrap_or_default();
        let unavailable = (desired - available).max(0);
        let changed = st.desired_number_scheduled != desired
            || st.current_number_scheduled != current
            || st.number_misscheduled != misscheduled
            || st.number_ready != ready
            || st.updated_number_scheduled.unwrap_or(0) != updated
            || st.number_available.unwrap_or(0) != available
            || st.number_unavailable.unwrap_or(0) != unavailable
            || st.observed_generation != ds.metadata.generation;
        if changed {
            let dapi: Api<DaemonSet> = Api::namespaced(self.client.clone(), &ns);
            let patch = json!({"status": {"desiredNumberScheduled": desired, "currentNumberScheduled": current, "numberMisscheduled": misscheduled,
                "numberReady": ready, "updatedNumberScheduled": updated, "numberAvailable": available, "numberUnavailable": unavailable,
                "observedGeneration": ds.metadata.generation}});
            match dapi.patch_status(&ds.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(ControllersError::kube("updating status of daemonset", key.clone(), e)),
            }
        }
        if min_ready > 0 && ready > available {
            return Ok(Some(Duration::from_secs(u64::try_from(min_ready).unwrap_or(1))));
        }
        Ok(None)
    }
}

/// The node a daemon pod is bound or pinned to.
fn pinned_node(p: &Pod) -> Option<String> {
    let spec = p.spec.as_ref()?;
    if let Some(n) = spec.node_name.clone().filter(|n| !n.is_empty()) {
        return Some(n);
    }
    let terms = &spec.affinity.as_ref()?.node_affinity.as_ref()?.required_during_scheduling_ignored_during_execution.as_ref()?.node_selector_terms;
    terms.iter().flat_map(|t| t.match_fields.iter().flatten()).find(|f| f.key == "metadata.name").and_then(|f| f.values.as_ref()?.first().cloned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DaemonSetSpec;
    use k8s_openapi::api::core::v1::{NodeSpec, PodSpec, PodTemplateSpec, Taint};

    #[test]
    fn eligibility_follows_selector_and_taints() {
        let ds = |sel: Option<(&str, &str)>| DaemonSet {
            spec: Some(DaemonSetSpec {
                template: PodTemplateSpec { spec: Some(PodSpec { node_selector: sel.map(|(k, v)| [(k.to_string(), v.to_string())].into()), ..Default::default() }), ..Default::default() },
                ..Default::default()
            }),
            ..Default::default()
        };
        let node = |labels: &[(&str, &str)], taint: Option<&str>| Node {
            metadata: ObjectMeta { labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()), ..Default::default() },
            spec: Some(NodeSpec { taints: taint.map(|k| vec![Taint { key: k.into(), effect: "NoSchedule".into(), ..Default::default() }]), ..Default::default() }),
            status: None,
        };
        assert!(should_run(&ds(None), &node(&[], None)));
        assert!(should_run(&ds(None), &node(&[], Some("node.kubernetes.io/unschedulable"))), "daemon pods tolerate cordoned nodes");
        assert!(!should_run(&ds(None), &node(&[], Some("node-role.kubernetes.io/control-plane"))));
        assert!(should_run(&ds(Some(("role", "edge"))), &node(&[("role", "edge")], None)));
        assert!(!should_run(&ds(Some(("role", "edge"))), &node(&[("role", "core")], None)));
    }
}
