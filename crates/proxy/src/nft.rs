//! The nftables ruleset model: tables, sets/maps and chains whose rules are nft text.
//!
//! A [`Ruleset`] is the *desired* state. It prints as a readable `table ip dari { ... }` block
//! ([`Ruleset::to_nft`], used by the golden tests and `dari proxy show`), and it turns into
//! `nft -f` transactions:
//! - [`Ruleset::full_sync_script`]: the whole desired state in one transaction, kube-proxy style
//!   (add+flush every chain and static set, delete what the kernel has but we don't want).
//!   Affinity sets (dynamic, with timeouts) are *not* flushed, so a resync keeps clients pinned.
//! - [`plan`]: only what changed between two desired states (map elements, changed chains, new
//!   and deleted objects), as a structured [`Transaction`] of [`Op`]s ([`Ruleset::diff_script`]
//!   is its text). [`crate::model::Model`] applies transactions with the kernel's checks; the
//!   property tests apply `plan(prev, next)` to a model of `prev` and expect `next`.
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
    /// The `type` line, e.g. `ipv4_addr . inet_proto . inet_service : verdict`, or a whole
    /// `typeof ...` line (starting with `typeof `).
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
    /// `type X` or `typeof X`.
    pub fn declaration(&self) -> String {
        if self.type_.starts_with("typeof ") {
            self.type_.clone()
        } else {
            format!("type {}", self.type_)
        }
    }

    fn definition(&self) -> String {
        let mut s = format!("{};", self.declaration());
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
    /// Chains in render order (base chains first, then each Service's chains).
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
            let _ = writeln!(out, "\t\t{}", s.declaration());
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
        self.full_sync(existing).to_string()
    }

    /// The structured form of [`Ruleset::full_sync_script`].
    pub fn full_sync(&self, existing: &BTreeMap<Family, ExistingObjects>) -> Transaction {
        self.clone().into_full_sync(existing)
    }

    /// [`Ruleset::full_sync`], moving the elements into the transaction instead of copying them
    /// (a full sync's peak memory).
    pub fn into_full_sync(self, existing: &BTreeMap<Family, ExistingObjects>) -> Transaction {
        let mut tx = Transaction::default();
        for mut t in self.tables {
            let at = TableRef { family: t.family, name: t.name.clone() };
            let empty = ExistingObjects::default();
            let ex = existing.get(&t.family).unwrap_or(&empty);
            tx.ops.push(Op::AddTable(at.clone()));
            for s in t.sets.values() {
                tx.ops.push(Op::AddSet(at.clone(), set_def(s)));
                if !s.dynamic {
                    tx.ops.push(Op::FlushSet(at.clone(), s.name.clone(), s.is_map));
                }
            }
            for c in &t.chains {
                tx.ops.push(Op::AddChain(at.clone(), c.name.clone(), c.hook.clone()));
                tx.ops.push(Op::FlushChain(at.clone(), c.name.clone()));
            }
            let wanted = t.chain_map();
            let stale_chains: Vec<&String> =
                ex.chains.iter().filter(|c| !wanted.contains_key(c.as_str())).collect();
            for c in &stale_chains {
                tx.ops.push(Op::FlushChain(at.clone(), (*c).clone()));
            }
            for c in &t.chains {
                push_rules(&mut tx, &at, c);
            }
            for s in t.sets.values_mut() {
                if !s.dynamic && !s.elements.is_empty() {
                    let elements: Vec<(String, Option<String>)> = std::mem::take(&mut s.elements).into_iter().collect();
                    tx.ops.push(Op::AddElements(at.clone(), set_def(s), elements));
                }
            }
            for c in &stale_chains {
                tx.ops.push(Op::DeleteChain(at.clone(), (*c).clone()));
            }
            for s in ex.sets.iter().filter(|s| !t.sets.contains_key(*s)) {
                tx.ops.push(Op::DeleteSet(at.clone(), s.clone()));
            }
        }
        tx
    }

    /// One `nft -f` transaction that turns the kernel state `old` (as last applied) into `self`,
    /// touching only what changed. Returns an empty string when nothing changed.
    pub fn diff_script(&self, old: &Ruleset) -> String {
        plan(old, self).to_string()
    }

        /// Total number of chains over all tables.
    pub fn chain_count(&self) -> usize {
        self.tables.iter().map(|t| t.chains.len()).sum()
    }
}


/// Which table an [`Op`] works on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableRef {
    /// Family of the table.
    pub family: Family,
    /// Table name.
    pub name: String,
}

impl fmt::Display for TableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.family, self.name)
    }
}

/// One command of a [`Transaction`] (one line of `nft -f` text; one netlink message, or a few).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `add table`.
    AddTable(TableRef),
    /// `delete table`.
    DeleteTable(TableRef),
    /// `add chain` (a base chain when the hook is given).
    AddChain(TableRef, String, Option<Hook>),
    /// `flush chain`: delete every rule of the chain.
    FlushChain(TableRef, String),
    /// `delete chain` (the chain must be empty of references by then).
    DeleteChain(TableRef, String),
    /// `add rule TABLE CHAIN RULE` (append).
    AddRule(TableRef, String, String),
    /// `add set|map` with this definition (elements of the [`Set`] are ignored).
    AddSet(TableRef, Set),
    /// `flush set|map NAME` (the bool: is a map).
    FlushSet(TableRef, String, bool),
    /// `delete set NAME` (also deletes maps).
    DeleteSet(TableRef, String),
    /// `add element`: the set (definition, for its key type) and the elements, key -> value.
    AddElements(TableRef, Set, Vec<(String, Option<String>)>),
    /// `delete element`: the set and the keys.
    DeleteElements(TableRef, Set, Vec<String>),
}

/// An ordered list of [`Op`]s applied as one atomic transaction. `Display` prints the `nft -f`
/// text (golden files); [`crate::netlink::NetlinkApplier`] sends it as one netlink batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transaction {
    /// The commands, in order.
    pub ops: Vec<Op>,
}

impl Transaction {
    /// No commands.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

impl fmt::Display for Transaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for op in &self.ops {
            match op {
                Op::AddTable(t) => writeln!(f, "add table {t}")?,
                Op::DeleteTable(t) => writeln!(f, "delete table {t}")?,
                Op::AddChain(t, c, None) => writeln!(f, "add chain {t} {c}")?,
                Op::AddChain(t, c, Some(h)) => writeln!(
                    f,
                    "add chain {t} {c} {{ type {} hook {} priority {}; policy accept; }}",
                    h.kind, h.hook, h.priority
                )?,
                Op::FlushChain(t, c) => writeln!(f, "flush chain {t} {c}")?,
                Op::DeleteChain(t, c) => writeln!(f, "delete chain {t} {c}")?,
                Op::AddRule(t, c, r) => writeln!(f, "add rule {t} {c} {r}")?,
                Op::AddSet(t, s) => writeln!(f, "add {} {t} {} {{ {} }}", s.kind(), s.name, s.definition())?,
                Op::FlushSet(t, s, is_map) => {
                    writeln!(f, "flush {} {t} {s}", if *is_map { "map" } else { "set" })?
                }
                // `delete set` also deletes maps on nft 1.0.6.
                Op::DeleteSet(t, s) => writeln!(f, "delete set {t} {s}")?,
                Op::AddElements(t, s, elements) => {
                    // Batches keep lines short enough for nft's parser and readable in logs.
                    for chunk in elements.chunks(256) {
                        let items: Vec<String> = chunk.iter().map(|(k, v)| s.element_text(k, v)).collect();
                        writeln!(f, "add element {t} {} {{ {} }}", s.name, items.join(", "))?;
                    }
                }
                Op::DeleteElements(t, s, keys) => {
                    for chunk in keys.chunks(256) {
                        writeln!(f, "delete element {t} {} {{ {} }}", s.name, chunk.join(", "))?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The definition of a set without its elements (not cloned only to be dropped: a DNAT map holds
/// 100,000 of them at 10,000 Services).
fn set_def(s: &Set) -> Set {
    Set {
        name: s.name.clone(),
        is_map: s.is_map,
        type_: s.type_.clone(),
        flags: s.flags,
        timeout_secs: s.timeout_secs,
        dynamic: s.dynamic,
        elements: BTreeMap::new(),
    }
}

fn push_rules(tx: &mut Transaction, t: &TableRef, c: &Chain) {
    for r in &c.rules {
        tx.ops.push(Op::AddRule(t.clone(), c.name.clone(), r.clone()));
    }
}

fn push_elements<'a>(
    tx: &mut Transaction,
    t: &TableRef,
    s: &Set,
    elements: impl Iterator<Item = (&'a String, &'a Option<String>)>,
) {
    let elements: Vec<(String, Option<String>)> = elements.map(|(k, v)| (k.clone(), v.clone())).collect();
    if !elements.is_empty() {
        tx.ops.push(Op::AddElements(t.clone(), set_def(s), elements));
    }
}

/// Does `rule` mention the set `@name` (as a whole word)?
fn references_set(rule: &str, name: &str) -> bool {
    rule.match_indices('@').any(|(i, _)| {
        let rest = &rule[i + 1..];
        rest.strip_prefix(name).is_some_and(|after| after.is_empty() || after.starts_with([' ', ',', '}']))
    })
}

/// An Fx-style hasher (8 bytes per step): chain names are trusted input, and SipHash over
/// every chain name is a visible part of a whole-ruleset plan.
#[derive(Default)]
struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut h = self.0;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        for b in chunks.remainder() {
            h = (h.rotate_left(5) ^ u64::from(*b)).wrapping_mul(K);
        }
        self.0 = h;
    }
}

/// The transaction that turns the kernel state `prev` (as last applied) into `next`, touching only
/// what changed: new objects are added, changed chains are flushed and refilled, map and set
/// elements are added and deleted one by one, and removed chains and sets are deleted last, after
/// every rule and element that referenced them is gone (nft refuses to delete a chain in use).
/// Pure; empty when nothing changed. Dynamic (affinity) sets keep their elements.
pub fn plan(prev: &Ruleset, next: &Ruleset) -> Transaction {
    type HashMap<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<Fnv>>;
    type HashSet<K> = std::collections::HashSet<K, std::hash::BuildHasherDefault<Fnv>>;
    let mut tx = Transaction::default();
    for t in &next.tables {
        let at = TableRef { family: t.family, name: t.name.clone() };
        let Some(o) = prev.tables.iter().find(|o| o.family == t.family && o.name == t.name) else {
            tx.ops.extend(Ruleset { tables: vec![t.clone()] }.into_full_sync(&BTreeMap::new()).ops);
            continue;
        };
        let old_chains: HashMap<&str, &Chain> = o.chains.iter().map(|c| (c.name.as_str(), c)).collect();
        let new_names: HashSet<&str> = t.chains.iter().map(|c| c.name.as_str()).collect();
        // 1. new sets, and sets whose definition changed (re-created).
        let mut recreated: Vec<&Set> = Vec::new();
        for s in t.sets.values() {
            match o.sets.get(&s.name) {
                None => tx.ops.push(Op::AddSet(at.clone(), set_def(s))),
                Some(os) if os.definition() != s.definition() || os.is_map != s.is_map => recreated.push(s),
                Some(_) => {}
            }
        }
        // 2. new chains.
        for c in &t.chains {
            if !old_chains.contains_key(c.name.as_str()) {
                tx.ops.push(Op::AddChain(at.clone(), c.name.clone(), c.hook.clone()));
            }
        }
        // 3. changed chains (and chains using a re-created set): flush, refilled below.
        //    Removed chains: flush now, delete at the end.
        let changed: HashSet<&str> = t
            .chains
            .iter()
            .filter(|c| {
                old_chains.get(c.name.as_str()).is_some_and(|oc| {
                    oc.rules != c.rules
                        || recreated.iter().any(|s| oc.rules.iter().any(|r| references_set(r, &s.name)))
                })
            })
            .map(|c| c.name.as_str())
            .collect();
        for c in t.chains.iter().filter(|c| changed.contains(c.name.as_str())) {
            tx.ops.push(Op::FlushChain(at.clone(), c.name.clone()));
        }
        let removed: Vec<&Chain> = o.chains.iter().filter(|c| !new_names.contains(c.name.as_str())).collect();
        for c in &removed {
            tx.ops.push(Op::FlushChain(at.clone(), c.name.clone()));
        }
        // Sets being re-created may be referenced by rules that were just flushed.
        for s in &recreated {
            tx.ops.push(Op::DeleteSet(at.clone(), s.name.clone()));
            tx.ops.push(Op::AddSet(at.clone(), set_def(s)));
        }
        // 4. rules of new and changed chains.
        for c in &t.chains {
            if !old_chains.contains_key(c.name.as_str()) || changed.contains(c.name.as_str()) {
                push_rules(&mut tx, &at, c);
            }
        }
        // 5. element changes of static sets: changed values are deleted, then added.
        for s in t.sets.values().filter(|s| !s.dynamic) {
            let fresh = !o.sets.contains_key(&s.name) || recreated.iter().any(|r| r.name == s.name);
            if fresh {
                push_elements(&mut tx, &at, s, s.elements.iter());
                continue;
            }
            let Some(os) = o.sets.get(&s.name) else { continue };
            if os.elements == s.elements {
                continue;
            }
            let gone: Vec<String> = os
                .elements
                .iter()
                .filter(|(k, v)| s.elements.get(*k) != Some(*v))
                .map(|(k, _)| k.clone())
                .collect();
            if !gone.is_empty() {
                tx.ops.push(Op::DeleteElements(at.clone(), set_def(s), gone));
            }
            push_elements(&mut tx, &at, s, s.elements.iter().filter(|(k, v)| os.elements.get(*k) != Some(*v)));
        }
        // 6. deletions, after every reference to them is gone.
        for c in &removed {
            tx.ops.push(Op::DeleteChain(at.clone(), c.name.clone()));
        }
        for s in o.sets.values().filter(|s| !t.sets.contains_key(&s.name)) {
            tx.ops.push(Op::DeleteSet(at.clone(), s.name.clone()));
        }
    }
    for o in &prev.tables {
        if !next.tables.iter().any(|t| t.family == o.family && t.name == o.name) {
            tx.ops.push(Op::DeleteTable(TableRef { family: o.family, name: o.name.clone() }));
        }
    }
    tx
}
