//! Pure scheduling: [`schedule`] filters nodes (upstream plugin order: NodeUnschedulable, TaintToleration,
//! NodeAffinity, NodePorts, NodeResourcesFit), scores the survivors (spread of one owner's pods, least
//! allocated) and otherwise explains the failure in upstream's FailedScheduling form.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, Taint};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;

use dari_controllers::util::untolerated;

/// Resources a pod asks for (millicores, bytes, pods=1).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Req {
    /// CPU in millicores.
    pub cpu: i64,
    /// Memory in bytes.
    pub mem: i64,
}

/// Parses a Kubernetes quantity to millis (cpu) or units (memory).
pub fn parse_quantity(q: &Quantity, millis: bool) -> i64 {
    let s = q.0.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+')).unwrap_or(s.len());
    let (num, suf) = s.split_at(split);
    let v: f64 = num.parse().unwrap_or(0.0);
    let mult: f64 = match suf {
        "" => 1.0,
        "m" => 0.001,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0f64.powi(4),
        _ => 1.0,
    };
    let x = v * mult * if millis { 1000.0 } else { 1.0 };
    x.ceil() as i64
}

/// Sum of container requests (max with init containers), as the scheduler counts them.
pub fn pod_requests(pod: &Pod) -> Req {
    let Some(spec) = pod.spec.as_ref() else { return Req::default() };
    let get = |c: &k8s_openapi::api::core::v1::Container| {
        let r = c.resources.as_ref().and_then(|r| r.requests.as_ref());
        Req { cpu: r.and_then(|r| r.get("cpu")).map(|q| parse_quantity(q, true)).unwrap_or(0), mem: r.and_then(|r| r.get("memory")).map(|q| parse_quantity(q, false)).unwrap_or(0) }
    };
    let mut sum = Req::default();
    for c in &spec.containers {
        let r = get(c);
        sum.cpu += r.cpu;
        sum.mem += r.mem;
    }
    for c in spec.init_containers.iter().flatten() {
        let r = get(c);
        sum.cpu = sum.cpu.max(r.cpu);
        sum.mem = sum.mem.max(r.mem);
    }
    sum
}

/// What is already on a node.
#[derive(Clone, Debug, Default)]
pub struct NodeUsage {
    /// Sum of requests.
    pub req: Req,
    /// Pod count.
    pub pods: i64,
    /// (protocol, hostIP, hostPort) in use.
    pub host_ports: Vec<(String, String, i32)>,
    /// Pods per owner uid.
    pub by_owner: HashMap<String, i64>,
}

impl NodeUsage {
    /// Accounts a pod on this node.
    pub fn add(&mut self, pod: &Pod) {
        let r = pod_requests(pod);
        self.req.cpu += r.cpu;
        self.req.mem += r.mem;
        self.pods += 1;
        self.host_ports.extend(host_ports(pod));
        if let Some(o) = dari_controllers::runtime::controller_of(&pod.metadata) {
            *self.by_owner.entry(o.uid.clone()).or_insert(0) += 1;
        }
    }
}

fn host_ports(pod: &Pod) -> Vec<(String, String, i32)> {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| p.host_port.filter(|h| *h > 0).map(|h| (p.protocol.clone().unwrap_or_else(|| "TCP".into()), p.host_ip.clone().unwrap_or_else(|| "0.0.0.0".into()), h)))
        .collect()
}

fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let labels = node.labels();
    let req_ok = |r: &NodeSelectorRequirement, val: Option<&String>| {
        let vals = r.values.clone().unwrap_or_default();
        match r.operator.as_str() {
            "In" => val.is_some_and(|v| vals.contains(v)),
            "NotIn" => !val.is_some_and(|v| vals.contains(v)),
            "Exists" => val.is_some(),
            "DoesNotExist" => val.is_none(),
            "Gt" => val.and_then(|v| v.parse::<i64>().ok()).zip(vals.first().and_then(|x| x.parse::<i64>().ok())).is_some_and(|(a, b)| a > b),
            "Lt" => val.and_then(|v| v.parse::<i64>().ok()).zip(vals.first().and_then(|x| x.parse::<i64>().ok())).is_some_and(|(a, b)| a < b),
            _ => false,
        }
    };
    let exprs = term.match_expressions.as_ref();
    let fields = term.match_fields.as_ref();
    if exprs.is_none_or(|e| e.is_empty()) && fields.is_none_or(|f| f.is_empty()) {
        return false;
    }
    let name = node.name_any();
    exprs.into_iter().flatten().all(|r| req_ok(r, labels.get(&r.key)))
        && fields.into_iter().flatten().all(|r| r.key == "metadata.name" && req_ok(r, Some(&name)))
}

/// nodeSelector and required node affinity.
pub fn affinity_matches(pod: &Pod, node: &Node) -> bool {
    let Some(spec) = pod.spec.as_ref() else { return true };
    if let Some(sel) = &spec.node_selector {
        if !dari_controllers::util::map_selector_matches(sel, node.labels()) {
            return false;
        }
    }
    if let Some(req) = spec.affinity.as_ref().and_then(|a| a.node_affinity.as_ref()).and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref()) {
        return req.node_selector_terms.iter().any(|t| term_matches(t, node));
    }
    true
}

/// The node's taints, plus the not-ready taint when Ready is not True and the node lifecycle
/// controller has not tainted it yet.
pub fn effective_taints(node: &Node) -> Vec<Taint> {
    let mut t = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
    let ready = node.status.as_ref().and_then(|s| s.conditions.as_ref()).and_then(|c| c.iter().find(|c| c.type_ == "Ready")).map(|c| c.status.clone());
    let key = match ready.as_deref() {
        Some("True") => None,
        Some("Unknown") => Some("node.kubernetes.io/unreachable"),
        _ => Some("node.kubernetes.io/not-ready"),
    };
    if let Some(k) = key {
        if !t.iter().any(|x| x.key == k && x.effect == "NoSchedule") {
            t.push(Taint { key: k.into(), effect: "NoSchedule".into(), ..Default::default() });
        }
    }
    t
}

fn alloc(node: &Node) -> (i64, i64, i64) {
    let a = node.status.as_ref().and_then(|s| s.allocatable.clone().or_else(|| s.capacity.clone())).unwrap_or_default();
    (
        a.get("cpu").map(|q| parse_quantity(q, true)).unwrap_or(0),
        a.get("memory").map(|q| parse_quantity(q, false)).unwrap_or(0),
        a.get("pods").map(|q| parse_quantity(q, false)).unwrap_or(110),
    )
}

/// Why one node does not fit; `resolvable` says whether preemption could help (resources, ports).
fn filter(pod: &Pod, node: &Node, usage: &NodeUsage) -> Result<(), (Vec<String>, bool)> {
    let spec = pod.spec.clone().unwrap_or_default();
    let tols = spec.tolerations.clone().unwrap_or_default();
    let unsched = node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false);
    if unsched {
        let t = Taint { key: "node.kubernetes.io/unschedulable".into(), effect: "NoSchedule".into(), ..Default::default() };
        if untolerated(std::slice::from_ref(&t), &tols, &["NoSchedule"]).is_some() {
            return Err((vec!["node(s) were unschedulable".into()], false));
        }
    }
    let taints = effective_taints(node);
    if let Some(t) = untolerated(&taints, &tols, &["NoSchedule", "NoExecute"]) {
        return Err((vec![format!("node(s) had untolerated taint {{{}: {}}}", t.key, t.value.clone().unwrap_or_default())], false));
    }
    if !affinity_matches(pod, node) {
        return Err((vec!["node(s) didn't match Pod's node affinity/selector".into()], false));
    }
    let want_ports = host_ports(pod);
    if want_ports.iter().any(|(proto, ip, port)| usage.host_ports.iter().any(|(p2, ip2, port2)| p2 == proto && port2 == port && (ip == ip2 || ip == "0.0.0.0" || ip2 == "0.0.0.0"))) {
        return Err((vec!["node(s) didn't have free ports for the requested pod ports".into()], true));
    }
    let (cpu, mem, maxpods) = alloc(node);
    let r = pod_requests(pod);
    let mut why = Vec::new();
    if usage.pods + 1 > maxpods {
        why.push("Too many pods".to_string());
    }
    if r.cpu > 0 && usage.req.cpu + r.cpu > cpu {
        why.push("Insufficient cpu".into());
    }
    if r.mem > 0 && usage.req.mem + r.mem > mem {
        why.push("Insufficient memory".into());
    }
    if !why.is_empty() {
        return Err((why, true));
    }
    Ok(())
}

/// Scores a feasible node 0..=300: least-allocated (0..100, non-zero request defaults 100m/200Mi as
/// upstream) + twice the spread score (fewer pods of the same owner is better).
fn score(pod: &Pod, node: &Node, usage: &NodeUsage, max_owner: i64) -> i64 {
    let (cpu, mem, _) = alloc(node);
    let r = pod_requests(pod);
    let rc = if r.cpu == 0 { 100 } else { r.cpu };
    let rm = if r.mem == 0 { 200 * 1024 * 1024 } else { r.mem };
    let la = |used: i64, cap: i64| if cap <= 0 { 0 } else { ((cap - used).max(0) * 100) / cap };
    let least = (la(usage.req.cpu + rc, cpu) + la(usage.req.mem + rm, mem)) / 2;
    let owner = dari_controllers::runtime::controller_of(&pod.metadata).map(|o| o.uid.clone());
    let same = owner.and_then(|o| usage.by_owner.get(&o).copied()).unwrap_or(0);
    let spread = if max_owner == 0 { 100 } else { 100 * (max_owner - same) / max_owner };
    least + 2 * spread
}

/// The decision for one pod.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Bind here.
    Node(String),
    /// Nothing fits: the FailedScheduling message.
    Unschedulable(String),
}

/// Filters and scores; ties broken by `tiebreak` (an index into the best nodes, e.g. random).
pub fn schedule(pod: &Pod, nodes: &[&Node], usage: &HashMap<String, NodeUsage>, tiebreak: impl FnOnce(usize) -> usize) -> Decision {
    let empty = NodeUsage::default();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let (mut resolvable, mut not_helpful) = (0usize, 0usize);
    let mut feasible = Vec::new();
    for n in nodes {
        let u = usage.get(&n.name_any()).unwrap_or(&empty);
        match filter(pod, n, u) {
            Ok(()) => feasible.push((*n, u)),
            Err((why, res)) => {
                for w in why {
                    *reasons.entry(w).or_insert(0) += 1;
                }
                if res {
                    resolvable += 1;
                } else {
                    not_helpful += 1;
                }
            }
        }
    }
    if feasible.is_empty() {
        let mut parts: Vec<String> = reasons.iter().map(|(k, v)| format!("{v} {k}")).collect();
        parts.sort();
        let mut msg = format!("0/{} nodes are available", nodes.len());
        if !parts.is_empty() {
            msg.push_str(&format!(": {}.", parts.join(", ")));
        } else {
            msg.push('.');
        }
        if !nodes.is_empty() {
            let mut pre = Vec::new();
            if resolvable > 0 {
                pre.push(format!("{resolvable} No preemption victims found for incoming pod"));
            }
            if not_helpful > 0 {
                pre.push(format!("{not_helpful} Preemption is not helpful for scheduling"));
            }
            pre.sort();
            msg.push_str(&format!(" preemption: 0/{} nodes are available: {}.", nodes.len(), pre.join(", ")));
        }
        return Decision::Unschedulable(msg);
    }
    let owner = dari_controllers::runtime::controller_of(&pod.metadata).map(|o| o.uid.clone());
    let max_owner = owner.as_ref().map(|o| feasible.iter().map(|(_, u)| u.by_owner.get(o).copied().unwrap_or(0)).max().unwrap_or(0)).unwrap_or(0);
    let scored: Vec<(i64, &Node)> = feasible.iter().map(|(n, u)| (score(pod, n, u, max_owner), *n)).collect();
    let best = scored.iter().map(|s| s.0).max().unwrap_or(0);
    let top: Vec<&Node> = scored.iter().filter(|s| s.0 == best).map(|s| s.1).collect();
    let i = tiebreak(top.len()).min(top.len().saturating_sub(1));
    Decision::Node(top[i].name_any())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, NodeCondition, NodeSpec, NodeStatus, PodSpec, ResourceRequirements, Toleration};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn node(name: &str, ready: bool, taints: Vec<Taint>, labels: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta { name: Some(name.into()), labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()), ..Default::default() },
            spec: Some(NodeSpec { taints: Some(taints), ..Default::default() }),
            status: Some(NodeStatus {
                allocatable: Some([("cpu".to_string(), Quantity("2".into())), ("memory".to_string(), Quantity("4Gi".into())), ("pods".to_string(), Quantity("110".into()))].into()),
                conditions: Some(vec![NodeCondition { type_: "Ready".into(), status: if ready { "True" } else { "False" }.into(), ..Default::default() }]),
                ..Default::default()
            }),
        }
    }

    fn pod(cpu: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                owner_references: Some(vec![OwnerReference { uid: "rs1".into(), controller: Some(true), kind: "ReplicaSet".into(), name: "rs".into(), api_version: "apps/v1".into(), ..Default::default() }]),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container { name: "c".into(), resources: Some(ResourceRequirements { requests: Some([("cpu".to_string(), Quantity(cpu.into()))].into()), ..Default::default() }), ..Default::default() }],
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity(&Quantity("500m".into()), true), 500);
        assert_eq!(parse_quantity(&Quantity("2".into()), true), 2000);
        assert_eq!(parse_quantity(&Quantity("1Gi".into()), false), 1 << 30);
    }

    #[test]
    fn failed_scheduling_message_has_upstream_form() {
        let cp = Taint { key: "node-role.kubernetes.io/control-plane".into(), effect: "NoSchedule".into(), ..Default::default() };
        let nodes = [node("a", true, vec![cp], &[]), node("b", false, vec![], &[]), node("c", true, vec![], &[])];
        let refs: Vec<&Node> = nodes.iter().collect();
        let d = schedule(&pod("3"), &refs, &HashMap::new(), |_| 0);
        assert_eq!(
            d,
            Decision::Unschedulable(
                "0/3 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }. preemption: 0/3 nodes are available: 1 No preemption victims found for incoming pod, 2 Preemption is not helpful for scheduling.".into()
            )
        );
    }

    #[test]
    fn spreads_one_owner_and_honours_tolerations_and_selectors() {
        let nodes = [node("a", true, vec![], &[("disk", "ssd")]), node("b", true, vec![], &[("disk", "hdd")])];
        let refs: Vec<&Node> = nodes.iter().collect();
        let mut usage = HashMap::new();
        let mut ua = NodeUsage::default();
        ua.add(&pod("100m"));
        usage.insert("a".to_string(), ua);
        assert_eq!(schedule(&pod("100m"), &refs, &usage, |_| 0), Decision::Node("b".into()));
        let mut p = pod("100m");
        p.spec.as_mut().map(|s| s.node_selector = Some([("disk".to_string(), "ssd".to_string())].into()));
        assert_eq!(schedule(&p, &refs, &usage, |_| 0), Decision::Node("a".into()));
        let tainted = [node("t", true, vec![Taint { key: "k".into(), value: Some("v".into()), effect: "NoSchedule".into(), ..Default::default() }], &[])];
        let trefs: Vec<&Node> = tainted.iter().collect();
        let mut p = pod("100m");
        assert!(matches!(schedule(&p, &trefs, &HashMap::new(), |_| 0), Decision::Unschedulable(_)));
        p.spec.as_mut().map(|s| s.tolerations = Some(vec![Toleration { key: Some("k".into()), operator: Some("Equal".into()), value: Some("v".into()), ..Default::default() }]));
        assert_eq!(schedule(&p, &trefs, &HashMap::new(), |_| 0), Decision::Node("t".into()));
    }
}
