//! Print the Table JSON for a golden input: `cargo run -p dari-table --example table_json --
//! crates/table/tests/golden/pods.json`. Used to feed a real kubectl from a stub API server.

use chrono::{DateTime, Utc};
use dari_table::{table, TableOptions};
use serde_json::Value;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: table_json <golden input .json>")?;
    let input: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let now: DateTime<Utc> =
        DateTime::parse_from_rfc3339(input["now"].as_str().ok_or("no now")?)?.into();
    let objects = input["objects"].as_array().cloned().unwrap_or_default();
    let opts = TableOptions {
        now,
        ..TableOptions::default()
    };
    let t = table(
        input["group"].as_str().unwrap_or_default(),
        input["resource"].as_str().unwrap_or_default(),
        &objects,
        &opts,
    );
    println!("{}", serde_json::to_string(&t)?);
    Ok(())
}
