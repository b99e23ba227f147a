//! API server benchmarks against the real `dari` binary (release build recommended):
//!
//!     cargo bench -p dari --bench apiserver
//!
//! - idle RSS with 1,000 pods stored;
//! - p50/p99 of creating 10,000 pods (16 connections) and of LIST of 10,000 pods;
//! - 100 concurrent watchers each receiving 1,000 updates: delivery latency p50/p99.
//!
//! Absolute numbers on a shared 2-core machine are noise; compare runs on one machine.

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
        // DARI_BENCH_API_ONLY=1 measures the API server without the in-process controllers and scheduler
        let api_only = std::env::var("DARI_BENCH_API_ONLY").is_ok_and(|v| v == "1");
        let dir = tempfile::tempdir().expect("tempdir");
        let server = support::Server::start_with(dir.path(), if api_only { &["--no-controllers"] } else { &[] }).await;
        println!("dari server pid {} on {} ({})", server.pid(), server.addr, if api_only { "API only" } else { "with controllers and scheduler" });

        let mut first = create_pods(&server, 0, 1000, 16).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        println!("idle RSS with 1,000 pods: {:.1} MB (goal <= 50 MB)", server.rss_kib() as f64 / 1024.0);

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
        tokio::time::sleep(Duration::from_secs(2)).await;
        println!("RSS with 10,000 pods: {:.1} MB", server.rss_kib() as f64 / 1024.0);

        let mut c = server.client().await;
        let mut lists = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let (code, bytes) = c.raw("GET", "/api/v1/namespaces/default/pods", None, "application/json").await;
            assert_eq!(code, 200);
            assert!(bytes.len() > 10_000 * 100);
            lists.push(t.elapsed().as_secs_f64() * 1e3);
        }
        println!("LIST 10,000 pods: p50 {:.1} ms, p99 {:.1} ms", pct(&mut lists.clone(), 0.5), pct(&mut lists, 0.99));

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
    });
}
