//! Compact forms of the API objects: only the fields the renderer reads.
//!
//! The proxy keeps these instead of whole `k8s-openapi` objects (a Service with its managed
//! fields and annotations is kilobytes; [`SvcInfo`] is a few hundred bytes), and compares them to
//! tell whether an update matters (a status or annotation change does not re-render anything).

use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::render::{Proto, DEFAULT_AFFINITY_TIMEOUT, SERVICE_NAME_LABEL};

/// A Service's identity: (namespace, name). Cheap to clone; orders as the tuple does.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SvcKey(pub Arc<(String, String)>);

impl SvcKey {
    /// The key of `namespace/name`.
    pub fn new(namespace: &str, name: &str) -> Self {
        SvcKey(Arc::new((namespace.to_string(), name.to_string())))
    }

    /// Namespace.
    pub fn namespace(&self) -> &str {
        &self.0 .0
    }

    /// Name.
    pub fn name(&self) -> &str {
        &self.0 .1
    }
}

/// One Service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    /// Port name ("" when unnamed).
    pub name: String,
    /// Protocol (`None`: one the proxy does not handle).
    pub proto: Option<Proto>,
    /// Service port.
    pub port: i32,
    /// NodePort, if allocated.
    pub node_port: Option<i32>,
}

impl From<&ServicePort> for PortInfo {
    fn from(p: &ServicePort) -> Self {
        PortInfo {
            name: p.name.clone().unwrap_or_default(),
            proto: Proto::parse(p.protocol.as_deref()),
            port: p.port,
            node_port: p.node_port,
        }
    }
}

/// What the renderer needs of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvcInfo {
    /// `spec.type` (`ClusterIP` when absent).
    pub type_: String,
    /// ClusterIPs (`clusterIPs` and `clusterIP`, parsed, de-duplicated, sorted).
    pub cluster_ips: Vec<IpAddr>,
    /// externalIPs and LoadBalancer ingress IPs (sorted, de-duplicated).
    pub external_ips: Vec<IpAddr>,
    /// Ports, in spec order.
    pub ports: Vec<PortInfo>,
    /// ClientIP affinity timeout in seconds (`None`: no affinity).
    pub affinity: Option<u32>,
    /// internalTrafficPolicy Local.
    pub itp_local: bool,
    /// externalTrafficPolicy Local.
    pub etp_local: bool,
}

impl SvcInfo {
    /// The compact form of a Service; `None` for one without a spec.
    pub fn from_service(svc: &Service) -> Option<SvcInfo> {
        let spec = svc.spec.as_ref()?;
        let mut cluster_ips: Vec<IpAddr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter_map(|s| s.parse().ok())
            .collect();
        cluster_ips.sort();
        cluster_ips.dedup();
        let mut external_ips: Vec<IpAddr> = spec
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
            .collect();
        external_ips.sort();
        external_ips.dedup();
        let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .filter(|t| *t > 0)
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
        });
        Some(SvcInfo {
            type_: spec.type_.clone().unwrap_or_else(|| "ClusterIP".to_string()),
            cluster_ips,
            external_ips,
            ports: spec.ports.iter().flatten().map(PortInfo::from).collect(),
            affinity,
            itp_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            etp_local: spec.external_traffic_policy.as_deref() == Some("Local"),
        })
    }
}

/// One endpoint of a slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpInfo {
    /// Addresses (unparsable ones dropped).
    pub addresses: Vec<IpAddr>,
    /// `conditions.ready` (absent = true).
    pub ready: bool,
    /// `conditions.serving` (absent = ready).
    pub serving: bool,
    /// `conditions.terminating` (absent = false).
    pub terminating: bool,
    /// `nodeName` is this proxy's node.
    pub local: bool,
}

/// What the renderer needs of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceInfo {
    /// The Service it belongs to (`kubernetes.io/service-name` label).
    pub service: SvcKey,
    /// `IPv4` / `IPv6` / `FQDN`.
    pub address_type: String,
    /// Ports: (name, protocol, port).
    pub ports: Vec<(String, Option<Proto>, Option<i32>)>,
    /// Endpoints.
    pub endpoints: Vec<EpInfo>,
}

impl SliceInfo {
    /// The compact form of a slice as seen by the proxy of `node_name`; `None` without the
    /// service-name label.
    pub fn from_slice(slice: &EndpointSlice, node_name: &str) -> Option<SliceInfo> {
        let meta = &slice.metadata;
        let svc = meta.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL))?;
        let ns = meta.namespace.as_deref().unwrap_or_default();
        Some(SliceInfo {
            service: SvcKey::new(ns, svc),
            address_type: slice.address_type.clone(),
            ports: slice
                .ports
                .iter()
                .flatten()
                .map(|p| (p.name.clone().unwrap_or_default(), Proto::parse(p.protocol.as_deref()), p.port))
                .collect(),
            endpoints: slice
                .endpoints
                .iter()
                .map(|ep| {
                    let c = ep.conditions.as_ref();
                    let ready = c.and_then(|c| c.ready).unwrap_or(true);
                    EpInfo {
                        addresses: ep.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
                        ready,
                        serving: c.and_then(|c| c.serving).unwrap_or(ready),
                        terminating: c.and_then(|c| c.terminating).unwrap_or(false),
                        local: !node_name.is_empty() && ep.node_name.as_deref() == Some(node_name),
                    }
                })
                .collect(),
        })
    }
}
