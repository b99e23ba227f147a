//! Golden tests for defaulting: `tests/golden/defaults/<name>.in.json` defaulted must equal
//! `<name>.out.json`. The expected files were generated, then reviewed by hand against upstream's
//! `SetDefaults_*` functions and admission plugins (not captured from a running kube-apiserver).
//! Regenerate with `UPDATE_GOLDEN=1 cargo test -p dari-api --test defaults_golden` and review the diff.

use std::path::Path;

use dari_api::defaults::apply_defaults;
use serde_json::Value;

fn check(name: &str, group: &str, kind: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/defaults");
    let input = std::fs::read_to_string(dir.join(format!("{name}.in.json"))).expect("input file");
    let mut obj: Value = serde_json::from_str(&input).expect("input json");
    apply_defaults(group, kind, &mut obj);
    let out_path = dir.join(format!("{name}.out.json"));
    let rendered = serde_json::to_string_pretty(&obj).expect("render") + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&out_path, &rendered).expect("write golden");
        return;
    }
    let expected =
        std::fs::read_to_string(&out_path).expect("golden file (run with UPDATE_GOLDEN=1)");
    assert_eq!(
        rendered,
        expected,
        "defaults for {name} differ from {}",
        out_path.display()
    );
    // Defaulting is idempotent.
    let mut again = obj.clone();
    apply_defaults(group, kind, &mut again);
    assert_eq!(again, obj, "defaulting {name} twice changed it");
}

#[test]
fn pod() {
    check("pod", "", "Pod");
}

#[test]
fn deployment() {
    check("deployment", "apps", "Deployment");
}

#[test]
fn daemonset() {
    check("daemonset", "apps", "DaemonSet");
}

#[test]
fn service() {
    check("service", "", "Service");
}

#[test]
fn namespace() {
    check("namespace", "", "Namespace");
}

#[test]
fn endpointslice() {
    check("endpointslice", "discovery.k8s.io", "EndpointSlice");
}
