//! [`ProxyState`]: the proxy's inputs in compact form, each Service's rendered [`Fragment`]s
//! cached, and the changes since the last sync turned into a transaction that costs what
//! changed.
//!
//! Watch events go in ([`ProxyState::upsert_service`], [`ProxyState::upsert_slice`], the
//! deletes); an update that changes nothing the renderer reads is dropped on the spot. A Service
//! whose inputs changed is *dirty*. [`ProxyState::take_changes`] re-renders only the dirty
//! Services and plans the transaction with [`crate::plan`] over just their old and new
//! fragments and the shared-map elements they own, so an update at 10,000 Services costs about
//! what it costs at 10. Shared elements are owned: when two Services claim one key (say the same
//! external IP and port), the later one in (namespace, name) order wins, as in [`crate::render`],
//! and the other takes over when it goes.
//!
//! [`ProxyState::ruleset`] assembles the whole desired [`Ruleset`] (full syncs, `show`); it is
//! equal to [`crate::render`] of the same objects (tested).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::config::{NodeFacts, ProxyConfig};
use crate::inputs::{SliceInfo, SvcInfo, SvcKey};
use crate::nft::{plan, Family, Ruleset, Table, Transaction};
use crate::render::{assemble, hairpin_element, render_service, skeleton, with_dnat_maps, DnatGroup, DnatMap, Fragment, Proto};
use crate::sync::udp_endpoints_of_chain;

const FAMILIES: [Family; 2] = [Family::Ip, Family::Ip6];

/// Owners of the shared elements with one key hash: the Services, sorted; the last one whose
/// fragment has the element wins.
type Owners = Vec<SvcKey>;

fn hash_key(k: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    k.hash(&mut h);
    h.finish()
}

/// What [`ProxyState::take_changes`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// The incremental transaction (empty: nothing to do).
    pub tx: Transaction,
    /// UDP endpoints no Service uses any more (their conntrack entries should go).
    pub stale_udp_endpoints: Vec<(IpAddr, u16)>,
    /// How many Services were re-rendered.
    pub rerendered: usize,
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct ProxyState {
    node: NodeFacts,
    cfg: ProxyConfig,
    services: BTreeMap<SvcKey, SvcInfo>,
    slices: HashMap<(String, String), SliceInfo>,
    slices_by_svc: HashMap<SvcKey, BTreeSet<String>>,
    frags: BTreeMap<SvcKey, [Fragment; 2]>,
    owners: [HashMap<(&'static str, u64), Owners>; 2],
    udp_refs: HashMap<(IpAddr, u16), u32>,
    /// How many Services fill each shared DNAT map, per family (a map and its rule exist while
    /// some Service uses them).
    dnat_use: [HashMap<DnatMap, u32>; 2],
    /// How many Services DNAT to each endpoint address, per family (`@hairpin-ips`).
    hairpin_refs: [HashMap<IpAddr, u32>; 2],
    dirty: BTreeSet<SvcKey>,
    needs_full: bool,
}

impl ProxyState {
    /// Empty state; the first sync is full.
    pub fn new(node: NodeFacts, cfg: ProxyConfig) -> Self {
        ProxyState {
            node,
            cfg,
            services: BTreeMap::new(),
            slices: HashMap::new(),
            slices_by_svc: HashMap::new(),
            frags: BTreeMap::new(),
            owners: [HashMap::new(), HashMap::new()],
            udp_refs: HashMap::new(),
            dnat_use: [HashMap::new(), HashMap::new()],
            hairpin_refs: [HashMap::new(), HashMap::new()],
            dirty: BTreeSet::new(),
            needs_full: true,
        }
    }

    /// A state holding these objects (nothing rendered until [`ProxyState::take_changes`] or
    /// [`ProxyState::ruleset`]).
    pub fn from_objects(services: &[Service], slices: &[EndpointSlice], node: NodeFacts, cfg: ProxyConfig) -> Self {
        let mut st = ProxyState::new(node, cfg);
        for s in services {
            st.upsert_service(s);
        }
        for s in slices {
            st.upsert_slice(s);
        }
        st
    }

    /// Number of Services held.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// The node facts in use.
    pub fn node(&self) -> &NodeFacts {
        &self.node
    }

    /// A Service was added or changed. Returns whether it made the Service dirty.
    pub fn upsert_service(&mut self, svc: &Service) -> bool {
        let key = key_of(svc.metadata.namespace.as_deref(), svc.metadata.name.as_deref());
        match SvcInfo::from_service(svc) {
            None => self.remove_service(key),
            Some(info) => {
                if self.services.get(&key) == Some(&info) {
                    return false;
                }
                self.services.insert(key.clone(), info);
                self.dirty.insert(key);
                true
            }
        }
    }

    /// A Service was deleted.
    pub fn delete_service(&mut self, namespace: &str, name: &str) -> bool {
        self.remove_service(SvcKey::new(namespace, name))
    }

    fn remove_service(&mut self, key: SvcKey) -> bool {
        if self.services.remove(&key).is_some() {
            self.dirty.insert(key);
            true
        } else {
            false
        }
    }

    /// An EndpointSlice was added or changed. Returns whether it made a Service dirty.
    pub fn upsert_slice(&mut self, slice: &EndpointSlice) -> bool {
        let id = (
            slice.metadata.namespace.clone().unwrap_or_default(),
            slice.metadata.name.clone().unwrap_or_default(),
        );
        let Some(info) = SliceInfo::from_slice(slice, &self.node.name) else {
            return self.delete_slice(&id.0, &id.1);
        };
        if self.slices.get(&id) == Some(&info) {
            return false;
        }
        if let Some(old) = self.slices.get(&id) {
            if old.service != info.service {
                let old_svc = old.service.clone();
                self.unindex(&old_svc, &id.1);
            }
        }
        self.slices_by_svc.entry(info.service.clone()).or_default().insert(id.1.clone());
        self.dirty.insert(info.service.clone());
        self.slices.insert(id, info);
        true
    }

    /// An EndpointSlice was deleted.
    pub fn delete_slice(&mut self, namespace: &str, name: &str) -> bool {
        let id = (namespace.to_string(), name.to_string());
        let Some(old) = self.slices.remove(&id) else { return false };
        self.unindex(&old.service, name);
        true
    }

    fn unindex(&mut self, svc: &SvcKey, slice_name: &str) {
        if let Some(names) = self.slices_by_svc.get_mut(svc) {
            names.remove(slice_name);
            if names.is_empty() {
                self.slices_by_svc.remove(svc);
            }
        }
        self.dirty.insert(svc.clone());
    }

    /// Keys of the Services and slices held (for a relist: what to delete).
    pub fn keys(&self) -> (Vec<SvcKey>, Vec<(String, String)>) {
        (self.services.keys().cloned().collect(), self.slices.keys().cloned().collect())
    }

    /// The node's facts changed (NodePort addresses): the next sync is full.
    pub fn set_node(&mut self, node: NodeFacts) {
        if node != self.node {
            if node.name != self.node.name {
                // Which endpoints are local was decided on ingest: re-read every slice's verdict
                // is not possible from the compact form, so the caller must re-feed the slices.
                self.dirty.extend(self.services.keys().cloned());
            }
            self.node = node;
            self.needs_full = true;
        }
    }

    /// Whether the next sync must be full (nothing applied yet, a failure, a node change).
    pub fn needs_full(&self) -> bool {
        self.needs_full
    }

    /// The next sync must be full (call when applying a transaction failed).
    pub fn mark_full(&mut self) {
        self.needs_full = true;
    }

    /// A full sync of [`ProxyState::ruleset`] went through.
    pub fn full_sync_done(&mut self) {
        self.needs_full = false;
    }

    /// Re-renders the dirty Services and returns the transaction from the previous fragments to
    /// the new ones (O(changed Services)). The state moves on at once: if applying the
    /// transaction fails, call [`ProxyState::mark_full`].
    pub fn take_changes(&mut self) -> Changes {
        self.refresh(true)
    }

    /// Re-renders the dirty Services; plans the transaction only if `plan_tx` (a full sync
    /// follows otherwise, and the transaction of a first load is as big as the ruleset).
    fn refresh(&mut self, plan_tx: bool) -> Changes {
        let dirty = std::mem::take(&mut self.dirty);
        if dirty.is_empty() {
            return Changes::default();
        }
        // 1. Render the dirty Services (None: gone).
        let mut new_frags: Vec<(SvcKey, Option<[Fragment; 2]>)> = Vec::with_capacity(dirty.len());
        for key in &dirty {
            let new = self.services.get(key).map(|info| {
                let slices: Vec<&SliceInfo> = self
                    .slices_by_svc
                    .get(key)
                    .into_iter()
                    .flatten()
                    .filter_map(|n| self.slices.get(&(key.namespace().to_string(), n.clone())))
                    .collect();
                FAMILIES.map(|f| render_service(key, info, &slices, f, &self.node, &self.cfg))
            });
            new_frags.push((key.clone(), new));
        }
        // 2. Shared elements and DNAT-map destinations (a group of elements at a time) they
        //    touch, and who wins them now.
        let mut affected: [BTreeSet<(&'static str, String)>; 2] = [BTreeSet::new(), BTreeSet::new()];
        let mut affected_groups: [BTreeSet<(&'static str, Box<str>)>; 2] = [BTreeSet::new(), BTreeSet::new()];
        for (key, new) in new_frags.iter().filter(|_| plan_tx) {
            for fi in 0..2 {
                let frags = self.frags.get(key).map(|f| &f[fi]).into_iter().chain(new.as_ref().map(|f| &f[fi]));
                for f in frags {
                    affected[fi].extend(f.elements.iter().map(|(set, k, _)| (*set, k.clone())));
                    affected_groups[fi].extend(f.dnat.iter().map(|g| (group_kind(g.map), g.key.clone())));
                }
            }
        }
        let before: Vec<Vec<Option<Option<String>>>> =
            (0..2).map(|fi| affected[fi].iter().map(|(set, k)| self.winner(fi, set, k)).collect()).collect();
        let groups_before: Vec<Vec<Option<DnatGroup>>> =
            (0..2).map(|fi| affected_groups[fi].iter().map(|(kind, k)| self.group_winner(fi, kind, k)).collect()).collect();
        let dnat_before: [BTreeSet<DnatMap>; 2] = [0, 1].map(|fi| self.dnat_use[fi].keys().copied().collect());
        // 3. The old fragments give up what they held, the new ones take theirs: shared elements
        //    and DNAT destinations are owned (the last owner in key order wins), hairpin
        //    addresses and DNAT maps counted (an element or map exists while some Service uses it).
        // (which hairpin addresses changed, with their presence before: only a plan needs it)
        let mut hairpin_touched: [BTreeMap<IpAddr, bool>; 2] = [BTreeMap::new(), BTreeMap::new()];
        for (key, new) in &new_frags {
            for fi in 0..2 {
                let owners = &mut self.owners[fi];
                let hairpin = &mut self.hairpin_refs[fi];
                let maps = &mut self.dnat_use[fi];
                if let Some(old) = self.frags.get(key).map(|f| &f[fi]) {
                    for (set, k, _) in &old.elements {
                        disown(owners, (set, hash_key(k)), key);
                    }
                    for g in &old.dnat {
                        disown(owners, (group_kind(g.map), hash_key(&g.key)), key);
                        count_down(maps, &g.map);
                    }
                    for a in &old.hairpin {
                        if plan_tx {
                            hairpin_touched[fi].entry(*a).or_insert_with(|| hairpin.contains_key(a));
                        }
                        count_down(hairpin, a);
                    }
                }
                if let Some(new) = new.as_ref().map(|f| &f[fi]) {
                    for (set, k, _) in &new.elements {
                        own(owners, (set, hash_key(k)), key);
                    }
                    for g in &new.dnat {
                        own(owners, (group_kind(g.map), hash_key(&g.key)), key);
                        count_up(maps, g.map);
                    }
                    for a in &new.hairpin {
                        if plan_tx {
                            hairpin_touched[fi].entry(*a).or_insert_with(|| hairpin.contains_key(a));
                        }
                        count_up(hairpin, *a);
                    }
                }
            }
        }
        // 4. Swap the fragments in; keep the old ones for the plan and the UDP counts.
        let mut old_frags: Vec<[Fragment; 2]> = Vec::with_capacity(new_frags.len());
        let mut kept: Vec<SvcKey> = Vec::with_capacity(new_frags.len());
        for (key, new) in new_frags {
            let old = match new {
                Some(f) => {
                    kept.push(key.clone());
                    self.frags.insert(key, f)
                }
                None => self.frags.remove(&key),
            };
            old_frags.push(old.unwrap_or_default());
        }
        // UDP endpoints: count down the old, up the new; what reaches zero is stale.
        let mut maybe_stale: BTreeSet<(IpAddr, u16)> = BTreeSet::new();
        for ep in old_frags.iter().flat_map(|fr| fr.iter().flat_map(udp_endpoints_of_fragment)) {
            if count_down(&mut self.udp_refs, &ep) {
                maybe_stale.insert(ep);
            }
        }
        for key in &kept {
            for ep in self.frags.get(key).into_iter().flat_map(|fr| fr.iter().flat_map(udp_endpoints_of_fragment)) {
                count_up(&mut self.udp_refs, ep);
            }
        }
        let stale_udp_endpoints: Vec<(IpAddr, u16)> =
            maybe_stale.into_iter().filter(|ep| !self.udp_refs.contains_key(ep)).collect();
        let rerendered = dirty.len();
        if !plan_tx {
            return Changes { tx: Transaction::default(), stale_udp_endpoints, rerendered };
        }
        // 5. The plan over just these fragments and elements.
        let mut prev_tables: Vec<Table> = Vec::with_capacity(2);
        let mut next_tables: Vec<Table> = Vec::with_capacity(2);
        for (fi, family) in FAMILIES.into_iter().enumerate() {
            let mut prev = self.mini_table(family, &dnat_before[fi]);
            let mut next = self.mini_table(family, &self.dnat_use[fi].keys().copied().collect());
            for (a, before) in &hairpin_touched[fi] {
                if *before {
                    insert_element(&mut prev, "hairpin-ips", &hairpin_element(*a), None);
                }
                if self.hairpin_refs[fi].contains_key(a) {
                    insert_element(&mut next, "hairpin-ips", &hairpin_element(*a), None);
                }
            }
            for ((kind, k), old) in affected_groups[fi].iter().zip(&groups_before[fi]) {
                if let Some(g) = old {
                    for (ek, ev) in g.elements() {
                        insert_element(&mut prev, g.map.name(), &ek, Some(ev));
                    }
                }
                if let Some(g) = self.group_winner(fi, kind, k) {
                    for (ek, ev) in g.elements() {
                        insert_element(&mut next, g.map.name(), &ek, Some(ev));
                    }
                }
            }
            for ((set, k), v) in affected[fi].iter().zip(&before[fi]) {
                if let Some(v) = v {
                    insert_element(&mut prev, set, k, v.clone());
                }
                if let Some(v) = self.winner(fi, set, k) {
                    insert_element(&mut next, set, k, v);
                }
            }
            for fr in &old_frags {
                prev.chains.extend(fr[fi].chains.iter().cloned());
                for s in &fr[fi].sets {
                    prev.sets.insert(s.name.clone(), s.clone());
                }
            }
            for fr in kept.iter().filter_map(|k| self.frags.get(k)) {
                next.chains.extend(fr[fi].chains.iter().cloned());
                for s in &fr[fi].sets {
                    next.sets.insert(s.name.clone(), s.clone());
                }
            }
            prev_tables.push(prev);
            next_tables.push(next);
        }
        let tx = plan(&Ruleset { tables: prev_tables }, &Ruleset { tables: next_tables });
        Changes { tx, stale_udp_endpoints, rerendered }
    }

    /// The value of `set[key]` now: that of the last Service (in key order) whose fragment has
    /// the element (owners are indexed by a hash of the key; the fragment has the real key).
    fn winner(&self, fi: usize, set: &'static str, key: &str) -> Option<Option<String>> {
        let owners = self.owners[fi].get(&(set, hash_key(key)))?;
        owners.iter().rev().find_map(|o| {
            self.frags
                .get(o)?[fi]
                .elements
                .iter()
                .rev()
                .find(|(s, k, _)| *s == set && k == key)
                .map(|(_, _, v)| v.clone())
        })
    }

    /// The DNAT elements of destination `key` now: those of the last Service (in key order)
    /// whose fragment has a group for it.
    fn group_winner(&self, fi: usize, kind: &'static str, key: &str) -> Option<DnatGroup> {
        let owners = self.owners[fi].get(&(kind, hash_key(key)))?;
        owners.iter().rev().find_map(|o| {
            self.frags.get(o)?[fi].dnat.iter().rev().find(|g| group_kind(g.map) == kind && &*g.key == key).cloned()
        })
    }

    /// What an incremental plan compares besides the changed Services' chains: the shared sets'
    /// definitions, the DNAT maps in use and the `services` chain with their rules (unchanged
    /// unless a map comes or goes).
    fn mini_table(&self, family: Family, dnat: &BTreeSet<DnatMap>) -> Table {
        let mut t = skeleton(family, &self.node, &self.cfg);
        t.chains.retain(|c| c.name == "services");
        with_dnat_maps(&mut t, dnat);
        t
    }

    /// The whole desired ruleset (re-renders dirty Services first, without planning).
    pub fn ruleset(&mut self) -> Ruleset {
        if !self.dirty.is_empty() {
            let _ = self.refresh(false);
        }
        self.assembled()
    }

    /// Re-renders what is dirty for a full sync that follows (no transaction is planned).
    pub fn take_changes_for_full_sync(&mut self) -> Changes {
        self.refresh(false)
    }

    /// The whole ruleset from the cached fragments (dirty Services as last rendered).
    pub fn assembled(&self) -> Ruleset {
        let tables = FAMILIES
            .into_iter()
            .enumerate()
            .map(|(fi, family)| assemble(skeleton(family, &self.node, &self.cfg), self.frags.values().map(|f| &f[fi])))
            .collect();
        Ruleset { tables }
    }
}

/// UDP endpoints a Service's fragment DNATs to (chains and DNAT-map elements).
fn udp_endpoints_of_fragment(f: &Fragment) -> Vec<(IpAddr, u16)> {
    let mut out: Vec<(IpAddr, u16)> = f.chains.iter().flat_map(udp_endpoints_of_chain).collect();
    out.extend(f.dnat.iter().filter(|g| g.map.proto == Proto::Udp).flat_map(|g| g.endpoints.iter().copied()));
    out
}

/// One more user of `k`.
fn count_up<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, u32>, k: K) {
    *counts.entry(k).or_insert(0) += 1;
}

/// One user fewer of `k`; true when that was the last (the entry is gone).
fn count_down<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, u32>, k: &K) -> bool {
    let Some(n) = counts.get_mut(k) else { return false };
    *n = n.saturating_sub(1);
    if *n > 0 {
        return false;
    }
    counts.remove(k);
    true
}

/// `key` claims the shared element or destination `id` (owners stay sorted).
fn own(owners: &mut HashMap<(&'static str, u64), Owners>, id: (&'static str, u64), key: &SvcKey) {
    let list = owners.entry(id).or_default();
    if let Err(i) = list.binary_search(key) {
        list.insert(i, key.clone());
    }
}

/// `key` gives up `id`; the entry goes with its last owner.
fn disown(owners: &mut HashMap<(&'static str, u64), Owners>, id: (&'static str, u64), key: &SvcKey) {
    if let Some(list) = owners.get_mut(&id) {
        list.retain(|o| o != key);
        if list.is_empty() {
            owners.remove(&id);
        }
    }
}

/// Owner-index name of a DNAT destination: ClusterIP or NodePort, and protocol (a destination
/// moves between the maps of different endpoint counts; its owner does not change).
fn group_kind(m: DnatMap) -> &'static str {
    match (m.nodeport, m.proto) {
        (false, Proto::Tcp) => "dnat service tcp",
        (false, Proto::Udp) => "dnat service udp",
        (false, Proto::Sctp) => "dnat service sctp",
        (true, Proto::Tcp) => "dnat nodeport tcp",
        (true, Proto::Udp) => "dnat nodeport udp",
        (true, Proto::Sctp) => "dnat nodeport sctp",
    }
}

fn key_of(namespace: Option<&str>, name: Option<&str>) -> SvcKey {
    SvcKey::new(namespace.unwrap_or_default(), name.unwrap_or_default())
}

fn insert_element(t: &mut Table, set: &str, key: &str, value: Option<String>) {
    if let Some(s) = t.sets.get_mut(set) {
        s.elements.insert(key.to_string(), value);
    }
}
