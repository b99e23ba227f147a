//! EndpointSlice and Endpoints controllers for Services with a selector. [`desired_slices`] and
//! [`desired_endpoints`] are pure: Service + its pods + nodes in, objects out (upstream's rules:
//! ready/serving/terminating from pod readiness and deletion, named targetPorts resolved per pod,
//! nodeName and zone, publishNotReadyAddresses, 100 endpoints per slice). Selectorless Services are
//! left to the user.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort as CorePort, EndpointSubset, Endpoints, Node, ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};

use crate::replicaset::is_not_found;
use crate::runtime::{get, key_of, owner_ref, Queue};
use crate::util::{map_selector_matches, pod_ready, pod_terminal};
use crate::ControllersError;

/// Label naming the manager of a slice.
pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Our value of [`MANAGED_BY`].
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
/// Label naming the Service of a slice.
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Endpoints per slice.
pub const MAX_PER_SLICE: usize = 100;

fn resolve_port(pod: &Pod, target: Option<&IntOrString>, port: i32, proto: &str) -> Option<i32> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod.spec.as_ref()?.containers.iter().flat_map(|c| c.ports.iter().flatten()).find(|p| p.name.as_deref() == Some(name.as_str()) && p.protocol.as_deref().unwrap_or("TCP") == proto).map(|p| p.container_port),
    }
}

fn pod_ports(svc: &Service, pod: &Pod) -> Vec<EndpointPort> {
    let mut out = Vec::new();
    for sp in svc.spec.as_ref().and_then(|s| s.ports.clone()).unwrap_or_default() {
        let proto = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
        if let Some(p) = resolve_port(pod, sp.target_port.as_ref(), sp.port, &proto) {
            out.push(EndpointPort { name: Some(sp.name.clone().unwrap_or_default()), port: Some(p), protocol: Some(proto), app_protocol: sp.app_protocol.clone() });
        }
    }
    out
}

fn headless(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

fn should_set_hostname(pod: &Pod, svc: &Service) -> Option<String> {
    let s = pod.spec.as_ref()?;
    let h = s.hostname.clone().filter(|h| !h.is_empty())?;
    (s.subdomain.as_deref() == Some(svc.name_any().as_str()) && pod.namespace() == svc.namespace()).then_some(h)
}

fn target_ref(pod: &Pod) -> ObjectReference {
    ObjectReference { kind: Some("Pod".into()), namespace: pod.namespace(), name: Some(pod.name_any()), uid: pod.metadata.uid.clone(), ..Default::default() }
}

fn selected_pods<'a>(svc: &Service, pods: &'a [Arc<Pod>]) -> Vec<&'a Arc<Pod>> {
    let Some(sel) = svc.spec.as_ref().and_then(|s| s.selector.as_ref()).filter(|s| !s.is_empty()) else { return Vec::new() };
    let ns = svc.namespace();
    let mut v: Vec<&Arc<Pod>> = pods
        .iter()
        .filter(|p| p.namespace() == ns && map_selector_matches(sel, p.labels()))
        .filter(|p| !pod_terminal(p) && p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some_and(|ip| !ip.is_empty()))
        .collect();
    v.sort_by_key(|p| (p.status.as_ref().and_then(|s| s.pod_ip.clone()).and_then(|ip| ip.parse::<std::net::IpAddr>().ok()), p.name_any()));
    v
}

/// The slices a Service should have (names left to generateName; labels, ports, endpoints set).
pub fn desired_slices(svc: &Service, pods: &[Arc<Pod>], nodes: &HashMap<String, Arc<Node>>) -> Vec<EndpointSlice> {
    let spec = svc.spec.clone().unwrap_or_default();
    let publish = spec.publish_not_ready_addresses.unwrap_or(false);
    let mut groups: BTreeMap<String, (Vec<EndpointPort>, Vec<Endpoint>)> = BTreeMap::new();
    for p in selected_pods(svc, pods) {
        let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default();
        if ip.contains(':') {
            continue; // IPv4 slices only (single-stack IPv4 clusters)
        }
        let serving = publish || pod_ready(p);
        let terminating = p.metadata.deletion_timestamp.is_some();
        let ready = publish || (serving && !terminating);
        let node_name = p.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty());
        let zone = node_name.as_ref().and_then(|n| nodes.get(n)).and_then(|n| n.labels().get("topology.kubernetes.io/zone").cloned());
        let ep = Endpoint {
            addresses: vec![ip],
            conditions: Some(EndpointConditions { ready: Some(ready), serving: Some(serving), terminating: Some(terminating) }),
            hostname: should_set_hostname(p, svc),
            node_name,
            target_ref: Some(target_ref(p)),
            zone,
            ..Default::default()
        };
        let ports = pod_ports(svc, p);
        let key = serde_json::to_string(&ports).unwrap_or_default();
        groups.entry(key).or_insert_with(|| (ports, Vec::new())).1.push(ep);
    }
    let mut labels: BTreeMap<String, String> = svc.labels().clone();
    labels.insert(SERVICE_NAME.into(), svc.name_any());
    labels.insert(MANAGED_BY.into(), CONTROLLER_NAME.into());
    if headless(svc) {
        labels.insert("service.kubernetes.io/headless".into(), String::new());
    }
    let meta = || ObjectMeta {
        generate_name: Some(format!("{}-", svc.name_any())),
        namespace: svc.namespace(),
        labels: Some(labels.clone()),
        owner_references: Some(vec![owner_ref(svc)]),
        ..Default::default()
    };
    let mut out = Vec::new();
    for (_, (ports, eps)) in groups {
        for chunk in eps.chunks(MAX_PER_SLICE) {
            out.push(EndpointSlice { metadata: meta(), address_type: "IPv4".into(), endpoints: chunk.to_vec(), ports: Some(ports.clone()) });
        }
    }
    if out.is_empty() {
        out.push(EndpointSlice { metadata: meta(), address_type: "IPv4".into(), endpoints: Vec::new(), ports: None });
    }
    out
}

/// Ports, ready and not-ready addresses of one v1 subset.
type SubsetParts = (Vec<CorePort>, Vec<EndpointAddress>, Vec<EndpointAddress>);

/// The v1 Endpoints of a Service (ready pods under addresses, others under notReadyAddresses; terminating
/// pods left out unless publishNotReadyAddresses).
pub fn desired_endpoints(svc: &Service, pods: &[Arc<Pod>]) -> Endpoints {
    let spec = svc.spec.clone().unwrap_or_default();
    let publish = spec.publish_not_ready_addresses.unwrap_or(false);
    let mut groups: BTreeMap<String, SubsetParts> = BTreeMap::new();
    for p in selected_pods(svc, pods) {
        if p.metadata.deletion_timestamp.is_some() && !publish {
            continue;
        }
        let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default();
        let addr = EndpointAddress {
            ip,
            hostname: should_set_hostname(p, svc),
            node_name: p.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty()),
            target_ref: Some(target_ref(p)),
        };
        let ports: Vec<CorePort> = pod_ports(svc, p)
            .into_iter()
            .map(|e| CorePort { name: e.name.filter(|n| !n.is_empty()), port: e.port.unwrap_or(0), protocol: e.protocol, app_protocol: e.app_protocol })
            .collect();
        if ports.is_empty() && !headless(svc) {
            continue;
        }
        let key = serde_json::to_string(&ports).unwrap_or_default();
        let g = groups.entry(key).or_insert_with(|| (ports, Vec::new(), Vec::new()));
        if publish || pod_ready(p) {
            g.1.push(addr);
        } else {
            g.2.push(addr);
        }
    }
    let subsets: Vec<EndpointSubset> = groups
        .into_values()
        .map(|(ports, ready, not_ready)| EndpointSubset {
            addresses: (!ready.is_empty()).then_some(ready),
            not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
            ports: (!ports.is_empty()).then_some(ports),
        })
        .collect();
    let mut labels: BTreeMap<String, String> = svc.labels().clone();
    if headless(svc) {
        labels.insert("service.kubernetes.io/headless".into(), String::new());
    }
    Endpoints {
        metadata: ObjectMeta { name: Some(svc.name_any()), namespace: svc.namespace(), labels: (!labels.is_empty()).then_some(labels), ..Default::default() },
        subsets: (!subsets.is_empty()).then_some(subsets),
    }
}

/// The EndpointSlice + Endpoints controller.
pub struct EndpointsController {
    client: Client,
    services: Store<Service>,
    pods: Store<Pod>,
    nodes: Store<Node>,
    slices: Store<EndpointSlice>,
    endpoints: Store<Endpoints>,
    queue: Queue,
}

impl EndpointsController {
    /// Wires the controller to the shared informers.
    pub fn new(client: Client, inf: &crate::Informers) -> Arc<Self> {
        let queue = Queue::new();
        {
            let q = queue.clone();
            inf.services.on_change(move |old, new| {
                if let Some(s) = new.or(old) {
                    q.add(key_of(&s.metadata));
                }
            });
        }
        {
            let q = queue.clone();
            let svcs = inf.services.store();
            inf.pods.on_change(move |old, new| {
                // only changes that move endpoints matter
                if let (Some(o), Some(n)) = (old, new) {
                    let same = o.labels() == n.labels()
                        && o.status.as_ref().and_then(|s| s.pod_ip.clone()) == n.status.as_ref().and_then(|s| s.pod_ip.clone())
                        && pod_ready(o) == pod_ready(n)
                        && o.metadata.deletion_timestamp.is_some() == n.metadata.deletion_timestamp.is_some()
                        && pod_terminal(o) == pod_terminal(n)
                        && o.spec.as_ref().and_then(|s| s.node_name.clone()) == n.spec.as_ref().and_then(|s| s.node_name.clone());
                    if same {
                        return;
                    }
                }
                for p in [old, new].into_iter().flatten() {
                    for s in svcs.state() {
                        if s.namespace() != p.namespace() {
                            continue;
                        }
                        if let Some(sel) = s.spec.as_ref().and_then(|x| x.selector.as_ref()).filter(|x| !x.is_empty()) {
                            if map_selector_matches(sel, p.labels()) {
                                q.add(key_of(&s.metadata));
                            }
                        }
                    }
                }
            });
        }
        {
            let q = queue.clone();
            inf.slices.on_change(move |old, new| {
                if let Some(s) = new.or(old) {
                    if let Some(n) = s.labels().get(SERVICE_NAME) {
                        q.add(format!("{}/{n}", s.namespace().unwrap_or_default()));
                    }
                }
            });
        }
        {
            let q = queue.clone();
            inf.endpoints.on_change(move |old, new| {
                if let Some(e) = new.or(old) {
                    q.add(key_of(&e.metadata));
                }
            });
        }
        Arc::new(EndpointsController {
            client,
            services: inf.services.store(),
            pods: inf.pods.store(),
            nodes: inf.nodes.store(),
            slices: inf.slices.store(),
            endpoints: inf.endpoints.store(),
            queue,
        })
    }

    /// Runs the workers.
    pub async fn run(self: Arc<Self>, workers: usize) {
        let me = self.clone();
        crate::runtime::run_workers("endpointslice", self.queue.clone(), workers, move |k| me.clone().reconcile(k)).await
    }

    #[tracing::instrument(name = "reconcile_endpoints", skip(self))]
    async fn reconcile(self: Arc<Self>, key: String) -> Result<Option<Duration>, ControllersError> {
        let (ns, name) = crate::runtime::split_key(&key);
        let ns = ns.unwrap_or("default").to_string();
        let slice_api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &ns);
        let ep_api: Api<Endpoints> = Api::namespaced(self.client.clone(), &ns);
        let existing: Vec<Arc<EndpointSlice>> = self
            .slices
            .state()
            .into_iter()
            .filter(|s| s.namespace().as_deref() == Some(ns.as_str()) && s.labels().get(SERVICE_NAME).map(String::as_str) == Some(name))
            .collect();
        let svc = get(&self.services, &key);
        let selector = svc.as_ref().and_then(|s| s.spec.as_ref()).and_then(|s| s.selector.as_ref()).is_some_and(|s| !s.is_empty());
        let Some(svc) = svc.filter(|_| selector) else {
            // gone, or selectorless now: remove what we manage
            for s in existing {
                if let Err(e) = slice_api.delete(&s.name_any(), &DeleteParams::default()).await {
                    if !is_not_found(&e) {
                        return Err(ControllersError::kube("deleting endpointslice", format!("{ns}/{}", s.name_any()), e));
                    }
                }
            }
            if let Some(ep) = get(&self.endpoints, &key) {
                if ep.labels().get("endpointslice.kubernetes.io/skip-mirror").is_none() && get(&self.services, &key).is_none() {
                    let _ = ep_api.delete(name, &DeleteParams::default()).await;
                }
            }
            return Ok(None);
        };
        let pods = self.pods.state();
        let nodes: HashMap<String, Arc<Node>> = self.nodes.state().into_iter().map(|n| (n.name_any(), n)).collect();
        let want = desired_slices(&svc, &pods, &nodes);
        // reuse slices with the same ports, in order
        let mut pool: Vec<Arc<EndpointSlice>> = existing;
        pool.sort_by_key(|s| s.name_any());
        for d in want {
            let pos = pool.iter().position(|s| s.ports == d.ports);
            match pos {
                Some(i) => {
                    let cur = pool.remove(i);
                    let labels_ok = d.metadata.labels.as_ref() == Some(cur.labels());
                    if cur.endpoints != d.endpoints || !labels_ok || cur.address_type != d.address_type {
                        let mut upd = (*cur).clone();
                        upd.endpoints = d.endpoints;
                        upd.metadata.labels = d.metadata.labels;
                        upd.metadata.owner_references = d.metadata.owner_references;
                        slice_api
                            .replace(&cur.name_any(), &PostParams::default(), &upd)
                            .await
                            .map_err(|e| ControllersError::kube("updating endpointslice", format!("{ns}/{}", cur.name_any()), e))?;
                    }
                }
                None => {
                    slice_api.create(&PostParams::default(), &d).await.map_err(|e| ControllersError::kube("creating endpointslice for", key.clone(), e))?;
                }
            }
        }
        for s in pool {
            if let Err(e) = slice_api.delete(&s.name_any(), &DeleteParams::default()).await {
                if !is_not_found(&e) {
                    return Err(ControllersError::kube("deleting endpointslice", format!("{ns}/{}", s.name_any()), e));
                }
            }
        }
        // v1 Endpoints
        let want = desired_endpoints(&svc, &pods);
        match get(&self.endpoints, &key) {
            Some(cur) => {
                if cur.subsets != want.subsets || cur.metadata.labels != want.metadata.labels {
                    let mut upd = (*cur).clone();
                    upd.subsets = want.subsets;
                    upd.metadata.labels = want.metadata.labels;
                    ep_api.replace(name, &PostParams::default(), &upd).await.map_err(|e| ControllersError::kube("updating endpoints", key.clone(), e))?;
                }
            }
            None => match ep_api.create(&PostParams::default(), &want).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => return Ok(Some(Duration::from_millis(100))),
                Err(e) => return Err(ControllersError::kube("creating endpoints", key.clone(), e)),
            },
        }
        Ok(None)
    }
}
