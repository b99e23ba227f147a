//! Root-only: the real topology in network namespaces. Each test uses its own namespace prefix
//! and tears down on drop, so tests run in parallel and leave nothing behind.
//!
//! `cargo test -p dari-lab --test netns` (as root; needs iproute2 and iputils-ping).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use dari_lab::forward::{serve, Dialer};
use dari_lab::net::{self, in_netns, netns_path, RealNet};
use dari_lab::plan::{plan, LabOpts, LabPlan};

fn need(tool: &str) {
    let ok = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().map(|o| o.status.success()).unwrap_or(false);
    assert!(ok, "{tool} is needed for this test (apt-get install iproute2 iputils-ping util-linux)");
    assert!(nix::unistd::Uid::effective().is_root(), "this test needs root (network namespaces)");
}

struct Lab {
    plan: LabPlan,
}

impl Lab {
    fn new(tag: &str, nodes: &[&str]) -> Lab {
        need("ip");
        let prefix = format!("t{}{tag}", std::process::id() % 100000);
        let opts = LabOpts { prefix, ..LabOpts::default() };
        let nodes: Vec<String> = nodes.iter().map(|s| s.to_string()).collect();
        let plan = plan(&nodes, &opts).unwrap();
        let mut n = RealNet::new().unwrap();
        net::apply(&plan, &mut n).unwrap();
        Lab { plan }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Ok(mut n) = RealNet::new() {
            let _ = net::teardown(&self.plan, &mut n);
        }
    }
}

fn sh(args: &[&str]) -> (bool, String) {
    let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr))
}

fn in_node(lab: &Lab, node: &str, args: &[&str]) -> (bool, String) {
    let ns = format!("--net={}", netns_path(&lab.plan.node(node).unwrap().netns).display());
    let mut v = vec!["nsenter", ns.as_str(), "--"];
    v.extend_from_slice(args);
    sh(&v)
}

fn root_links() -> BTreeSet<String> {
    let (_, out) = sh(&["ip", "-o", "link", "show"]);
    out.lines().filter_map(|l| l.split(": ").nth(1)).map(|s| s.split('@').next().unwrap_or(s).to_string()).collect()
}

fn mounts_with(s: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().filter(|l| l.contains(s)).map(String::from).collect()
}

#[test]
fn apply_and_teardown_leave_the_host_unchanged() {
    need("ip");
    let links_before = root_links();
    let routes_before = sh(&["ip", "-4", "route", "show"]).1;
    let fwd_before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let lab = Lab::new("a", &["cp", "w1"]);
    let prefix = lab.plan.opts.prefix.clone();
    // The lab is there ...
    let ns = net::list_netns();
    for want in lab.plan.namespaces() {
        assert!(ns.contains(&want), "{want} missing from {ns:?}");
    }
    let (ok, out) = in_node(&lab, "w1", &["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
    assert!(ok && out.contains("172.31.0.11/24"), "{out}");
    let (_, out) = in_node(&lab, "w1", &["ip", "link", "show", "eth0"]);
    assert!(out.contains("mtu 1400"), "{out}");
    let (_, out) = in_node(&lab, "w1", &["ip", "route", "show", "default"]);
    assert!(out.contains("via 172.31.0.1"), "{out}");
    let (_, out) = in_node(&lab, "w1", &["cat", "/proc/sys/net/ipv4/ip_forward"]);
    assert_eq!(out.trim(), "1", "ip_forward inside the node");
    assert_eq!(std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(), fwd_before, "the host's ip_forward is untouched");
    let (_, out) = in_node(&lab, "w1", &["ip", "-o", "link", "show", "lo"]);
    assert!(out.contains("UP"), "lo up: {out}");
    // ... and the root namespace got nothing: no link, no route into the lab.
    assert_eq!(root_links(), links_before, "root namespace links changed");
    let routes = sh(&["ip", "-4", "route", "show"]).1;
    assert!(!routes.contains("172.31.0."), "root got a lab route: {routes}");
    assert_eq!(routes, routes_before);
    let hub_links = RealNet::new().unwrap().link_names(&lab.plan.hub.netns).unwrap();
    assert!(hub_links.contains(&"lan0".to_string()) && hub_links.contains(&"vcp".to_string()), "{hub_links:?}");
    let inodes: Vec<u64> = lab.plan.namespaces().iter().filter_map(|n| dari_lab::procs::netns_inode(&netns_path(n))).collect();
    assert_eq!(inodes.len(), 3);

    // Teardown, twice.
    let plan = lab.plan.clone();
    drop(lab);
    let mut n = RealNet::new().unwrap();
    assert!(net::teardown(&plan, &mut n).unwrap().is_empty(), "second teardown finds nothing");
    drop(n);
    assert!(net::list_netns().iter().all(|n| !n.starts_with(&format!("{prefix}-"))), "{:?}", net::list_netns());
    assert!(mounts_with(&format!("{prefix}-")).is_empty(), "{:?}", mounts_with(&prefix));
    assert_eq!(root_links(), links_before);
    // No process is left in any of the lab's namespaces.
    let left: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|p: &i32| dari_lab::procs::netns_inode(&PathBuf::from(format!("/proc/{p}/ns/net"))).is_some_and(|i| inodes.contains(&i)))
        .collect();
    assert!(left.is_empty(), "processes still in lab namespaces: {left:?}");
}

#[test]
fn teardown_after_a_crash_mid_apply() {
    need("ip");
    let prefix = format!("t{}c", std::process::id() % 100000);
    let opts = LabOpts { prefix: prefix.clone(), ..LabOpts::default() };
    let p = plan(&["x1".to_string(), "x2".to_string()], &opts).unwrap();
    let mut n = RealNet::new().unwrap();
    // Only the first half of the steps ran, then "the process died".
    let steps = p.steps();
    for s in &steps[..steps.len() / 2] {
        net::apply_step(&mut n, s).unwrap();
    }
    drop(n);
    let mut n = RealNet::new().unwrap();
    let removed = net::teardown(&p, &mut n).unwrap();
    assert!(!removed.is_empty());
    assert!(net::list_netns().iter().all(|x| !x.starts_with(&format!("{prefix}-"))));
    // And apply works again from scratch.
    net::apply(&p, &mut n).unwrap();
    net::teardown(&p, &mut n).unwrap();
}

#[test]
fn nodes_reach_each_other_over_the_hub() {
    need("ping");
    let lab = Lab::new("p", &["n1", "n2"]);
    let (ok, out) = in_node(&lab, "n1", &["ping", "-c", "1", "-W", "2", "172.31.0.11"]);
    assert!(ok, "n1 -> n2: {out}");
    let (ok, out) = in_node(&lab, "n2", &["ping", "-c", "1", "-W", "2", "172.31.0.1"]);
    assert!(ok, "n2 -> hub: {out}");
    // MTU 1400 on the LAN: 1372 bytes of ICMP payload + 28 of headers fit unfragmented, 1373 do not.
    let (ok, out) = in_node(&lab, "n1", &["ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1372", "172.31.0.11"]);
    assert!(ok, "1400-byte packet: {out}");
    let (ok, _) = in_node(&lab, "n1", &["ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1373", "172.31.0.11"]);
    assert!(!ok, "a 1401-byte packet must not pass with DF set");
}

#[test]
fn forwarder_reaches_a_server_inside_a_node() {
    need("ip");
    let lab = Lab::new("f", &["fw"]);
    let node_ns = netns_path(&lab.plan.node("fw").unwrap().netns);
    // A TCP server listening on the node IP, inside the node namespace.
    let listener = in_netns(&node_ns, || std::net::TcpListener::bind("172.31.0.10:0")).unwrap().unwrap();
    let upstream = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { break };
            let mut buf = [0u8; 5];
            if s.read_exact(&mut buf).is_ok() {
                let _ = s.write_all(format!("echo:{}:{}", String::from_utf8_lossy(&buf), s.peer_addr().unwrap()).as_bytes());
            }
        }
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(forward_through(node_ns, upstream));
    drop(rt);
    drop(lab);
}

async fn forward_through(node_ns: PathBuf, upstream: std::net::SocketAddr) {
    let dialer = Arc::new(Dialer::new(&node_ns).unwrap());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front = l.local_addr().unwrap();
    tokio::spawn(serve(l, dialer, upstream));
    for _ in 0..3 {
        let got = tokio::task::spawn_blocking(move || {
            let mut c = std::net::TcpStream::connect(front).unwrap();
            c.write_all(b"hello").unwrap();
            let mut out = String::new();
            c.read_to_string(&mut out).unwrap();
            out
        })
        .await
        .unwrap();
        // The server saw a connection from inside the lab (its own node IP), not from the host.
        assert!(got.starts_with("echo:hello:172.31.0.10:"), "{got}");
    }
}
