//! Loopback tests: dari's DNS server on 127.0.0.1:0 answering `dig` (apt package `dnsutils`) and raw
//! hickory-encoded queries, forwarding to a fake upstream started by the test on 127.0.0.1:0.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use dari_dns::config::DnsConfig;
use dari_dns::http::HttpServer;
use dari_dns::server::{DnsServer, DnsState};
use dari_dns::ClusterIndex;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

// ---------- fixtures ----------

fn cluster() -> Result<ClusterIndex> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/cluster.yaml");
    let text = std::fs::read_to_string(&path)?;
    let (mut svcs, mut slices, mut pods) = (Vec::<Service>::new(), Vec::<EndpointSlice>::new(), Vec::<Pod>::new());
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: serde_json::Value = serde::Deserialize::deserialize(doc)?;
        match v["kind"].as_str() {
            Some("Service") => svcs.push(serde_json::from_value(v)?),
            Some("EndpointSlice") => slices.push(serde_json::from_value(v)?),
            Some("Pod") => pods.push(serde_json::from_value(v)?),
            other => bail!("kind {other:?}"),
        }
    }
    // a headless Service with 100 endpoints: its A answer (~1.6 kB) does not fit in 512 bytes
    svcs.push(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "big", "namespace": "prod"},
        "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    }))?);
    let endpoints: Vec<_> = (0..100)
        .map(|i| serde_json::json!({"addresses": [format!("10.245.0.{i}")], "conditions": {"ready": true}}))
        .collect();
    slices.push(serde_json::from_value(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "big-1", "namespace": "prod", "labels": {"kubernetes.io/service-name": "big"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        "endpoints": endpoints
    }))?);
    Ok(ClusterIndex::build(&svcs, &slices, &pods))
}

/// A fake upstream resolver: `*.example.` → A 192.0.2.7 TTL 60; `missing.example.` → NXDOMAIN with SOA;
/// `many.example.` → 60 A records (needs TCP). Counts the queries it receives. A `dead` one binds but
/// never answers.
struct Upstream {
    addr: SocketAddr,
    queries: Arc<AtomicUsize>,
}

fn upstream_answer(q: &Message) -> Message {
    let mut r = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
    r.metadata.recursion_desired = q.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    r.queries = q.queries.clone();
    let Some(query) = q.queries.first() else {
        r.metadata.response_code = ResponseCode::FormErr;
        return r;
    };
    let name = query.name.to_lowercase().to_ascii();
    let zone = Name::from_ascii("example.").unwrap_or_default();
    if name == "missing.example." {
        r.metadata.response_code = ResponseCode::NXDomain;
        let soa = SOA::new(zone.clone(), zone.clone(), 1, 1, 1, 1, 20);
        r.authorities.push(Record::from_rdata(zone, 20, RData::SOA(soa)));
    } else if query.query_type == RecordType::A {
        let n = if name == "many.example." { 60 } else { 1 };
        for i in 0..n {
            r.answers.push(Record::from_rdata(query.name.clone(), 60, RData::A(A::new(192, 0, 2, 7 + i))));
        }
    }
    r
}

async fn start_upstream(dead: bool) -> Result<Upstream> {
    // UDP and TCP on one port: the port the kernel gives UDP may be taken for TCP by another
    // test running at the same time; then try another (as `DnsServer::bind` does)
    let mut tries = 0;
    let (udp, addr, tcp) = loop {
        let udp = UdpSocket::bind("127.0.0.1:0").await?;
        let addr = udp.local_addr()?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => break (udp, addr, tcp),
            Err(e) if tries < 20 && e.kind() == std::io::ErrorKind::AddrInUse => tries += 1,
            Err(e) => return Err(e.into()),
        }
    };
    let queries = Arc::new(AtomicUsize::new(0));
    let qc = queries.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
            qc.fetch_add(1, Ordering::SeqCst);
            if dead {
                continue;
            }
            let Ok(q) = Message::from_vec(&buf[..n]) else { continue };
            let mut r = upstream_answer(&q);
            let Ok(mut bytes) = r.to_vec() else { continue };
            if bytes.len() > 512 {
                r.metadata.truncation = true;
                r.answers.clear();
                let Ok(b) = r.to_vec() else { continue };
                bytes = b;
            }
            let _ = udp.send_to(&bytes, peer).await;
        }
    });
    let qc = queries.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = tcp.accept().await {
            let qc = qc.clone();
            tokio::spawn(async move {
                let mut lenb = [0u8; 2];
                if s.read_exact(&mut lenb).await.is_err() {
                    return;
                }
                let mut buf = vec![0u8; usize::from(u16::from_be_bytes(lenb))];
                if s.read_exact(&mut buf).await.is_err() {
                    return;
                }
                qc.fetch_add(1, Ordering::SeqCst);
                if dead {
                    return;
                }
                let Ok(q) = Message::from_vec(&buf) else { return };
                let Ok(bytes) = upstream_answer(&q).to_vec() else { return };
                let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
                out.extend_from_slice(&bytes);
                let _ = s.write_all(&out).await;
            });
        }
    });
    Ok(Upstream { addr, queries })
}

struct Dari {
    dns: SocketAddr,
    http: SocketAddr,
    state: Arc<DnsState>,
}

async fn start_dari(upstreams: Vec<SocketAddr>, timeout_ms: u64) -> Result<Dari> {
    let cfg = DnsConfig {
        upstream_timeout_ms: timeout_ms,
        ..DnsConfig::default()
    };
    let state = DnsState::new(&cfg, upstreams)?;
    state.set_index(cluster()?);
    state.set_synced(true);
    let dns = DnsServer::bind("127.0.0.1:0".parse()?, state.clone()).await?;
    let http = HttpServer::bind("127.0.0.1:0".parse()?, state.clone()).await?;
    let (dns_addr, http_addr) = (dns.local_addr(), http.local_addr());
    eprintln!("dari-dns listening on {dns_addr} (udp+tcp), http on {http_addr}");
    tokio::spawn(dns.run());
    tokio::spawn(http.run());
    Ok(Dari {
        dns: dns_addr,
        http: http_addr,
        state,
    })
}

// ---------- clients ----------

/// Runs dig against `addr`; fails clearly when dig is not installed.
async fn dig(addr: SocketAddr, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("dig");
    cmd.arg(format!("@{}", addr.ip()))
        .arg("-p")
        .arg(addr.port().to_string())
        .args(["+time=2", "+tries=1"])
        .args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await?
        .context("running dig: install the apt package dnsutils (bind9-dnsutils)")?;
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

async fn dig_short(addr: SocketAddr, args: &[&str]) -> Result<Vec<String>> {
    let mut a = vec!["+short"];
    a.extend_from_slice(args);
    let mut lines: Vec<String> = dig(addr, &a).await?.lines().map(str::to_string).collect();
    lines.sort();
    Ok(lines)
}

fn status(dig_out: &str) -> String {
    dig_out
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .and_then(|s| s.split(',').next())
        .unwrap_or("NONE")
        .to_string()
}

fn query(name: &str, rtype: RecordType, edns: bool) -> Result<Vec<u8>> {
    let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name)?, rtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.edns = Some(e);
    }
    Ok(m.to_vec()?)
}

async fn udp_raw(addr: SocketAddr, pkt: &[u8]) -> Result<Option<Vec<u8>>> {
    let s = UdpSocket::bind("127.0.0.1:0").await?;
    s.send_to(pkt, addr).await?;
    let mut buf = vec![0u8; 65_535];
    match tokio::time::timeout(Duration::from_millis(500), s.recv_from(&mut buf)).await {
        Ok(r) => {
            let (n, _) = r?;
            Ok(Some(buf[..n].to_vec()))
        }
        Err(_) => Ok(None),
    }
}

async fn tcp_raw(addr: SocketAddr, pkt: &[u8]) -> Result<Message> {
    let mut s = TcpStream::connect(addr).await?;
    let mut out = (pkt.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(pkt);
    s.write_all(&out).await?;
    let mut lenb = [0u8; 2];
    s.read_exact(&mut lenb).await?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(lenb))];
    s.read_exact(&mut buf).await?;
    Ok(Message::from_vec(&buf)?)
}

async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    let code = body.split_whitespace().nth(1).context("no status")?.parse()?;
    Ok((code, body))
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

// ---------- tests ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_records_over_dig() -> Result<()> {
    let up = start_upstream(false).await?;
    let d = start_dari(vec![up.addr], 1000).await?;
    let a = d.dns;

    assert_eq!(dig_short(a, &["nginx.default.svc.cluster.local", "A"]).await?, ["10.96.0.50"]);
    assert_eq!(dig_short(a, &["NGINX.default.SVC.cluster.local", "A"]).await?, ["10.96.0.50"]);
    assert_eq!(dig_short(a, &["dual.default.svc.cluster.local", "AAAA"]).await?, ["fd00:10:96::60"]);
    assert_eq!(
        dig_short(a, &["_http._tcp.nginx.default.svc.cluster.local", "SRV"]).await?,
        ["0 100 80 nginx.default.svc.cluster.local."]
    );
    assert_eq!(dig_short(a, &["web.prod.svc.cluster.local", "A"]).await?, ["10.244.1.10", "10.244.2.11", "10.244.2.12"]);
    assert_eq!(dig_short(a, &["web-0.web.prod.svc.cluster.local", "A"]).await?, ["10.244.1.10"]);
    assert_eq!(
        dig_short(a, &["_http._tcp.web.prod.svc.cluster.local", "SRV"]).await?,
        [
            "0 33 8080 10-244-2-12.web.prod.svc.cluster.local.",
            "0 33 8080 web-0.web.prod.svc.cluster.local.",
            "0 33 8080 web-1.web.prod.svc.cluster.local."
        ]
    );
    assert_eq!(dig_short(a, &["-x", "10.96.0.50"]).await?, ["nginx.default.svc.cluster.local."]);
    assert_eq!(dig_short(a, &["-x", "fd00:10:96::60"]).await?, ["dual.default.svc.cluster.local."]);
    assert_eq!(dig_short(a, &["-x", "10.244.1.10"]).await?, ["web-0.web.prod.svc.cluster.local."]);
    assert_eq!(dig_short(a, &["search.prod.svc.cluster.local", "A"]).await?, ["search.example.com."]);
    assert_eq!(dig_short(a, &["dns-version.cluster.local", "TXT"]).await?, ["\"1.1.0\""]);
    assert_eq!(dig_short(a, &["10-244-9-9.default.pod.cluster.local", "A"]).await?, ["10.244.9.9"]);

    let nx = dig(a, &["missing.default.svc.cluster.local", "A"]).await?;
    assert_eq!(status(&nx), "NXDOMAIN", "{nx}");
    assert!(nx.contains("flags: qr aa rd ra"), "authoritative NXDOMAIN: {nx}");
    assert!(nx.contains("IN\tSOA\tns.dns.cluster.local. hostmaster.cluster.local."), "SOA in authority: {nx}");
    let nodata = dig(a, &["nginx.default.svc.cluster.local", "AAAA"]).await?;
    assert_eq!(status(&nodata), "NOERROR", "{nodata}");
    assert!(nodata.contains("ANSWER: 0") && nodata.contains("AUTHORITY: 1"), "{nodata}");
    let headless_none = dig(a, &["empty.prod.svc.cluster.local", "A"]).await?;
    assert_eq!(status(&headless_none), "NXDOMAIN", "{headless_none}");
    // EDNS0: the OPT comes back
    let edns = dig(a, &["+edns=0", "nginx.default.svc.cluster.local", "A"]).await?;
    assert!(edns.contains("EDNS: version: 0, flags:; udp: 1232"), "{edns}");
    let badvers = dig(a, &["+edns=1", "+noednsneg", "nginx.default.svc.cluster.local", "A"]).await?;
    assert_eq!(status(&badvers), "BADVERS", "{badvers}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_then_tcp_retry() -> Result<()> {
    let d = start_dari(vec![], 500).await?;
    // raw UDP without EDNS: 100 A records do not fit in 512 bytes
    let reply = udp_raw(d.dns, &query("big.prod.svc.cluster.local.", RecordType::A, false)?)
        .await?
        .context("no UDP reply")?;
    assert!(reply.len() <= 512, "udp reply of {} bytes", reply.len());
    let m = Message::from_vec(&reply)?;
    assert!(m.metadata.truncation, "TC must be set");
    assert!(m.answers.is_empty());
    // the same over TCP: everything
    let full = tcp_raw(d.dns, &query("big.prod.svc.cluster.local.", RecordType::A, false)?).await?;
    assert_eq!(full.answers.len(), 100);
    assert!(!full.metadata.truncation);
    // dig does the retry by itself
    let out = dig(d.dns, &["+noedns", "big.prod.svc.cluster.local", "A"]).await?;
    assert!(out.contains("Truncated, retrying in TCP mode"), "{out}");
    assert!(out.contains("ANSWER: 100"), "{out}");
    // dig told not to retry sees the TC flag
    let out = dig(d.dns, &["+noedns", "+ignore", "big.prod.svc.cluster.local", "A"]).await?;
    assert!(out.contains(" tc "), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_with_positive_and_negative_cache() -> Result<()> {
    let up = start_upstream(false).await?;
    let d = start_dari(vec![up.addr], 1000).await?;
    assert_eq!(dig_short(d.dns, &["www.example", "A"]).await?, ["192.0.2.7"]);
    assert_eq!(up.queries.load(Ordering::SeqCst), 1);
    let again = dig(d.dns, &["+noall", "+answer", "www.example", "A"]).await?;
    assert!(again.contains("192.0.2.7"), "{again}");
    assert_eq!(up.queries.load(Ordering::SeqCst), 1, "second query must be a cache hit");
    // TTL capped at cache 30 s
    let ttl: u32 = again.split_whitespace().nth(1).context("ttl")?.parse()?;
    assert!(ttl <= 30, "cached TTL {ttl}");
    // negative caching
    for _ in 0..2 {
        let nx = dig(d.dns, &["missing.example", "A"]).await?;
        assert_eq!(status(&nx), "NXDOMAIN", "{nx}");
    }
    assert_eq!(up.queries.load(Ordering::SeqCst), 2, "NXDOMAIN cached");
    // truncated upstream answer: retried over TCP upstream, then TC to our UDP client, then dig's TCP
    let many = dig(d.dns, &["many.example", "A"]).await?;
    assert!(many.contains("ANSWER: 60"), "{many}");
    let (code, body) = http_get(d.http, "/metrics").await?;
    assert_eq!(code, 200);
    assert!(metric(&body, "dari_dns_cache_hits_total").unwrap_or(0.0) >= 2.0, "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_second_upstream() -> Result<()> {
    let dead = start_upstream(true).await?;
    let good = start_upstream(false).await?;
    let d = start_dari(vec![dead.addr, good.addr], 200).await?;
    for i in 0..4 {
        let name = format!("host{i}.example");
        assert_eq!(dig_short(d.dns, &[&name, "A"]).await?, ["192.0.2.7"], "query {i}");
    }
    // after 3 failures the dead one is tried last: the 4th query does not touch it
    assert_eq!(dead.queries.load(Ordering::SeqCst), 3);
    assert_eq!(good.queries.load(Ordering::SeqCst), 4);
    let health = d.state.forwarder().health();
    assert_eq!(health, vec![(dead.addr, false), (good.addr, true)]);
    // no upstream at all answers: SERVFAIL
    let none = start_dari(vec![dead.addr], 100).await?;
    let out = dig(none.dns, &["x.example", "A"]).await?;
    assert_eq!(status(&out), "SERVFAIL", "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_packets_never_kill_the_server() -> Result<()> {
    let d = start_dari(vec![], 200).await?;
    // short: dropped
    assert!(udp_raw(d.dns, &[1, 2, 3]).await?.is_none());
    // header then garbage: FORMERR with the id
    let r = udp_raw(d.dns, &[0xbe, 0xef, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xff, 0xff]).await?.context("formerr")?;
    let m = Message::from_vec(&r)?;
    assert_eq!((m.metadata.id, m.metadata.response_code), (0xbeef, ResponseCode::FormErr));
    // a response packet: dropped (no loops)
    let mut resp = query("nginx.default.svc.cluster.local.", RecordType::A, false)?;
    resp[2] |= 0x80;
    assert!(udp_raw(d.dns, &resp).await?.is_none());
    // oversized junk datagram
    let junk: Vec<u8> = (0..60_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let _ = udp_raw(d.dns, &junk).await?;
    // TCP: a length prefix promising more than is sent, then close
    {
        let mut s = TcpStream::connect(d.dns).await?;
        s.write_all(&[0x01, 0x00, 1, 2, 3]).await?;
    }
    // unknown type and class
    let mut q = Message::from_vec(&query("nginx.default.svc.cluster.local.", RecordType::A, false)?)?;
    q.queries[0].set_query_type(RecordType::Unknown(65280));
    let r = Message::from_vec(&udp_raw(d.dns, &q.to_vec()?).await?.context("unknown type")?)?;
    assert_eq!((r.metadata.response_code, r.answers.len()), (ResponseCode::NoError, 0));
    // still serving
    let ok = udp_raw(d.dns, &query("nginx.default.svc.cluster.local.", RecordType::A, true)?).await?.context("alive")?;
    assert_eq!(Message::from_vec(&ok)?.answers.len(), 1);
    let (_, metrics) = http_get(d.http, "/metrics").await?;
    assert!(metric(&metrics, "dari_dns_dropped_total").unwrap_or(0.0) >= 2.0, "{metrics}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_metrics() -> Result<()> {
    let cfg = DnsConfig::default();
    let state = DnsState::new(&cfg, vec![])?;
    let http = HttpServer::bind("127.0.0.1:0".parse()?, state.clone()).await?;
    let haddr = http.local_addr();
    tokio::spawn(http.run());
    assert_eq!(http_get(haddr, "/health").await?.0, 200);
    assert_eq!(http_get(haddr, "/ready").await?.0, 503, "not ready before sync and bind");
    state.set_index(cluster()?);
    state.set_synced(true);
    let dns = DnsServer::bind("127.0.0.1:0".parse()?, state.clone()).await?;
    let daddr = dns.local_addr();
    tokio::spawn(dns.run());
    // readiness flips once the listener task runs: poll it (bounded) rather than sleep
    let mut ready = false;
    for _ in 0..100 {
        if http_get(haddr, "/ready").await?.0 == 200 {
            ready = true;
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ready, "/ready never became 200");
    udp_raw(daddr, &query("nginx.default.svc.cluster.local.", RecordType::A, false)?).await?.context("answer")?;
    let (code, body) = http_get(haddr, "/metrics").await?;
    assert_eq!(code, 200);
    assert!(body.contains("dari_dns_requests_total{proto=\"udp\"} 1"), "{body}");
    assert!(body.contains("dari_dns_responses_total{rcode=\"NOERROR\"} 1"), "{body}");
    assert!(body.contains("dari_dns_request_duration_seconds_count 1"), "{body}");
    assert!(body.contains("dari_dns_index_services 9"), "{body}");
    Ok(())
}
