//! The controller against a mock API server (a tower service answering list and watch
//! requests): the first sync is full and carries the listed Service; a watch event then leads to
//! an incremental sync. Applied through the RecordingApplier fake; no root needed.

#![allow(clippy::unwrap_used)]
mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use dari_proxy::server::ProxyServer;
use dari_proxy::sync::ConntrackFlush;
use dari_proxy::{ProxyConfig, ProxyError, RecordingApplier};
use futures::StreamExt;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeStatus};
use tokio::sync::mpsc;

struct NoConntrack;
impl ConntrackFlush for NoConntrack {
    fn flush_udp_endpoint(&self, _: std::net::IpAddr, _: u16) -> Result<(), ProxyError> {
        Ok(())
    }
}

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

fn list(kind: &str, api_version: &str, items: serde_json::Value) -> Body {
    let v = serde_json::json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items});
    http_body_util::Full::new(Bytes::from(v.to_string())).boxed_unsync()
}

#[tokio::test]
async fn full_then_incremental_sync_from_watch_events() {
    let (seed_svc, seed_slice) = {
        let s = service("default", "svc-clusterip", "10.200.1.10", &[tcp("svc-webport", 9000, 80)]);
        let e = slice("default", "svc-clusterip", "x", &[("svc-webport", "TCP", 80)], &[("10.10.1.2", "w1", Cond::Ready)]);
        (s, e)
    };
    let node = Node {
        metadata: meta("", "node1"),
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress { type_: "InternalIP".into(), address: "172.18.0.2".into() }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut node_json = serde_json::to_value(&node).unwrap();
    node_json["metadata"].as_object_mut().unwrap().remove("namespace");
    // The Service watch gets events from this channel; the others stay open and silent.
    let (svc_events_tx, svc_events_rx) = mpsc::unbounded_channel::<String>();
    let svc_events_rx = Arc::new(std::sync::Mutex::new(Some(svc_events_rx)));
    let seen_node_selector = Arc::new(std::sync::Mutex::new(String::new()));

    let svc_json = serde_json::to_value(&seed_svc).unwrap();
    let slice_json = serde_json::to_value(&seed_slice).unwrap();
    let sel = seen_node_selector.clone();
    let mock = tower::service_fn(move |req: Request<kube::client::Body>| {
        let uri = req.uri().clone();
        let path = uri.path().to_string();
        let query = uri.query().unwrap_or("").to_string();
        let watch = query.contains("watch=true");
        let body: Body = if watch {
            let rx = if path == "/api/v1/services" { svc_events_rx.lock().unwrap().take() } else { None };
            match rx {
                Some(rx) => StreamBody::new(
                    tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
                        .map(|line| Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(line)))),
                )
                .boxed_unsync(),
                None => StreamBody::new(futures::stream::pending::<Result<http_body::Frame<Bytes>, Infallible>>()).boxed_unsync(),
            }
        } else {
            match path.as_str() {
                "/api/v1/services" => list("ServiceList", "v1", serde_json::json!([svc_json.clone()])),
                "/apis/discovery.k8s.io/v1/endpointslices" => {
                    list("EndpointSliceList", "discovery.k8s.io/v1", serde_json::json!([slice_json.clone()]))
                }
                "/api/v1/nodes" => {
                    *sel.lock().unwrap() = query.clone();
                    list("NodeList", "v1", serde_json::json!([node_json.clone()]))
                }
                other => panic!("unexpected request {other}?{query}"),
            }
        };
        async move { Ok::<_, Infallible>(Response::builder().status(200).body(body).unwrap()) }
    });
    let client = kube::Client::new(mock, "default");
    let recorder = Arc::new(RecordingApplier::default());
    let server = ProxyServer {
        client,
        node_name: "node1".into(),
        config: ProxyConfig { cluster_cidrs: vec!["10.10.0.0/16".parse().unwrap()], ..ProxyConfig::default() },
        applier: recorder.clone(),
        conntrack: Arc::new(NoConntrack),
        min_sync_period: Duration::from_millis(10),
        full_sync_period: Duration::from_secs(3600),
    };
    let task = tokio::spawn(server.run());

    let wait_for = |n: usize| {
        let recorder = recorder.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let t = recorder.transactions();
                if t.len() >= n {
                    return t;
                }
                assert!(Instant::now() < deadline, "only {} transactions after 10s: {t:#?}", t.len());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let first = wait_for(1).await;
    let full = &first[0];
    assert!(full.contains("add table ip dari"), "first sync is not full:\n{full}");
    // The listed Service (no affinity): its one endpoint in the shared DNAT map, marked for
    // masquerade from outside the cluster CIDR.
    assert!(
        full.contains("add element ip dari service-dnat-tcp-1 { 10.200.1.10 . 9000 . 0 : 10.10.1.2 . 80 }"),
        "listed Service missing:\n{full}"
    );
    assert!(full.contains("add rule ip dari service-dnat-tcp-1 dnat ip to ip daddr . tcp dport . numgen random mod 1 map @service-dnat-tcp-1"), "DNAT rule missing");
    assert!(full.contains("add element ip dari masq-service-ips { 10.200.1.10 . tcp . 9000 }"), "masquerade mark missing");
    assert!(full.contains("add element ip dari nodeport-ips { 172.18.0.2 }"), "node address missing");
    assert!(seen_node_selector.lock().unwrap().contains("fieldSelector=metadata.name%3Dnode1"), "node watch not scoped");

    // A new Service arrives through the watch: one incremental transaction with just that.
    let mut added = serde_json::to_value(service("default", "web2", "10.200.1.20", &[tcp("http", 80, 80)])).unwrap();
    added["metadata"]["resourceVersion"] = "2".into();
    svc_events_tx.send(format!("{}\n", serde_json::json!({"type": "ADDED", "object": added}))).unwrap();
    let all = wait_for(2).await;
    let inc = &all[1];
    assert!(!inc.contains("add table"), "second sync should be incremental:\n{inc}");
    assert_eq!(
        inc.trim(),
        "add element ip dari cluster-ips { 10.200.1.20 }\nadd element ip dari no-endpoint-services { 10.200.1.20 . tcp . 80 : goto reject-chain }",
    );
    task.abort();
}

#[test]
fn show_words_parse() {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        a: dari_proxy::ProxyArgs,
    }
    use clap::Parser;
    let parse = |words: &[&str]| Cli::try_parse_from(std::iter::once("dari-proxy").chain(words.iter().copied())).unwrap().a;
    assert_eq!(parse(&["--node-name", "n"]).show_request(), Ok(None));
    assert_eq!(parse(&["show", "--node-name", "n"]).show_request(), Ok(Some(None)));
    let a = parse(&["show", "svc/web", "--node-name", "n", "-n", "shop"]);
    assert_eq!((a.show_request(), a.namespace.as_str()), (Ok(Some(Some("web".to_string()))), "shop"));
    assert_eq!(parse(&["--node-name", "n", "show", "web"]).show_request(), Ok(Some(Some("web".to_string()))));
    assert!(parse(&["show", "a/b/c", "--node-name", "n"]).show_request().is_err());
    assert!(parse(&["list", "--node-name", "n"]).show_request().is_err());
}
