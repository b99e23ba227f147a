//! Controllers + scheduler against the real dari API server on loopback, driven with real kubectl.
//! The issue's "Done when" list: the hard-way nginx Deployment on two nodes, scale 5 and back to 1,
//! a rollout and `kubectl rollout undo`, endpoints following readiness, podCIDRs, FailedScheduling.

mod common;

use std::time::{Duration, Instant};

use anyhow::Result;
use common::{eventually, start};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Endpoints, Event, Node, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;

const T: Duration = Duration::from_secs(30);

async fn bound_pods(api: &Api<Pod>, sel: &str) -> Vec<Pod> {
    api.list(&ListParams::default().labels(sel)).await.map(|l| l.items).unwrap_or_default().into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect()
}

fn node_of(p: &Pod) -> Option<String> {
    p.spec.as_ref().and_then(|s| s.node_name.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardway_nginx_scale_rollout_undo_and_endpoints() -> Result<()> {
    let mut c = start().await?;
    c.add_nodes(2).await?;
    c.run_fake_kubelet();
    c.run_control_plane();
    let manifest = common::scenarios().join("seed-001-hardway/nginx.yaml");
    c.ok(&["apply", "-f", manifest.to_str().unwrap_or_default()]).await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    // two pods, on two different nodes
    let nodes = eventually("2 nginx pods bound", T, || async {
        let ps = bound_pods(&pods, "run=nginx").await;
        let nodes: std::collections::BTreeSet<String> = ps.iter().filter_map(node_of).collect();
        (ps.len() == 2 && ps.iter().all(|p| node_of(p).is_some())).then_some(nodes)
    })
    .await?;
    assert_eq!(nodes.len(), 2, "the two replicas are spread over two nodes");
    let out = c.ok(&["rollout", "status", "deployment/nginx", "--timeout=30s"]).await;
    assert!(out.contains("successfully rolled out"), "{out}");

    // scale to 5 and back to 1
    c.ok(&["scale", "deployment/nginx", "--replicas=5"]).await;
    eventually("5 pods", T, || async { (bound_pods(&pods, "run=nginx").await.iter().filter(|p| node_of(p).is_some()).count() == 5).then_some(()) }).await?;
    c.ok(&["rollout", "status", "deployment/nginx", "--timeout=30s"]).await;
    c.ok(&["scale", "deployment/nginx", "--replicas=1"]).await;
    eventually("1 pod", T, || async { (bound_pods(&pods, "run=nginx").await.len() == 1).then_some(()) }).await?;
    let deps: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
    eventually("status replicas 1", T, || async {
        let d = deps.get("nginx").await.ok()?;
        let s = d.status?;
        (s.replicas == Some(1) && s.available_replicas == Some(1) && s.updated_replicas == Some(1)).then_some(())
    })
    .await?;

    // a Service: endpoints and slices list the ready pod
    c.ok(&["expose", "deployment/nginx", "--port=80"]).await;
    let eps: Api<Endpoints> = Api::namespaced(c.client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(c.client.clone(), "default");
    let pod = bound_pods(&pods, "run=nginx").await.into_iter().next().expect("one pod");
    let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).expect("pod ip");
    eventually("endpoints with the pod", T, || async {
        let e = eps.get("nginx").await.ok()?;
        let ss = e.subsets?;
        (ss.len() == 1 && ss[0].addresses.as_ref()?.iter().any(|a| a.ip == ip) && ss[0].ports.as_ref()?[0].port == 80).then_some(())
    })
    .await?;
    let sl = eventually("a slice", T, || async {
        let l = slices.list(&ListParams::default().labels("kubernetes.io/service-name=nginx")).await.ok()?;
        l.items.into_iter().find(|s| s.endpoints.iter().any(|e| e.addresses.contains(&ip)))
    })
    .await?;
    assert_eq!(sl.labels().get("endpointslice.kubernetes.io/managed-by").map(String::as_str), Some("endpointslice-controller.k8s.io"));
    let ep = &sl.endpoints[0];
    assert_eq!(ep.conditions.as_ref().and_then(|c| c.ready), Some(true));
    assert_eq!(ep.node_name, node_of(&pod));
    assert!(ep.zone.as_deref().is_some_and(|z| z.starts_with("zone-")));
    let got = c.ok(&["get", "endpoints", "nginx"]).await;
    assert!(got.contains(&format!("{ip}:80")), "{got}");
    let got = c.ok(&["get", "endpointslices", "-l", "kubernetes.io/service-name=nginx"]).await;
    assert!(got.contains("IPv4") && got.contains("80") && got.contains(&ip), "{got}");

    // readiness flips are followed within a second
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    let flip = |s: &str| json!({"status": {"conditions": [{"type": "Ready", "status": s, "lastTransitionTime": now}]}});
    let t0 = Instant::now();
    pods.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&flip("False"))).await?;
    eventually("endpoints not ready", Duration::from_secs(1), || async {
        let e = eps.get("nginx").await.ok()?;
        let ss = e.subsets?;
        (ss[0].addresses.is_none() && ss[0].not_ready_addresses.as_ref()?.iter().any(|a| a.ip == ip)).then_some(())
    })
    .await?;
    eventually("slice not ready", Duration::from_secs(1), || async {
        let l = slices.list(&ListParams::default().labels("kubernetes.io/service-name=nginx")).await.ok()?;
        l.items.iter().flat_map(|s| s.endpoints.iter()).any(|e| e.addresses.contains(&ip) && e.conditions.as_ref().and_then(|c| c.ready) == Some(false)).then_some(())
    })
    .await?;
    eprintln!("readiness change reached Endpoints + EndpointSlice in {:?}", t0.elapsed());
    pods.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&flip("True"))).await?;
    eventually("endpoints ready again", Duration::from_secs(1), || async {
        let e = eps.get("nginx").await.ok()?;
        e.subsets?[0].addresses.as_ref()?.iter().any(|a| a.ip == ip).then_some(())
    })
    .await?;

    // rollout after an image change, then undo
    c.ok(&["scale", "deployment/nginx", "--replicas=2"]).await;
    c.ok(&["rollout", "status", "deployment/nginx", "--timeout=30s"]).await;
    c.ok(&["set", "image", "deployment/nginx", "my-nginx=nginx:1.27"]).await;
    let out = c.ok(&["rollout", "status", "deployment/nginx", "--timeout=60s"]).await;
    assert!(out.contains("successfully rolled out"), "{out}");
    let ps = bound_pods(&pods, "run=nginx").await;
    assert_eq!(ps.len(), 2);
    assert!(ps.iter().all(|p| p.spec.as_ref().map(|s| s.containers[0].image.as_deref() == Some("nginx:1.27")).unwrap_or(false)));
    let hist = c.ok(&["rollout", "history", "deployment/nginx"]).await;
    assert!(hist.contains("1 ") && hist.contains("2 "), "{hist}");
    let rs_list = c.ok(&["get", "rs", "-l", "run=nginx", "-o", "name"]).await;
    assert_eq!(rs_list.lines().count(), 2, "{rs_list}");
    c.ok(&["rollout", "undo", "deployment/nginx"]).await;
    let out = c.ok(&["rollout", "status", "deployment/nginx", "--timeout=60s"]).await;
    assert!(out.contains("successfully rolled out"), "{out}");
    let d = deps.get("nginx").await?;
    assert_eq!(d.spec.as_ref().and_then(|s| s.template.spec.as_ref()).and_then(|s| s.containers[0].image.clone()).as_deref(), Some("nginx"));
    assert_eq!(d.annotations().get("deployment.kubernetes.io/revision").map(String::as_str), Some("3"));
    eventually("old pods replaced", T, || async {
        let ps = bound_pods(&pods, "run=nginx").await;
        (ps.len() == 2 && ps.iter().all(|p| p.spec.as_ref().and_then(|s| s.containers[0].image.as_deref()) == Some("nginx"))).then_some(())
    })
    .await?;

    // events as kubectl describe shows them
    let desc = c.ok(&["describe", "deployment", "nginx"]).await;
    assert!(desc.contains("ScalingReplicaSet"), "{desc}");
    let events: Api<Event> = Api::namespaced(c.client.clone(), "default");
    let evs = events.list(&ListParams::default()).await?.items;
    assert!(evs.iter().any(|e| e.reason.as_deref() == Some("SuccessfulCreate")));
    assert!(evs.iter().any(|e| e.reason.as_deref() == Some("Scheduled")));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_strategy_replaces_all_at_once() -> Result<()> {
    let mut c = start().await?;
    c.add_nodes(2).await?;
    c.run_fake_kubelet();
    c.run_control_plane();
    let d = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"rc"},"spec":{"replicas":3,"strategy":{"type":"Recreate"},
      "selector":{"matchLabels":{"app":"rc"}},"template":{"metadata":{"labels":{"app":"rc"}},"spec":{"containers":[{"name":"c","image":"a"}]}}}}"#;
    let f = c.dir.path().join("rc.json");
    std::fs::write(&f, d)?;
    c.ok(&["apply", "-f", f.to_str().unwrap_or_default()]).await;
    c.ok(&["rollout", "status", "deployment/rc", "--timeout=30s"]).await;
    c.ok(&["set", "image", "deployment/rc", "c=b"]).await;
    c.ok(&["rollout", "status", "deployment/rc", "--timeout=30s"]).await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let ps = bound_pods(&pods, "app=rc").await;
    assert_eq!(ps.len(), 3);
    assert!(ps.iter().all(|p| p.spec.as_ref().and_then(|s| s.containers[0].image.as_deref()) == Some("b")));
    // Recreate never ran old and new together: the new RS was scaled up from 0 to 3 in one step
    let desc = c.ok(&["describe", "deployment", "rc"]).await;
    assert!(desc.contains("from 3 to 0") && desc.contains("from 0 to 3"), "{desc}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_cidrs_are_distinct_and_freed_and_unschedulable_pods_say_why() -> Result<()> {
    let mut c = start().await?;
    c.add_nodes(3).await?;
    c.run_control_plane();
    let nodes: Api<Node> = Api::all(c.client.clone());
    let cidrs = eventually("3 podCIDRs", T, || async {
        let l = nodes.list(&ListParams::default()).await.ok()?;
        let v: Vec<String> = l.items.iter().filter_map(|n| n.spec.as_ref()?.pod_cidr.clone()).collect();
        (v.len() == 3).then_some(v)
    })
    .await?;
    let set: std::collections::BTreeSet<&String> = cidrs.iter().collect();
    assert_eq!(set.len(), 3, "{cidrs:?}");
    let cluster: ipnet::Ipv4Net = "10.244.0.0/16".parse()?;
    for cidr in &cidrs {
        let n: ipnet::Ipv4Net = cidr.parse()?;
        assert!(cluster.contains(&n) && n.prefix_len() == 24, "{cidr}");
    }
    let n1 = nodes.get("node-1").await?;
    let freed = n1.spec.as_ref().and_then(|s| s.pod_cidr.clone()).expect("cidr");
    nodes.delete("node-1", &DeleteParams::default()).await?;
    let node: Node = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-new"}}))?;
    nodes.create(&Default::default(), &node).await?;
    let got = eventually("node-new gets a cidr", T, || async { nodes.get("node-new").await.ok()?.spec?.pod_cidr }).await?;
    assert_eq!(got, freed, "the freed range is handed out again");

    // FailedScheduling in the upstream form
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let p: Pod = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "picky"},
        "spec": {"nodeSelector": {"disk": "ssd"}, "containers": [{"name": "c", "image": "x"}]}}))?;
    pods.create(&Default::default(), &p).await?;
    let events: Api<Event> = Api::namespaced(c.client.clone(), "default");
    let msg = eventually("FailedScheduling", T, || async {
        let l = events.list(&ListParams::default()).await.ok()?;
        l.items.into_iter().find(|e| e.reason.as_deref() == Some("FailedScheduling")).and_then(|e| e.message)
    })
    .await?;
    // node-new has no Ready condition: upstream counts it under the not-ready taint
    assert!(msg.starts_with("0/3 nodes are available: "), "{msg}");
    assert!(msg.contains("2 node(s) didn't match Pod's node affinity/selector"), "{msg}");
    assert!(msg.contains("1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }"), "{msg}");
    assert!(msg.ends_with("preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."), "{msg}");
    let desc = c.ok(&["describe", "pod", "picky"]).await;
    assert!(desc.contains("FailedScheduling"), "{desc}");
    // labelling a node makes it schedulable
    nodes.patch("node-0", &PatchParams::default(), &Patch::Merge(&json!({"metadata": {"labels": {"disk": "ssd"}}}))).await?;
    eventually("picky bound to node-0", T, || async { (pods.get("picky").await.ok()?.spec?.node_name.as_deref() == Some("node-0")).then_some(()) }).await?;
    // every namespace has a default ServiceAccount
    c.ok(&["create", "namespace", "team-a"]).await;
    eventually("default SA", T, || async { c.kubectl(&["get", "sa", "default", "-n", "team-a"]).await.status.success().then_some(()) }).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_to_the_standby_within_the_lease_duration() -> Result<()> {
    let c = start().await?;
    let a = tokio::spawn(dari_controllers::run(c.client.clone(), common::test_config("cm-a")));
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(c.client.clone(), "kube-system");
    let holder = || async { leases.get("kube-controller-manager").await.ok()?.spec?.holder_identity };
    eventually("cm-a leads", T, || async { (holder().await.as_deref() == Some("cm-a")).then_some(()) }).await?;
    let b = tokio::spawn(dari_controllers::run(c.client.clone(), common::test_config("cm-b")));
    // b stays standby while a renews
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(holder().await.as_deref(), Some("cm-a"), "the standby must not take a live lease");
    // stop a: b takes over within the lease duration (4 s) plus one retry period
    a.abort();
    let t0 = Instant::now();
    eventually("cm-b leads", Duration::from_secs(10), || async { (holder().await.as_deref() == Some("cm-b")).then_some(()) }).await?;
    let took = t0.elapsed();
    eprintln!("leadership moved in {took:?}");
    assert!(took <= Duration::from_secs(6), "took {took:?}");
    // the default namespace gets its ServiceAccount from the new leader (work is done once)
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(c.client.clone(), "default");
    eventually("default SA", T, || async { sas.get("default").await.ok() }).await?;
    b.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collection_background_foreground_orphan() -> Result<()> {
    let mut c = start().await?;
    c.add_nodes(2).await?;
    c.run_fake_kubelet();
    c.run_control_plane();
    let mk = |name: &str| {
        format!(
            r#"{{"apiVersion":"apps/v1","kind":"Deployment","metadata":{{"name":"{name}"}},"spec":{{"replicas":2,
          "selector":{{"matchLabels":{{"app":"{name}"}}}},"template":{{"metadata":{{"labels":{{"app":"{name}"}}}},"spec":{{"containers":[{{"name":"c","image":"a"}}]}}}}}}}}"#
        )
    };
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let rss: Api<k8s_openapi::api::apps::v1::ReplicaSet> = Api::namespaced(c.client.clone(), "default");
    for name in ["bg", "fg", "or"] {
        let f = c.dir.path().join(format!("{name}.json"));
        std::fs::write(&f, mk(name))?;
        c.ok(&["apply", "-f", f.to_str().unwrap_or_default()]).await;
        c.ok(&["rollout", "status", &format!("deployment/{name}"), "--timeout=30s"]).await;
    }
    // background (kubectl's default): deployment gone at once, then its RS and pods
    c.ok(&["delete", "deployment", "bg"]).await;
    eventually("bg pods gone", T, || async {
        (bound_pods(&pods, "app=bg").await.is_empty() && rss.list(&ListParams::default().labels("app=bg")).await.ok()?.items.is_empty()).then_some(())
    })
    .await?;
    // foreground: the deployment stays (with its finalizer) until its dependents are gone
    c.ok(&["delete", "deployment", "fg", "--cascade=foreground", "--wait=false"]).await;
    let deps: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
    eventually("fg deployment gone after its pods", T, || async {
        let d = deps.get_opt("fg").await.ok()?;
        if d.is_none() {
            return Some(());
        }
        None
    })
    .await?;
    assert!(bound_pods(&pods, "app=fg").await.is_empty(), "foreground deletion removed the owner before its pods");
    // orphan: RS and pods stay, without the ownerReference
    c.ok(&["delete", "deployment", "or", "--cascade=orphan"]).await;
    eventually("or deployment gone", T, || async { deps.get_opt("or").await.ok()?.is_none().then_some(()) }).await?;
    let rs = eventually("orphaned rs", T, || async {
        let l = rss.list(&ListParams::default().labels("app=or")).await.ok()?;
        l.items.into_iter().find(|r| r.metadata.owner_references.as_ref().is_none_or(|o| o.is_empty()))
    })
    .await?;
    assert_eq!(rs.spec.as_ref().and_then(|s| s.replicas), Some(2));
    assert_eq!(bound_pods(&pods, "app=or").await.len(), 2, "orphaned pods stay");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_node_goes_unknown_gets_tainted_and_its_pods_are_evicted() -> Result<()> {
    let c = start().await?;
    let nodes: Api<Node> = Api::all(c.client.clone());
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(c.client.clone(), "kube-node-lease");
    for name in ["alive", "silent"] {
        nodes.create(&Default::default(), &serde_json::from_value(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}))?).await?;
        c.mark_node_ready(name).await?;
    }
    let renew = move |name: &'static str| {
        let leases = leases.clone();
        async move {
            let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(k8s_openapi::jiff::Timestamp::now());
            let l = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now}});
            leases.patch(name, &PatchParams::apply("test").force(), &Patch::Apply(&l)).await.map(|_| ())
        }
    };
    renew("silent").await?;
    let keep = tokio::spawn(async move {
        loop {
            let _ = renew("alive").await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    for (name, secs) in [("quick", 1), ("patient", 3600)] {
        let p: Pod = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": "silent", "containers": [{"name": "c", "image": "x"}],
                     "tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": secs}]}}))?;
        pods.create(&Default::default(), &p).await?;
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}]}}))).await?;
    }
    let cfg = dari_controllers::ControllersConfig { node_monitor_grace_period: Duration::from_secs(5), node_monitor_period: Duration::from_millis(300), ..common::test_config("nl") };
    let cm = tokio::spawn(dari_controllers::run(c.client.clone(), cfg));
    let n = eventually("silent is Unknown and tainted", T, || async {
        let n = nodes.get("silent").await.ok()?;
        let ready = n.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")?.status.clone();
        let taints = n.spec.as_ref()?.taints.clone().unwrap_or_default();
        (ready == "Unknown" && taints.iter().any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute")).then_some(n)
    })
    .await?;
    assert!(n.spec.as_ref().and_then(|s| s.taints.as_ref()).is_some_and(|t| t.iter().any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoSchedule")));
    eventually("quick evicted", T, || async {
        let p = pods.get_opt("quick").await.ok()?;
        p.is_none_or(|p| p.metadata.deletion_timestamp.is_some()).then_some(())
    })
    .await?;
    let patient = pods.get("patient").await?;
    assert!(patient.metadata.deletion_timestamp.is_none(), "a pod tolerating for an hour stays");
    let ready = patient.status.as_ref().and_then(|s| s.conditions.as_ref()).and_then(|c| c.iter().find(|c| c.type_ == "Ready")).map(|c| c.status.clone());
    assert_eq!(ready.as_deref(), Some("False"));
    let alive = nodes.get("alive").await?;
    eprintln!("alive lease: {:?}", Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(c.client.clone(), "kube-node-lease").get("alive").await.ok().and_then(|l| l.spec));
    eprintln!("alive node: {:?}", alive.status.as_ref().and_then(|s| s.conditions.clone()));
    assert_eq!(alive.status.as_ref().and_then(|s| s.conditions.as_ref()).and_then(|c| c.iter().find(|c| c.type_ == "Ready")).map(|c| c.status.clone()).as_deref(), Some("True"));
    assert!(alive.spec.as_ref().and_then(|s| s.taints.as_ref()).is_none_or(|t| t.is_empty()));
    // the node reports again: taints go
    c.mark_node_ready("silent").await?;
    eventually("silent untainted", T, || async { nodes.get("silent").await.ok()?.spec?.taints.is_none_or(|t| t.is_empty()).then_some(()) }).await?;
    keep.abort();
    cm.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_one_pod_per_eligible_node_and_rolling_update() -> Result<()> {
    let mut c = start().await?;
    c.add_nodes(3).await?;
    let nodes: Api<Node> = Api::all(c.client.clone());
    nodes.patch("node-2", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]}}))).await?;
    c.run_fake_kubelet();
    c.run_control_plane();
    let ds = r#"{"apiVersion":"apps/v1","kind":"DaemonSet","metadata":{"name":"agent"},"spec":{
      "selector":{"matchLabels":{"app":"agent"}},"template":{"metadata":{"labels":{"app":"agent"}},"spec":{"containers":[{"name":"c","image":"a"}]}}}}"#;
    let f = c.dir.path().join("ds.json");
    std::fs::write(&f, ds)?;
    c.ok(&["apply", "-f", f.to_str().unwrap_or_default()]).await;
    let out = c.ok(&["rollout", "status", "ds/agent", "--timeout=30s"]).await;
    assert!(out.contains("successfully rolled out"), "{out}");
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let ps = bound_pods(&pods, "app=agent").await;
    let on: std::collections::BTreeSet<String> = ps.iter().filter_map(node_of).collect();
    assert_eq!(on, ["node-0".to_string(), "node-1".to_string()].into(), "no pod on the tainted node-2");
    assert_eq!(ps.len(), 2);
    c.ok(&["set", "image", "ds/agent", "c=b"]).await;
    c.ok(&["rollout", "status", "ds/agent", "--timeout=30s"]).await;
    eventually("2 updated pods", T, || async {
        let ps = bound_pods(&pods, "app=agent").await;
        (ps.len() == 2 && ps.iter().all(|p| p.spec.as_ref().and_then(|s| s.containers[0].image.as_deref()) == Some("b") && node_of(p).is_some())).then_some(())
    })
    .await?;
    Ok(())
}
