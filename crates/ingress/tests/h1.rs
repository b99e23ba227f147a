//! Loopback tests of the HTTP/1.1 fast path (`dari_ingress::h1`): message framing both ways,
//! pipelining, upstream keep-alive, malformed input, and the hand-over to hyper for what the
//! fast path does not do. Clients here write raw bytes, so the framing on the wire is exact;
//! upstreams are either hyper or scripted raw TCP servers.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use arc_swap::ArcSwap;
use bytes::Bytes;
use common::*;
use dari_ingress::proxy::{ProxyOptions, ProxyServer};
use dari_ingress::{build, IngressConfig, RouteTable, SharedTable};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::networking::v1::Ingress;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Limit for every read in these tests: a hang is a failure, not a stuck test.
const T: Duration = Duration::from_secs(10);

/// A hyper upstream that echoes what it got (path, some headers, body length and byte sum),
/// counts requests and accepted connections, and upgrades websockets to an echo.
struct Up {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    hits: Arc<AtomicUsize>,
}

async fn hyper_upstream() -> Result<Up> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let (conns, hits) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (c, h) = (conns.clone(), hits.clone());
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            c.fetch_add(1, Ordering::Relaxed);
            let h = h.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                    h.fetch_add(1, Ordering::Relaxed);
                    async move {
                        if req.headers().contains_key("upgrade") {
                            spawn_upgrade_echo(hyper::upgrade::on(&mut req));
                            let r = Response::builder()
                                .status(StatusCode::SWITCHING_PROTOCOLS)
                                .header("connection", "upgrade")
                                .header("upgrade", "websocket")
                                .body(Full::new(Bytes::new()))
                                .expect("101");
                            return Ok::<_, hyper::Error>(r);
                        }
                        let mut text = format!("path {}\n", req.uri());
                        for k in ["host", "x-forwarded-for", "transfer-encoding", "x-hop", "x-kept"] {
                            let v = req.headers().get(k).and_then(|v| v.to_str().ok()).unwrap_or("-");
                            text.push_str(&format!("{k} {v}\n"));
                        }
                        let body = req.into_body().collect().await?.to_bytes();
                        let sum = body.iter().fold(0u32, |a, &b| a.wrapping_add(u32::from(b)));
                        text.push_str(&format!("body-len {}\nbody-sum {sum}\n", body.len()));
                        Ok(Response::new(Full::new(Bytes::from(text))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Ok(Up { addr, conns, hits })
}

/// What a scripted upstream does with one request head.
enum Act {
    /// Write these bytes and wait for the next request.
    Send(Vec<u8>),
    /// Write these bytes and close the connection.
    SendClose(Vec<u8>),
    /// Never answer (keep the connection open).
    Hang,
    /// Close without answering.
    Close,
}

/// A raw upstream: reads request heads (requests without bodies), answers as `script` says
/// (given the head and the request's index on its connection), records every head received
/// and counts connections.
struct Raw {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
}

async fn raw_upstream(script: impl Fn(&str, usize) -> Act + Send + Sync + 'static) -> Result<Raw> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let conns = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(Mutex::new(Vec::new()));
    let (c, hs, script) = (conns.clone(), heads.clone(), Arc::new(script));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            c.fetch_add(1, Ordering::Relaxed);
            let (hs, script) = (hs.clone(), script.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for nth in 0.. {
                    let head = loop {
                        if let Some(i) = find(&buf, b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..i + 4]).into_owned();
                            buf.drain(..i + 4);
                            break head;
                        }
                        let mut b = [0u8; 4096];
                        match s.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&b[..n]),
                        }
                    };
                    if let Ok(mut h) = hs.lock() {
                        h.push(head.clone());
                    }
                    match script(&head, nth) {
                        Act::Send(bytes) => {
                            if s.write_all(&bytes).await.is_err() {
                                return;
                            }
                        }
                        Act::SendClose(bytes) => {
                            let _ = s.write_all(&bytes).await;
                            return;
                        }
                        Act::Close => return,
                        Act::Hang => {
                            let mut b = [0u8; 64];
                            while let Ok(n) = s.read(&mut b).await {
                                if n == 0 {
                                    return;
                                }
                            }
                            return;
                        }
                    }
                }
            });
        }
    });
    Ok(Raw { addr, conns, heads })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn cfg() -> IngressConfig {
    IngressConfig { class_names: vec!["dari".into()], ..IngressConfig::default() }
}

fn ing(name: &str, host: &str, svc: &str, annotations: serde_json::Value) -> Ingress {
    ingress(json!({"metadata": {"name": name, "namespace": "default", "annotations": annotations},
        "spec": {"ingressClassName": "dari", "rules": [{"host": host, "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": svc, "port": {"number": 80}}}}]}}]}}))
}

/// A table with one Ingress `host` → Service `svc` on `eps`.
fn table(host: &str, eps: &[SocketAddr], annotations: serde_json::Value) -> RouteTable {
    let t = build(&[ing("i", host, "svc", annotations)], &[service("svc", 80, 8080)], &slices_for("svc", eps), &[], &[], &cfg());
    assert!(t.issues.is_empty(), "{:?}", t.issues);
    t
}

async fn start_opts(t: RouteTable, fast: bool, workers: usize, trust: bool) -> Result<SocketAddr> {
    let shared: SharedTable = Arc::new(ArcSwap::from_pointee(t));
    let opts = ProxyOptions {
        http: vec!["127.0.0.1:0".parse()?],
        https: vec![],
        workers,
        h1_fast_path: fast,
        trust_forwarded_headers: trust,
        ..ProxyOptions::default()
    };
    let server = ProxyServer::bind(shared, &opts).await?;
    let addr = server.http_addrs()[0];
    tokio::spawn(server.run());
    Ok(addr)
}

async fn start(t: RouteTable) -> Result<SocketAddr> {
    start_opts(t, true, 1, false).await
}

/// A response read off the wire.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn field(&self, key: &str) -> String {
        self.text().lines().find_map(|l| l.strip_prefix(&format!("{key} ")).map(str::to_string)).unwrap_or_else(|| "<missing>".into())
    }
}

/// A raw client connection with its read buffer.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Self> {
        Ok(Conn { s: TcpStream::connect(addr).await?, buf: Vec::new() })
    }
    async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.s.write_all(bytes).await?;
        Ok(())
    }
    /// Reads more; false at end of stream.
    async fn more(&mut self) -> Result<bool> {
        let mut b = [0u8; 16384];
        let n = tokio::time::timeout(T, self.s.read(&mut b)).await.context("read timed out")??;
        self.buf.extend_from_slice(&b[..n]);
        Ok(n > 0)
    }
    /// Reads one response (no body for HEAD, 1xx, 204, 304), decoding framing independently
    /// of the proxy's code.
    async fn response(&mut self, head_req: bool) -> Result<Resp> {
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            ensure!(self.more().await?, "closed before a response head: {:?}", String::from_utf8_lossy(&self.buf));
        };
        let head = String::from_utf8(self.buf[..end].to_vec())?;
        self.buf.drain(..end);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        ensure!(status_line.starts_with("HTTP/1.1 "), "status line {status_line:?}");
        let status: u16 = status_line.get(9..12).unwrap_or("").parse()?;
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut r = Resp { status, headers, body: Vec::new() };
        if head_req || (100..200).contains(&status) || status == 204 || status == 304 {
            return Ok(r);
        }
        if r.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        break i;
                    }
                    ensure!(self.more().await?, "closed in chunk size");
                };
                let line = String::from_utf8(self.buf[..line_end].to_vec())?;
                let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16).with_context(|| format!("chunk size {line:?}"))?;
                self.buf.drain(..line_end + 2);
                if size == 0 {
                    // Trailer fields, then the empty line.
                    loop {
                        let e = loop {
                            if let Some(i) = find(&self.buf, b"\r\n") {
                                break i;
                            }
                            ensure!(self.more().await?, "closed in trailers");
                        };
                        let l = String::from_utf8(self.buf[..e].to_vec())?;
                        self.buf.drain(..e + 2);
                        if l.is_empty() {
                            return Ok(r);
                        }
                        if let Some((n, v)) = l.split_once(':') {
                            r.headers.push((format!("trailer:{}", n.trim().to_ascii_lowercase()), v.trim().to_string()));
                        }
                    }
                }
                while self.buf.len() < size + 2 {
                    ensure!(self.more().await?, "closed in chunk data");
                }
                ensure!(&self.buf[size..size + 2] == b"\r\n", "chunk data not followed by CRLF");
                r.body.extend_from_slice(&self.buf[..size]);
                self.buf.drain(..size + 2);
            }
        }
        if let Some(n) = r.header("content-length") {
            let n: usize = n.parse()?;
            while self.buf.len() < n {
                ensure!(self.more().await?, "closed in body");
            }
            r.body = self.buf.drain(..n).collect();
            return Ok(r);
        }
        // Close-delimited.
        while self.more().await? {}
        r.body = std::mem::take(&mut self.buf);
        Ok(r)
    }
    /// Ends with the server closing (nothing more sent).
    async fn expect_closed(&mut self) -> Result<()> {
        while self.more().await? {}
        ensure!(self.buf.is_empty(), "unexpected bytes before close: {:?}", String::from_utf8_lossy(&self.buf));
        Ok(())
    }
}

fn get(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

#[tokio::test]
async fn chunked_response_relayed_and_upstream_reused() -> Result<()> {
    let body = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
    let up = raw_upstream(move |_, _| {
        let mut r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Up: 1\r\n\r\n".to_vec();
        r.extend_from_slice(body);
        Act::Send(r)
    })
    .await?;
    let addr = start(table("c.com", &[up.addr], json!({}))).await?;
    let mut c = Conn::open(addr).await?;
    for i in 0..3 {
        c.send(&get("c.com", "/chunked")).await?;
        let r = c.response(false).await?;
        assert_eq!((i, r.status, r.text().as_str()), (i, 200, "hello world"));
        assert_eq!(r.header("transfer-encoding"), Some("chunked"));
        assert_eq!(r.header("x-up"), Some("1"));
        assert_eq!(r.header("trailer:x-trailer"), Some("t"), "trailers relayed");
        assert!(r.header("content-length").is_none());
    }
    assert_eq!(up.conns.load(Ordering::Relaxed), 1, "one upstream connection, reused after chunked responses");
    Ok(())
}

#[tokio::test]
async fn content_length_and_chunked_request_bodies() -> Result<()> {
    let up = hyper_upstream().await?;
    let addr = start(table("b.com", &[up.addr], json!({}))).await?;
    let mut c = Conn::open(addr).await?;
    // 300 kB, sent in pieces, with the head separately.
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let sum = body.iter().fold(0u32, |a, &b| a.wrapping_add(u32::from(b)));
    c.send(format!("POST /cl HTTP/1.1\r\nHost: b.com\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes()).await?;
    for part in body.chunks(70_000) {
        c.send(part).await?;
    }
    let r = c.response(false).await?;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.field("body-len"), "300000");
    assert_eq!(r.field("body-sum"), sum.to_string());
    // Chunked upload on the same connection, chunks split over writes, then a GET pipelined
    // right behind the final chunk.
    c.send(b"POST /te HTTP/1.1\r\nHost: b.com\r\nTransfer-Encoding: chunked\r\n\r\n").await?;
    c.send(b"3\r\nabc\r\n10;x=y\r\n0123456789").await?;
    c.send(b"abcdef\r\n0\r\n\r\nGET /after HTTP/1.1\r\nHost: b.com\r\n\r\n").await?;
    let r = c.response(false).await?;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.field("body-len"), "19");
    assert_eq!(r.field("transfer-encoding"), "chunked");
    let r = c.response(false).await?;
    assert_eq!(r.field("path"), "/after");
    assert_eq!(r.field("body-len"), "0");
    Ok(())
}

#[tokio::test]
async fn close_delimited_response_closes_client() -> Result<()> {
    let up = raw_upstream(|_, _| Act::SendClose(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end".to_vec())).await?;
    let addr = start(table("e.com", &[up.addr], json!({}))).await?;
    for _ in 0..2 {
        let mut c = Conn::open(addr).await?;
        c.send(&get("e.com", "/")).await?;
        let r = c.response(false).await?;
        assert_eq!((r.status, r.text().as_str()), (200, "until the end"));
        assert_eq!(r.header("connection"), Some("close"));
    }
    assert_eq!(up.conns.load(Ordering::Relaxed), 2, "a close-delimited upstream connection is not reused");
    Ok(())
}

#[tokio::test]
async fn head_204_304_have_no_body() -> Result<()> {
    let up = raw_upstream(|head, _| {
        Act::Send(if head.starts_with("HEAD") {
            b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n".to_vec()
        } else if head.starts_with("GET /204") {
            b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n".to_vec()
        } else if head.starts_with("GET /304") {
            b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n".to_vec()
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()
        })
    })
    .await?;
    let addr = start(table("h.com", &[up.addr], json!({}))).await?;
    let mut c = Conn::open(addr).await?;
    // All pipelined in one write: a body wrongly expected after any of them would swallow the
    // next response.
    let mut reqs = b"HEAD /x HTTP/1.1\r\nHost: h.com\r\n\r\n".to_vec();
    reqs.extend(get("h.com", "/204"));
    reqs.extend(get("h.com", "/304"));
    reqs.extend(get("h.com", "/ok"));
    c.send(&reqs).await?;
    let r = c.response(true).await?;
    assert_eq!((r.status, r.header("content-length")), (200, Some("1234")));
    let r = c.response(false).await?;
    assert_eq!((r.status, r.header("x-a")), (204, Some("1")));
    let r = c.response(false).await?;
    assert_eq!(r.status, 304);
    let r = c.response(false).await?;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    assert_eq!(up.conns.load(Ordering::Relaxed), 1);
    // Local answers to HEAD have no body either.
    c.send(b"HEAD / HTTP/1.1\r\nHost: nowhere.com\r\n\r\n").await?;
    c.send(&get("h.com", "/ok")).await?;
    let r = c.response(true).await?;
    assert_eq!(r.status, 404);
    assert_eq!(c.response(false).await?.text(), "ok");
    Ok(())
}

#[tokio::test]
async fn pipelined_requests_answered_in_order() -> Result<()> {
    let up = hyper_upstream().await?;
    let addr = start(table("p.com", &[up.addr], json!({}))).await?;
    let mut c = Conn::open(addr).await?;
    let mut reqs = Vec::new();
    for i in 0..8 {
        reqs.extend(get(if i == 5 { "unknown.com" } else { "p.com" }, &format!("/n{i}")));
    }
    c.send(&reqs).await?;
    for i in 0..8 {
        let r = c.response(false).await?;
        if i == 5 {
            assert_eq!(r.status, 404);
        } else {
            assert_eq!((i, r.status, r.field("path")), (i, 200, format!("/n{i}")));
        }
    }
    Ok(())
}

#[tokio::test]
async fn upstream_keep_alive_reuse() -> Result<()> {
    let up = hyper_upstream().await?;
    // One worker: one pool, so reuse is deterministic across client connections.
    let addr = start_opts(table("k.com", &[up.addr], json!({})), true, 1, false).await?;
    for _ in 0..3 {
        let mut c = Conn::open(addr).await?;
        for _ in 0..20 {
            c.send(&get("k.com", "/")).await?;
            assert_eq!(c.response(false).await?.status, 200);
        }
    }
    assert_eq!(up.hits.load(Ordering::Relaxed), 60);
    assert_eq!(up.conns.load(Ordering::Relaxed), 1, "60 sequential requests over one upstream connection");
    Ok(())
}

#[tokio::test]
async fn stale_pooled_connection_is_replaced() -> Result<()> {
    // Announces keep-alive but closes right after each response (an upstream keepalive timeout
    // hitting the idle connection).
    let up = raw_upstream(|_, _| Act::SendClose(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec())).await?;
    let addr = start(table("s.com", &[up.addr], json!({}))).await?;
    let mut c = Conn::open(addr).await?;
    for i in 0..10 {
        c.send(&get("s.com", "/")).await?;
        let r = c.response(false).await?;
        assert_eq!((i, r.status, r.text().as_str()), (i, 200, "ok"));
    }
    assert_eq!(up.conns.load(Ordering::Relaxed), 10);
    Ok(())
}

#[tokio::test]
async fn malformed_requests_get_400_and_close() -> Result<()> {
    let up = hyper_upstream().await?;
    let addr = start(table("m.com", &[up.addr], json!({}))).await?;
    for bad in [
        &b"GET / HTTP/1.1\r\nHost m.com\r\n\r\n"[..],
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: m.com\r\nHost: other.com\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: m.com\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
        b"POST / HTTP/1.1\r\nHost: m.com\r\nContent-Length: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: m.com\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
    ] {
        let mut c = Conn::open(addr).await?;
        c.send(bad).await?;
        let r = c.response(false).await.with_context(|| format!("{:?}", String::from_utf8_lossy(bad)))?;
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(bad));
        assert_eq!(r.header("connection"), Some("close"));
        c.expect_closed().await?;
    }
    assert_eq!(up.hits.load(Ordering::Relaxed), 0, "nothing malformed reached the upstream");
    Ok(())
}

#[tokio::test]
async fn oversized_head_gets_431() -> Result<()> {
    let up = hyper_upstream().await?;
    let addr = start(table("o.com", &[up.addr], json!({}))).await?;
    let mut c = Conn::open(addr).await?;
    c.send(format!("GET / HTTP/1.1\r\nHost: o.com\r\nX-Big: {}\r\n\r\n", "a".repeat(100_000)).as_bytes()).await?;
    let r = c.response(false).await?;
    assert_eq!(r.status, 431);
    c.expect_closed().await?;
    let mut c = Conn::open(addr).await?;
    let many: String = (0..150).map(|i| format!("X-{i}: v\r\n")).collect();
    c.send(format!("GET / HTTP/1.1\r\nHost: o.com\r\n{many}\r\n").as_bytes()).await?;
    assert_eq!(c.response(false).await?.status, 431);
    c.expect_closed().await?;
    Ok(())
}

#[tokio::test]
async fn chunked_request_over_body_limit_gets_413() -> Result<()> {
    let up = hyper_upstream().await?;
    let addr = start(table("l.com", &[up.addr], json!({"nginx.ingress.kubernetes.io/proxy-body-size": "1k"}))).await?;
    let mut c = Conn::open(addr).await?;
    c.send(b"POST / HTTP/1.1\r\nHost: l.com\r\nTransfer-Encoding: chunked\r\n\r\n200\r\n").await?;
    c.send(&[b'x'; 0x200]).await?;
    c.send(b"\r\n400\r\n").await?;
    c.send(&[b'y'; 0x400]).await?;
    c.send(b"\r\n0\r\n\r\n").await?;
    let r = c.response(false).await?;
    assert_eq!(r.status, 413, "{}", r.text());
    c.expect_closed().await?;
    // Under the limit: forwarded.
    let mut c = Conn::open(addr).await?;
    c.send(b"POST / HTTP/1.1\r\nHost: l.com\r\nTransfer-Encoding: chunked\r\n\r\n200\r\n").await?;
    c.send(&[b'x'; 0x200]).await?;
    c.send(b"\r\n0\r\n\r\n").await?;
    let r = c.response(false).await?;
    assert_eq!((r.status, r.field("body-len")), (200, "512".to_string()));
    Ok(())
}

#[tokio::test]
async fn read_timeout_gives_504_and_keeps_the_client() -> Result<()> {
    let up = raw_upstream(|head, _| {
        if head.starts_with("GET /hang") {
            Act::Hang
        } else {
            Act::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec())
        }
    })
    .await?;
    let addr = start(table("t.com", &[up.addr], json!({"nginx.ingress.kubernetes.io/proxy-read-timeout": "1"}))).await?;
    let mut c = Conn::open(addr).await?;
    let t0 = std::time::Instant::now();
    c.send(&get("t.com", "/hang")).await?;
    let r = c.response(false).await?;
    assert_eq!(r.status, 504);
    assert!(t0.elapsed() >= Duration::from_millis(900), "504 only after the timeout: {:?}", t0.elapsed());
    c.send(&get("t.com", "/")).await?;
    assert_eq!(c.response(false).await?.text(), "ok");
    Ok(())
}

/// Requests the fast path hands to hyper, on a connection that served fast-path requests
/// first: WebSocket upgrade, and `Expect: 100-continue`.
#[tokio::test]
async fn fallback_to_hyper_mid_connection() -> Result<()> {
    let up = hyper_upstream().await?;
    let addr = start(table("w.com", &[up.addr], json!({}))).await?;
    // Expect: 100-continue.
    let mut c = Conn::open(addr).await?;
    c.send(&get("w.com", "/first")).await?;
    assert_eq!(c.response(false).await?.field("path"), "/first");
    c.send(b"PUT /put HTTP/1.1\r\nHost: w.com\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n").await?;
    let r = c.response(false).await?;
    assert_eq!(r.status, 100);
    c.send(b"hello").await?;
    let r = c.response(false).await?;
    assert_eq!((r.status, r.field("body-len")), (200, "5".to_string()));
    // WebSocket.
    let mut c = Conn::open(addr).await?;
    c.send(&get("w.com", "/before")).await?;
    assert_eq!(c.response(false).await?.field("path"), "/before");
    c.send(b"GET /chat HTTP/1.1\r\nHost: w.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await?;
    let r = c.response(true).await?;
    assert_eq!(r.status, 101);
    for msg in [&b"frame one"[..], b"frame two"] {
        c.send(msg).await?;
        while c.buf.len() < msg.len() {
            if !c.more().await? {
                bail!("closed during echo");
            }
        }
        assert_eq!(c.buf.drain(..msg.len()).collect::<Vec<_>>(), msg);
    }
    Ok(())
}

/// What the upstream receives is the same through the fast path and through hyper (header
/// names compared case-insensitively, order ignored).
#[tokio::test]
async fn same_upstream_request_as_the_hyper_path() -> Result<()> {
    let up = raw_upstream(|_, _| Act::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec())).await?;
    let reqs: &[&[u8]] = &[
        b"GET /a/b?c=d&e HTTP/1.1\r\nHost: q.com\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: Q.com:8080\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nX-Kept: 2\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: q.com\r\nX-Forwarded-For: 10.1.1.1\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: orig.com\r\nX-Forwarded-Port: 1\r\nX-Real-IP: 10.9.9.9\r\n\r\n",
        b"DELETE /thing HTTP/1.1\r\nHost: q.com\r\nAuthorization: Bearer x\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n",
        b"GET /r HTTP/1.1\r\nHost: rw.com\r\n\r\n",
    ];
    let rw = ingress(json!({"metadata": {"name": "rw", "namespace": "default", "annotations": {
            "nginx.ingress.kubernetes.io/rewrite-target": "/new/$2"}},
        "spec": {"ingressClassName": "dari", "rules": [{"host": "rw.com", "http": {"paths": [
            {"path": "/(r)(.*)", "pathType": "ImplementationSpecific", "backend": {"service": {"name": "svc", "port": {"number": 80}}}}]}}]}}));
    let mk = || build(&[ing("i", "q.com", "svc", json!({})), rw.clone()], &[service("svc", 80, 8080)], &slices_for("svc", &[up.addr]), &[], &[], &cfg());
    let norm = |head: &str| -> Vec<String> {
        let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
        let first = lines.next().unwrap_or("").to_string();
        let mut rest: Vec<String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| format!("{}: {}", n.trim().to_ascii_lowercase(), v.trim()))
            .collect();
        rest.sort();
        rest.insert(0, first);
        rest
    };
    for trust in [false, true] {
        let fast = start_opts(mk(), true, 1, trust).await?;
        let slow = start_opts(mk(), false, 1, trust).await?;
        for req in reqs {
            let mut got = Vec::new();
            for addr in [fast, slow] {
                let before = up.heads.lock().map(|h| h.len()).unwrap_or(0);
                let mut c = Conn::open(addr).await?;
                c.send(req).await?;
                let r = c.response(false).await?;
                assert_eq!(r.status, 200);
                let heads = up.heads.lock().map(|h| h.clone()).unwrap_or_default();
                ensure!(heads.len() == before + 1, "one request upstream");
                // The listener's own port differs between the two proxies.
                let head = heads[before].replace(&format!("x-forwarded-port: {}\r\n", addr.port()), "x-forwarded-port: PORT\r\n");
                got.push(norm(&head));
            }
            assert_eq!(got[0], got[1], "trust={trust} request {:?}", String::from_utf8_lossy(req));
        }
    }
    Ok(())
}

/// An upstream that answers before reading the request body (and closes): its answer reaches
/// the client, and the client connection is closed after it.
#[tokio::test]
async fn early_upstream_answer_during_upload() -> Result<()> {
    let up = raw_upstream(|_, _| Act::SendClose(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nnope".to_vec())).await?;
    let addr = start(table("u.com", &[up.addr], json!({"nginx.ingress.kubernetes.io/proxy-body-size": "0"}))).await?;
    let c = TcpStream::connect(addr).await?;
    let (mut rd, mut wr) = c.into_split();
    let n = 8 << 20;
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(format!("POST / HTTP/1.1\r\nHost: u.com\r\nContent-Length: {n}\r\n\r\n").as_bytes()).await;
        let chunk = vec![b'z'; 65536];
        for _ in 0..n / chunk.len() {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    while find(&got, b"nope").is_none() {
        let k = tokio::time::timeout(T, rd.read(&mut b)).await.context("read timed out")??;
        ensure!(k > 0, "closed before the answer: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&b[..k]);
    }
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 413"), "{text}");
    assert!(text.contains("connection: close\r\n"), "{text}");
    writer.abort();
    Ok(())
}

/// A head arriving a few bytes at a time is still parsed (and answered) once complete.
#[tokio::test]
async fn head_in_small_pieces() -> Result<()> {
    let up = hyper_upstream().await?;
    let addr = start(table("x.com", &[up.addr], json!({}))).await?;
    let mut c = Conn::open(addr).await?;
    let head = format!("GET /slowly HTTP/1.1\r\nHost: x.com\r\nX-Pad: {}\r\n\r\n", "p".repeat(3000));
    for piece in head.as_bytes().chunks(700) {
        c.send(piece).await?;
        tokio::task::yield_now().await;
    }
    let r = c.response(false).await?;
    assert_eq!((r.status, r.field("path")), (200, "/slowly".to_string()));
    Ok(())
}

/// A pooled connection the upstream closes only once it has the next request (the race an
/// idle check cannot see): an idempotent request is sent again on a new connection; a POST is
/// not (502), as nginx.
#[tokio::test]
async fn dead_pooled_connection_retried_for_idempotent_requests() -> Result<()> {
    let up = raw_upstream(|_, nth| if nth == 0 { Act::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()) } else { Act::Close }).await?;
    let addr = start(table("d.com", &[up.addr], json!({}))).await?;
    let mut c = Conn::open(addr).await?;
    for i in 0..4 {
        c.send(&get("d.com", "/")).await?;
        let r = c.response(false).await?;
        assert_eq!((i, r.status, r.text().as_str()), (i, 200, "ok"));
    }
    // 1 + 3 × (dead pooled + fresh).
    assert_eq!(up.conns.load(Ordering::Relaxed), 4);
    c.send(b"POST / HTTP/1.1\r\nHost: d.com\r\nContent-Length: 0\r\n\r\n").await?;
    assert_eq!(c.response(false).await?.status, 502, "a POST is not sent twice");
    Ok(())
}
