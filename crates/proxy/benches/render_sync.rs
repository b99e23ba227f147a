//! Benchmark: render and sync N Services x 10 endpoints (default N = 10,000; `BENCH_SERVICES=1000`).
//!
//! Run (root, needs nft; the iptables baseline needs iptables-nft-restore):
//!     cargo bench -p dari-proxy --bench render_sync
//!
//! Figures, each the median of `BENCH_REPEAT` (default 3) runs:
//! - render: objects -> Ruleset (pure)
//! - full sync through `nft -f -` into a fresh netns (kube-proxy style transaction)
//! - add 1 Service when N exist: incremental (diff) vs full-table rewrite (`nft -f` of the whole table)
//! - remove 1 endpoint: incremental vs full-table rewrite
//! - baseline: kube-proxy iptables mode equivalent via `iptables-nft-restore` (if it works here)
//! - peak RSS of this process (objects + rulesets in memory: an upper bound of the proxy's).

#![allow(clippy::unwrap_used)]
#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use dari_proxy::sync::Syncer;
use dari_proxy::{render, NftApply, NftCli, NodeFacts, ProxyConfig, Ruleset};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

fn objects(n: usize) -> (Vec<Service>, Vec<EndpointSlice>) {
    let mut services = Vec::with_capacity(n);
    let mut slices = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("svc{i}");
        let cip = format!("10.{}.{}.{}", 96 + i / 65536, (i / 256) % 256, i % 256);
        services.push(service("bench", &name, &cip, &[tcp("http", 80, 8080)]));
        let eps: Vec<String> = (0..10).map(|k| format!("10.{}.{}.{}", 128 + (i * 10 + k) / 65536, ((i * 10 + k) / 256) % 256, (i * 10 + k) % 256)).collect();
        let refs: Vec<(&str, &str, Cond)> = eps.iter().map(|e| (e.as_str(), "other-node", Cond::Ready)).collect();
        slices.push(slice("bench", &name, "x", &[("http", "TCP", 8080)], &refs));
    }
    (services, slices)
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

fn main() {
    let n: usize = std::env::var("BENCH_SERVICES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
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
    println!("render:                         {:>10.1?}  ({} chains)", median(t), rs.chain_count());
    let (d, text) = time(|| rs.full_sync_script(&Default::default()));
    println!("full sync script generation:    {:>10.1?}  ({} lines)", d, text.lines().count());

    if !nix::unistd::geteuid().is_root() || !sh("command -v nft") {
        println!("SKIPPED kernel syncs: need root and nft (apt-get install nftables)");
        return;
    }
    let ns = format!("dpbench{}", std::process::id());
    assert!(sh(&format!("ip netns add {ns}")), "ip netns add {ns}");
    let path = format!("/var/run/netns/{ns}");
    let applier = Arc::new(NftCli::in_netns(&path));
    let reset = || sh(&format!("nsenter --net={path} sh -c 'nft add table ip dari; nft delete table ip dari; nft add table ip6 dari; nft delete table ip6 dari'"));

    // Full sync (incl. listing the existing table), fresh namespace state each time.
    let mut full = Vec::new();
    for _ in 0..repeat {
        reset();
        let mut s = Syncer::new(applier.clone());
        let (d, r) = time(|| s.sync(rs.clone(), true));
        r.expect("full sync");
        full.push(d);
    }
    println!("full sync via nft -f:           {:>10.1?}", median(full));

    // Full-table rewrite baseline (the same ruleset, `table {}` blocks after delete).
    let script = full_rewrite_script(&rs);
    let mut rw = Vec::new();
    for _ in 0..repeat {
        let (d, r) = time(|| applier.apply(&script));
        r.expect("rewrite");
        rw.push(d);
    }
    let rewrite = median(rw);
    println!("full-table rewrite via nft -f:  {:>10.1?}", rewrite);

    // Add one Service, remove one endpoint: incremental vs rewrite.
    let mut plus = services.clone();
    plus.push(service("bench", "added", "10.99.0.1", &[tcp("http", 80, 8080)]));
    let mut plus_slices = slices.clone();
    plus_slices.push(slice("bench", "added", "x", &[("http", "TCP", 8080)], &[("10.250.0.1", "other-node", Cond::Ready)]));
    let mut minus_slices = slices.clone();
    minus_slices[0].endpoints.pop();
    let mut add = Vec::new();
    let mut del = Vec::new();
    let mut add_render = Vec::new();
    for _ in 0..repeat {
        reset();
        let mut s = Syncer::new(applier.clone());
        s.sync(rs.clone(), true).expect("base");
        let (dr, plus_rs) = time(|| render(&plus, &plus_slices, &node, &cfg));
        add_render.push(dr);
        let (d, r) = time(|| s.sync(plus_rs, false));
        r.expect("add one");
        add.push(d);
        s.sync(rs.clone(), false).expect("back");
        let minus_rs = render(&services, &minus_slices, &node, &cfg);
        let (d, r) = time(|| s.sync(minus_rs, false));
        r.expect("remove endpoint");
        del.push(d);
    }
    println!("add 1 Service (render):         {:>10.1?}", median(add_render));
    println!("add 1 Service (diff + nft -f):  {:>10.1?}   vs full rewrite {:.1?}", median(add), rewrite);
    println!("remove 1 endpoint (diff+nft):   {:>10.1?}   vs full rewrite {:.1?}", median(del), rewrite);
    reset();

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
        None => println!("iptables-nft-restore (kube-proxy iptables-mode rules, full): {:>10.1?}  ({} lines)", median(it), ipt.lines().count()),
        Some(e) => println!("iptables-nft-restore baseline FAILED: {e}"),
    }
    let _ = sh(&format!("ip netns del {ns}"));
    println!("peak RSS of the bench process:  {} MB (VmHWM), now {} MB", rss_kb("VmHWM:") / 1024, rss_kb("VmRSS:") / 1024);
}
