//! Golden-file tests of the renderer: each case prints the ruleset as `nft` text and compares it
//! with tests/golden/NAME.nft. `UPDATE_GOLDEN=1 cargo test -p dari-proxy --test golden` rewrites
//! them (review the diff!). The `nft_accepts_golden_files` test in tests/netns.rs checks every
//! golden file with `nft -c -f` (root).

#![allow(clippy::unwrap_used)]
mod common;

use common::*;
use dari_proxy::{render, NodeFacts, ProxyConfig, Ruleset};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

fn golden(name: &str, text: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {} ({e}); run with UPDATE_GOLDEN=1 to create it", path.display()));
    if want != text {
        panic!("{name}: rendered ruleset differs from {}\n--- rendered:\n{text}", path.display());
    }
}

fn node() -> NodeFacts {
    NodeFacts { name: "myk8s-control-plane".into(), addresses: vec!["172.18.0.2".parse().unwrap(), "fc00::2".parse().unwrap()] }
}

fn cfg() -> ProxyConfig {
    ProxyConfig {
        cluster_cidrs: vec!["10.10.0.0/16".parse().unwrap(), "fd10::/64".parse().unwrap()],
        service_cidrs: vec!["10.200.1.0/24".parse().unwrap()],
        ..ProxyConfig::default()
    }
}

fn r(services: &[Service], slices: &[EndpointSlice]) -> Ruleset {
    render(services, slices, &node(), &cfg())
}

/// The IPv4 table only (the IPv6 one is the bare skeleton in IPv4-only cases; see ipv6.nft, empty.nft).
fn v4(rs: &Ruleset) -> String {
    rs.table(dari_proxy::Family::Ip).map(|t| t.to_nft()).unwrap_or_default()
}

/// The seed 003 Service: port 9000 -> 80 on three webpods, one per worker.
pub fn seed003() -> (Service, EndpointSlice) {
    (
        service("default", "svc-clusterip", "10.200.1.10", &[tcp("svc-webport", 9000, 80)]),
        slice(
            "default",
            "svc-clusterip",
            "abcde",
            &[("svc-webport", "TCP", 80)],
            &[
                ("10.10.1.2", "myk8s-worker", Cond::Ready),
                ("10.10.2.2", "myk8s-worker2", Cond::Ready),
                ("10.10.3.2", "myk8s-worker3", Cond::Ready),
            ],
        ),
    )
}

#[test]
fn empty() {
    golden("empty.nft", &r(&[], &[]).to_nft());
}

#[test]
fn clusterip_seed003() {
    let (s, e) = seed003();
    golden("clusterip.nft", &v4(&r(&[s], &[e])));
}

#[test]
fn multiport_protocols_named_target_ports() {
    // dns: UDP+TCP 53 -> named port "dns"/"dns-tcp" resolved from the slice (5353);
    // sctp: 3868; two slices for one Service (the endpoint set is their union).
    let s = service(
        "kube-system",
        "dns",
        "10.200.1.53",
        &[
            ("dns", "UDP", 53, IntOrString::String("dns".into())),
            ("dns-tcp", "TCP", 53, IntOrString::String("dns-tcp".into())),
            ("diameter", "SCTP", 3868, IntOrString::Int(3868)),
        ],
    );
    let ports = [("dns", "UDP", 5353), ("dns-tcp", "TCP", 5353), ("diameter", "SCTP", 3868)];
    let a = slice("kube-system", "dns", "a", &ports, &[("10.10.1.5", "myk8s-worker", Cond::Ready)]);
    let b = slice("kube-system", "dns", "b", &ports, &[("10.10.2.5", "myk8s-worker2", Cond::Ready)]);
    golden("multiport.nft", &v4(&r(&[s], &[a, b])));
}

#[test]
fn nodeport_external_ips_loadbalancer() {
    let s = service("default", "web", "10.200.1.20", &[tcp("http", 80, 8080), tcp("https", 443, 8443)]);
    let s = with_lb_ingress(with_external_ips(with_type(s, "LoadBalancer", &[30080, 30443]), &["192.0.2.10"]), &["198.51.100.7"]);
    let e = slice(
        "default",
        "web",
        "x",
        &[("http", "TCP", 8080), ("https", "TCP", 8443)],
        &[("10.10.1.7", "myk8s-worker", Cond::Ready), ("10.10.2.7", "myk8s-worker2", Cond::Ready)],
    );
    golden("nodeport.nft", &v4(&r(&[s], &[e])));
}

#[test]
fn no_endpoints_reject_and_not_ready() {
    // "empty": no slice at all; "notready": only a not-ready endpoint. Both reject; NodePort too.
    let a = service("default", "empty", "10.200.1.30", &[tcp("", 80, 80)]);
    let b = with_type(service("default", "notready", "10.200.1.31", &[tcp("http", 80, 80)]), "NodePort", &[30031]);
    let e = slice("default", "notready", "x", &[("http", "TCP", 80)], &[("10.10.1.9", "myk8s-worker", Cond::NotReady)]);
    golden("no-endpoints.nft", &v4(&r(&[a, b], &[e])));
}

#[test]
fn terminating_used_only_without_ready() {
    // "rolling": one ready + one terminating -> only the ready one.
    // "draining": only terminating(+serving) -> those are used.
    let a = service("default", "rolling", "10.200.1.40", &[tcp("http", 80, 80)]);
    let ea = slice(
        "default",
        "rolling",
        "x",
        &[("http", "TCP", 80)],
        &[("10.10.1.40", "myk8s-worker", Cond::Ready), ("10.10.2.40", "myk8s-worker2", Cond::Terminating)],
    );
    let b = service("default", "draining", "10.200.1.41", &[tcp("http", 80, 80)]);
    let eb = slice(
        "default",
        "draining",
        "x",
        &[("http", "TCP", 80)],
        &[("10.10.1.41", "myk8s-worker", Cond::Terminating), ("10.10.2.41", "myk8s-worker2", Cond::NotReady)],
    );
    golden("terminating.nft", &v4(&r(&[a, b], &[ea, eb])));
}

#[test]
fn session_affinity_client_ip() {
    let (s, e) = seed003();
    golden("affinity.nft", &v4(&r(&[with_affinity(s, Some(10800))], &[e])));
}

#[test]
fn traffic_policy_local() {
    // Local endpoint 10.10.0.5 is on this node (myk8s-control-plane), 10.10.1.5 is not.
    let s = with_type(service("default", "local", "10.200.1.50", &[tcp("http", 80, 80)]), "NodePort", &[30050]);
    let s = with_policies(s, "Local", "Local");
    let e = slice(
        "default",
        "local",
        "x",
        &[("http", "TCP", 80)],
        &[("10.10.0.5", "myk8s-control-plane", Cond::Ready), ("10.10.1.5", "myk8s-worker", Cond::Ready)],
    );
    // Same, but no endpoint on this node: NodePort traffic is dropped, ClusterIP too.
    let s2 = with_type(service("default", "remote-only", "10.200.1.51", &[tcp("http", 80, 80)]), "NodePort", &[30051]);
    let s2 = with_policies(s2, "Local", "Local");
    let e2 = slice("default", "remote-only", "x", &[("http", "TCP", 80)], &[("10.10.1.6", "myk8s-worker", Cond::Ready)]);
    golden("traffic-policy-local.nft", &v4(&r(&[s, s2], &[e, e2])));
}

#[test]
fn ipv6_service() {
    let s = service("default", "v6", "fd00:200::10", &[tcp("http", 80, 8080)]);
    let s = with_affinity(with_type(s, "NodePort", &[30060]), Some(60));
    let e = slice(
        "default",
        "v6",
        "x",
        &[("http", "TCP", 8080)],
        &[("fd10::1:2", "myk8s-worker", Cond::Ready), ("fd10::2:2", "myk8s-worker2", Cond::Ready)],
    );
    golden("ipv6.nft", &r(&[s], &[e]).to_nft());
}

#[test]
fn masquerade_all_and_hairpin() {
    let (s, e) = seed003();
    let cfg = ProxyConfig { masquerade_all: true, nodeport_localhost: true, ..cfg() };
    golden("masquerade-all.nft", &v4(&render(&[s], &[e], &node(), &cfg)));
}

#[test]
fn diff_add_endpoint_and_service() {
    let (s, e) = seed003();
    let before = r(std::slice::from_ref(&s), std::slice::from_ref(&e));
    let mut e2 = e.clone();
    e2.endpoints.pop();
    let other = service("default", "other", "10.200.1.60", &[tcp("http", 80, 80)]);
    let after = r(&[s, other], &[e2]);
    golden("diff-remove-endpoint-add-service.nft", &after.diff_script(&before));
    assert_eq!(after.diff_script(&after), "", "no change, no transaction");
}

#[test]
fn full_sync_script_shape() {
    let (s, e) = seed003();
    let rs = r(&[with_affinity(s, None)], &[e]);
    let mut existing = std::collections::BTreeMap::new();
    existing.insert(
        dari_proxy::Family::Ip,
        dari_proxy::nft::ExistingObjects::parse_listing(
            "table ip dari {\n\tset aff-default/gone/tcp/p80__10.10.9.9/80 {\n\tchain ep-default/gone/tcp/p80__10.10.9.9/80 {\n",
        ),
    );
    golden("full-sync-script.nft", &rs.full_sync_script(&existing));
}

#[test]
fn show_service() {
    let (s, e) = seed003();
    let rs = r(&[with_affinity(s, Some(10800))], &[e]);
    golden("show-svc-clusterip.txt", &dari_proxy::show(&rs, &[with_affinity(seed003().0, Some(10800))], "default", Some("svc-clusterip")));
}

#[test]
fn show_service_on_the_fast_path() {
    // Without affinity the Service has no chain: `show` finds its elements by its addresses.
    let (svc, e) = seed003();
    let rs = r(std::slice::from_ref(&svc), &[e]);
    golden("show-svc-fast.txt", &dari_proxy::show(&rs, &[svc], "default", Some("svc-clusterip")));
}

#[test]
fn clusterip_numgen_vmap_layout() {
    // kube-proxy's exact layout: one `numgen random mod N vmap` per Service port, for ports that
    // have a chain (here the external IP's path; the ClusterIP itself takes the shared DNAT map).
    let (s, e) = seed003();
    let s = with_external_ips(s, &["192.0.2.10"]);
    let cfg = ProxyConfig { numgen_vmap: true, ..cfg() };
    golden("clusterip-numgen-vmap.nft", &v4(&render(&[s], &[e], &node(), &cfg)));
}

/// `plan` when a Service with affinity goes away and another one's affinity timeout changes:
/// map elements go first, chains are flushed before and deleted after, affinity sets are deleted
/// once no rule uses them, and a re-created set's users are flushed and rewritten.
#[test]
fn plan_remove_service_and_change_affinity() {
    let (s, e) = seed003();
    let gone = with_affinity(service("default", "gone", "10.200.1.70", &[tcp("http", 80, 80)]), Some(60));
    let gone_eps = slice("default", "gone", "x", &[("http", "TCP", 80)], &[("10.10.7.7", "myk8s-worker", Cond::Ready)]);
    let before = r(&[with_affinity(s.clone(), Some(100)), gone], &[e.clone(), gone_eps]);
    let after = r(&[with_affinity(s, Some(200))], &[e]);
    let tx = dari_proxy::plan(&before, &after);
    golden("diff-remove-service-change-affinity.nft", &tx.to_string());
    // The model of the kernel accepts it and ends where a fresh load of `after` is.
    let mut m = dari_proxy::model::Model::of(&before);
    m.apply(&tx).unwrap();
    assert_eq!(m, dari_proxy::model::Model::of(&after));
    // The same ops with the chain deletions first are refused (the chain is still referenced).
    let (dels, rest): (Vec<_>, Vec<_>) =
        tx.ops.iter().cloned().partition(|op| matches!(op, dari_proxy::Op::DeleteChain(..)));
    let bad = dari_proxy::Transaction { ops: dels.into_iter().chain(rest).collect() };
    let mut m = dari_proxy::model::Model::of(&before);
    let err = m.apply(&bad).unwrap_err();
    assert!(err.contains("in use"), "{err}");
    assert_eq!(m, dari_proxy::model::Model::of(&before), "a refused transaction changes nothing");
}

#[test]
fn state_reports_udp_endpoints_that_leave_the_dnat_maps() {
    // A UDP Service on the fast path (no chain): its endpoints live in `service-dnat-udp-N`.
    // ProxyState counts them per Service; one gone from every map is reported for conntrack.
    use dari_proxy::ProxyState;
    let svc = service("kube-system", "dns", "10.200.1.14", &[("dns", "UDP", 53, IntOrString::Int(5353))]);
    let other = service("kube-system", "dns2", "10.200.1.15", &[("dns", "UDP", 53, IntOrString::Int(5353))]);
    let third = service("kube-system", "dns3", "10.200.1.16", &[("dns", "UDP", 53, IntOrString::Int(5353))]);
    let eps = |name: &str, addrs: &[&str]| {
        let e: Vec<(&str, &str, Cond)> = addrs.iter().map(|a| (*a, "n", Cond::Ready)).collect();
        slice("kube-system", name, "x", &[("dns", "UDP", 5353)], &e)
    };
    let mut st = ProxyState::new(node(), cfg());
    st.upsert_service(&svc);
    st.upsert_service(&other);
    st.upsert_service(&third);
    st.upsert_slice(&eps("dns", &["10.10.0.11", "10.10.0.12"]));
    st.upsert_slice(&eps("dns2", &["10.10.0.12"]));
    st.upsert_slice(&eps("dns3", &["10.10.0.21", "10.10.0.22"]));
    let first = st.take_changes();
    assert!(first.stale_udp_endpoints.is_empty());
    let t = st.assembled();
    let ip = t.table(dari_proxy::Family::Ip).unwrap();
    assert!(ip.sets.contains_key("service-dnat-udp-2") && ip.sets.contains_key("service-dnat-udp-1"));
    assert!(ip.chains.iter().all(|c| !c.name.starts_with("svc-")), "fast-path Services got chains");
    // 10.10.0.12 leaves `dns` but `dns2` still uses it; 10.10.0.11 is gone from every map. Both
    // maps stay in use (dns3, dns2): the transaction is map elements only.
    st.upsert_slice(&eps("dns", &["10.10.0.13"]));
    let changes = st.take_changes();
    assert_eq!(changes.stale_udp_endpoints, vec![("10.10.0.11".parse().unwrap(), 5353)]);
    let text = changes.tx.to_string();
    assert!(text.contains("delete element ip dari service-dnat-udp-2"), "{text}");
    assert!(text.contains("add element ip dari service-dnat-udp-1 { 10.200.1.14 . 53 . 0 : 10.10.0.13 . 5353 }"), "{text}");
    assert!(!text.contains("chain"), "a DNAT-map change touched chains:\n{text}");
}
