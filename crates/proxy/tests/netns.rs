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
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

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
    normalized_table(ns, "ip")
}

/// [`normalized`] for the table of `family` (`ip`, `ip6`).
fn normalized_table(ns: &Netns, family: &str) -> BTreeMap<String, Vec<String>> {
    let text = ns.exec(&format!("nft -j list table {family} dari"));
    let v: serde_json::Value = serde_json::from_str(&text).expect("nft -j output");
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for item in v["nftables"].as_array().expect("array") {
        if let Some(c) = item.get("chain") {
            let mut def = c.clone();
            if let Some(o) = def.as_object_mut() {
                o.remove("handle");
            }
            out.entry(format!("chain {}", c["name"])).or_default().insert(0, def.to_string());
        } else if let Some(r) = item.get("rule") {
            let comment = r.get("comment").map(|c| format!(" comment {c}")).unwrap_or_default();
            out.entry(format!("chain {}", r["chain"])).or_default().push(format!("{}{comment}", r["expr"]));
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

/// Syncs sent as netlink batches (the first, full one included) leave the kernel exactly as
/// `nft -f` of the full ruleset does (same `nft -j list` output: chains, rules, comments, sets
/// and their elements), and they really went through netlink.
#[test]
fn netlink_incremental_equals_nft_full_load() {
    use dari_proxy::NetlinkApplier;
    require_root_and_tools();
    let a = Netns::new("nla");
    let b = Netns::new("nlb");
    let objs = |pods: &[&str], udp_pods: &[&str], extra: bool| -> Ruleset {
        let seed = service("default", "svc-clusterip", "10.200.1.10", &[tcp("svc-webport", 9000, 80)]);
        let empty = service("default", "svc-empty", "10.200.1.12", &[tcp("http", 80, 80)]);
        let np = with_type(service("default", "svc-np", "10.200.1.13", &[tcp("svc-webport", 9000, 80)]), "NodePort", &[30090]);
        let dns = service("default", "dns", "10.200.1.14", &[("dns", "UDP", 53, IntOrString::Int(5353))]);
        // Affinity (dynamic sets, lookups, updates) and a Local NodePort (fib, comments).
        let aff = with_affinity(service("default", "svc-aff", "10.200.1.15", &[tcp("svc-webport", 9000, 80)]), Some(60));
        let local = with_policies(
            with_type(service("default", "svc-local", "10.200.1.16", &[tcp("svc-webport", 9000, 80)]), "NodePort", &[30091]),
            "Cluster",
            "Local",
        );
        // IPv6: a NodePort on the shared DNAT maps (ip6 keys and values, nodeport map).
        let v6 = with_type(service("default", "v6", "fd00:200::10", &[tcp("http", 80, 8080)]), "NodePort", &[30060]);
        let mut svcs = vec![seed, empty, np, dns, aff, local, v6];
        let udp: Vec<(&str, &str, Cond)> = udp_pods.iter().map(|p| (*p, "myk8s-worker", Cond::Ready)).collect();
        let mut slices = vec![
            webpods_slice("svc-clusterip", pods),
            webpods_slice("svc-np", pods),
            webpods_slice("svc-aff", pods),
            webpods_slice("svc-local", pods),
            slice("default", "dns", "x", &[("dns", "UDP", 5353)], &udp),
            slice("default", "v6", "x", &[("http", "TCP", 8080)], &[("fd10::1:2", "myk8s-worker", Cond::Ready), ("fd10::2:2", "n", Cond::Ready)]),
        ];
        if extra {
            svcs.push(service("default", "added", "10.200.1.99", &[tcp("http", 80, 8080)]));
            slices.push(slice("default", "added", "x", &[("http", "TCP", 8080)], &[("10.10.0.50", "n", Cond::Ready)]));
        }
        render(&svcs, &slices, &node_facts(), &proxy_cfg())
    };
    let applier = Arc::new(NetlinkApplier::in_netns(a.path()));
    let mut inc = Syncer::new(applier.clone());
    let steps: Vec<Ruleset> = vec![
        objs(&["10.10.0.11", "10.10.0.12", "10.10.0.13"], &["10.10.0.11"], false),
        objs(&["10.10.0.11", "10.10.0.12", "10.10.0.13"], &["10.10.0.11"], true),
        objs(&["10.10.0.11", "10.10.0.13"], &["10.10.0.11", "10.10.0.12"], true),
        objs(&[], &[], false),
        objs(&["10.10.0.15"], &["10.10.0.16"], true),
    ];
    for (i, rs) in steps.into_iter().enumerate() {
        let out = inc.sync(rs.clone(), false).unwrap_or_else(|e| panic!("step {i}: {e}"));
        assert_eq!(out.kind, if i == 0 { SyncKind::Full } else { SyncKind::Incremental }, "step {i}");
        b.exec("nft add table ip dari");
        b.exec("nft delete table ip dari");
        b.exec("nft add table ip6 dari");
        b.exec("nft delete table ip6 dari");
        let mut full = Syncer::new(Arc::new(NftCli::in_netns(b.path())));
        full.sync(rs, true).unwrap_or_else(|e| panic!("full {i}: {e}"));
        assert_eq!(normalized(&a), normalized(&b), "step {i}: netlink-applied state differs from nft -f");
        let six = normalized_table(&a, "ip6");
        assert!(six.contains_key("set \"service-dnat-tcp-2\"") && six.contains_key("set \"nodeport-dnat-tcp-2\""), "step {i}: {six:?}");
        assert_eq!(six, normalized_table(&b, "ip6"), "step {i}: netlink-applied ip6 table differs from nft -f");
    }
    let (netlink, cli) = applier.counts();
    assert_eq!((netlink, cli), (5, 0), "every step, the full one too, went through netlink");
    // A rejected batch changes nothing and is reported: deleting a chain still in use.
    let before = normalized(&a);
    let t = dari_proxy::nft::TableRef { family: dari_proxy::Family::Ip, name: "dari".into() };
    let bad = dari_proxy::Transaction {
        ops: vec![
            dari_proxy::Op::AddChain(t.clone(), "fresh".into(), None),
            dari_proxy::Op::DeleteChain(t, "reject-chain".into()),
        ],
    };
    let err = applier.apply_tx(&bad).expect_err("deleting a referenced chain must fail");
    assert!(err.to_string().contains("busy"), "{err}");
    assert_eq!(normalized(&a), before, "a failed batch must leave nothing behind");
}

/// The kernel accepts `plan`'s deletion order (elements before chains, users of a re-created
/// affinity set rewritten) and ends where a fresh load of the new state is.
#[test]
fn kernel_accepts_plan_deleting_service_and_recreating_sets() {
    require_root_and_tools();
    let a = Netns::new("pla");
    let b = Netns::new("plb");
    let (s, e) = (
        service("default", "svc-clusterip", "10.200.1.10", &[tcp("svc-webport", 9000, 80)]),
        webpods_slice("svc-clusterip", &["10.10.0.11", "10.10.0.12"]),
    );
    let gone = with_affinity(service("default", "gone", "10.200.1.70", &[tcp("http", 80, 80)]), Some(60));
    let gone_eps = slice("default", "gone", "x", &[("http", "TCP", 80)], &[("10.10.7.7", "n", Cond::Ready)]);
    let before = render(&[with_affinity(s.clone(), Some(100)), gone], &[e.clone(), gone_eps], &node_facts(), &proxy_cfg());
    let after = render(&[with_affinity(s, Some(200))], &[e], &node_facts(), &proxy_cfg());
    let cli = NftCli::in_netns(a.path());
    cli.apply(&before.full_sync_script(&Default::default())).expect("load before");
    let tx = dari_proxy::plan(&before, &after);
    cli.apply(&tx.to_string()).unwrap_or_else(|e| panic!("kernel refused the plan: {e}\n{tx}"));
    NftCli::in_netns(b.path()).apply(&after.full_sync_script(&Default::default())).expect("load after");
    assert_eq!(normalized(&a), normalized(&b));
}

/// A UDP endpoint that goes away: the Syncer reports it and the conntrack cleanup deletes the
/// client -> ClusterIP flow it answered (otherwise the client keeps sending into a black hole).
#[test]
fn removed_udp_endpoint_conntrack_entries_are_deleted() {
    use dari_proxy::sync::{ConntrackCli, ConntrackFlush};
    use dari_proxy::NetlinkApplier;
    require_root_and_tools();
    let node = Netns::new("ctn");
    let pod = Netns::new("ctp");
    sh(&format!("ip -n {} link add veth0 type veth peer name eth0 netns {}", node.name, pod.name));
    node.exec("ip addr add 10.10.0.1/24 dev veth0");
    node.exec("ip link set veth0 up");
    pod.exec("ip addr add 10.10.0.11/24 dev eth0");
    pod.exec("ip link set eth0 up");
    // A route for the ClusterIP range inside the node netns (the test's own namespace).
    node.exec("ip route add 10.200.0.0/16 via 10.10.0.11");
    let (tx, rx) = std::sync::mpsc::channel();
    pod.spawn(move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:5353").expect("bind udp");
        let _ = tx.send(());
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("udp server");
    let svc = service("kube-system", "dns", "10.200.1.14", &[("dns", "UDP", 53, IntOrString::Int(5353))]);
    let eps = |addrs: &[&str]| {
        let e: Vec<(&str, &str, Cond)> = addrs.iter().map(|a| (*a, "n", Cond::Ready)).collect();
        slice("kube-system", "dns", "x", &[("dns", "UDP", 5353)], &e)
    };
    let mut syncer = Syncer::new(Arc::new(NetlinkApplier::in_netns(node.path())));
    let with = render(std::slice::from_ref(&svc), &[eps(&["10.10.0.11"])], &node_facts(), &proxy_cfg());
    syncer.sync(with, false).expect("full sync");
    let reply = node
        .spawn(|| {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("client socket");
            s.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
            s.send_to(b"ping", "10.200.1.14:53").expect("send");
            let mut buf = [0u8; 16];
            s.recv_from(&mut buf).map(|(n, _)| buf[..n].to_vec())
        })
        .join()
        .expect("client thread");
    assert_eq!(reply.expect("reply through the ClusterIP"), b"ping");
    let listed = || node.exec("conntrack -L -p udp --orig-dst 10.200.1.14");
    assert!(listed().contains("src=10.10.0.11"), "no DNATed UDP entry:\n{}", listed());
    // The endpoint goes away (another one comes): reported as stale, cleaned up.
    let without = render(std::slice::from_ref(&svc), &[eps(&["10.10.0.12"])], &node_facts(), &proxy_cfg());
    let out = syncer.sync(without, false).expect("incremental sync");
    assert_eq!(out.kind, SyncKind::Incremental);
    assert_eq!(out.stale_udp_endpoints, vec![(ip("10.10.0.11"), 5353)]);
    let ct = ConntrackCli { netns: Some(node.path().into()) };
    for (addr, port) in out.stale_udp_endpoints {
        ct.flush_udp_endpoint(addr, port).expect("conntrack -D");
    }
    assert!(!listed().contains("src=10.10.0.11"), "stale entry left:\n{}", listed());
}
