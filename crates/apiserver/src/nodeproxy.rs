//! Proxying `pods/log`, `pods/exec`, `pods/attach` and `pods/portforward` to the node agent (the
//! kubelet's `/containerLogs/…`, `/exec/…`, `/attach/…`, `/portforward/…` on port 10250).
//!
//! The connections are HTTPS ([`KubeletClient`]): the agent's serving certificate (issued at
//! join, SANs node name and IP) is verified against the cluster CA for the node's InternalIP, and
//! the API server presents its kubelet client certificate (CN=[`KUBELET_CLIENT_USER`],
//! O=system:masters, like kube-apiserver's `--kubelet-client-certificate`), the only identity the
//! agent admits.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use http::{header, Response};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::http::{Body, Query};
use crate::rest::Api;

/// User name of the API server's kubelet client certificate (the agent admits only it).
pub use dari_pki::KUBELET_CLIENT_USER;

/// The API server's TLS client for node agents.
pub struct KubeletClient {
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for KubeletClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletClient").finish_non_exhaustive()
    }
}

/// A TLS connection to an agent.
pub type AgentConn = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

impl KubeletClient {
    /// Issues the kubelet client certificate (CN=[`KUBELET_CLIENT_USER`], O=system:masters,
    /// one year, kept in memory: a restart issues a new one) and builds a client trusting only
    /// the cluster CA.
    pub fn new(pki: &dari_pki::Pki) -> Result<KubeletClient, dari_pki::PkiError> {
        let (cert, key) = pki.issue_client_cert(KUBELET_CLIENT_USER, &[dari_pki::GROUP_MASTERS], 365)?;
        let mut cfg = (*pki.client_config(&cert, &key)?).clone();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(KubeletClient { tls: Arc::new(cfg) })
    }

    /// Connects to `host:port`, verifying the agent's serving certificate for `host` (an IP
    /// address, the node's InternalIP, or a DNS name).
    pub async fn connect(&self, host: &str, port: u16) -> Result<AgentConn, String> {
        let name = match host.parse::<IpAddr>() {
            Ok(ip) => rustls::pki_types::ServerName::IpAddress(ip.into()),
            Err(_) => rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| format!("{host}: {e}"))?,
        };
        let tcp = tokio::time::timeout(std::time::Duration::from_secs(10), tokio::net::TcpStream::connect((host, port)))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        tokio_rustls::TlsConnector::from(self.tls.clone()).connect(name, tcp).await.map_err(|e| format!("TLS with the agent: {e}"))
    }
}

/// Where a node's agent listens: InternalIP and the kubelet endpoint port.
pub async fn node_endpoint(api: &Api, node: &str) -> ApiResult<(String, u16)> {
    let nodes = dari_api::registry::find("", "v1", "nodes").ok_or_else(|| ApiError::internal("nodes not registered"))?;
    let n = api.get(nodes, None, node).await?;
    let ip = n
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|x| x["type"] == "InternalIP"))
        .and_then(|x| x["address"].as_str())
        .ok_or_else(|| ApiError::unavailable(format!("node {node} has no InternalIP address")))?
        .to_string();
    let port = n.pointer("/status/daemonEndpoints/kubeletEndpoint/Port").and_then(Value::as_u64).unwrap_or(10250) as u16;
    Ok((ip, port))
}

/// GET …/pods/{name}/log.
pub async fn logs(api: &Api, kubelet: &KubeletClient, pod: &Value, q: &Query) -> ApiResult<Response<Body>> {
    let (ns, name, node, container) = target(pod, q)?;
    let (ip, port) = node_endpoint(api, &node).await?;
    let mut qs: Vec<String> = Vec::new();
    for k in ["follow", "previous", "tailLines", "timestamps", "sinceSeconds", "limitBytes"] {
        if let Some(v) = q.get(k) {
            qs.push(format!("{k}={v}"));
        }
    }
    let path = format!("/containerLogs/{ns}/{name}/{container}{}{}", if qs.is_empty() { "" } else { "?" }, qs.join("&"));
    let unreachable = |e: String| ApiError::unavailable(format!("the node agent of {node} ({ip}:{port}) cannot be reached to serve the logs of {name}: {e}"));
    let tls = kubelet.connect(&ip, port).await.map_err(unreachable)?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| unreachable(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::builder()
        .uri(&path)
        .header(header::HOST, format!("{ip}:{port}"))
        .body(Empty::<Bytes>::new())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let resp = send.send_request(req).await.map_err(|e| unreachable(e.to_string()))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        return Err(ApiError::new(status.as_u16(), "BadRequest", String::from_utf8_lossy(&body).trim().to_string()));
    }
    // a broken upstream body ends the stream: the client sees a short log, as with kube-apiserver
    let frames = http_body_util::BodyStream::new(resp.into_body())
        .take_while(|r| futures::future::ready(r.is_ok()))
        .filter_map(|r| futures::future::ready(r.ok().map(Ok::<_, std::convert::Infallible>)));
    let body = http_body_util::StreamBody::new(frames).boxed_unsync();
    Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(body)
        .map_err(|e| ApiError::internal(e.to_string()))
}


/// The pod's node and the container a request names (or the only one).
fn target(pod: &Value, q: &Query) -> ApiResult<(String, String, String, String)> {
    let name = pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
    let ns = pod.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default").to_string();
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request(format!("pod {name} does not have a host assigned")))?
        .to_string();
    let containers: Vec<&str> = pod.pointer("/spec/containers").and_then(Value::as_array).map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect()).unwrap_or_default();
    let container = match q.get("container").filter(|c| !c.is_empty()) {
        Some(c) => c.to_string(),
        None if containers.len() == 1 => containers[0].to_string(),
        None => return Err(ApiError::bad_request(format!("a container name must be specified for pod {name}, choose one of: [{}]", containers.join(" ")))),
    };
    if !containers.contains(&container.as_str()) {
        return Err(ApiError::bad_request(format!("container {container} is not valid for pod {name}")));
    }
    Ok((ns, name, node, container))
}

/// exec / attach / portforward: relays the client's upgrade request (SPDY or WebSocket) to the
/// node agent and, once it answers 101, copies bytes both ways.
pub async fn upgrade(api: &Api, kubelet: &KubeletClient, pod: &Value, sub: &str, mut req: http::Request<hyper::body::Incoming>) -> ApiResult<Response<Body>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let q = Query::parse(req.uri().query());
    let (ns, name, node, container) = target(pod, &q)?;
    let (ip, port) = node_endpoint(api, &node).await?;
    let path = match sub {
        "portforward" => format!("/portforward/{ns}/{name}"),
        other => format!("/{other}/{ns}/{name}/{container}"),
    };
    let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
    let unreachable = |e: String| ApiError::unavailable(format!("the node agent of {node} ({ip}:{port}) cannot be reached for {sub} in {name}: {e}"));
    let mut tcp = kubelet.connect(&ip, port).await.map_err(unreachable)?;
    let mut head = format!("{} {path}{query} HTTP/1.1\r\nHost: {ip}:{port}\r\n", req.method());
    for (k, v) in req.headers() {
        if matches!(k.as_str(), "host" | "authorization" | "content-length") {
            continue;
        }
        if let Ok(v) = v.to_str() {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes()).await.map_err(|e| unreachable(e.to_string()))?;
    // read the response head
    let mut buf = Vec::with_capacity(1024);
    let end = loop {
        let mut chunk = [0u8; 1024];
        let n = tcp.read(&mut chunk).await.map_err(|e| unreachable(e.to_string()))?;
        if n == 0 {
            return Err(unreachable("connection closed before a response".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err(unreachable("response head too large".into()));
        }
    };
    let head_text = String::from_utf8_lossy(&buf[..end]).into_owned();
    let rest = buf[end..].to_vec();
    let mut lines = head_text.split("\r\n");
    let status: u16 = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok()).unwrap_or(502);
    let mut builder = Response::builder().status(status);
    for l in lines.filter(|l| !l.is_empty()) {
        if let Some((k, v)) = l.split_once(':') {
            builder = builder.header(k.trim(), v.trim());
        }
    }
    if status != 101 {
        // not upgraded: pass the agent's answer through
        let body = http_body_util::Full::new(Bytes::from(rest)).boxed_unsync();
        return builder.body(body).map_err(|e| ApiError::internal(e.to_string()));
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let mut client = TokioIo::new(upgraded);
                if !rest.is_empty() && client.write_all(&rest).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut tcp).await;
            }
            Err(e) => tracing::debug!(error = %e, "client upgrade failed"),
        }
    });
    builder.body(Empty::<Bytes>::new().map_err(|never| match never {}).boxed_unsync()).map_err(|e| ApiError::internal(e.to_string()))
}
