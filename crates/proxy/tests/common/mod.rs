//! Builders for Services and EndpointSlices used by the tests and the benchmark.
#![allow(dead_code)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort, ServiceSpec,
    ServiceStatus, SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

pub fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta { namespace: Some(ns.into()), name: Some(name.into()), ..Default::default() }
}

/// A ClusterIP Service; `ports` are (name, proto, port, targetPort).
pub fn service(ns: &str, name: &str, cluster_ip: &str, ports: &[(&str, &str, i32, IntOrString)]) -> Service {
    Service {
        metadata: meta(ns, name),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some(cluster_ip.into()),
            cluster_ips: Some(vec![cluster_ip.into()]),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, proto, port, target)| ServicePort {
                        name: (!n.is_empty()).then(|| n.to_string()),
                        protocol: Some(proto.to_string()),
                        port: *port,
                        target_port: Some(target.clone()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        status: None,
    }
}

pub fn tcp(name: &str, port: i32, target: i32) -> (&str, &'static str, i32, IntOrString) {
    (name, "TCP", port, IntOrString::Int(target))
}

pub fn with_type(mut s: Service, type_: &str, node_ports: &[i32]) -> Service {
    if let Some(spec) = s.spec.as_mut() {
        spec.type_ = Some(type_.into());
        for (p, np) in spec.ports.iter_mut().flatten().zip(node_ports) {
            p.node_port = Some(*np);
        }
    }
    s
}

pub fn with_external_ips(mut s: Service, ips: &[&str]) -> Service {
    if let Some(spec) = s.spec.as_mut() {
        spec.external_ips = Some(ips.iter().map(|s| s.to_string()).collect());
    }
    s
}

pub fn with_lb_ingress(mut s: Service, ips: &[&str]) -> Service {
    s.status = Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(
                ips.iter().map(|ip| LoadBalancerIngress { ip: Some(ip.to_string()), ..Default::default() }).collect(),
            ),
        }),
        ..Default::default()
    });
    s
}

pub fn with_affinity(mut s: Service, timeout: Option<i32>) -> Service {
    if let Some(spec) = s.spec.as_mut() {
        spec.session_affinity = Some("ClientIP".into());
        spec.session_affinity_config = Some(SessionAffinityConfig {
            client_ip: Some(ClientIPConfig { timeout_seconds: timeout }),
        });
    }
    s
}

pub fn with_policies(mut s: Service, internal: &str, external: &str) -> Service {
    if let Some(spec) = s.spec.as_mut() {
        spec.internal_traffic_policy = Some(internal.into());
        spec.external_traffic_policy = Some(external.into());
    }
    s
}

/// Endpoint conditions shorthand.
#[derive(Clone, Copy)]
pub enum Cond {
    Ready,
    NotReady,
    Terminating,
}

/// An EndpointSlice of `svc`: `ports` are (name, proto, port); endpoints are (ip, node, cond).
pub fn slice(
    ns: &str,
    svc: &str,
    suffix: &str,
    ports: &[(&str, &str, i32)],
    endpoints: &[(&str, &str, Cond)],
) -> EndpointSlice {
    let mut m = meta(ns, &format!("{svc}-{suffix}"));
    m.labels = Some(BTreeMap::from([("kubernetes.io/service-name".to_string(), svc.to_string())]));
    let v6 = endpoints.first().is_some_and(|(ip, _, _)| ip.contains(':'));
    EndpointSlice {
        metadata: m,
        address_type: if v6 { "IPv6" } else { "IPv4" }.into(),
        ports: Some(
            ports
                .iter()
                .map(|(n, proto, port)| EndpointPort {
                    name: Some(n.to_string()),
                    protocol: Some(proto.to_string()),
                    port: Some(*port),
                    ..Default::default()
                })
                .collect(),
        ),
        endpoints: endpoints
            .iter()
            .map(|(ip, node, cond)| {
                let (ready, serving, terminating) = match cond {
                    Cond::Ready => (true, true, false),
                    Cond::NotReady => (false, false, false),
                    Cond::Terminating => (false, true, true),
                };
                Endpoint {
                    addresses: vec![ip.to_string()],
                    node_name: Some(node.to_string()),
                    conditions: Some(EndpointConditions {
                        ready: Some(ready),
                        serving: Some(serving),
                        terminating: Some(terminating),
                    }),
                    ..Default::default()
                }
            })
            .collect(),
    }
}
