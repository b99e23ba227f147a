//! End to end (root): `dari lab up --datastore etcd --servers 2` on 3 nodes (own prefix `dha`,
//! LAN 172.31.80.0/24 and cluster CIDR, so it runs beside the other lab tests): a 3-member etcd
//! with TLS and client-certificate auth in the node namespaces, two `dari server`s, agents given
//! both. `etcdctl` with the lab's certificates shows the pods under `/registry/pods/` (and is
//! refused without a client certificate); the dari server holding the controllers' Lease is
//! killed with SIGKILL → kubectl through the 127.0.0.1 forwarder keeps working at once, the
//! Deployment scales and its new pod runs (the other server's controllers take over), a new
//! Service resolves in the cluster DNS (which follows the API through an agent's failover); the etcd
//! leader is killed → writes go on and the controllers still act; `lab down` leaves no process,
//! namespace, mount or listener of the lab.
//!
//! `cargo build -p dari --bin dari && cargo test -p dari-lab --test e2e_ha`
//! Needs: etcd-server, etcd-client (etcdctl), kubectl, containerd, runc, nftables.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{free_port, is_root, ok, run, Lab};

const PREFIX: &str = "dha";
const NODES: [&str; 3] = ["ha-cp1", "ha-cp2", "ha-w1"];
const ENDPOINTS: &str = "https://172.31.80.10:2379,https://172.31.80.11:2379,https://172.31.80.12:2379";

const DEPLOY: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: busybox
        imagePullPolicy: IfNotPresent
        command: ["sleep", "3600"]
"#;

/// etcdctl from the hub namespace (it reaches every member) with the API servers' client certificate.
fn etcdctl(lab: &Lab, args: &[&str]) -> Output {
    let pki = lab.dir.path().join("etcd/pki");
    run(Command::new("nsenter")
        .arg(format!("--net=/run/netns/{PREFIX}-hub"))
        .args(["--", "etcdctl", "--endpoints", ENDPOINTS, "--dial-timeout", "2s", "--command-timeout", "5s", "--cacert"])
        .arg(pki.join("ca.crt"))
        .arg("--cert")
        .arg(pki.join("apiserver-etcd-client.crt"))
        .arg("--key")
        .arg(pki.join("apiserver-etcd-client.key"))
        .args(args)
        .env("ETCDCTL_API", "3"))
}

/// `NAME PHASE` of the web pods that are not being deleted.
fn live_pods(lab: &Lab) -> Vec<(String, String)> {
    let o = run(&mut lab.kubectl(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        r#"jsonpath={range .items[*]}{.metadata.name} {.status.phase} {.metadata.deletionTimestamp}{"\n"}{end}"#,
    ]));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 2).then(|| (f[0].to_string(), f[1].to_string()))
        })
        .collect()
}

/// Waits until exactly `n` live web pods exist (and, with `running`, all Running); returns the time taken.
fn wait_pods(lab: &Lab, n: usize, running: bool, timeout: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let p = live_pods(lab);
        if p.len() == n && (!running || p.iter().all(|(_, ph)| ph == "Running")) {
            return t.elapsed();
        }
        assert!(t.elapsed() < timeout, "want {n} web pods{} within {timeout:?}, have {p:?}", if running { " Running" } else { "" });
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn pid_of(lab: &Lab, name: &str) -> i32 {
    let p = lab.dir.path().join(format!("pids/{name}.pid"));
    let t = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    t.lines().next().and_then(|l| l.trim().parse().ok()).unwrap_or_else(|| panic!("bad pid file {}", p.display()))
}

fn kill9(pid: i32) {
    ok(Command::new("kill").args(["-9", &pid.to_string()]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
        assert!(Instant::now() < deadline, "pid {pid} survived SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z'))).unwrap_or(true)
}

/// What of this lab is left on the host: namespaces, processes naming its directory, mounts.
fn leftovers(lab: &Lab) -> Vec<String> {
    let d = lab.dir.path().display().to_string();
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    let netns = ok(Command::new("ip").args(["netns", "list"]));
    out.extend(netns.lines().filter(|l| l.starts_with(&format!("{PREFIX}-"))).map(|l| format!("netns {l}")));
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let cmd = String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).unwrap_or_default()).replace('\0', " ");
        if cmd.contains(&d) {
            out.push(format!("process {pid}: {cmd}"));
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    out.extend(mounts.lines().filter(|l| l.contains(&d)).map(|l| format!("mount {l}")));
    out
}

#[test]
fn ha_control_plane_on_etcd() {
    assert!(is_root(), "the lab end-to-end test needs root (CI runs as root)");
    for (bin, pkg) in [("/usr/bin/etcd", "etcd-server"), ("/usr/bin/etcdctl", "etcd-client"), ("/usr/bin/kubectl", "kubectl")] {
        assert!(std::path::Path::new(bin).exists(), "{bin} missing: apt-get install {pkg}");
    }
    let lab = Lab::new("dari-dha");
    let port = free_port();
    let api = format!("127.0.0.1:{port}");
    let started = Instant::now();
    ok(lab
        .lab("up", &["--nodes", &NODES.join(","), "--datastore", "etcd", "--servers", "2", "--prefix", PREFIX, "--subnet", "172.31.80.0/24", "--cluster-cidr", "10.248.0.0/16"])
        .args(["--api-listen", &api]));
    let up_secs = started.elapsed().as_secs_f64();
    eprintln!("lab up (etcd x3, 2 servers, 3 nodes Ready) in {up_secs:.1}s");

    // status shows both servers and the three members, all healthy
    let status = ok(&mut lab.lab("status", &[]));
    eprintln!("{status}");
    for name in ["server ", "server2 ", "etcd1 ", "etcd2 ", "etcd3 "] {
        assert!(status.lines().any(|l| l.starts_with(name) && l.contains("pid ")), "status lacks a running {name}:\n{status}");
    }
    assert_eq!(status.lines().filter(|l| l.starts_with("etcd") && l.ends_with(" healthy")).count(), 3, "{status}");

    // etcd enforces client certificates
    let pki = lab.dir.path().join("etcd/pki");
    let anon = run(Command::new("nsenter")
        .arg(format!("--net=/run/netns/{PREFIX}-hub"))
        .args(["--", "etcdctl", "--endpoints", "https://172.31.80.10:2379", "--dial-timeout", "2s", "--command-timeout", "3s", "--cacert"])
        .arg(pki.join("ca.crt"))
        .args(["get", "--prefix", "--keys-only", "/registry/"])
        .env("ETCDCTL_API", "3"));
    assert!(!anon.status.success(), "etcd answered a client without a certificate: {anon:?}");

    // a Deployment; its pods are in etcd where kube-apiserver would put them
    let mut apply = lab.kubectl(&["apply", "-f", "-"]);
    apply.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = apply.spawn().expect("kubectl apply");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), DEPLOY.as_bytes()).expect("write manifest");
    let out = child.wait_with_output().expect("kubectl apply");
    assert!(out.status.success(), "kubectl apply: {}", String::from_utf8_lossy(&out.stderr));
    let first_running = wait_pods(&lab, 2, true, Duration::from_secs(90));
    eprintln!("deployment: 2 pods Running after {:.1}s", first_running.as_secs_f64());
    let keys = etcdctl(&lab, &["get", "--prefix", "--keys-only", "/registry/pods/default/"]);
    let keys_text = String::from_utf8_lossy(&keys.stdout).into_owned();
    let pod_keys: Vec<&str> = keys_text.lines().filter(|l| l.starts_with("/registry/pods/default/web-")).collect();
    let names: Vec<String> = live_pods(&lab).into_iter().map(|(n, _)| format!("/registry/pods/default/{n}")).collect();
    assert_eq!(pod_keys.len(), 2, "etcdctl get --prefix /registry/pods/default/: {keys_text} {}", String::from_utf8_lossy(&keys.stderr));
    assert!(names.iter().all(|n| pod_keys.contains(&n.as_str())), "{names:?} vs {pod_keys:?}");

    // kill -9 the server whose controllers hold the Lease
    let holder = ok(&mut lab.kubectl(&["-n", "kube-system", "get", "lease", "kube-controller-manager", "-o", "jsonpath={.spec.holderIdentity}"])).trim().to_string();
    assert!(!holder.is_empty(), "no controller Lease holder");
    let leader = ["server", "server2"]
        .into_iter()
        .find(|s| {
            let log = std::fs::read_to_string(lab.dir.path().join(format!("logs/{s}.log"))).unwrap_or_default();
            log.lines().any(|l| l.contains("became leader") && l.contains("kube-controller-manager") && l.contains(&holder))
        })
        .unwrap_or_else(|| panic!("no server log names the Lease holder {holder}"));
    let survivor = if leader == "server" { "server2" } else { "server" };
    kill9(pid_of(&lab, leader));
    let killed_at = Instant::now();
    eprintln!("killed {leader} (Lease holder {holder}); {survivor} remains");
    // at once, through the forwarder, without retries
    let nodes = ok(&mut lab.kubectl(&["get", "nodes", "--no-headers"]));
    assert_eq!(nodes.lines().filter(|l| l.split_whitespace().nth(1) == Some("Ready")).count(), 3, "{nodes}");
    ok(&mut lab.kubectl(&["scale", "deployment", "web", "--replicas", "3"]));
    let api_ok = killed_at.elapsed();
    let created = wait_pods(&lab, 3, false, Duration::from_secs(60)) + api_ok;
    let running = wait_pods(&lab, 3, true, Duration::from_secs(60)) + created;
    eprintln!(
        "after killing {leader}: kubectl get+scale ok after {:.1}s, 3rd pod created after {:.1}s, Running after {:.1}s",
        api_ok.as_secs_f64(),
        created.as_secs_f64(),
        running.as_secs_f64()
    );
    assert!(created < Duration::from_secs(40), "controllers took {created:?} to resume (Lease takeover)");
    let new_holder = ok(&mut lab.kubectl(&["-n", "kube-system", "get", "lease", "kube-controller-manager", "-o", "jsonpath={.spec.holderIdentity}"])).trim().to_string();
    assert_ne!(new_holder, holder, "the Lease is still held by the killed server");
    // the cluster DNS follows the API through the control-plane agent's load balancer: a Service
    // made after the kill resolves from a pod (kubectl exec goes through the surviving server)
    ok(&mut lab.kubectl(&["create", "service", "clusterip", "after-kill", "--tcp=80:80"]));
    let svc_ip = ok(&mut lab.kubectl(&["get", "service", "after-kill", "-o", "jsonpath={.spec.clusterIP}"]));
    let pod = live_pods(&lab).into_iter().next().map(|(n, _)| n).expect("a web pod");
    let t = Instant::now();
    loop {
        let o = run(&mut lab.kubectl(&["exec", &pod, "--", "nslookup", "after-kill.default.svc.cluster.local"]));
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        if out.contains(&format!("Address: {svc_ip}")) || out.contains(&format!("Address 1: {svc_ip}")) {
            eprintln!("a Service made after the kill resolves in the cluster DNS after {:.1}s", t.elapsed().as_secs_f64());
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "after-kill ({svc_ip}) never resolved: {out} {}", String::from_utf8_lossy(&o.stderr));
        std::thread::sleep(Duration::from_millis(500));
    }
    let fwd_log = std::fs::read_to_string(lab.dir.path().join("logs/forward.log")).unwrap_or_default();
    if leader == "server" {
        assert!(fwd_log.contains("failed over"), "the forwarder should have moved to server2:\n{fwd_log}");
    }

    // kill -9 the etcd leader: writes go on, the controllers still act
    let st = etcdctl(&lab, &["endpoint", "status", "-w", "json"]);
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap_or_else(|e| panic!("etcdctl endpoint status: {e}: {st:?}"));
    let rows = st.as_array().expect("endpoint status list");
    let etcd_leader = rows
        .iter()
        .find(|r| r["Status"]["header"]["member_id"] == r["Status"]["leader"])
        .and_then(|r| r["Endpoint"].as_str())
        .expect("an etcd leader")
        .to_string();
    let member = ["etcd1", "etcd2", "etcd3"]
        .into_iter()
        .zip(ENDPOINTS.split(','))
        .find(|(_, e)| *e == etcd_leader)
        .map(|(m, _)| m)
        .expect("leader endpoint is a lab member");
    kill9(pid_of(&lab, member));
    let t = Instant::now();
    let write_ok = loop {
        let o = run(&mut lab.kubectl(&["create", "configmap", "after-etcd-kill", "--from-literal=k=v"]));
        if o.status.success() {
            break t.elapsed();
        }
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        if err.contains("AlreadyExists") {
            break t.elapsed();
        }
        assert!(t.elapsed() < Duration::from_secs(20), "no write accepted within 20s of killing etcd leader {member}: {err}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let cm = ok(&mut lab.kubectl(&["get", "configmap", "after-etcd-kill", "-o", "jsonpath={.data.k}"]));
    assert_eq!(cm, "v");
    let key = etcdctl(&lab, &["get", "--keys-only", "/registry/configmaps/default/after-etcd-kill"]);
    assert!(String::from_utf8_lossy(&key.stdout).contains("/registry/configmaps/default/after-etcd-kill"), "{key:?}");
    ok(&mut lab.kubectl(&["scale", "deployment", "web", "--replicas", "1"]));
    let scaled = wait_pods(&lab, 1, true, Duration::from_secs(60));
    eprintln!("killed etcd leader {member}: write accepted after {:.1}s, scaled to 1 after {:.1}s", write_ok.as_secs_f64(), scaled.as_secs_f64());
    let status = ok(&mut lab.lab("status", &[]));
    assert!(status.lines().any(|l| l.starts_with(&format!("{member} ")) && l.contains("not running")), "{status}");
    assert!(status.lines().any(|l| l.starts_with(&format!("{leader} ")) && l.contains("not running")), "{status}");

    // down leaves nothing of the lab
    let t = Instant::now();
    ok(&mut lab.lab("down", &[]));
    eprintln!("lab down in {:.1}s", t.elapsed().as_secs_f64());
    assert_eq!(leftovers(&lab), Vec::<String>::new(), "lab down left these behind");
    assert!(std::net::TcpStream::connect(&api).is_err(), "the forwarder still listens on {api}");
}
