//! Upstream connections: per-endpoint keep-alive pool (HTTP/1.1) or one shared HTTP/2
//! connection (GRPC/GRPCS), over TCP or TLS. Connecting is separate from sending, so a refused
//! connection can be retried on another endpoint with the request still in hand.
//!
//! Each proxy worker thread has its own pool (see [`crate::proxy`]), so the lock around the idle
//! lists is never contended; up to 128 idle connections are kept per endpoint (nginx `keepalive`).
//!
//! The HTTP/1.1 fast path ([`crate::h1`]) keeps its own idle lists of plain TCP connections
//! (`Pool::take_raw` / `Pool::put_raw`): it speaks HTTP/1.1 on them itself, so no task
//! drives them while idle; a connection the upstream closed meanwhile is noticed when taken
//! (readiness without a syscall, then a non-blocking read only if the socket is readable), and
//! a periodic sweep closes connections idle for over a minute or to endpoints no longer used.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::annotations::BackendProtocol;

/// Boxed error of bodies and upstream failures.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body sent upstream.
pub type UpBody = BoxBody<Bytes, BoxError>;

type Key = (SocketAddr, BackendProtocol);

/// Why getting a connection failed.
#[derive(Debug)]
#[allow(dead_code)] // the causes are only logged (Debug)
pub(crate) enum ConnectError {
    /// Refused or unreachable: try another endpoint.
    Retryable(std::io::Error),
    /// Anything else (TLS, handshake, timeout).
    Fatal(BoxError),
}

/// Why an exchange failed.
#[derive(Debug)]
pub(crate) enum SendError {
    /// Could not connect to this endpoint; the request is handed back.
    Connect(ConnectError, Request<UpBody>),
    /// The request was (maybe partly) sent and failed.
    Upstream(hyper::Error),
}

const MAX_IDLE_PER_ENDPOINT: usize = 128;
/// Idle fast-path upstream connections older than this are closed by the sweep (nginx
/// upstream `keepalive_timeout`).
const RAW_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Puts between sweeps of the fast-path idle lists.
const SWEEP_EVERY: u32 = 1024;

/// Idle fast-path connections by endpoint, with the time each went idle.
#[derive(Default)]
struct RawIdle {
    by_ep: HashMap<SocketAddr, Vec<(TcpStream, Instant)>>,
    puts: u32,
}

/// The upstream connection pool.
pub(crate) struct Pool {
    idle: Mutex<HashMap<Key, Vec<http1::SendRequest<UpBody>>>>,
    h2: Mutex<HashMap<Key, http2::SendRequest<UpBody>>>,
    raw: Mutex<RawIdle>,
    tls_h1: tokio_rustls::TlsConnector,
    tls_h2: tokio_rustls::TlsConnector,
    connect_timeout: Duration,
}

impl Pool {
    pub(crate) fn new(connect_timeout: Duration) -> Result<Arc<Self>, rustls::Error> {
        let provider = crate::tls::provider();
        let mk = |alpn: &[u8]| -> Result<tokio_rustls::TlsConnector, rustls::Error> {
            let mut c = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(crate::tls::NoVerify(provider.clone())))
                .with_no_client_auth();
            c.alpn_protocols = vec![alpn.to_vec()];
            Ok(tokio_rustls::TlsConnector::from(Arc::new(c)))
        };
        Ok(Arc::new(Pool {
            idle: Mutex::new(HashMap::new()),
            h2: Mutex::new(HashMap::new()),
            raw: Mutex::new(RawIdle::default()),
            tls_h1: mk(b"http/1.1")?,
            tls_h2: mk(b"h2")?,
            connect_timeout,
        }))
    }

    /// A new TCP connection to `ep` (no delay), within the connect timeout.
    pub(crate) async fn tcp(&self, ep: SocketAddr) -> Result<TcpStream, ConnectError> {
        match tokio::time::timeout(self.connect_timeout, TcpStream::connect(ep)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Ok(s)
            }
            Ok(Err(e)) => match e.kind() {
                std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::HostUnreachable
                | std::io::ErrorKind::NetworkUnreachable
                | std::io::ErrorKind::AddrNotAvailable => Err(ConnectError::Retryable(e)),
                _ => Err(ConnectError::Fatal(Box::new(e))),
            },
            Err(_) => Err(ConnectError::Retryable(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout"))),
        }
    }

    async fn connect_h1(&self, ep: SocketAddr, proto: BackendProtocol) -> Result<http1::SendRequest<UpBody>, ConnectError> {
        let tcp = self.tcp(ep).await?;
        let fatal = |e: BoxError| ConnectError::Fatal(e);
        if proto.tls() {
            let name = rustls::pki_types::ServerName::IpAddress(ep.ip().into());
            let tls = self.tls_h1.connect(name, tcp).await.map_err(|e| fatal(Box::new(e)))?;
            let (s, conn) = http1::handshake(TokioIo::new(tls)).await.map_err(|e| fatal(Box::new(e)))?;
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
            });
            Ok(s)
        } else {
            let (s, conn) = http1::handshake(TokioIo::new(tcp)).await.map_err(|e| fatal(Box::new(e)))?;
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
            });
            Ok(s)
        }
    }

    async fn connect_h2(&self, ep: SocketAddr, proto: BackendProtocol) -> Result<http2::SendRequest<UpBody>, ConnectError> {
        let tcp = self.tcp(ep).await?;
        let fatal = |e: BoxError| ConnectError::Fatal(e);
        let exec = TokioExecutor::new();
        if proto.tls() {
            let name = rustls::pki_types::ServerName::IpAddress(ep.ip().into());
            let tls = self.tls_h2.connect(name, tcp).await.map_err(|e| fatal(Box::new(e)))?;
            let (s, conn) = http2::handshake(exec, TokioIo::new(tls)).await.map_err(|e| fatal(Box::new(e)))?;
            tokio::spawn(conn);
            Ok(s)
        } else {
            let (s, conn) = http2::handshake(exec, TokioIo::new(tcp)).await.map_err(|e| fatal(Box::new(e)))?;
            tokio::spawn(conn);
            Ok(s)
        }
    }

    fn put(&self, key: Key, s: http1::SendRequest<UpBody>) {
        if s.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            let v = idle.entry(key).or_default();
            if v.len() < MAX_IDLE_PER_ENDPOINT {
                v.push(s);
            }
        }
    }

    /// An idle plain HTTP/1.1 connection to `ep` that still looks open, if any (the most
    /// recently used first).
    pub(crate) fn take_raw(&self, ep: SocketAddr) -> Option<TcpStream> {
        let mut idle = self.raw.lock().ok()?;
        let v = idle.by_ep.get_mut(&ep)?;
        while let Some((s, _)) = v.pop() {
            if looks_open(&s) {
                return Some(s);
            }
        }
        None
    }

    /// Keeps an HTTP/1.1 connection whose last response ended cleanly for the next request.
    /// Every [`SWEEP_EVERY`] puts, idle connections that are closed or older than
    /// [`RAW_IDLE_TIMEOUT`] are dropped, and so are endpoints left without any (pods gone).
    pub(crate) fn put_raw(&self, ep: SocketAddr, s: TcpStream) {
        if let Ok(mut idle) = self.raw.lock() {
            let now = Instant::now();
            let v = idle.by_ep.entry(ep).or_default();
            if v.len() < MAX_IDLE_PER_ENDPOINT {
                v.push((s, now));
            }
            idle.puts = idle.puts.wrapping_add(1);
            if idle.puts % SWEEP_EVERY == 0 {
                idle.by_ep.retain(|_, v| {
                    v.retain(|(s, t)| now.duration_since(*t) < RAW_IDLE_TIMEOUT && looks_open(s));
                    !v.is_empty()
                });
            }
        }
    }

    fn take(&self, key: &Key) -> Option<http1::SendRequest<UpBody>> {
        let mut idle = self.idle.lock().ok()?;
        let v = idle.get_mut(key)?;
        while let Some(s) = v.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    /// Sends `req` to `ep`. `pool_after` false: the connection is not reused (upgrades).
    /// Connecting (TCP, TLS, handshake) is boxed: it is the cold path, and keeping its large
    /// state out of this future keeps the per-request future small (it is moved, so copied).
    pub(crate) async fn send(
        self: &Arc<Self>,
        ep: SocketAddr,
        proto: BackendProtocol,
        mut req: Request<UpBody>,
        pool_after: bool,
    ) -> Result<Response<PooledBody>, SendError> {
        let key = (ep, proto);
        if proto.h2() {
            let cached = self.h2.lock().ok().and_then(|m| m.get(&key).filter(|s| !s.is_closed()).cloned());
            let mut s = match cached {
                Some(s) => s,
                None => match Box::pin(self.connect_h2(ep, proto)).await {
                    Ok(s) => {
                        if let Ok(mut m) = self.h2.lock() {
                            m.insert(key, s.clone());
                        }
                        s
                    }
                    Err(e) => return Err(SendError::Connect(e, req)),
                },
            };
            return match s.try_send_request(req).await {
                Ok(r) => Ok(r.map(|b| PooledBody::new(b, None))),
                Err(mut e) => match e.take_message() {
                    Some(back) => match Box::pin(self.connect_h2(ep, proto)).await {
                        Ok(mut s) => {
                            if let Ok(mut m) = self.h2.lock() {
                                m.insert(key, s.clone());
                            }
                            s.send_request(back).await.map(|r| r.map(|b| PooledBody::new(b, None))).map_err(SendError::Upstream)
                        }
                        Err(ce) => Err(SendError::Connect(ce, back)),
                    },
                    None => Err(SendError::Upstream(e.into_error())),
                },
            };
        }
        // HTTP/1.1: reuse an idle connection; if it turns out dead before the request went out,
        // open a fresh one.
        for _ in 0..2 {
            let mut s = match self.take(&key) {
                Some(s) => s,
                None => match Box::pin(self.connect_h1(ep, proto)).await {
                    Ok(s) => s,
                    Err(e) => return Err(SendError::Connect(e, req)),
                },
            };
            if s.ready().await.is_err() {
                continue;
            }
            match s.try_send_request(req).await {
                Ok(resp) => {
                    let slot = pool_after.then(|| (self.clone(), key, s));
                    return Ok(resp.map(|b| PooledBody::new(b, slot)));
                }
                Err(mut e) => match e.take_message() {
                    Some(back) => req = back,
                    None => return Err(SendError::Upstream(e.into_error())),
                },
            }
        }
        match Box::pin(self.connect_h1(ep, proto)).await {
            Ok(mut s) => {
                let resp = s.send_request(req).await.map_err(SendError::Upstream)?;
                let slot = pool_after.then(|| (self.clone(), key, s));
                Ok(resp.map(|b| PooledBody::new(b, slot)))
            }
            Err(e) => Err(SendError::Connect(e, req)),
        }
    }
}

/// Whether an idle connection is still usable: nothing readable (an idle HTTP/1.1 upstream
/// sends nothing; readable means closed, reset or garbage). Readiness is checked first, so the
/// usual case costs no syscall.
fn looks_open(s: &TcpStream) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match s.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut b = [0u8; 1];
            matches!(s.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        }
    }
}

/// A response body that hands its connection back to the pool once fully read.
pub struct PooledBody {
    inner: Incoming,
    slot: Option<(Arc<Pool>, Key, http1::SendRequest<UpBody>)>,
}

impl PooledBody {
    fn new(inner: Incoming, slot: Option<(Arc<Pool>, Key, http1::SendRequest<UpBody>)>) -> Self {
        let mut b = PooledBody { inner, slot };
        if b.inner.is_end_stream() {
            b.release();
        }
        b
    }
    fn release(&mut self) {
        if let Some((pool, key, s)) = self.slot.take() {
            pool.put(key, s);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            Poll::Ready(Some(Err(_))) => self.slot = None,
            _ => {}
        }
        r
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
