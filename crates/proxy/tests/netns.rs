//! Root tests in network namespaces the test creates (CI runs as root; apt: nftables, conntrack,
//! iproute2, util-linux). They fail with a clear message when not root or a tool is missing.
//!
//! Topology of `seed003_in_netns` (names carry the test's pid; everything is deleted on drop):
//!
//! ```text
//!  client (10.10.0.20-29) ─┐
//!  pod1 10.10.0.11 :80 ────┤ br0 10.10.0.1/24  [node netns: nft table ip dari]  eth-n2 172.18.0.2 (default route)
//!  pod2 10.10.0.12 :80 ────┤                                                      │
//!  pod3 10.10.0.13 :80 ────┘                                      node2 netns  172.18.0.3
//! ```
//! Servers are threads of this test that `setns` into a pod netns and answer
//! `Hostname: podN\nRemoteAddr: IP:PORT\n` (like traefik/whoami).

#![allow(clippy::unwrap_used)]
mod common;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use dari_proxy::sync::{SyncKind, Syncer};
use dari_proxy::{render, NftApply, NftCli, NodeFacts, ProxyConfig, Ruleset};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

fn require_root_and_tools() {
    assert!(nix::unistd::geteuid().is_root(), "tests/netns.rs needs root (network namespaces, nftables)");
    for tool in ["ip", "nft", "nsenter", "conntrack"] {
        let ok = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success());
        assert!(ok, "tool `{tool}` not found: apt-get install iproute2 nftables util-linux conntrack");
    }
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap_or_else(|e| panic!("spawn `{cmd}`: {e}"));
    assert!(out.status.success(), "`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named netns, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(role: &str) -> Netns {
        let name = format!("dp{}-{role}", std::process::id());
        sh(&format!("ip netns add {name}"));
        sh(&format!("ip -n {name} link set lo up"));
        Netns { name }
    }
    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }
    fn exec(&self, cmd: &str) -> String {
        sh(&format!("nsenter --net={} {cmd}", self.path()))
    }
    /// Runs `f` on a thread that lives in this netns.
    fn spawn<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
        let path = self.path();
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Starts a whoami-like server on 0.0.0.0:80 inside `ns`. Returns once it listens.
fn whoami(ns: &Netns, hostname: &'static str) {
    let (tx, rx) = std::sync::mpsc::channel();
    ns.spawn(move || {
        let l = TcpListener::bind("0.0.0.0:80").expect("bind :80 in pod netns");
        let _ = tx.send(());
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let peer = c.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            let _ = std::io::Write::write_all(&mut c, format!("Hostname: {hostname}\nRemoteAddr: {peer}\n").as_bytes());
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("server did not start");
}

#[derive(Debug)]
#[allow(dead_code)] // fields are read through Debug in failure messages
enum Reply {
    Ok { host: String, remote: String },
    Refused(Duration),
    Other(String),
}

/// Connects from `src` (or any) to `dst`, reads the whoami reply. Runs in the caller's netns.
fn request(src: Option<IpAddr>, dst: SocketAddr) -> Reply {
    let start = Instant::now();
    let sock = match src {
        Some(ip) => {
            // std has no bind-before-connect; use nix sockets.
            use nix::sys::socket::*;
            let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::empty(), None).expect("socket");
            let local = SockaddrIn::from(SocketAddr::new(ip, 0).to_string().parse::<std::net::SocketAddrV4>().expect("v4"));
            bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &local).expect("bind source");
            let remote = SockaddrIn::from(dst.to_string().parse::<std::net::SocketAddrV4>().expect("v4"));
            match connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &remote) {
                Ok(()) => Ok(TcpStream::from(fd)),
                Err(e) => Err(std::io::Error::from(e)),
            }
        }
        None => TcpStream::connect_timeout(&dst, Duration::from_secs(3)),
    };
    match sock {
        Ok(mut s) => {
            let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
            let mut buf = String::new();
            if let Err(e) = s.read_to_string(&mut buf) {
                return Reply::Other(format!("read: {e}"));
            }
            let field = |k: &str| buf.lines().find_map(|l| l.strip_prefix(k)).unwrap_or("").trim().to_string();
            Reply::Ok { host: field("Hostname:"), remote: field("RemoteAddr:") }
        }
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Reply::Refused(start.elapsed()),
        Err(e) => Reply::Other(format!("{e} after {:?}", start.elapsed())),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

struct Lab {
    node: Netns,
    node2: Netns,
    client: Netns,
    pods: Vec<Netns>,
}

fn build_lab() -> Lab {
    let node = Netns::new("node");
    let node2 = Netns::new("node2");
    let client = Netns::new("client");
    node.exec("sysctl -qw net.ipv4.ip_forward=1");
    node.exec("sysctl -qw net.bridge.bridge-nf-call-iptables=1");
    sh(&format!("ip -n {} link add br0 type bridge", node.name));
    sh(&format!("ip -n {} addr add 10.10.0.1/24 dev br0", node.name));
    sh(&format!("ip -n {} link set br0 up", node.name));
    let attach = |ns: &Netns, idx: usize, addrs: &[&str]| {
        let host_if = format!("veth{idx}");
        sh(&format!("ip -n {} link add {host_if} type veth peer name eth0 netns {}", node.name, ns.name));
        sh(&format!("ip -n {} link set {host_if} master br0 up", node.name));
        // As the CNI bridge plugin's hairpinMode: br_netfilter bridges a DNATed frame whose new
        // destination is on the same bridge, so pod -> own Service -> itself leaves by the port
        // it came in on.
        sh(&format!("ip -n {} link set {host_if} type bridge_slave hairpin on", node.name));
        for a in addrs {
            sh(&format!("ip -n {} addr add {a}/24 dev eth0", ns.name));
        }
        sh(&format!("ip -n {} link set eth0 up", ns.name));
        sh(&format!("ip -n {} route add default via 10.10.0.1", ns.name));
    };
    let mut pods = Vec::new();
    for i in 1..=3 {
        let p = Netns::new(&format!("pod{i}"));
        attach(&p, i, &[&format!("10.10.0.1{i}")]);
        pods.push(p);
    }
    let client_ips: Vec<String> = (20..30).map(|i| format!("10.10.0.{i}")).collect();
    attach(&client, 9, &client_ips.iter().map(String::as_str).collect::<Vec<_>>());
    // node2 <-> node over a point-to-point "underlay"; node2 knows nothing about pods.
    sh(&format!("ip -n {} link add eth-n2 type veth peer name eth0 netns {}", node.name, node2.name));
    sh(&format!("ip -n {} addr add 172.18.0.2/24 dev eth-n2", node.name));
    sh(&format!("ip -n {} link set eth-n2 up", node.name));
    sh(&format!("ip -n {} addr add 172.18.0.3/24 dev eth0", node2.name));
    sh(&format!("ip -n {} link set eth0 up", node2.name));
    // Like a real node, the node has a default route (to node2, a namespace of this test): the
    // routing decision for a not-DNATed ClusterIP packet must succeed before the filter hooks
    // can reject it.
    sh(&format!("ip -n {} route add default via 172.18.0.3", node.name));
    whoami(&pods[0], "webpod1");
    whoami(&pods[1], "webpod2");
    whoami(&pods[2], "webpod3");
    Lab { node, node2, client, pods }
}

fn node_facts() -> NodeFacts {
    NodeFacts { name: "myk8s-control-plane".into(), addresses: vec![ip("172.18.0.2")] }
}

fn proxy_cfg() -> ProxyConfig {
    ProxyConfig { cluster_cidrs: vec!["10.10.0.0/16".parse().expect("cidr")], ..ProxyConfig::default() }
}

fn webpods_slice(name: &str, pods: &[&str]) -> EndpointSlice {
    let eps: Vec<(&str, &str, Cond)> = pods.iter().map(|p| (*p, "myk8s-worker", Cond::Ready)).collect();
    slice("default", name, "x", &[("svc-webport", "TCP", 80)], &eps)
}

fn objects(affinity: bool, pods: &[&str]) -> (Vec<Service>, Vec<EndpointSlice>) {
    let seed = service("default", "svc-clusterip", "10.200.1.10", &[tcp("svc-webport", 9000, 80)]);
    let pinned = with_affinity(service("default", "svc-pinned", "10.200.1.11", &[tcp("svc-webport", 9000, 80)]), Some(10800));
    let seed = if affinity { with_affinity(seed, None) } else { seed };
    let empty = service("default", "svc-empty", "10.200.1.12", &[tcp("http", 80, 80)]);
    let np = with_type(service("default", "svc-np", "10.200.1.13", &[tcp("svc-webport", 9000, 80)]), "NodePort", &[30090]);
    (
        vec![seed, pinned, empty, np],
        vec![webpods_slice("svc-clusterip", pods), webpods_slice("svc-pinned", pods), webpods_slice("svc-np", pods)],
    )
}

fn rendered(affinity: bool, pods: &[&str]) -> Ruleset {
    let (s, e) = objects(affinity, pods);
    render(&s, &e, &node_facts(), &proxy_cfg())
}

/// Runs `n` requests from the client netns; returns replies.
fn from_ns(ns: &Netns, n: usize, src: Option<IpAddr>, dst: SocketAddr) -> Vec<Reply> {
    ns.spawn(move || (0..n).map(|_| request(src, dst)).collect()).join().expect("client thread")
}

fn hosts(replies: &[Reply]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in replies {
        match r {
            Reply::Ok { host, .. } => *m.entry(host.clone()).or_insert(0) += 1,
            other => panic!("request failed: {other:?}"),
        }
    }
    m
}

#[test]
fn seed003_in_netns() {
    require_root_and_tools();
    let lab = build_lab();
    let applier: Arc<dyn NftApply> = Arc::new(NftCli::in_netns(lab.node.path()));
    let mut syncer = Syncer::new(applier);
    let pod_ips = ["10.10.0.11", "10.10.0.12", "10.10.0.13"];
    let out = syncer.sync(rendered(false, &pod_ips), false).expect("first sync");
    assert_eq!(out.kind, SyncKind::Full);
    let svc: SocketAddr = "10.200.1.10:9000".parse().expect("addr");

    // Port 9000 balanced across the three pods, client IP kept.
    let replies = from_ns(&lab.client, 1000, None, svc);
    for r in &replies {
        if let Reply::Ok { remote, .. } = r {
            assert!(remote.starts_with("10.10.0.2"), "pod saw {remote}, not the client pod IP");
        }
    }
    let counts = hosts(&replies);
    eprintln!("balance over 1000: {counts:?}");
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (h, c) in &counts {
        assert!((250..=420).contains(c), "{h}: {c} of 1000 outside 25%..42%");
    }

    // Port 80 of the ClusterIP: refused at once. Service without endpoints: refused at once.
    for dst in ["10.200.1.10:80", "10.200.1.12:80"] {
        let r = from_ns(&lab.client, 1, None, dst.parse().expect("addr"));
        match &r[0] {
            Reply::Refused(t) => assert!(*t < Duration::from_millis(500), "{dst} refused only after {t:?}"),
            other => panic!("{dst}: expected connection refused, got {other:?}"),
        }
    }

    // conntrack shows client -> ClusterIP:9000, reply from pod:80.
    let ct = lab.node.exec("conntrack -L -p tcp --orig-dst 10.200.1.10 --dport 9000");
    eprintln!("conntrack (first lines):\n{}", ct.lines().take(3).collect::<Vec<_>>().join("\n"));
    assert!(
        ct.lines().any(|l| l.contains("src=10.10.0.20 dst=10.200.1.10") && l.contains("dport=9000") && l.contains("sport=80 ")
            && pod_ips.iter().any(|p| l.contains(&format!("src={p} dst=10.10.0.20")))),
        "no DNAT entry in conntrack:\n{ct}"
    );

    // Affinity (already-configured Service): 100 of 100 from one client reach one pod;
    // ten clients spread over more than one pod.
    let pinned: SocketAddr = "10.200.1.11:9000".parse().expect("addr");
    let counts = hosts(&from_ns(&lab.client, 100, Some(ip("10.10.0.20")), pinned));
    assert_eq!(counts.len(), 1, "affinity broken: {counts:?}");
    let mut firsts = BTreeMap::new();
    for i in 21..30 {
        let c = hosts(&from_ns(&lab.client, 5, Some(ip(&format!("10.10.0.{i}"))), pinned));
        assert_eq!(c.len(), 1, "client .{i} not pinned: {c:?}");
        *firsts.entry(c.keys().next().cloned().unwrap_or_default()).or_insert(0) += 1;
    }
    assert!(firsts.len() > 1, "all new clients went to one pod: {firsts:?}");

    // Patch the seed Service to ClientIP (incremental sync), then 100/100 to one pod.
    let out = syncer.sync(rendered(true, &pod_ips), false).expect("affinity sync");
    assert_eq!(out.kind, SyncKind::Incremental);
    let counts = hosts(&from_ns(&lab.client, 100, None, svc));
    assert_eq!(counts.len(), 1, "after patch, affinity broken: {counts:?}");

    // NodePort from another node: reachable, and the pod sees the node's address (masqueraded).
    let replies = from_ns(&lab.node2, 30, None, "172.18.0.2:30090".parse().expect("addr"));
    for r in &replies {
        match r {
            Reply::Ok { remote, .. } => assert!(remote.starts_with("10.10.0.1:"), "NodePort not masqueraded: {remote}"),
            other => panic!("NodePort from node2: {other:?}"),
        }
    }
    assert!(hosts(&replies).len() > 1, "NodePort not balanced");

    // Hairpin: pod1 -> its own Service -> itself works (masqueraded to the bridge IP).
    let replies = from_ns(&lab.pods[0], 40, None, svc.to_string().replace("10.200.1.10", "10.200.1.13").parse().expect("addr"));
    let mut selfs = 0;
    for r in &replies {
        match r {
            Reply::Ok { host, remote } if host == "webpod1" => {
                selfs += 1;
                assert!(remote.starts_with("10.10.0.1:"), "hairpin not masqueraded: {remote}");
            }
            Reply::Ok { remote, .. } => assert!(remote.starts_with("10.10.0.11:"), "pod->service lost source: {remote}"),
            other => panic!("hairpin: {other:?}"),
        }
    }
    assert!(selfs > 0, "no request of 40 landed on pod1 itself");

    // Remove an endpoint (incremental): no more traffic to it.
    let out = syncer.sync(rendered(true, &pod_ips[..2]), false).expect("remove endpoint");
    assert_eq!(out.kind, SyncKind::Incremental);
    let counts = hosts(&from_ns(&lab.client, 60, Some(ip("10.10.0.25")), "10.200.1.13:9000".parse().expect("addr")));
    assert!(!counts.contains_key("webpod3"), "removed endpoint still used: {counts:?}");

    // Other tables are never touched; removing everything empties ours.
    lab.node.exec("nft add table ip other");
    let empty = render::<Service, EndpointSlice>(&[], &[], &node_facts(), &proxy_cfg());
    syncer.sync(empty, false).expect("empty sync");
    let listing = lab.node.exec("nft list ruleset");
    assert!(listing.contains("table ip other"), "foreign table touched");
    assert!(!listing.contains("svc-default"), "service chains left behind:\n{listing}");
    drop(lab.client);
}

/// Normalized JSON listing of `ip dari`: chain names, rules per chain (in order), set elements (sorted).
fn normalized(ns: &Netns) -> BTreeMap<String, Vec<String>> {
    let text = ns.exec("nft -j list table ip dari");
    let v: serde_json::Value = serde_json::from_str(&text).expect("nft -j output");
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for item in v["nftables"].as_array().expect("array") {
        if let Some(c) = item.get("chain") {
            out.entry(format!("chain {}", c["name"])).or_default();
        } else if let Some(r) = item.get("rule") {
            out.entry(format!("chain {}", r["chain"])).or_default().push(r["expr"].to_string());
        } else if let Some(s) = item.get("set").or_else(|| item.get("map")) {
            let mut elems: Vec<String> =
                s.get("elem").and_then(|e| e.as_array()).map(|a| a.iter().map(|e| e.to_string()).collect()).unwrap_or_default();
            elems.sort();
            let mut def = s.clone();
            if let Some(o) = def.as_object_mut() {
                o.remove("elem");
                o.remove("handle");
            }
            elems.insert(0, def.to_string());
            out.insert(format!("set {}", s["name"]), elems);
        }
    }
    out
}

/// A chain of incremental syncs leaves the kernel exactly as a fresh full load would.
#[test]
fn incremental_equals_full_in_kernel() {
    require_root_and_tools();
    let a = Netns::new("inc");
    let b = Netns::new("full");
    let mut inc = Syncer::new(Arc::new(NftCli::in_netns(a.path())));
    let steps: Vec<Ruleset> = vec![
        rendered(false, &["10.10.0.11", "10.10.0.12", "10.10.0.13"]),
        rendered(true, &["10.10.0.11", "10.10.0.12", "10.10.0.13"]),
        rendered(true, &["10.10.0.11", "10.10.0.14"]),
        rendered(false, &[]),
        rendered(false, &["10.10.0.15"]),
    ];
    for (i, rs) in steps.into_iter().enumerate() {
        inc.sync(rs.clone(), false).unwrap_or_else(|e| panic!("step {i}: {e}"));
        let mut full = Syncer::new(Arc::new(NftCli::in_netns(b.path())));
        b.exec("nft add table ip dari");
        b.exec("nft delete table ip dari");
        full.sync(rs, true).unwrap_or_else(|e| panic!("full {i}: {e}"));
        assert_eq!(normalized(&a), normalized(&b), "step {i}: incremental state differs from full load");
    }
    // A forced full resync over drifted state repairs it (stale chain deleted, rules restored).
    a.exec("nft add chain ip dari drift");
    a.exec("nft flush chain ip dari services");
    let rs = inc.last_applied().cloned().expect("applied");
    inc.sync(rs, true).expect("resync");
    assert_eq!(normalized(&a), normalized(&b), "full resync did not repair drift");
}

/// Every golden file is valid nft 1.0.6 input.
#[test]
fn nft_accepts_golden_files() {
    require_root_and_tools();
    let ns = Netns::new("golden");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("golden dir") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("nft") {
            continue;
        }
        // Transaction goldens (diff-, full-sync-) need their "before" state: the netns tests cover them.
        if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("diff-") || n.starts_with("full-sync-")) {
            continue;
        }
        ns.exec("sh -c 'nft add table ip dari; nft delete table ip dari; nft add table ip6 dari; nft delete table ip6 dari'");
        let out = Command::new("nsenter").arg(format!("--net={}", ns.path())).args(["nft", "-f"]).arg(&path).output().expect("nft");
        assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
        n += 1;
    }
    assert!(n >= 8, "only {n} golden files checked");
}
