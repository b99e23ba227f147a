//! End to end (root): a 4-node `dari lab` with the node names of the ClusterIP write-up, the
//! shared seed 003 manifests applied unchanged with the real kubectl, and the traffic checked
//! from inside net-pod's own network namespace: ClusterIP spreads over the three webpods on
//! three other nodes, the server sees net-pod's IP, port 80 is refused at once, session
//! affinity pins the client, conntrack shows the DNAT, a pod reaches another node; the root
//! namespace never gets a route into the lab; `lab down` leaves the host exactly as before.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{dari, free_port, is_root as nix_is_root, netns_of, ok, run, Lab};

const NODES: &str = "myk8s-control-plane,myk8s-worker,myk8s-worker2,myk8s-worker3";
const PREFIX: &str = "de2e";

fn scenario() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    for c in [here.join("../../../shared/scenarios/seed-003-clusterip"), PathBuf::from("/work/shared/scenarios/seed-003-clusterip")] {
        if c.exists() {
            return c;
        }
    }
    panic!("../shared/scenarios/seed-003-clusterip not found")
}

fn curl_in(ns: &str, url: &str) -> Output {
    run(Command::new("ip").args(["netns", "exec", ns, "curl", "-s", "--max-time", "3", url]))
}

/// What the lab may touch on the host, restricted to this lab (other tests run labs of their own
/// concurrently): root-namespace links and routes into the lab's ranges, network namespaces,
/// mounts and processes of this lab, and the root namespace's nftables tables.
fn host_state(dir: &Path) -> Vec<String> {
    let d = dir.display().to_string();
    let mut out = Vec::new();
    let links = ok(Command::new("ip").args(["-o", "link", "show"]));
    out.extend(links.lines().filter(|l| l.contains(PREFIX)).map(|l| format!("link {l}")));
    out.extend(root_routes_into_lab().into_iter().map(|l| format!("route {l}")));
    let netns = ok(Command::new("ip").args(["netns", "list"]));
    out.extend(netns.lines().filter(|l| l.starts_with(PREFIX)).map(|l| format!("netns {l}")));
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    out.extend(mounts.lines().filter(|l| l.contains(&d) || l.contains(&format!("/{PREFIX}-"))).map(|l| format!("mount {l}")));
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&d) {
            out.push(format!("process {}: {cmd}", e.file_name().to_string_lossy()));
        }
    }
    let tables = ok(Command::new("nft").args(["list", "tables"]));
    out.extend(tables.lines().map(|l| format!("nft {l}")));
    out.sort();
    out
}

/// Routes of the root namespace into the lab's LAN or pod ranges (the network rule: none, ever).
fn root_routes_into_lab() -> Vec<String> {
    let routes = ok(Command::new("ip").args(["route", "show", "table", "all"]));
    routes.lines().filter(|l| l.contains("172.31.77.") || l.contains("10.244.")).map(str::to_string).collect()
}

#[test]
fn seed003_clusterip_across_four_nodes() {
    assert!(nix_is_root(), "the lab end-to-end test needs root (CI runs as root)");
    let lab = Lab::new("dari-e2e");
    let before = host_state(lab.dir.path());
    let port = free_port();
    let up = || {
        ok(Command::new(dari())
            .args(["lab", "up", "--nodes", NODES, "--prefix", PREFIX, "--subnet", "172.31.77.0/24", "--api-listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--dir")
            .arg(lab.dir.path()))
    };
    let started = Instant::now();
    up();
    eprintln!("lab up (4 nodes Ready) in {:.1}s", started.elapsed().as_secs_f64());

    let nodes = ok(&mut lab.kubectl(&["get", "nodes", "--no-headers"]));
    assert_eq!(nodes.lines().filter(|l| l.split_whitespace().nth(1) == Some("Ready")).count(), 4, "{nodes}");
    assert_eq!(root_routes_into_lab(), Vec::<String>::new(), "the root namespace must have no route into the lab");

    let dir = scenario();
    ok(&mut lab.kubectl(&["apply", "-f", dir.to_str().expect("utf8")]));
    ok(&mut lab.kubectl(&["wait", "--for=condition=Ready", "pod", "--all", "--timeout=180s"]));
    let pods = ok(&mut lab.kubectl(&["get", "pod", "-o", "wide"]));
    for (pod, node) in [("webpod1", "myk8s-worker"), ("webpod2", "myk8s-worker2"), ("webpod3", "myk8s-worker3"), ("net-pod", "myk8s-control-plane")] {
        assert!(pods.lines().any(|l| l.starts_with(pod) && l.contains("Running") && l.contains(node)), "{pod} not Running on {node}:\n{pods}");
    }
    // each pod's IP comes from its node's podCIDR
    for (pod, node) in [("webpod1", "myk8s-worker"), ("net-pod", "myk8s-control-plane")] {
        let ip = ok(&mut lab.kubectl(&["get", "pod", pod, "-o", "jsonpath={.status.podIP}"]));
        let cidr = ok(&mut lab.kubectl(&["get", "node", node, "-o", "jsonpath={.spec.podCIDR}"]));
        let prefix = cidr.rsplit_once('.').map(|(a, _)| a).expect("v4 cidr");
        assert!(ip.starts_with(&format!("{prefix}.")), "{pod} {ip} not in {node}'s {cidr}");
    }
    let eps = ok(&mut lab.kubectl(&["get", "endpoints", "svc-clusterip", "-o", "jsonpath={.subsets[0].addresses[*].ip}"]));
    assert_eq!(eps.split_whitespace().count(), 3, "{eps}");

    let svc = ok(&mut lab.kubectl(&["get", "svc", "svc-clusterip", "-o", "jsonpath={.spec.clusterIP}"]));
    let net_ip = ok(&mut lab.kubectl(&["get", "pod", "net-pod", "-o", "jsonpath={.status.podIP}"]));
    let ns = netns_of(&net_ip);

    // pod -> node: another node's agent endpoint answers net-pod
    let worker_ip = ok(&mut lab.kubectl(&["get", "node", "myk8s-worker", "-o", "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address}"]));
    let o = run(Command::new("ip").args(["netns", "exec", &ns, "curl", "-sk", "--max-time", "3"]).arg(format!("https://{worker_ip}:10250/healthz")));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "ok", "pod -> node {worker_ip}: {o:?}");

    // port 80 is not a Service port: refused at once, not a hang
    let t = Instant::now();
    let o = curl_in(&ns, &format!("http://{svc}/"));
    assert!(!o.status.success(), "curl {svc}:80 should fail");
    assert!(t.elapsed() < Duration::from_secs(2), "port 80 should be rejected at once, took {:?}", t.elapsed());

    // 9000 spreads over the three pods on the three workers; the server sees net-pod's own IP
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..60 {
        let o = curl_in(&ns, &format!("http://{svc}:9000/"));
        let body = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(body.contains(&format!("RemoteAddr: {net_ip}:")), "the server must see the client pod's IP:\n{body}");
        let host = body.lines().find_map(|l| l.strip_prefix("Hostname: ")).unwrap_or("none").to_string();
        *counts.entry(host).or_insert(0) += 1;
    }
    assert_eq!(counts.keys().cloned().collect::<Vec<_>>(), ["webpod1", "webpod2", "webpod3"], "{counts:?}");
    assert!(counts.values().all(|c| *c >= 8), "roughly a third each: {counts:?}");

    // conntrack on net-pod's node: client -> ClusterIP:9000, reply from a pod IP:80
    let ct = ok(Command::new(dari()).args(["lab", "exec", "--dir"]).arg(lab.dir.path()).args(["myk8s-control-plane", "--", "conntrack", "-L", "-p", "tcp", "--dport", "9000"]));
    assert!(ct.lines().any(|l| l.contains(&format!("src={net_ip}")) && l.contains(&format!("dst={svc}")) && l.contains("sport=80")), "{ct}");

    // session affinity: the patch from the write-up, the defaulted timeout, then one pod only
    ok(&mut lab.kubectl(&["patch", "svc", "svc-clusterip", "-p", r#"{"spec":{"sessionAffinity":"ClientIP"}}"#]));
    let timeout = ok(&mut lab.kubectl(&["get", "svc", "svc-clusterip", "-o", "jsonpath={.spec.sessionAffinityConfig.clientIP.timeoutSeconds}"]));
    assert_eq!(timeout, "10800");
    // the proxy applies the change asynchronously: wait until one full run of 30 lands on one pod
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let hosts: std::collections::BTreeSet<String> = (0..30)
            .map(|_| String::from_utf8_lossy(&curl_in(&ns, &format!("http://{svc}:9000/")).stdout).lines().find_map(|l| l.strip_prefix("Hostname: ").map(str::to_string)).unwrap_or_default())
            .collect();
        if hosts.len() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "session affinity never pinned the client: {hosts:?}");
    }

    // pod -> an address outside the cluster (the lab's "outside" whoami on the hub) is masqueraded
    // to the node's address; pod -> pod above kept the pod's IP
    let out = ok(&mut lab.kubectl(&["exec", "net-pod", "--", "curl", "-s", "--max-time", "3", "http://172.31.77.1/"]));
    assert!(out.contains("RemoteAddr: 172.31.77.10:"), "pod -> outside should be masqueraded to its node's IP:\n{out}");

    // seed 001 (the hard-way smoke test), unchanged, with the README's commands
    let hardway = scenario().parent().expect("scenarios dir").join("seed-001-hardway/nginx.yaml");
    ok(&mut lab.kubectl(&["apply", "-f", hardway.to_str().expect("utf8")]));
    ok(&mut lab.kubectl(&["run", "curl-tester", "--image=nginx"]));
    ok(&mut lab.kubectl(&["run", "busybox", "--image=busybox", "--command", "--", "sleep", "3600"]));
    ok(&mut lab.kubectl(&["wait", "--for=condition=Ready", "pod", "--all", "--timeout=180s"]));
    let wide = ok(&mut lab.kubectl(&["get", "pod", "-l", "run=nginx", "-o", "jsonpath={range .items[*]}{.status.podIP} {.spec.nodeName}{\"\\n\"}{end}"]));
    let replicas: Vec<(&str, &str)> = wide.lines().filter_map(|l| l.split_once(' ')).collect();
    assert_eq!(replicas.len(), 2, "{wide}");
    assert_ne!(replicas[0].1, replicas[1].1, "the two replicas should be on two nodes: {wide}");
    let tester_node = ok(&mut lab.kubectl(&["get", "pod", "curl-tester", "-o", "jsonpath={.spec.nodeName}"]));
    let other = replicas.iter().find(|(_, n)| *n != tester_node).map(|(ip, _)| *ip).expect("a replica on another node");
    let page = ok(&mut lab.kubectl(&["exec", "curl-tester", "--", "curl", "-s", &format!("http://{other}")]));
    assert!(page.contains("Welcome to nginx!"), "pod -> pod on another node:\n{page}");
    ok(&mut lab.kubectl(&["expose", "deployment", "nginx", "--port", "80"]));
    let dns = ok(&mut lab.kubectl(&["get", "svc", "-n", "kube-system", "kube-dns", "-o", "jsonpath={.spec.clusterIP} {.spec.ports[*].port}"]));
    assert!(dns.ends_with(".10 53 53 9153"), "{dns}");
    let nginx_ip = ok(&mut lab.kubectl(&["get", "svc", "nginx", "-o", "jsonpath={.spec.clusterIP}"]));
    let look = run(&mut lab.kubectl(&["exec", "busybox", "--", "nslookup", "nginx"]));
    let look = String::from_utf8_lossy(&look.stdout).into_owned();
    assert!(look.contains("nginx.default.svc.cluster.local") && look.contains(&nginx_ip), "{look}");
    let resolv = ok(&mut lab.kubectl(&["exec", "busybox", "--", "cat", "/etc/resolv.conf"]));
    assert!(resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local") && resolv.contains(&format!("nameserver {}", dns.split(' ').next().unwrap_or(""))) && resolv.contains("ndots:5"), "{resolv}");
    let page = ok(&mut lab.kubectl(&["exec", "curl-tester", "--", "curl", "-s", "http://nginx.default.svc.cluster.local"]));
    assert!(page.contains("Welcome to nginx!"), "{page}");
    let look = run(&mut lab.kubectl(&["exec", "busybox", "--", "nslookup", "kubernetes"]));
    assert!(String::from_utf8_lossy(&look.stdout).contains("Address: 10.96.0.1"), "{}", String::from_utf8_lossy(&look.stdout));

    // seed 000 multi-container: 2/2, one network namespace, nginx over the shared loopback
    let multi = scenario().parent().expect("scenarios dir").join("seed-000-multicontainer/multi-container.yaml");
    ok(&mut lab.kubectl(&["apply", "-f", multi.to_str().expect("utf8")]));
    ok(&mut lab.kubectl(&["wait", "--for=condition=Ready", "pod/multi-container", "--timeout=120s"]));
    let ready = ok(&mut lab.kubectl(&["get", "pod", "multi-container", "--no-headers"]));
    assert!(ready.contains("2/2") && ready.contains("Running"), "{ready}");
    let a = ok(&mut lab.kubectl(&["exec", "multi-container", "-c", "ubuntu", "--", "ip", "addr", "show", "eth0"]));
    let b = ok(&mut lab.kubectl(&["exec", "multi-container", "-c", "nginx", "--", "ip", "addr", "show", "eth0"]));
    let pick = |s: &str| s.lines().filter(|l| l.contains("inet ") || l.contains("link/ether")).map(str::trim).collect::<Vec<_>>().join("\n");
    assert!(!pick(&a).is_empty() && pick(&a) == pick(&b), "both containers must see the same eth0:\n{a}\n{b}");
    let page = ok(&mut lab.kubectl(&["exec", "multi-container", "-c", "ubuntu", "--", "curl", "-s", "localhost:80"]));
    assert!(page.contains("Welcome to nginx!"), "{page}");

    // seed 000 ingress: two echo servers behind ClusterIPs, one Ingress (class nginx) routed by host
    let ing = scenario().parent().expect("scenarios dir").join("seed-000-ingress");
    ok(&mut lab.kubectl(&["apply", "-f", ing.join("echo.yaml").to_str().expect("utf8")]));
    ok(&mut lab.kubectl(&["wait", "--for=condition=Ready", "pod", "--all", "--timeout=120s"]));
    for svc in ["nginxnginx1-service-clusterip", "nginx2-service-clusterip"] {
        let ip = ok(&mut lab.kubectl(&["get", "svc", svc, "-o", "jsonpath={.spec.clusterIP}"]));
        let body = ok(Command::new(dari()).args(["lab", "exec", "--dir"]).arg(lab.dir.path()).args(["myk8s-worker", "--", "curl", "-s", "--max-time", "3", &format!("http://{ip}")]));
        let want = if svc.starts_with("nginxnginx1") { "Request served by nginx1-deployment-" } else { "Request served by nginx2-deployment-" };
        assert!(body.contains(want), "{svc}: {body}");
    }
    ok(&mut lab.kubectl(&["apply", "-f", ing.join("ingress.yaml").to_str().expect("utf8")]));
    let node_ip = ok(&mut lab.kubectl(&["get", "node", "myk8s-worker2", "-o", "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address}"]));
    for (host, want) in [("a.com", "Request served by nginx1-deployment-"), ("b.com", "Request served by nginx2-deployment-")] {
        // the ingress proxies pick up the new Ingress asynchronously: poll until routed
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let o = run(Command::new(dari()).args(["lab", "exec", "--dir"]).arg(lab.dir.path()).args(["myk8s-worker", "--", "curl", "-s", "--max-time", "3", "-H", &format!("Host: {host}"), &format!("http://{node_ip}/")]));
            let body = String::from_utf8_lossy(&o.stdout).into_owned();
            if body.contains(want) {
                break;
            }
            assert!(Instant::now() < deadline, "Host: {host} never reached its backend: {body}");
        }
    }
    let addr = ok(&mut lab.kubectl(&["get", "ingress", "ingress", "-o", "jsonpath={.status.loadBalancer.ingress[*].ip}"]));
    assert!(!addr.is_empty(), "kubectl get ingress should show an ADDRESS");

    // down leaves no namespace of this lab behind
    ok(Command::new(dari()).args(["lab", "down", "--dir"]).arg(lab.dir.path()));
    let left = ok(Command::new("ip").args(["netns", "list"]));
    assert!(!left.lines().any(|l| l.starts_with(PREFIX)), "namespaces left after down:\n{left}");
    // ... and the host is as it was: links, routes, namespaces, mounts, processes, nftables
    assert_eq!(host_state(lab.dir.path()), before, "lab down must leave the host exactly as before");

    // up again on the same directory (a node restart): the pods come back — their old sandboxes
    // are gone with the namespaces, and containerd still reserves their names — and serve again
    let started = Instant::now();
    up();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let o = run(&mut lab.kubectl(&["exec", "net-pod", "--", "curl", "-s", "--max-time", "2", &format!("{svc}:9000")]));
        if String::from_utf8_lossy(&o.stdout).contains("Hostname: webpod") {
            break;
        }
        assert!(Instant::now() < deadline, "after a restart the Service never answered again: {o:?}\n{}",
            String::from_utf8_lossy(&run(&mut lab.kubectl(&["get", "pod", "-o", "wide"])).stdout));
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("restarted lab serving the ClusterIP again after {:.1}s", started.elapsed().as_secs_f64());
}
