//! Hand-built bodies for the value forms the captured kubectl commands don't reach, and random bytes.

use dari_kubeproto::{decode, decode_object, kinds, ProtoError};
use proptest::prelude::*;
use serde_json::{json, Value};

/// Minimal protobuf writer for tests.
#[derive(Default)]
struct W(Vec<u8>);

impl W {
    fn varint(mut self, tag: u32, v: u64) -> Self {
        self.key(tag, 0);
        self.raw_varint(v);
        self
    }
    fn bytes(mut self, tag: u32, b: &[u8]) -> Self {
        self.key(tag, 2);
        self.raw_varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    fn msg(self, tag: u32, m: W) -> Self {
        self.bytes(tag, &m.0)
    }
    fn str(self, tag: u32, s: &str) -> Self {
        self.bytes(tag, s.as_bytes())
    }
    fn key(&mut self, tag: u32, wt: u8) {
        self.raw_varint(u64::from(tag) << 3 | u64::from(wt));
    }
    fn raw_varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
}

fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let mut b = b"k8s\0".to_vec();
    b.extend(
        W::default()
            .msg(1, W::default().str(1, api_version).str(2, kind))
            .bytes(2, raw)
            .0,
    );
    b
}

#[test]
fn pointer_zero_values_are_kept_and_value_zero_values_dropped() {
    // Deployment{spec{replicas=0 (*int32), minReadySeconds=0 (int32,omitempty), paused=false}}
    let spec = W::default().varint(1, 0).varint(5, 0).varint(7, 0);
    let body = envelope("apps/v1", "Deployment", &W::default().msg(2, spec).0);
    let got = decode(&body).expect("decode");
    assert_eq!(
        got["spec"],
        json!({"replicas": 0, "template": {"metadata": {"creationTimestamp": null}, "spec": {"containers": null}}, "strategy": {}, "selector": null})
    );
    assert!(
        got.get("metadata").is_some(),
        "non-pointer metadata is always emitted: {got}"
    );
}

#[test]
fn times_intorstring_quantity_secret_bytes() {
    // Pod metadata.creationTimestamp {seconds=1700000000}, deletionTimestamp {} (pointer, zero → null).
    let meta = W::default()
        .str(1, "p")
        .msg(8, W::default().varint(1, 1_700_000_000).varint(2, 5))
        .msg(9, W::default());
    // container {name=c, ports: [{containerPort=80}], resources{limits{cpu: 500m}},
    //            livenessProbe{handler{httpGet{port: "http"}}}}
    let limits = W::default()
        .str(1, "cpu")
        .msg(2, W::default().str(1, "500m"));
    let http_get = W::default().msg(2, W::default().varint(1, 1).str(3, "http"));
    let probe = W::default().msg(1, W::default().msg(2, http_get));
    let c = W::default()
        .str(1, "c")
        .msg(6, W::default().varint(3, 80))
        .msg(8, W::default().msg(1, limits))
        .msg(10, probe);
    let spec = W::default().msg(2, c);
    let got = decode(&envelope(
        "v1",
        "Pod",
        &W::default().msg(1, meta).msg(2, spec).0,
    ))
    .expect("decode");
    assert_eq!(
        got["metadata"]["creationTimestamp"],
        json!("2023-11-14T22:13:20Z")
    );
    assert_eq!(got["metadata"]["deletionTimestamp"], Value::Null);
    let c = &got["spec"]["containers"][0];
    assert_eq!(c["ports"], json!([{"containerPort": 80}]));
    assert_eq!(c["resources"], json!({"limits": {"cpu": "500m"}}));
    assert_eq!(
        c["livenessProbe"]["httpGet"]["port"],
        json!("http"),
        "ProbeHandler is inline: {c}"
    );

    // Secret data is map<string, bytes> → base64; an empty value stays "".
    let data = W::default().str(1, "k").bytes(2, &[0xff, 0x00, b'v']);
    let empty = W::default().str(1, "e").bytes(2, b"");
    let got = decode(&envelope(
        "v1",
        "Secret",
        &W::default().msg(2, data).msg(2, empty).0,
    ))
    .expect("decode");
    assert_eq!(got["data"], json!({"e": "", "k": "/wB2"}));

    // Lease spec.renewTime is a MicroTime.
    let spec = W::default().msg(
        4,
        W::default().varint(1, 1_700_000_000).varint(2, 123_456_789),
    );
    let got = decode(&envelope(
        "coordination.k8s.io/v1",
        "Lease",
        &W::default().msg(2, spec).0,
    ))
    .expect("decode");
    assert_eq!(
        got["spec"]["renewTime"],
        json!("2023-11-14T22:13:20.123456Z")
    );
}

#[test]
fn bad_values_are_errors() {
    // IntOrString type 7.
    let port = W::default().str(1, "p").msg(4, W::default().varint(1, 7));
    let spec = W::default().msg(1, port);
    let e = decode(&envelope("v1", "Service", &W::default().msg(2, spec).0)).expect_err("type 7");
    assert!(
        matches!(&e, ProtoError::InvalidValue { path, .. } if path == ".spec.ports[0].targetPort"),
        "{e}"
    );
    // metadata (tag 1, a message) sent as a varint.
    let e =
        decode(&envelope("v1", "ConfigMap", &W::default().varint(1, 3).0)).expect_err("wire type");
    assert!(
        matches!(&e, ProtoError::WrongWireType { tag: 1, got: 0, path, .. } if path == ".metadata"),
        "{e}"
    );
    // Length past the end.
    let e = decode_object("v1", "ConfigMap", &[0x0a, 0x05, 0x0a]).expect_err("truncated");
    assert!(matches!(e, ProtoError::Malformed { .. }), "{e}");
    // RawExtension (ControllerRevision.data) holding bytes that are not JSON.
    let e = decode(&envelope(
        "apps/v1",
        "ControllerRevision",
        &W::default().msg(2, W::default().str(1, "{nope")).0,
    ))
    .expect_err("bad json");
    assert!(matches!(e, ProtoError::EmbeddedJson { .. }), "{e}");
}

#[test]
fn unknown_fields_are_skipped() {
    let body = envelope(
        "v1",
        "ConfigMap",
        &W::default().varint(99, 1).str(100, "x").0,
    );
    assert_eq!(
        decode(&body).expect("decode"),
        json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"creationTimestamp": null}})
    );
}

#[test]
fn covers_the_brief_kinds() {
    let ks: Vec<_> = kinds().collect();
    for k in [
        ("v1", "Pod"),
        ("apps/v1", "Deployment"),
        ("autoscaling/v1", "Scale"),
        ("batch/v1", "CronJob"),
        ("policy/v1", "Eviction"),
        ("v1", "Binding"),
        ("v1", "DeleteOptions"),
        ("networking.k8s.io/v1", "Ingress"),
    ] {
        assert!(ks.contains(&k), "{k:?} missing");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..400), k in 0usize..48) {
        let ks: Vec<_> = kinds().collect();
        let (av, kind) = ks[k % ks.len()];
        let _ = decode_object(av, kind, &raw);
        let _ = decode(&envelope(av, kind, &raw));
        let mut b = b"k8s\0".to_vec();
        b.extend_from_slice(&raw);
        let _ = decode(&b);
    }

    #[test]
    fn mutated_real_bodies_never_panic(idx in 0usize..1000, flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let mut files: Vec<_> = std::fs::read_dir(dir).expect("data").filter_map(|e| e.ok()).map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "pb")).collect();
        files.sort();
        let mut b = std::fs::read(&files[idx % files.len()]).expect("read");
        for (at, byte) in flips {
            let n = b.len();
            b[at % n] = byte;
        }
        let _ = decode(&b);
    }
}
