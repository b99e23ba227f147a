//! The node's streaming endpoint (the kubelet's :10250 role) for the API server to proxy
//! `pods/log`, `pods/exec`, `pods/attach` and `pods/portforward` to.
//!
//! HTTPS (HTTP/1.1) with the node's serving certificate ([`StreamTls`], from the join). Every
//! path but `/healthz` requires a client certificate signed by the cluster CA whose user is
//! [`API_SERVER_CLIENT`] (what the API server presents, like kube-apiserver's
//! `--kubelet-client-certificate`): no certificate is 401, any other user (an admin, a node) 403.
//! A certificate from another CA fails the TLS handshake.
//!
//! ```text
//! GET  /containerLogs/{ns}/{pod}/{container}?follow=&previous=&tailLines=&timestamps=&limitBytes=
//!      → 200 text/plain, the container's output (CRI log file decoded); follow streams until
//!        the container stops or the client goes away.
//! GET|POST /exec/{ns}/{pod}/{container}?command=sh&command=-c&command=...&stdin=1&stdout=1&stderr=1&tty=1
//! GET|POST /attach/{ns}/{pod}/{container}?stdin=1&stdout=1&stderr=1&tty=1
//! GET|POST /portforward/{ns}/{pod}
//!      → the request (with its Upgrade: SPDY/3.1 or websocket headers and
//!        X-Stream-Protocol-Version / Sec-WebSocket-Protocol) is relayed byte for byte to
//!        containerd's CRI streaming server (CRI Exec/Attach/PortForward gives the URL), so the
//!        client speaks the remotecommand protocol with containerd through the agent.
//! GET  /healthz → ok
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::cri::{v1, Cri};
use crate::error::{AgentError, Result};
use crate::pod::translate::labels;

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Query parameters (repeated keys kept in order).
    pub query: Vec<(String, String)>,
    /// The raw head bytes (request line + headers + CRLFCRLF).
    pub raw: Vec<u8>,
}

impl Head {
    fn q(&self, k: &str) -> Option<&str> {
        self.query.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.as_str())
    }
    fn flag(&self, k: &str) -> bool {
        matches!(self.q(k), Some("1") | Some("true") | Some("True") | Some(""))
    }
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |x: u8| (x as char).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `METHOD /path?query HTTP/1.1` plus headers (pure).
pub fn parse_head(raw: &[u8]) -> Option<Head> {
    let text = std::str::from_utf8(raw).ok()?;
    let line = text.lines().next()?;
    let mut parts = line.split(' ');
    let method = parts.next()?.to_string();
    let target = parts.next()?;
    let (path, qs) = target.split_once('?').unwrap_or((target, ""));
    let query = qs
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (pct_decode(k), pct_decode(v))
        })
        .collect();
    Some(Head { method, path: pct_decode(path), query, raw: raw.to_vec() })
}

/// One decoded line of a CRI log file (`<RFC3339Nano> <stream> <P|F> <content>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Timestamp as written by containerd.
    pub time: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// Partial (`P`: no newline at the end) or full.
    pub partial: bool,
    /// Content without the trailing newline.
    pub content: String,
}

/// Decodes a CRI log line (pure).
pub fn parse_log_line(l: &str) -> Option<LogLine> {
    let mut it = l.splitn(4, ' ');
    let time = it.next()?.to_string();
    let stream = it.next()?.to_string();
    let tag = it.next()?;
    let content = it.next().unwrap_or("").to_string();
    Some(LogLine { time, stream, partial: tag.starts_with('P'), content })
}

/// Renders decoded lines as kubectl shows them (optionally `TIMESTAMP ` prefixed).
pub fn render_log(line: &LogLine, timestamps: bool) -> String {
    let mut s = String::new();
    if timestamps {
        s.push_str(&line.time);
        s.push(' ');
    }
    s.push_str(&line.content);
    if !line.partial {
        s.push('\n');
    }
    s
}

/// The user the API server authenticates as when it calls a node (CN of its kubelet client
/// certificate, O=system:masters): [`dari_pki::KUBELET_CLIENT_USER`], shared with the API server.
pub const API_SERVER_CLIENT: &str = dari_pki::KUBELET_CLIENT_USER;

/// TLS material of the streaming endpoint, all PEM.
#[derive(Clone)]
pub struct StreamTls {
    /// The cluster CA: client certificates must be signed by it.
    pub ca_pem: String,
    /// The node's serving certificate (SANs: node name and IP).
    pub cert_pem: String,
    /// Its key.
    pub key_pem: String,
}

impl std::fmt::Debug for StreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamTls").field("key_pem", &"[elided]").finish_non_exhaustive()
    }
}

impl StreamTls {
    /// The rustls server config: this serving certificate, ALPN http/1.1, client certificates
    /// verified against the CA but optional (so that a missing one is answered 401, not a
    /// handshake failure).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        let bad = |what: &str, e: String| AgentError::Config(format!("streaming endpoint TLS: {what}: {e}"));
        let ca = CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).map_err(|e| bad("CA", e.to_string()))?;
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes()).collect::<std::result::Result<Vec<_>, _>>().map_err(|e| bad("serving certificate", e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| bad("serving key", e.to_string()))?;
        Self::server_config_from(&ca, chain, key)
    }

    pub(crate) fn server_config_from(ca: &CertificateDer<'_>, chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<Arc<rustls::ServerConfig>> {
        #[allow(deprecated)] // ring, as everywhere in dari
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = |what: &str| {
            let what = what.to_string();
            move |source| AgentError::Tls { what, source }
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned()).map_err(tls("cluster CA"))?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| AgentError::Config(format!("streaming endpoint TLS: client verifier: {e}")))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls("server config"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(tls("serving certificate and key"))?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

/// Who may call the endpoint (pure): `Ok` for the API server's kubelet client, else the HTTP
/// status and message (401 without a certificate, 403 for any other user).
pub fn authorize(user: Option<&dari_pki::UserInfo>) -> std::result::Result<(), (u16, String)> {
    match user {
        None => Err((401, "Unauthorized: a client certificate signed by the cluster CA is required\n".into())),
        Some(u) if u.name == API_SERVER_CLIENT => Ok(()),
        Some(u) => Err((403, format!("Forbidden: user {:?} may not use this node's streaming endpoint (only {API_SERVER_CLIENT})\n", u.name))),
    }
}

/// The streaming server.
pub struct StreamServer {
    cri: Arc<dyn Cri>,
    netns: Option<PathBuf>,
}

impl StreamServer {
    /// Binds `addr` and serves HTTPS with `tls` until the task is dropped. Returns the bound
    /// address. `netns`: containerd's network namespace when the agent runs outside it (its
    /// stream server listens on 127.0.0.1 there).
    pub async fn start(cri: Arc<dyn Cri>, addr: SocketAddr, netns: Option<PathBuf>, tls: &StreamTls) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config()?);
        let l = TcpListener::bind(addr).await.map_err(AgentError::io("binding stream server", addr.to_string()))?;
        let bound = l.local_addr().map_err(AgentError::io("stream server address", addr.to_string()))?;
        let srv = Arc::new(StreamServer { cri, netns });
        let h = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match l.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "stream server accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let srv = srv.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let conn = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                        Ok(Ok(c)) => c,
                        Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "stream TLS handshake failed"),
                        Err(_) => return tracing::debug!(%peer, "stream TLS handshake timed out"),
                    };
                    let user = match dari_pki::peer_identity(conn.get_ref().1) {
                        Ok(u) => u,
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "unusable client certificate");
                            None
                        }
                    };
                    if let Err(e) = srv.serve(conn, user).await {
                        tracing::debug!(%peer, error = %e, "stream connection");
                    }
                });
            }
        });
        Ok((bound, h))
    }

    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(&self, mut conn: S, user: Option<dari_pki::UserInfo>) -> Result<()> {
        let r = self.handle(&mut conn, user).await;
        // TLS close_notify: a close-delimited body (logs) ends cleanly for the client
        let _ = conn.shutdown().await;
        r
    }

    async fn handle<S: AsyncRead + AsyncWrite + Unpin>(&self, mut conn: &mut S, user: Option<dari_pki::UserInfo>) -> Result<()> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            let n = conn.read(&mut chunk).await.map_err(AgentError::io("reading request", "stream"))?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            if buf.len() > 64 * 1024 {
                return respond(&mut conn, 431, "request head too large\n").await;
            }
        };
        let rest = buf.split_off(head_end);
        let Some(head) = parse_head(&buf) else { return respond(&mut conn, 400, "bad request\n").await };
        let seg: Vec<&str> = head.path.trim_start_matches('/').split('/').collect();
        let span = tracing::info_span!("stream", method = %head.method, path = %head.path);
        let _e = span.enter();
        drop(_e);
        if seg.as_slice() != ["healthz"] {
            if let Err((code, msg)) = authorize(user.as_ref()) {
                tracing::info!(method = %head.method, path = %head.path, user = ?user.as_ref().map(|u| &u.name), code, "stream request refused");
                return respond(&mut conn, code, &msg).await;
            }
        }
        match seg.as_slice() {
            ["healthz"] => respond(&mut conn, 200, "ok\n").await,
            ["containerLogs", ns, pod, c] => self.logs(&mut conn, &head, ns, pod, c).await,
            ["exec", ns, pod, c] | ["attach", ns, pod, c] => {
                let Some(ctr) = self.find(ns, pod, c, false).await? else { return respond(&mut conn, 404, &format!("container {c} of pod {ns}/{pod} not found on this node\n")).await };
                let url = if seg[0] == "exec" {
                    let cmd: Vec<String> = head.query.iter().filter(|(k, _)| k == "command").map(|(_, v)| v.clone()).collect();
                    self.cri.exec(v1::ExecRequest { container_id: ctr.id, cmd, tty: head.flag("tty"), stdin: head.flag("stdin"), stdout: head.flag("stdout"), stderr: head.flag("stderr") }).await?
                } else {
                    self.cri.attach(v1::AttachRequest { container_id: ctr.id, stdin: head.flag("stdin"), tty: head.flag("tty"), stdout: head.flag("stdout"), stderr: head.flag("stderr") }).await?
                };
                relay(conn, &head, &rest, &url, self.netns.as_deref()).await
            }
            ["portforward", ns, pod] => {
                let sandboxes = self.cri.list_pod_sandboxes().await?;
                let Some(sb) = sandboxes.into_iter().find(|s| s.state == v1::PodSandboxState::SandboxReady as i32 && s.labels.get(labels::POD_NAMESPACE).map(String::as_str) == Some(*ns) && s.labels.get(labels::POD_NAME).map(String::as_str) == Some(*pod)) else {
                    return respond(&mut conn, 404, &format!("pod {ns}/{pod} not found on this node\n")).await;
                };
                let url = self.cri.port_forward(v1::PortForwardRequest { pod_sandbox_id: sb.id, port: vec![] }).await?;
                relay(conn, &head, &rest, &url, self.netns.as_deref()).await
            }
            _ => respond(&mut conn, 404, "not found\n").await,
        }
    }

    /// The current (or previous) attempt of a container, by labels.
    async fn find(&self, ns: &str, pod: &str, c: &str, previous: bool) -> Result<Option<v1::Container>> {
        let mut all: Vec<v1::Container> = self
            .cri
            .list_containers(None)
            .await?
            .into_iter()
            .filter(|x| {
                x.labels.get(labels::POD_NAMESPACE).map(String::as_str) == Some(ns) && x.labels.get(labels::POD_NAME).map(String::as_str) == Some(pod) && x.labels.get(labels::CONTAINER_NAME).map(String::as_str) == Some(c)
            })
            .collect();
        all.sort_by_key(|x| std::cmp::Reverse(x.created_at));
        Ok(if previous { all.into_iter().nth(1) } else { all.into_iter().next() })
    }

    async fn logs<S: AsyncRead + AsyncWrite + Unpin>(&self, conn: &mut S, head: &Head, ns: &str, pod: &str, c: &str) -> Result<()> {
        let previous = head.flag("previous");
        let Some(ctr) = self.find(ns, pod, c, previous).await? else {
            let what = if previous { "previous terminated container" } else { "container" };
            return respond(conn, 404, &format!("{what} \"{c}\" in pod \"{pod}\" not found\n")).await;
        };
        let st = self.cri.container_status(&ctr.id).await?;
        let path = PathBuf::from(&st.log_path);
        let follow = head.flag("follow");
        let timestamps = head.flag("timestamps");
        let tail: Option<usize> = head.q("tailLines").and_then(|v| v.parse().ok());
        let mut limit: Option<usize> = head.q("limitBytes").and_then(|v| v.parse().ok());
        conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\nCache-Control: no-cache\r\n\r\n").await.map_err(AgentError::io("writing", "stream"))?;
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(_) => return Ok(()),
        };
        let mut r = BufReader::new(file);
        // tailLines: read everything once and keep the last N full lines
        let mut start_lines: Vec<String> = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            let n = r.read_line(&mut line).await.map_err(AgentError::io("reading", &path))?;
            if n == 0 || !line.ends_with('\n') {
                if n > 0 {
                    // incomplete line at EOF: re-read it later
                    let back = n as i64;
                    let _ = r.seek(std::io::SeekFrom::Current(-back)).await;
                }
                break;
            }
            start_lines.push(line.trim_end_matches('\n').to_string());
        }
        if let Some(t) = tail {
            let skip = start_lines.len().saturating_sub(t);
            start_lines.drain(..skip);
        }
        for l in &start_lines {
            if let Some(ll) = parse_log_line(l) {
                if !write_limited(conn, render_log(&ll, timestamps).as_bytes(), &mut limit).await {
                    return Ok(());
                }
            }
        }
        if !follow {
            return Ok(());
        }
        loop {
            line.clear();
            let n = r.read_line(&mut line).await.map_err(AgentError::io("reading", &path))?;
            if n > 0 && line.ends_with('\n') {
                if let Some(ll) = parse_log_line(line.trim_end_matches('\n')) {
                    if !write_limited(conn, render_log(&ll, timestamps).as_bytes(), &mut limit).await {
                        return Ok(());
                    }
                }
                continue;
            }
            if n > 0 {
                let _ = r.seek(std::io::SeekFrom::Current(-(n as i64))).await;
            }
            let running = matches!(self.cri.container_status(&ctr.id).await, Ok(s) if s.state == v1::ContainerState::ContainerRunning as i32);
            if !running {
                return Ok(());
            }
            // detect a closed client while idle
            let mut probe = [0u8; 1];
            match tokio::time::timeout(Duration::from_millis(200), conn.read(&mut probe)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(()),
                _ => {}
            }
        }
    }
}

async fn write_limited<S: AsyncWrite + Unpin>(conn: &mut S, data: &[u8], limit: &mut Option<usize>) -> bool {
    let data = match limit {
        Some(0) => return false,
        Some(l) => {
            let n = (*l).min(data.len());
            *l -= n;
            &data[..n]
        }
        None => data,
    };
    conn.write_all(data).await.is_ok()
}

async fn respond<S: AsyncWrite + Unpin>(conn: &mut S, code: u16, body: &str) -> Result<()> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    };
    let msg = format!("HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    conn.write_all(msg.as_bytes()).await.map_err(AgentError::io("writing", "stream"))
}

/// Rewrites the request line to containerd's streaming URL (keeping method, headers and any
/// bytes already read) and copies both directions until either side closes.
async fn relay<S: AsyncRead + AsyncWrite + Unpin>(mut client: S, head: &Head, rest: &[u8], url: &str, netns: Option<&std::path::Path>) -> Result<()> {
    let (hostport, path) = split_url(url).ok_or_else(|| AgentError::Config(format!("CRI returned an unusable stream URL {url:?}")))?;
    let sa: SocketAddr = hostport.parse().map_err(|_| AgentError::Config(format!("CRI stream URL {url:?} has no IP:port")))?;
    let mut upstream = crate::netns::connect(sa, netns, Duration::from_secs(5)).await.map_err(AgentError::io("connecting to CRI stream server", hostport.clone()))?;
    let text = String::from_utf8_lossy(&head.raw);
    let mut lines = text.split("\r\n");
    let _ = lines.next();
    let mut out = format!("{} {} HTTP/1.1\r\n", head.method, path);
    for l in lines {
        if l.is_empty() {
            break;
        }
        if l.to_ascii_lowercase().starts_with("host:") {
            out.push_str(&format!("Host: {hostport}\r\n"));
        } else {
            out.push_str(l);
            out.push_str("\r\n");
        }
    }
    out.push_str("\r\n");
    upstream.write_all(out.as_bytes()).await.map_err(AgentError::io("writing to CRI stream server", hostport.clone()))?;
    upstream.write_all(rest).await.map_err(AgentError::io("writing to CRI stream server", hostport.clone()))?;
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    Ok(())
}

fn split_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("http://")?;
    let (hp, path) = rest.split_once('/').unwrap_or((rest, ""));
    Some((hp.to_string(), format!("/{path}")))
}

/// Query map helper for tests and callers building URLs.
pub fn query_map(h: &Head) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in &h.query {
        m.entry(k.clone()).or_default().push(v.clone());
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_and_queries() {
        let h = parse_head(b"POST /exec/default/bb/main?command=sh&command=-c&command=echo%20hi%3Bexit+3&stdin=1&tty=true HTTP/1.1\r\nHost: x\r\n\r\n").expect("head");
        assert_eq!(h.method, "POST");
        assert_eq!(h.path, "/exec/default/bb/main");
        assert_eq!(query_map(&h)["command"], vec!["sh", "-c", "echo hi;exit 3"]);
        assert!(h.flag("stdin") && h.flag("tty") && !h.flag("stderr"));
    }

    #[test]
    fn cri_log_lines() {
        let l = parse_log_line("2026-12-06T17:14:02.123456789Z stdout F hello world").expect("line");
        assert_eq!(render_log(&l, false), "hello world\n");
        assert_eq!(render_log(&l, true), "2026-12-06T17:14:02.123456789Z hello world\n");
        let p = parse_log_line("2026-12-06T17:14:02Z stderr P part").expect("line");
        assert_eq!(render_log(&p, false), "part");
        let empty = parse_log_line("2026-12-06T17:14:02Z stdout F").expect("line");
        assert_eq!(render_log(&empty, false), "\n");
    }

    #[test]
    fn stream_urls() {
        assert_eq!(split_url("http://127.0.0.1:4321/exec/AbC"), Some(("127.0.0.1:4321".into(), "/exec/AbC".into())));
        assert_eq!(split_url("https://x/y"), None);
    }
}
