//! The HA control plane of the hard-way write-up: two real `dari server` processes on one real
//! 3-member etcd (Debian's etcd-server on loopback). Both serve the API; the controllers act on
//! one only (Lease), so a Deployment gets one ReplicaSet and its pods once; ClusterIPs are never
//! shared under concurrent creates on both; stopping the leading server (SIGTERM) releases the Lease
//! and the other takes over at once, kill -9 hands over once the Lease expires, and kubectl keeps
//! working against the survivor; killing the etcd leader during writes loses no acknowledged write.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kube-controller-manager";

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
    }
}

async fn holder(c: &mut support::Client) -> Option<String> {
    let (code, lease) = c.request("GET", LEASE, None).await;
    (code == 200).then(|| lease["spec"]["holderIdentity"].as_str().unwrap_or("").to_string()).filter(|h| !h.is_empty())
}

async fn count(c: &mut support::Client, path: &str) -> usize {
    let (code, list) = c.request("GET", path, None).await;
    assert_eq!(code, 200, "{path}: {list}");
    list["items"].as_array().map(Vec::len).unwrap_or(0)
}

fn service(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80}]}})
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new("kubectl").args(args).env("KUBECONFIG", kubeconfig).env("HOME", "/tmp/dari-test-home").output().expect("kubectl runs")
}

/// Scales `web` to `replicas` through `kubeconfig` with real kubectl, then waits until a server other
/// than `old_leader` holds the controllers' Lease and the pods match. Returns the time taken.
async fn scale_and_wait_for_takeover(kubeconfig: &Path, c: &mut support::Client, replicas: usize, old_leader: &str) -> Duration {
    let started = Instant::now();
    let kc = kubeconfig.to_path_buf();
    let arg = format!("--replicas={replicas}");
    let out = tokio::task::spawn_blocking(move || kubectl(&kc, &["scale", "deployment/web", &arg])).await.expect("join");
    assert!(out.status.success(), "kubectl scale: {}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let pods = count(c, "/api/v1/namespaces/default/pods?labelSelector=app%3Dweb").await;
        let h = holder(c).await;
        if pods == replicas && h.as_deref().is_some_and(|h| h != old_leader) {
            return started.elapsed();
        }
        assert!(Instant::now() < deadline, "no takeover: {pods} pods (want {replicas}), lease holder {h:?} (old leader {old_leader})");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_etcd() {
    assert!(Path::new("/usr/bin/kubectl").exists(), "kubectl missing: scripts/install-deps.sh installs it");
    let mut etcd = dari_store::testing::EtcdCluster::start(3).await.expect("3-member etcd starts (apt etcd-server)");
    let endpoints = etcd.endpoints().join(",");
    // a /27: 30 addresses, the first for the `kubernetes` Service, 29 for the test's Services
    let flags = ["--datastore", "etcd", "--etcd-servers", &endpoints, "--service-cluster-ip-range", "10.96.0.0/27"];
    let (dir_a, dir_b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));

    // server A alone takes the controllers' Lease
    let mut a = support::Server::start_with(dir_a.path(), &flags).await;
    let mut ca = a.client().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader_a = loop {
        if let Some(h) = holder(&mut ca).await {
            break h;
        }
        assert!(Instant::now() < deadline, "server A never took the controller Lease");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // server B shares the cluster's CA and join token (copied, as between hard-way controllers)
    copy_dir(&dir_a.path().join("pki"), &dir_b.path().join("pki"));
    std::fs::copy(dir_a.path().join("node-token"), dir_b.path().join("node-token")).expect("copy node-token");
    let b = support::Server::start_with(dir_b.path(), &flags).await;
    let mut cb = b.client().await;

    // both serve the same objects
    let (code, _) = ca.request("POST", "/api/v1/namespaces/default/configmaps", Some(&support::configmap("via-a", 1))).await;
    assert_eq!(code, 201);
    let (code, cm) = cb.request("GET", "/api/v1/namespaces/default/configmaps/via-a", None).await;
    assert_eq!((code, cm["data"]["i"].as_str()), (200, Some("1")), "B reads what A wrote: {cm}");

    // concurrent Service creates on both servers never share a ClusterIP
    let mut tasks = Vec::new();
    for w in 0..6 {
        let mut c = if w % 2 == 0 { a.client().await } else { b.client().await };
        tasks.push(tokio::spawn(async move {
            let mut ips = Vec::new();
            for i in 0..5 {
                if w * 5 + i >= 29 {
                    break;
                }
                let (code, svc) = c.request("POST", "/api/v1/namespaces/default/services", Some(&service(&format!("s{w}-{i}")))).await;
                assert_eq!(code, 201, "create s{w}-{i}: {svc}");
                ips.push(svc["spec"]["clusterIP"].as_str().expect("clusterIP").to_string());
            }
            ips
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("writer"));
    }
    let distinct: BTreeSet<_> = all.iter().collect();
    assert_eq!((all.len(), distinct.len()), (29, 29), "ClusterIPs handed out twice: {all:?}");
    assert!(!distinct.contains(&"10.96.0.1".to_string()), "the kubernetes Service's IP was handed out again");
    let (code, full) = cb.request("POST", "/api/v1/namespaces/default/services", Some(&service("one-too-many"))).await;
    assert_eq!(code, 500, "the range is exhausted: {full}");
    assert!(full["message"].as_str().unwrap_or("").contains("failed to allocate a serviceIP"), "{full}");

    // the controllers act once: a Deployment of 3 gets one ReplicaSet and 3 pods, never more
    let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}});
    let (code, body) = cb.request("POST", "/apis/apps/v1/namespaces/default/deployments", Some(&deploy)).await;
    assert_eq!(code, 201, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&mut ca, "/api/v1/namespaces/default/pods?labelSelector=app%3Dweb").await < 3 {
        assert!(Instant::now() < deadline, "the Deployment's pods never appeared");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for _ in 0..10 {
        assert_eq!(count(&mut cb, "/api/v1/namespaces/default/pods?labelSelector=app%3Dweb").await, 3, "pods created twice");
        assert_eq!(count(&mut cb, "/apis/apps/v1/namespaces/default/replicasets").await, 1, "ReplicaSets created twice");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // a graceful stop (SIGTERM) of the leading server releases its Lease: B takes over at its next
    // attempt, well within the Lease duration, and kubectl against B keeps working
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on the pid of a child this test owns.
    unsafe {
        libc::kill(a.pid() as i32, libc::SIGTERM);
    }
    let stopped = Instant::now();
    let status = a.child.wait().expect("A exits");
    assert!(status.success(), "A exits cleanly on SIGTERM: {status:?}");
    let takeover = scale_and_wait_for_takeover(&dir_b.path().join("admin.kubeconfig"), &mut cb, 5, &leader_a).await;
    eprintln!("graceful stop: controllers resumed on B {:.1} s after SIGTERM to A", stopped.elapsed().as_secs_f64());
    assert!(takeover < Duration::from_secs(15), "takeover after a graceful stop took {takeover:?} (Lease duration 15 s)");
    let leader_b = holder(&mut cb).await.expect("B holds the Lease");

    // A comes back (not leader); kill -9 of the leader B: A takes over once the Lease expires
    let a = support::Server::start_with(dir_a.path(), &flags).await;
    let mut ca = a.client().await;
    assert_eq!(holder(&mut ca).await.as_deref(), Some(leader_b.as_str()), "the restarted A must not take the Lease from B");
    let mut b = b;
    b.kill9();
    let takeover = scale_and_wait_for_takeover(&dir_a.path().join("admin.kubeconfig"), &mut ca, 2, &leader_b).await;
    eprintln!("kill -9: controllers resumed on A {:.1} s after B was killed (Lease duration 15 s, retry 2 s)", takeover.as_secs_f64());
    // the Lease is honoured to the end (B might only be partitioned), then A's next attempt wins
    assert!(takeover < Duration::from_secs(15 + 2 + 5), "takeover after kill -9 took {takeover:?}");
    let kc_a = dir_a.path().join("admin.kubeconfig");
    let out = tokio::task::spawn_blocking(move || kubectl(&kc_a, &["get", "deployment", "web", "-o", "jsonpath={.status.replicas}"])).await.expect("join");
    assert!(out.status.success(), "kubectl get via A: {}", String::from_utf8_lossy(&out.stderr));
    let (b, mut cb) = (a, ca);

    // kill the etcd leader during a stream of writes through B: every acknowledged write survives
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3 {
        let mut c = b.client().await;
        let (acked, stop) = (acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut refused = 0;
            for i in 0.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let name = format!("w{w}-{i}");
                let (code, body) = c.request("POST", "/api/v1/namespaces/default/configmaps", Some(&support::configmap(&name, i))).await;
                if code == 201 {
                    acked.lock().expect("lock").insert(name, body["metadata"]["resourceVersion"].as_str().expect("rv").to_string());
                } else {
                    // during the election etcd answers "no leader": the API says 503, retry later
                    assert!(code == 503 || code == 504 || code == 500, "unexpected {code}: {body}");
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            refused
        }));
    }
    let wait_for = |n: usize, acked: Arc<Mutex<BTreeMap<String, String>>>| async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked.lock().expect("lock").len() < n {
            assert!(Instant::now() < deadline, "writes did not reach {n}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    wait_for(100, acked.clone()).await;
    let killed_member = etcd.kill_leader().await.expect("kill the etcd leader");
    let at_kill = acked.lock().expect("lock").len();
    wait_for(at_kill + 100, acked.clone()).await; // the API recovered: writes are acknowledged again
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut refused = 0;
    for w in writers {
        refused += w.await.expect("writer");
    }
    let acked = acked.lock().expect("lock").clone();
    for (name, rv) in &acked {
        let (code, cm) = cb.request("GET", &format!("/api/v1/namespaces/default/configmaps/{name}"), None).await;
        assert_eq!(code, 200, "acknowledged write {name} lost");
        assert_eq!(cm["metadata"]["resourceVersion"].as_str(), Some(rv.as_str()), "{name} changed");
    }
    eprintln!("etcd member {killed_member} (the leader) killed after {at_kill} writes; {} acknowledged writes all present; {refused} refused during the election", acked.len());
}

/// `dari certs etcd` writes what an etcd with `--client-cert-auth` needs; `dari server` connects
/// with the client certificate, and without it is refused with a clear message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_with_client_cert_auth_from_dari_certs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("etcd-certs");
    let certs = std::process::Command::new(env!("CARGO_BIN_EXE_dari"))
        .args(["certs", "etcd", "--data-dir"])
        .arg(dir.path())
        .arg("--out")
        .arg(&out)
        .args(["--member", "m0=127.0.0.1,localhost"])
        .output()
        .expect("dari certs runs");
    assert!(certs.status.success(), "dari certs etcd: {}", String::from_utf8_lossy(&certs.stderr));
    let tls = dari_store::testing::ServerTls {
        cert_file: out.join("m0.crt"),
        key_file: out.join("m0.key"),
        ca_file: out.join("ca.crt"),
        client_cert_auth: true,
    };
    let etcd = dari_store::testing::EtcdCluster::start_with(dari_store::testing::ClusterOptions { members: 1, tls: Some(tls) })
        .await
        .expect("etcd with TLS starts");
    let endpoints = etcd.endpoints().join(",");
    assert!(endpoints.starts_with("https://"), "{endpoints}");
    let ca = out.join("ca.crt").display().to_string();
    let (crt, key) = (out.join("apiserver-etcd-client.crt").display().to_string(), out.join("apiserver-etcd-client.key").display().to_string());

    // without a client certificate: refused, and the server says why
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_dari"))
        .args(["server", "--secure-port", "0", "--data-dir"])
        .arg(dir.path())
        .args(["--datastore", "etcd", "--etcd-servers", &endpoints, "--etcd-cafile", &ca])
        .output()
        .expect("dari server runs");
    assert!(!refused.status.success(), "a server without the etcd client certificate must not start");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("opening the datastore") && err.contains(&endpoints), "unclear error: {err}");

    // with it: serving, and the objects are in etcd under /registry as kube-apiserver lays them out
    let server = support::Server::start_with(
        dir.path(),
        &["--datastore", "etcd", "--etcd-servers", &endpoints, "--etcd-cafile", &ca, "--etcd-certfile", &crt, "--etcd-keyfile", &key],
    )
    .await;
    let mut c = server.client().await;
    let (code, _) = c.request("POST", "/api/v1/namespaces/default/configmaps", Some(&support::configmap("tls", 1))).await;
    assert_eq!(code, 201);
    let get = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &endpoints, "--cacert", &ca, "--cert", &crt, "--key", &key, "get", "--keys-only", "--prefix", "/registry/configmaps/default/"])
        .output()
        .expect("etcdctl runs (apt etcd-client)");
    let keys = String::from_utf8_lossy(&get.stdout);
    assert!(keys.lines().any(|l| l == "/registry/configmaps/default/tls"), "etcdctl shows: {keys} {}", String::from_utf8_lossy(&get.stderr));
}
