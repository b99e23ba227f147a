//! [`ClusterIndex`]: what the cluster's DNS zone holds, built from Services, EndpointSlices and Pods
//! by a pure function. It stores names relative to the zone, so one index serves any zone.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// Label on an EndpointSlice naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A named Service or endpoint port (the spec's SRV records exist only for named ports).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NamedPort {
    /// Port name, lower case.
    pub name: String,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// Port number (for headless Services, the endpoint's port).
    pub port: u16,
}

/// One ready endpoint of a headless Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointRecord {
    /// The first label of its name: the endpoint's hostname, or its address with `.`/`:` turned into
    /// `-` when it has none (what CoreDNS does).
    pub label: String,
    /// Its address.
    pub ip: IpAddr,
    /// Named ports of the EndpointSlice it came from.
    pub ports: Vec<NamedPort>,
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
}

/// Where a reverse (PTR) lookup points, relative to the zone.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PtrTarget {
    /// Namespace.
    pub namespace: String,
    /// Service name.
    pub service: String,
    /// Endpoint label, for headless endpoints.
    pub endpoint: Option<String>,
}

/// The cluster's DNS data, immutable once built; rebuild and swap on change.
#[derive(Clone, Debug, Default)]
pub struct ClusterIndex {
    /// SOA serial; the controller bumps it on every rebuild.
    pub serial: u32,
    services: HashMap<String, HashMap<String, ServiceRecord>>,
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
        // slices grouped by (namespace, service)
        let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for slice in slices {
            let (Some(ns), Some(svc)) = (
                slice.metadata.namespace.as_deref(),
                slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)),
            ) else {
                continue;
            };
            by_service.entry((ns, svc.as_str())).or_default().push(slice);
        }

        let mut index = ClusterIndex {
            serial: 1,
            ..Default::default()
        };
        for svc in services {
            let (Some(ns), Some(name)) = (svc.metadata.namespace.as_deref(), svc.metadata.name.as_deref())
            else {
                continue;
            };
            let ns = ns.to_ascii_lowercase();
            let name = name.to_ascii_lowercase();
            let Some(spec) = svc.spec.as_ref() else { continue };
            let ports: Vec<NamedPort> = spec
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    Some(NamedPort {
                        name: p.name.as_deref().filter(|n| !n.is_empty())?.to_ascii_lowercase(),
                        protocol: p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
                        port: port_u16(p.port)?,
                    })
                })
                .collect();

            let kind = if spec.type_.as_deref() == Some("ExternalName") {
                let target = spec.external_name.as_deref().unwrap_or("").trim_end_matches('.');
                if target.is_empty() {
                    continue;
                }
                ServiceKind::ExternalName(target.to_ascii_lowercase())
            } else if spec.cluster_ip.as_deref() == Some("None") {
                let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
                let slices = by_service.get(&(ns.as_str(), name.as_str()));
                ServiceKind::Headless(headless_endpoints(slices, publish_not_ready))
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
                ServiceKind::ClusterIp(ips)
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
                .insert(name, ServiceRecord { kind, ports });
        }
        for targets in index.ptr.values_mut() {
            targets.sort();
            targets.dedup();
        }

        for pod in pods {
            let Some(ns) = pod.metadata.namespace.as_deref() else { continue };
            let Some(status) = pod.status.as_ref() else { continue };
            let ips = status
                .pod_ips
                .iter()
                .flatten()
                .map(|p| p.ip.as_str())
                .chain(status.pod_ip.as_deref())
                .filter_map(parse_ip);
            let set = index.pods.entry(ns.to_ascii_lowercase()).or_default();
            set.extend(ips);
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

fn headless_endpoints(slices: Option<&Vec<&EndpointSlice>>, publish_not_ready: bool) -> Vec<EndpointRecord> {
    // (label, ip) -> ports, deterministic order
    let mut out: BTreeMap<(String, IpAddr), Vec<NamedPort>> = BTreeMap::new();
    for slice in slices.into_iter().flatten() {
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            continue;
        }
        let ports: Vec<NamedPort> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some(NamedPort {
                    name: p.name.as_deref().filter(|n| !n.is_empty())?.to_ascii_lowercase(),
                    protocol: p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
                    port: port_u16(p.port?)?,
                })
            })
            .collect();
        for ep in &slice.endpoints {
            // A nil ready condition means ready (discovery/v1 API docs).
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready && !publish_not_ready {
                continue;
            }
            for addr in &ep.addresses {
                let Some(ip) = parse_ip(addr) else { continue };
                let label = ep
                    .hostname
                    .as_deref()
                    .filter(|h| !h.is_empty())
                    .map(str::to_ascii_lowercase)
                    .unwrap_or_else(|| dashed(ip));
                let entry = out.entry((label, ip)).or_default();
                for p in &ports {
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
            EndpointRecord { label, ip, ports }
        })
        .collect()
}
