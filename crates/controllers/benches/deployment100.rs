//! Benchmark: `kubectl apply` of a 100-replica Deployment + Service on 10 fake nodes against a real dari
//! API server on loopback, with dari's controllers and scheduler: time to all pods bound, then (after
//! the bench marks every pod Ready through the status subresource) time to all 100 endpoints in the
//! Service's EndpointSlices. Run: `cargo bench -p dari-controllers --bench deployment100`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;

const MANIFEST: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 100
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: nginx
        ports: [{containerPort: 80, name: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
"#;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let mut c = common::start().await?;
    c.kubelet_ready.store(false, Ordering::SeqCst);
    c.add_nodes(10).await?;
    c.run_fake_kubelet();
    c.run_control_plane();
    // wait until the controllers hold their lease (not part of the measurement)
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(c.client.clone(), "kube-system");
    common::eventually("leases", Duration::from_secs(30), || async {
        (leases.get("kube-controller-manager").await.is_ok() && leases.get("kube-scheduler").await.is_ok()).then_some(())
    })
    .await?;
    let f = c.dir.path().join("web.yaml");
    std::fs::write(&f, MANIFEST)?;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let t0 = Instant::now();
    c.ok(&["apply", "-f", f.to_str().unwrap_or_default()]).await;
    let apply = t0.elapsed();
    common::eventually("100 pods bound", Duration::from_secs(120), || async {
        let l = pods.list(&ListParams::default().labels("app=web")).await.ok()?;
        (l.items.iter().filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()).count() == 100).then_some(())
    })
    .await?;
    let bound = t0.elapsed();
    // spread
    let l = pods.list(&ListParams::default().labels("app=web")).await?;
    let mut per: std::collections::BTreeMap<String, usize> = Default::default();
    for p in &l.items {
        *per.entry(p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default()).or_default() += 1;
    }
    // wait for IPs, then mark all ready
    common::eventually("100 pod IPs", Duration::from_secs(60), || async {
        let l = pods.list(&ListParams::default().labels("app=web")).await.ok()?;
        (l.items.iter().filter(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some()).count() == 100).then_some(())
    })
    .await?;
    let t1 = Instant::now();
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    let patch = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}]}});
    let futs = l.items.iter().map(|p| {
        let pods = pods.clone();
        let patch = patch.clone();
        let name = p.name_any();
        async move { pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await }
    });
    for r in futures::future::join_all(futs).await {
        r?;
    }
    let marked = t1.elapsed();
    let slices: Api<EndpointSlice> = Api::namespaced(c.client.clone(), "default");
    common::eventually("100 ready endpoints", Duration::from_secs(60), || async {
        let l = slices.list(&ListParams::default().labels("kubernetes.io/service-name=web")).await.ok()?;
        let n = l.items.iter().flat_map(|s| s.endpoints.iter()).filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true)).count();
        (n == 100).then_some(())
    })
    .await?;
    let endpoints = t1.elapsed();
    let deps = c.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]).await;
    println!("deployment100: kubectl apply returned after {apply:?}");
    println!("deployment100: all 100 pods bound after {bound:?} (from apply)");
    println!("deployment100: pods per node {:?}", per.values().collect::<Vec<_>>());
    println!("deployment100: marking 100 pods Ready took {marked:?}; all 100 endpoints ready after {endpoints:?} (from first mark)");
    println!("deployment100: rollout status: {}", deps.trim());
    println!("deployment100: process RSS (API server + controllers + scheduler + kubelet fake) {} MiB", rss_kib() / 1024);
    drop(c);
    memory_10k().await
}

/// 10,000 bound pods in the API, then the controllers + scheduler start: RSS before and after their
/// caches hold them (the delta is what the control plane's watches cost, plus the API server's list work).
async fn memory_10k() -> Result<()> {
    let c = common::start().await?;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(c.client.clone());
    for i in 0..10 {
        let n = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("node-{i}")}}))?;
        nodes.create(&Default::default(), &n).await?;
    }
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let t0 = Instant::now();
    let mut i = 0;
    while i < 10_000 {
        let futs = (i..(i + 50).min(10_000)).map(|k| {
            let pods = pods.clone();
            async move {
                let p: Pod = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": format!("p-{k}"), "labels": {"app": "bulk", "n": format!("{}", k % 10)}},
                    "spec": {"nodeName": format!("node-{}", k % 10), "containers": [{"name": "c", "image": "busybox", "ports": [{"containerPort": 80}]}]},
                }))?;
                pods.create(&Default::default(), &p).await.map_err(anyhow::Error::from)
            }
        });
        for r in futures::future::join_all(futs).await {
            r?;
        }
        i += 50;
    }
    println!("memory10k: created 10,000 pods in {:?}", t0.elapsed());
    let before = rss_kib();
    let client = c.client.clone();
    let cm = tokio::spawn(dari_controllers::run_controllers(client.clone(), common::test_config("bench")));
    let sc = tokio::spawn(dari_scheduler::run_scheduler(client.clone(), dari_scheduler::SchedulerConfig::default()));
    // a marker: once a 1-replica deployment has a pod that the scheduler has judged (the fake nodes are
    // full and not Ready, so PodScheduled=False), the controllers' and the scheduler's caches have synced
    let d = json!({"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"marker"},"spec":{"replicas":1,
        "selector":{"matchLabels":{"app":"marker"}},"template":{"metadata":{"labels":{"app":"marker"}},"spec":{"containers":[{"name":"c","image":"a"}]}}}});
    let deps: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client.clone(), "default");
    deps.create(&Default::default(), &serde_json::from_value(d)?).await?;
    let t1 = Instant::now();
    common::eventually("marker pod", Duration::from_secs(120), || async {
        let l = pods.list(&ListParams::default().labels("app=marker")).await.ok()?;
        l.items
            .iter()
            .any(|p| p.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| c.iter().any(|c| c.type_ == "PodScheduled")))
            .then_some(())
    })
    .await?;
    let after = rss_kib();
    println!("memory10k: controllers+scheduler synced 10,000 pods and acted in {:?}", t1.elapsed());
    println!("memory10k: process RSS {} MiB before, {} MiB after starting controllers+scheduler (delta {} MiB)", before / 1024, after / 1024, (after.saturating_sub(before)) / 1024);
    cm.abort();
    sc.abort();
    Ok(())
}
