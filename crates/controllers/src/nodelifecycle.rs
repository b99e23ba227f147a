//! Node lifecycle: a Node whose Lease in kube-node-lease (or Ready heartbeat) has not been renewed for
//! `node_monitor_grace_period` — judged on this controller's own clock — gets Ready/MemoryPressure/
//! DiskPressure/PIDPressure = Unknown, its pods Ready=False, and the `node.kubernetes.io/unreachable`
//! NoSchedule + NoExecute taints (`not-ready` for Ready=False). Pods on a NoExecute-tainted node are
//! deleted once their toleration's `tolerationSeconds` has passed (pods with no matching toleration after
//! `pod_eviction_timeout`). A node that reports again loses the taints.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::runtime::{get, Recorder};
use crate::util::tolerates;

const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
const NOT_READY: &str = "node.kubernetes.io/not-ready";

/// The node lifecycle controller.
pub struct NodeLifecycleController {
    client: Client,
    nodes: Store<Node>,
    leases: Store<Lease>,
    pods: Store<Pod>,
    grace: Duration,
    period: Duration,
    eviction_timeout: Duration,
    rec: Recorder,
    /// node → (last heartbeat fingerprint, when we saw it change)
    seen: Mutex<HashMap<String, (String, Instant)>>,
}

/// Pure: the taints a node should carry for its Ready status, keeping unrelated taints.
pub fn desired_taints(current: &[Taint], ready: Option<&str>, now: Timestamp) -> Vec<Taint> {
    let key = match ready {
        Some("True") => None,
        Some("False") => Some(NOT_READY),
        _ => Some(UNREACHABLE),
    };
    let mut out: Vec<Taint> = current.iter().filter(|t| t.key != UNREACHABLE && t.key != NOT_READY).cloned().collect();
    if let Some(k) = key {
        for effect in ["NoSchedule", "NoExecute"] {
            let existing = current.iter().find(|t| t.key == k && t.effect == effect).cloned();
            out.push(existing.unwrap_or_else(|| Taint {
                key: k.into(),
                effect: effect.into(),
                time_added: (effect == "NoExecute").then_some(Time(now)),
                value: None,
            }));
        }
    }
    out
}

/// Pure: when a pod on a node with these NoExecute taints must go (None = it tolerates them forever).
pub fn eviction_time(pod: &Pod, taints: &[Taint], default_after: Duration) -> Option<Timestamp> {
    let tols = pod.spec.as_ref().and_then(|s| s.tolerations.clone()).unwrap_or_default();
    let mut at: Option<Timestamp> = None;
    for t in taints.iter().filter(|t| t.effect == "NoExecute") {
        let added = t.time_added.as_ref().map(|x| x.0).unwrap_or_else(Timestamp::now);
        let matching: Vec<_> = tols.iter().filter(|tol| tolerates(tol, t)).collect();
        let secs = if matching.is_empty() {
            Some(i64::try_from(default_after.as_secs()).unwrap_or(300))
        } else if matching.iter().any(|m| m.toleration_seconds.is_none()) {
            None
        } else {
            matching.iter().filter_map(|m| m.toleration_seconds).min().map(|s| s.max(0))
        };
        if let Some(s) = secs {
            let when = added.as_second() + s;
            let ts = Timestamp::from_second(when).unwrap_or(added);
            at = Some(at.map_or(ts, |a| a.min(ts)));
        }
    }
    at
}

impl NodeLifecycleController {
    /// Wires the controller to the shared informers.
    pub fn new(client: Client, inf: &crate::Informers, cfg: &crate::ControllersConfig, rec: Recorder) -> Arc<Self> {
        Arc::new(NodeLifecycleController {
            client,
            nodes: inf.nodes.store(),
            leases: inf.node_leases.store(),
            pods: inf.pods.store(),
            grace: cfg.node_monitor_grace_period,
            period: cfg.node_monitor_period,
            eviction_timeout: cfg.pod_eviction_timeout,
            rec,
            seen: Mutex::default(),
        })
    }

    /// Monitors nodes every period.
    pub async fn run(self: Arc<Self>) {
        loop {
            for n in self.nodes.state() {
                if let Err(e) = self.check(&n).await {
                    tracing::warn!(node = %n.name_any(), error = %e, "node health check failed");
                }
            }
            tokio::time::sleep(self.period).await;
        }
    }

    #[tracing::instrument(name = "monitor_node", skip_all, fields(node = %node.name_any()))]
    async fn check(&self, node: &Node) -> Result<(), kube::Error> {
        let name = node.name_any();
        let conds = node.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
        let ready = conds.iter().find(|c| c.type_ == "Ready");
        let lease_rt = get(&self.leases, &format!("kube-node-lease/{name}")).and_then(|l| l.spec.as_ref().and_then(|s| s.renew_time.clone())).map(|t| t.0.to_string());
        let hb = ready.and_then(|c| c.last_heartbeat_time.clone()).map(|t| t.0.to_string());
        let fp = format!("{lease_rt:?}/{hb:?}");
        let stale = {
            let Ok(mut seen) = self.seen.lock() else { return Ok(()) };
            let e = seen.entry(name.clone()).or_insert_with(|| (fp.clone(), Instant::now()));
            if e.0 != fp {
                *e = (fp, Instant::now());
            }
            e.1.elapsed() > self.grace
        };
        let now = Timestamp::now();
        let nodes: Api<Node> = Api::all(self.client.clone());
        let mut ready_status = ready.map(|c| c.status.clone());
        if stale && ready_status.as_deref() != Some("Unknown") {
            let mut new_conds = Vec::new();
            for t in ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"] {
                let old = conds.iter().find(|c| c.type_ == t);
                new_conds.push(json!({"type": t, "status": "Unknown", "reason": "NodeStatusUnknown", "message": "Kubelet stopped posting node status.",
                    "lastHeartbeatTime": old.and_then(|c| c.last_heartbeat_time.clone()), "lastTransitionTime": Time(now)}));
            }
            for c in conds.iter().filter(|c| !["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"].contains(&c.type_.as_str())) {
                new_conds.push(serde_json::to_value(c).unwrap_or_default());
            }
            nodes.patch_status(&name, &PatchParams::default(), &Patch::Merge(&json!({"status": {"conditions": new_conds}}))).await?;
            self.rec.event(node, "Normal", "NodeNotReady", format!("Node {name} status is now: NodeNotReady"));
            ready_status = Some("Unknown".into());
            // pods on the node are no longer ready
            for p in self.pods.state().iter().filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str())) {
                let pconds: Vec<serde_json::Value> = p
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.clone())
                    .unwrap_or_default()
                    .into_iter()
                    .map(|mut c| {
                        if c.type_ == "Ready" && c.status != "False" {
                            c.status = "False".into();
                            c.last_transition_time = Some(Time(now));
                        }
                        serde_json::to_value(c).unwrap_or_default()
                    })
                    .collect();
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &p.namespace().unwrap_or_default());
                let _ = api.patch_status(&p.name_any(), &PatchParams::default(), &Patch::Merge(&json!({"status": {"conditions": pconds}}))).await;
            }
        }
        let current = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
        let want = desired_taints(&current, ready_status.as_deref(), now);
        if want != current {
            nodes.patch(&name, &PatchParams::default(), &Patch::Merge(&json!({"spec": {"taints": want}}))).await?;
        }
        // evictions
        let no_exec: Vec<Taint> = want.into_iter().filter(|t| t.effect == "NoExecute").collect();
        if no_exec.is_empty() {
            return Ok(());
        }
        for p in self.pods.state().iter().filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str()) && p.metadata.deletion_timestamp.is_none()) {
            if let Some(at) = eviction_time(p, &no_exec, self.eviction_timeout) {
                if at <= now {
                    let ns = p.namespace().unwrap_or_default();
                    let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
                    self.rec.event(&**p, "Normal", "TaintManagerEviction", format!("Marking for deletion Pod {ns}/{}", p.name_any()));
                    match api.delete(&p.name_any(), &DeleteParams::default()).await {
                        Ok(_) => {}
                        Err(e) if crate::replicaset::is_not_found(&e) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, Toleration};

    #[test]
    fn taints_follow_ready() {
        let now = Timestamp::UNIX_EPOCH;
        let other = Taint { key: "dedicated".into(), effect: "NoSchedule".into(), ..Default::default() };
        let t = desired_taints(std::slice::from_ref(&other), Some("Unknown"), now);
        let keys: Vec<(String, String)> = t.iter().map(|t| (t.key.clone(), t.effect.clone())).collect();
        assert_eq!(keys, [("dedicated".into(), "NoSchedule".into()), (UNREACHABLE.into(), "NoSchedule".into()), (UNREACHABLE.into(), "NoExecute".into())]);
        assert_eq!(desired_taints(&t, Some("True"), now), vec![other]);
    }

    #[test]
    fn eviction_follows_toleration_seconds() {
        let added = Timestamp::from_second(1000).unwrap_or(Timestamp::UNIX_EPOCH);
        let taint = Taint { key: UNREACHABLE.into(), effect: "NoExecute".into(), time_added: Some(Time(added)), value: None };
        let pod = |tols: Vec<Toleration>| Pod { spec: Some(PodSpec { tolerations: Some(tols), ..Default::default() }), ..Default::default() };
        let t300 = Toleration { key: Some(UNREACHABLE.into()), operator: Some("Exists".into()), effect: Some("NoExecute".into()), toleration_seconds: Some(300), value: None };
        assert_eq!(eviction_time(&pod(vec![t300.clone()]), std::slice::from_ref(&taint), Duration::from_secs(5)).map(|t| t.as_second()), Some(1300));
        let forever = Toleration { toleration_seconds: None, ..t300 };
        assert_eq!(eviction_time(&pod(vec![forever]), std::slice::from_ref(&taint), Duration::from_secs(5)), None);
        assert_eq!(eviction_time(&pod(vec![]), std::slice::from_ref(&taint), Duration::from_secs(5)).map(|t| t.as_second()), Some(1005));
    }
}
