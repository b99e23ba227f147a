//! The objects that publish dari's DNS in the cluster: the `kube-dns` Service in kube-system at the 10th
//! address of the service range (53/UDP, 53/TCP, 9153/TCP, as CoreDNS's), and the EndpointSlice pointing
//! it at where dari serves. Pure builders; whoever owns the API applies them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::index::SERVICE_NAME_LABEL;

/// Name of the DNS Service.
pub const SERVICE_NAME: &str = "kube-dns";
/// Its namespace.
pub const NAMESPACE: &str = "kube-system";

/// The 10th address of `cidr` (`10.96.0.0/12` → `10.96.0.10`), or `None` when the range is too small.
pub fn tenth_ip(cidr: IpNet) -> Option<IpAddr> {
    cidr.hosts().find(|ip| match (ip, cidr.network()) {
        (IpAddr::V4(a), IpAddr::V4(n)) => u32::from(*a).wrapping_sub(u32::from(n)) == 10,
        (IpAddr::V6(a), IpAddr::V6(n)) => u128::from(*a).wrapping_sub(u128::from(n)) == 10,
        _ => false,
    })
}

fn labels() -> BTreeMap<String, String> {
    [
        ("k8s-app".to_string(), "kube-dns".to_string()),
        ("kubernetes.io/name".to_string(), "dari-dns".to_string()),
    ]
    .into()
}

fn port(name: &str, proto: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        protocol: Some(proto.into()),
        port,
        target_port: Some(IntOrString::Int(port)),
        ..Default::default()
    }
}

/// The `kube-dns` Service for a service range. `None` when the range has no 10th address.
pub fn kube_dns_service(service_cidr: IpNet) -> Option<Service> {
    let ip = tenth_ip(service_cidr)?.to_string();
    Some(Service {
        metadata: ObjectMeta {
            name: Some(SERVICE_NAME.into()),
            namespace: Some(NAMESPACE.into()),
            labels: Some(labels()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some(ip.clone()),
            cluster_ips: Some(vec![ip]),
            ports: Some(vec![port("dns", "UDP", 53), port("dns-tcp", "TCP", 53), port("metrics", "TCP", 9153)]),
            ..Default::default()
        }),
        status: None,
    })
}

/// The EndpointSlice of `kube-dns`: the addresses where dari's DNS listens (one address family), with
/// the ports it listens on.
pub fn kube_dns_endpoint_slice(addresses: &[IpAddr], dns_port: u16, metrics_port: u16) -> EndpointSlice {
    let v6 = addresses.first().is_some_and(IpAddr::is_ipv6);
    let ep_port = |name: &str, proto: &str, p: u16| EndpointPort {
        name: Some(name.into()),
        protocol: Some(proto.into()),
        port: Some(i32::from(p)),
        ..Default::default()
    };
    let mut l = labels();
    l.insert(SERVICE_NAME_LABEL.into(), SERVICE_NAME.into());
    l.insert("endpointslice.kubernetes.io/managed-by".into(), "dari".into());
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{SERVICE_NAME}-dari")),
            namespace: Some(NAMESPACE.into()),
            labels: Some(l),
            ..Default::default()
        },
        address_type: if v6 { "IPv6" } else { "IPv4" }.into(),
        endpoints: addresses
            .iter()
            .filter(|a| a.is_ipv6() == v6)
            .map(|a| Endpoint {
                addresses: vec![a.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ports: Some(vec![
            ep_port("dns", "UDP", dns_port),
            ep_port("dns-tcp", "TCP", dns_port),
            ep_port("metrics", "TCP", metrics_port),
        ]),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tenth() {
        assert_eq!(tenth_ip("10.96.0.0/12".parse().unwrap()), Some("10.96.0.10".parse().unwrap()));
        assert_eq!(tenth_ip("10.43.0.0/16".parse().unwrap()), Some("10.43.0.10".parse().unwrap()));
        assert_eq!(tenth_ip("fd00:10:96::/112".parse().unwrap()), Some("fd00:10:96::a".parse().unwrap()));
        assert_eq!(tenth_ip("10.0.0.0/29".parse().unwrap()), None);
    }

    #[test]
    fn service_and_slice_index_as_kube_dns() {
        let svc = kube_dns_service("10.96.0.0/12".parse().unwrap()).unwrap();
        let slice = kube_dns_endpoint_slice(&["10.244.0.2".parse().unwrap()], 53, 9153);
        let idx = crate::ClusterIndex::build([&svc], [&slice], []);
        let rec = idx.service("kube-system", "kube-dns").unwrap();
        assert_eq!(rec.kind, crate::index::ServiceKind::ClusterIp(vec!["10.96.0.10".parse().unwrap()]));
        assert_eq!(rec.ports.len(), 3);
    }
}
