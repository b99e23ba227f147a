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
    let args = dari_apiserver::ServerArgs::loopback(dir);
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

struct Env {
    _cg: common::CgroupGuard,
    _tmp: tempfile::TempDir,
    server: dari_apiserver::RunningServer,
    netns: common::NetNs,
    node_name: String,
    data: PathBuf,
    cidr: ipnet::IpNet,
}

async fn env(tag: &str, cidr: &str) -> anyhow::Result<(Env, AgentConfig)> {
    common::require_tools();
    let tmp = tempfile::Builder::new().prefix("dari-agent-e2e").tempdir_in("/var/tmp")?;
    let server = apiserver(&tmp.path().join("server")).await;
    let netns = common::NetNs::new(tag);
    let node_name = format!("agent-{tag}-{}", std::process::id());
    let data = tmp.path().join("agent");
    let cidr: ipnet::IpNet = cidr.parse()?;
    let cfg = AgentConfig {
        server: None,
        kubeconfig: server.admin_kubeconfig.clone(),
        lb: None,
        node_name: node_name.clone(),
        // loopback: the API server dials InternalIP:port to proxy kubectl logs/exec to the agent
        node_ip: "127.0.0.1".parse()?,
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
        stream_address: Some("127.0.0.1:0".parse()?),
    };
    Ok((Env { _cg: common::CgroupGuard(format!("/dari/{node_name}")), _tmp: tmp, server, netns, node_name, data, cidr }, cfg))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_runs_pods_end_to_end() -> anyhow::Result<()> {
    let (e, cfg) = env("e2e", "10.244.3.0/24").await?;
    let (server, netns, node_name, data, cidr) = (&e.server, &e.netns, e.node_name.clone(), e.data.clone(), e.cidr);
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
    command: ["sh", "-c", "trap 'exit 0' TERM; echo started $(POD_NAME); echo ok > /tmp/index.html; httpd -f -p 8080 -h /tmp & while true; do sleep 1; done"]
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
      httpGet: {path: /index.html, port: 8080}
      periodSeconds: 1
    livenessProbe:
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
    assert_eq!(st.host_ip.as_deref(), Some("127.0.0.1"));
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

    // logs and exec through the agent's streaming endpoint (what the API server will proxy)
    let stream = agent.stream_addr.expect("stream server");
    // (HTTPS; only the API server's kubelet client certificate is admitted)
    let anonymous = http_get(&server.pki, stream, None, "/containerLogs/default/bb/main").await;
    assert!(anonymous.starts_with("HTTP/1.1 401"), "{anonymous:?}");
    let as_admin = http_get(&server.pki, stream, Some(server.pki.admin_cert()), "/containerLogs/default/bb/main").await;
    assert!(as_admin.starts_with("HTTP/1.1 403"), "{as_admin:?}");
    let (kc, kk) = server.pki.issue_client_cert(dari_agent::stream::API_SERVER_CLIENT, &["system:masters"], 1)?;
    let kubelet_client = dari_pki::CertKeyPem { cert_pem: kc, key_pem: kk };
    let logs = http_get(&server.pki, stream, Some(&kubelet_client), "/containerLogs/default/bb/main").await;
    assert!(logs.starts_with("HTTP/1.1 200") && logs.ends_with("\r\n\r\nstarted bb\n"), "{logs:?}");
    let (out, status) = ws_exec(&server.pki, &kubelet_client, stream, "/exec/default/bb/main?command=sh&command=-c&command=echo+out%3B+echo+err+%3E%262%3B+exit+3&stdout=1&stderr=1").await;
    assert_eq!(out.get(&1).map(|v| String::from_utf8_lossy(v).into_owned()).as_deref(), Some("out\n"), "{out:?}");
    assert_eq!(out.get(&2).map(|v| String::from_utf8_lossy(v).into_owned()).as_deref(), Some("err\n"), "{out:?}");
    assert!(status.contains("NonZeroExitCode") && status.contains("\"message\":\"3\""), "{status}");
    // and through the API server with the real kubectl (API server → agent over TLS → containerd)
    let out = kubectl(&server.admin_kubeconfig, &["logs", "bb"]).await;
    assert!(out.status.success(), "kubectl logs: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "started bb\n");
    let out = kubectl(&server.admin_kubeconfig, &["exec", "bb", "--", "sh", "-c", "echo via-apiserver; exit 3"]).await;
    assert_eq!(out.status.code(), Some(3), "kubectl exec exit code: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "via-apiserver\n");

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
    drop(e);
    Ok(())
}

async fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> std::process::Output {
    assert!(std::path::Path::new("/usr/bin/kubectl").exists(), "kubectl missing: scripts/install-deps.sh installs it");
    let kubeconfig = kubeconfig.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || std::process::Command::new("kubectl").arg("--kubeconfig").arg(&kubeconfig).args(&args).output().expect("kubectl runs")).await.expect("kubectl task")
}

/// TLS to the agent's streaming endpoint (serving cert for the node IP 127.0.0.1), trusting the
/// cluster CA, presenting `client` if given.
async fn tls_connect(pki: &dari_pki::Pki, addr: std::net::SocketAddr, client: Option<&dari_pki::CertKeyPem>) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let cfg = match client {
        Some(c) => pki.client_config(&c.cert_pem, &c.key_pem).expect("client config"),
        None => pki.anonymous_client_config().expect("client config"),
    };
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tokio_rustls::TlsConnector::from(cfg).connect(rustls::pki_types::ServerName::IpAddress(addr.ip().into()), tcp).await.expect("TLS handshake with the agent")
}

async fn http_get(pki: &dari_pki::Pki, addr: std::net::SocketAddr, client: Option<&dari_pki::CertKeyPem>, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tls_connect(pki, addr, client).await;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: agent\r\n\r\n").as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.expect("logs in time").expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

/// A minimal WebSocket client speaking v4.channel.k8s.io: returns bytes per channel and the
/// error channel (3) text, which carries the exit status.
async fn ws_exec(pki: &dari_pki::Pki, client: &dari_pki::CertKeyPem, addr: std::net::SocketAddr, path: &str) -> (std::collections::BTreeMap<u8, Vec<u8>>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tls_connect(pki, addr, Some(client)).await;
    let req = format!("GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    let head_end = loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b)).await.expect("upgrade in time").expect("read");
        assert!(n > 0, "connection closed before the upgrade: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&b[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "no upgrade: {head}");
    let mut data = buf[head_end..].to_vec();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut b)).await.expect("exec output in time") {
            Ok(0) | Err(_) => break,
            Ok(n) => data.extend_from_slice(&b[..n]),
        }
    }
    let mut chans: std::collections::BTreeMap<u8, Vec<u8>> = Default::default();
    let mut i = 0;
    while i + 2 <= data.len() {
        let op = data[i] & 0x0f;
        let mut len = (data[i + 1] & 0x7f) as usize;
        let mut p = i + 2;
        if len == 126 {
            len = u16::from_be_bytes([data[p], data[p + 1]]) as usize;
            p += 2;
        } else if len == 127 {
            len = u64::from_be_bytes(data[p..p + 8].try_into().expect("8 bytes")) as usize;
            p += 8;
        }
        if p + len > data.len() {
            break;
        }
        let payload = &data[p..p + len];
        if (op == 1 || op == 2) && !payload.is_empty() {
            chans.entry(payload[0]).or_default().extend_from_slice(&payload[1..]);
        }
        i = p + len;
    }
    chans.retain(|_, v| !v.is_empty());
    let status = chans.get(&3).map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
    (chans, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart_adopts_running_pods_and_cleans_orphans() -> anyhow::Result<()> {
    let (e, cfg) = env("adopt", "10.244.4.0/24").await?;
    let agent = dari_agent::start(cfg.clone()).await?;
    let client = dari_agent::client(&e.server.admin_kubeconfig, None).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let spec = "  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: dari.local/busybox:1.35\n    command: [\"sleep\", \"3600\"]\n";
    pods.create(&PostParams::default(), &pod("keep", &e.node_name, spec)).await?;
    let cid = |p: &Pod| p.status.as_ref().and_then(|s| s.container_statuses.as_ref()).and_then(|c| c.first()).and_then(|c| c.container_id.clone());
    let before = wait_for("keep Running", Duration::from_secs(60), || async {
        let p = pods.get("keep").await.ok()?;
        (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(p)
    })
    .await;
    agent.shutdown().await?;
    // while the agent is down, the pod is deleted from the API for good (grace 0)
    pods.create(&PostParams::default(), &pod("gone", &e.node_name, spec)).await?;
    let agent = dari_agent::start(cfg.clone()).await?;
    wait_for("gone Running", Duration::from_secs(60), || async {
        let p = pods.get("gone").await.ok()?;
        (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(())
    })
    .await;
    agent.shutdown().await?;
    pods.delete("gone", &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await?;
    let agent = dari_agent::start(cfg).await?;
    let cri = RemoteCri::connect(&agent.cri_socket).await?;
    // the orphan's sandbox is removed; the kept pod's container is the same one, not restarted
    wait_for("orphan sandbox removed", Duration::from_secs(30), || async {
        let n = cri.list_pod_sandboxes().await.ok()?.len();
        (n == 1).then_some(())
    })
    .await;
    let after = pods.get("keep").await?;
    assert_eq!(cid(&after), cid(&before), "container was restarted instead of adopted");
    assert_eq!(after.status.as_ref().and_then(|s| s.container_statuses.as_ref()).map(|c| c[0].restart_count), Some(0));
    assert_eq!(after.status.as_ref().and_then(|s| s.phase.clone()).as_deref(), Some("Running"));
    pods.delete("keep", &DeleteParams::default()).await?;
    wait_for("keep gone", Duration::from_secs(30), || async { pods.get_opt("keep").await.ok()?.is_none().then_some(()) }).await;
    assert!(cri.list_pod_sandboxes().await?.is_empty());
    agent.shutdown().await?;
    drop(e);
    Ok(())
}

fn rss_kb(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// Benchmark (run explicitly): apply → Running and → Ready for 1 pod, then 30 pods at once.
/// `cargo test -p dari-agent --test agent -- --ignored --nocapture bench`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored"]
async fn bench_pod_start_latency() -> anyhow::Result<()> {
    let (e, mut cfg) = env("bench", "10.244.5.0/24").await?;
    cfg.tick = Duration::from_secs(1); // the default poll interval
    let agent = dari_agent::start(cfg).await?;
    let client = dari_agent::client(&e.server.admin_kubeconfig, None).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let spec = "  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: dari.local/busybox:1.35\n    command: [\"sleep\", \"3600\"]\n    readinessProbe:\n      exec: {command: [\"true\"]}\n      periodSeconds: 1\n";
    let ready = |p: &Pod| cond(p, "Ready").as_deref() == Some("True");
    let running = |p: &Pod| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    for (round, n) in [(0, 1usize), (1, 30usize)] {
        let t0 = Instant::now();
        for i in 0..n {
            pods.create(&PostParams::default(), &pod(&format!("b{round}-{i}"), &e.node_name, spec)).await?;
        }
        let (mut all_running, mut all_ready) = (None, None);
        let mut running_at: Vec<Duration> = Vec::new();
        while all_ready.is_none() {
            assert!(t0.elapsed() < Duration::from_secs(300), "pods not ready in 300 s");
            let list = pods.list(&Default::default()).await?.items;
            let mine: Vec<&Pod> = list.iter().filter(|p| p.metadata.name.as_deref().unwrap_or("").starts_with(&format!("b{round}-"))).collect();
            let r = mine.iter().filter(|p| running(p)).count();
            while running_at.len() < r {
                running_at.push(t0.elapsed());
            }
            if r == n && all_running.is_none() {
                all_running = Some(t0.elapsed());
            }
            if mine.iter().filter(|p| ready(p)).count() == n {
                all_ready = Some(t0.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let median = running_at.get(n / 2).copied().unwrap_or_default();
        eprintln!("BENCH {n} pod(s): apply→all Running {:?} (median pod {:?}), →all Ready {:?}", all_running.unwrap_or_default(), median, all_ready.unwrap_or_default());
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let me = rss_kb("self");
    let containerd_pid = std::fs::read_dir("/proc")?
        .filter_map(|d| d.ok())
        .map(|d| d.file_name().to_string_lossy().into_owned())
        .find(|pid| std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default().contains(&format!("{}/containerd/config.toml", e.data.display())))
        .unwrap_or_default();
    eprintln!("BENCH idle with 31 pods: test process (API server + agent, in-process) RSS {} MB; agent's containerd RSS {} MB", me / 1024, rss_kb(&containerd_pid) / 1024);
    let t0 = Instant::now();
    pods.delete_collection(&DeleteParams::default(), &Default::default()).await?;
    wait_for("all pods gone", Duration::from_secs(120), || async { pods.list(&Default::default()).await.ok()?.items.is_empty().then_some(()) }).await;
    eprintln!("BENCH delete 31 pods: {:?}", t0.elapsed());
    agent.shutdown().await?;
    drop(e);
    Ok(())
}

/// The seed multi-container pod, with busybox in place of ubuntu/nginx (no registry here): both
/// containers run, share eth0's address and reach each other over localhost, and share an emptyDir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multicontainer_pod_shares_network_and_volume() -> anyhow::Result<()> {
    let (e, cfg) = env("multi", "10.244.6.0/24").await?;
    let agent = dari_agent::start(cfg).await?;
    let client = dari_agent::client(&e.server.admin_kubeconfig, None).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let spec = r#"  terminationGracePeriodSeconds: 1
  restartPolicy: Always
  initContainers:
  - name: init
    image: dari.local/busybox:1.35
    command: ["sh", "-c", "echo from-init > /cache/init"]
    volumeMounts:
    - {mountPath: /cache, name: cache-volume}
  containers:
  - name: ubuntu
    image: dari.local/busybox:1.35
    command: ["/bin/sleep", "3650d"]
    imagePullPolicy: IfNotPresent
    volumeMounts:
    - {mountPath: /cache, name: cache-volume}
  - name: nginx
    image: dari.local/busybox:1.35
    command: ["sh", "-c", "mkdir -p /www && echo from-nginx > /www/index.html && echo shared > /cache/file && exec httpd -f -p 80 -h /www"]
    ports:
    - containerPort: 80
    volumeMounts:
    - {mountPath: /cache, name: cache-volume}
  volumes:
  - name: cache-volume
    emptyDir: {}
"#;
    pods.create(&PostParams::default(), &pod("multi-container", &e.node_name, spec)).await?;
    let p = wait_for("2/2 ready", Duration::from_secs(60), || async {
        let p = pods.get("multi-container").await.ok()?;
        let cs = p.status.as_ref()?.container_statuses.clone()?;
        (cs.len() == 2 && cs.iter().all(|c| c.ready)).then_some(p)
    })
    .await;
    let cri = RemoteCri::connect(&agent.cri_socket).await?;
    let ids: Vec<String> = p.status.and_then(|s| s.container_statuses).unwrap_or_default().iter().map(|c| c.container_id.clone().unwrap_or_default().trim_start_matches("containerd://").to_string()).collect();
    let mut addrs = Vec::new();
    for id in &ids {
        let (_, out, _) = cri.exec_sync(id, vec!["sh".into(), "-c".into(), "ip -o -4 addr show eth0 | awk '{print $4}'".into()], 10).await?;
        addrs.push(String::from_utf8_lossy(&out).trim().to_string());
    }
    assert!(!addrs[0].is_empty() && addrs[0] == addrs[1], "eth0 differs: {addrs:?}");
    let ubuntu = &ids[0];
    let got = wait_for("httpd answers on localhost", Duration::from_secs(10), || async {
        let (code, out, _) = cri.exec_sync(ubuntu, vec!["sh".into(), "-c".into(), "wget -qO- http://127.0.0.1:80/index.html && cat /cache/file /cache/init".into()], 5).await.ok()?;
        (code == 0).then(|| String::from_utf8_lossy(&out).into_owned())
    })
    .await;
    assert_eq!(got, "from-nginx\nshared\nfrom-init\n");
    let p = pods.get("multi-container").await?;
    assert_eq!(cond(&p, "Initialized").as_deref(), Some("True"));
    let init = p.status.and_then(|s| s.init_container_statuses).unwrap_or_default();
    let t = init.first().and_then(|c| c.state.clone()).and_then(|s| s.terminated).expect("init terminated");
    assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
    pods.delete("multi-container", &DeleteParams::default()).await?;
    wait_for("pod gone", Duration::from_secs(30), || async { pods.get_opt("multi-container").await.ok()?.is_none().then_some(()) }).await;
    assert!(cri.list_pod_sandboxes().await?.is_empty());
    agent.shutdown().await?;
    drop(e);
    Ok(())
}

/// `dari agent --server A,B`: the whole agent (its own containerd) through the API server load
/// balancer; server A dies (every connection closed, listener gone) while the agent runs: the
/// Node's Lease keeps being renewed and the pod watch recovers (a pod created afterwards runs
/// and is torn down) via B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_survives_the_death_of_its_api_server() -> anyhow::Result<()> {
    use dari_agent::lb;
    common::require_tools();
    let mut h = common::ha::ha().await;
    let relay = common::ha::Relay::start(h.a.as_ref().expect("A").addr).await;
    let b_url = format!("https://{}", h.b.addr);
    let tmp = tempfile::Builder::new().prefix("dari-agent-lb").tempdir_in("/var/tmp")?;
    let data = tmp.path().join("agent");
    let balancer = lb::LoadBalancer::start(lb::LoadBalancer::bind(&data, 0).await?, vec![relay.url(), b_url.clone()], lb::LbOptions::default())?;
    let kubeconfig = lb::write_kubeconfig(&h.tmp.path().join("a/admin.kubeconfig"), &data.join(lb::KUBECONFIG_FILE), &balancer.url())?;
    let balancer = std::sync::Arc::new(balancer);
    let netns = common::NetNs::new("lb");
    let node_name = format!("agent-lb-{}", std::process::id());
    let _cg = common::CgroupGuard(format!("/dari/{node_name}"));
    let cfg = AgentConfig {
        server: None,
        kubeconfig,
        lb: Some(balancer.clone()),
        node_name: node_name.clone(),
        node_ip: "127.0.0.1".parse()?,
        cni_conf_dir: data.join("cni/net.d"),
        data_dir: data.clone(),
        container_runtime_endpoint: None,
        cni_bin_dir: PathBuf::from("/usr/lib/cni"),
        pod_cidr: Some("10.244.7.0/24".parse()?),
        cluster_dns: vec!["10.96.0.10".parse()?],
        cluster_domain: "cluster.local".into(),
        mtu: 1450,
        containerd_netns: Some(netns.path.clone()),
        backoff: Backoff { initial: Duration::from_secs(1), max: Duration::from_secs(4) },
        tick: Duration::from_millis(200),
        pod_cidr_timeout: Duration::from_secs(5),
        stream_address: Some("127.0.0.1:0".parse()?),
    };
    let agent = dari_agent::start(cfg).await?;
    assert_eq!(balancer.current(), relay.url());
    // observed on B directly
    let client_b = dari_agent::client(&h.tmp.path().join("b/admin.kubeconfig"), None).await?;
    let pods: Api<Pod> = Api::namespaced(client_b.clone(), "default");
    let leases: Api<Lease> = Api::namespaced(client_b.clone(), "kube-node-lease");
    let spec = "  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: dari.local/busybox:1.35\n    command: [\"sleep\", \"3600\"]\n";
    let running = |name: &'static str| {
        let pods = pods.clone();
        async move {
            wait_for(&format!("{name} Running"), Duration::from_secs(60), || async {
                let p = pods.get(name).await.ok()?;
                (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(())
            })
            .await
        }
    };
    pods.create(&PostParams::default(), &pod("before", &node_name, spec)).await?;
    running("before").await;

    // A dies
    relay.set(common::ha::Mode::Kill);
    drop(h.a.take());
    let killed = k8s_openapi::jiff::Timestamp::now();
    let t0 = Instant::now();
    pods.create(&PostParams::default(), &pod("after", &node_name, spec)).await?;
    running("after").await;
    eprintln!("pod created after A died Running in {:?}", t0.elapsed());
    // the heartbeat renews every LEASE_SECONDS/4 = 10 s
    let renewed = wait_for("Lease renewed after A died", Duration::from_secs(30), || async {
        let t = leases.get(&node_name).await.ok()?.spec?.renew_time?;
        (t.0 > killed).then_some(t)
    })
    .await;
    eprintln!("Lease renewed {:?} after A died (at {:?})", t0.elapsed(), renewed.0);
    assert_eq!(balancer.current(), b_url);
    for name in ["before", "after"] {
        pods.delete(name, &DeleteParams::default()).await?;
    }
    for name in ["before", "after"] {
        wait_for(&format!("pod {name} gone"), Duration::from_secs(30), || async { pods.get_opt(name).await.ok()?.is_none().then_some(()) }).await;
    }
    let cri = RemoteCri::connect(&agent.cri_socket).await?;
    assert!(cri.list_pod_sandboxes().await?.is_empty(), "sandboxes left");
    agent.shutdown().await?;
    drop(netns);
    Ok(())
}
