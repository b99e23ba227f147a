//! The nftables ruleset model: tables, sets/maps and chains whose rules are nft text.
//!
//! A [`Ruleset`] is the *desired* state. It prints as a readable `table ip dari { ... }` block
//! ([`Ruleset::to_nft`], used by the golden tests and `dari proxy show`), and it turns into
//! `nft -f` transactions:
//! - [`Ruleset::full_sync_script`]: the whole desired state in one transaction, kube-proxy style
//!   (add+flush every chain and static set, delete what the kernel has but we don't want).
//!   Affinity sets (dynamic, with timeouts) are *not* flushed, so a resync keeps clients pinned.
//! - [`Ruleset::diff_script`]: only what changed between two desired states (map elements,
//!   changed chains, new and deleted objects).
//!
//! Rules are kept as nft text (one rule per string, nftables 1.0.6 syntax), which keeps the
//! renderer readable and the diff cheap (chains compare as `Vec<String>`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};

/// Address family of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// `ip` (IPv4).
    Ip,
    /// `ip6` (IPv6).
    Ip6,
}

impl Family {
    /// The nft family keyword (`ip` / `ip6`), also the payload prefix (`ip daddr`, `ip6 daddr`).
    pub fn keyword(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
        }
    }

    /// The nft address data type (`ipv4_addr` / `ipv6_addr`).
    pub fn addr_type(self) -> &'static str {
        match self {
            Family::Ip => "ipv4_addr",
            Family::Ip6 => "ipv6_addr",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.keyword())
    }
}

/// Hook of a base chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// `filter` or `nat`.
    pub kind: &'static str,
    /// `prerouting`, `input`, `forward`, `output`, `postrouting`.
    pub hook: &'static str,
    /// Numeric priority (numbers, not names: `dstnat` is rejected in the output hook on 1.0.6).
    pub priority: i32,
}

/// One chain: a name, an optional hook (base chain) and its rules, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Chain name (an nft identifier: letters, digits, `/ - _ .`).
    pub name: String,
    /// `Some` for base chains.
    pub hook: Option<Hook>,
    /// Rules as nft text, one per entry.
    pub rules: Vec<String>,
}

impl Chain {
    /// A regular chain with the given rules.
    pub fn new(name: impl Into<String>, rules: Vec<String>) -> Self {
        Chain { name: name.into(), hook: None, rules }
    }
}

/// A set or a verdict map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    /// Set name.
    pub name: String,
    /// `true` for a `map` (elements have values), `false` for a `set`.
    pub is_map: bool,
    /// The `type` line, e.g. `ipv4_addr . inet_proto . inet_service : verdict`.
    pub type_: String,
    /// `flags` (e.g. `interval`, `dynamic,timeout`).
    pub flags: Option<&'static str>,
    /// Default element timeout in seconds.
    pub timeout_secs: Option<u32>,
    /// Dynamic sets are filled by the datapath (`update @set`); syncs never flush them.
    pub dynamic: bool,
    /// Elements: key text -> value text (`None` for plain sets).
    pub elements: BTreeMap<String, Option<String>>,
}

impl Set {
    fn definition(&self) -> String {
        let mut s = format!("type {};", self.type_);
        if let Some(flags) = self.flags {
            let _ = write!(s, " flags {flags};");
        }
        if let Some(t) = self.timeout_secs {
            let _ = write!(s, " timeout {t}s;");
        }
        s
    }

    fn kind(&self) -> &'static str {
        if self.is_map {
            "map"
        } else {
            "set"
        }
    }

    fn element_text(&self, key: &str, value: &Option<String>) -> String {
        match value {
            Some(v) => format!("{key} : {v}"),
            None => key.to_string(),
        }
    }
}

/// One table (`ip dari` or `ip6 dari`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Family of the table.
    pub family: Family,
    /// Table name (`dari` by default).
    pub name: String,
    /// Sets and maps, by name.
    pub sets: BTreeMap<String, Set>,
    /// Chains in render order (base chains first, then each service followed by its endpoints).
    pub chains: Vec<Chain>,
}

impl Table {
    /// An empty table.
    pub fn new(family: Family, name: impl Into<String>) -> Self {
        Table { family, name: name.into(), sets: BTreeMap::new(), chains: Vec::new() }
    }

    /// Looks a chain up by name (linear; for tests and `show`).
    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| c.name == name)
    }

    /// Readable `nft` text of this table (`table ip dari { ... }`).
    pub fn to_nft(&self) -> String {
        let mut out = String::new();
        let t = self;
        let _ = writeln!(out, "table {} {{", t.prefix());
        for s in t.sets.values() {
            let _ = writeln!(out, "\t{} {} {{", s.kind(), s.name);
            let _ = writeln!(out, "\t\ttype {}", s.type_);
            if let Some(flags) = s.flags {
                let _ = writeln!(out, "\t\tflags {flags}");
            }
            if let Some(t) = s.timeout_secs {
                let _ = writeln!(out, "\t\ttimeout {t}s");
            }
            if !s.elements.is_empty() {
                let _ = writeln!(out, "\t\telements = {{");
                for (k, v) in &s.elements {
                    let _ = writeln!(out, "\t\t\t{},", s.element_text(k, v));
                }
                let _ = writeln!(out, "\t\t}}");
            }
            let _ = writeln!(out, "\t}}\n");
        }
        for c in &t.chains {
            let _ = writeln!(out, "\tchain {} {{", c.name);
            if let Some(h) = &c.hook {
                let _ = writeln!(
                    out,
                    "\t\ttype {} hook {} priority {}; policy accept;",
                    h.kind, h.hook, h.priority
                );
            }
            for r in &c.rules {
                let _ = writeln!(out, "\t\t{r}");
            }
            let _ = writeln!(out, "\t}}\n");
        }
        if out.ends_with("\n\n") {
            out.pop();
        }
        let _ = writeln!(out, "}}");
        out
    }

    fn chain_map(&self) -> BTreeMap<&str, &Chain> {
        self.chains.iter().map(|c| (c.name.as_str(), c)).collect()
    }

    fn prefix(&self) -> String {
        format!("{} {}", self.family, self.name)
    }
}

/// Names of the objects that currently exist in a kernel table (from `nft list table`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExistingObjects {
    /// Chain names.
    pub chains: BTreeSet<String>,
    /// Set and map names.
    pub sets: BTreeSet<String>,
}

impl ExistingObjects {
    /// Parses the names out of `nft -t list table FAMILY NAME` text.
    pub fn parse_listing(text: &str) -> Self {
        let mut out = ExistingObjects::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let (Some(kind), Some(name), Some("{")) = (words.next(), words.next(), words.next())
            else {
                continue;
            };
            match kind {
                "chain" => {
                    out.chains.insert(name.to_string());
                }
                "set" | "map" => {
                    out.sets.insert(name.to_string());
                }
                _ => {}
            }
        }
        out
    }
}

/// The desired nftables state: one table per family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    /// Tables (`ip dari`, then `ip6 dari`).
    pub tables: Vec<Table>,
}

impl Ruleset {
    /// The table of a family.
    pub fn table(&self, family: Family) -> Option<&Table> {
        self.tables.iter().find(|t| t.family == family)
    }

    /// Readable `nft` text of the whole ruleset (`table ip dari { ... }` blocks). Loading it with
    /// `nft -f` into an empty namespace produces exactly this state.
    pub fn to_nft(&self) -> String {
        self.tables.iter().map(Table::to_nft).collect()
    }

    /// One `nft -f` transaction that makes the kernel tables equal to `self`, whatever they held
    /// before (`existing`: what `nft list table` showed, per family; missing = no table).
    ///
    /// Every chain and static set is added-if-missing and flushed, then refilled; objects the
    /// kernel has that `self` does not are flushed and deleted. Affinity (dynamic) sets keep their
    /// elements. Other tables are never touched.
    pub fn full_sync_script(&self, existing: &BTreeMap<Family, ExistingObjects>) -> String {
        let mut out = String::new();
        for t in &self.tables {
            let p = t.prefix();
            let empty = ExistingObjects::default();
            let ex = existing.get(&t.family).unwrap_or(&empty);
            let _ = writeln!(out, "add table {p}");
            for s in t.sets.values() {
                let _ = writeln!(out, "add {} {p} {} {{ {} }}", s.kind(), s.name, s.definition());
                if !s.dynamic {
                    let _ = writeln!(out, "flush {} {p} {}", s.kind(), s.name);
                }
            }
            for c in &t.chains {
                add_chain(&mut out, &p, c);
                let _ = writeln!(out, "flush chain {p} {}", c.name);
            }
            let wanted = t.chain_map();
            let stale_chains: Vec<&String> =
                ex.chains.iter().filter(|c| !wanted.contains_key(c.as_str())).collect();
            for c in &stale_chains {
                let _ = writeln!(out, "flush chain {p} {c}");
            }
            for c in &t.chains {
                add_rules(&mut out, &p, c);
            }
            for s in t.sets.values() {
                if !s.dynamic {
                    add_elements(&mut out, &p, s, s.elements.iter());
                }
            }
            for c in &stale_chains {
                let _ = writeln!(out, "delete chain {p} {c}");
            }
            for s in ex.sets.iter().filter(|s| !t.sets.contains_key(*s)) {
                // `delete set` also deletes maps on nft 1.0.6.
                let _ = writeln!(out, "delete set {p} {s}");
            }
        }
        out
    }

    /// One `nft -f` transaction that turns the kernel state `old` (as last applied) into `self`,
    /// touching only what changed. Returns an empty string when nothing changed.
    pub fn diff_script(&self, old: &Ruleset) -> String {
        let mut out = String::new();
        for t in &self.tables {
            let p = t.prefix();
            let Some(o) = old.table(t.family) else {
                out.push_str(&self_only(t).full_sync_script(&BTreeMap::new()));
                continue;
            };
            let old_chains = o.chain_map();
            let new_chains = t.chain_map();
            // 1. new sets, and sets whose definition changed (re-created).
            let mut recreated = Vec::new();
            for s in t.sets.values() {
                match o.sets.get(&s.name) {
                    None => {
                        let _ = writeln!(out, "add {} {p} {} {{ {} }}", s.kind(), s.name, s.definition());
                    }
                    Some(os) if os.definition() != s.definition() || os.is_map != s.is_map => {
                        recreated.push(s);
                    }
                    Some(_) => {}
                }
            }
            // 2. new chains.
            for c in &t.chains {
                if !old_chains.contains_key(c.name.as_str()) {
                    add_chain(&mut out, &p, c);
                }
            }
            // 3. changed chains: flush (refilled below). Removed chains: flush now, delete later.
            let changed: Vec<&Chain> = t
                .chains
                .iter()
                .filter(|c| old_chains.get(c.name.as_str()).is_some_and(|oc| oc.rules != c.rules))
                .collect();
            for c in &changed {
                let _ = writeln!(out, "flush chain {p} {}", c.name);
            }
            let removed: Vec<&Chain> =
                o.chains.iter().filter(|c| !new_chains.contains_key(c.name.as_str())).collect();
            for c in &removed {
                let _ = writeln!(out, "flush chain {p} {}", c.name);
            }
            // Sets being re-created may be referenced by rules that were just flushed.
            for s in &recreated {
                let _ = writeln!(out, "delete set {p} {}", s.name);
                let _ = writeln!(out, "add {} {p} {} {{ {} }}", s.kind(), s.name, s.definition());
            }
            // 4. rules of new and changed chains.
            for c in &t.chains {
                let is_new = !old_chains.contains_key(c.name.as_str());
                if is_new || changed.iter().any(|x| x.name == c.name) {
                    add_rules(&mut out, &p, c);
                }
            }
            // 5. element changes of static sets.
            for s in t.sets.values().filter(|s| !s.dynamic) {
                let fresh = !o.sets.contains_key(&s.name) || recreated.iter().any(|r| r.name == s.name);
                if fresh {
                    add_elements(&mut out, &p, s, s.elements.iter());
                    continue;
                }
                let Some(os) = o.sets.get(&s.name) else { continue };
                let gone: Vec<(&String, &Option<String>)> = os
                    .elements
                    .iter()
                    .filter(|(k, v)| s.elements.get(*k) != Some(*v))
                    .collect();
                if !gone.is_empty() {
                    let keys: Vec<&str> = gone.iter().map(|(k, _)| k.as_str()).collect();
                    let _ = writeln!(out, "delete element {p} {} {{ {} }}", s.name, keys.join(", "));
                }
                let added = s.elements.iter().filter(|(k, v)| os.elements.get(*k) != Some(*v));
                add_elements(&mut out, &p, s, added);
            }
            // 6. deletions, after every reference to them is gone.
            for c in &removed {
                let _ = writeln!(out, "delete chain {p} {}", c.name);
            }
            for s in o.sets.values().filter(|s| !t.sets.contains_key(&s.name)) {
                let _ = writeln!(out, "delete set {p} {}", s.name);
            }
        }
        for o in &old.tables {
            if self.table(o.family).is_none() {
                let _ = writeln!(out, "delete table {}", o.prefix());
            }
        }
        out
    }

    /// Total number of chains over all tables.
    pub fn chain_count(&self) -> usize {
        self.tables.iter().map(|t| t.chains.len()).sum()
    }
}

fn self_only(t: &Table) -> Ruleset {
    Ruleset { tables: vec![t.clone()] }
}

fn add_chain(out: &mut String, p: &str, c: &Chain) {
    match &c.hook {
        Some(h) => {
            let _ = writeln!(
                out,
                "add chain {p} {} {{ type {} hook {} priority {}; policy accept; }}",
                c.name, h.kind, h.hook, h.priority
            );
        }
        None => {
            let _ = writeln!(out, "add chain {p} {}", c.name);
        }
    }
}

fn add_rules(out: &mut String, p: &str, c: &Chain) {
    for r in &c.rules {
        let _ = writeln!(out, "add rule {p} {} {r}", c.name);
    }
}

fn add_elements<'a>(
    out: &mut String,
    p: &str,
    s: &Set,
    elements: impl Iterator<Item = (&'a String, &'a Option<String>)>,
) {
    // Batches keep lines short enough for nft's parser and readable in logs.
    let mut batch: Vec<String> = Vec::new();
    let flush = |out: &mut String, batch: &mut Vec<String>| {
        if !batch.is_empty() {
            let _ = writeln!(out, "add element {p} {} {{ {} }}", s.name, batch.join(", "));
            batch.clear();
        }
    };
    for (k, v) in elements {
        batch.push(s.element_text(k, v));
        if batch.len() >= 256 {
            flush(out, &mut batch);
        }
    }
    flush(out, &mut batch);
}
