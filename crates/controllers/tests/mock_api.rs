//! The controllers against a mock API server (a tower service, no network, no kube-apiserver):
//! from a listed Service and a ready Pod, the EndpointSlice controller writes the slice and the
//! Endpoints object the way upstream does; the ReplicaSet controller creates the pods it owns.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use serde_json::{json, Value};
use tokio::sync::mpsc;

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

fn full(v: &Value) -> Body {
    http_body_util::Full::new(Bytes::from(v.to_string())).boxed_unsync()
}

fn list_kind(path: &str) -> (&'static str, &'static str) {
    match path.rsplit('/').next().unwrap_or("") {
        "pods" => ("PodList", "v1"),
        "services" => ("ServiceList", "v1"),
        "endpoints" => ("EndpointsList", "v1"),
        "nodes" => ("NodeList", "v1"),
        "namespaces" => ("NamespaceList", "v1"),
        "serviceaccounts" => ("ServiceAccountList", "v1"),
        "endpointslices" => ("EndpointSliceList", "discovery.k8s.io/v1"),
        "replicasets" => ("ReplicaSetList", "apps/v1"),
        "deployments" => ("DeploymentList", "apps/v1"),
        "daemonsets" => ("DaemonSetList", "apps/v1"),
        "leases" => ("LeaseList", "coordination.k8s.io/v1"),
        _ => ("List", "v1"),
    }
}

/// A mock API: GET lists come from `lists` (by plural resource name), watches stay open and
/// silent, writes are recorded on the returned channel and echoed back as stored.
fn mock_api(lists: Vec<(&'static str, Value)>) -> (kube::Client, mpsc::UnboundedReceiver<(String, String, Value)>) {
    let (writes_tx, writes_rx) = mpsc::unbounded_channel::<(String, String, Value)>();
    let lists = std::sync::Arc::new(lists);
    let mock = tower::service_fn(move |req: Request<kube::client::Body>| {
        let writes = writes_tx.clone();
        let lists = lists.clone();
        async move {
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or("").to_string();
            if method == Method::GET && query.contains("watch=true") {
                let pending = futures::stream::pending::<Result<http_body::Frame<Bytes>, Infallible>>();
                return Ok::<_, Infallible>(Response::builder().status(200).body(StreamBody::new(pending).boxed_unsync()).expect("response"));
            }
            if method == Method::GET {
                let (kind, api_version) = list_kind(&path);
                let plural = path.rsplit('/').next().unwrap_or("");
                let items = lists.iter().find(|(p, _)| *p == plural).map(|(_, v)| v.clone()).unwrap_or(json!([]));
                let body = json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items});
                return Ok(Response::builder().status(200).body(full(&body)).expect("response"));
            }
            let bytes = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
            let mut obj: Value = serde_json::from_slice(&bytes).unwrap_or(json!({}));
            if obj.get("metadata").is_some() {
                obj["metadata"]["resourceVersion"] = json!("2");
                if obj["metadata"].get("name").is_none() {
                    let generated = format!("{}abcde", obj["metadata"]["generateName"].as_str().unwrap_or("x-"));
                    obj["metadata"]["name"] = json!(generated);
                }
            }
            let _ = writes.send((method.to_string(), path, obj.clone()));
            let code = if method == Method::POST { 201 } else { 200 };
            Ok(Response::builder().status(code).body(full(&obj)).expect("response"))
        }
    });
    (kube::Client::new(mock, "default"), writes_rx)
}

#[tokio::test]
async fn replicaset_creates_its_pods_with_owner_references() {
    let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "web-5d8f", "namespace": "default", "uid": "rs-uid", "resourceVersion": "1", "generation": 1},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}});
    let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default", "uid": "ns", "resourceVersion": "1"}, "status": {"phase": "Active"}});
    let (client, mut writes) = mock_api(vec![("replicasets", json!([rs])), ("namespaces", json!([namespace]))]);
    let task = tokio::spawn(dari_controllers::run_controllers(client, dari_controllers::ControllersConfig { workers: 1, ..Default::default() }));
    let mut pods = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while pods.len() < 2 {
        let (method, path, obj) = tokio::time::timeout_at(deadline, writes.recv()).await.expect("pods created within 10 s").expect("channel");
        if method == "POST" && path == "/api/v1/namespaces/default/pods" {
            pods.push(obj);
        }
    }
    task.abort();
    for p in &pods {
        assert_eq!(p["metadata"]["generateName"], "web-5d8f-");
        assert_eq!(p["metadata"]["labels"]["app"], "web");
        let owner = &p["metadata"]["ownerReferences"][0];
        assert_eq!((owner["kind"].as_str(), owner["name"].as_str(), owner["uid"].as_str(), owner["controller"].as_bool()), (Some("ReplicaSet"), Some("web-5d8f"), Some("rs-uid"), Some(true)));
        assert_eq!(p["spec"]["containers"][0]["image"], "nginx");
    }
}

#[tokio::test]
async fn endpointslice_and_endpoints_from_a_mock_api() {
    let service = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "svc-clusterip", "namespace": "default", "uid": "svc-uid", "resourceVersion": "1"},
        "spec": {"clusterIP": "10.96.0.50", "selector": {"app": "webpod"},
                 "ports": [{"name": "svc-webport", "port": 9000, "targetPort": 80, "protocol": "TCP"}]}});
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "webpod1", "namespace": "default", "uid": "pod-uid", "resourceVersion": "1", "labels": {"app": "webpod"}},
        "spec": {"nodeName": "myk8s-worker", "containers": [{"name": "c", "image": "traefik/whoami"}]},
        "status": {"phase": "Running", "podIP": "10.244.1.2", "podIPs": [{"ip": "10.244.1.2"}],
                   "conditions": [{"type": "Ready", "status": "True"}]}});
    let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default", "uid": "ns", "resourceVersion": "1"}, "status": {"phase": "Active"}});
    let (client, mut writes_rx) = mock_api(vec![("services", json!([service])), ("pods", json!([pod])), ("namespaces", json!([namespace]))]);
    let cfg = dari_controllers::ControllersConfig { workers: 1, ..Default::default() };
    let task = tokio::spawn(dari_controllers::run_controllers(client, cfg));

    let (mut slice, mut endpoints) = (None, None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while slice.is_none() || endpoints.is_none() {
        let (method, path, obj) = tokio::time::timeout_at(deadline, writes_rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no EndpointSlice/Endpoints write within 10 s (slice {slice:?}, endpoints {endpoints:?})"))
            .expect("writes channel open");
        if path.ends_with("/namespaces/default/endpointslices") && method == "POST" {
            slice = Some(obj);
        } else if path.ends_with("/namespaces/default/endpoints") && method == "POST" {
            endpoints = Some(obj);
        }
    }
    task.abort();
    let slice = slice.expect("slice");
    assert_eq!(slice["metadata"]["labels"]["kubernetes.io/service-name"], "svc-clusterip");
    assert_eq!(slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"], "endpointslice-controller.k8s.io");
    assert_eq!(slice["addressType"], "IPv4");
    assert_eq!(slice["ports"][0]["port"], 80, "targetPort resolved: {slice}");
    assert_eq!(slice["ports"][0]["name"], "svc-webport");
    assert_eq!(slice["endpoints"][0]["addresses"][0], "10.244.1.2");
    assert_eq!(slice["endpoints"][0]["conditions"]["ready"], true);
    assert_eq!(slice["endpoints"][0]["nodeName"], "myk8s-worker");
    let endpoints = endpoints.expect("endpoints");
    assert_eq!(endpoints["subsets"][0]["addresses"][0]["ip"], "10.244.1.2");
    assert_eq!(endpoints["subsets"][0]["ports"][0]["port"], 80);
}
