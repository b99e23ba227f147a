//! The Node object and its Lease: [`NodeFacts`] (read from /proc and the runtime),
//! [`node_status`] (pure), [`register`], [`renew_lease`], [`wait_pod_cidr`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Namespace, Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;

use crate::error::{AgentError, Result};
use crate::pod::status::Timestamp;

/// The kubelet version the agent reports.
pub const KUBELET_VERSION: &str = "v1.33.0-dari";
/// Lease namespace.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// Lease duration (seconds); renewed every quarter of it.
pub const LEASE_SECONDS: i32 = 40;

/// What the node reports about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeFacts {
    /// Node name.
    pub name: String,
    /// InternalIP.
    pub ip: IpAddr,
    /// Hostname address.
    pub hostname: String,
    /// Logical CPUs.
    pub cpus: usize,
    /// MemTotal in bytes.
    pub memory_bytes: u64,
    /// Max pods.
    pub pods: u32,
    /// PRETTY_NAME of /etc/os-release.
    pub os_image: String,
    /// uname -r.
    pub kernel: String,
    /// GOARCH-style architecture.
    pub arch: String,
    /// `containerd://1.6.20`.
    pub runtime_version: String,
    /// /etc/machine-id (may be empty).
    pub machine_id: String,
    /// /proc/sys/kernel/random/boot_id.
    pub boot_id: String,
    /// Port of the streaming endpoint (`daemonEndpoints.kubeletEndpoint.Port`; 10250).
    pub kubelet_port: u16,
}

impl NodeFacts {
    /// Reads the host's facts.
    pub fn gather(name: &str, ip: IpAddr, runtime_version: &str) -> NodeFacts {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default().trim().to_string();
        let mem_kb: u64 = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
            .unwrap_or(0);
        let os_image = read("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_else(|| "Linux".into());
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        NodeFacts {
            name: name.into(),
            ip,
            hostname: name.into(),
            cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            memory_bytes: mem_kb * 1024,
            pods: 110,
            os_image,
            kernel: read("/proc/sys/kernel/osrelease"),
            arch: arch.into(),
            runtime_version: runtime_version.into(),
            machine_id: read("/etc/machine-id"),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
            kubelet_port: 10250,
        }
    }
}

fn cond(prev: Option<&NodeStatus>, type_: &str, status: &str, reason: &str, message: &str, now: Timestamp) -> NodeCondition {
    let last = prev
        .and_then(|p| p.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.clone());
    NodeCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(last.unwrap_or(Time(now))),
    }
}

/// The Node status the agent reports: addresses, capacity = allocatable, nodeInfo and the four
/// conditions (Ready, MemoryPressure, DiskPressure, PIDPressure).
pub fn node_status(f: &NodeFacts, ready: bool, prev: Option<&NodeStatus>, now: Timestamp) -> NodeStatus {
    let mut cap = BTreeMap::new();
    cap.insert("cpu".to_string(), Quantity(f.cpus.to_string()));
    cap.insert("memory".to_string(), Quantity(format!("{}Ki", f.memory_bytes / 1024)));
    cap.insert("pods".to_string(), Quantity(f.pods.to_string()));
    cap.insert("ephemeral-storage".to_string(), Quantity("10Gi".into()));
    NodeStatus {
        addresses: Some(vec![
            NodeAddress { type_: "InternalIP".into(), address: f.ip.to_string() },
            NodeAddress { type_: "Hostname".into(), address: f.hostname.clone() },
        ]),
        allocatable: Some(cap.clone()),
        capacity: Some(cap),
        conditions: Some(vec![
            cond(prev, "MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available", now),
            cond(prev, "DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure", now),
            cond(prev, "PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available", now),
            if ready {
                cond(prev, "Ready", "True", "KubeletReady", "kubelet is posting ready status", now)
            } else {
                cond(prev, "Ready", "False", "KubeletNotReady", "container runtime network not ready: waiting for podCIDR", now)
            },
        ]),
        node_info: Some(NodeSystemInfo {
            architecture: f.arch.clone(),
            boot_id: f.boot_id.clone(),
            container_runtime_version: f.runtime_version.clone(),
            kernel_version: f.kernel.clone(),
            kube_proxy_version: KUBELET_VERSION.into(),
            kubelet_version: KUBELET_VERSION.into(),
            machine_id: f.machine_id.clone(),
            operating_system: "linux".into(),
            os_image: f.os_image.clone(),
            system_uuid: f.machine_id.clone(),
            ..Default::default()
        }),
        daemon_endpoints: Some(k8s_openapi::api::core::v1::NodeDaemonEndpoints {
            kubelet_endpoint: Some(k8s_openapi::api::core::v1::DaemonEndpoint { port: i32::from(f.kubelet_port) }),
        }),
        ..Default::default()
    }
}

fn now() -> Timestamp {
    Timestamp::now()
}

/// Creates the Node if missing (labels kubernetes.io/hostname, os, arch), then writes its status.
/// Returns the Node as stored.
pub async fn register(client: &Client, f: &NodeFacts, ready: bool) -> Result<Node> {
    let api: Api<Node> = Api::all(client.clone());
    let obj = format!("node/{}", f.name);
    let existing = api.get_opt(&f.name).await.map_err(AgentError::kube("get", &obj))?;
    let node = match existing {
        Some(n) => n,
        None => {
            let mut labels = BTreeMap::new();
            labels.insert("kubernetes.io/hostname".to_string(), f.hostname.clone());
            labels.insert("kubernetes.io/os".to_string(), "linux".to_string());
            labels.insert("kubernetes.io/arch".to_string(), f.arch.clone());
            labels.insert("beta.kubernetes.io/os".to_string(), "linux".to_string());
            labels.insert("beta.kubernetes.io/arch".to_string(), f.arch.clone());
            let n = Node { metadata: ObjectMeta { name: Some(f.name.clone()), labels: Some(labels), ..Default::default() }, spec: Some(NodeSpec::default()), status: None };
            match api.create(&PostParams::default(), &n).await {
                Ok(n) => n,
                Err(kube::Error::Api(e)) if e.code == 409 => api.get(&f.name).await.map_err(AgentError::kube("get", &obj))?,
                Err(e) => return Err(AgentError::kube("create", &obj)(e)),
            }
        }
    };
    update_status(client, f, ready, node.status.as_ref()).await
}

/// Writes the Node status (status subresource, merge patch).
pub async fn update_status(client: &Client, f: &NodeFacts, ready: bool, prev: Option<&NodeStatus>) -> Result<Node> {
    let api: Api<Node> = Api::all(client.clone());
    let status = node_status(f, ready, prev, now());
    let patch = serde_json::json!({ "status": status });
    api.patch_status(&f.name, &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(AgentError::kube("patch status", format!("node/{}", f.name)))
}

/// Creates or renews the node's Lease in kube-node-lease (creating the namespace if missing).
pub async fn renew_lease(client: &Client, node: &Node) -> Result<()> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let api: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let obj = format!("lease/{LEASE_NAMESPACE}/{name}");
    let spec = LeaseSpec {
        holder_identity: Some(name.clone()),
        lease_duration_seconds: Some(LEASE_SECONDS),
        renew_time: Some(MicroTime(now())),
        ..Default::default()
    };
    let patch = serde_json::json!({ "spec": spec });
    match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => return Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(AgentError::kube("patch", &obj)(e)),
    }
    let nsapi: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace { metadata: ObjectMeta { name: Some(LEASE_NAMESPACE.into()), ..Default::default() }, ..Default::default() };
    match nsapi.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(AgentError::kube("create", format!("namespace/{LEASE_NAMESPACE}"))(e)),
    }
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(LEASE_NAMESPACE.into()),
            owner_references: node.metadata.uid.clone().map(|uid| vec![OwnerReference { api_version: "v1".into(), kind: "Node".into(), name: name.clone(), uid, ..Default::default() }]),
            ..Default::default()
        },
        spec: Some(spec),
    };
    match api.create(&PostParams::default(), &lease).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(AgentError::kube("create", &obj)(e)),
    }
}

/// Waits until the Node has `spec.podCIDR` (node IPAM assigns it). With `override_cidr`, sets
/// it on the Node if empty (tests, or clusters without node IPAM) and returns it.
pub async fn wait_pod_cidr(client: &Client, name: &str, override_cidr: Option<IpNet>, timeout: Duration) -> Result<IpNet> {
    let api: Api<Node> = Api::all(client.clone());
    let obj = format!("node/{name}");
    if let Some(c) = override_cidr {
        let n = api.get(name).await.map_err(AgentError::kube("get", &obj))?;
        if n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).is_none() {
            let patch = serde_json::json!({ "spec": { "podCIDR": c.to_string(), "podCIDRs": [c.to_string()] } });
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(AgentError::kube("patch podCIDR", &obj))?;
        }
        return Ok(c);
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = api.get(name).await.map_err(AgentError::kube("get", &obj))?;
        if let Some(c) = n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()) {
            return c.parse().map_err(|_| AgentError::Config(format!("node {name} has an invalid podCIDR {c:?}")));
        }
        if tokio::time::Instant::now() > deadline {
            return Err(AgentError::Timeout { what: format!("spec.podCIDR of node {name} (is the node IPAM controller running? or pass --pod-cidr)"), secs: timeout.as_secs() });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> NodeFacts {
        NodeFacts {
            name: "n1".into(),
            ip: "10.0.0.5".parse().expect("ip"),
            hostname: "n1".into(),
            cpus: 2,
            memory_bytes: 4 << 30,
            pods: 110,
            os_image: "Debian GNU/Linux 12 (bookworm)".into(),
            kernel: "6.1.0".into(),
            arch: "amd64".into(),
            runtime_version: "containerd://1.6.20".into(),
            machine_id: "m".into(),
            boot_id: "b".into(),
            kubelet_port: 10250,
        }
    }

    #[test]
    fn status_has_what_kubectl_shows() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().expect("ts");
        let s = node_status(&facts(), true, None, t0);
        let cap = s.capacity.clone().expect("capacity");
        assert_eq!(cap["pods"].0, "110");
        assert_eq!(cap["memory"].0, "4194304Ki");
        assert_eq!(s.node_info.as_ref().map(|i| i.kubelet_version.as_str()), Some(KUBELET_VERSION));
        let ready = s.conditions.as_ref().and_then(|c| c.iter().find(|c| c.type_ == "Ready")).expect("Ready");
        assert_eq!(ready.status, "True");
        // transition time kept while the status does not change, heartbeat moves
        let t1: Timestamp = "2026-01-01T00:01:00Z".parse().expect("ts");
        let s2 = node_status(&facts(), true, Some(&s), t1);
        let r2 = s2.conditions.as_ref().and_then(|c| c.iter().find(|c| c.type_ == "Ready")).expect("Ready");
        assert_eq!(r2.last_transition_time, Some(Time(t0)));
        assert_eq!(r2.last_heartbeat_time, Some(Time(t1)));
        let s3 = node_status(&facts(), false, Some(&s2), t1);
        let r3 = s3.conditions.as_ref().and_then(|c| c.iter().find(|c| c.type_ == "Ready")).expect("Ready");
        assert_eq!((r3.status.as_str(), r3.last_transition_time.clone()), ("False", Some(Time(t1))));
    }
}
