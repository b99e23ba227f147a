//! End to end (root), once per pod network backend (`vxlan`, `host-gw`), each in its own
//! 3-node lab (own prefix, LAN, cluster CIDR and node names, so both run at once and beside
//! e2e_seed003): pod → pod across nodes by ping and a 10 MB HTTP transfer checked by size and
//! SHA-256, a capture on the client node's LAN interface proving which path carried it (UDP 8472
//! and no bare TCP with vxlan, bare TCP and no UDP 8472 with host-gw), then the server node's
//! agent and containerd killed → Node Ready=Unknown → agent restarted → Ready, and the same pod
//! (same UID and IP) still serves the same file; finally a node is deleted and the others drop
//! its route (and with vxlan its neighbour and FDB entry).
//!
//! `cargo build -p dari --bin dari && cargo test -p dari-lab --test e2e_network`

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, is_root, ok, run, Lab};

const SIZE: u64 = 10 * 1024 * 1024;

struct Case {
    backend: &'static str,
    prefix: &'static str,
    subnet: &'static str,
    cluster_cidr: &'static str,
    nodes: [&'static str; 3],
}

#[test]
fn pod_network_vxlan() {
    pod_network(&Case { backend: "vxlan", prefix: "dnvx", subnet: "172.31.78.0/24", cluster_cidr: "10.246.0.0/16", nodes: ["vx-cp", "vx-w1", "vx-w2"] });
}

#[test]
fn pod_network_host_gw() {
    pod_network(&Case { backend: "host-gw", prefix: "dnhg", subnet: "172.31.79.0/24", cluster_cidr: "10.247.0.0/16", nodes: ["hg-cp", "hg-w1", "hg-w2"] });
}

fn pods_manifest(server_node: &str, client_node: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: server, labels: {{app: server}}}}
spec:
  nodeName: {server_node}
  containers:
  - name: httpd
    image: busybox
    command: ["sh", "-c", "mkdir -p /www && dd if=/dev/urandom of=/www/big.tmp bs=1048576 count=10 2>/dev/null && mv /www/big.tmp /www/big && exec httpd -f -p 8080 -h /www"]
---
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  nodeName: {client_node}
  containers:
  - name: sh
    image: nicolaka/netshoot
    command: ["sleep", "3600"]
"#
    )
}

/// A packet capture in a node's namespace, started and known to be listening.
struct Capture {
    child: Child,
    // kept open: tcpdump reports on stderr when it stops
    _stderr: BufReader<std::process::ChildStderr>,
    what: String,
}

impl Capture {
    fn start(netns: &str, ifname: &str, filter: &str) -> Capture {
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .args(["--", "tcpdump", "-i", ifname, "-n", "-l", "-q", filter])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump is needed (apt-get install tcpdump)");
        // tcpdump says "listening on IF" once the capture runs: wait for that line, not a sleep
        let mut err = BufReader::new(child.stderr.take().expect("stderr"));
        let mut line = String::new();
        loop {
            line.clear();
            let n = err.read_line(&mut line).expect("tcpdump stderr");
            assert!(n > 0, "tcpdump -i {ifname} '{filter}' in {netns} exited before listening");
            if line.contains("listening on") {
                break;
            }
        }
        Capture { child, _stderr: err, what: format!("{filter} on {ifname} in {netns}") }
    }

    /// Stops the capture; the payload bytes of the packets it saw (the sum of tcpdump's lengths,
    /// not a packet count: GSO/GRO turn 10 MB into a few hundred large packets).
    fn stop(self) -> u64 {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGINT);
        let out = self.child.wait_with_output().expect("tcpdump output");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // `-q` lines end in the payload length: "UDP, length 1398" or "tcp 1448"
        let bytes: u64 = text.lines().filter_map(|l| l.split_whitespace().last().and_then(|n| n.parse::<u64>().ok())).sum();
        let first: Vec<&str> = text.lines().take(3).collect();
        eprintln!("capture {}: {} packets, {bytes} bytes; first: {first:#?}", self.what, text.lines().filter(|l| !l.trim().is_empty()).count());
        bytes
    }
}

fn ready_status(lab: &Lab, node: &str) -> String {
    let o = run(&mut lab.kubectl(&["get", "node", node, "-o", r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#]));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < timeout, "{what}: not after {timeout:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    t.elapsed()
}

/// Client → server: `curl` of /big (busybox wget segfaults here), then its size and SHA-256 as the client computed them.
fn fetch(lab: &Lab, server_ip: &str) -> (u64, String) {
    let out = ok(&mut lab.kubectl(&[
        "exec",
        "client",
        "--",
        "sh",
        "-c",
        &format!("rm -f /tmp/big && curl -sS --max-time 30 -o /tmp/big http://{server_ip}:8080/big && wc -c < /tmp/big && sha256sum /tmp/big"),
    ]));
    let mut l = out.lines();
    let size = l.next().and_then(|s| s.trim().parse().ok()).unwrap_or_else(|| panic!("no size in {out:?}"));
    let sum = l.next().and_then(|s| s.split_whitespace().next()).unwrap_or_else(|| panic!("no sum in {out:?}")).to_string();
    (size, sum)
}

fn pod_network(c: &Case) {
    assert!(is_root(), "the lab end-to-end test needs root (CI runs as root)");
    let lab = Lab::new(&format!("dari-{}", c.prefix));
    let [_, w1, w2] = c.nodes;
    let port = free_port();
    let started = Instant::now();
    ok(lab
        .lab("up", &["--nodes", &c.nodes.join(","), "--backend", c.backend, "--prefix", c.prefix, "--subnet", c.subnet, "--cluster-cidr", c.cluster_cidr])
        .arg("--api-listen")
        .arg(format!("127.0.0.1:{port}")));
    eprintln!("[{}] lab up (3 nodes Ready) in {:.1}s", c.backend, started.elapsed().as_secs_f64());

    // the agent programmed the backend it was told to
    let w2_ns = format!("{}-{w2}", c.prefix);
    let links = ok(Command::new("ip").args(["-n", &w2_ns, "-d", "link", "show"]));
    let routes = ok(Command::new("ip").args(["-n", &w2_ns, "route", "show", "proto", "218"]));
    eprintln!("[{}] {w2} routes (proto 218):\n{routes}", c.backend);
    assert_eq!(routes.lines().count(), 2, "one route per other node: {routes}");
    if c.backend == "vxlan" {
        assert!(links.contains("vxlan id 1") && links.contains("dstport 8472") && links.contains("nolearning"), "{links}");
        assert!(routes.lines().all(|l| l.contains("dev dari.1") && l.contains("onlink")), "{routes}");
        let fdb = ok(Command::new("bridge").args(["-n", &w2_ns, "fdb", "show", "dev", "dari.1"]));
        assert_eq!(fdb.lines().filter(|l| l.contains("dst 172.31.")).count(), 2, "{fdb}");
        let mac = ok(&mut lab.kubectl(&["get", "node", w1, "-o", r#"jsonpath={.metadata.annotations.dari\.dev/vxlan-mac}"#]));
        assert!(fdb.contains(&mac) && !mac.is_empty(), "{w1}'s published VTEP MAC {mac:?} in {w2}'s fdb:\n{fdb}");
    } else {
        assert!(!links.contains("vxlan"), "{links}");
        assert!(routes.lines().all(|l| l.contains("dev eth0")), "{routes}");
    }

    ok(lab.kubectl(&["apply", "-f", "-"]).stdin(std::fs::File::open(write_tmp(&lab, "pods.yaml", &pods_manifest(w1, w2))).expect("manifest")));
    ok(&mut lab.kubectl(&["wait", "--for=condition=Ready", "pod", "--all", "--timeout=180s"]));
    let server_ip = ok(&mut lab.kubectl(&["get", "pod", "server", "-o", "jsonpath={.status.podIP}"]));
    let server_uid = ok(&mut lab.kubectl(&["get", "pod", "server", "-o", "jsonpath={.metadata.uid}"]));
    let cidr_prefix = c.cluster_cidr.split('.').take(2).collect::<Vec<_>>().join(".");
    assert!(server_ip.starts_with(&format!("{cidr_prefix}.")), "server IP {server_ip} not in {}", c.cluster_cidr);
    wait_until("server wrote /www/big", Duration::from_secs(60), || run(&mut lab.kubectl(&["exec", "server", "--", "test", "-f", "/www/big"])).status.success());
    let want_sum = ok(&mut lab.kubectl(&["exec", "server", "--", "sha256sum", "/www/big"])).split_whitespace().next().unwrap_or_default().to_string();

    // ping across nodes
    let ping = ok(&mut lab.kubectl(&["exec", "client", "--", "ping", "-c", "3", "-W", "2", &server_ip]));
    assert!(ping.contains("3 packets received"), "{ping}");

    // 10 MB across nodes, with captures on the client node's LAN side
    let vx = Capture::start(&w2_ns, "eth0", "udp port 8472");
    let bare = Capture::start(&w2_ns, "eth0", "tcp port 8080");
    let t = Instant::now();
    let (size, sum) = fetch(&lab, &server_ip);
    let secs = t.elapsed().as_secs_f64();
    let (n_vx, n_bare) = (vx.stop(), bare.stop());
    eprintln!("[{}] 10 MB pod -> pod across nodes in {secs:.2}s (kubectl exec included)", c.backend);
    assert_eq!(size, SIZE, "bytes received");
    assert_eq!(sum, want_sum, "sha256 of what the client received vs the server's file");
    if c.backend == "vxlan" {
        assert!(n_vx > SIZE / 4, "10 MB over vxlan: megabytes of UDP 8472 on eth0 (GSO makes tcpdump lengths undercount), saw {n_vx} bytes");
        assert_eq!(n_bare, 0, "with vxlan no bare pod TCP should cross eth0");
    } else {
        assert!(n_bare > SIZE / 4, "10 MB over host-gw: megabytes of bare TCP on eth0 (GSO makes tcpdump lengths undercount), saw {n_bare} bytes");
        assert_eq!(n_vx, 0, "host-gw must not use UDP 8472");
    }

    // the server node's agent (and its containerd) dies: the node goes NotReady (Ready=Unknown
    // once its Lease is older than the node monitor grace period), pods keep running
    ok(&mut lab.lab("kill-agent", &[w1]));
    let d = wait_until(&format!("{w1} Ready=Unknown/False after its agent was killed"), Duration::from_secs(120), || matches!(ready_status(&lab, w1).as_str(), "Unknown" | "False"));
    eprintln!("[{}] {w1} NotReady {:.1}s after the kill", c.backend, d.as_secs_f64());
    ok(&mut lab.lab("start-agent", &[w1]));
    let d = wait_until(&format!("{w1} Ready again after the agent restarted"), Duration::from_secs(90), || ready_status(&lab, w1) == "True");
    eprintln!("[{}] {w1} Ready {:.1}s after the restart", c.backend, d.as_secs_f64());
    assert_eq!(ok(&mut lab.kubectl(&["get", "pod", "server", "-o", "jsonpath={.metadata.uid}"])), server_uid, "the same pod, not a new one");
    assert_eq!(ok(&mut lab.kubectl(&["get", "pod", "server", "-o", "jsonpath={.status.podIP}"])), server_ip, "the same pod IP");
    let (size, sum) = fetch(&lab, &server_ip);
    assert_eq!((size, sum), (SIZE, want_sum), "the server pod still answers with the same file after the restart");

    // a node leaves (agent stopped, Node deleted): the other nodes drop its route (and with
    // vxlan its neighbour and FDB entry)
    let w2_cidr = ok(&mut lab.kubectl(&["get", "node", w2, "-o", "jsonpath={.spec.podCIDR}"]));
    let w1_ns = format!("{}-{w1}", c.prefix);
    assert!(ok(Command::new("ip").args(["-n", &w1_ns, "route", "show", "proto", "218"])).contains(&w2_cidr), "{w1} has a route to {w2}'s {w2_cidr}");
    ok(&mut lab.lab("kill-agent", &[w2]));
    ok(&mut lab.kubectl(&["delete", "node", w2]));
    wait_until(&format!("{w1} drops the route to the deleted {w2}"), Duration::from_secs(30), || {
        !ok(Command::new("ip").args(["-n", &w1_ns, "route", "show", "proto", "218"])).contains(&w2_cidr)
    });
    if c.backend == "vxlan" {
        let vtep = w2_cidr.split('/').next().unwrap_or_default().to_string();
        let neigh = ok(Command::new("ip").args(["-n", &w1_ns, "neigh", "show", "dev", "dari.1"]));
        assert!(!neigh.lines().any(|l| l.starts_with(&format!("{vtep} "))), "{w2}'s VTEP neighbour left on {w1}:\n{neigh}");
        let fdb = ok(Command::new("bridge").args(["-n", &w1_ns, "fdb", "show", "dev", "dari.1"]));
        assert_eq!(fdb.lines().filter(|l| l.contains(" dst ")).count(), 1, "only the control plane's FDB entry is left on {w1}:\n{fdb}");
    }

    // down leaves no namespace of this lab behind
    ok(&mut lab.lab("down", &[]));
    let left = ok(Command::new("ip").args(["netns", "list"]));
    assert!(!left.lines().any(|l| l.starts_with(&format!("{}-", c.prefix))), "namespaces left after down:\n{left}");
}

fn write_tmp(lab: &Lab, name: &str, text: &str) -> std::path::PathBuf {
    let p = lab.dir.path().join(name);
    std::fs::write(&p, text).expect("write manifest");
    p
}
