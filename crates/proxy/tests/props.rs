//! Property tests of the renderer: every usable endpoint is reachable, nothing is left
//! unreferenced, and removing everything leaves an empty table.

#![allow(clippy::unwrap_used)]
mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use dari_proxy::render::{resolve_endpoints, usable_endpoints};
use dari_proxy::{render, Family, NodeFacts, ProxyConfig, Ruleset};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proptest::prelude::*;

const NODES: [&str; 3] = ["n0", "n1", "n2"];
const PROTOS: [&str; 3] = ["TCP", "UDP", "SCTP"];

#[derive(Debug, Clone)]
struct SvcSpec {
    ports: Vec<(usize, i32)>,              // (proto index, port)
    endpoints: Vec<(u8, usize, u8)>,       // (host byte, node index, cond 0..3)
    affinity: bool,
    type_: u8,                             // 0 ClusterIP, 1 NodePort, 2 LoadBalancer
    itp_local: bool,
    etp_local: bool,
}

fn svc_spec() -> impl Strategy<Value = SvcSpec> {
    (
        prop::collection::btree_map(0usize..3, 1i32..200, 1..3).prop_map(|m| m.into_iter().collect()),
        prop::collection::vec((1u8..50, 0usize..3, 0u8..3), 0..5),
        any::<bool>(),
        0u8..3,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(ports, endpoints, affinity, type_, itp_local, etp_local)| SvcSpec {
            ports,
            endpoints,
            affinity,
            type_,
            itp_local,
            etp_local,
        })
}

fn build(specs: &[SvcSpec]) -> (Vec<Service>, Vec<EndpointSlice>) {
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for (i, sp) in specs.iter().enumerate() {
        let name = format!("s{i}");
        let ports: Vec<(String, &str, i32, IntOrString)> = sp
            .ports
            .iter()
            .map(|(p, port)| (format!("p{p}"), PROTOS[*p], *port, IntOrString::Int(8000 + *port)))
            .collect();
        let port_refs: Vec<(&str, &str, i32, IntOrString)> =
            ports.iter().map(|(n, p, port, t)| (n.as_str(), *p, *port, t.clone())).collect();
        let mut s = service("ns", &name, &format!("10.200.{i}.1"), &port_refs);
        if sp.type_ > 0 {
            let nps: Vec<i32> = (0..ports.len() as i32).map(|k| 30000 + 10 * i as i32 + k).collect();
            s = with_type(s, if sp.type_ == 1 { "NodePort" } else { "LoadBalancer" }, &nps);
        }
        if sp.type_ == 2 {
            s = with_lb_ingress(s, &[&format!("192.0.2.{}", i + 1)]);
        }
        if sp.affinity {
            s = with_affinity(s, Some(30));
        }
        s = with_policies(s, if sp.itp_local { "Local" } else { "Cluster" }, if sp.etp_local { "Local" } else { "Cluster" });
        services.push(s);
        let eps: Vec<(String, &str, Cond)> = sp
            .endpoints
            .iter()
            .map(|(h, n, c)| {
                let cond = [Cond::Ready, Cond::NotReady, Cond::Terminating][*c as usize];
                (format!("10.10.{i}.{h}"), NODES[*n], cond)
            })
            .collect();
        let ep_refs: Vec<(&str, &str, Cond)> = eps.iter().map(|(a, n, c)| (a.as_str(), *n, *c)).collect();
        let slice_ports: Vec<(String, &str, i32)> =
            sp.ports.iter().map(|(p, port)| (format!("p{p}"), PROTOS[*p], 8000 + *port)).collect();
        let sp_refs: Vec<(&str, &str, i32)> = slice_ports.iter().map(|(n, p, port)| (n.as_str(), *p, *port)).collect();
        slices.push(slice("ns", &name, "x", &sp_refs, &ep_refs));
    }
    (services, slices)
}

fn node() -> NodeFacts {
    NodeFacts { name: "n0".into(), addresses: vec!["172.18.0.2".parse().unwrap()] }
}

fn cfg() -> ProxyConfig {
    ProxyConfig { cluster_cidrs: vec!["10.10.0.0/16".parse().unwrap()], ..ProxyConfig::default() }
}

/// Chain names referenced by a piece of rule or element text (`goto X`, `jump X`).
fn chain_refs(text: &str) -> Vec<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0] == "goto" || w[0] == "jump")
        .map(|w| w[1].trim_end_matches([',', '}']).to_string())
        .collect()
}

fn set_refs(text: &str) -> Vec<String> {
    text.split_whitespace().filter_map(|w| w.strip_prefix('@')).map(|s| s.to_string()).collect()
}

/// Chains reachable from the base chains, following rules and map elements.
fn reachable(rs: &Ruleset, family: Family) -> BTreeSet<String> {
    let t = rs.table(family).unwrap();
    let chains: BTreeMap<&str, _> = t.chains.iter().map(|c| (c.name.as_str(), c)).collect();
    let mut todo: Vec<String> = t.chains.iter().filter(|c| c.hook.is_some()).map(|c| c.name.clone()).collect();
    let mut seen = BTreeSet::new();
    while let Some(name) = todo.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let c = chains.get(name.as_str()).unwrap_or_else(|| panic!("reference to missing chain {name}"));
        for rule in &c.rules {
            todo.extend(chain_refs(rule));
            for s in set_refs(rule) {
                let set = t.sets.get(&s).unwrap_or_else(|| panic!("reference to missing set {s}"));
                for v in set.elements.values().flatten() {
                    todo.extend(chain_refs(v));
                }
            }
        }
    }
    seen
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn every_usable_endpoint_reachable_and_nothing_unreferenced(specs in prop::collection::vec(svc_spec(), 0..6)) {
        let (services, slices) = build(&specs);
        let rs = render(&services, &slices, &node(), &cfg());
        let t = rs.table(Family::Ip).unwrap();
        let reach = reachable(&rs, Family::Ip);
        // No per-Service chain left unreferenced (the fixed skeleton, e.g. reject-chain, is always there).
        for c in t.chains.iter().filter(|c| ["svc-", "svl-", "ext-"].iter().any(|p| c.name.starts_with(p))) {
            prop_assert!(reach.contains(&c.name), "unreferenced chain {}", c.name);
        }
        // No set left unreferenced.
        let all_rules: String = t.chains.iter().flat_map(|c| c.rules.iter()).cloned().collect::<Vec<_>>().join("\n");
        let used: BTreeSet<String> = set_refs(&all_rules).into_iter().collect();
        for s in t.sets.keys() {
            prop_assert!(used.contains(s), "unreferenced set {}", s);
        }
        // Every usable endpoint of a Cluster-policy service port has a DNAT to it in a reachable
        // Service chain.
        for (i, (svc, sl)) in services.iter().zip(&slices).enumerate() {
            for port in svc.spec.as_ref().unwrap().ports.iter().flatten() {
                let usable = usable_endpoints(&resolve_endpoints(port, &[&sl], Family::Ip, "n0"));
                let any_local = usable.iter().any(|e| e.local);
                let ext_exists = specs[i].type_ > 0 && if specs[i].etp_local { any_local } else { !usable.is_empty() };
                let all_reachable = !specs[i].itp_local || ext_exists;
                let id = format!("ns/s{i}/{}/{}", port.protocol.as_deref().unwrap().to_lowercase(), port.name.as_deref().unwrap());
                let dnats = |prefix: &str| -> String {
                    t.chain(&format!("{prefix}-{id}")).filter(|c| reach.contains(&c.name)).map(|c| c.rules.join("\n")).unwrap_or_default()
                };
                // The fast path: elements of the shared DNAT maps keyed by the ClusterIP and port.
                let cip = svc.spec.as_ref().unwrap().cluster_ip.clone().unwrap();
                let proto = port.protocol.as_deref().unwrap().to_lowercase();
                let prefix = format!("{cip} . {} . ", port.port);
                let np_prefix = port.node_port.map(|np| format!("{np} . "));
                let (svc_maps, np_maps) = (format!("service-dnat-{proto}-"), format!("nodeport-dnat-{proto}-"));
                let mapped: Vec<String> = t
                    .sets
                    .iter()
                    .flat_map(|(n, s)| s.elements.iter().map(move |e| (n, e)))
                    .filter(|(n, (k, _))| {
                        (n.starts_with(&svc_maps) && k.starts_with(&prefix))
                            || (n.starts_with(&np_maps) && np_prefix.as_ref().is_some_and(|p| k.starts_with(p)))
                    })
                    .map(|(_, e)| e)
                    .filter_map(|(_, v)| v.as_deref()?.split_once(" . ").map(|(ip, p)| format!("dnat to {ip}:{p}")))
                    .collect();
                let text = format!("{}\n{}\n{}", dnats("svc"), dnats("svl"), mapped.join("\n"));
                for ep in usable.iter().filter(|e| all_reachable || e.local) {
                    let dnat = format!("dnat to {}:{}", ep.ip, ep.port);
                    prop_assert!(text.contains(&dnat), "endpoint {} of {} not reachable", dnat, id);
                }
                // And no DNAT to endpoints that are not usable.
                for ep in resolve_endpoints(port, &[&sl], Family::Ip, "n0") {
                    if !usable.contains(&ep) {
                        let dnat = format!("dnat to {}:{}", ep.ip, ep.port);
                        prop_assert!(!text.contains(&dnat), "DNAT to unusable {}", dnat);
                    }
                }
            }
        }
    }

    #[test]
    fn deleting_everything_yields_an_empty_table(specs in prop::collection::vec(svc_spec(), 0..6)) {
        let (services, slices) = build(&specs);
        let full = render(&services, &slices, &node(), &cfg());
        let empty = render::<Service, EndpointSlice>(&[], &[], &node(), &cfg());
        // The empty ruleset has the skeleton only: no service chains, no elements but node IPs.
        let t = empty.table(Family::Ip).unwrap();
        prop_assert!(t.chains.iter().all(|c| !c.name.starts_with("svc-") && !c.name.starts_with("ext-") && !c.name.starts_with("svl-")));
        prop_assert!(t.sets.iter().all(|(n, s)| s.elements.is_empty() || n == "nodeport-ips" || n == "hairpin-ips"));
        // And the diff from `full` deletes every service chain and set.
        let script = empty.diff_script(&full);
        let ft = full.table(Family::Ip).unwrap();
        for c in ft.chains.iter().filter(|c| t.chain(&c.name).is_none()) {
            let line = format!("delete chain ip dari {}", c.name);
            prop_assert!(script.lines().any(|l| l == line), "missing: {}", line);
        }
        for s in ft.sets.keys().filter(|s| !t.sets.contains_key(*s)) {
            let line = format!("delete set ip dari {s}");
            prop_assert!(script.lines().any(|l| l == line), "missing: {}", line);
        }
        // Rendering is deterministic.
        prop_assert_eq!(render(&services, &slices, &node(), &cfg()), full);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// `plan(prev, next)` applied to a model of the kernel holding `prev` gives exactly `next`,
    /// with the kernel's ordering checks (no deleting a chain or set in use, no dangling
    /// references, no overwriting an element). The full rewrite does the same from any state.
    #[test]
    fn plan_applied_to_prev_yields_next(
        a in prop::collection::vec(svc_spec(), 0..5),
        b in prop::collection::vec(svc_spec(), 0..5),
        affinity_timeout in prop::option::of(1i32..100),
    ) {
        use dari_proxy::model::Model;
        use dari_proxy::plan;
        let (s1, e1) = build(&a);
        let (mut s2, e2) = build(&b);
        if let Some(t) = affinity_timeout {
            // Change an affinity timeout: the set is re-created, its users re-written.
            s2 = s2.into_iter().map(|s| with_affinity(s, Some(t))).collect();
        }
        let prev = render(&s1, &e1, &node(), &cfg());
        let next = render(&s2, &e2, &node(), &cfg());
        // Full load of prev into empty tables, through the full-sync transaction.
        let mut m = Model::default();
        m.apply(&prev.full_sync(&Default::default())).map_err(TestCaseError::fail)?;
        prop_assert_eq!(&m, &Model::of(&prev));
        let tx = plan(&prev, &next);
        prop_assert_eq!(tx.is_empty(), prev == next);
        m.apply(&tx).map_err(|e| TestCaseError::fail(format!("{e}\n--- transaction:\n{tx}")))?;
        prop_assert_eq!(&m, &Model::of(&next));
        // And the full rewrite repairs the model of prev into next too.
        let mut m2 = Model::of(&prev);
        let existing = BTreeMap::from_iter(prev.tables.iter().map(|t| (t.family, dari_proxy::nft::ExistingObjects {
            chains: t.chains.iter().map(|c| c.name.clone()).collect(),
            sets: t.sets.keys().cloned().collect(),
        })));
        m2.apply(&next.full_sync(&existing)).map_err(TestCaseError::fail)?;
        // Dynamic (affinity) sets keep their elements on a full sync; they are empty here.
        prop_assert_eq!(&m2, &Model::of(&next));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// The cached, per-Service path: a `ProxyState` holding `a`, fed the objects of `b` (and the
    /// deletions), plans a transaction that takes a model of the kernel holding `render(a)` to
    /// exactly `render(b)`, and its assembled ruleset is `render(b)`.
    #[test]
    fn state_changes_take_render_of_prev_to_render_of_next(
        a in prop::collection::vec(svc_spec(), 0..5),
        b in prop::collection::vec(svc_spec(), 0..5),
        affinity_timeout in prop::option::of(1i32..100),
        shared_endpoints in any::<bool>(),
    ) {
        use dari_proxy::model::Model;
        use dari_proxy::ProxyState;
        let (s1, mut e1) = build(&a);
        let (mut s2, mut e2) = build(&b);
        if shared_endpoints {
            // Endpoints shared between Services (shared `@hairpin-ips` elements, UDP endpoints).
            for sl in e1.iter_mut().chain(e2.iter_mut()) {
                for ep in &mut sl.endpoints {
                    for a in &mut ep.addresses {
                        let o: Vec<&str> = a.split('.').collect();
                        *a = format!("10.10.0.{}", o[3]);
                    }
                }
            }
        }
        if let Some(t) = affinity_timeout {
            s2 = s2.into_iter().map(|s| with_affinity(s, Some(t))).collect();
        }
        let mut st = ProxyState::from_objects(&s1, &e1, node(), cfg());
        let prev = st.ruleset();
        prop_assert_eq!(&prev, &render(&s1, &e1, &node(), &cfg()));
        let names = |v: Vec<(Option<String>, Option<String>)>| -> BTreeSet<(String, String)> {
            v.into_iter().map(|(n, m)| (n.unwrap_or_default(), m.unwrap_or_default())).collect()
        };
        let keep_s = names(s2.iter().map(|s| (s.metadata.namespace.clone(), s.metadata.name.clone())).collect());
        let keep_e = names(e2.iter().map(|s| (s.metadata.namespace.clone(), s.metadata.name.clone())).collect());
        for s in &s1 {
            let k = (s.metadata.namespace.clone().unwrap_or_default(), s.metadata.name.clone().unwrap_or_default());
            if !keep_s.contains(&k) { st.delete_service(&k.0, &k.1); }
        }
        for s in &e1 {
            let k = (s.metadata.namespace.clone().unwrap_or_default(), s.metadata.name.clone().unwrap_or_default());
            if !keep_e.contains(&k) { st.delete_slice(&k.0, &k.1); }
        }
        for s in &s2 { st.upsert_service(s); }
        for e in &e2 { st.upsert_slice(e); }
        let ch = st.take_changes();
        let next = render(&s2, &e2, &node(), &cfg());
        let mut m = Model::of(&prev);
        m.apply(&ch.tx).map_err(|e| TestCaseError::fail(format!("{e}\n--- transaction:\n{}", ch.tx)))?;
        prop_assert_eq!(&m, &Model::of(&next));
        prop_assert_eq!(ch.tx.is_empty(), prev == next);
        prop_assert_eq!(st.ruleset(), next);
        // Nothing dirty any more: no changes.
        prop_assert!(st.take_changes().tx.is_empty());
    }
}
