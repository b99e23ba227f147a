//! The pure renderer: (Services, EndpointSlices, node facts, config) -> [`Ruleset`].
//!
//! Layout per family, as kube-proxy's nftables mode (names shortened):
//!
//! ```text
//! nat-prerouting / nat-output  -> jump services
//! services:   ip daddr . meta l4proto . th dport vmap @service-ips
//!             ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
//! svc-NS/NAME/PROTO/PORT   (all endpoints)   masquerade-if-from-outside, affinity, random pick
//!                          (`numgen random mod N-k == 0 goto ep-k` cascade; `numgen_vmap` for the vmap)
//! svl-NS/NAME/PROTO/PORT   (local endpoints, for trafficPolicy Local)
//! ext-NS/NAME/PROTO/PORT   (NodePort, externalIPs, LB IPs) mark-for-masquerade, goto svc-/svl-
//! ep-NS/NAME/PROTO/PORT__IP/PORT  hairpin masquerade, affinity update, dnat
//! filter-{input,forward,output}: ct state new -> no-endpoint-services (reject / drop),
//!             cluster-ips-check (reject other ports of a ClusterIP)
//! nat-postrouting -> masquerading: masquerade what carries the mark
//! ```

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::config::{NodeFacts, ProxyConfig};
use crate::nft::{Chain, Family, Hook, Ruleset, Set, Table};

/// Label on an EndpointSlice naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

const REJECT_CHAIN: &str = "reject-chain";
const MARK_CHAIN: &str = "mark-for-masquerade";

/// Transport protocol of a Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Proto {
    /// From a Kubernetes `protocol` field (default TCP); `None` for unknown protocols.
    pub fn parse(p: Option<&str>) -> Option<Proto> {
        match p.unwrap_or("TCP") {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            "SCTP" => Some(Proto::Sctp),
            _ => None,
        }
    }

    /// nft keyword.
    pub fn nft(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

/// One endpoint (address + target port) of one Service port, after slice resolution.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ResolvedEndpoint {
    /// Pod (or other) address.
    pub ip: IpAddr,
    /// Target port, resolved from the slice (named targetPorts work this way).
    pub port: u16,
    /// `conditions.ready` (absent = true).
    pub ready: bool,
    /// `conditions.serving` (absent = ready).
    pub serving: bool,
    /// `conditions.terminating` (absent = false).
    pub terminating: bool,
    /// On this node (`nodeName` equals the node's name).
    pub local: bool,
}

/// Endpoints of one Service port for one family, picked as kube-proxy does: the ready ones, or,
/// when none is ready, the serving-and-terminating ones.
pub fn usable_endpoints(all: &[ResolvedEndpoint]) -> Vec<ResolvedEndpoint> {
    let ready: Vec<ResolvedEndpoint> = all.iter().filter(|e| e.ready).cloned().collect();
    if !ready.is_empty() {
        return ready;
    }
    all.iter().filter(|e| e.serving && e.terminating).cloned().collect()
}

/// Resolves the endpoints of `port` of a Service from its slices (one family).
pub fn resolve_endpoints<E: Borrow<EndpointSlice>>(
    port: &ServicePort,
    slices: &[&E],
    family: Family,
    node_name: &str,
) -> Vec<ResolvedEndpoint> {
    let want_type = match family {
        Family::Ip => "IPv4",
        Family::Ip6 => "IPv6",
    };
    let port_name = port.name.as_deref().unwrap_or("");
    let proto = Proto::parse(port.protocol.as_deref());
    let mut by_addr: BTreeMap<(IpAddr, u16), ResolvedEndpoint> = BTreeMap::new();
    for slice in slices {
        let slice: &EndpointSlice = (*slice).borrow();
        if slice.address_type != want_type {
            continue;
        }
        let Some(target) = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == port_name && Proto::parse(p.protocol.as_deref()) == proto
        }) else {
            continue;
        };
        let Some(tport) = target.port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0) else {
            continue;
        };
        for ep in &slice.endpoints {
            let c = ep.conditions.as_ref();
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            let local = ep.node_name.as_deref() == Some(node_name) && !node_name.is_empty();
            for a in &ep.addresses {
                let Ok(ip) = a.parse::<IpAddr>() else { continue };
                if family_of(ip) != family {
                    continue;
                }
                let new = ResolvedEndpoint { ip, port: tport, ready, serving, terminating, local };
                by_addr
                    .entry((ip, tport))
                    .and_modify(|old| {
                        if new.ready && !old.ready {
                            *old = new.clone();
                        }
                    })
                    .or_insert(new);
            }
        }
    }
    by_addr.into_values().collect()
}

fn family_of(ip: IpAddr) -> Family {
    match ip {
        IpAddr::V4(_) => Family::Ip,
        IpAddr::V6(_) => Family::Ip6,
    }
}

/// Renders the whole desired state. Pure: same inputs, same output; no I/O.
///
/// Services without a ClusterIP (headless, ExternalName) are skipped. A Service is rendered in
/// each family it has a ClusterIP of.
pub fn render<S: Borrow<Service>, E: Borrow<EndpointSlice>>(
    services: &[S],
    endpoint_slices: &[E],
    node: &NodeFacts,
    cfg: &ProxyConfig,
) -> Ruleset {
    let mut slices_by_svc: BTreeMap<(String, String), Vec<&E>> = BTreeMap::new();
    for s in endpoint_slices {
        let meta = &s.borrow().metadata;
        let Some(svc) = meta.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) else {
            continue;
        };
        let ns = meta.namespace.clone().unwrap_or_default();
        slices_by_svc.entry((ns, svc.clone())).or_default().push(s);
    }
    let mut sorted: Vec<&Service> = services.iter().map(|s| s.borrow()).collect();
    sorted.sort_by(|a, b| {
        (a.metadata.namespace.as_deref(), a.metadata.name.as_deref())
            .cmp(&(b.metadata.namespace.as_deref(), b.metadata.name.as_deref()))
    });
    let tables = [Family::Ip, Family::Ip6]
        .into_iter()
        .map(|family| {
            let mut r = TableRenderer::new(family, node, cfg);
            for svc in &sorted {
                let key = (
                    svc.metadata.namespace.clone().unwrap_or_default(),
                    svc.metadata.name.clone().unwrap_or_default(),
                );
                let slices = slices_by_svc.get(&key).map(Vec::as_slice).unwrap_or(&[]);
                r.service(svc, slices);
            }
            r.finish()
        })
        .collect();
    Ruleset { tables }
}

struct TableRenderer<'a> {
    family: Family,
    node: &'a NodeFacts,
    cfg: &'a ProxyConfig,
    table: Table,
    service_chains: Vec<Chain>,
}

/// What one Service port turns into; used by `render` and by `dari proxy show`.
struct PortPlan {
    id: String,
    proto: Proto,
    usable: Vec<ResolvedEndpoint>,
}

impl<'a> TableRenderer<'a> {
    fn new(family: Family, node: &'a NodeFacts, cfg: &'a ProxyConfig) -> Self {
        let mut table = Table::new(family, cfg.table.clone());
        let addr = family.addr_type();
        for (name, is_map, type_) in [
            ("cluster-ips", false, addr.to_string()),
            ("nodeport-ips", false, addr.to_string()),
            ("service-ips", true, format!("{addr} . inet_proto . inet_service : verdict")),
            ("service-nodeports", true, "inet_proto . inet_service : verdict".to_string()),
            ("no-endpoint-services", true, format!("{addr} . inet_proto . inet_service : verdict")),
            ("no-endpoint-nodeports", true, "inet_proto . inet_service : verdict".to_string()),
        ] {
            table.sets.insert(
                name.to_string(),
                Set {
                    name: name.to_string(),
                    is_map,
                    type_,
                    flags: None,
                    timeout_secs: None,
                    dynamic: false,
                    elements: BTreeMap::new(),
                },
            );
        }
        TableRenderer { family, node, cfg, table, service_chains: Vec::new() }
    }

    fn ip(&self) -> &'static str {
        self.family.keyword()
    }

    fn add_element(&mut self, set: &str, key: String, value: Option<String>) {
        if let Some(s) = self.table.sets.get_mut(set) {
            s.elements.insert(key, value);
        }
    }

    fn cidrs_of_family(&self, cidrs: &[ipnet::IpNet]) -> Vec<String> {
        cidrs
            .iter()
            .filter(|c| family_of(c.addr()) == self.family)
            .map(|c| c.trunc().to_string())
            .collect()
    }

    fn service<E: Borrow<EndpointSlice>>(&mut self, svc: &Service, slices: &[&E]) {
        let Some(spec) = svc.spec.as_ref() else { return };
        let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
        let name = svc.metadata.name.as_deref().unwrap_or("");
        let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
        if type_ == "ExternalName" {
            return;
        }
        let cluster_ips: Vec<IpAddr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter_map(|s| s.parse().ok())
            .filter(|ip| family_of(*ip) == self.family)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let Some(cluster_ip) = cluster_ips.first().copied() else { return };
        let external_ips: BTreeSet<IpAddr> = spec
            .external_ips
            .iter()
            .flatten()
            .filter_map(|s| s.parse().ok())
            .chain(
                svc.status
                    .as_ref()
                    .and_then(|s| s.load_balancer.as_ref())
                    .and_then(|lb| lb.ingress.as_ref())
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i.ip.as_ref().and_then(|ip| ip.parse().ok())),
            )
            .filter(|ip| family_of(*ip) == self.family)
            .collect();
        let with_nodeports = type_ == "NodePort" || type_ == "LoadBalancer";
        let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .filter(|t| *t > 0)
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
        });
        let itp_local = spec.internal_traffic_policy.as_deref() == Some("Local");
        let etp_local = spec.external_traffic_policy.as_deref() == Some("Local");

        for port in spec.ports.iter().flatten() {
            let Some(proto) = Proto::parse(port.protocol.as_deref()) else { continue };
            let Ok(svc_port) = u16::try_from(port.port) else { continue };
            let port_label = match port.name.as_deref() {
                Some(n) if !n.is_empty() => n.to_string(),
                _ => format!("p{svc_port}"),
            };
            let plan = PortPlan {
                id: format!("{ns}/{name}/{}/{port_label}", proto.nft()),
                proto,
                usable: usable_endpoints(&resolve_endpoints(port, slices, self.family, &self.node.name)),
            };
            let node_port = port
                .node_port
                .filter(|_| with_nodeports)
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0);
            self.service_port(&plan, cluster_ip, svc_port, node_port, &external_ips, affinity, itp_local, etp_local);
        }
        for ip in cluster_ips {
            self.add_element("cluster-ips", ip.to_string(), None);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn service_port(
        &mut self,
        plan: &PortPlan,
        cluster_ip: IpAddr,
        svc_port: u16,
        node_port: Option<u16>,
        external_ips: &BTreeSet<IpAddr>,
        affinity: Option<u32>,
        itp_local: bool,
        etp_local: bool,
    ) {
        let ip = self.ip();
        let proto = plan.proto.nft();
        let id = &plan.id;
        let all = &plan.usable;
        let local: Vec<ResolvedEndpoint> = all.iter().filter(|e| e.local).cloned().collect();
        let has_any = !all.is_empty();
        let has_external = node_port.is_some() || !external_ips.is_empty();
        let internal_eps = if itp_local { &local } else { all };
        let external_eps = if etp_local { &local } else { all };
        let no_ep_verdict = if has_any { "drop".to_string() } else { format!("goto {REJECT_CHAIN}") };

        let cluster_chain = format!("svc-{id}");
        let local_chain = format!("svl-{id}");
        let ext_chain = format!("ext-{id}");
        let ext_exists = has_external && !external_eps.is_empty();
        let cluster_used = (!itp_local && has_any) || (ext_exists && (!etp_local || has_any));
        let local_used = (itp_local && !local.is_empty()) || (ext_exists && etp_local);

        // ClusterIP.
        let key = format!("{cluster_ip} . {proto} . {svc_port}");
        if internal_eps.is_empty() {
            self.add_element("no-endpoint-services", key, Some(no_ep_verdict.clone()));
        } else {
            let target = if itp_local { &local_chain } else { &cluster_chain };
            self.add_element("service-ips", key, Some(format!("goto {target}")));
        }
        // External destinations.
        for eip in external_ips {
            let key = format!("{eip} . {proto} . {svc_port}");
            if ext_exists {
                self.add_element("service-ips", key, Some(format!("goto {ext_chain}")));
            } else {
                self.add_element("no-endpoint-services", key, Some(no_ep_verdict.clone()));
            }
        }
        if let Some(np) = node_port {
            let key = format!("{proto} . {np}");
            if ext_exists {
                self.add_element("service-nodeports", key, Some(format!("goto {ext_chain}")));
            } else {
                self.add_element("no-endpoint-nodeports", key, Some(no_ep_verdict.clone()));
            }
        }

        // Endpoint chains (and affinity sets) for the endpoints some chain reaches.
        let reachable: Vec<&ResolvedEndpoint> = if cluster_used {
            all.iter().collect()
        } else if local_used {
            local.iter().collect()
        } else {
            Vec::new()
        };
        let mut chains = Vec::new();
        if cluster_used {
            let mut rules = Vec::new();
            let cidrs = self.cidrs_of_family(&self.cfg.cluster_cidrs);
            let dst = format!("{ip} daddr {cluster_ip} {proto} dport {svc_port}");
            if self.cfg.masquerade_all {
                rules.push(format!("{dst} jump {MARK_CHAIN}"));
            } else if !cidrs.is_empty() {
                rules.push(format!("{dst} {ip} saddr != {} jump {MARK_CHAIN}", set_literal(&cidrs)));
            }
            rules.extend(self.balance(id, all, affinity));
            chains.push(Chain::new(cluster_chain.clone(), rules));
        }
        if local_used {
            let rules = if local.is_empty() {
                vec![format!("drop comment \"no local endpoints\"")]
            } else {
                self.balance(id, &local, affinity)
            };
            chains.push(Chain::new(local_chain.clone(), rules));
        }
        if ext_exists {
            let mut rules = Vec::new();
            if etp_local {
                let cidrs = self.cidrs_of_family(&self.cfg.cluster_cidrs);
                if !cidrs.is_empty() {
                    rules.push(format!(
                        "{ip} saddr {} goto {cluster_chain} comment \"pod traffic to an external IP stays in the cluster\"",
                        set_literal(&cidrs)
                    ));
                }
                rules.push(format!("fib saddr type local jump {MARK_CHAIN}"));
                rules.push(format!("fib saddr type local goto {cluster_chain}"));
                rules.push(format!("goto {local_chain}"));
            } else {
                rules.push(format!("jump {MARK_CHAIN}"));
                rules.push(format!("goto {cluster_chain}"));
            }
            chains.push(Chain::new(ext_chain, rules));
        }
        for ep in reachable {
            let mut rules = vec![format!("{ip} saddr {} jump {MARK_CHAIN}", ep.ip)];
            if let Some(timeout) = affinity {
                let set = affinity_set_name(id, ep);
                rules.push(format!("update @{set} {{ {ip} saddr }}"));
                self.table.sets.insert(
                    set.clone(),
                    Set {
                        name: set,
                        is_map: false,
                        type_: self.family.addr_type().to_string(),
                        flags: Some("dynamic,timeout"),
                        timeout_secs: Some(timeout),
                        dynamic: true,
                        elements: BTreeMap::new(),
                    },
                );
            }
            rules.push(format!("meta l4proto {proto} dnat to {}", dnat_target(ep)));
            chains.push(Chain::new(endpoint_chain_name(id, ep), rules));
        }
        self.service_chains.extend(chains);
    }

    /// Affinity lookups, then the random pick (`goto` when there is only one endpoint).
    fn balance(&self, id: &str, eps: &[ResolvedEndpoint], affinity: Option<u32>) -> Vec<String> {
        let ip = self.ip();
        let mut rules = Vec::new();
        if affinity.is_some() {
            for ep in eps {
                rules.push(format!(
                    "{ip} saddr @{} goto {}",
                    affinity_set_name(id, ep),
                    endpoint_chain_name(id, ep)
                ));
            }
        }
        if self.cfg.numgen_vmap && eps.len() > 1 {
            let arms: Vec<String> = eps
                .iter()
                .enumerate()
                .map(|(i, ep)| format!("{i} : goto {}", endpoint_chain_name(id, ep)))
                .collect();
            rules.push(format!("numgen random mod {} vmap {{ {} }}", eps.len(), arms.join(", ")));
            return rules;
        }
        // Cascade: endpoint k of n is taken with probability 1/(n-k) among those left, so each
        // gets 1/n. No anonymous set per Service: in one big transaction each anonymous set
        // costs the kernel a walk of the whole batch (nft_set_lookup_byid), quadratic overall.
        let n = eps.len();
        for (k, ep) in eps.iter().enumerate() {
            let chain = endpoint_chain_name(id, ep);
            if k + 1 < n {
                rules.push(format!("numgen random mod {} == 0 goto {chain}", n - k));
            } else {
                rules.push(format!("goto {chain}"));
            }
        }
        rules
    }

    fn finish(mut self) -> Table {
        let ip = self.ip();
        let mark = self.cfg.masquerade_mark;
        // NodePort addresses.
        let mut np_ips: BTreeSet<IpAddr> = self
            .node
            .addresses
            .iter()
            .copied()
            .filter(|a| family_of(*a) == self.family)
            .filter(|a| {
                self.cfg.nodeport_addresses.is_empty()
                    || self.cfg.nodeport_addresses.iter().any(|n| n.contains(a))
            })
            .collect();
        if self.cfg.nodeport_localhost && self.family == Family::Ip {
            np_ips.insert(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        }
        for a in np_ips {
            self.add_element("nodeport-ips", a.to_string(), None);
        }
        let base = |name: &str, kind: &'static str, hook: &'static str, priority: i32, rules: Vec<String>| Chain {
            name: name.to_string(),
            hook: Some(Hook { kind, hook, priority }),
            rules,
        };
        let s = |v: &str| v.to_string();
        let mut chains = vec![
            base("filter-input", "filter", "input", -110, vec![
                s("ct state new jump nodeport-endpoints-check"),
                s("ct state new jump service-endpoints-check"),
            ]),
            base("filter-forward", "filter", "forward", -110, vec![
                s("ct state new jump service-endpoints-check"),
                s("ct state new jump cluster-ips-check"),
            ]),
            base("filter-output", "filter", "output", -110, vec![s("ct state new jump service-endpoints-check")]),
            base("filter-output-post-dnat", "filter", "output", -90, vec![s("ct state new jump cluster-ips-check")]),
            base("nat-prerouting", "nat", "prerouting", -100, vec![s("jump services")]),
            base("nat-output", "nat", "output", -100, vec![s("jump services")]),
            base("nat-postrouting", "nat", "postrouting", 100, vec![s("jump masquerading")]),
            Chain::new("services", vec![
                format!("{ip} daddr . meta l4proto . th dport vmap @service-ips"),
                format!("{ip} daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"),
            ]),
            Chain::new("service-endpoints-check", vec![format!(
                "{ip} daddr . meta l4proto . th dport vmap @no-endpoint-services"
            )]),
            Chain::new("nodeport-endpoints-check", vec![format!(
                "{ip} daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports"
            )]),
        ];
        let mut check = vec![format!(
            "{ip} daddr @cluster-ips reject comment \"not a port of this ClusterIP\""
        )];
        let svc_cidrs = self.cidrs_of_family(&self.cfg.service_cidrs);
        if !svc_cidrs.is_empty() {
            check.push(format!(
                "{ip} daddr {} drop comment \"unallocated ClusterIP\"",
                set_literal(&svc_cidrs)
            ));
        }
        chains.push(Chain::new("cluster-ips-check", check));
        chains.push(Chain::new(MARK_CHAIN, vec![format!("meta mark set meta mark or {mark:#x}")]));
        chains.push(Chain::new("masquerading", vec![
            format!("meta mark and {mark:#x} == 0 return"),
            format!("meta mark set meta mark xor {mark:#x}"),
            s("masquerade fully-random"),
        ]));
        chains.push(Chain::new(REJECT_CHAIN, vec![s("reject")]));
        chains.append(&mut self.service_chains);
        self.table.chains = chains;
        self.table
    }
}

fn set_literal(items: &[String]) -> String {
    if let [one] = items {
        one.clone()
    } else {
        format!("{{ {} }}", items.join(", "))
    }
}

fn ip_label(ip: IpAddr) -> String {
    // ':' is not allowed in nft identifiers; '-' never appears in an IPv6 address.
    ip.to_string().replace(':', "-")
}

/// Name of the endpoint chain of `ep` for the Service port `id` (`NS/NAME/PROTO/PORT`).
pub fn endpoint_chain_name(id: &str, ep: &ResolvedEndpoint) -> String {
    format!("ep-{id}__{}/{}", ip_label(ep.ip), ep.port)
}

/// Name of the affinity set of `ep` for the Service port `id`.
pub fn affinity_set_name(id: &str, ep: &ResolvedEndpoint) -> String {
    format!("aff-{id}__{}/{}", ip_label(ep.ip), ep.port)
}

fn dnat_target(ep: &ResolvedEndpoint) -> String {
    match ep.ip {
        IpAddr::V4(v4) => format!("{v4}:{}", ep.port),
        IpAddr::V6(v6) => format!("[{v6}]:{}", ep.port),
    }
}
