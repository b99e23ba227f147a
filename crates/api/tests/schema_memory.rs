//! The OpenAPI schema table must stay small (the whole server targets 50 MB RSS): parse it in a
//! fresh process and measure resident memory before and after (Linux /proc).

fn status_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status (Linux only)");
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{field} missing from /proc/self/status"))
}

#[test]
fn schema_table_is_small() {
    let before = status_kb("VmRSS:");
    let t = std::time::Instant::now();
    let s = dari_api::openapi::schemas();
    let took = t.elapsed();
    let after = status_kb("VmRSS:");
    let peak = status_kb("VmHWM:");
    let fields: usize = s.defs.iter().map(|d| d.fields.len()).sum();
    eprintln!(
        "schema table: {} defs, {fields} fields, parsed in {took:?}; RSS {before} kB -> {after} kB (peak {peak} kB)",
        s.defs.len()
    );
    assert!(
        after.saturating_sub(before) < 6 * 1024,
        "table grew RSS by {} kB",
        after - before
    );
}
