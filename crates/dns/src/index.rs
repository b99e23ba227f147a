//! [`ClusterIndex`]: what the cluster's DNS zone holds, built from Services, EndpointSlices and Pods
//! by a pure function. It stores names relative to the zone, so one index serves any zone.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// Label on an EndpointSlice naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A named Service or endpoint port (the spec's SRV records exist only for named ports).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedPort {
    /// Port name, lower case (shared between the records that use it).
    pub name: Arc<str>,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: &'static str,
    /// Port number (for headless Services, the endpoint's port).
    pub port: u16,
}

/// One ready endpoint of a headless Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointRecord {
    /// The first label of its name: the endpoint's hostname, or its address with `.`/`:` turned into
    /// `-` when it has none (what CoreDNS does).
    pub label: Arc<str>,
    /// Its address.
    pub ip: IpAddr,
    /// Named ports of the EndpointSlice it came from (shared by the endpoints of that slice).
    pub ports: Arc<[NamedPort]>,
}

/// What a Service answers with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceKind {
    /// A ClusterIP (or NodePort/LoadBalancer) Service: its cluster IPs (may be empty while unallocated).
    ClusterIp(Vec<IpAddr>),
    /// A headless Service (`clusterIP: None`): its ready endpoints.
    Headless(Vec<EndpointRecord>),
    /// An ExternalName Service: the target name (without trailing dot).
    ExternalName(String),
}

/// One Service in the index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRecord {
    /// What it answers with.
    pub kind: ServiceKind,
    /// Its named ports (ClusterIP form of SRV).
    pub ports: Vec<NamedPort>,
    /// Headless only: the endpoints' addresses, sorted and unique (the order answers list them in).
    headless_addresses: Vec<IpAddr>,
}

impl ServiceRecord {
    /// A record for `kind` with `ports`.
    pub fn new(kind: ServiceKind, ports: Vec<NamedPort>) -> Self {
        let mut headless_addresses: Vec<IpAddr> = match &kind {
            ServiceKind::Headless(eps) => eps.iter().map(|e| e.ip).collect(),
            _ => Vec::new(),
        };
        headless_addresses.sort();
        headless_addresses.dedup();
        headless_addresses.shrink_to_fit();
        ServiceRecord {
            kind,
            ports,
            headless_addresses,
        }
    }

    /// Headless Services: the endpoints' addresses, sorted and unique; empty otherwise.
    pub fn headless_addresses(&self) -> &[IpAddr] {
        &self.headless_addresses
    }
}

/// Where a reverse (PTR) lookup points, relative to the zone.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PtrTarget {
    /// Namespace.
    pub namespace: Arc<str>,
    /// Service name.
    pub service: Arc<str>,
    /// Endpoint label, for headless endpoints.
    pub endpoint: Option<Arc<str>>,
}

/// What the index needs of a Service: the controller keeps these instead of whole objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Namespace, lower case.
    pub namespace: String,
    /// Name, lower case.
    pub name: String,
    /// ClusterIP addresses, headless (with `publishNotReadyAddresses`), or ExternalName target.
    pub kind: ServiceInfoKind,
    /// Named ports.
    pub ports: Vec<NamedPort>,
}

/// The answering kind of a [`ServiceInfo`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceInfoKind {
    /// Cluster IPs, sorted and unique.
    ClusterIp(Vec<IpAddr>),
    /// Headless; `true` when not-ready endpoints are published.
    Headless(bool),
    /// ExternalName target, lower case, no trailing dot.
    ExternalName(String),
}

/// What the index needs of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceInfo {
    /// Namespace, as in the object.
    pub namespace: String,
    /// The Service it belongs to (its [`SERVICE_NAME_LABEL`]), as in the object.
    pub service: String,
    /// Named ports.
    pub ports: Vec<NamedPort>,
    /// Endpoints: addresses, hostname (lower case), ready.
    pub endpoints: Vec<EndpointInfo>,
}

/// One endpoint of a [`SliceInfo`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    /// Parsed addresses.
    pub addresses: Vec<IpAddr>,
    /// Hostname, lower case.
    pub hostname: Option<String>,
    /// Ready (a missing condition counts as ready).
    pub ready: bool,
}

/// What the index needs of a Pod (verified pod mode).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    /// Namespace, lower case.
    pub namespace: String,
    /// Its addresses.
    pub ips: Vec<IpAddr>,
}

fn protocol(p: Option<&str>) -> Option<&'static str> {
    match p.unwrap_or("TCP") {
        "TCP" | "tcp" => Some("tcp"),
        "UDP" | "udp" => Some("udp"),
        "SCTP" | "sctp" => Some("sctp"),
        _ => None,
    }
}

fn named_port(name: Option<&str>, proto: Option<&str>, port: Option<i32>) -> Option<NamedPort> {
    Some(NamedPort {
        name: Arc::from(name.filter(|n| !n.is_empty())?.to_ascii_lowercase()),
        protocol: protocol(proto)?,
        port: port_u16(port?)?,
    })
}

impl ServiceInfo {
    /// The summary of `svc`; `None` when it has no namespace, name or spec, or is an ExternalName
    /// without a target.
    pub fn from_service(svc: &Service) -> Option<Self> {
        let ns = svc.metadata.namespace.as_deref()?.to_ascii_lowercase();
        let name = svc.metadata.name.as_deref()?.to_ascii_lowercase();
        let spec = svc.spec.as_ref()?;
        let ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| named_port(p.name.as_deref(), p.protocol.as_deref(), Some(p.port)))
            .collect();
        let kind = if spec.type_.as_deref() == Some("ExternalName") {
            let target = spec.external_name.as_deref().unwrap_or("").trim_end_matches('.');
            if target.is_empty() {
                return None;
            }
            ServiceInfoKind::ExternalName(target.to_ascii_lowercase())
        } else if spec.cluster_ip.as_deref() == Some("None") {
            ServiceInfoKind::Headless(spec.publish_not_ready_addresses.unwrap_or(false))
        } else {
            let mut ips: Vec<IpAddr> = spec
                .cluster_ips
                .iter()
                .flatten()
                .chain(spec.cluster_ip.iter())
                .filter_map(|s| parse_ip(s))
                .collect();
            ips.sort();
            ips.dedup();
            ServiceInfoKind::ClusterIp(ips)
        };
        Some(ServiceInfo {
            namespace: ns,
            name,
            kind,
            ports,
        })
    }
}

impl SliceInfo {
    /// The summary of `slice`; `None` without a namespace or Service label, or for FQDN slices.
    pub fn from_slice(slice: &EndpointSlice) -> Option<Self> {
        let ns = slice.metadata.namespace.as_deref()?;
        let svc = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            return None;
        }
        let ports = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| named_port(p.name.as_deref(), p.protocol.as_deref(), p.port))
            .collect();
        let endpoints = slice
            .endpoints
            .iter()
            .map(|ep| EndpointInfo {
                addresses: ep.addresses.iter().filter_map(|a| parse_ip(a)).collect(),
                hostname: ep.hostname.as_deref().filter(|h| !h.is_empty()).map(str::to_ascii_lowercase),
                // A nil ready condition means ready (discovery/v1 API docs).
                ready: ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
            })
            .collect();
        Some(SliceInfo {
            namespace: ns.to_string(),
            service: svc.clone(),
            ports,
            endpoints,
        })
    }
}

impl PodInfo {
    /// The summary of `pod`; `None` without a namespace or status.
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let ns = pod.metadata.namespace.as_deref()?;
        let status = pod.status.as_ref()?;
        let ips = status
            .pod_ips
            .iter()
            .flatten()
            .map(|p| p.ip.as_str())
            .chain(status.pod_ip.as_deref())
            .filter_map(parse_ip)
            .collect();
        Some(PodInfo {
            namespace: ns.to_ascii_lowercase(),
            ips,
        })
    }
}

/// FxHash (rustc's hasher): the index is keyed by short names and looked up on every query, where
/// SipHash's DoS resistance buys nothing (keys come from the API server, not from clients).
#[derive(Clone, Copy, Debug, Default)]
pub struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        for b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(*b)).wrapping_mul(K);
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write(&[i]);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type FxBuild = std::hash::BuildHasherDefault<FxHasher>;

/// The cluster's DNS data, immutable once built; rebuild and swap on change.
#[derive(Clone, Debug, Default)]
pub struct ClusterIndex {
    /// SOA serial; the controller bumps it on every rebuild.
    pub serial: u32,
    services: HashMap<Arc<str>, HashMap<Arc<str>, ServiceRecord, FxBuild>, FxBuild>,
    ptr: HashMap<IpAddr, Vec<PtrTarget>>,
    pods: HashMap<String, HashSet<IpAddr>>,
}

fn parse_ip(s: &str) -> Option<IpAddr> {
    s.trim().parse().ok()
}

/// The label CoreDNS gives an address: `10-0-0-1`, `fd00--1`.
pub fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

fn port_u16(p: i32) -> Option<u16> {
    u16::try_from(p).ok().filter(|p| *p != 0)
}

impl ClusterIndex {
    /// Builds the index from the objects' current state. Objects without a namespace or name are skipped;
    /// nothing here fails.
    pub fn build<'a>(
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
        pods: impl IntoIterator<Item = &'a Pod>,
    ) -> Self {
        let services: Vec<ServiceInfo> = services.into_iter().filter_map(ServiceInfo::from_service).collect();
        let slices: Vec<SliceInfo> = slices.into_iter().filter_map(SliceInfo::from_slice).collect();
        let pods: Vec<PodInfo> = pods.into_iter().filter_map(PodInfo::from_pod).collect();
        Self::from_info(&services, &slices, &pods)
    }

    /// Builds the index from object summaries (what the controller keeps).
    pub fn from_info<'a>(
        services: impl IntoIterator<Item = &'a ServiceInfo>,
        slices: impl IntoIterator<Item = &'a SliceInfo>,
        pods: impl IntoIterator<Item = &'a PodInfo>,
    ) -> Self {
        // slices grouped by (namespace, service)
        let mut by_service: HashMap<(&str, &str), Vec<&SliceInfo>> = HashMap::new();
        for slice in slices {
            by_service
                .entry((slice.namespace.as_str(), slice.service.as_str()))
                .or_default()
                .push(slice);
        }
        let mut strings = Interner::default();
        let mut index = ClusterIndex {
            serial: 1,
            ..Default::default()
        };
        for svc in services {
            let ns = strings.get(&svc.namespace);
            let name = strings.get(&svc.name);
            let kind = match &svc.kind {
                ServiceInfoKind::ExternalName(target) => ServiceKind::ExternalName(target.clone()),
                ServiceInfoKind::Headless(publish_not_ready) => {
                    // the summaries are lower case on both sides
                    let slices = by_service.get(&(svc.namespace.as_str(), svc.name.as_str()));
                    ServiceKind::Headless(headless_endpoints(slices, *publish_not_ready, &mut strings))
                }
                ServiceInfoKind::ClusterIp(ips) => ServiceKind::ClusterIp(ips.clone()),
            };
            match &kind {
                ServiceKind::ClusterIp(ips) => {
                    for ip in ips {
                        index.ptr.entry(*ip).or_default().push(PtrTarget {
                            namespace: ns.clone(),
                            service: name.clone(),
                            endpoint: None,
                        });
                    }
                }
                ServiceKind::Headless(eps) => {
                    for ep in eps {
                        index.ptr.entry(ep.ip).or_default().push(PtrTarget {
                            namespace: ns.clone(),
                            service: name.clone(),
                            endpoint: Some(ep.label.clone()),
                        });
                    }
                }
                ServiceKind::ExternalName(_) => {}
            }
            index
                .services
                .entry(ns)
                .or_default()
                .insert(name, ServiceRecord::new(kind, svc.ports.clone()));
        }
        for targets in index.ptr.values_mut() {
            targets.sort();
            targets.dedup();
            targets.shrink_to_fit();
        }

        for pod in pods {
            let set = index.pods.entry(pod.namespace.clone()).or_default();
            set.extend(pod.ips.iter().copied());
        }
        index
    }

    /// Sets the SOA serial.
    pub fn with_serial(mut self, serial: u32) -> Self {
        self.serial = serial;
        self
    }

    /// The Service `name` in `namespace` (both lower case).
    pub fn service(&self, namespace: &str, name: &str) -> Option<&ServiceRecord> {
        self.services.get(namespace)?.get(name)
    }

    /// Whether any Service lives in `namespace`.
    pub fn has_service_namespace(&self, namespace: &str) -> bool {
        self.services.get(namespace).is_some_and(|m| !m.is_empty())
    }

    /// Whether a Pod with address `ip` exists in `namespace` (verified pod mode).
    pub fn has_pod(&self, namespace: &str, ip: IpAddr) -> bool {
        self.pods.get(namespace).is_some_and(|s| s.contains(&ip))
    }

    /// Whether any Pod exists in `namespace`.
    pub fn has_pod_namespace(&self, namespace: &str) -> bool {
        self.pods.get(namespace).is_some_and(|s| !s.is_empty())
    }

    /// Reverse targets of `ip`.
    pub fn ptr(&self, ip: IpAddr) -> &[PtrTarget] {
        self.ptr.get(&ip).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Number of Services indexed.
    pub fn service_count(&self) -> usize {
        self.services.values().map(HashMap::len).sum()
    }

    /// Number of headless endpoint addresses indexed.
    pub fn endpoint_count(&self) -> usize {
        self.services
            .values()
            .flat_map(HashMap::values)
            .map(|s| match &s.kind {
                ServiceKind::Headless(eps) => eps.len(),
                _ => 0,
            })
            .sum()
    }
}

/// Shares equal strings and port lists while an index is built.
#[derive(Default)]
struct Interner {
    strings: HashSet<Arc<str>>,
    ports: HashSet<Arc<[NamedPort]>>,
}

impl Interner {
    fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.strings.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.strings.insert(a.clone());
        a
    }

    fn ports(&mut self, p: Vec<NamedPort>) -> Arc<[NamedPort]> {
        if let Some(a) = self.ports.get(p.as_slice()) {
            return a.clone();
        }
        let a: Arc<[NamedPort]> = Arc::from(p);
        self.ports.insert(a.clone());
        a
    }
}

fn headless_endpoints(slices: Option<&Vec<&SliceInfo>>, publish_not_ready: bool, strings: &mut Interner) -> Vec<EndpointRecord> {
    // (label, ip) -> ports, deterministic order
    let mut out: BTreeMap<(String, IpAddr), Vec<NamedPort>> = BTreeMap::new();
    for slice in slices.into_iter().flatten() {
        for ep in &slice.endpoints {
            if !ep.ready && !publish_not_ready {
                continue;
            }
            for ip in &ep.addresses {
                let label = ep.hostname.clone().unwrap_or_else(|| dashed(*ip));
                let entry = out.entry((label, *ip)).or_default();
                for p in &slice.ports {
                    if !entry.contains(p) {
                        entry.push(p.clone());
                    }
                }
            }
        }
    }
    out.into_iter()
        .map(|((label, ip), mut ports)| {
            ports.sort();
            EndpointRecord {
                label: strings.get(&label),
                ip,
                ports: strings.ports(ports),
            }
        })
        .collect()
}
