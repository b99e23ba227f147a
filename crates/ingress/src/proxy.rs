//! The data plane: HTTP and HTTPS listeners (hyper-util auto: HTTP/1.1 keep-alive and HTTP/2),
//! TLS with SNI from the live [`RouteTable`](crate::RouteTable), and request forwarding straight
//! to endpoint pod IPs.
//!
//! Per request (phases, pingora-style): route ([`crate::route`]) → 404 if nothing matched →
//! HTTPS redirect (308) → body-size check (413) → 503 if the backend has no endpoints → forward
//! with X-Forwarded-For/-Proto/-Host/-Port and X-Real-IP to the next endpoint (round-robin),
//! retrying the next one when a connection is refused → 504 after `proxy-read-timeout` →
//! stream the response back; `101 Switching Protocols` splices the two upgraded connections
//! (WebSocket over HTTP/1.1).
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
use tokio::net::TcpListener;

use crate::error::IngressError;
use crate::pool::{BoxError, ConnectError, Pool, SendError, UpBody};
use crate::table::route;
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
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            http: vec![SocketAddr::from(([0, 0, 0, 0], 80))],
            https: vec![SocketAddr::from(([0, 0, 0, 0], 443))],
            trust_forwarded_headers: false,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

struct State {
    table: SharedTable,
    pool: Arc<Pool>,
    trust_forwarded: bool,
}

/// Bound listeners, ready to [`ProxyServer::run`].
pub struct ProxyServer {
    http: Vec<TcpListener>,
    https: Vec<TcpListener>,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<State>,
}

impl ProxyServer {
    /// Binds every listener (port 0 allowed: see [`ProxyServer::http_addrs`]).
    pub async fn bind(table: SharedTable, opts: &ProxyOptions) -> Result<Self, IngressError> {
        let mut http = Vec::new();
        for a in &opts.http {
            http.push(TcpListener::bind(a).await.map_err(|source| IngressError::Bind { addr: *a, scheme: "http", source })?);
        }
        let mut https = Vec::new();
        for a in &opts.https {
            https.push(TcpListener::bind(a).await.map_err(|source| IngressError::Bind { addr: *a, scheme: "https", source })?);
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
        let pool = Pool::new(opts.connect_timeout).map_err(tls_err("backend client"))?;
        Ok(ProxyServer {
            http,
            https,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(sc)),
            state: Arc::new(State { table, pool, trust_forwarded: opts.trust_forwarded_headers }),
        })
    }

    /// Bound plain HTTP addresses.
    pub fn http_addrs(&self) -> Vec<SocketAddr> {
        self.http.iter().filter_map(|l| l.local_addr().ok()).collect()
    }

    /// Bound HTTPS addresses.
    pub fn https_addrs(&self) -> Vec<SocketAddr> {
        self.https.iter().filter_map(|l| l.local_addr().ok()).collect()
    }

    /// Accepts and serves connections until the future is dropped.
    pub async fn run(self) {
        let mut tasks = tokio::task::JoinSet::new();
        for l in self.http {
            tasks.spawn(accept_loop(l, None, self.state.clone()));
        }
        for l in self.https {
            tasks.spawn(accept_loop(l, Some(self.acceptor.clone()), self.state.clone()));
        }
        while tasks.join_next().await.is_some() {}
    }
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
                None => serve(TokioIo::new(stream), peer, local, false, state).await,
                Some(acc) => match acc.accept(stream).await {
                    Ok(s) => serve(TokioIo::new(s), peer, local, true, state).await,
                    Err(e) => tracing::debug!(%peer, error = %e, "tls handshake"),
                },
            }
        });
    }
}

async fn serve<I>(io: I, peer: SocketAddr, local: SocketAddr, https: bool, state: Arc<State>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(&state, req, peer, local, https).await) }
    });
    if let Err(e) = auto::Builder::new(TokioExecutor::new()).serve_connection_with_upgrades(io, svc).await {
        tracing::debug!(%peer, error = %e, "connection");
    }
}

fn local_response(status: StatusCode, text: &str) -> Response<RespBody> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{text}\n"))).map_err(|never| match never {}).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn request_host(req: &Request<Incoming>) -> String {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default()
}

const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
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

async fn handle(state: &State, mut req: Request<Incoming>, peer: SocketAddr, local: SocketAddr, https: bool) -> Response<RespBody> {
    let host = request_host(&req);
    let path = req.uri().path().to_string();
    let span = tracing::debug_span!("ingress_request", %peer, host = %host, path = %path, method = %req.method());
    let _g = span.enter();
    let table = state.table.load();
    let Some(m) = route(&table, &host, &path) else {
        return local_response(StatusCode::NOT_FOUND, "404 page not found (dari ingress default backend)");
    };
    drop(table);
    let r = &m.route;
    let host_only = host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map(|(h, _)| h).unwrap_or(&host);
    if r.redirect_https && !https {
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

    // Build the upstream request.
    let upgrade = is_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers, upgrade);
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if r.backend.protocol.h2() {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    let peer_ip = peer.ip().to_string();
    let xff = match (state.trust_forwarded, headers.get("x-forwarded-for").and_then(|v| v.to_str().ok())) {
        (true, Some(prev)) => format!("{prev}, {peer_ip}"),
        _ => peer_ip.clone(),
    };
    let proto = if https { "https" } else { "http" };
    let set = |h: &mut HeaderMap, name: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(name, v);
        }
    };
    set(&mut headers, "x-forwarded-for", &xff);
    set(&mut headers, "x-real-ip", &peer_ip);
    if !(state.trust_forwarded && headers.contains_key("x-forwarded-proto")) {
        set(&mut headers, "x-forwarded-proto", proto);
    }
    if !(state.trust_forwarded && headers.contains_key("x-forwarded-host")) {
        set(&mut headers, "x-forwarded-host", &host);
    }
    set(&mut headers, "x-forwarded-port", &local.port().to_string());
    if !headers.contains_key(header::HOST) {
        set(&mut headers, "host", &host);
    }
    let pq = match parts.uri.query() {
        Some(q) => format!("{}?{q}", m.upstream_path),
        None => m.upstream_path.clone(),
    };
    let uri: Uri = if r.backend.protocol.h2() {
        let scheme = if r.backend.protocol.tls() { "https" } else { "http" };
        format!("{scheme}://{host_only}{pq}").parse().unwrap_or_default()
    } else {
        pq.parse().unwrap_or_default()
    };
    let version = if r.backend.protocol.h2() { Version::HTTP_2 } else { Version::HTTP_11 };
    let up_body: UpBody = match r.body_size {
        Some(limit) => Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX)).boxed(),
        None => body.map_err(|e| Box::new(e) as BoxError).boxed(),
    };
    let mut up = Request::new(up_body);
    *up.method_mut() = parts.method.clone();
    *up.uri_mut() = uri;
    *up.version_mut() = version;
    *up.headers_mut() = headers;
    if r.backend.protocol.h2() {
        up.headers_mut().remove(header::HOST);
    }

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
