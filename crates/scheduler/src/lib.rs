//! dari-scheduler: binds every pod without `spec.nodeName` (and `schedulerName` default-scheduler) to a
//! Node through the `pods/binding` subresource, written against the Kubernetes API with the kube client.
//!
//! Start from [`run`]: it competes for the `kube-system/kube-scheduler` Lease and, while leader, watches
//! Pods and Nodes and runs [`filters::schedule`] (pure: filters, scores, the upstream-form
//! FailedScheduling message) for one pod at a time; binds are issued asynchronously and the chosen node
//! is "assumed" until the watch shows the binding, so back-to-back decisions see each other.

pub mod filters;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dari_controllers::runtime::{get, key_of, Informer, Queue, Recorder};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;

/// Settings of the scheduler.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Lease identity (default: hostname + random suffix).
    pub identity: String,
    /// Name pods select with `spec.schedulerName` (default-scheduler).
    pub scheduler_name: String,
    /// Lease duration (15 s).
    pub lease_duration: Duration,
    /// Renew deadline (10 s).
    pub renew_deadline: Duration,
    /// Retry period (2 s).
    pub retry_period: Duration,
    /// How often unschedulable pods are retried without a cluster change (30 s).
    pub unschedulable_retry: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        let host = std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "dari".into());
        SchedulerConfig {
            identity: format!("{host}_{:08x}", rand::random::<u32>()),
            scheduler_name: "default-scheduler".into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            unschedulable_retry: Duration::from_secs(30),
        }
    }
}

/// Why scheduling a pod failed.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// A call to the API server failed.
    #[error("{op} {pod}")]
    Kube {
        /// What was being done.
        op: &'static str,
        /// namespace/name.
        pod: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
}

struct Scheduler {
    client: Client,
    cfg: SchedulerConfig,
    pods: Store<Pod>,
    nodes: Store<Node>,
    queue: Queue,
    assumed: Arc<Mutex<HashMap<String, String>>>,
    unschedulable: Arc<Mutex<HashSet<String>>>,
    rec: Recorder,
}

fn wants_us(p: &Pod, name: &str) -> bool {
    let spec = p.spec.as_ref();
    spec.and_then(|s| s.node_name.as_ref()).is_none_or(|n| n.is_empty())
        && spec.and_then(|s| s.scheduler_name.as_deref()).unwrap_or("default-scheduler") == name
        && p.metadata.deletion_timestamp.is_none()
        && !dari_controllers::util::pod_terminal(p)
}

/// Runs the scheduler while holding the `kube-system/kube-scheduler` Lease.
pub async fn run(client: Client, cfg: SchedulerConfig) -> Result<(), SchedulerError> {
    let lcfg = dari_controllers::leader::LeaderConfig {
        namespace: "kube-system".into(),
        name: "kube-scheduler".into(),
        identity: cfg.identity.clone(),
        lease_duration: cfg.lease_duration,
        renew_deadline: cfg.renew_deadline,
        retry_period: cfg.retry_period,
    };
    dari_controllers::leader::run_leader(client.clone(), lcfg, move || run_scheduler(client.clone(), cfg.clone())).await
}

/// Runs the scheduler without leader election (what [`run`] does while leader).
pub async fn run_scheduler(client: Client, cfg: SchedulerConfig) -> Result<(), SchedulerError> {
    let pods = Informer::<Pod>::new(Api::all(client.clone()), watcher::Config::default());
    let nodes = Informer::<Node>::new(Api::all(client.clone()), watcher::Config::default());
    let queue = Queue::new();
    let assumed: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let unschedulable: Arc<Mutex<HashSet<String>>> = Arc::default();
    let retry_all = {
        let q = queue.clone();
        let u = unschedulable.clone();
        move || {
            let keys: Vec<String> = u.lock().map(|mut s| s.drain().collect()).unwrap_or_default();
            for k in keys {
                q.add(k);
            }
        }
    };
    {
        let q = queue.clone();
        let name = cfg.scheduler_name.clone();
        let assumed = assumed.clone();
        let retry = retry_all.clone();
        pods.on_change(move |old, new| {
            match new {
                Some(p) if wants_us(p, &name) => {
                    if old.is_none_or(|o| !wants_us(o, &name)) || old.is_some_and(|o| o.spec != p.spec) {
                        q.add(key_of(&p.metadata));
                    }
                }
                Some(p) => {
                    if let (Some(uid), true) = (p.metadata.uid.as_ref(), p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()) {
                        if let Ok(mut a) = assumed.lock() {
                            a.remove(uid);
                        }
                    }
                }
                None => {
                    // a pod went away: room may have been freed
                    if old.is_some_and(|o| o.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()) {
                        retry();
                    }
                    if let Some(uid) = old.and_then(|o| o.metadata.uid.clone()) {
                        if let Ok(mut a) = assumed.lock() {
                            a.remove(&uid);
                        }
                    }
                }
            }
        });
    }
    {
        let retry = retry_all.clone();
        nodes.on_change(move |old, new| {
            let changed = match (old, new) {
                (Some(o), Some(n)) => o.spec != n.spec || o.labels() != n.labels() || o.status.as_ref().map(|s| (&s.conditions, &s.allocatable)) != n.status.as_ref().map(|s| (&s.conditions, &s.allocatable)),
                _ => true,
            };
            if changed {
                retry();
            }
        });
    }
    let mut tasks = tokio::task::JoinSet::new();
    pods.start(&mut tasks);
    nodes.start(&mut tasks);
    pods.ready().await;
    nodes.ready().await;
    tracing::info!("scheduler caches synced");
    let s = Arc::new(Scheduler {
        client: client.clone(),
        cfg: cfg.clone(),
        pods: pods.store(),
        nodes: nodes.store(),
        queue: queue.clone(),
        assumed,
        unschedulable,
        rec: Recorder::new(client.clone(), "default-scheduler"),
    });
    {
        let retry = retry_all.clone();
        let every = cfg.unschedulable_retry;
        tasks.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                retry();
            }
        });
    }
    let me = s.clone();
    tasks.spawn(dari_controllers::runtime::run_workers("scheduler", queue, 1, move |k| me.clone().schedule_one(k)));
    while tasks.join_next().await.is_some() {}
    Ok(())
}

impl Scheduler {
    #[tracing::instrument(name = "schedule", skip(self))]
    async fn schedule_one(self: Arc<Self>, key: String) -> Result<Option<Duration>, SchedulerError> {
        let Some(pod) = get(&self.pods, &key) else { return Ok(None) };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if !wants_us(&pod, &self.cfg.scheduler_name) || self.assumed.lock().map(|a| a.contains_key(&uid)).unwrap_or(false) {
            return Ok(None);
        }
        let nodes = self.nodes.state();
        let node_refs: Vec<&Node> = nodes.iter().map(|n| &**n).collect();
        let mut usage: HashMap<String, filters::NodeUsage> = HashMap::new();
        let assumed = self.assumed.lock().map(|a| a.clone()).unwrap_or_default();
        for p in self.pods.state() {
            if dari_controllers::util::pod_terminal(&p) {
                continue;
            }
            let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty()).or_else(|| p.metadata.uid.as_ref().and_then(|u| assumed.get(u).cloned()));
            if let Some(n) = node {
                usage.entry(n).or_default().add(&p);
            }
        }
        let decision = filters::schedule(&pod, &node_refs, &usage, |n| if n <= 1 { 0 } else { rand::random::<usize>() % n });
        let ns = pod.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        match decision {
            filters::Decision::Node(node) => {
                if let Ok(mut a) = self.assumed.lock() {
                    a.insert(uid.clone(), node.clone());
                }
                let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod.name_any(), "namespace": ns, "uid": uid},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
                                let me = self.clone();
                let pod = pod.clone();
                tokio::spawn(async move {
                    match api.create_subresource::<serde_json::Value, serde_json::Value>("binding", &pod.name_any(), &PostParams::default(), &binding).await {
                        Ok(_) => me.rec.event(&*pod, "Normal", "Scheduled", format!("Successfully assigned {}/{} to {node}", pod.namespace().unwrap_or_default(), pod.name_any())),
                        Err(e) => {
                            tracing::warn!(pod = %key_of(&pod.metadata), %node, error = %e, "binding failed");
                            if let Ok(mut a) = me.assumed.lock() {
                                a.remove(pod.metadata.uid.as_deref().unwrap_or_default());
                            }
                            me.queue.add_after(key_of(&pod.metadata), Duration::from_millis(200));
                        }
                    }
                });
            }
            filters::Decision::Unschedulable(msg) => {
                self.rec.event(&*pod, "Warning", "FailedScheduling", msg.clone());
                if let Ok(mut u) = self.unschedulable.lock() {
                    u.insert(key.clone());
                }
                let cond = pod.status.as_ref().and_then(|s| s.conditions.as_ref()).and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"));
                if cond.is_none_or(|c| c.message.as_deref() != Some(msg.as_str())) {
                    let mut conds: Vec<serde_json::Value> = pod
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.clone())
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|c| c.type_ != "PodScheduled")
                        .map(|c| serde_json::to_value(c).unwrap_or_default())
                        .collect();
                    conds.push(json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": msg, "lastTransitionTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now())}));
                    let patch = json!({"status": {"conditions": conds}});
                    if let Err(e) = api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
                        if !matches!(&e, kube::Error::Api(s) if s.code == 404) {
                            return Err(SchedulerError::Kube { op: "setting PodScheduled=False on", pod: key, source: e });
                        }
                    }
                }
            }
        }
        Ok(None)
    }
}
