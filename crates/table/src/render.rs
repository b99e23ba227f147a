//! kubectl's human-readable printing of a Table (`kubectl get`, `-o wide`), for tests and humans.
//!
//! kubectl (cli-runtime `printers.PrintTable`) prints the upper-cased names of the columns it
//! shows (priority 0, or all with `-o wide`), then one line per row, through a tabwriter with
//! minwidth 6, padding 3 and space padding. A string cell is cut at its first `\n`, `\r` or
//! `\f` and gets "..." appended; other cells print as Go's `fmt.Sprint` would; null prints
//! nothing. Like tabwriter, the last column is not padded.

use serde_json::Value;

const MIN_WIDTH: usize = 6;
const PADDING: usize = 3;

/// Print `table` as `kubectl get` does (`wide`: as `kubectl get -o wide`). Returns "" for a
/// table without rows (kubectl prints "No resources found" to stderr instead). Terminal escape
/// sequences in cells are not escaped as kubectl's `WriteEscaped` does.
pub fn render_text(table: &Value, wide: bool) -> String {
    let rows = table.get("rows").and_then(Value::as_array);
    let Some(rows) = rows.filter(|r| !r.is_empty()) else {
        return String::new();
    };
    let columns = table
        .get("columnDefinitions")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let shown: Vec<usize> = columns
        .iter()
        .enumerate()
        .filter(|(_, c)| wide || c.get("priority").and_then(Value::as_i64).unwrap_or(0) == 0)
        .map(|(i, _)| i)
        .collect();

    let mut lines: Vec<Vec<String>> = Vec::with_capacity(rows.len() + 1);
    lines.push(
        shown
            .iter()
            .map(|&i| {
                columns[i]
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_uppercase()
            })
            .collect(),
    );
    for row in rows {
        let cells = row
            .get("cells")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        lines.push(
            shown
                .iter()
                .map(|&i| cells.get(i).map(cell_text).unwrap_or_default())
                .collect(),
        );
    }

    let ncols = shown.len();
    let mut widths = vec![MIN_WIDTH; ncols];
    for line in &lines {
        for (i, cell) in line.iter().enumerate().take(ncols.saturating_sub(1)) {
            widths[i] = widths[i].max(cell.chars().count() + PADDING);
        }
    }
    let mut out = String::new();
    for line in &lines {
        for (i, cell) in line.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < ncols {
                let pad = widths[i] - cell.chars().count();
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    }
    out
}

fn cell_text(cell: &Value) -> String {
    match cell {
        Value::Null => String::new(),
        Value::String(s) => match s.find(['\n', '\r', '\x0c']) {
            Some(cut) => format!("{}...", &s[..cut]),
            None => s.clone(),
        },
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        // fmt.Sprint of a map/slice is Go syntax; JSON is close enough for the rare case.
        other => other.to_string(),
    }
}
