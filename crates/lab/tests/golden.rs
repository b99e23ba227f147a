//! The plan for the seed scenarios' node names, compared with tests/golden/plan-myk8s.{sh,json}.
//! Regenerate with `UPDATE_GOLDEN=1 cargo test -p dari-lab --test golden` and review the diff.

#![allow(clippy::unwrap_used)]

use dari_lab::plan::{plan, LabOpts};

fn check(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    assert_eq!(actual, want, "{} differs", path.display());
}

#[test]
fn seed_nodes_plan() {
    let nodes: Vec<String> = ["myk8s-control-plane", "myk8s-worker", "myk8s-worker2", "myk8s-worker3"].iter().map(|s| s.to_string()).collect();
    let p = plan(&nodes, &LabOpts::default()).unwrap();
    check("plan-myk8s.sh", &p.script());
    check("plan-myk8s.json", &(serde_json::to_string_pretty(&p).unwrap() + "\n"));
}
