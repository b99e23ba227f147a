//! Loopback tests of the proxy: real backends on 127.0.0.1:0, the proxy on 127.0.0.1:0, real
//! HTTP/1.1, HTTP/2 and TLS clients. Every behaviour test runs twice: plain HTTP on the
//! HTTP/1.1 fast path (`<test>::fast`, the default) and on hyper only (`<test>::hyper`).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use arc_swap::ArcSwap;
use bytes::Bytes;
use common::*;
use dari_ingress::proxy::{ProxyOptions, ProxyServer};
use dari_ingress::{build, IngressConfig, RouteTable, SharedTable};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

thread_local! {
    /// Whether the proxies this test thread starts use the HTTP/1.1 fast path.
    static FAST: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

fn fast() -> bool {
    FAST.with(|f| f.get())
}

/// `mod name { fast, hyper }`: the test `name` on both plain-HTTP paths.
macro_rules! both_paths {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn fast() -> anyhow::Result<()> {
                super::FAST.with(|f| f.set(true));
                super::$name().await
            }
            #[tokio::test]
            async fn hyper() -> anyhow::Result<()> {
                super::FAST.with(|f| f.set(false));
                super::$name().await
            }
        }
    )*};
}

both_paths!(
    routes_by_host_and_sets_forwarded_headers,
    rewrite_target_with_captures,
    spreads_retries_refused_and_503,
    body_size_limit,
    tls_sni_redirects_and_http2,
    websocket_upgrade,
    hot_reload_under_load_zero_failures,
    workers_share_the_port_and_caller_runtime_mode,
    streamed_bodies_and_closed_upstream_connections,
);

/// A test backend: answers `served-by NAME` plus what it received; upgrades websockets to an echo.
struct Upstream {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

async fn upstream(name: &'static str) -> Result<Upstream> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let h = h.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                    h.fetch_add(1, Ordering::Relaxed);
                    async move {
                        if req.headers().get("upgrade").is_some() {
                            spawn_upgrade_echo(hyper::upgrade::on(&mut req));
                            let r = Response::builder()
                                .status(StatusCode::SWITCHING_PROTOCOLS)
                                .header("connection", "upgrade")
                                .header("upgrade", "websocket")
                                .body(http_body_util::Either::Left(Full::new(Bytes::new())))
                                .expect("101");
                            return Ok::<_, hyper::Error>(r);
                        }
                        if req.uri().path() == "/big" {
                            // 2 MiB in 64 KiB frames: streamed, many reads upstream.
                            let chunks = (0..32).map(|_| Ok::<_, hyper::Error>(hyper::body::Frame::data(Bytes::from(vec![b'x'; 65536]))));
                            let body = http_body_util::StreamBody::new(futures::stream::iter(chunks));
                            return Ok(Response::new(http_body_util::Either::Right(body)));
                        }
                        if req.uri().path() == "/close" {
                            let mut r = Response::new(http_body_util::Either::Left(Full::new(Bytes::from_static(b"bye"))));
                            r.headers_mut().insert("connection", http::HeaderValue::from_static("close"));
                            return Ok(r);
                        }
                        if req.uri().path() == "/slow" {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                        }
                        let mut text = format!("served-by {name}\npath {}\n", req.uri());
                        for k in ["host", "x-forwarded-for", "x-real-ip", "x-forwarded-proto", "x-forwarded-host"] {
                            let v = req.headers().get(k).and_then(|v| v.to_str().ok()).unwrap_or("-");
                            text.push_str(&format!("{k} {v}\n"));
                        }
                        let body = req.into_body().collect().await?.to_bytes();
                        text.push_str(&format!("body-len {}\n", body.len()));
                        Ok(Response::new(http_body_util::Either::Left(Full::new(Bytes::from(text)))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Ok(Upstream { addr, hits })
}

/// An address nothing listens on (connection refused).
async fn dead_addr() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let a = l.local_addr()?;
    drop(l);
    Ok(a)
}

fn cfg() -> IngressConfig {
    IngressConfig { class_names: vec!["dari".into(), "nginx".into()], ..IngressConfig::default() }
}

struct World {
    ingresses: Vec<Ingress>,
    services: Vec<Service>,
    slices: Vec<EndpointSlice>,
    secrets: Vec<Secret>,
}

impl World {
    fn new() -> Self {
        World { ingresses: vec![], services: vec![], slices: vec![], secrets: vec![] }
    }
    fn svc(&mut self, name: &str, eps: &[SocketAddr]) -> &mut Self {
        self.services.push(service(name, 80, 8080));
        self.slices.extend(slices_for(name, eps));
        self
    }
    fn table(&self) -> RouteTable {
        build(&self.ingresses, &self.services, &self.slices, &[], &self.secrets, &cfg())
    }
}

fn simple_ingress(name: &str, host: &str, path: &str, svc: &str, annotations: serde_json::Value) -> Ingress {
    ingress(json!({"metadata": {"name": name, "namespace": "default", "annotations": annotations},
        "spec": {"ingressClassName": "dari", "rules": [{"host": host, "http": {"paths": [
            {"path": path, "pathType": "Prefix", "backend": {"service": {"name": svc, "port": {"number": 80}}}}]}}]}}))
}

async fn start(table: RouteTable) -> Result<(SharedTable, SocketAddr, SocketAddr)> {
    let shared: SharedTable = Arc::new(ArcSwap::from_pointee(table));
    let opts = ProxyOptions {
        http: vec!["127.0.0.1:0".parse()?],
        https: vec!["127.0.0.1:0".parse()?],
        h1_fast_path: fast(),
        ..ProxyOptions::default()
    };
    let server = ProxyServer::bind(shared.clone(), &opts).await?;
    let (h, s) = (server.http_addrs()[0], server.https_addrs()[0]);
    tokio::spawn(server.run());
    Ok((shared, h, s))
}

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: String,
}

/// One HTTP/1.1 connection, kept alive across requests.
struct H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>);

impl H1 {
    async fn connect(addr: SocketAddr) -> Result<Self> {
        let s = TcpStream::connect(addr).await?;
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await?;
        tokio::spawn(conn.with_upgrades());
        Ok(H1(tx))
    }
    async fn req(&mut self, host: &str, path: &str, body: &str) -> Result<Reply> {
        self.0.ready().await?;
        let method = if body.is_empty() { "GET" } else { "POST" };
        let req = Request::builder().method(method).uri(path).header("host", host).body(Full::new(Bytes::from(body.to_string())))?;
        let resp = self.0.send_request(req).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = String::from_utf8(resp.into_body().collect().await?.to_bytes().to_vec())?;
        Ok(Reply { status, headers, body })
    }
}

async fn get(addr: SocketAddr, host: &str, path: &str) -> Result<Reply> {
    H1::connect(addr).await?.req(host, path, "").await
}

fn field<'a>(body: &'a str, key: &str) -> &'a str {
    body.lines().find_map(|l| l.strip_prefix(&format!("{key} "))).unwrap_or("<missing>")
}

async fn routes_by_host_and_sets_forwarded_headers() -> Result<()> {
    let (u1, u2) = (upstream("nginx1").await?, upstream("nginx2").await?);
    let mut w = World::new();
    w.svc("nginxnginx1-service-clusterip", &[u1.addr]).svc("nginx2-service-clusterip", &[u2.addr]);
    w.ingresses.push(ingress_yaml(&seed_ingress_text()));
    let (_t, http, _) = start(w.table()).await?;
    let mut c = H1::connect(http).await?;
    let a = c.req("a.com", "/", "").await?;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(field(&a.body, "served-by"), "nginx1");
    assert_eq!(field(&a.body, "host"), "a.com");
    assert_eq!(field(&a.body, "x-forwarded-for"), "127.0.0.1");
    assert_eq!(field(&a.body, "x-real-ip"), "127.0.0.1");
    assert_eq!(field(&a.body, "x-forwarded-proto"), "http");
    assert_eq!(field(&a.body, "x-forwarded-host"), "a.com");
    // Same keep-alive connection, other host.
    let b = c.req("b.com", "/some/path?q=1", "").await?;
    assert_eq!(field(&b.body, "served-by"), "nginx2");
    assert_eq!(field(&b.body, "path"), "/some/path?q=1");
    let none = c.req("c.com", "/", "").await?;
    assert_eq!(none.status, StatusCode::NOT_FOUND);
    Ok(())
}

async fn rewrite_target_with_captures() -> Result<()> {
    let u = upstream("rw").await?;
    let mut w = World::new();
    w.svc("rw", &[u.addr]);
    let mut ing = simple_ingress("rw", "rewrite.bar.com", "/something(/|$)(.*)", "rw",
        json!({"nginx.ingress.kubernetes.io/use-regex": "true", "nginx.ingress.kubernetes.io/rewrite-target": "/$2"}));
    if let Some(spec) = ing.spec.as_mut() {
        for r in spec.rules.iter_mut().flatten() {
            for p in r.http.iter_mut().flat_map(|h| h.paths.iter_mut()) {
                p.path_type = "ImplementationSpecific".into();
            }
        }
    }
    w.ingresses.push(ing);
    let (_t, http, _) = start(w.table()).await?;
    for (req, want) in [("/something", "/"), ("/something/", "/"), ("/something/new?x=1", "/new?x=1")] {
        let r = get(http, "rewrite.bar.com", req).await?;
        assert_eq!(field(&r.body, "path"), want, "request {req}");
    }
    Ok(())
}

async fn spreads_retries_refused_and_503() -> Result<()> {
    let (u1, u2) = (upstream("one").await?, upstream("two").await?);
    let dead = dead_addr().await?;
    let mut w = World::new();
    w.svc("web", &[u1.addr, dead, u2.addr]);
    w.svc("empty", &[]);
    w.ingresses.push(simple_ingress("web", "web.com", "/", "web", json!({})));
    w.ingresses.push(simple_ingress("empty", "empty.com", "/", "empty", json!({})));
    let (_t, http, _) = start(w.table()).await?;
    let mut c = H1::connect(http).await?;
    for i in 0..30 {
        let r = c.req("web.com", "/", "").await?;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {}", r.body);
    }
    let (h1, h2) = (u1.hits.load(Ordering::Relaxed), u2.hits.load(Ordering::Relaxed));
    assert_eq!(h1 + h2, 30);
    assert!(h1 >= 10 && h2 >= 10, "spread across endpoints on one client connection: {h1} / {h2}");
    let r = c.req("empty.com", "/", "").await?;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    // All endpoints refused: 502.
    let mut w2 = World::new();
    w2.svc("web", &[dead]);
    w2.ingresses.push(simple_ingress("web", "web.com", "/", "web", json!({})));
    let (_t2, http2, _) = start(w2.table()).await?;
    assert_eq!(get(http2, "web.com", "/").await?.status, StatusCode::BAD_GATEWAY);
    Ok(())
}

async fn body_size_limit() -> Result<()> {
    let u = upstream("b").await?;
    let mut w = World::new();
    w.svc("b", &[u.addr]);
    w.ingresses.push(simple_ingress("b", "b.com", "/", "b", json!({"nginx.ingress.kubernetes.io/proxy-body-size": "1k"})));
    let (_t, http, _) = start(w.table()).await?;
    let ok = get_with_body(http, "b.com", &"x".repeat(1000)).await?;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(field(&ok.body, "body-len"), "1000");
    let big = get_with_body(http, "b.com", &"x".repeat(5000)).await?;
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE);
    Ok(())
}

async fn get_with_body(addr: SocketAddr, host: &str, body: &str) -> Result<Reply> {
    H1::connect(addr).await?.req(host, "/upload", body).await
}

fn tls_client(root_pem: &[&str], alpn: &[&[u8]]) -> Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for pem in root_pem {
        for c in rustls_pemfile::certs(&mut pem.as_bytes()) {
            roots.add(c?)?;
        }
    }
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

async fn tls_sni_redirects_and_http2() -> Result<()> {
    let (ua, ub) = (upstream("a").await?, upstream("b").await?);
    let (crt_a, key_a) = self_signed(&["a.com"]);
    let (crt_b, key_b) = self_signed(&["b.com"]);
    let mut w = World::new();
    w.svc("a", &[ua.addr]).svc("b", &[ub.addr]);
    w.secrets.push(tls_secret("a-tls", &crt_a, &key_a));
    w.secrets.push(tls_secret("b-tls", &crt_b, &key_b));
    for (n, host, secret) in [("a", "a.com", "a-tls"), ("b", "b.com", "b-tls")] {
        w.ingresses.push(ingress(json!({"metadata": {"name": n, "namespace": "default"},
            "spec": {"ingressClassName": "dari", "tls": [{"hosts": [host], "secretName": secret}],
              "rules": [{"host": host, "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": n, "port": {"number": 80}}}}]}}]}})));
    }
    w.ingresses.push(simple_ingress("forced", "plain.com", "/", "a", json!({"nginx.ingress.kubernetes.io/force-ssl-redirect": "true"})));
    w.ingresses.push(simple_ingress("noredir", "open.com", "/", "a", json!({})));
    let t = w.table();
    assert!(t.issues.is_empty(), "{:?}", t.issues);
    let (_t, http, https) = start(t).await?;

    // Plain HTTP to a TLS host: 308 to https, query kept.
    let r = get(http, "a.com", "/x?y=1").await?;
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(r.headers.get("location").and_then(|v| v.to_str().ok()), Some("https://a.com/x?y=1"));
    assert_eq!(get(http, "plain.com", "/").await?.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(get(http, "open.com", "/").await?.status, StatusCode::OK);

    // SNI picks the certificate: each client trusts only its host's certificate.
    for (host, crt, who) in [("a.com", &crt_a, "a"), ("b.com", &crt_b, "b")] {
        let conn = tls_client(&[crt], &[b"http/1.1"])?;
        let tcp = TcpStream::connect(https).await?;
        let tls = conn.connect(rustls::pki_types::ServerName::try_from(host.to_string())?, tcp).await
            .with_context(|| format!("handshake for {host}"))?;
        let (mut tx, c) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(c);
        let resp = tx.send_request(Request::builder().uri("/").header("host", host).body(Full::new(Bytes::new()))?).await?;
        assert_eq!(resp.status(), StatusCode::OK);
        let body = String::from_utf8(resp.into_body().collect().await?.to_bytes().to_vec())?;
        assert_eq!(field(&body, "served-by"), who);
        assert_eq!(field(&body, "x-forwarded-proto"), "https");
    }
    // a.com's certificate is not served for b.com.
    let conn = tls_client(&[&crt_a], &[b"http/1.1"])?;
    let tcp = TcpStream::connect(https).await?;
    assert!(conn.connect(rustls::pki_types::ServerName::try_from("b.com")?, tcp).await.is_err());

    // HTTP/2 over TLS (ALPN h2).
    let conn = tls_client(&[&crt_b], &[b"h2"])?;
    let tcp = TcpStream::connect(https).await?;
    let tls = conn.connect(rustls::pki_types::ServerName::try_from("b.com")?, tcp).await?;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut tx, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
    tokio::spawn(c);
    for _ in 0..3 {
        let resp = tx.send_request(Request::builder().uri("https://b.com/h2").body(Full::new(Bytes::new()))?).await?;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let body = String::from_utf8(resp.into_body().collect().await?.to_bytes().to_vec())?;
        assert_eq!(field(&body, "served-by"), "b");
        assert_eq!(field(&body, "path"), "/h2");
    }
    // HTTP/2 in clear (prior knowledge) on the HTTP port.
    let tcp = TcpStream::connect(http).await?;
    let (mut tx, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
    tokio::spawn(c);
    let resp = tx.send_request(Request::builder().uri("http://open.com/x").body(Full::new(Bytes::new()))?).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    Ok(())
}

async fn websocket_upgrade() -> Result<()> {
    let u = upstream("ws").await?;
    let mut w = World::new();
    w.svc("ws", &[u.addr]);
    w.ingresses.push(simple_ingress("ws", "ws.com", "/", "ws", json!({})));
    let (_t, http, _) = start(w.table()).await?;
    let mut s = TcpStream::connect(http).await?;
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: ws.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await? == 0 {
            bail!("closed during handshake: {}", String::from_utf8_lossy(&head));
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for msg in [&b"hello frames"[..], &b"second"[..]] {
        s.write_all(msg).await?;
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got)).await??;
        assert_eq!(got, msg);
    }
    Ok(())
}

async fn hot_reload_under_load_zero_failures() -> Result<()> {
    let (ua, ub) = (upstream("A").await?, upstream("B").await?);
    let mk = |target: &str| {
        let mut w = World::new();
        w.svc("svc-a", &[ua.addr]).svc("svc-b", &[ub.addr]);
        w.ingresses.push(simple_ingress("load", "load.com", "/", target, json!({})));
        // Plenty of unrelated rules so every swap is a real rebuild.
        for i in 0..200 {
            w.ingresses.push(simple_ingress(&format!("other{i}"), &format!("h{i}.example.com"), "/", "svc-b", json!({})));
        }
        w.table()
    };
    let (shared, http, _) = start(mk("svc-a")).await?;
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let ok = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for i in 0..8 {
        let (failures, ok, stop) = (failures.clone(), ok.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut c = match H1::connect(http).await {
                Ok(c) => c,
                Err(e) => {
                    failures.lock().map(|mut f| f.push(format!("connect: {e}"))).ok();
                    return;
                }
            };
            let mut n = 0u32;
            // Bounded: stops on the flag or after 20,000 requests.
            while !stop.load(Ordering::Relaxed) && n < 20_000 {
                n += 1;
                // Some requests stay in flight across several swaps.
                let path = if i == 0 && n % 3 == 0 { "/slow" } else { "/" };
                match c.req("load.com", path, "").await {
                    Ok(r) if r.status == StatusCode::OK => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures.lock().map(|mut f| f.push(format!("status {}", r.status))).map(|_| ()).unwrap_or(()),
                    Err(e) => failures.lock().map(|mut f| f.push(format!("error {e}"))).map(|_| ()).unwrap_or(()),
                }
            }
        }));
    }
    let tables = [Arc::new(mk("svc-b")), Arc::new(mk("svc-a"))];
    for i in 0..60 {
        shared.store(tables[i % 2].clone());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await?;
    }
    let failures = failures.lock().map(|f| f.clone()).unwrap_or_default();
    let by: BTreeMap<&str, usize> = [("A", ua.hits.load(Ordering::Relaxed)), ("B", ub.hits.load(Ordering::Relaxed))].into();
    assert!(failures.is_empty(), "{} failures, first: {:?}", failures.len(), failures.first());
    assert!(ok.load(Ordering::Relaxed) > 500, "load was real: {} ok", ok.load(Ordering::Relaxed));
    assert!(by["A"] > 0 && by["B"] > 0, "swaps took effect: {by:?}");
    Ok(())
}

async fn start_with(table: RouteTable, workers: usize) -> Result<(ProxyServer, SocketAddr)> {
    let shared: SharedTable = Arc::new(ArcSwap::from_pointee(table));
    let opts = ProxyOptions { http: vec!["127.0.0.1:0".parse()?], https: vec![], workers, h1_fast_path: fast(), ..ProxyOptions::default() };
    let server = ProxyServer::bind(shared, &opts).await?;
    let http = server.http_addrs()[0];
    Ok((server, http))
}

/// Many connections to one port served by 4 worker threads (4 SO_REUSEPORT sockets), and by
/// the caller's runtime (`workers: 0`): every request answered.
async fn workers_share_the_port_and_caller_runtime_mode() -> Result<()> {
    let up = upstream("w").await?;
    let mut w = World::new();
    w.svc("svc-w", &[up.addr]);
    w.ingresses.push(simple_ingress("w", "w.com", "/", "svc-w", json!({})));
    for workers in [4, 0] {
        let (server, http) = start_with(w.table(), workers).await?;
        let task = tokio::spawn(server.run());
        let mut conns = Vec::new();
        for _ in 0..32 {
            conns.push(tokio::spawn(async move {
                let mut c = H1::connect(http).await?;
                for _ in 0..5 {
                    let r = c.req("w.com", "/", "").await?;
                    if r.status != StatusCode::OK || field(&r.body, "served-by") != "w" {
                        bail!("workers={workers}: {} {}", r.status, r.body);
                    }
                }
                anyhow::Ok(())
            }));
        }
        for c in conns {
            c.await??;
        }
        task.abort();
    }
    assert_eq!(up.hits.load(Ordering::Relaxed), 2 * 32 * 5);
    Ok(())
}

/// Upstream connections are driven by the request that uses them: a streamed 2 MiB body comes
/// through whole, again and again on reused connections, and a connection the upstream closes
/// (`Connection: close`) is not reused.
async fn streamed_bodies_and_closed_upstream_connections() -> Result<()> {
    let up = upstream("s").await?;
    let mut w = World::new();
    w.svc("svc-s", &[up.addr]);
    w.ingresses.push(simple_ingress("s", "s.com", "/", "svc-s", json!({})));
    let (_t, http, _) = start(w.table()).await?;
    let mut c = H1::connect(http).await?;
    for i in 0..10 {
        let r = c.req("s.com", "/big", "").await?;
        assert_eq!((i, r.status, r.body.len()), (i, StatusCode::OK, 2 << 20));
        assert!(r.body.bytes().all(|b| b == b'x'));
        let r = c.req("s.com", "/close", "").await?;
        assert_eq!((i, r.status, r.body.as_str()), (i, StatusCode::OK, "bye"));
        let r = c.req("s.com", "/", "").await?;
        assert_eq!((i, r.status, field(&r.body, "served-by")), (i, StatusCode::OK, "s"));
    }
    assert_eq!(up.hits.load(Ordering::Relaxed), 30);
    Ok(())
}

/// Dropping the `run` future stops the worker threads: the port stops accepting.
#[tokio::test]
async fn dropping_run_stops_workers() -> Result<()> {
    let (server, http) = start_with(RouteTable::default(), 2).await?;
    let task = tokio::spawn(server.run());
    let r = get(http, "x.com", "/").await?;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    task.abort();
    let _ = task.await;
    // The workers see the stop signal and drop their runtimes and sockets; poll until refused.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect(http).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(()),
            _ if tokio::time::Instant::now() > deadline => bail!("{http} still accepts 10 s after run was dropped"),
            _ => tokio::task::yield_now().await,
        }
    }
}

/// The shared seed 000 Ingress, read at run time (`../shared` next to the repository, or /work/shared).
fn seed_ingress_text() -> String {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for c in [here.join("../../../shared/scenarios/seed-000-ingress/ingress.yaml"), std::path::PathBuf::from("/work/shared/scenarios/seed-000-ingress/ingress.yaml")] {
        if let Ok(s) = std::fs::read_to_string(&c) {
            return s;
        }
    }
    panic!("../shared/scenarios/seed-000-ingress/ingress.yaml not found next to the repository")
}
