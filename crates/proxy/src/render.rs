//! The pure renderer: (Services, EndpointSlices, node facts, config) -> [`Ruleset`].
//!
//! Layout per family (names shortened):
//!
//! ```text
//! nat-prerouting / nat-output  -> jump services
//! services:   mark for masquerade: ClusterIP ports in @masq-service-ips from outside the cluster
//!             CIDRs, NodePorts in @masq-nodeports
//!             jump service-dnat-tcp-N ...   (one chain per shared DNAT map in use, one rule each:
//!                 dnat ip to ip daddr . tcp dport . numgen random mod N map @service-dnat-tcp-N)
//!             jump nodeport-dnat-tcp-N ...  (ip daddr @nodeport-ips dnat ip to tcp dport . numgen ..)
//!             ip daddr . meta l4proto . th dport vmap @service-ips       (Services with chains)
//!             ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
//! svc-NS/NAME/PROTO/PORT   (all endpoints)   mark-if-from-outside, affinity, random pick + DNAT
//! svl-NS/NAME/PROTO/PORT   (local endpoints, for trafficPolicy Local)
//! ext-NS/NAME/PROTO/PORT   (NodePort with Local policy, externalIPs, LB IPs) mark, goto svc-/svl-
//! filter-{input,forward,output}: ct state new -> no-endpoint-services (reject / drop),
//!             cluster-ips-check (reject other ports of a ClusterIP)
//! nat-postrouting -> masquerading: masquerade hairpin (`@hairpin-ips`: EP . EP) and what
//!             carries the mark
//! ```
//!
//! The common case needs no chain of its own. A ClusterIP port without session affinity (either
//! internalTrafficPolicy: Local picks among the local endpoints) and a NodePort with
//! externalTrafficPolicy Cluster without affinity are elements of the shared DNAT maps: all ports
//! of one protocol with `N` endpoints share `service-dnat-PROTO-N` (`ClusterIP . port . k :
//! endpoint . port`, `k` in `0..N`), and the `numgen random mod N` in the lookup key picks the
//! endpoint. Adding such a Service adds map elements only: the kernel re-validates the table at
//! commit only for batches that add rules with verdicts, NAT, or verdict-map elements, and binding
//! a rule to a data map walks every element (`nf_tables_bind_set`), which is why each map's rule
//! sits in its own chain, written once. Services with affinity, Local external policy or external
//! IPs keep the kube-proxy-style chains: one chain per Service port (the DNAT in it, the mark inline,
//! affinity with one dynamic set per endpoint, `ip saddr @aff-.. update @aff-.. { ip saddr } dnat
//! to EP`), reached through the `service-ips` verdict map.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::config::{NodeFacts, ProxyConfig};
use crate::inputs::{PortInfo, SliceInfo, SvcInfo, SvcKey};
use crate::nft::{Chain, Family, Hook, Ruleset, Set, Table};

/// Label on an EndpointSlice naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

const REJECT_CHAIN: &str = "reject-chain";

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
    let infos: Vec<SliceInfo> =
        slices.iter().filter_map(|s| SliceInfo::from_slice((*s).borrow(), node_name)).collect();
    let refs: Vec<&SliceInfo> = infos.iter().collect();
    resolve_port(&PortInfo::from(port), &refs, family)
}

/// [`resolve_endpoints`] on the compact forms.
pub fn resolve_port(port: &PortInfo, slices: &[&SliceInfo], family: Family) -> Vec<ResolvedEndpoint> {
    let want_type = match family {
        Family::Ip => "IPv4",
        Family::Ip6 => "IPv6",
    };
    let mut by_addr: BTreeMap<(IpAddr, u16), ResolvedEndpoint> = BTreeMap::new();
    for slice in slices {
        if slice.address_type != want_type {
            continue;
        }
        let Some(target) = slice.ports.iter().find(|(name, proto, _)| *name == port.name && *proto == port.proto) else {
            continue;
        };
        let Some(tport) = target.2.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0) else {
            continue;
        };
        for ep in &slice.endpoints {
            for ip in &ep.addresses {
                let ip = *ip;
                if family_of(ip) != family {
                    continue;
                }
                let new = ResolvedEndpoint {
                    ip,
                    port: tport,
                    ready: ep.ready,
                    serving: ep.serving,
                    terminating: ep.terminating,
                    local: ep.local,
                };
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
/// each family it has a ClusterIP of. The same as building a [`crate::state::ProxyState`] from
/// the objects and asking for its [`crate::state::ProxyState::ruleset`].
pub fn render<S: Borrow<Service>, E: Borrow<EndpointSlice>>(
    services: &[S],
    endpoint_slices: &[E],
    node: &NodeFacts,
    cfg: &ProxyConfig,
) -> Ruleset {
    let mut slices_by_svc: BTreeMap<SvcKey, Vec<SliceInfo>> = BTreeMap::new();
    for s in endpoint_slices {
        if let Some(info) = SliceInfo::from_slice(s.borrow(), &node.name) {
            slices_by_svc.entry(info.service.clone()).or_default().push(info);
        }
    }
    let mut sorted: Vec<(SvcKey, SvcInfo)> = services
        .iter()
        .filter_map(|s| {
            let s = s.borrow();
            let key = SvcKey::new(
                s.metadata.namespace.as_deref().unwrap_or_default(),
                s.metadata.name.as_deref().unwrap_or_default(),
            );
            Some((key, SvcInfo::from_service(s)?))
        })
        .collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let tables = [Family::Ip, Family::Ip6]
        .into_iter()
        .map(|family| {
            let frags: Vec<Fragment> = sorted
                .iter()
                .map(|(key, svc)| {
                    let slices: Vec<&SliceInfo> = slices_by_svc.get(key).map(|v| v.iter().collect()).unwrap_or_default();
                    render_service(key, svc, &slices, family, node, cfg)
                })
                .collect();
            assemble(skeleton(family, node, cfg), frags.iter())
        })
        .collect();
    Ruleset { tables }
}

/// What one Service turns into in one family's table: its chains, its affinity sets, and its
/// elements of the shared sets and maps (`service-ips`, `cluster-ips`, `hairpin-ips`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fragment {
    /// The Service's chains (`svc-`, `svl-`, `ext-`), in render order.
    pub chains: Vec<Chain>,
    /// Its affinity sets (dynamic).
    pub sets: Vec<Set>,
    /// (shared set name, key, value) in render order; a later element wins over an earlier one
    /// with the same key, and a later Service over an earlier one.
    pub elements: Vec<(&'static str, String, Option<String>)>,
    /// Its elements of the shared DNAT maps, one group per destination.
    pub dnat: Vec<DnatGroup>,
    /// Endpoint addresses its DNATs reach, sorted: `EP . EP` elements of `@hairpin-ips`, shared
    /// by every Service with that endpoint (counted by [`crate::ProxyState`], not owned).
    pub hairpin: Vec<IpAddr>,
}

/// The elements of one destination (a ClusterIP port or a NodePort) in a shared DNAT map:
/// `KEY . k : endpoint k` for each endpoint, kept compact (the element text is made when a table
/// or transaction needs it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnatGroup {
    /// The map (its `n` is the number of endpoints).
    pub map: DnatMap,
    /// `CLUSTERIP . PORT`, or `NODEPORT`.
    pub key: Box<str>,
    /// (address, port) of each endpoint, in pick order.
    pub endpoints: Vec<(IpAddr, u16)>,
}

impl DnatGroup {
    /// The map elements: (key, value) text.
    pub fn elements(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.endpoints.iter().enumerate().map(|(k, (ip, port))| (format!("{} . {k}", self.key), format!("{ip} . {port}")))
    }
}

/// One of the shared DNAT maps: all Service ports of one protocol with `n` endpoints share one
/// map (and one rule in `services`), keyed by destination and the `numgen random mod n` pick:
/// `service-dnat-tcp-3` (`ClusterIP . port . k : endpoint . port`) and `nodeport-dnat-tcp-3`
/// (`nodePort . k : endpoint . port`, for packets to `@nodeport-ips`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DnatMap {
    /// Keyed by NodePort (`false`: by ClusterIP).
    pub nodeport: bool,
    /// Transport protocol of the ports it holds.
    pub proto: Proto,
    /// Endpoints per key (the `numgen` modulus).
    pub n: u32,
}

impl DnatMap {
    /// The map's name (`service-dnat-tcp-3`, `nodeport-dnat-udp-2`); interned, as the shared
    /// sets' names are `&'static str` (one small string per kind ever seen).
    pub fn name(self) -> &'static str {
        use std::sync::{Mutex, OnceLock, PoisonError};
        static NAMES: OnceLock<Mutex<std::collections::HashMap<DnatMap, &'static str>>> = OnceLock::new();
        let mut names = NAMES.get_or_init(Default::default).lock().unwrap_or_else(PoisonError::into_inner);
        names.entry(self).or_insert_with(|| {
            let kind = if self.nodeport { "nodeport" } else { "service" };
            Box::leak(format!("{kind}-dnat-{}-{}", self.proto.nft(), self.n).into_boxed_str())
        })
    }

    /// The map's definition (`typeof`, so `nft list` prints keys and values readably). One map
    /// per protocol: the rule then matches `meta l4proto` and names `tcp dport` (not `th dport`,
    /// which nft 1.0.6 cannot use with a map that already exists in the kernel: "conflicting
    /// protocols specified: ip vs. th").
    pub fn set(self, family: Family) -> Set {
        let ip = family.keyword();
        let p = self.proto.nft();
        let dst = if self.nodeport { String::new() } else { format!("{ip} daddr . ") };
        Set {
            name: self.name().to_string(),
            is_map: true,
            type_: format!("typeof {dst}{p} dport . numgen random mod {} : {ip} daddr . {p} dport", self.n),
            flags: None,
            timeout_secs: None,
            dynamic: false,
            elements: BTreeMap::new(),
        }
    }

    /// Its rule in the `services` chain: the DNAT, when the lookup finds the key (nft adds the
    /// `meta l4proto` match that `tcp dport` implies, and does not print it).
    pub fn rule(self, family: Family) -> String {
        let ip = family.keyword();
        let p = self.proto.nft();
        if self.nodeport {
            format!("{ip} daddr @nodeport-ips dnat {ip} to {p} dport . numgen random mod {} map @{}", self.n, self.name())
        } else {
            format!("dnat {ip} to {ip} daddr . {p} dport . numgen random mod {} map @{}", self.n, self.name())
        }
    }

    /// Whether a set name is one of these maps for UDP (conntrack clean-up).
    pub fn is_udp_map(set: &str) -> bool {
        set.starts_with("service-dnat-udp-") || set.starts_with("nodeport-dnat-udp-")
    }
}

/// Renders one Service (one family). Pure.
pub fn render_service(
    key: &SvcKey,
    svc: &SvcInfo,
    slices: &[&SliceInfo],
    family: Family,
    node: &NodeFacts,
    cfg: &ProxyConfig,
) -> Fragment {
    let mut r = TableRenderer { family, node, cfg, frag: Fragment::default(), hairpin: BTreeSet::new() };
    r.service(key, svc, slices);
    r.frag.hairpin = std::mem::take(&mut r.hairpin).into_iter().collect();
    r.frag
}

/// The fixed part of a family's table: the shared sets and maps (empty but for the NodePort
/// addresses) and the base and helper chains.
pub fn skeleton(family: Family, node: &NodeFacts, cfg: &ProxyConfig) -> Table {
    TableRenderer { family, node, cfg, frag: Fragment::default(), hairpin: BTreeSet::new() }.skeleton()
}

/// The table: `skeleton` plus the fragments (in Service order), with the DNAT maps they use
/// (see [`with_dnat_maps`]).
pub fn assemble<'f>(mut table: Table, frags: impl IntoIterator<Item = &'f Fragment> + Clone) -> Table {
    let used: BTreeSet<DnatMap> = frags.clone().into_iter().flat_map(|f| f.dnat.iter().map(|g| g.map)).collect();
    with_dnat_maps(&mut table, &used);
    for f in frags {
        table.chains.extend(f.chains.iter().cloned());
        for s in &f.sets {
            table.sets.insert(s.name.clone(), s.clone());
        }
        for (set, k, v) in &f.elements {
            if let Some(s) = table.sets.get_mut(*set) {
                s.elements.insert(k.clone(), v.clone());
            }
        }
        if let Some(s) = table.sets.get_mut("hairpin-ips") {
            s.elements.extend(f.hairpin.iter().map(|a| (hairpin_element(*a), None)));
        }
        for g in &f.dnat {
            if let Some(s) = table.sets.get_mut(g.map.name()) {
                s.elements.extend(g.elements().map(|(k, v)| (k, Some(v))));
            }
        }
    }
    table
}

/// The `@hairpin-ips` element of an endpoint address (`EP . EP`).
pub(crate) fn hairpin_element(a: IpAddr) -> String {
    format!("{a} . {a}")
}

/// Adds the (empty) DNAT maps in `used` to a table, each with a chain of the same name holding
/// its one DNAT rule, and a `jump` to each chain in `services` (ClusterIP maps, NodePort maps;
/// by protocol and endpoint count), after the masquerade marks and before the verdict maps.
///
/// Why a chain per map: a rule that looks a map up makes the kernel check every element of the
/// map when the rule is added (`nf_tables_bind_set`), so `services` (flushed and refilled when a
/// map comes or goes) must not hold those rules; a map's own chain is written once.
pub fn with_dnat_maps(table: &mut Table, used: &BTreeSet<DnatMap>) {
    if used.is_empty() {
        return;
    }
    let family = table.family;
    for m in used {
        table.sets.insert(m.name().to_string(), m.set(family));
    }
    let Some(at) = table.chains.iter().position(|c| c.name == "services") else { return };
    let c = &mut table.chains[at];
    let first_vmap = c.rules.iter().position(|r| r.contains(" vmap @")).unwrap_or(c.rules.len());
    c.rules.splice(first_vmap..first_vmap, used.iter().map(|m| format!("jump {}", m.name())));
    let chains: Vec<Chain> = used.iter().map(|m| Chain::new(m.name(), vec![m.rule(family)])).collect();
    table.chains.splice(at + 1..at + 1, chains);
}

/// The shared sets and maps of a table: (name, is map, type).
/// A table holding only the shared sets' (empty) definitions: the start of every rendered table,
/// and what an incremental plan compares them with.
pub(crate) fn shared_sets_table(family: Family, cfg: &ProxyConfig) -> Table {
    let mut t = Table::new(family, cfg.table.clone());
    for (name, is_map, type_) in shared_sets(family, cfg) {
        t.sets.insert(
            name.to_string(),
            Set { name: name.to_string(), is_map, type_, flags: None, timeout_secs: None, dynamic: false, elements: BTreeMap::new() },
        );
    }
    t
}

pub(crate) fn shared_sets(family: Family, cfg: &ProxyConfig) -> Vec<(&'static str, bool, String)> {
    let addr = family.addr_type();
    let mut sets = vec![
        ("cluster-ips", false, addr.to_string()),
        ("nodeport-ips", false, addr.to_string()),
        ("service-ips", true, format!("{addr} . inet_proto . inet_service : verdict")),
        ("service-nodeports", true, "inet_proto . inet_service : verdict".to_string()),
        ("no-endpoint-services", true, format!("{addr} . inet_proto . inet_service : verdict")),
        ("no-endpoint-nodeports", true, "inet_proto . inet_service : verdict".to_string()),
        ("hairpin-ips", false, format!("{addr} . {addr}")),
        ("masq-nodeports", false, "inet_proto . inet_service".to_string()),
    ];
    if marks_cluster_traffic(family, cfg) {
        sets.push(("masq-service-ips", false, format!("{addr} . inet_proto . inet_service")));
    }
    sets
}

/// Whether traffic to ClusterIPs is marked for masquerade at all: always with
/// `masquerade_all`, else when it comes from outside the cluster CIDRs (none known: never).
fn marks_cluster_traffic(family: Family, cfg: &ProxyConfig) -> bool {
    cfg.masquerade_all || cfg.cluster_cidrs.iter().any(|c| family_of(c.addr()) == family)
}

struct TableRenderer<'a> {
    family: Family,
    node: &'a NodeFacts,
    cfg: &'a ProxyConfig,
    frag: Fragment,
    /// Endpoint IPs some chain DNATs to (hairpin: `EP . EP` in `@hairpin-ips`).
    hairpin: BTreeSet<IpAddr>,
}

/// What one Service port turns into; used by `render` and by `dari proxy show`.
struct PortPlan {
    id: String,
    proto: Proto,
    usable: Vec<ResolvedEndpoint>,
}

impl<'a> TableRenderer<'a> {
    fn mark(&self) -> String {
        format!("meta mark set meta mark or {:#x}", self.cfg.masquerade_mark)
    }

    /// The rule marking traffic to `dst` (a match) for masquerade: all of it with
    /// `masquerade_all`, else what comes from outside the cluster CIDRs (none known: no rule).
    fn cluster_mark(&self, dst: &str) -> Option<String> {
        let cidrs = self.cidrs_of_family(&self.cfg.cluster_cidrs);
        if self.cfg.masquerade_all {
            Some(format!("{dst} {}", self.mark()))
        } else if !cidrs.is_empty() {
            Some(format!("{dst} {} saddr != {} {}", self.ip(), set_literal(&cidrs), self.mark()))
        } else {
            None
        }
    }

    fn ip(&self) -> &'static str {
        self.family.keyword()
    }

    fn add_element(&mut self, set: &'static str, key: String, value: Option<String>) {
        self.frag.elements.push((set, key, value));
    }

    fn cidrs_of_family(&self, cidrs: &[ipnet::IpNet]) -> Vec<String> {
        cidrs
            .iter()
            .filter(|c| family_of(c.addr()) == self.family)
            .map(|c| c.trunc().to_string())
            .collect()
    }

    fn service(&mut self, key: &SvcKey, svc: &SvcInfo, slices: &[&SliceInfo]) {
        let ns = if key.namespace().is_empty() { "default" } else { key.namespace() };
        let name = key.name();
        let type_ = svc.type_.as_str();
        if type_ == "ExternalName" {
            return;
        }
        let cluster_ips: Vec<IpAddr> = svc.cluster_ips.iter().copied().filter(|ip| family_of(*ip) == self.family).collect();
        let Some(cluster_ip) = cluster_ips.first().copied() else { return };
        let external_ips: BTreeSet<IpAddr> =
            svc.external_ips.iter().copied().filter(|ip| family_of(*ip) == self.family).collect();
        let with_nodeports = type_ == "NodePort" || type_ == "LoadBalancer";
        let affinity = svc.affinity;
        let itp_local = svc.itp_local;
        let etp_local = svc.etp_local;

        for port in &svc.ports {
            let Some(proto) = port.proto else { continue };
            let Ok(svc_port) = u16::try_from(port.port) else { continue };
            let port_label = if port.name.is_empty() { format!("p{svc_port}") } else { port.name.clone() };
            let plan = PortPlan {
                id: format!("{ns}/{name}/{}/{port_label}", proto.nft()),
                proto,
                usable: usable_endpoints(&resolve_port(port, slices, self.family)),
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

        // The common cases need no chain of their own: a ClusterIP port without affinity, and a
        // NodePort of externalTrafficPolicy Cluster without affinity, are elements of the shared
        // DNAT maps (and of the masquerade-mark sets). Adding such a Service adds map elements
        // only, which the kernel does not re-validate the table for.
        let fast_internal = affinity.is_none() && !internal_eps.is_empty();
        let fast_nodeport = affinity.is_none() && !etp_local && node_port.is_some() && !all.is_empty();

        let cluster_chain = format!("svc-{id}");
        let local_chain = format!("svl-{id}");
        let ext_chain = format!("ext-{id}");
        let ext_exists = has_external && !external_eps.is_empty();
        // The ext- chain serves external IPs and NodePorts that take no fast path.
        let ext_used = ext_exists && (!external_ips.is_empty() || (node_port.is_some() && !fast_nodeport));
        let cluster_used = (!itp_local && has_any && !fast_internal) || (ext_used && (!etp_local || has_any));
        let local_used = (itp_local && !local.is_empty() && !fast_internal) || (ext_used && etp_local);

        // ClusterIP.
        let key = format!("{cluster_ip} . {proto} . {svc_port}");
        if internal_eps.is_empty() {
            self.add_element("no-endpoint-services", key, Some(no_ep_verdict.clone()));
        } else if fast_internal {
            if !itp_local && marks_cluster_traffic(self.family, self.cfg) {
                self.add_element("masq-service-ips", key.clone(), None);
            }
            self.dnat_elements(false, plan.proto, &format!("{cluster_ip} . {svc_port}"), internal_eps);
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
            if !ext_exists {
                self.add_element("no-endpoint-nodeports", key, Some(no_ep_verdict.clone()));
            } else if fast_nodeport {
                self.add_element("masq-nodeports", key.clone(), None);
                self.dnat_elements(true, plan.proto, &np.to_string(), all);
            } else {
                self.add_element("service-nodeports", key, Some(format!("goto {ext_chain}")));
            }
        }
        // Hairpin: every endpoint some DNAT reaches.
        let dnat_all = cluster_used || (fast_internal && !itp_local) || fast_nodeport;
        let dnat_local = local_used || (fast_internal && itp_local);
        if dnat_all {
            self.hairpin.extend(all.iter().map(|e| e.ip));
        } else if dnat_local {
            self.hairpin.extend(local.iter().map(|e| e.ip));
        }

        // Affinity sets for the endpoints some chain reaches.
        let reachable: Vec<&ResolvedEndpoint> = if cluster_used {
            all.iter().collect()
        } else if local_used {
            local.iter().collect()
        } else {
            Vec::new()
        };
        let mut chains = Vec::new();
        if cluster_used {
            let mut rules: Vec<String> =
                self.cluster_mark(&format!("{ip} daddr {cluster_ip} {proto} dport {svc_port}")).into_iter().collect();
            rules.extend(self.balance(id, proto, all, affinity));
            chains.push(Chain::new(cluster_chain.clone(), rules));
        }
        if local_used {
            let rules = if local.is_empty() {
                vec![format!("drop comment \"no local endpoints\"")]
            } else {
                self.balance(id, proto, &local, affinity)
            };
            chains.push(Chain::new(local_chain.clone(), rules));
        }
        if ext_used {
            let mut rules = Vec::new();
            if etp_local {
                let cidrs = self.cidrs_of_family(&self.cfg.cluster_cidrs);
                if !cidrs.is_empty() {
                    rules.push(format!(
                        "{ip} saddr {} goto {cluster_chain} comment \"pod traffic to an external IP stays in the cluster\"",
                        set_literal(&cidrs)
                    ));
                }
                rules.push(format!("fib saddr type local {}", self.mark()));
                rules.push(format!("fib saddr type local goto {cluster_chain}"));
                rules.push(format!("goto {local_chain}"));
            } else {
                rules.push(self.mark());
                rules.push(format!("goto {cluster_chain}"));
            }
            chains.push(Chain::new(ext_chain, rules));
        }
        for ep in reachable {
            if let Some(timeout) = affinity {
                let set = affinity_set_name(id, ep);
                self.frag.sets.push(
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
        }
        self.frag.chains.extend(chains);
    }

    /// Elements of the shared DNAT map for `eps.len()` endpoints: `KEY . k : EP . PORT`.
    fn dnat_elements(&mut self, nodeport: bool, proto: Proto, key: &str, eps: &[ResolvedEndpoint]) {
        let Ok(n) = u32::try_from(eps.len()) else { return };
        self.frag.dnat.push(DnatGroup {
            map: DnatMap { nodeport, proto, n },
            key: key.into(),
            endpoints: eps.iter().map(|e| (e.ip, e.port)).collect(),
        });
    }

    /// Affinity lookups, then the random pick, each with its DNAT (no chain per endpoint).
    fn balance(&self, id: &str, proto: &str, eps: &[ResolvedEndpoint], affinity: Option<u32>) -> Vec<String> {
        let ip = self.ip();
        let mut rules = Vec::new();
        let update = |ep: &ResolvedEndpoint| match affinity {
            Some(_) => format!("update @{} {{ {ip} saddr }} ", affinity_set_name(id, ep)),
            None => String::new(),
        };
        if affinity.is_some() {
            for ep in eps {
                let set = affinity_set_name(id, ep);
                rules.push(format!("{ip} saddr @{set} meta l4proto {proto} {}dnat to {}", update(ep), dnat_target(ep)));
            }
        }
        if self.cfg.numgen_vmap && eps.len() > 1 && affinity.is_none() {
            let arms: Vec<String> = eps
                .iter()
                .enumerate()
                .map(|(i, ep)| format!("{i} : {} . {}", ep.ip, ep.port))
                .collect();
            rules.push(format!(
                "meta l4proto {proto} dnat {ip} to numgen random mod {} map {{ {} }}",
                eps.len(),
                arms.join(", ")
            ));
            return rules;
        }
        // Cascade: endpoint k of n is taken with probability 1/(n-k) among those left, so each
        // gets 1/n. No anonymous set per Service: the kernel looks every set up by walking the
        // table's list of sets, so thousands of them make a full load quadratic.
        let n = eps.len();
        for (k, ep) in eps.iter().enumerate() {
            let pick = if k + 1 < n { format!("numgen random mod {} == 0 ", n - k) } else { String::new() };
            rules.push(format!("{pick}meta l4proto {proto} {}dnat to {}", update(ep), dnat_target(ep)));
        }
        rules
    }

    /// The `services` chain without DNAT maps: masquerade marks of the fast-path destinations,
    /// then the verdict maps of those with chains of their own ([`with_dnat_maps`] inserts the
    /// DNAT rules in between).
    fn services_rules(&self) -> Vec<String> {
        let ip = self.ip();
        let mut rules: Vec<String> =
            self.cluster_mark(&format!("{ip} daddr . meta l4proto . th dport @masq-service-ips")).into_iter().collect();
        rules.push(format!("{ip} daddr @nodeport-ips meta l4proto . th dport @masq-nodeports {}", self.mark()));
        rules.push(format!("{ip} daddr . meta l4proto . th dport vmap @service-ips"));
        rules.push(format!("{ip} daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"));
        rules
    }

    fn skeleton(self) -> Table {
        let mut table = shared_sets_table(self.family, self.cfg);
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
        if let Some(s) = table.sets.get_mut("nodeport-ips") {
            s.elements.extend(np_ips.into_iter().map(|a| (a.to_string(), None)));
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
            Chain::new("services", self.services_rules()),
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
        chains.push(Chain::new("masquerading", vec![
            format!("ct status dnat {ip} saddr . {ip} daddr @hairpin-ips masquerade fully-random"),
            format!("meta mark and {mark:#x} == 0 return"),
            format!("meta mark set meta mark xor {mark:#x}"),
            s("masquerade fully-random"),
        ]));
        chains.push(Chain::new(REJECT_CHAIN, vec![s("reject")]));
        table.chains = chains;
        table
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
