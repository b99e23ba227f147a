//! API server benchmarks against the real `dari` binary (release build recommended), on SQLite and
//! on etcd (a one-member Debian etcd on loopback) in one run:
//!
//!     cargo bench -p dari --bench apiserver
//!     DARI_BENCH_DATASTORES=sqlite cargo bench -p dari --bench apiserver   # one backend only
//!     DARI_BENCH_API_ONLY=1 cargo bench -p dari --bench apiserver          # without controllers
//!
//! - idle RSS with 1,000 pods stored, RSS with 10,000;
//! - p50/p99 of creating 10,000 pods (16 connections), of GET of one pod, and of LIST of 10,000 pods;
//! - 100 concurrent watchers each receiving 1,000 updates: delivery latency p50/p99.
//!
//! Absolute numbers on a shared 2-core machine are noise; compare the backends within one run.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn create_pods(server: &support::Server, from: usize, to: usize, conns: usize) -> Vec<f64> {
    let lat = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for k in 0..conns {
        let mut c = server.client().await;
        let lat = lat.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = from + k;
            while i < to {
                let t = Instant::now();
                let (code, body) = c.request("POST", "/api/v1/namespaces/default/pods", Some(&support::pod(&format!("p{i}")))).await;
                assert_eq!(code, 201, "{body}");
                lat.lock().expect("lock").push(t.elapsed().as_secs_f64() * 1e3);
                i += conns;
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let v = lat.lock().expect("lock").clone();
    v
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        let which = std::env::var("DARI_BENCH_DATASTORES").unwrap_or_else(|_| "sqlite,etcd".into());
        let mut rows = Vec::new();
        for ds in which.split(',') {
            rows.push((ds.to_string(), run(ds).await));
        }
        println!("\n| | {} |", rows.iter().map(|(d, _)| d.as_str()).collect::<Vec<_>>().join(" | "));
        println!("|---|{}", "---|".repeat(rows.len()));
        for (i, label) in LABELS.iter().enumerate() {
            println!("| {label} | {} |", rows.iter().map(|(_, r)| r[i].clone()).collect::<Vec<_>>().join(" | "));
        }
    });
}

const LABELS: [&str; 7] = [
    "idle RSS, 1,000 pods",
    "RSS, 10,000 pods",
    "create 10,000 pods (16 conns) p50 / p99",
    "GET one pod p50 / p99",
    "LIST 10,000 pods p50 / p99",
    "watch delivery (100 watchers x 1,000 updates) p50 / p99",
    "creates/s",
];

async fn run(datastore: &str) -> Vec<String> {
    {
        // DARI_BENCH_API_ONLY=1 measures the API server without the in-process controllers and scheduler
        let api_only = std::env::var("DARI_BENCH_API_ONLY").is_ok_and(|v| v == "1");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut flags: Vec<String> = Vec::new();
        if api_only {
            flags.push("--no-controllers".into());
        }
        let _etcd = match datastore {
            "sqlite" => None,
            "etcd" => {
                let etcd = dari_store::testing::EtcdCluster::start(1).await.expect("etcd starts (apt etcd-server)");
                flags.extend(["--datastore".into(), "etcd".into(), "--etcd-servers".into(), etcd.endpoints().join(",")]);
                Some(etcd)
            }
            other => panic!("DARI_BENCH_DATASTORES: unknown datastore {other:?} (sqlite, etcd)"),
        };
        let flag_refs: Vec<&str> = flags.iter().map(String::as_str).collect();
        let server = support::Server::start_with(dir.path(), &flag_refs).await;
        println!("dari server pid {} on {} ({}, {datastore})", server.pid(), server.addr, if api_only { "API only" } else { "with controllers and scheduler" });
        let mut out = Vec::new();

        let mut first = create_pods(&server, 0, 1000, 16).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        println!("idle RSS with 1,000 pods: {:.1} MB (goal <= 50 MB)", server.rss_kib() as f64 / 1024.0);
        out.push(format!("{:.1} MB", server.rss_kib() as f64 / 1024.0));

        let started = Instant::now();
        let mut rest = create_pods(&server, 1000, 10_000, 16).await;
        let total = started.elapsed();
        rest.append(&mut first);
        println!(
            "create 10,000 pods (16 conns): p50 {:.2} ms, p99 {:.2} ms, {:.0} creates/s",
            pct(&mut rest.clone(), 0.5),
            pct(&mut rest, 0.99),
            9000.0 / total.as_secs_f64()
        );
        let creates = format!("{:.2} / {:.2} ms", pct(&mut rest.clone(), 0.5), pct(&mut rest, 0.99));
        let rate = format!("{:.0}", 9000.0 / total.as_secs_f64());
        tokio::time::sleep(Duration::from_secs(2)).await;
        println!("RSS with 10,000 pods: {:.1} MB", server.rss_kib() as f64 / 1024.0);
        out.push(format!("{:.1} MB", server.rss_kib() as f64 / 1024.0));
        out.push(creates);

        let mut c = server.client().await;
        let mut gets = Vec::new();
        for i in 0..2000usize {
            let t = Instant::now();
            let (code, _) = c.raw("GET", &format!("/api/v1/namespaces/default/pods/p{}", (i * 7919) % 10_000), None, "application/json").await;
            assert_eq!(code, 200);
            gets.push(t.elapsed().as_secs_f64() * 1e3);
        }
        println!("GET one pod: p50 {:.2} ms, p99 {:.2} ms", pct(&mut gets.clone(), 0.5), pct(&mut gets, 0.99));
        out.push(format!("{:.2} / {:.2} ms", pct(&mut gets.clone(), 0.5), pct(&mut gets, 0.99)));
        let mut lists = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let (code, bytes) = c.raw("GET", "/api/v1/namespaces/default/pods", None, "application/json").await;
            assert_eq!(code, 200);
            assert!(bytes.len() > 10_000 * 100);
            lists.push(t.elapsed().as_secs_f64() * 1e3);
        }
        println!("LIST 10,000 pods: p50 {:.1} ms, p99 {:.1} ms", pct(&mut lists.clone(), 0.5), pct(&mut lists, 0.99));
        out.push(format!("{:.0} / {:.0} ms", pct(&mut lists.clone(), 0.5), pct(&mut lists, 0.99)));

        // 100 watchers x 1,000 updates
        let (code, body) = c.request("POST", "/api/v1/namespaces/default/configmaps", Some(&support::configmap("hot", 0))).await;
        assert_eq!(code, 201, "{body}");
        let rv = body["metadata"]["resourceVersion"].as_str().expect("rv").to_string();
        let sent: Arc<Mutex<HashMap<usize, Instant>>> = Arc::default();
        let mut watchers = Vec::new();
        for _ in 0..100 {
            let mut wc = server.client().await;
            let body = wc.stream(&format!("/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv}&fieldSelector=metadata.name%3Dhot")).await;
            let sent = sent.clone();
            watchers.push(tokio::spawn(async move {
                let mut body = body;
                let mut buf = Vec::new();
                let mut lat = Vec::with_capacity(1000);
                while lat.len() < 1000 {
                    let Some(Ok(frame)) = body.frame().await else { break };
                    let Ok(data) = frame.into_data() else { continue };
                    buf.extend_from_slice(&data);
                    while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=nl).collect();
                        let ev: serde_json::Value = serde_json::from_slice(&line).expect("event json");
                        let i: usize = ev["object"]["data"]["i"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
                        if let Some(t) = sent.lock().expect("lock").get(&i) {
                            lat.push(t.elapsed().as_secs_f64() * 1e3);
                        }
                    }
                }
                lat
            }));
        }
        for i in 1..=1000usize {
            sent.lock().expect("lock").insert(i, Instant::now());
            let patch = serde_json::json!({"data": {"i": i.to_string()}});
            let (code, _) = c.raw("PATCH", "/api/v1/namespaces/default/configmaps/hot", Some(serde_json::to_vec(&patch).expect("json")), "application/merge-patch+json").await;
            assert_eq!(code, 200);
        }
        let mut all = Vec::new();
        for w in watchers {
            let l = tokio::time::timeout(Duration::from_secs(120), w).await.expect("watchers finish").expect("watcher");
            assert_eq!(l.len(), 1000, "a watcher missed events");
            all.extend(l);
        }
        println!("100 watchers x 1,000 updates: delivery p50 {:.2} ms, p99 {:.2} ms ({} deliveries)", pct(&mut all.clone(), 0.5), pct(&mut all, 0.99), all.len());
        out.push(format!("{:.2} / {:.2} ms", pct(&mut all.clone(), 0.5), pct(&mut all, 0.99)));
        out.push(rate);
        out
    }
}
