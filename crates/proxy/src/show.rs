//! `dari proxy show [svc/NAME]`: what a Service turns into on this node, readably.

use std::fmt::Write as _;

use k8s_openapi::api::core::v1::Service;

use crate::nft::Ruleset;

/// The element keys that lead to a Service, as (set-name prefix or "" for any set, key or key
/// prefix): `IP . proto . port` and `proto . nodePort` in the shared sets and verdict maps,
/// `IP . port . k` and `nodePort . k` in the DNAT maps of the port's protocol.
fn service_keys(svc: &Service) -> Vec<(String, String)> {
    let Some(spec) = svc.spec.as_ref() else { return Vec::new() };
    let mut ips: Vec<String> = spec.cluster_ips.clone().unwrap_or_default();
    if ips.is_empty() {
        ips.extend(spec.cluster_ip.clone());
    }
    ips.extend(spec.external_ips.clone().unwrap_or_default());
    for lb in svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|l| l.ingress.as_ref()).into_iter().flatten() {
        ips.extend(lb.ip.clone());
    }
    let mut keys = Vec::new();
    for p in spec.ports.iter().flatten() {
        let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
        for ip in ips.iter().filter(|ip| ip.as_str() != "None") {
            keys.push((String::new(), format!("{ip} . {proto} . {}", p.port)));
            keys.push((format!("service-dnat-{proto}-"), format!("{ip} . {} . ", p.port)));
        }
        if let Some(np) = p.node_port {
            keys.push((String::new(), format!("{proto} . {np}")));
            keys.push((format!("nodeport-dnat-{proto}-"), format!("{np} . ")));
        }
    }
    keys
}

/// Describes the Service `namespace/name` (or every Service of `namespace` when `name` is
/// `None`; `services` are the cluster's Services, to find their addresses): the set and map
/// elements that lead to it (the shared DNAT maps' elements say which share of new connections
/// each endpoint gets), then its chains (a `numgen random mod N == 0` rule takes 1/N of what
/// reaches it; affinity sets are listed with their timeout).
pub fn show(rs: &Ruleset, services: &[Service], namespace: &str, name: Option<&str>) -> String {
    let needle = match name {
        Some(n) => format!("-{namespace}/{n}/"),
        None => format!("-{namespace}/"),
    };
    let keys: Vec<(String, String)> = services
        .iter()
        .filter(|s| s.metadata.namespace.as_deref().unwrap_or("default") == namespace)
        .filter(|s| name.is_none() || s.metadata.name.as_deref() == name)
        .flat_map(service_keys)
        .collect();
    let leads_here = |set: &str, k: &str| {
        keys.iter().any(|(prefix, key)| if prefix.is_empty() { k == key } else { set.starts_with(prefix.as_str()) && k.starts_with(key.as_str()) })
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
            let modulus = s.type_.split("numgen random mod ").nth(1).and_then(|r| r.split_whitespace().next());
            for (k, v) in &s.elements {
                let to_chain = v.as_deref().is_some_and(|v| v.contains(&needle));
                if !to_chain && !leads_here(&s.name, k) {
                    continue;
                }
                head(&mut out);
                let set = format!("@{}", s.name);
                match (v, modulus) {
                    (Some(v), Some(n)) => {
                        let _ = writeln!(out, "{set:<22} {k} -> dnat to {v}    # 1/{n} of new connections");
                    }
                    (Some(v), None) => {
                        let _ = writeln!(out, "{set:<22} {k} -> {v}");
                    }
                    (None, _) => {
                        let _ = writeln!(out, "{set:<22} {k}");
                    }
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
