//! Fuzzes `dari_dns::wire::handle_packet` over UDP and TCP limits with a small cluster index: it must
//! never panic, and every reply must decode and fit the transport's limit. The allocation-free fast path
//! (`dari_dns::fast::try_answer`) must either decline or give exactly the general path's bytes.
#![no_main]

use std::sync::OnceLock;

use dari_dns::config::AnswerConfig;
use dari_dns::wire::{handle_packet, Handled, Transport};
use dari_dns::ClusterIndex;
use libfuzzer_sys::fuzz_target;

fn index() -> &'static ClusterIndex {
    static INDEX: OnceLock<ClusterIndex> = OnceLock::new();
    INDEX.get_or_init(|| {
        let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "nginx", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.50", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
        }))
        .unwrap();
        let headless: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "prod"},
            "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
        }))
        .unwrap();
        let eps: Vec<_> = (0..60)
            .map(|i| serde_json::json!({"addresses": [format!("10.244.0.{i}")], "hostname": format!("web-{i}")}))
            .collect();
        let slice: k8s_openapi::api::discovery::v1::EndpointSlice = serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-1", "namespace": "prod", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": eps
        }))
        .unwrap();
        ClusterIndex::build(&[svc, headless], &[slice], &[])
    })
}

fuzz_target!(|data: &[u8]| {
    let cfg = AnswerConfig::default();
    let mut out = Vec::new();
    for (transport, limit) in [(Transport::Udp, 1232usize), (Transport::Tcp, 65_535)] {
        let general = handle_packet(data, transport, index(), &cfg);
        if dari_dns::fast::try_answer(data, transport, index(), &cfg, &mut out) {
            assert_eq!(general, Handled::Reply(out.clone()), "fast path disagrees");
        }
        if let Handled::Reply(bytes) = general {
            assert!(bytes.len() <= limit, "reply of {} bytes over {limit}", bytes.len());
            assert!(bytes.len() >= 12);
            assert!(hickory_decode_ok(&bytes), "reply does not decode");
        }
    }
});

fn hickory_decode_ok(bytes: &[u8]) -> bool {
    // FORMERR replies built from the raw header have no sections and always decode
    dari_dns::wire::decodes(bytes)
}
