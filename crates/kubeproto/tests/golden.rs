//! Golden tests: real kubectl 1.32 protobuf bodies (captured by tests/capture/capture.py) must decode to
//! exactly what `kubectl ... --dry-run=client -o json` prints for the same command.

use std::fs;
use std::path::PathBuf;

use dari_kubeproto::{decode, ProtoError};
use serde_json::Value;

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn cases() -> Vec<(String, Vec<u8>, Value)> {
    let mut out = Vec::new();
    for e in fs::read_dir(data()).expect("tests/data") {
        let p = e.expect("dir entry").path();
        if p.extension().and_then(|x| x.to_str()) != Some("pb") {
            continue;
        }
        let name = p
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("name")
            .to_string();
        let pb = fs::read(&p).expect("read .pb");
        let json =
            fs::read(p.with_extension("json")).unwrap_or_else(|_| panic!("{name}.json missing"));
        out.push((
            name,
            pb,
            serde_json::from_slice(&json).expect("oracle json"),
        ));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(
        out.len() >= 10,
        "expected the captured kubectl bodies in tests/data, found {}",
        out.len()
    );
    out
}

#[test]
fn kubectl_bodies_decode_to_the_dry_run_json() {
    let mut failed = Vec::new();
    for (name, pb, want) in cases() {
        match decode(&pb) {
            // Compare the text too: same fields in the same (Go struct) order.
            Ok(got)
                if got == want
                    && serde_json::to_string(&got).ok() == serde_json::to_string(&want).ok() => {}
            Ok(got) => failed.push(format!(
                "{name}:\n got  {}\n want {}",
                serde_json::to_string(&got).unwrap_or_default(),
                serde_json::to_string(&want).unwrap_or_default()
            )),
            Err(e) => failed.push(format!("{name}: {e}")),
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn output_keeps_go_field_order() {
    let pb = fs::read(data().join("deployment.pb")).expect("deployment.pb");
    let got = serde_json::to_string(&decode(&pb).expect("decode")).expect("json");
    let want: Value =
        serde_json::from_slice(&fs::read(data().join("deployment.json")).expect("json"))
            .expect("json");
    assert_eq!(got, serde_json::to_string(&want).expect("json"));
}

#[test]
fn every_truncation_of_a_real_body_is_an_error_or_a_value_never_a_panic() {
    for (name, pb, _) in cases() {
        for n in 0..pb.len() {
            let _ = decode(&pb[..n]);
        }
        // Cutting inside the envelope's framing must be reported.
        assert!(
            decode(&pb[..pb.len() - 1]).is_err(),
            "{name}: truncated body decoded"
        );
    }
}

#[test]
fn missing_magic_and_unknown_kind() {
    assert_eq!(decode(b"{\"kind\":\"Pod\"}"), Err(ProtoError::MissingMagic));
    // typeMeta {apiVersion: "v9", kind: "Nope"}, raw empty.
    let body = b"k8s\0\x0a\x0a\x0a\x02v9\x12\x04Nope\x12\x00";
    assert_eq!(
        decode(body),
        Err(ProtoError::UnknownKind {
            api_version: "v9".into(),
            kind: "Nope".into()
        })
    );
    assert_eq!(decode(b"k8s\0"), Err(ProtoError::MissingTypeMeta));
}
