//! Golden tests: each `golden/<name>.json` holds `{group, resource, now, objects}`; the Table
//! printed as `kubectl get` and `kubectl get -o wide` would print it must equal
//! `golden/<name>.txt`. Set `DARI_UPDATE_GOLDEN=1` to rewrite the `.txt` files (then review the
//! diff by hand against upstream printers.go before committing).

use std::fs;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use dari_table::{render_text, table, IncludeObject, TableOptions};
use serde_json::Value;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn load(path: &Path) -> (String, String, Vec<Value>, TableOptions) {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let input: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
    let now: DateTime<Utc> = input["now"]
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| panic!("{}: bad or missing \"now\"", path.display()));
    let opts = TableOptions {
        include_object: IncludeObject::Metadata,
        now,
        no_headers: false,
    };
    (
        input["group"].as_str().unwrap_or_default().to_string(),
        input["resource"].as_str().unwrap_or_default().to_string(),
        input["objects"].as_array().cloned().unwrap_or_default(),
        opts,
    )
}

fn rendering(group: &str, resource: &str, objects: &[Value], opts: &TableOptions) -> String {
    let t = table(group, resource, objects, opts);
    let kind = if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    };
    format!(
        "$ kubectl get {kind}\n{}\n$ kubectl get {kind} -o wide\n{}",
        render_text(&t, false),
        render_text(&t, true)
    )
}

#[test]
fn golden_tables() {
    let update = std::env::var_os("DARI_UPDATE_GOLDEN").is_some();
    let mut inputs: Vec<PathBuf> = fs::read_dir(golden_dir())
        .expect("tests/golden exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    inputs.sort();
    assert!(
        inputs.len() >= 20,
        "expected the golden inputs, found {}",
        inputs.len()
    );
    let mut failures = Vec::new();
    for input in &inputs {
        let (group, resource, objects, opts) = load(input);
        let got = rendering(&group, &resource, &objects, &opts);
        let expected_path = input.with_extension("txt");
        if update {
            fs::write(&expected_path, &got).expect("write golden");
            continue;
        }
        let want = fs::read_to_string(&expected_path)
            .unwrap_or_else(|e| panic!("read {}: {e}", expected_path.display()));
        if got != want {
            failures.push(format!(
                "--- {} differs\n--- want:\n{want}\n--- got:\n{got}",
                expected_path.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every row has exactly one cell per column (the server sends wide cells too), whatever the
/// resource.
#[test]
fn cells_match_columns_everywhere() {
    let mut inputs: Vec<PathBuf> = fs::read_dir(golden_dir())
        .expect("tests/golden exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    inputs.sort();
    for input in &inputs {
        let (group, resource, objects, opts) = load(input);
        let t = table(&group, &resource, &objects, &opts);
        let ncols = t["columnDefinitions"].as_array().map_or(0, Vec::len);
        let rows = t["rows"].as_array().expect("rows");
        assert_eq!(rows.len(), objects.len(), "{}", input.display());
        for row in rows {
            assert_eq!(
                row["cells"].as_array().map_or(0, Vec::len),
                ncols,
                "{}: {row}",
                input.display()
            );
            assert_eq!(row["object"]["kind"], "PartialObjectMetadata");
        }
    }
}
