//! Benchmark: render and sync N Services x 10 endpoints (default N = 10,000; `BENCH_SERVICES=1000`).
//!
//! Run (root, needs nft and iproute2; the iptables baseline needs iptables-nft-restore):
//!     cargo bench -p dari-proxy --bench render_sync
//! Everything kernel-side happens in network namespaces the bench creates (`dpbench*`), deleted
//! at the end; the host's tables are never touched.
//!
//! Figures, each the median of `BENCH_REPEAT` (default 3) runs:
//! - render: objects -> Ruleset (pure, everything; what a full sync needs)
//! - full sync into a fresh netns (`Syncer::sync_state(.., true)`: listing + add/flush all,
//!   through netlink), with the calling thread's CPU time (kernel work in its syscalls included)
//! - full-table rewrite of the same ruleset with `nft -f` (the kube-proxy-style baseline)
//! - add 1 Service when N exist / remove 1 endpoint: `ProxyState` (re-render + plan of the
//!   changed Service only) + apply through netlink, wall and CPU time (and, for comparison,
//!   the same transactions through `nft -f`)
//! - proxy RSS: a child process holding what the proxy holds (a `ProxyState` fed the objects
//!   one by one, which are then dropped) after a full sync and one incremental sync
//!
//! `BENCH_ONLY=full` / `BENCH_ONLY=rss` stop after those parts. The machine is shared (load
//! average ~10 on 2 cores while this was written): wall times include waiting for a core.
//! - first-packet latency: TCP connect to a ClusterIP (new conntrack entry: the SYN walks the
//!   nat chains) with 10 and with N Services loaded, from a netns to a server in another netns
//! - baseline: kube-proxy iptables mode equivalent via `iptables-nft-restore` (if it works here).

#![allow(clippy::unwrap_used)]
#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use dari_proxy::sync::Syncer;
use dari_proxy::{render, NetlinkApplier, NftApply, NftCli, NodeFacts, ProxyConfig, ProxyState, Ruleset};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

fn object(i: usize) -> (Service, EndpointSlice) {
    let name = format!("svc{i}");
    let cip = format!("10.{}.{}.{}", 96 + i / 65536, (i / 256) % 256, i % 256);
    let svc = service("bench", &name, &cip, &[tcp("http", 80, 8080)]);
    let eps: Vec<String> = (0..10).map(|k| format!("10.{}.{}.{}", 128 + (i * 10 + k) / 65536, ((i * 10 + k) / 256) % 256, (i * 10 + k) % 256)).collect();
    let refs: Vec<(&str, &str, Cond)> = eps.iter().map(|e| (e.as_str(), "other-node", Cond::Ready)).collect();
    (svc, slice("bench", &name, "x", &[("http", "TCP", 8080)], &refs))
}

fn objects(n: usize) -> (Vec<Service>, Vec<EndpointSlice>) {
    (0..n).map(object).unzip()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let t = Instant::now();
    let r = f();
    (t.elapsed(), r)
}

fn sh(cmd: &str) -> bool {
    Command::new("sh").arg("-c").arg(cmd).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// CPU time of the calling thread (ns), kernel work done in its syscalls included
/// (/proc/thread-self/schedstat). The machine is shared: wall times include waiting for a core.
fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map(Duration::from_nanos)
        .unwrap_or_default()
}

fn rss_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// The kube-proxy-style baseline: replace the whole table in one `nft -f`.
fn full_rewrite_script(rs: &Ruleset) -> String {
    let mut s = String::new();
    for t in &rs.tables {
        s.push_str(&format!("add table {fam} {n}\ndelete table {fam} {n}\n", fam = t.family, n = t.name));
    }
    s.push_str(&rs.to_nft());
    s
}

/// kube-proxy iptables mode, the same Services: KUBE-SERVICES -> KUBE-SVC (statistic) -> KUBE-SEP (DNAT).
fn iptables_restore_text(services: &[Service], slices: &[EndpointSlice]) -> String {
    let mut chains = String::from("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n");
    let mut rules = String::from("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n-A KUBE-POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE\n");
    for (i, (svc, sl)) in services.iter().zip(slices).enumerate() {
        let cip = svc.spec.as_ref().and_then(|s| s.cluster_ip.clone()).unwrap_or_default();
        let svc_chain = format!("KUBE-SVC-{i:016}");
        chains.push_str(&format!(":{svc_chain} - [0:0]\n"));
        rules.push_str(&format!("-A KUBE-SERVICES -d {cip}/32 -p tcp -m tcp --dport 80 -j {svc_chain}\n"));
        rules.push_str(&format!("-A {svc_chain} ! -s 10.0.0.0/8 -d {cip}/32 -p tcp -m tcp --dport 80 -j KUBE-MARK-MASQ\n"));
        let n = sl.endpoints.len();
        for (k, ep) in sl.endpoints.iter().enumerate() {
            let sep = format!("KUBE-SEP-{i:08}{k:08}");
            let addr = &ep.addresses[0];
            chains.push_str(&format!(":{sep} - [0:0]\n"));
            if k + 1 < n {
                let p = 1.0 / (n - k) as f64;
                rules.push_str(&format!("-A {svc_chain} -m statistic --mode random --probability {p:.11} -j {sep}\n"));
            } else {
                rules.push_str(&format!("-A {svc_chain} -j {sep}\n"));
            }
            rules.push_str(&format!("-A {sep} -s {addr}/32 -j KUBE-MARK-MASQ\n"));
            rules.push_str(&format!("-A {sep} -p tcp -m tcp -j DNAT --to-destination {addr}:8080\n"));
        }
    }
    format!("{chains}{rules}COMMIT\n")
}

fn pipe(cmd: &[&str], input: &str) -> Result<(), String> {
    let mut child = Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if let Some(mut i) = child.stdin.take() {
        std::io::Write::write_all(&mut i, input.as_bytes()).map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).lines().take(3).collect::<Vec<_>>().join(" | "))
    }
}

struct Ns {
    name: String,
}

impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!("dpbench{}{tag}", std::process::id());
        assert!(sh(&format!("ip netns add {name}")), "ip netns add {name}");
        Ns { name }
    }
    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }
    fn exec(&self, cmd: &str) -> bool {
        sh(&format!("nsenter --net={} {cmd}", self.path()))
    }
    fn reset(&self) {
        self.exec("sh -c 'nft add table ip dari; nft delete table ip dari; nft add table ip6 dari; nft delete table ip6 dari'");
    }
    fn spawn<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
        let path = self.path();
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).unwrap();
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = sh(&format!("ip netns del {}", self.name));
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Child mode: what the proxy holds with N Services (its ProxyState: compact inputs and the
/// rendered fragments; the API objects are dropped once ingested, as the watch loop does), after
/// a full and an incremental sync.
fn rss_child(n: usize, path: &str) {
    let node = NodeFacts { name: "bench-node".into(), addresses: vec!["172.18.0.2".parse().unwrap()] };
    let cfg = ProxyConfig { cluster_cidrs: vec!["10.0.0.0/8".parse().unwrap()], ..ProxyConfig::default() };
    let mut st = ProxyState::new(node, cfg);
    for i in 0..n {
        let (svc, sl) = object(i);
        st.upsert_service(&svc);
        st.upsert_slice(&sl);
    }
    let after_ingest = rss_kb("VmRSS:");
    let _ = st.take_changes_for_full_sync();
    let after_render = rss_kb("VmRSS:");
    let mut s = Syncer::new(Arc::new(NetlinkApplier::in_netns(path)));
    s.sync_state(&mut st, true).unwrap();
    st.upsert_service(&service("bench", "added", "10.99.0.1", &[tcp("http", 80, 8080)]));
    st.upsert_slice(&slice("bench", "added", "x", &[("http", "TCP", 8080)], &[("10.250.0.1", "other-node", Cond::Ready)]));
    s.sync_state(&mut st, false).unwrap();
    println!("{} {} {} {}", rss_kb("VmHWM:"), rss_kb("VmRSS:"), after_render, after_ingest);
}

/// Median TCP connect time to `dst` from inside `client` (each connect is a new flow).
fn connect_latency(client: &Ns, dst: std::net::SocketAddr, count: usize) -> (Duration, Duration) {
    client
        .spawn(move || {
            let mut v = Vec::new();
            for _ in 0..count {
                let t = Instant::now();
                let c = std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(2)).expect("connect to ClusterIP");
                v.push(t.elapsed());
                drop(c);
            }
            v.sort();
            (v[v.len() / 2], v[v.len() * 99 / 100])
        })
        .join()
        .unwrap()
}

fn main() {
    let n: usize = std::env::var("BENCH_SERVICES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    if let Ok(path) = std::env::var("BENCH_RSS_CHILD") {
        rss_child(n, &path);
        return;
    }
    let repeat: usize = std::env::var("BENCH_REPEAT").ok().and_then(|v| v.parse().ok()).unwrap_or(3).max(1);
    let node = NodeFacts { name: "bench-node".into(), addresses: vec!["172.18.0.2".parse().expect("ip")] };
    let cfg = ProxyConfig { cluster_cidrs: vec!["10.0.0.0/8".parse().expect("cidr")], ..ProxyConfig::default() };
    println!("dari-proxy bench: {n} Services x 10 endpoints, median of {repeat}");
    let (services, slices) = objects(n);

    let mut t = Vec::new();
    let mut rs = None;
    for _ in 0..repeat {
        let (d, r) = time(|| render(&services, &slices, &node, &cfg));
        t.push(d);
        rs = Some(r);
    }
    let Some(rs) = rs else { return };
    println!("render:                                 {:>10}  ({} chains)", ms(median(t)), rs.chain_count());
    let (d, text) = time(|| rs.full_sync_script(&Default::default()));
    println!("full sync script generation:            {:>10}  ({} lines)", ms(d), text.lines().count());
    drop(text);

    if !nix::unistd::geteuid().is_root() || !sh("command -v nft") || !sh("command -v ip") {
        panic!("the kernel part needs root, nft (apt nftables) and ip (apt iproute2)");
    }
    if std::env::var("BENCH_ONLY").as_deref() == Ok("rss") {
        let exe = std::env::current_exe().unwrap();
        let child_ns = Ns::new("r");
        let out = Command::new(exe).env("BENCH_RSS_CHILD", child_ns.path()).env("BENCH_SERVICES", n.to_string()).output().unwrap();
        println!("rss child: {} {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        return;
    }
    let ns = Ns::new("a");
    let path = ns.path();
    let cli = Arc::new(NftCli::in_netns(&path));

    // Full sync (listing + add/flush every object), fresh namespace state each time.
    let state = || ProxyState::from_objects(&services, &slices, node.clone(), cfg.clone());
    let mut full = Vec::new();
    let mut full_cpu = Vec::new();
    for _ in 0..repeat {
        ns.reset();
        let mut st = state();
        let _ = st.ruleset();
        let nl = Arc::new(NetlinkApplier::in_netns(&path));
        let mut s = Syncer::new(nl.clone());
        let c0 = thread_cpu();
        let (d, r) = time(|| s.sync_state(&mut st, true));
        full_cpu.push(thread_cpu() - c0);
        let out = r.expect("full sync");
        full.push(d);
        let (netlink, cli) = nl.counts();
        println!("  full sync went through {}: listing + transaction {}, apply {}",
            if netlink == 1 { "netlink" } else if cli == 1 { "nft -f" } else { "?" }, ms(out.plan_time), ms(out.apply_time));
    }
    if std::env::var("BENCH_ONLY").as_deref() == Ok("full") {
        return;
    }
    println!("full sync (listing + add/flush all):    {:>10}  (this thread's CPU {}; nft's CPU not included)", ms(median(full)), ms(median(full_cpu)));

    // Full-table rewrite baseline (the same ruleset, `table {}` blocks after delete).
    let script = full_rewrite_script(&rs);
    let mut rw = Vec::new();
    for _ in 0..repeat {
        let (d, r) = time(|| cli.apply(&script));
        r.expect("rewrite");
        rw.push(d);
    }
    drop(script);
    let rewrite = median(rw);
    println!("baseline: full-table rewrite, nft -f:   {:>10}", ms(rewrite));

    // Add one Service, remove one endpoint: ProxyState (re-render + plan of what changed) +
    // apply through netlink, vs nft -f.
    let added = (
        service("bench", "added", "10.99.0.1", &[tcp("http", 80, 8080)]),
        slice("bench", "added", "x", &[("http", "TCP", 8080)], &[("10.250.0.1", "other-node", Cond::Ready)]),
    );
    let mut minus = slices[0].clone();
    minus.endpoints.pop();
    let (mut add_p, mut add_a, mut add_c, mut del_p, mut del_a, mut del_c) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut via_netlink = (0, 0);
    for _ in 0..repeat {
        ns.reset();
        let nl = Arc::new(NetlinkApplier::in_netns(&path));
        let mut st = state();
        let mut s = Syncer::new(nl.clone());
        s.sync_state(&mut st, true).expect("base");
        nl.connect().expect("netlink socket");
        let c0 = thread_cpu();
        let t0 = Instant::now();
        st.upsert_service(&added.0);
        st.upsert_slice(&added.1);
        let out = s.sync_state(&mut st, false).expect("add one");
        let total = t0.elapsed();
        add_c.push(thread_cpu() - c0);
        // The kernel really has it (the one-endpoint Service is an element of its DNAT map).
        assert!(
            sh(&format!("ip netns exec {} nft list map ip dari service-dnat-tcp-1 | grep -q '10.99.0.1 . 80 . 0 : 10.250.0.1 . 8080'", ns.name)),
            "added Service not in the kernel's DNAT map"
        );
        add_p.push(total - out.apply_time);
        add_a.push(out.apply_time);
        st.delete_service("bench", "added");
        st.delete_slice("bench", "added-x");
        s.sync_state(&mut st, false).expect("back");
        let c0 = thread_cpu();
        let t0 = Instant::now();
        st.upsert_slice(&minus);
        let out = s.sync_state(&mut st, false).expect("remove endpoint");
        let total = t0.elapsed();
        del_c.push(thread_cpu() - c0);
        del_p.push(total - out.apply_time);
        del_a.push(out.apply_time);
        st.upsert_slice(&slices[0]);
        s.sync_state(&mut st, false).expect("back");
        via_netlink = nl.counts();
    }
    println!("add 1 Service:     render+plan {:>9}  apply (netlink) {:>9}  total CPU {:>9}   vs full rewrite {}",
        ms(median(add_p)), ms(median(add_a)), ms(median(add_c)), ms(rewrite));
    println!("remove 1 endpoint: render+plan {:>9}  apply (netlink) {:>9}  total CPU {:>9}   vs full rewrite {}",
        ms(median(del_p)), ms(median(del_a)), ms(median(del_c)), ms(rewrite));
    println!("  (transactions via netlink / via nft -f in the last round: {} / {})", via_netlink.0, via_netlink.1);
    // The same incremental transactions through `nft -f`.
    {
        ns.reset();
        let mut st = state();
        let mut s = Syncer::new(cli.clone());
        s.sync_state(&mut st, true).expect("base");
        st.upsert_service(&added.0);
        st.upsert_slice(&added.1);
        let out = s.sync_state(&mut st, false).expect("add one");
        st.upsert_slice(&minus);
        let out2 = s.sync_state(&mut st, false).expect("remove endpoint");
        println!("same transactions via nft -f:  add 1 Service {:>9}, remove 1 endpoint {:>9} (apply only)", ms(out.apply_time), ms(out2.apply_time));
    }
    ns.reset();

    // Proxy RSS: a child process with only what the proxy holds.
    let exe = std::env::current_exe().unwrap();
    let child_ns = Ns::new("r");
    let out = Command::new(exe).env("BENCH_RSS_CHILD", child_ns.path()).env("BENCH_SERVICES", n.to_string()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace().filter_map(|v| v.parse::<u64>().ok());
    if let (Some(hwm), Some(now), Some(rendered), Some(ingested)) = (it.next(), it.next(), it.next(), it.next()) {
        println!("proxy RSS with {n} Services (ProxyState): after ingest {} MB, + render {} MB; after full + incremental sync {} MB; peak {} MB",
            ingested / 1024, rendered / 1024, now / 1024, hwm / 1024);
    } else {
        println!("proxy RSS child FAILED: {}", String::from_utf8_lossy(&out.stderr));
    }
    drop(child_ns);

    // First-packet latency: client netns -> ClusterIP 10.99.0.1:80 -> server netns 10.250.0.2:8080.
    let client = Ns::new("c");
    let server = Ns::new("s");
    assert!(sh(&format!("ip -n {} link add veth0 type veth peer name eth0 netns {}", client.name, server.name)));
    assert!(client.exec("ip addr add 10.250.0.1/24 dev veth0") && client.exec("ip link set veth0 up") && client.exec("ip link set lo up"));
    assert!(server.exec("ip addr add 10.250.0.2/24 dev eth0") && server.exec("ip link set eth0 up") && server.exec("ip link set lo up"));
    assert!(client.exec("ip route add default via 10.250.0.2"), "default route inside the client netns");
    let (tx, rx) = std::sync::mpsc::channel();
    let _srv = server.spawn(move || {
        let l = std::net::TcpListener::bind("0.0.0.0:8080").unwrap();
        tx.send(()).unwrap();
        for c in l.incoming() {
            drop(c);
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let probe = service("bench", "probe", "10.99.0.1", &[tcp("http", 80, 8080)]);
    let probe_slice = slice("bench", "probe", "x", &[("http", "TCP", 8080)], &[("10.250.0.2", "other-node", Cond::Ready)]);
    let dst: std::net::SocketAddr = "10.99.0.1:80".parse().unwrap();
    for count in [10, n] {
        let mut svcs: Vec<Service> = services[..count.min(n)].to_vec();
        let mut sl: Vec<EndpointSlice> = slices[..count.min(n)].to_vec();
        svcs.push(probe.clone());
        sl.push(probe_slice.clone());
        client.reset();
        let mut s = Syncer::new(Arc::new(NetlinkApplier::in_netns(client.path())));
        s.sync(render(&svcs, &sl, &node, &cfg), true).expect("load");
        let _ = connect_latency(&client, dst, 50); // warm-up
        let (p50, p99) = connect_latency(&client, dst, 1000);
        println!("first-packet latency (TCP connect via ClusterIP), {count:>6} Services: p50 {:>8.1} us  p99 {:>8.1} us",
            p50.as_secs_f64() * 1e6, p99.as_secs_f64() * 1e6);
    }
    drop(client);
    drop(server);

    // kube-proxy iptables mode equivalent.
    let ipt = iptables_restore_text(&services, &slices);
    let mut it = Vec::new();
    let mut err = None;
    for _ in 0..repeat {
        let (d, r) = time(|| pipe(&["nsenter", &format!("--net={path}"), "iptables-nft-restore"], &ipt));
        if let Err(e) = r {
            err = Some(e);
            break;
        }
        it.push(d);
    }
    match err {
        None => println!("iptables-nft-restore (kube-proxy iptables-mode rules, full): {:>10}  ({} lines)", ms(median(it)), ipt.lines().count()),
        Some(e) => println!("iptables-nft-restore baseline FAILED: {e}"),
    }
    drop(ns);
    println!("peak RSS of the bench process:  {} MB (VmHWM)", rss_kb("VmHWM:") / 1024);
}
