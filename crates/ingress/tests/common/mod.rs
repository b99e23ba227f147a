//! Object builders shared by the tests.
#![allow(dead_code)]

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use serde_json::{json, Value};

pub fn ingress(v: Value) -> Ingress {
    serde_json::from_value(v).expect("ingress json")
}

/// An Ingress from YAML text.
pub fn ingress_yaml(y: &str) -> Ingress {
    serde_yaml::from_str(y).expect("ingress yaml")
}

/// Service `name` in `default` with one port `port` (named `http`) -> targetPort.
pub fn service(name: &str, port: i32, target: i32) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"ports": [{"name": "http", "port": port, "targetPort": target, "protocol": "TCP"}]}
    }))
    .expect("service")
}

/// EndpointSlice for service `name` with `addrs` (ip, ready) on port `port` (named `http`).
pub fn slice(name: &str, port: u16, addrs: &[(&str, bool)]) -> EndpointSlice {
    let eps: Vec<Value> = addrs
        .iter()
        .map(|(ip, ready)| json!({"addresses": [ip], "conditions": {"ready": ready}}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{name}-abc"), "namespace": "default",
                      "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": eps
    }))
    .expect("slice")
}

pub fn class(name: &str, controller: &str, default: bool) -> IngressClass {
    let mut v = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": name},
        "spec": {"controller": controller}
    });
    if default {
        v["metadata"]["annotations"] = json!({"ingressclass.kubernetes.io/is-default-class": "true"});
    }
    serde_json::from_value(v).expect("class")
}

pub fn tls_secret(name: &str, crt_pem: &str, key_pem: &str) -> Secret {
    use k8s_openapi::ByteString;
    let mut s = Secret::default();
    s.metadata.name = Some(name.into());
    s.metadata.namespace = Some("default".into());
    s.type_ = Some("kubernetes.io/tls".into());
    s.data = Some(
        [
            ("tls.crt".to_string(), ByteString(crt_pem.as_bytes().to_vec())),
            ("tls.key".to_string(), ByteString(key_pem.as_bytes().to_vec())),
        ]
        .into_iter()
        .collect(),
    );
    s
}

/// A self-signed certificate for `hosts`: (cert PEM, key PEM).
pub fn self_signed(hosts: &[&str]) -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
        .expect("rcgen");
    (ck.cert.pem(), ck.signing_key.serialize_pem())
}

/// One EndpointSlice per address (ports differ on loopback), all ready, port named `http`.
pub fn slices_for(name: &str, addrs: &[std::net::SocketAddr]) -> Vec<EndpointSlice> {
    addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            serde_json::from_value(json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{name}-{i}"), "namespace": "default",
                              "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": a.port(), "protocol": "TCP"}],
                "endpoints": [{"addresses": [a.ip().to_string()], "conditions": {"ready": true}}]
            }))
            .expect("slice")
        })
        .collect()
}

/// Echoes every byte of an upgraded (WebSocket) upstream connection until it closes.
pub fn spawn_upgrade_echo(on: hyper::upgrade::OnUpgrade) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::spawn(async move {
        if let Ok(up) = on.await {
            let mut io = hyper_util::rt::TokioIo::new(up);
            let mut buf = [0u8; 1024];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    });
}
