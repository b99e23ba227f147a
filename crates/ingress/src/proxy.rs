//! The data plane: HTTP and HTTPS listeners (hyper-util auto: HTTP/1.1 keep-alive and HTTP/2),
//! TLS with SNI from the live [`RouteTable`](crate::RouteTable), and request forwarding straight
//! to endpoint pod IPs.
//!
//! Two paths serve requests, with the same phases and answers:
//! - plain-HTTP connections start on the HTTP/1.1 fast path, [`crate::h1`] (httparse, heads
//!   written as bytes, bodies relayed by their framing over the worker's pooled upstream TCP
//!   connections), unless [`ProxyOptions::h1_fast_path`] is off;
//! - everything else runs on hyper, below: TLS connections, and any plain connection from the
//!   request the fast path does not handle exactly (HTTP/2 prior knowledge, HTTP/1.0,
//!   Upgrade/WebSocket, Expect, non-HTTP backends ...), which it hands over with the bytes it
//!   already read.
//!
//! Per request (phases, pingora-style): route ([`crate::route_ref`]) → 404 if nothing matched →
//! HTTPS redirect (308) → body-size check (413) → 503 if the backend has no endpoints → forward
//! with X-Forwarded-For/-Proto/-Host/-Port and X-Real-IP to the next endpoint (round-robin),
//! retrying the next one when a connection is refused → 504 after `proxy-read-timeout` →
//! stream the response back; `101 Switching Protocols` splices the two upgraded connections
//! (WebSocket over HTTP/1.1).
//!
//! Threads: like nginx's `worker_processes`, [`ProxyOptions::workers`] threads each run a
//! single-threaded tokio runtime with their own listening socket per address (`SO_REUSEPORT`:
//! the kernel spreads connections) and their own upstream keep-alive pool, so a request never
//! crosses threads and no lock is contended. `workers: 0` serves on the caller's runtime instead.
//!
//! The hot path avoids per-request work that does not depend on the request: the peer address and
//! local port header values are made once per connection, the route lookup does not allocate
//! unless a rewrite applies, and an origin-form request URI is forwarded as is.
//!
//! The table is read once per request from an [`arc_swap::ArcSwap`], so swapping it never
//! touches connections in flight.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket};
use tracing::Instrument;

use crate::error::IngressError;
use crate::pool::{BoxError, ConnectError, Pool, SendError, UpBody};
use crate::table::route_ref;
use crate::SharedTable;

/// Body returned to clients.
pub type RespBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// Listener and forwarding settings.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Plain HTTP listen addresses (default `0.0.0.0:80`).
    pub http: Vec<SocketAddr>,
    /// HTTPS listen addresses (default `0.0.0.0:443`).
    pub https: Vec<SocketAddr>,
    /// Keep and append to incoming X-Forwarded-* headers (ingress-nginx
    /// `use-forwarded-headers`); default false: they are replaced.
    pub trust_forwarded_headers: bool,
    /// Upstream connect timeout (`proxy-connect-timeout`, default 5 s).
    pub connect_timeout: Duration,
    /// Proxy worker threads (nginx `worker_processes`), each with a single-threaded runtime, its
    /// own `SO_REUSEPORT` listener per address and its own upstream pool. Default: the number of
    /// CPUs (nginx `auto`). 0: serve on the caller's runtime, one listener per address.
    pub workers: usize,
    /// Serve plain-HTTP connections with the HTTP/1.1 fast path ([`crate::h1`]), falling back
    /// to hyper for what it does not handle. Default true; false: hyper for everything.
    pub h1_fast_path: bool,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            http: vec![SocketAddr::from(([0, 0, 0, 0], 80))],
            https: vec![SocketAddr::from(([0, 0, 0, 0], 443))],
            trust_forwarded_headers: false,
            connect_timeout: Duration::from_secs(5),
            workers: std::thread::available_parallelism().map(usize::from).unwrap_or(1),
            h1_fast_path: true,
        }
    }
}

/// What every connection of one worker shares.
pub(crate) struct State {
    pub(crate) table: SharedTable,
    pub(crate) pool: Arc<Pool>,
    pub(crate) trust_forwarded: bool,
    server: auto::Builder<TokioExecutor>,
    /// Plain-HTTP connections start on the [`crate::h1`] fast path.
    fast_h1: bool,
}

/// One listening socket and whether it terminates TLS.
struct Listener {
    socket: std::net::TcpListener,
    tls: bool,
}

/// Bound listeners, ready to [`ProxyServer::run`].
pub struct ProxyServer {
    /// One set of listeners per worker (a single set when serving on the caller's runtime).
    sets: Vec<Vec<Listener>>,
    /// Run the sets on dedicated threads.
    threads: bool,
    http_addrs: Vec<SocketAddr>,
    https_addrs: Vec<SocketAddr>,
    acceptor: tokio_rustls::TlsAcceptor,
    table: SharedTable,
    trust_forwarded: bool,
    connect_timeout: Duration,
    fast_h1: bool,
}

/// `n` listening sockets on `addr` (port 0: the port the first one got). With more than one,
/// they share the port through `SO_REUSEPORT`.
fn bind_set(addr: SocketAddr, n: usize, scheme: &'static str) -> Result<(SocketAddr, Vec<std::net::TcpListener>), IngressError> {
    let err = |addr: SocketAddr| move |source: std::io::Error| IngressError::Bind { addr, scheme, source };
    let mut bound = addr;
    let mut out = Vec::with_capacity(n);
    for i in 0..n.max(1) {
        let sock = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(err(addr))?;
        sock.set_reuseaddr(true).map_err(err(addr))?;
        if n > 1 {
            sock.set_reuseport(true).map_err(err(addr))?;
        }
        sock.bind(bound).map_err(err(bound))?;
        let l = sock.listen(1024).map_err(err(bound))?;
        if i == 0 {
            bound = l.local_addr().map_err(err(addr))?;
        }
        // Deregistered from this runtime: the worker that serves it registers it with its own.
        out.push(l.into_std().map_err(err(bound))?);
    }
    Ok((bound, out))
}

impl ProxyServer {
    /// Binds every listener (port 0 allowed: see [`ProxyServer::http_addrs`]).
    pub async fn bind(table: SharedTable, opts: &ProxyOptions) -> Result<Self, IngressError> {
        let n = opts.workers.max(1);
        let mut sets: Vec<Vec<Listener>> = (0..n).map(|_| Vec::new()).collect();
        let (mut http_addrs, mut https_addrs) = (Vec::new(), Vec::new());
        for (addrs, tls, out) in [(&opts.http, false, &mut http_addrs), (&opts.https, true, &mut https_addrs)] {
            for a in addrs {
                let (bound, socks) = bind_set(*a, n, if tls { "https" } else { "http" })?;
                out.push(bound);
                for (set, socket) in sets.iter_mut().zip(socks) {
                    set.push(Listener { socket, tls });
                }
            }
        }
        let tls_err = |what: &'static str| move |e: rustls::Error| IngressError::Tls { what, source: Box::new(e) };
        let fallback = crate::tls::fallback_certificate()
            .map_err(|e| IngressError::Tls { what: "fallback certificate", source: Box::new(e) })?;
        let provider = crate::tls::provider();
        let mut sc = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls_err("protocol versions"))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(crate::tls::SniResolver { table: table.clone(), fallback }));
        sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // Fail now rather than in a worker.
        Pool::new(opts.connect_timeout).map_err(tls_err("backend client"))?;
        Ok(ProxyServer {
            sets,
            threads: opts.workers > 0,
            http_addrs,
            https_addrs,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(sc)),
            table,
            trust_forwarded: opts.trust_forwarded_headers,
            connect_timeout: opts.connect_timeout,
            fast_h1: opts.h1_fast_path,
        })
    }

    /// Bound plain HTTP addresses.
    pub fn http_addrs(&self) -> Vec<SocketAddr> {
        self.http_addrs.clone()
    }

    /// Bound HTTPS addresses.
    pub fn https_addrs(&self) -> Vec<SocketAddr> {
        self.https_addrs.clone()
    }

    fn state(&self) -> Result<Arc<State>, rustls::Error> {
        let mut server = auto::Builder::new(TokioExecutor::new());
        // Small responses: one write of head and body rather than a vectored write.
        server.http1().writev(false);
        Ok(Arc::new(State {
            table: self.table.clone(),
            pool: Pool::new(self.connect_timeout)?,
            trust_forwarded: self.trust_forwarded,
            server,
            fast_h1: self.fast_h1,
        }))
    }

    /// Accepts and serves connections until the future is dropped (which also stops the
    /// worker threads).
    pub async fn run(mut self) {
        let sets = std::mem::take(&mut self.sets);
        if !self.threads {
            let mut local = tokio::task::JoinSet::new();
            for set in sets {
                match self.state() {
                    Ok(state) => {
                        local.spawn(serve_set(set, self.acceptor.clone(), state));
                    }
                    Err(e) => tracing::error!(error = %e, "ingress proxy: backend client setup"),
                }
            }
            while local.join_next().await.is_some() {}
            return;
        }
        // Dropping `stop` (this future) ends every worker's runtime.
        let (stop, _) = tokio::sync::watch::channel(());
        let mut done = Vec::new();
        let mut local = tokio::task::JoinSet::new();
        for (i, set) in sets.into_iter().enumerate() {
            let state = match self.state() {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, worker = i, "ingress proxy: backend client setup; its sockets are closed");
                    continue;
                }
            };
            let acceptor = self.acceptor.clone();
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, worker = i, "ingress proxy: worker runtime; serving on the caller's runtime");
                    local.spawn(serve_set(set, acceptor, state));
                    continue;
                }
            };
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let mut stopped = stop.subscribe();
            let spawned = std::thread::Builder::new().name(format!("ingress-{i}")).spawn(move || {
                rt.block_on(async move {
                    tokio::select! {
                        _ = serve_set(set, acceptor, state) => {}
                        _ = stopped.changed() => {}
                    }
                });
                drop(rt);
                let _ = tx.send(());
            });
            match spawned {
                Ok(_) => done.push(rx),
                // The closure (and so the worker's sockets) is dropped: the kernel no longer
                // hands that worker connections; the others keep serving the same ports.
                Err(e) => tracing::error!(error = %e, worker = i, "ingress proxy: worker thread; its sockets are closed"),
            }
        }
        for rx in done {
            let _ = rx.await;
        }
        while local.join_next().await.is_some() {}
        drop(stop);
    }
}

/// Serves one worker's listeners on the current runtime.
async fn serve_set(set: Vec<Listener>, acceptor: tokio_rustls::TlsAcceptor, state: Arc<State>) {
    let mut tasks = tokio::task::JoinSet::new();
    for l in set {
        let addr = l.socket.local_addr().ok();
        match TcpListener::from_std(l.socket) {
            Ok(tl) => {
                tasks.spawn(accept_loop(tl, l.tls.then(|| acceptor.clone()), state.clone()));
            }
            Err(e) => tracing::error!(error = %e, ?addr, "ingress proxy: registering listener"),
        }
    }
    while tasks.join_next().await.is_some() {}
}

async fn accept_loop(l: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>, state: Arc<State>) {
    loop {
        let (stream, peer) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let local = stream.local_addr().unwrap_or(peer);
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None if state.fast_h1 => crate::h1::serve(stream, peer, local, state).await,
                None => serve(TokioIo::new(stream), peer, local, false, state).await,
                Some(acc) => match acc.accept(stream).await {
                    Ok(s) => serve(TokioIo::new(s), peer, local, true, state).await,
                    Err(e) => tracing::debug!(%peer, error = %e, "tls handshake"),
                },
            }
        });
    }
}

/// Per-connection facts, made once and shared by the connection's requests.
struct Conn {
    state: Arc<State>,
    peer: SocketAddr,
    https: bool,
    /// The peer's IP (X-Real-IP, X-Forwarded-For).
    peer_ip: HeaderValue,
    /// The local port (X-Forwarded-Port).
    local_port: HeaderValue,
}

/// Serves one connection with hyper (HTTP/1.1 and HTTP/2).
pub(crate) async fn serve<I>(io: I, peer: SocketAddr, local: SocketAddr, https: bool, state: Arc<State>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let conn = Arc::new(Conn {
        state: state.clone(),
        peer,
        https,
        peer_ip: HeaderValue::from_str(&peer.ip().to_string()).unwrap_or(HeaderValue::from_static("")),
        local_port: HeaderValue::from(local.port()),
    });
    let svc = hyper::service::service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(conn, req).await) }
    });
    if let Err(e) = state.server.serve_connection_with_upgrades(io, svc).await {
        tracing::debug!(%peer, error = %e, "connection");
    }
}

fn local_response(status: StatusCode, text: &str) -> Response<RespBody> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{text}\n"))).map_err(|never| match never {}).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// The Host header, or the URI authority (HTTP/2 `:authority`, absolute-form), as a header value
/// (cloning one shares its bytes).
fn request_host(req: &Request<Incoming>) -> HeaderValue {
    match req.headers().get(header::HOST) {
        Some(h) if h.to_str().is_ok() => h.clone(),
        _ => req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()).unwrap_or(HeaderValue::from_static("")),
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    if h.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for n in named {
            if !(keep_upgrade && n == header::UPGRADE) {
                h.remove(n);
            }
        }
    }
    for n in HOP_BY_HOP.iter() {
        h.remove(n);
    }
    if !keep_upgrade {
        h.remove(header::UPGRADE);
    }
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

fn length_limit_hit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if c.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = c.source();
    }
    false
}

async fn handle(c: Arc<Conn>, req: Request<Incoming>) -> Response<RespBody> {
    // One span per request; debug level, so at the usual info level it is disabled and costs a
    // callsite check (the fields are only formatted when enabled).
    let span = tracing::debug_span!("ingress_request", peer = %c.peer, host = ?req.headers().get(header::HOST), path = %req.uri().path(), method = %req.method());
    forward(&c, req).instrument(span).await
}

async fn forward(c: &Conn, mut req: Request<Incoming>) -> Response<RespBody> {
    let state = &c.state;
    let host_v = request_host(&req);
    let host = host_v.to_str().unwrap_or("");
    let (r, rewritten) = {
        let table = state.table.load();
        match route_ref(&table, host, req.uri().path()) {
            Some((r, rewritten)) => (r.clone(), rewritten),
            None => return local_response(StatusCode::NOT_FOUND, "404 page not found (dari ingress default backend)"),
        }
    };
    let host_only = host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map(|(h, _)| h).unwrap_or(host);
    if r.redirect_https && !c.https {
        let pq = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut resp = local_response(StatusCode::PERMANENT_REDIRECT, "308 permanent redirect");
        if let Ok(v) = HeaderValue::from_str(&format!("https://{host_only}{pq}")) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        return resp;
    }
    if let Some(limit) = r.body_size {
        let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return local_response(StatusCode::PAYLOAD_TOO_LARGE, "413 request entity too large");
        }
    }
    if r.backend.endpoints.is_empty() {
        return local_response(StatusCode::SERVICE_UNAVAILABLE, "503 service unavailable (no ready endpoints)");
    }

    // Build the upstream request from the client's, in place.
    let upgrade = is_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let h2 = r.backend.protocol.h2();
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers, upgrade);
    // Room for the forwarding headers: one growth at most, not one per insert.
    headers.reserve(6);
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if h2 {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    let xff = match (state.trust_forwarded, headers.get(&X_FORWARDED_FOR)) {
        (true, Some(prev)) => {
            let mut v = Vec::with_capacity(prev.len() + 2 + c.peer_ip.len());
            v.extend_from_slice(prev.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(c.peer_ip.as_bytes());
            HeaderValue::from_bytes(&v).unwrap_or_else(|_| c.peer_ip.clone())
        }
        _ => c.peer_ip.clone(),
    };
    headers.insert(X_FORWARDED_FOR, xff);
    headers.insert(X_REAL_IP, c.peer_ip.clone());
    if !(state.trust_forwarded && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(if c.https { "https" } else { "http" }));
    }
    if !(state.trust_forwarded && headers.contains_key(&X_FORWARDED_HOST)) {
        headers.insert(X_FORWARDED_HOST, host_v.clone());
    }
    headers.insert(X_FORWARDED_PORT, c.local_port.clone());
    if h2 {
        headers.remove(header::HOST);
    } else if !headers.contains_key(header::HOST) {
        headers.insert(header::HOST, host_v.clone());
    }
    let origin_form = parts.uri.scheme().is_none() && parts.uri.authority().is_none();
    let uri = if !h2 && rewritten.is_none() && origin_form {
        // The usual case: forward the request target untouched.
        std::mem::take(&mut parts.uri)
    } else {
        let path = rewritten.as_deref().unwrap_or(parts.uri.path());
        let pq = match parts.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        };
        if h2 {
            let scheme = if r.backend.protocol.tls() { "https" } else { "http" };
            format!("{scheme}://{host_only}{pq}").parse().unwrap_or_default()
        } else {
            Uri::try_from(pq).unwrap_or_default()
        }
    };
    parts.uri = uri;
    parts.version = if h2 { Version::HTTP_2 } else { Version::HTTP_11 };
    parts.extensions = http::Extensions::new();
    let up_body: UpBody = match r.body_size {
        Some(limit) => Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX)).boxed(),
        None => body.map_err(|e| Box::new(e) as BoxError).boxed(),
    };
    let up = Request::from_parts(parts, up_body);

    // Forward, retrying refused connections on the next endpoint.
    let send = async {
        let mut req = up;
        let mut last: Option<ConnectError> = None;
        for ep in r.backend.pick() {
            match state.pool.send(ep, r.backend.protocol, req, !upgrade).await {
                Ok(resp) => return Ok((ep, resp)),
                Err(SendError::Connect(e, back)) => {
                    tracing::debug!(%ep, error = ?e, "endpoint connect failed, trying next");
                    req = back;
                    let retry = matches!(e, ConnectError::Retryable(_));
                    last = Some(e);
                    if !retry {
                        break;
                    }
                }
                Err(SendError::Upstream(e)) => return Err(Err(e)),
            }
        }
        Err(Ok(last))
    };
    let (ep, resp) = match tokio::time::timeout(r.read_timeout, send).await {
        Err(_) => return local_response(StatusCode::GATEWAY_TIMEOUT, "504 gateway timeout"),
        Ok(Ok(x)) => x,
        Ok(Err(Ok(e))) => {
            tracing::warn!(backend = %r.backend.service, error = ?e, "no endpoint reachable");
            return local_response(StatusCode::BAD_GATEWAY, "502 bad gateway (no endpoint reachable)");
        }
        Ok(Err(Err(e))) => {
            if length_limit_hit(&e) {
                return local_response(StatusCode::PAYLOAD_TOO_LARGE, "413 request entity too large");
            }
            tracing::warn!(backend = %r.backend.service, error = %e, "upstream error");
            return local_response(StatusCode::BAD_GATEWAY, "502 bad gateway");
        }
    };
    tracing::debug!(%ep, status = %resp.status(), "proxied");

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let (mut rparts, rbody) = resp.into_parts();
        let mut backend_resp = Response::from_parts(rparts.clone(), rbody);
        if let Some(client_up) = client_upgrade {
            tokio::spawn(async move {
                let (c, b) = tokio::join!(client_up, hyper::upgrade::on(&mut backend_resp));
                match (c, b) {
                    (Ok(c), Ok(b)) => {
                        let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(c), &mut TokioIo::new(b)).await;
                    }
                    (c, b) => tracing::debug!(client = ?c.err(), backend = ?b.err(), "upgrade failed"),
                }
            });
        }
        rparts.extensions = http::Extensions::new();
        return Response::from_parts(rparts, Full::new(Bytes::new()).map_err(|never| match never {}).boxed());
    }
    let (mut rparts, rbody) = resp.into_parts();
    strip_hop_by_hop(&mut rparts.headers, false);
    Response::from_parts(rparts, rbody.map_err(|e| Box::new(e) as BoxError).boxed())
}
