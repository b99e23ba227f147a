//! A model of the kernel's nftables tables that applies [`Transaction`]s with the kernel's
//! checks that matter for ordering: a chain or set cannot be deleted while a rule or a map
//! element refers to it, a rule or element cannot refer to a chain or set that does not exist,
//! an element cannot be added over an existing key with another value, and deleting what does
//! not exist fails. All or nothing, like a batch. Used by the property tests: applying
//! `plan(prev, next)` to the model of `prev` must give the model of `next`.

use std::collections::BTreeMap;

use crate::nft::{Hook, Op, Ruleset, Set, TableRef, Transaction};

/// One chain in the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelChain {
    /// Hook of a base chain.
    pub hook: Option<Hook>,
    /// Rules, in order.
    pub rules: Vec<String>,
}

/// One set or map in the model: its definition (elements ignored) and its elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSet {
    /// `type` line, flags, timeout, map or not.
    pub definition: (bool, String, Option<&'static str>, Option<u32>),
    /// Elements: key -> value.
    pub elements: BTreeMap<String, Option<String>>,
}

/// One table in the model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelTable {
    /// Chains by name.
    pub chains: BTreeMap<String, ModelChain>,
    /// Sets and maps by name.
    pub sets: BTreeMap<String, ModelSet>,
}

/// The kernel state: tables by (family, name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    /// Tables.
    pub tables: BTreeMap<TableRef, ModelTable>,
}

fn definition(s: &Set) -> (bool, String, Option<&'static str>, Option<u32>) {
    (s.is_map, s.type_.clone(), s.flags, s.timeout_secs)
}

/// Chain names a rule or element value refers to (`jump X`, `goto X`, also inside vmaps).
pub fn chain_refs(text: &str) -> impl Iterator<Item = &str> {
    let toks: Vec<&str> = text.split_whitespace().collect();
    let mut out = Vec::new();
    for w in toks.windows(2) {
        if w[0] == "jump" || w[0] == "goto" {
            out.push(w[1].trim_end_matches([',', '}']));
        }
    }
    out.into_iter()
}

/// Set names a rule refers to (`@name`).
pub fn set_refs(text: &str) -> impl Iterator<Item = &str> {
    text.split_whitespace()
        .filter_map(|w| w.strip_prefix('@'))
        .map(|w| w.trim_end_matches([',', '}']))
        .collect::<Vec<_>>()
        .into_iter()
}

impl Model {
    /// The state that loading `rs` into empty tables gives.
    pub fn of(rs: &Ruleset) -> Model {
        let mut m = Model::default();
        for t in &rs.tables {
            let mt = ModelTable {
                chains: t
                    .chains
                    .iter()
                    .map(|c| (c.name.clone(), ModelChain { hook: c.hook.clone(), rules: c.rules.clone() }))
                    .collect(),
                sets: t
                    .sets
                    .values()
                    .map(|s| (s.name.clone(), ModelSet { definition: definition(s), elements: s.elements.clone() }))
                    .collect(),
            };
            m.tables.insert(TableRef { family: t.family, name: t.name.clone() }, mt);
        }
        m
    }

    /// Applies `tx` as one batch: on error nothing changes and the error names the failing op.
    pub fn apply(&mut self, tx: &Transaction) -> Result<(), String> {
        let mut next = self.clone();
        for (i, op) in tx.ops.iter().enumerate() {
            next.op(op).map_err(|e| format!("op {i} ({}): {e}", Transaction { ops: vec![op.clone()] }.to_string().trim_end()))?;
        }
        *self = next;
        Ok(())
    }

    fn table(&mut self, t: &TableRef) -> Result<&mut ModelTable, String> {
        self.tables.get_mut(t).ok_or_else(|| format!("no table {t}"))
    }

    fn op(&mut self, op: &Op) -> Result<(), String> {
        match op {
            Op::AddTable(t) => {
                self.tables.entry(t.clone()).or_default();
            }
            Op::DeleteTable(t) => {
                self.tables.remove(t).ok_or_else(|| format!("no table {t}"))?;
            }
            Op::AddChain(t, c, hook) => {
                let mt = self.table(t)?;
                match mt.chains.get(c) {
                    Some(existing) if existing.hook != *hook => return Err(format!("chain {c} exists with another hook")),
                    Some(_) => {}
                    None => {
                        mt.chains.insert(c.clone(), ModelChain { hook: hook.clone(), rules: Vec::new() });
                    }
                }
            }
            Op::FlushChain(t, c) => {
                let mt = self.table(t)?;
                mt.chains.get_mut(c).ok_or_else(|| format!("no chain {c}"))?.rules.clear();
            }
            Op::DeleteChain(t, c) => {
                let mt = self.table(t)?;
                if !mt.chains.contains_key(c) {
                    return Err(format!("no chain {c}"));
                }
                let in_rule = mt.chains.iter().any(|(_, ch)| ch.rules.iter().any(|r| chain_refs(r).any(|x| x == c)));
                let in_elem = mt
                    .sets
                    .values()
                    .any(|s| s.elements.values().flatten().any(|v| chain_refs(v).any(|x| x == c)));
                if in_rule || in_elem {
                    return Err(format!("chain {c} is in use (EBUSY)"));
                }
                mt.chains.remove(c);
            }
            Op::AddRule(t, c, r) => {
                let mt = self.table(t)?;
                for x in chain_refs(r) {
                    if !mt.chains.contains_key(x) {
                        return Err(format!("rule refers to missing chain {x}"));
                    }
                }
                for x in set_refs(r) {
                    if !mt.sets.contains_key(x) {
                        return Err(format!("rule refers to missing set {x}"));
                    }
                }
                mt.chains.get_mut(c).ok_or_else(|| format!("no chain {c}"))?.rules.push(r.clone());
            }
            Op::AddSet(t, s) => {
                let mt = self.table(t)?;
                match mt.sets.get(&s.name) {
                    Some(existing) if existing.definition != definition(s) => {
                        return Err(format!("set {} exists with another definition", s.name))
                    }
                    Some(_) => {}
                    None => {
                        mt.sets.insert(s.name.clone(), ModelSet { definition: definition(s), elements: BTreeMap::new() });
                    }
                }
            }
            Op::FlushSet(t, s, _) => {
                let mt = self.table(t)?;
                mt.sets.get_mut(s).ok_or_else(|| format!("no set {s}"))?.elements.clear();
            }
            Op::DeleteSet(t, s) => {
                let mt = self.table(t)?;
                if !mt.sets.contains_key(s) {
                    return Err(format!("no set {s}"));
                }
                if mt.chains.values().any(|ch| ch.rules.iter().any(|r| set_refs(r).any(|x| x == s))) {
                    return Err(format!("set {s} is in use (EBUSY)"));
                }
                mt.sets.remove(s);
            }
            Op::AddElements(t, s, elements) => {
                let mt = self.table(t)?;
                for (_, v) in elements {
                    for x in v.iter().flat_map(|v| chain_refs(v)) {
                        if !mt.chains.contains_key(x) {
                            return Err(format!("element refers to missing chain {x}"));
                        }
                    }
                }
                let ms = mt.sets.get_mut(&s.name).ok_or_else(|| format!("no set {}", s.name))?;
                for (k, v) in elements {
                    match ms.elements.get(k) {
                        Some(old) if old != v => return Err(format!("element {k} exists with another value")),
                        _ => {
                            ms.elements.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            Op::DeleteElements(t, s, keys) => {
                let mt = self.table(t)?;
                let ms = mt.sets.get_mut(&s.name).ok_or_else(|| format!("no set {}", s.name))?;
                for k in keys {
                    ms.elements.remove(k).ok_or_else(|| format!("no element {k} in {}", s.name))?;
                }
            }
        }
        Ok(())
    }
}
