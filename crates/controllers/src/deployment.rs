//! Deployment controller, after upstream's `pkg/controller/deployment`: one ReplicaSet per pod template
//! (`<name>-<pod-template-hash>`), RollingUpdate bounded by maxSurge/maxUnavailable, Recreate, proportional
//! scaling, revision annotations (so `kubectl rollout history|undo` work), revisionHistoryLimit and the
//! status/conditions `kubectl rollout status` reads.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentSpec, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::replicaset::is_not_found;
use crate::runtime::{controller_of, get, key_of, owner_ref, Queue, Recorder};
use crate::util::{pod_terminal, selector_selects};
use crate::ControllersError;

/// Label carrying the template hash.
pub const HASH_LABEL: &str = "pod-template-hash";
/// Revision annotation.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// Desired-replicas annotation.
pub const DESIRED: &str = "deployment.kubernetes.io/desired-replicas";
/// Max-replicas annotation.
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";

/// The Deployment controller.
pub struct DeploymentController {
    client: Client,
    deps: Store<Deployment>,
    rs: Store<ReplicaSet>,
    pods: Store<Pod>,
    queue: Queue,
    rec: Recorder,
}

/// fnv-1a 32-bit.
fn fnv32a(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in data {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The pod-template-hash of a template (upstream's ComputeHash + SafeEncodeString form).
pub fn template_hash(t: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut bytes = serde_json::to_vec(&strip_hash(t)).unwrap_or_default();
    if let Some(c) = collision_count {
        bytes.extend_from_slice(&u32::try_from(c).unwrap_or(0).to_le_bytes());
        bytes.extend_from_slice(&[0, 0, 0, 0]);
    }
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    fnv32a(&bytes).to_string().bytes().map(|b| ALPHA[usize::from(b) % ALPHA.len()] as char).collect()
}

fn strip_hash(t: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = t.clone();
    if let Some(m) = t.metadata.as_mut() {
        if let Some(l) = m.labels.as_mut() {
            l.remove(HASH_LABEL);
            if l.is_empty() {
                m.labels = None;
            }
        }
    }
    if t.metadata.as_ref().is_some_and(|m| *m == ObjectMeta::default()) {
        t.metadata = None;
    }
    t
}

/// Templates equal ignoring the hash label.
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    strip_hash(a) == strip_hash(b)
}

/// Resolves an IntOrString against `total` (percent rounds up for surge, down for unavailable).
pub fn resolve(v: Option<&IntOrString>, default_percent: i32, total: i32, round_up: bool) -> i32 {
    let pct = |p: i64| {
        let x = p * i64::from(total);
        i32::try_from(if round_up { (x + 99) / 100 } else { x / 100 }).unwrap_or(0)
    };
    match v {
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => pct(s.trim_end_matches('%').parse().unwrap_or(i64::from(default_percent))),
        None => pct(i64::from(default_percent)),
    }
}

/// (maxSurge, maxUnavailable) for a deployment; both 0 becomes unavailable 1, as upstream.
pub fn surge_unavailable(spec: &DeploymentSpec) -> (i32, i32) {
    let replicas = spec.replicas.unwrap_or(1);
    let st = spec.strategy.as_ref();
    if st.and_then(|s| s.type_.as_deref()) == Some("Recreate") {
        return (0, 0);
    }
    let ru = st.and_then(|s| s.rolling_update.as_ref());
    let surge = resolve(ru.and_then(|r| r.max_surge.as_ref()), 25, replicas, true);
    let mut unavail = resolve(ru.and_then(|r| r.max_unavailable.as_ref()), 25, replicas, false);
    if surge == 0 && unavail == 0 {
        unavail = 1;
    }
    (surge, unavail.min(replicas))
}

fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}
fn rs_available(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0)
}
fn revision_of(rs: &ReplicaSet) -> i64 {
    rs.annotations().get(REVISION).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Pure: the replicas the new ReplicaSet should have in a rolling update (upstream NewRSNewReplicas).
pub fn new_rs_new_replicas(want: i32, max_surge: i32, all_replicas: i32, new_replicas: i32) -> i32 {
    let max_total = want + max_surge;
    if all_replicas >= max_total {
        return new_replicas;
    }
    let up = (max_total - all_replicas).min(want - new_replicas).max(0);
    new_replicas + up
}

/// Pure: how far old ReplicaSets may be scaled down in one rolling step, given (replicas, available) of
/// the old sets oldest first, of the new set, `want` and maxUnavailable. Returns new sizes of the old sets.
pub fn scale_down_olds(olds: &[(i32, i32)], new: (i32, i32), want: i32, max_unavailable: i32) -> Vec<i32> {
    let all: i32 = olds.iter().map(|o| o.0).sum::<i32>() + new.0;
    let min_available = want - max_unavailable;
    let new_unavailable = new.0 - new.1;
    let max_scaled_down = all - min_available - new_unavailable;
    let mut sizes: Vec<i32> = olds.iter().map(|o| o.0).collect();
    if max_scaled_down <= 0 {
        return sizes;
    }
    // first the unhealthy replicas of old sets
    let mut cleaned = 0;
    for (i, (size, avail)) in olds.iter().enumerate() {
        if cleaned >= max_scaled_down {
            break;
        }
        if *size == 0 || size == avail {
            continue;
        }
        let n = (max_scaled_down - cleaned).min(size - avail);
        sizes[i] = size - n;
        cleaned += n;
    }
    // then available ones, keeping minAvailable
    let available: i32 = olds.iter().map(|o| o.1).sum::<i32>() + new.1;
    if available > min_available {
        let total = available - min_available;
        let mut done = 0;
        for s in sizes.iter_mut() {
            if done >= total {
                break;
            }
            if *s == 0 {
                continue;
            }
            let n = (*s).min(total - done);
            *s -= n;
            done += n;
        }
    }
    sizes
}

impl DeploymentController {
    /// Wires the controller to the shared informers.
    pub fn new(client: Client, inf: &crate::Informers, rec: Recorder) -> Arc<Self> {
        let queue = Queue::new();
        {
            let q = queue.clone();
            inf.deployments.on_change(move |_, new| {
                if let Some(n) = new {
                    q.add(key_of(&n.metadata));
                }
            });
        }
        {
            let q = queue.clone();
            let deps = inf.deployments.store();
            inf.replicasets.on_change(move |old, new| {
                for r in [old, new].into_iter().flatten() {
                    let ns = r.namespace().unwrap_or_default();
                    match controller_of(&r.metadata) {
                        Some(o) if o.kind == "Deployment" => q.add(format!("{ns}/{}", o.name)),
                        Some(_) => {}
                        None => {
                            for d in deps.state() {
                                if d.namespace().as_deref() == Some(ns.as_str()) && selector_selects(d.spec.as_ref().map(|s| &s.selector), r.labels()) {
                                    q.add(key_of(&d.metadata));
                                }
                            }
                        }
                    }
                }
            });
        }
        {
            // Recreate waits for old pods to be gone
            let q = queue.clone();
            let rs_store = inf.replicasets.store();
            inf.pods.on_change(move |old, new| {
                if new.is_some() {
                    return;
                }
                let Some(p) = old else { return };
                let ns = p.namespace().unwrap_or_default();
                if let Some(o) = controller_of(&p.metadata).filter(|o| o.kind == "ReplicaSet") {
                    if let Some(rs) = get(&rs_store, &format!("{ns}/{}", o.name)) {
                        if let Some(d) = controller_of(&rs.metadata).filter(|o| o.kind == "Deployment") {
                            q.add(format!("{ns}/{}", d.name));
                        }
                    }
                }
            });
        }
        Arc::new(DeploymentController { client, deps: inf.deployments.store(), rs: inf.replicasets.store(), pods: inf.pods.store(), queue, rec })
    }

    /// Runs the workers.
    pub async fn run(self: Arc<Self>, workers: usize) {
        let me = self.clone();
        crate::runtime::run_workers("deployment", self.queue.clone(), workers, move |k| me.clone().reconcile(k)).await
    }

    fn rs_api(&self, ns: &str) -> Api<ReplicaSet> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Claims ReplicaSets: owned ones that still match, orphans that match (adopted). Oldest first.
    async fn claim(&self, d: &Deployment) -> Result<Vec<Arc<ReplicaSet>>, ControllersError> {
        let ns = d.namespace().unwrap_or_default();
        let uid = d.metadata.uid.clone().unwrap_or_default();
        let sel = d.spec.as_ref().map(|s| &s.selector);
        let deleting = d.metadata.deletion_timestamp.is_some();
        let mut out = Vec::new();
        for r in self.rs.state() {
            if r.namespace().as_deref() != Some(ns.as_str()) {
                continue;
            }
            let matches = selector_selects(sel, r.labels());
            match controller_of(&r.metadata) {
                Some(o) if o.uid == uid => {
                    if matches {
                        out.push(r);
                    } else if !deleting {
                        let refs: Vec<OwnerReference> = r.owner_references().iter().filter(|o| o.uid != uid).cloned().collect();
                        let _ = self.rs_api(&ns).patch(&r.name_any(), &PatchParams::default(), &Patch::Merge(&json!({"metadata": {"ownerReferences": refs}}))).await;
                    }
                }
                Some(_) => {}
                None if matches && !deleting && r.metadata.deletion_timestamp.is_none() => {
                    let mut refs = r.owner_references().to_vec();
                    refs.push(owner_ref(d));
                    match self.rs_api(&ns).patch(&r.name_any(), &PatchParams::default(), &Patch::Merge(&json!({"metadata": {"ownerReferences": refs}}))).await {
                        Ok(n) => out.push(Arc::new(n)),
                        Err(e) if is_not_found(&e) => {}
                        Err(e) => return Err(ControllersError::kube("adopting replicaset", format!("{ns}/{}", r.name_any()), e)),
                    }
                }
                None => {}
            }
        }
        out.sort_by(|a, b| a.metadata.creation_timestamp.cmp(&b.metadata.creation_timestamp).then_with(|| a.name_any().cmp(&b.name_any())));
        Ok(out)
    }

    async fn scale_rs(&self, d: &Deployment, rs: &ReplicaSet, to: i32) -> Result<ReplicaSet, ControllersError> {
        let spec = d.spec.clone().unwrap_or_default();
        let (surge, _) = surge_unavailable(&spec);
        let want = spec.replicas.unwrap_or(1);
        let from = rs_replicas(rs);
        let ns = rs.namespace().unwrap_or_default();
        let patch = json!({"metadata": {"annotations": {DESIRED: want.to_string(), MAX_REPLICAS: (want + surge).to_string()}}, "spec": {"replicas": to}});
        let out = self
            .rs_api(&ns)
            .patch(&rs.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| ControllersError::kube("scaling replicaset", format!("{ns}/{}", rs.name_any()), e))?;
        if from != to {
            let dir = if to > from { "up" } else { "down" };
            self.rec.event(d, "Normal", "ScalingReplicaSet", format!("Scaled {dir} replica set {} from {from} to {to}", rs.name_any()));
        }
        Ok(out)
    }

    /// Finds the ReplicaSet of the current template; creates it when `create`. Syncs revisions.
    async fn new_rs(&self, d: &Deployment, all: &[Arc<ReplicaSet>], create: bool) -> Result<Option<ReplicaSet>, ControllersError> {
        let spec = d.spec.clone().unwrap_or_default();
        let ns = d.namespace().unwrap_or_default();
        let tmpl = spec.template.clone();
        let existing = all.iter().find(|r| r.spec.as_ref().and_then(|s| s.template.as_ref()).is_some_and(|t| equal_ignore_hash(t, &tmpl)));
        let max_old = all.iter().filter(|r| existing.is_none_or(|e| e.metadata.uid != r.metadata.uid)).map(|r| revision_of(r)).max().unwrap_or(0);
        let new_rev = max_old + 1;
        let (surge, _) = surge_unavailable(&spec);
        let want = spec.replicas.unwrap_or(1);
        if let Some(e) = existing {
            let cur = revision_of(e);
            let mut ann = BTreeMap::new();
            if cur < new_rev {
                ann.insert(REVISION.to_string(), new_rev.to_string());
                if cur > 0 {
                    let mut hist: Vec<String> = e.annotations().get(REVISION_HISTORY).map(|h| h.split(',').map(str::to_string).collect()).unwrap_or_default();
                    hist.push(cur.to_string());
                    ann.insert(REVISION_HISTORY.to_string(), hist.join(","));
                }
            }
            let rev = cur.max(new_rev);
            let rs = if ann.is_empty() {
                (**e).clone()
            } else {
                self.rs_api(&ns)
                    .patch(&e.name_any(), &PatchParams::default(), &Patch::Merge(&json!({"metadata": {"annotations": ann}})))
                    .await
                    .map_err(|er| ControllersError::kube("updating revision of replicaset", format!("{ns}/{}", e.name_any()), er))?
            };
            self.set_deployment_revision(d, rev).await?;
            return Ok(Some(rs));
        }
        if !create {
            return Ok(None);
        }
        let collision = d.status.as_ref().and_then(|s| s.collision_count);
        let hash = template_hash(&tmpl, collision);
        let mut t = tmpl.clone();
        let mut tm = t.metadata.clone().unwrap_or_default();
        tm.labels.get_or_insert_with(BTreeMap::new).insert(HASH_LABEL.into(), hash.clone());
        let labels = tm.labels.clone().unwrap_or_default();
        t.metadata = Some(tm);
        let mut sel = spec.selector.clone();
        sel.match_labels.get_or_insert_with(BTreeMap::new).insert(HASH_LABEL.into(), hash.clone());
        let mut ann: BTreeMap<String, String> = d
            .annotations()
            .iter()
            .filter(|(k, _)| !["kubectl.kubernetes.io/last-applied-configuration", REVISION, REVISION_HISTORY, DESIRED, MAX_REPLICAS].contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        ann.insert(REVISION.into(), new_rev.to_string());
        ann.insert(DESIRED.into(), want.to_string());
        ann.insert(MAX_REPLICAS.into(), (want + surge).to_string());
        let is_recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
        let all_replicas: i32 = all.iter().map(|r| rs_replicas(r)).sum();
        let replicas = if is_recreate { 0 } else { new_rs_new_replicas(want, surge, all_replicas, 0) };
        let name = format!("{}-{hash}", d.name_any());
        let rs = ReplicaSet {
            metadata: ObjectMeta { name: Some(name.clone()), namespace: Some(ns.clone()), labels: Some(labels), annotations: Some(ann), owner_references: Some(vec![owner_ref(d)]), ..Default::default() },
            spec: Some(ReplicaSetSpec { replicas: Some(replicas), min_ready_seconds: spec.min_ready_seconds, selector: sel, template: Some(t) }),
            status: None,
        };
        match self.rs_api(&ns).create(&PostParams::default(), &rs).await {
            Ok(created) => {
                if replicas > 0 {
                    self.rec.event(d, "Normal", "ScalingReplicaSet", format!("Scaled up replica set {name} from 0 to {replicas}"));
                }
                self.set_deployment_revision(d, new_rev).await?;
                let mut conds = d.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
                set_condition(&mut conds, "Progressing", "True", "NewReplicaSetCreated", &format!("Created new replica set \"{name}\""), true);
                self.patch_status(d, json!({"status": {"conditions": conds}})).await?;
                Ok(Some(created))
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // same name: the same template (our cache lagged) or a hash collision
                let cur = self.rs_api(&ns).get(&name).await.map_err(|e| ControllersError::kube("reading replicaset", format!("{ns}/{name}"), e))?;
                let same = cur.spec.as_ref().and_then(|s| s.template.as_ref()).is_some_and(|t| equal_ignore_hash(t, &tmpl));
                if same && controller_of(&cur.metadata).is_some_and(|o| Some(&o.uid) == d.metadata.uid.as_ref()) {
                    return Ok(Some(cur));
                }
                let cc = collision.unwrap_or(0) + 1;
                self.patch_status(d, json!({"status": {"collisionCount": cc}})).await?;
                Err(ControllersError::Retry { object: format!("{ns}/{}", d.name_any()), message: format!("hash collision on replicaset {name}; collisionCount now {cc}") })
            }
            Err(e) => Err(ControllersError::kube("creating replicaset", format!("{ns}/{name}"), e)),
        }
    }

    async fn set_deployment_revision(&self, d: &Deployment, rev: i64) -> Result<(), ControllersError> {
        if d.annotations().get(REVISION) == Some(&rev.to_string()) {
            return Ok(());
        }
        let ns = d.namespace().unwrap_or_default();
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &ns);
        api.patch(&d.name_any(), &PatchParams::default(), &Patch::Merge(&json!({"metadata": {"annotations": {REVISION: rev.to_string()}}})))
            .await
            .map(|_| ())
            .map_err(|e| ControllersError::kube("setting revision of deployment", format!("{ns}/{}", d.name_any()), e))
    }

    async fn patch_status(&self, d: &Deployment, patch: serde_json::Value) -> Result<(), ControllersError> {
        let ns = d.namespace().unwrap_or_default();
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &ns);
        match api.patch_status(&d.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(ControllersError::kube("updating status of deployment", format!("{ns}/{}", d.name_any()), e)),
        }
    }

    #[tracing::instrument(name = "reconcile_deployment", skip(self))]
    async fn reconcile(self: Arc<Self>, key: String) -> Result<Option<Duration>, ControllersError> {
        let Some(d) = get(&self.deps, &key) else { return Ok(None) };
        if d.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let d: Deployment = (*d).clone();
        let spec = d.spec.clone().unwrap_or_default();
        if spec.selector.match_labels.as_ref().is_none_or(|m| m.is_empty()) && spec.selector.match_expressions.as_ref().is_none_or(|m| m.is_empty()) {
            self.rec.event(&d, "Warning", "SelectingAll", "This deployment is selecting all pods. A non-empty selector is required.".into());
            return Ok(None);
        }
        let mut all = self.claim(&d).await?;
        let want = spec.replicas.unwrap_or(1);
        let (surge, unavail) = surge_unavailable(&spec);
        let paused = spec.paused.unwrap_or(false);
        // scaling event: an active ReplicaSet was sized for another replica count
        let scaling = all.iter().filter(|r| rs_replicas(r) > 0).any(|r| r.annotations().get(DESIRED).and_then(|v| v.parse::<i32>().ok()) != Some(want));
        if paused || scaling {
            let new = self.new_rs(&d, &all, false).await?;
            self.scale(&d, &all, new.as_ref(), want, surge).await?;
            if paused {
                all = self.claim(&d).await?;
                self.cleanup(&d, &all, new.as_ref()).await?;
            }
            return self.sync_status(&d, new.as_ref()).await;
        }
        let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
        if recreate {
            let new = self.new_rs(&d, &all, false).await?;
            let new_uid = new.as_ref().and_then(|n| n.metadata.uid.clone());
            let olds: Vec<Arc<ReplicaSet>> = all.iter().filter(|r| r.metadata.uid != new_uid).cloned().collect();
            let mut scaled = false;
            for o in &olds {
                if rs_replicas(o) > 0 {
                    self.scale_rs(&d, o, 0).await?;
                    scaled = true;
                }
            }
            if scaled {
                return self.sync_status(&d, new.as_ref()).await;
            }
            // wait until every old pod is gone
            let old_uids: Vec<String> = olds.iter().filter_map(|o| o.metadata.uid.clone()).collect();
            let running = self.pods.state().iter().any(|p| controller_of(&p.metadata).is_some_and(|o| old_uids.contains(&o.uid)) && !pod_terminal(p));
            if running {
                return self.sync_status(&d, new.as_ref()).await;
            }
            let new = match new {
                Some(n) => Some(n),
                None => self.new_rs(&d, &all, true).await?,
            };
            if let Some(n) = &new {
                if rs_replicas(n) != want {
                    self.scale_rs(&d, n, want).await?;
                }
            }
            all = self.claim(&d).await?;
            if self.complete(&d, new.as_ref()) {
                self.cleanup(&d, &all, new.as_ref()).await?;
            }
            return self.sync_status(&d, new.as_ref()).await;
        }
        // RollingUpdate
        let Some(new) = self.new_rs(&d, &all, true).await? else { return self.sync_status(&d, None).await };
        all = self.claim(&d).await?;
        let new_uid = new.metadata.uid.clone();
        let new = all.iter().find(|r| r.metadata.uid == new_uid).map(|r| (**r).clone()).unwrap_or(new);
        let all_replicas: i32 = all.iter().map(|r| rs_replicas(r)).sum();
        let new_replicas = rs_replicas(&new);
        if new_replicas > want {
            self.scale_rs(&d, &new, want).await?;
            return self.sync_status(&d, Some(&new)).await;
        }
        if new_replicas < want {
            let target = new_rs_new_replicas(want, surge, all_replicas, new_replicas);
            if target != new_replicas {
                self.scale_rs(&d, &new, target).await?;
                return self.sync_status(&d, Some(&new)).await;
            }
        }
        let olds: Vec<Arc<ReplicaSet>> = all.iter().filter(|r| r.metadata.uid != new_uid).cloned().collect();
        let shape: Vec<(i32, i32)> = olds.iter().map(|r| (rs_replicas(r), rs_available(r))).collect();
        let sizes = scale_down_olds(&shape, (rs_replicas(&new), rs_available(&new)), want, unavail);
        for (r, to) in olds.iter().zip(sizes) {
            if to != rs_replicas(r) {
                self.scale_rs(&d, r, to).await?;
            }
        }
        all = self.claim(&d).await?;
        if self.complete(&d, Some(&new)) {
            self.cleanup(&d, &all, Some(&new)).await?;
        }
        self.sync_status(&d, Some(&new)).await
    }

    /// Proportional scaling (upstream `scale`).
    async fn scale(&self, d: &Deployment, all: &[Arc<ReplicaSet>], new: Option<&ReplicaSet>, want: i32, surge: i32) -> Result<(), ControllersError> {
        let active: Vec<&Arc<ReplicaSet>> = all.iter().filter(|r| rs_replicas(r) > 0).collect();
        if active.len() <= 1 {
            let target = active.first().map(|r| (***r).clone()).or_else(|| new.cloned()).or_else(|| all.last().map(|r| (**r).clone()));
            if let Some(r) = target {
                if rs_replicas(&r) != want || r.annotations().get(DESIRED) != Some(&want.to_string()) {
                    self.scale_rs(d, &r, want).await?;
                }
            }
            return Ok(());
        }
        let allowed = want + surge;
        let current: i32 = active.iter().map(|r| rs_replicas(r)).sum();
        let to_add = allowed - current;
        let mut sized: Vec<(&Arc<ReplicaSet>, i32)> = active.iter().map(|r| (*r, rs_replicas(r))).collect();
        sized.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.metadata.creation_timestamp.cmp(&a.0.metadata.creation_timestamp)));
        let mut added = 0;
        let mut targets: Vec<i32> = Vec::new();
        for (_, size) in &sized {
            let share = if current > 0 { i32::try_from(i64::from(*size) * i64::from(to_add) / i64::from(current)).unwrap_or(0) } else { 0 };
            let share = if to_add > 0 { share.min(to_add - added) } else { share.max(to_add - added) };
            added += share;
            targets.push(size + share);
        }
        if let Some(first) = targets.first_mut() {
            *first += to_add - added;
        }
        for ((r, _), t) in sized.iter().zip(targets) {
            self.scale_rs(d, r, t.max(0)).await?;
        }
        Ok(())
    }

    fn complete(&self, d: &Deployment, new: Option<&ReplicaSet>) -> bool {
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let Some(n) = new else { return false };
        let Some(n) = get(&self.rs, &key_of(&n.metadata)) else { return false };
        let st = n.status.clone().unwrap_or_default();
        rs_replicas(&n) == want && st.replicas == want && st.available_replicas.unwrap_or(0) == want
    }

    /// Deletes old, fully scaled-down ReplicaSets beyond revisionHistoryLimit.
    async fn cleanup(&self, d: &Deployment, all: &[Arc<ReplicaSet>], new: Option<&ReplicaSet>) -> Result<(), ControllersError> {
        let limit = d.spec.as_ref().and_then(|s| s.revision_history_limit).unwrap_or(10);
        let new_uid = new.and_then(|n| n.metadata.uid.clone());
        let mut olds: Vec<&Arc<ReplicaSet>> = all
            .iter()
            .filter(|r| r.metadata.uid != new_uid && r.metadata.deletion_timestamp.is_none())
            .filter(|r| rs_replicas(r) == 0 && r.status.as_ref().map(|s| s.replicas).unwrap_or(0) == 0)
            .collect();
        let excess = olds.len().saturating_sub(usize::try_from(limit).unwrap_or(0));
        if excess == 0 {
            return Ok(());
        }
        olds.sort_by_key(|r| revision_of(r));
        for r in olds.into_iter().take(excess) {
            let ns = r.namespace().unwrap_or_default();
            match self.rs_api(&ns).delete(&r.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(ControllersError::kube("deleting old replicaset", format!("{ns}/{}", r.name_any()), e)),
            }
        }
        Ok(())
    }

    /// Computes and writes status + conditions; returns when to look again (progress deadline).
    async fn sync_status(&self, d: &Deployment, new: Option<&ReplicaSet>) -> Result<Option<Duration>, ControllersError> {
        let fresh = get(&self.deps, &key_of(&d.metadata)).map(|x| (*x).clone()).unwrap_or_else(|| d.clone());
        let d = &fresh;
        let spec = d.spec.clone().unwrap_or_default();
        let want = spec.replicas.unwrap_or(1);
        let (_, unavail) = surge_unavailable(&spec);
        let uid = d.metadata.uid.clone().unwrap_or_default();
        let all: Vec<Arc<ReplicaSet>> = self.rs.state().into_iter().filter(|r| controller_of(&r.metadata).is_some_and(|o| o.uid == uid)).collect();
        let new_name = new.map(|n| n.name_any());
        let new_cached = new_name.as_ref().and_then(|n| all.iter().find(|r| &r.name_any() == n && r.namespace() == d.namespace()).cloned());
        let st = |r: &ReplicaSet| r.status.clone().unwrap_or_default();
        let replicas: i32 = all.iter().map(|r| st(r).replicas).sum();
        let updated = new_cached.as_ref().map(|n| st(n).replicas).unwrap_or(0);
        let ready: i32 = all.iter().map(|r| st(r).ready_replicas.unwrap_or(0)).sum();
        let available: i32 = all.iter().map(|r| st(r).available_replicas.unwrap_or(0)).sum();
        let unavailable = (want - available).max(0);
        let old = d.status.clone().unwrap_or_default();
        let mut conds = old.conditions.clone().unwrap_or_default();
        if available >= want - unavail {
            set_condition(&mut conds, "Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability.", false);
        } else {
            set_condition(&mut conds, "Available", "False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability.", false);
        }
        let deadline = spec.progress_deadline_seconds.filter(|s| *s != i32::MAX);
        let mut requeue = None;
        let name = new_name.clone().unwrap_or_default();
        let complete = updated == want && replicas == want && available == want && new.is_some();
        if spec.paused.unwrap_or(false) {
            set_condition(&mut conds, "Progressing", "Unknown", "DeploymentPaused", "Deployment is paused", false);
        } else if let Some(deadline) = deadline {
            let cur = conds.iter().find(|c| c.type_ == "Progressing").cloned();
            let exceeded = cur.as_ref().is_some_and(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded"));
            let progressed = updated > old.updated_replicas.unwrap_or(0)
                || ready > old.ready_replicas.unwrap_or(0)
                || available > old.available_replicas.unwrap_or(0)
                || replicas < old.replicas.unwrap_or(0);
            if complete {
                set_condition(&mut conds, "Progressing", "True", "NewReplicaSetAvailable", &format!("ReplicaSet \"{name}\" has successfully progressed."), false);
            } else if !exceeded && (progressed || cur.is_none() || cur.as_ref().is_some_and(|c| c.reason.as_deref() == Some("DeploymentPaused"))) {
                set_condition(&mut conds, "Progressing", "True", "ReplicaSetUpdated", &format!("ReplicaSet \"{name}\" is progressing."), true);
                requeue = Some(Duration::from_secs(u64::try_from(deadline).unwrap_or(600) + 1));
            } else if !exceeded {
                let last = cur.as_ref().and_then(|c| c.last_update_time.as_ref()).map(|t| t.0.as_second()).unwrap_or_else(|| Timestamp::now().as_second());
                let left = last + i64::from(deadline) - Timestamp::now().as_second();
                if left <= 0 {
                    set_condition(&mut conds, "Progressing", "False", "ProgressDeadlineExceeded", &format!("ReplicaSet \"{name}\" has timed out progressing."), false);
                } else {
                    requeue = Some(Duration::from_secs(u64::try_from(left).unwrap_or(1) + 1));
                }
            }
        } else {
            conds.retain(|c| c.type_ != "Progressing");
        }
        let changed = old.replicas != Some(replicas)
            || old.updated_replicas != Some(updated)
            || old.ready_replicas != Some(ready)
            || old.available_replicas != Some(available)
            || old.unavailable_replicas != Some(unavailable)
            || old.observed_generation != d.metadata.generation
            || old.conditions.clone().unwrap_or_default() != conds;
        if changed {
            self.patch_status(
                d,
                json!({"status": {"replicas": replicas, "updatedReplicas": updated, "readyReplicas": ready, "availableReplicas": available,
                    "unavailableReplicas": unavailable, "observedGeneration": d.metadata.generation, "conditions": conds}}),
            )
            .await?;
        }
        Ok(requeue)
    }
}

/// Upstream SetDeploymentCondition: same status and reason keeps the condition (unless `touch`, which
/// refreshes lastUpdateTime); a status change moves lastTransitionTime.
fn set_condition(conds: &mut Vec<DeploymentCondition>, type_: &str, status: &str, reason: &str, message: &str, touch: bool) {
    let now = Time(Timestamp::now());
    if let Some(c) = conds.iter_mut().find(|c| c.type_ == type_) {
        if c.status == status && c.reason.as_deref() == Some(reason) && !touch {
            if c.message.as_deref() != Some(message) {
                c.message = Some(message.into());
            }
            return;
        }
        if c.status != status {
            c.last_transition_time = Some(now.clone());
        }
        c.status = status.into();
        c.reason = Some(reason.into());
        c.message = Some(message.into());
        c.last_update_time = Some(now);
        return;
    }
    conds.push(DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentStrategy, RollingUpdateDeployment};

    fn spec(surge: IntOrString, un: IntOrString, n: i32) -> DeploymentSpec {
        DeploymentSpec {
            replicas: Some(n),
            strategy: Some(DeploymentStrategy { type_: Some("RollingUpdate".into()), rolling_update: Some(RollingUpdateDeployment { max_surge: Some(surge), max_unavailable: Some(un) }) }),
            ..Default::default()
        }
    }

    #[test]
    fn surge_and_unavailable_round_like_upstream() {
        let p = |s: &str| IntOrString::String(s.into());
        assert_eq!(surge_unavailable(&spec(p("25%"), p("25%"), 2)), (1, 0));
        assert_eq!(surge_unavailable(&spec(p("25%"), p("25%"), 10)), (3, 2));
        assert_eq!(surge_unavailable(&spec(IntOrString::Int(0), IntOrString::Int(0), 3)), (0, 1));
    }

    #[test]
    fn new_replicas_respect_surge() {
        assert_eq!(new_rs_new_replicas(10, 3, 10, 0), 3);
        assert_eq!(new_rs_new_replicas(10, 3, 13, 3), 3);
        assert_eq!(new_rs_new_replicas(2, 5, 0, 0), 2);
    }

    #[test]
    fn old_sets_scale_down_within_max_unavailable() {
        // want 2, maxUnavailable 0, surge 1: old 2/2 available, new 1 not yet available -> nothing
        assert_eq!(scale_down_olds(&[(2, 2)], (1, 0), 2, 0), vec![2]);
        // new became available -> one old may go
        assert_eq!(scale_down_olds(&[(2, 2)], (1, 1), 2, 0), vec![1]);
        // unhealthy old replicas go first, regardless of availability
        assert_eq!(scale_down_olds(&[(3, 1)], (1, 0), 3, 1), vec![2]);
    }

    #[test]
    fn hash_ignores_its_own_label_and_changes_with_template() {
        let mut t = PodTemplateSpec::default();
        let h1 = template_hash(&t, None);
        t.metadata = Some(ObjectMeta { labels: Some([(HASH_LABEL.to_string(), "x".to_string())].into()), ..Default::default() });
        assert_eq!(template_hash(&t, None), h1);
        assert_ne!(template_hash(&t, Some(1)), h1);
        assert!(h1.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
    }
}
