//! End to end on one machine: dari's API server in-process, the agent with its own containerd in
//! a node netns (reference CNI plugins), real busybox pods created with spec.nodeName set.
//! Needs root and apt packages containerd, runc, busybox-static, containernetworking-plugins.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use dari_agent::cri::{Cri, RemoteCri};
use dari_agent::pod::worker::Backoff;
use dari_agent::AgentConfig;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};

async fn apiserver(dir: &std::path::Path) -> dari_apiserver::RunningServer {
    let args = dari_apiserver::ServerArgs {
        data_dir: dir.to_path_buf(),
        bind_address: "127.0.0.1".parse().expect("ip"),
        secure_port: 0,
        advertise_address: None,
        service_cluster_ip_range: "10.96.0.0/12".parse().expect("cidr"),
        service_node_port_range: "30000-32767".into(),
        cluster_cidr: "10.244.0.0/16".parse().expect("cidr"),
        tls_san: vec![],
        bookmark_interval_seconds: 1,
    };
    dari_apiserver::start(args).await.expect("server starts")
}

async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pod(name: &str, node: &str, yaml_spec: &str) -> Pod {
    let y = format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  labels:\n    app: {name}\nspec:\n  nodeName: {node}\n{yaml_spec}");
    serde_yaml::from_str(&y).expect("pod yaml")
}

fn cond(p: &Pod, t: &str) -> Option<String> {
    p.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == t).map(|c| c.status.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_runs_pods_end_to_end() -> anyhow::Result<()> {
    common::require_tools();
    let tmp = tempfile::Builder::new().prefix("dari-agent-e2e").tempdir_in("/var/tmp")?;
    let server = apiserver(&tmp.path().join("server")).await;
    let netns = common::NetNs::new("e2e");
    let node_name = format!("agent-e2e-{}", std::process::id());
    let data = tmp.path().join("agent");
    let cidr: ipnet::IpNet = "10.244.3.0/24".parse()?;
    let cfg = AgentConfig {
        server: None,
        kubeconfig: server.admin_kubeconfig.clone(),
        node_name: node_name.clone(),
        node_ip: "10.200.0.2".parse()?,
        cni_conf_dir: data.join("cni/net.d"),
        data_dir: data.clone(),
        container_runtime_endpoint: None,
        cni_bin_dir: PathBuf::from("/usr/lib/cni"),
        pod_cidr: Some(cidr),
        cluster_dns: vec!["10.96.0.10".parse()?],
        cluster_domain: "cluster.local".into(),
        mtu: 1450,
        containerd_netns: Some(netns.path.clone()),
        backoff: Backoff { initial: Duration::from_secs(1), max: Duration::from_secs(4) },
        tick: Duration::from_millis(200),
        pod_cidr_timeout: Duration::from_secs(5),
    };
    let t0 = Instant::now();
    let agent = dari_agent::start(cfg).await?;
    eprintln!("agent ready in {:?}", t0.elapsed());
    let client = dari_agent::client(&server.admin_kubeconfig, None).await?;

    // Node: Ready, podCIDR, nodeInfo; Lease renewed.
    let nodes: Api<Node> = Api::all(client.clone());
    let n = nodes.get(&node_name).await?;
    assert_eq!(n.spec.as_ref().and_then(|s| s.pod_cidr.clone()), Some(cidr.to_string()));
    let st = n.status.clone().unwrap_or_default();
    assert!(st.conditions.unwrap_or_default().iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    assert!(st.node_info.map(|i| i.container_runtime_version).unwrap_or_default().starts_with("containerd://"));
    assert_eq!(st.capacity.unwrap_or_default().get("pods").map(|q| q.0.clone()), Some("110".into()));
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    assert!(leases.get(&node_name).await?.spec.and_then(|s| s.renew_time).is_some());

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let cri = RemoteCri::connect(&agent.cri_socket).await?;

    // 1. a busybox pod with downward-API env, an emptyDir, a passing readiness probe
    let t_apply = Instant::now();
    pods.create(
        &PostParams::default(),
        &pod(
            "bb",
            &node_name,
            r#"  terminationGracePeriodSeconds: 5
  containers:
  - name: main
    image: dari.local/busybox:1.35
    command: ["sh", "-c", "trap 'exit 0' TERM; echo started $(POD_NAME); while true; do sleep 1; done"]
    env:
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    - name: POD_IP
      valueFrom: {fieldRef: {fieldPath: status.podIP}}
    - name: GREETING
      value: hello-$(POD_NAME)
    volumeMounts:
    - {name: scratch, mountPath: /scratch}
    readinessProbe:
      exec: {command: ["true"]}
      periodSeconds: 1
  volumes:
  - name: scratch
    emptyDir: {}
"#,
        ),
    )
    .await?;
    let running = wait_for("bb Running", Duration::from_secs(60), || async {
        let p = pods.get("bb").await.ok()?;
        (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(p)
    })
    .await;
    let to_running = t_apply.elapsed();
    let ready = wait_for("bb Ready", Duration::from_secs(30), || async {
        let p = pods.get("bb").await.ok()?;
        (cond(&p, "Ready").as_deref() == Some("True")).then_some(p)
    })
    .await;
    eprintln!("bb: apply→Running {:?}, →Ready {:?}", to_running, t_apply.elapsed());
    let st = ready.status.clone().unwrap_or_default();
    let ip: std::net::IpAddr = st.pod_ip.clone().unwrap_or_default().parse()?;
    assert!(cidr.contains(&ip), "pod IP {ip} outside {cidr}");
    assert_eq!(st.host_ip.as_deref(), Some("10.200.0.2"));
    for t in ["PodScheduled", "Initialized", "ContainersReady", "Ready", "PodReadyToStartContainers"] {
        assert_eq!(cond(&ready, t).as_deref(), Some("True"), "condition {t}: {:?}", st.conditions);
    }
    let cs = &st.container_statuses.clone().unwrap_or_default()[0];
    assert!(cs.ready && cs.state.as_ref().and_then(|s| s.running.as_ref()).is_some(), "{cs:?}");
    assert!(cs.container_id.as_deref().unwrap_or("").starts_with("containerd://"));
    assert!(!cs.image_id.is_empty());
    let _ = running;
    // env and mounts inside the container
    let cid = cs.container_id.clone().unwrap_or_default().trim_start_matches("containerd://").to_string();
    let (code, out, _) = cri.exec_sync(&cid, vec!["sh".into(), "-c".into(), "echo $POD_NAME $POD_IP $GREETING; touch /scratch/x && echo ok; hostname; cat /etc/resolv.conf".into()], 10).await?;
    let out = String::from_utf8_lossy(&out).into_owned();
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with(&format!("bb {ip} hello-bb\nok\nbb\n")), "{out}");
    assert!(out.contains("search default.svc.cluster.local svc.cluster.local cluster.local"), "{out}");
    assert!(out.contains("nameserver 10.96.0.10") && out.contains("options ndots:5"), "{out}");

    // 2. a crashing container restarts with back-off; 3. a failing readiness probe keeps Ready false
    pods.create(&PostParams::default(), &pod("crash", &node_name, "  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: dari.local/busybox:1.35\n    command: [\"sh\", \"-c\", \"echo boom; exit 3\"]\n")).await?;
    pods.create(
        &PostParams::default(),
        &pod("unready", &node_name, "  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: dari.local/busybox:1.35\n    command: [\"sleep\", \"3600\"]\n    readinessProbe:\n      exec: {command: [\"false\"]}\n      periodSeconds: 1\n      failureThreshold: 1\n"),
    )
    .await?;
    let crashed = wait_for("crash restarted twice", Duration::from_secs(60), || async {
        let p = pods.get("crash").await.ok()?;
        let cs = p.status.as_ref()?.container_statuses.as_ref()?.first()?.clone();
        (cs.restart_count >= 2).then_some(cs)
    })
    .await;
    let last = crashed.last_state.and_then(|s| s.terminated).expect("lastState.terminated");
    assert_eq!(last.exit_code, 3);
    let p = wait_for("crash in CrashLoopBackOff", Duration::from_secs(30), || async {
        let p = pods.get("crash").await.ok()?;
        let w = p.status.as_ref()?.container_statuses.as_ref()?.first()?.state.clone()?.waiting?;
        (w.reason.as_deref() == Some("CrashLoopBackOff")).then_some(p)
    })
    .await;
    assert_eq!(p.status.and_then(|s| s.phase).as_deref(), Some("Running"));
    let unready = wait_for("unready Running", Duration::from_secs(30), || async {
        let p = pods.get("unready").await.ok()?;
        (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(p)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await; // several probe periods: must stay unready
    let unready = pods.get("unready").await.unwrap_or(unready);
    assert_eq!(cond(&unready, "Ready").as_deref(), Some("False"));
    assert_eq!(cond(&unready, "ContainersReady").as_deref(), Some("False"));

    // 4. deletion is clean: containers stopped within grace, sandbox and veth gone, IP released
    let ipam = data.join("cni/networks/dari");
    assert!(ipam.join(ip.to_string()).exists(), "IPAM reservation for {ip}");
    for name in ["bb", "crash", "unready"] {
        pods.delete(name, &DeleteParams::default()).await?;
    }
    let t_del = Instant::now();
    for name in ["bb", "crash", "unready"] {
        wait_for(&format!("pod {name} gone"), Duration::from_secs(30), || async { pods.get_opt(name).await.ok()?.is_none().then_some(()) }).await;
    }
    eprintln!("3 pods deleted in {:?}", t_del.elapsed());
    assert!(cri.list_pod_sandboxes().await?.is_empty(), "sandboxes left");
    assert!(cri.list_containers(None).await?.is_empty(), "containers left");
    let links = netns.run(&["ip", "-o", "link", "show", "master", "cni0"]);
    assert!(!links.contains("veth"), "veth left: {links}");
    let left: Vec<_> = std::fs::read_dir(&ipam)?.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with("10.")).collect();
    assert!(left.is_empty(), "IPs still reserved: {left:?}");
    assert!(!data.join("pods").exists() || std::fs::read_dir(data.join("pods"))?.next().is_none(), "pod volume dirs left");

    agent.shutdown().await?;
    Ok(())
}
