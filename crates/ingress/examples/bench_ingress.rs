//! The dari ingress proxy with a synthetic route table, for benchmarks:
//! `bench_ingress LISTEN RULES UPSTREAM...` (e.g. `127.0.0.1:18080 2000 127.0.0.1:18081 127.0.0.1:18082`).
//! Host `a.com` routes `/` to a Service whose endpoints are the upstreams; RULES-1 more Ingresses
//! (`h{i}.example.com`, each with `/` and `/api/v{i}`) route to the same Service.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use dari_ingress::proxy::{ProxyOptions, ProxyServer};
use dari_ingress::{build, IngressConfig};
use serde_json::json;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let listen: SocketAddr = args.first().map(String::as_str).unwrap_or("127.0.0.1:18080").parse()?;
    let rules: usize = args.get(1).map(String::as_str).unwrap_or("1").parse()?;
    let ups: Vec<SocketAddr> = args.iter().skip(2).map(|a| a.parse()).collect::<Result<_, _>>()?;
    let svc = serde_json::from_value(json!({"metadata": {"name": "up", "namespace": "default"},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}))?;
    let slices: Vec<k8s_openapi::api::discovery::v1::EndpointSlice> = ups
        .iter()
        .enumerate()
        .map(|(i, a)| {
            serde_json::from_value(json!({"metadata": {"name": format!("up-{i}"), "namespace": "default",
                "labels": {"kubernetes.io/service-name": "up"}}, "addressType": "IPv4",
                "ports": [{"name": "http", "port": a.port()}],
                "endpoints": [{"addresses": [a.ip().to_string()], "conditions": {"ready": true}}]}))
        })
        .collect::<Result<_, _>>()?;
    let mk = |name: String, host: String, paths: Vec<String>| -> serde_json::Result<k8s_openapi::api::networking::v1::Ingress> {
        let paths: Vec<_> = paths
            .iter()
            .map(|p| json!({"path": p, "pathType": "Prefix", "backend": {"service": {"name": "up", "port": {"number": 80}}}}))
            .collect();
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"},
            "spec": {"ingressClassName": "dari", "rules": [{"host": host, "http": {"paths": paths}}]}}))
    };
    let mut ings = vec![mk("a".into(), "a.com".into(), vec!["/".into()])?];
    for i in 1..rules {
        ings.push(mk(format!("r{i}"), format!("h{i}.example.com"), vec!["/".into(), format!("/api/v{i}")])?);
    }
    let t0 = std::time::Instant::now();
    let table = build(&ings, &[svc], &slices, &[], &[], &IngressConfig::default());
    eprintln!("built {} routes from {} ingresses in {:?}", table.route_count(), ings.len(), t0.elapsed());
    // Proxy worker threads (nginx worker_processes): BENCH_WORKERS, default 2. With
    // BENCH_WORKERS=0 the proxy runs on a multi-thread runtime of BENCH_THREADS (default 2) threads.
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let workers = env("BENCH_WORKERS", 2);
    let rt = if workers > 0 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(env("BENCH_THREADS", 2)).enable_all().build()?
    };
    rt.block_on(async move {
        let shared = Arc::new(ArcSwap::from_pointee(table));
        // BENCH_H1_FAST=0: hyper only (no HTTP/1.1 fast path), for comparison.
        let h1_fast_path = env("BENCH_H1_FAST", 1) != 0;
        let opts = ProxyOptions { http: vec![listen], https: vec![], workers, h1_fast_path, ..ProxyOptions::default() };
        let server = ProxyServer::bind(shared, &opts).await?;
        eprintln!("listening on {:?}", server.http_addrs());
        server.run().await;
        anyhow::Ok(())
    })
}
