//! Serves dari's cluster DNS from a static file of Kubernetes objects, with no API server: for benchmarks
//! and manual testing with dig.
//!
//! `cargo run --release -p dari-dns --example serve -- OBJECTS.json [DNS_ADDR] [HTTP_ADDR] [UPSTREAM]`
//! OBJECTS.json: a JSON array (or a `{"items": [...]}` list) of Services, EndpointSlices and Pods.

use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use dari_dns::config::DnsConfig;
use dari_dns::http::HttpServer;
use dari_dns::server::{DnsServer, DnsState};
use dari_dns::ClusterIndex;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        bail!("usage: serve OBJECTS.json [DNS_ADDR] [HTTP_ADDR] [UPSTREAM]");
    };
    let dns_addr: SocketAddr = args.get(2).map_or("127.0.0.1:5353", String::as_str).parse()?;
    let http_addr: SocketAddr = args.get(3).map_or("127.0.0.1:0", String::as_str).parse()?;
    let upstreams: Vec<SocketAddr> = args.get(4).map(|u| u.parse()).transpose()?.into_iter().collect();
    let rss_start = rss_kib();
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let items = match v {
        serde_json::Value::Array(a) => a,
        serde_json::Value::Object(mut o) => match o.remove("items") {
            Some(serde_json::Value::Array(a)) => a,
            _ => bail!("{path}: no items"),
        },
        _ => bail!("{path}: not a list"),
    };
    let (mut svcs, mut slices, mut pods) = (Vec::<Service>::new(), Vec::<EndpointSlice>::new(), Vec::<Pod>::new());
    for item in items {
        match item["kind"].as_str() {
            Some("Service") => svcs.push(serde_json::from_value(item)?),
            Some("EndpointSlice") => slices.push(serde_json::from_value(item)?),
            Some("Pod") => pods.push(serde_json::from_value(item)?),
            other => bail!("unexpected kind {other:?}"),
        }
    }
    let index = ClusterIndex::build(&svcs, &slices, &pods);
    let (ns, ne) = (index.service_count(), index.endpoint_count());
    // what a long-running server keeps: the index, not the parsed objects
    drop((svcs, slices, pods, text));
    let state = DnsState::new(&DnsConfig::default(), upstreams)?;
    state.set_index(index);
    state.set_synced(true);
    let dns = DnsServer::bind(dns_addr, state.clone()).await?;
    let http = HttpServer::bind(http_addr, state.clone()).await?;
    println!(
        "dari-dns listening on {} (udp+tcp), http {}; {ns} services, {ne} endpoints; rss {} KiB (at start {} KiB)",
        dns.local_addr(),
        http.local_addr(),
        rss_kib(),
        rss_start
    );
    tokio::select! {
        r = dns.run() => r?,
        r = http.run() => r?,
    }
    Ok(())
}
