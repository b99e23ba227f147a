//! `dari proxy show [svc/NAME]`: what a Service turns into on this node, readably.

use std::fmt::Write as _;

use crate::nft::Ruleset;

/// Describes the Service `namespace/name` (or every Service when `name` is `None`): the map
/// elements that lead to it, then its chains (a `numgen random mod N == 0` rule takes 1/N of what reaches it;
/// affinity sets are listed with their timeout).
pub fn show(rs: &Ruleset, namespace: &str, name: Option<&str>) -> String {
    let needle = match name {
        Some(n) => format!("-{namespace}/{n}/"),
        None => format!("-{namespace}/"),
    };
    let mut out = String::new();
    for t in &rs.tables {
        let mut header = false;
        let mut head = |out: &mut String| {
            if !header {
                let _ = writeln!(out, "# table {} {}", t.family, t.name);
                header = true;
            }
        };
        for s in t.sets.values() {
            for (k, v) in &s.elements {
                if let Some(v) = v.as_deref().filter(|v| v.contains(&needle)) {
                    head(&mut out);
                    let _ = writeln!(out, "{:<22} {k} -> {v}", format!("@{}", s.name));
                }
            }
            if s.dynamic && s.name.contains(&needle) {
                head(&mut out);
                let _ = writeln!(out, "affinity set {} (timeout {}s)", s.name, s.timeout_secs.unwrap_or(0));
            }
        }
        for c in t.chains.iter().filter(|c| c.name.contains(&needle)) {
            head(&mut out);
            let _ = writeln!(out, "chain {}", c.name);
            for r in &c.rules {
                if let Some(n) = r.strip_prefix("numgen random mod ").and_then(|r| r.split_whitespace().next()) {
                    let _ = writeln!(out, "    {r}    # 1/{n} of what reaches this rule");
                } else {
                    let _ = writeln!(out, "    {r}");
                }
            }
        }
    }
    if out.is_empty() {
        let _ = writeln!(out, "no rules for {}{}", namespace, name.map(|n| format!("/{n}")).unwrap_or_default());
    }
    out
}
