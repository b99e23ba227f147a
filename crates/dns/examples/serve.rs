//! Serves dari's cluster DNS from a static file of Kubernetes objects, with no API server: for benchmarks
//! and manual testing with dig.
//!
//! `cargo run --release -p dari-dns --example serve -- OBJECTS.json [DNS_ADDR] [HTTP_ADDR] [UPSTREAM]`
//! OBJECTS.json: a JSON array of Services, EndpointSlices and Pods. Like the controller, it keeps only
//! their summaries and the index, so the RSS it prints is the server's steady state.

use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use dari_dns::config::DnsConfig;
use dari_dns::http::HttpServer;
use dari_dns::server::{DnsServer, DnsState};
use dari_dns::ClusterIndex;
use dari_dns::index::{PodInfo, ServiceInfo, SliceInfo};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The summaries read from the objects file (kept for the process's life, as the controller keeps them).
#[derive(Default)]
struct Infos {
    services: Vec<ServiceInfo>,
    slices: Vec<SliceInfo>,
    pods: Vec<PodInfo>,
    error: Option<String>,
}

impl<'de> serde::de::Visitor<'de> for &mut Infos {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array of Services, EndpointSlices and Pods")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        while let Some(item) = seq.next_element::<serde_json::Value>()? {
            let kind = item["kind"].as_str().map(str::to_string);
            let res = match kind.as_deref() {
                Some("Service") => serde_json::from_value::<Service>(item)
                    .map(|s| self.services.extend(ServiceInfo::from_service(&s))),
                Some("EndpointSlice") => serde_json::from_value::<EndpointSlice>(item)
                    .map(|s| self.slices.extend(SliceInfo::from_slice(&s))),
                Some("Pod") => serde_json::from_value::<Pod>(item).map(|p| self.pods.extend(PodInfo::from_pod(&p))),
                other => {
                    self.error = Some(format!("unexpected kind {other:?}"));
                    return Ok(());
                }
            };
            if let Err(e) = res {
                self.error = Some(e.to_string());
                return Ok(());
            }
        }
        Ok(())
    }
}

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
    let file = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
    // one object at a time, summarized as it is read: what the controller keeps, not the objects
    let mut infos = Infos::default();
    let mut de = serde_json::Deserializer::from_reader(std::io::BufReader::new(file));
    serde::Deserializer::deserialize_seq(&mut de, &mut infos).with_context(|| format!("reading {path}"))?;
    if let Some(e) = infos.error.take() {
        bail!("{path}: {e}");
    }
    let index = ClusterIndex::from_info(&infos.services, &infos.slices, &infos.pods);
    let (ns, ne) = (index.service_count(), index.endpoint_count());
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
    let _keep = &infos;
    tokio::select! {
        r = dns.run() => r?,
        r = http.run() => r?,
    }
    Ok(())
}
