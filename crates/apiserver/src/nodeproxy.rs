//! Proxying `pods/log` to the node agent (the kubelet's `/containerLogs/{ns}/{pod}/{container}`
//! on its port 10250, HTTPS with a serving certificate from the cluster CA), authenticating with
//! the client certificate CN=kube-apiserver-kubelet-client, O=system:masters.

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
pub async fn logs(api: &Api, tls: &Arc<rustls::ClientConfig>, pod: &Value, q: &Query) -> ApiResult<Response<Body>> {
    let name = pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    let ns = pod.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default");
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request(format!("pod {name} does not have a host assigned")))?;
    let containers: Vec<&str> = pod.pointer("/spec/containers").and_then(Value::as_array).map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect()).unwrap_or_default();
    let container = match q.get("container").filter(|c| !c.is_empty()) {
        Some(c) => c.to_string(),
        None if containers.len() == 1 => containers[0].to_string(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            )))
        }
    };
    if !containers.contains(&container.as_str()) {
        return Err(ApiError::bad_request(format!("container {container} is not valid for pod {name}")));
    }
    let (ip, port) = node_endpoint(api, node).await?;
    let mut qs: Vec<String> = Vec::new();
    for k in ["follow", "previous", "tailLines", "timestamps", "sinceSeconds", "limitBytes"] {
        if let Some(v) = q.get(k) {
            qs.push(format!("{k}={v}"));
        }
    }
    let path = format!("/containerLogs/{ns}/{name}/{container}{}{}", if qs.is_empty() { "" } else { "?" }, qs.join("&"));
    let unreachable = |e: String| ApiError::unavailable(format!("the node agent of {node} ({ip}:{port}) cannot be reached to serve the logs of {name}: {e}"));
    let tcp = tokio::net::TcpStream::connect((ip.as_str(), port)).await.map_err(|e| unreachable(e.to_string()))?;
    let server_name = rustls::pki_types::ServerName::try_from(ip.clone()).map_err(|e| unreachable(e.to_string()))?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone()).connect(server_name, tcp).await.map_err(|e| unreachable(e.to_string()))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| unreachable(e.to_string()))?;
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

