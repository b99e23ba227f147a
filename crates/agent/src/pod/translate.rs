//! Pod → CRI: pure functions from a Pod (plus what the node knows) to `PodSandboxConfig` and
//! `ContainerConfig`, the pod's DNS configuration per dnsPolicy, environment (Service links,
//! envFrom, env with downward-API fieldRefs and `$(VAR)` expansion) and mounts.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod, Service};

use crate::cri::v1;

/// Labels the agent puts on sandboxes and containers (the same keys as the kubelet's).
pub mod labels {
    /// Pod name.
    pub const POD_NAME: &str = "io.kubernetes.pod.name";
    /// Pod namespace.
    pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
    /// Pod UID: how the agent finds a pod's sandbox again (adoption after restart).
    pub const POD_UID: &str = "io.kubernetes.pod.uid";
    /// Container name.
    pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
    /// Marks objects created by dari's agent.
    pub const MANAGED_BY: &str = "dari.dev/agent";
}

/// What the node contributes to every pod's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeContext {
    /// This node's name.
    pub node_name: String,
    /// This node's InternalIP (status.hostIP, downward API).
    pub node_ip: IpAddr,
    /// Host name for hostNetwork pods.
    pub hostname: String,
    /// Cluster DNS servers (kube-dns ClusterIP); empty = no cluster DNS.
    pub cluster_dns: Vec<IpAddr>,
    /// Cluster domain, `cluster.local`.
    pub cluster_domain: String,
    /// The node's own resolver configuration (dnsPolicy Default).
    pub host_resolv: ResolvConf,
    /// Directory holding `<ns>_<name>_<uid>/<container>/<n>.log`.
    pub pod_log_root: PathBuf,
    /// cgroupfs parent of all pods of this node, e.g. `/dari/node1`.
    pub cgroup_root: String,
}

/// A resolv.conf's content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    /// `nameserver` lines.
    pub nameservers: Vec<String>,
    /// `search` domains.
    pub searches: Vec<String>,
    /// `options` entries (`ndots:5`, `edns0`).
    pub options: Vec<String>,
}

impl ResolvConf {
    /// Parses resolv.conf text (`domain` counts as a search domain, comments ignored).
    pub fn parse(text: &str) -> ResolvConf {
        let mut r = ResolvConf::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut f = line.split_whitespace();
            match f.next() {
                Some("nameserver") => r.nameservers.extend(f.next().map(str::to_string)),
                Some("search") | Some("domain") => r.searches = f.map(str::to_string).collect(),
                Some("options") => r.options.extend(f.map(str::to_string)),
                _ => {}
            }
        }
        r
    }

    /// Renders resolv.conf text as containerd writes it from a CRI `DnsConfig`.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if !self.searches.is_empty() {
            s.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        for n in &self.nameservers {
            s.push_str(&format!("nameserver {n}\n"));
        }
        if !self.options.is_empty() {
            s.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        s
    }
}

fn ns_name(pod: &Pod) -> (String, String, String) {
    (
        pod.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
        pod.metadata.name.clone().unwrap_or_default(),
        pod.metadata.uid.clone().unwrap_or_default(),
    )
}

fn host_network(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false)
}

/// The pod's resolver configuration per `dnsPolicy` and `dnsConfig`, as the kubelet computes it:
///
/// * `ClusterFirst` (default): cluster DNS servers, search `<ns>.svc.<domain> svc.<domain>
///   <domain>`, `options ndots:5`; a hostNetwork pod, or a node without cluster DNS, falls back to
///   `Default`.
/// * `ClusterFirstWithHostNet`: cluster DNS even with hostNetwork.
/// * `Default`: the node's resolv.conf.
/// * `None`: only `dnsConfig`.
///
/// `dnsConfig` is then merged: nameservers and searches appended (deduplicated, at most 3
/// nameservers and 32 searches), options overriding by name.
pub fn resolv_conf(pod: &Pod, node: &NodeContext) -> ResolvConf {
    let spec = pod.spec.clone().unwrap_or_default();
    let (ns, _, _) = ns_name(pod);
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let cluster = |node: &NodeContext| ResolvConf {
        nameservers: node.cluster_dns.iter().map(|i| i.to_string()).collect(),
        searches: vec![format!("{ns}.svc.{}", node.cluster_domain), format!("svc.{}", node.cluster_domain), node.cluster_domain.clone()],
        options: vec!["ndots:5".into()],
    };
    let mut base = match policy {
        "None" => ResolvConf::default(),
        "Default" => node.host_resolv.clone(),
        "ClusterFirstWithHostNet" if !node.cluster_dns.is_empty() => cluster(node),
        _ if host_network(pod) || node.cluster_dns.is_empty() => node.host_resolv.clone(),
        _ => cluster(node),
    };
    if let Some(cfg) = spec.dns_config {
        for n in cfg.nameservers.unwrap_or_default() {
            if !base.nameservers.contains(&n) {
                base.nameservers.push(n);
            }
        }
        for s in cfg.searches.unwrap_or_default() {
            if !base.searches.contains(&s) {
                base.searches.push(s);
            }
        }
        for o in cfg.options.unwrap_or_default() {
            let name = o.name.clone().unwrap_or_default();
            let entry = match o.value {
                Some(v) => format!("{name}:{v}"),
                None => name.clone(),
            };
            base.options.retain(|e| e.split(':').next() != Some(name.as_str()));
            base.options.push(entry);
        }
    }
    base.nameservers.truncate(3);
    base.searches.truncate(32);
    base
}

/// The sandbox's log directory for a pod.
pub fn pod_log_dir(pod: &Pod, node: &NodeContext) -> PathBuf {
    let (ns, name, uid) = ns_name(pod);
    node.pod_log_root.join(format!("{ns}_{name}_{uid}"))
}

/// cgroupfs parent of one pod.
pub fn pod_cgroup(pod: &Pod, node: &NodeContext) -> String {
    let (_, _, uid) = ns_name(pod);
    format!("{}/pod{}", node.cgroup_root.trim_end_matches('/'), uid)
}

fn proto_of(p: Option<&str>) -> i32 {
    match p.unwrap_or("TCP") {
        "UDP" => v1::Protocol::Udp as i32,
        "SCTP" => v1::Protocol::Sctp as i32,
        _ => v1::Protocol::Tcp as i32,
    }
}

fn namespace_options(pod: &Pod) -> v1::NamespaceOption {
    let spec = pod.spec.clone().unwrap_or_default();
    let mode = |host: Option<bool>, pod_mode: v1::NamespaceMode| if host.unwrap_or(false) { v1::NamespaceMode::Node as i32 } else { pod_mode as i32 };
    v1::NamespaceOption {
        network: mode(spec.host_network, v1::NamespaceMode::Pod),
        pid: if spec.host_pid.unwrap_or(false) {
            v1::NamespaceMode::Node as i32
        } else if spec.share_process_namespace.unwrap_or(false) {
            v1::NamespaceMode::Pod as i32
        } else {
            v1::NamespaceMode::Container as i32
        },
        ipc: mode(spec.host_ipc, v1::NamespaceMode::Pod),
        ..Default::default()
    }
}

/// The `PodSandboxConfig` for `pod` (attempt = how many sandboxes it had before).
pub fn sandbox_config(pod: &Pod, node: &NodeContext, attempt: u32) -> v1::PodSandboxConfig {
    let (ns, name, uid) = ns_name(pod);
    let spec = pod.spec.clone().unwrap_or_default();
    let hostname = if host_network(pod) {
        node.hostname.clone()
    } else {
        let h = spec.hostname.clone().unwrap_or_else(|| name.clone());
        h.chars().take(63).collect::<String>().trim_end_matches(['-', '.']).to_string()
    };
    let dns = resolv_conf(pod, node);
    let mut port_mappings = Vec::new();
    for c in &spec.containers {
        for p in c.ports.clone().unwrap_or_default() {
            if let Some(hp) = p.host_port.filter(|hp| *hp > 0) {
                port_mappings.push(v1::PortMapping {
                    protocol: proto_of(p.protocol.as_deref()),
                    container_port: p.container_port,
                    host_port: hp,
                    host_ip: p.host_ip.clone().unwrap_or_default(),
                });
            }
        }
    }
    let mut lbls: HashMap<String, String> = pod.metadata.labels.clone().unwrap_or_default().into_iter().collect();
    lbls.insert(labels::POD_NAME.into(), name.clone());
    lbls.insert(labels::POD_NAMESPACE.into(), ns.clone());
    lbls.insert(labels::POD_UID.into(), uid.clone());
    lbls.insert(labels::MANAGED_BY.into(), node.node_name.clone());
    let psc = spec.security_context.clone().unwrap_or_default();
    let sysctls = psc.sysctls.clone().unwrap_or_default().into_iter().map(|s| (s.name, s.value)).collect();
    v1::PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata { name, uid, namespace: ns, attempt }),
        hostname,
        log_directory: pod_log_dir(pod, node).to_string_lossy().into_owned(),
        dns_config: Some(v1::DnsConfig { servers: dns.nameservers, searches: dns.searches, options: dns.options }),
        port_mappings,
        labels: lbls,
        annotations: pod.metadata.annotations.clone().unwrap_or_default().into_iter().collect(),
        linux: Some(v1::LinuxPodSandboxConfig {
            cgroup_parent: pod_cgroup(pod, node),
            security_context: Some(v1::LinuxSandboxSecurityContext {
                namespace_options: Some(namespace_options(pod)),
                run_as_user: psc.run_as_user.map(|value| v1::Int64Value { value }),
                run_as_group: psc.run_as_group.map(|value| v1::Int64Value { value }),
                supplemental_groups: psc.supplemental_groups.clone().unwrap_or_default(),
                ..Default::default()
            }),
            sysctls,
            ..Default::default()
        }),
        windows: None,
    }
}

/// ConfigMap and Secret data the pod references (fetched by the sync before translating).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lookups {
    /// ConfigMap name → data (binaryData decoded into bytes too).
    pub config_maps: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    /// Secret name → data.
    pub secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    /// Services of the pod's namespace (plus `kubernetes` in default), for Service links.
    pub services: Vec<Service>,
}

/// `FOO_SERVICE_HOST`, `FOO_SERVICE_PORT`, `FOO_PORT_80_TCP...` for every Service with a
/// cluster IP (the docker-links style variables the kubelet injects with enableServiceLinks).
pub fn service_env(services: &[Service]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut svcs: Vec<&Service> = services.iter().collect();
    svcs.sort_by_key(|s| s.metadata.name.clone());
    for s in svcs {
        let Some(spec) = &s.spec else { continue };
        let Some(ip) = spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty() && *ip != "None") else { continue };
        let ports = spec.ports.clone().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        let n = s.metadata.name.clone().unwrap_or_default().to_uppercase().replace('-', "_");
        out.push((format!("{n}_SERVICE_HOST"), ip.to_string()));
        out.push((format!("{n}_SERVICE_PORT"), first.port.to_string()));
        for p in &ports {
            if let Some(pn) = p.name.as_deref().filter(|x| !x.is_empty()) {
                out.push((format!("{n}_SERVICE_PORT_{}", pn.to_uppercase().replace('-', "_")), p.port.to_string()));
            }
        }
        let proto = |p: &k8s_openapi::api::core::v1::ServicePort| p.protocol.clone().unwrap_or_else(|| "TCP".into());
        out.push((format!("{n}_PORT"), format!("{}://{ip}:{}", proto(first).to_lowercase(), first.port)));
        for p in &ports {
            let pr = proto(p);
            let base = format!("{n}_PORT_{}_{}", p.port, pr.to_uppercase());
            out.push((base.clone(), format!("{}://{ip}:{}", pr.to_lowercase(), p.port)));
            out.push((format!("{base}_PROTO"), pr.to_lowercase()));
            out.push((format!("{base}_PORT"), p.port.to_string()));
            out.push((format!("{base}_ADDR"), ip.to_string()));
        }
    }
    out
}

/// Expands `$(VAR)` references against `vars` as Kubernetes does: unknown references stay
/// as written, `$$` is an escaped `$`.
pub fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    let b = s.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'(' {
                if let Some(end) = s[i + 2..].find(')') {
                    let name = &s[i + 2..i + 2 + end];
                    match vars.get(name) {
                        Some(v) => out.push_str(v),
                        None => out.push_str(&s[i..i + 3 + end]),
                    }
                    i += 3 + end;
                    continue;
                }
            }
        }
        let ch = s[i..].chars().next().unwrap_or('\0');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// Reads a downward-API field path (`metadata.name`, `metadata.labels['app']`, `status.podIP` ...).
pub fn field_ref(pod: &Pod, path: &str, pod_ip: Option<&str>, node: &NodeContext) -> Option<String> {
    let (ns, name, uid) = ns_name(pod);
    let spec = pod.spec.clone().unwrap_or_default();
    let sel = |prefix: &str, map: Option<&BTreeMap<String, String>>| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    match path {
        "metadata.name" => Some(name),
        "metadata.namespace" => Some(ns),
        "metadata.uid" => Some(uid),
        "spec.nodeName" => Some(spec.node_name.clone().unwrap_or_else(|| node.node_name.clone())),
        "spec.serviceAccountName" => Some(spec.service_account_name.clone().unwrap_or_else(|| "default".into())),
        "status.podIP" | "status.podIPs" => Some(pod_ip.unwrap_or("").to_string()),
        "status.hostIP" | "status.hostIPs" => Some(node.node_ip.to_string()),
        p if p.starts_with("metadata.labels['") => sel("metadata.labels['", pod.metadata.labels.as_ref()),
        p if p.starts_with("metadata.annotations['") => sel("metadata.annotations['", pod.metadata.annotations.as_ref()),
        _ => None,
    }
}

/// Why a container's configuration cannot be built (the kubelet's CreateContainerConfigError).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

fn lookup<'a>(maps: &'a BTreeMap<String, BTreeMap<String, Vec<u8>>>, kind: &str, name: &str, key: Option<&str>, optional: bool) -> Result<Option<&'a BTreeMap<String, Vec<u8>>>, ConfigError> {
    match maps.get(name) {
        Some(m) => {
            if let Some(k) = key {
                if !m.contains_key(k) && !optional {
                    return Err(ConfigError(format!("couldn't find key {k} in {kind} {name}")));
                }
            }
            Ok(Some(m))
        }
        None if optional => Ok(None),
        None => Err(ConfigError(format!("{kind} \"{name}\" not found"))),
    }
}

/// The container's environment in the kubelet's order: Service links, then envFrom, then env
/// (later wins), with `$(VAR)` expansion of env values against what came before.
pub fn container_env(pod: &Pod, c: &Container, pod_ip: Option<&str>, node: &NodeContext, lk: &Lookups) -> Result<Vec<(String, String)>, ConfigError> {
    let spec = pod.spec.clone().unwrap_or_default();
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut set = |env: &mut BTreeMap<String, String>, k: String, v: String| {
        if env.insert(k.clone(), v).is_none() {
            order.push(k);
        }
    };
    if spec.enable_service_links.unwrap_or(true) {
        for (k, v) in service_env(&lk.services) {
            set(&mut env, k, v);
        }
    }
    for ef in c.env_from.clone().unwrap_or_default() {
        let prefix = ef.prefix.clone().unwrap_or_default();
        let src = if let Some(r) = &ef.config_map_ref {
            lookup(&lk.config_maps, "configmap", &r.name, None, r.optional.unwrap_or(false))?
        } else if let Some(r) = &ef.secret_ref {
            lookup(&lk.secrets, "secret", &r.name, None, r.optional.unwrap_or(false))?
        } else {
            None
        };
        for (k, v) in src.cloned().unwrap_or_default() {
            set(&mut env, format!("{prefix}{k}"), String::from_utf8_lossy(&v).into_owned());
        }
    }
    for e in c.env.clone().unwrap_or_default() {
        let v = if let Some(vf) = &e.value_from {
            if let Some(f) = &vf.field_ref {
                field_ref(pod, &f.field_path, pod_ip, node).ok_or_else(|| ConfigError(format!("unsupported fieldRef {}", f.field_path)))?
            } else if let Some(r) = &vf.config_map_key_ref {
                let m = lookup(&lk.config_maps, "configmap", &r.name, Some(&r.key), r.optional.unwrap_or(false))?;
                m.and_then(|m| m.get(&r.key)).map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default()
            } else if let Some(r) = &vf.secret_key_ref {
                let m = lookup(&lk.secrets, "secret", &r.name, Some(&r.key), r.optional.unwrap_or(false))?;
                m.and_then(|m| m.get(&r.key)).map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default()
            } else if let Some(r) = &vf.resource_field_ref {
                resource_field(c, &r.resource).ok_or_else(|| ConfigError(format!("unsupported resourceFieldRef {}", r.resource)))?
            } else {
                String::new()
            }
        } else {
            expand(e.value.as_deref().unwrap_or(""), &env)
        };
        set(&mut env, e.name.clone(), v);
    }
    Ok(order.into_iter().map(|k| {
        let v = env.get(&k).cloned().unwrap_or_default();
        (k, v)
    }).collect())
}

fn resource_field(c: &Container, res: &str) -> Option<String> {
    let r = c.resources.clone().unwrap_or_default();
    let (kind, name) = res.split_once('.')?;
    let map = if kind == "limits" { r.limits } else { r.requests };
    let q = map.and_then(|m| m.get(name).cloned());
    Some(match (name, q) {
        ("cpu", Some(q)) => ((parse_cpu_millis(&q.0).unwrap_or(0) + 999) / 1000).to_string(),
        ("memory", Some(q)) => parse_bytes(&q.0).unwrap_or(0).to_string(),
        (_, Some(q)) => q.0,
        // no limit: the node's allocatable would apply; 0 means "unknown" here
        (_, None) => "0".into(),
    })
}

/// Parses a CPU quantity into millicores (`500m`, `2`, `0.5`).
pub fn parse_cpu_millis(q: &str) -> Option<i64> {
    if let Some(m) = q.strip_suffix('m') {
        return m.parse().ok();
    }
    q.parse::<f64>().ok().map(|f| (f * 1000.0).round() as i64)
}

/// Parses a memory quantity into bytes (`128Mi`, `1G`, `1e3`, `512`).
pub fn parse_bytes(q: &str) -> Option<i64> {
    const SUF: [(&str, f64); 12] = [
        ("Ki", 1024.0), ("Mi", 1048576.0), ("Gi", 1073741824.0), ("Ti", 1099511627776.0), ("Pi", 1125899906842624.0), ("Ei", 1152921504606846976.0),
        ("k", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12), ("P", 1e15), ("E", 1e18),
    ];
    for (s, m) in SUF {
        if let Some(n) = q.strip_suffix(s) {
            return n.parse::<f64>().ok().map(|f| (f * m) as i64);
        }
    }
    q.parse::<f64>().ok().map(|f| f as i64)
}

/// Host directories backing the pod's volumes (name → path), prepared by the sync.
pub type VolumePaths = BTreeMap<String, PathBuf>;

/// The `ContainerConfig` for container `c` of `pod`.
pub fn container_config(pod: &Pod, c: &Container, node: &NodeContext, pod_ip: Option<&str>, volumes: &VolumePaths, lk: &Lookups, attempt: u32) -> Result<v1::ContainerConfig, ConfigError> {
    let (ns, name, uid) = ns_name(pod);
    let env = container_env(pod, c, pod_ip, node, lk)?;
    let vars: BTreeMap<String, String> = env.iter().cloned().collect();
    let mut mounts = Vec::new();
    for vm in c.volume_mounts.clone().unwrap_or_default() {
        let host = volumes.get(&vm.name).ok_or_else(|| ConfigError(format!("volume {} of mount {} is not defined or not supported", vm.name, vm.mount_path)))?;
        let host: PathBuf = match vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sp) if sp.split('/').any(|x| x == "..") || sp.starts_with('/') => return Err(ConfigError(format!("subPath {sp} must be a relative path without '..'"))),
            Some(sp) => host.join(sp),
            None => host.clone(),
        };
        mounts.push(v1::Mount {
            container_path: vm.mount_path.clone(),
            host_path: host.to_string_lossy().into_owned(),
            readonly: vm.read_only.unwrap_or(false),
            ..Default::default()
        });
    }
    let mut lbls = HashMap::new();
    lbls.insert(labels::POD_NAME.to_string(), name);
    lbls.insert(labels::POD_NAMESPACE.to_string(), ns);
    lbls.insert(labels::POD_UID.to_string(), uid);
    lbls.insert(labels::CONTAINER_NAME.to_string(), c.name.clone());
    let sc = c.security_context.clone().unwrap_or_default();
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.clone()).unwrap_or_default();
    let res = c.resources.clone().unwrap_or_default();
    let limit = |k: &str| res.limits.as_ref().and_then(|m| m.get(k)).map(|q| q.0.clone());
    let request = |k: &str| res.requests.as_ref().and_then(|m| m.get(k)).map(|q| q.0.clone());
    let cpu_req = request("cpu").or_else(|| limit("cpu")).and_then(|q| parse_cpu_millis(&q));
    let cpu_lim = limit("cpu").and_then(|q| parse_cpu_millis(&q));
    let resources = v1::LinuxContainerResources {
        cpu_shares: cpu_req.map(|m| (m * 1024 / 1000).max(2)).unwrap_or(2),
        cpu_period: if cpu_lim.is_some() { 100_000 } else { 0 },
        cpu_quota: cpu_lim.map(|m| (m * 100).max(1000)).unwrap_or(0),
        memory_limit_in_bytes: limit("memory").and_then(|q| parse_bytes(&q)).unwrap_or(0),
        ..Default::default()
    };
    let caps = sc.capabilities.clone().unwrap_or_default();
    let log_path = format!("{}/{}.log", c.name, attempt);
    Ok(v1::ContainerConfig {
        metadata: Some(v1::ContainerMetadata { name: c.name.clone(), attempt }),
        image: Some(v1::ImageSpec { image: c.image.clone().unwrap_or_default(), ..Default::default() }),
        command: c.command.clone().unwrap_or_default().iter().map(|s| expand(s, &vars)).collect(),
        args: c.args.clone().unwrap_or_default().iter().map(|s| expand(s, &vars)).collect(),
        working_dir: c.working_dir.clone().unwrap_or_default(),
        envs: env.into_iter().map(|(key, value)| v1::KeyValue { key, value }).collect(),
        mounts,
        labels: lbls,
        annotations: HashMap::new(),
        log_path,
        stdin: c.stdin.unwrap_or(false),
        stdin_once: c.stdin_once.unwrap_or(false),
        tty: c.tty.unwrap_or(false),
        linux: Some(v1::LinuxContainerConfig {
            resources: Some(resources),
            security_context: Some(v1::LinuxContainerSecurityContext {
                capabilities: Some(v1::Capability { add_capabilities: caps.add.unwrap_or_default(), drop_capabilities: caps.drop.unwrap_or_default(), ..Default::default() }),
                privileged: sc.privileged.unwrap_or(false),
                namespace_options: Some(namespace_options(pod)),
                run_as_user: sc.run_as_user.or(psc.run_as_user).map(|value| v1::Int64Value { value }),
                run_as_group: sc.run_as_group.or(psc.run_as_group).map(|value| v1::Int64Value { value }),
                readonly_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
                no_new_privs: sc.allow_privilege_escalation == Some(false),
                ..Default::default()
            }),
        }),
        ..Default::default()
    })
}

/// Absolute log path of a container attempt (what `kubectl logs` reads).
pub fn container_log_path(pod: &Pod, node: &NodeContext, container: &str, attempt: u32) -> PathBuf {
    pod_log_dir(pod, node).join(container).join(format!("{attempt}.log"))
}

/// The directory where a pod's volumes live: `<pods_dir>/<uid>/volumes`.
pub fn pod_volume_dir(pods_dir: &Path, uid: &str) -> PathBuf {
    pods_dir.join(uid).join("volumes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeContext {
        NodeContext {
            node_name: "n1".into(),
            node_ip: "10.0.0.5".parse().expect("ip"),
            hostname: "n1".into(),
            cluster_dns: vec!["10.96.0.10".parse().expect("ip")],
            cluster_domain: "cluster.local".into(),
            host_resolv: ResolvConf::parse("# host\nnameserver 192.168.1.1\nsearch lan\noptions edns0\n"),
            pod_log_root: PathBuf::from("/var/lib/dari/agent/pod-logs"),
            cgroup_root: "/dari/n1".into(),
        }
    }

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).expect("pod yaml")
    }

    const BASE: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web-0, namespace: shop, uid: u-1, labels: {app: web}, annotations: {a: b}}\n";

    #[test]
    fn resolv_conf_per_dns_policy() {
        let n = node();
        let cf = resolv_conf(&pod(&format!("{BASE}spec: {{containers: []}}")), &n);
        assert_eq!(cf.render(), "search shop.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n");
        // hostNetwork + ClusterFirst falls back to the node's resolv.conf
        let hn = resolv_conf(&pod(&format!("{BASE}spec: {{hostNetwork: true, containers: []}}")), &n);
        assert_eq!(hn, n.host_resolv);
        let hn2 = resolv_conf(&pod(&format!("{BASE}spec: {{hostNetwork: true, dnsPolicy: ClusterFirstWithHostNet, containers: []}}")), &n);
        assert_eq!(hn2.nameservers, vec!["10.96.0.10"]);
        let d = resolv_conf(&pod(&format!("{BASE}spec: {{dnsPolicy: Default, containers: []}}")), &n);
        assert_eq!(d.render(), "search lan\nnameserver 192.168.1.1\noptions edns0\n");
        let none = resolv_conf(
            &pod(&format!("{BASE}spec: {{dnsPolicy: None, dnsConfig: {{nameservers: [1.1.1.1], searches: [x.y], options: [{{name: ndots, value: '2'}}, {{name: edns0}}]}}, containers: []}}")),
            &n,
        );
        assert_eq!(none.render(), "search x.y\nnameserver 1.1.1.1\noptions ndots:2 edns0\n");
        // dnsConfig merges into ClusterFirst, options override by name
        let merged = resolv_conf(&pod(&format!("{BASE}spec: {{dnsConfig: {{nameservers: [10.96.0.10, 9.9.9.9], searches: [extra], options: [{{name: ndots, value: '1'}}]}}, containers: []}}")), &n);
        assert_eq!(merged.nameservers, vec!["10.96.0.10", "9.9.9.9"]);
        assert_eq!(merged.searches.last().map(String::as_str), Some("extra"));
        assert_eq!(merged.options, vec!["ndots:1"]);
        // no cluster DNS configured: ClusterFirst behaves like Default
        let mut n2 = node();
        n2.cluster_dns.clear();
        assert_eq!(resolv_conf(&pod(&format!("{BASE}spec: {{containers: []}}")), &n2), n2.host_resolv);
    }

    #[test]
    fn sandbox_config_from_pod() {
        let p = pod(&format!(
            "{BASE}spec:\n  hostname: custom\n  containers:\n  - name: a\n    image: x\n    ports: [{{containerPort: 80, hostPort: 8080}}, {{containerPort: 53, protocol: UDP}}]\n"
        ));
        let s = sandbox_config(&p, &node(), 2);
        let m = s.metadata.clone().expect("metadata");
        assert_eq!((m.name.as_str(), m.namespace.as_str(), m.uid.as_str(), m.attempt), ("web-0", "shop", "u-1", 2));
        assert_eq!(s.hostname, "custom");
        assert_eq!(s.log_directory, "/var/lib/dari/agent/pod-logs/shop_web-0_u-1");
        assert_eq!(s.port_mappings, vec![v1::PortMapping { protocol: v1::Protocol::Tcp as i32, container_port: 80, host_port: 8080, host_ip: String::new() }]);
        assert_eq!(s.labels.get(labels::POD_UID).map(String::as_str), Some("u-1"));
        assert_eq!(s.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(s.labels.get(labels::MANAGED_BY).map(String::as_str), Some("n1"));
        let linux = s.linux.expect("linux");
        assert_eq!(linux.cgroup_parent, "/dari/n1/podu-1");
        let ns = linux.security_context.and_then(|c| c.namespace_options).expect("ns");
        assert_eq!((ns.network, ns.pid), (v1::NamespaceMode::Pod as i32, v1::NamespaceMode::Container as i32));
        let dns = s.dns_config.expect("dns");
        assert_eq!(dns.servers, vec!["10.96.0.10"]);
    }

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let vars: BTreeMap<String, String> = [("A".to_string(), "1".to_string()), ("B".to_string(), "two".to_string())].into();
        assert_eq!(expand("$(A)-$(B)", &vars), "1-two");
        assert_eq!(expand("$(C) stays", &vars), "$(C) stays");
        assert_eq!(expand("$$(A) escaped", &vars), "$(A) escaped");
        assert_eq!(expand("no $ refs ( )", &vars), "no $ refs ( )");
        assert_eq!(expand("unterminated $(A", &vars), "unterminated $(A");
    }

    #[test]
    fn container_config_env_command_mounts() {
        let p = pod(&format!(
            r#"{BASE}spec:
  containers:
  - name: app
    image: busybox:1
    command: [sh, -c]
    args: ["echo $(GREETING) $(MISSING)"]
    workingDir: /w
    env:
    - {{name: NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
    - {{name: IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
    - {{name: APP, valueFrom: {{fieldRef: {{fieldPath: "metadata.labels['app']"}}}}}}
    - {{name: GREETING, value: "hi-$(NAME)"}}
    - {{name: COLOR, valueFrom: {{configMapKeyRef: {{name: cfg, key: color}}}}}}
    - {{name: MEM, valueFrom: {{resourceFieldRef: {{resource: limits.memory}}}}}}
    envFrom:
    - {{secretRef: {{name: creds}}, prefix: S_}}
    resources: {{limits: {{cpu: 500m, memory: 64Mi}}}}
    volumeMounts:
    - {{name: data, mountPath: /data, readOnly: true}}
    - {{name: data, mountPath: /sub, subPath: inner}}
"#
        ));
        let mut lk = Lookups::default();
        lk.config_maps.insert("cfg".into(), [("color".to_string(), b"blue".to_vec())].into());
        lk.secrets.insert("creds".into(), [("user".to_string(), b"admin".to_vec())].into());
        lk.services.push(serde_yaml::from_str("metadata: {name: my-db}\nspec: {clusterIP: 10.96.0.20, ports: [{name: sql, port: 5432}]}").expect("svc"));
        let c = p.spec.clone().expect("spec").containers[0].clone();
        let vols: VolumePaths = [("data".to_string(), PathBuf::from("/pods/u-1/volumes/empty-dir/data"))].into();
        let cfg = container_config(&p, &c, &node(), Some("10.244.1.5"), &vols, &lk, 3).expect("config");
        let env: Vec<(String, String)> = cfg.envs.iter().map(|kv| (kv.key.clone(), kv.value.clone())).collect();
        let get = |k: &str| env.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone());
        assert_eq!(get("NAME").as_deref(), Some("web-0"));
        assert_eq!(get("IP").as_deref(), Some("10.244.1.5"));
        assert_eq!(get("APP").as_deref(), Some("web"));
        assert_eq!(get("GREETING").as_deref(), Some("hi-web-0"));
        assert_eq!(get("COLOR").as_deref(), Some("blue"));
        assert_eq!(get("S_user").as_deref(), Some("admin"));
        assert_eq!(get("MEM").as_deref(), Some("67108864"));
        assert_eq!(get("MY_DB_SERVICE_HOST").as_deref(), Some("10.96.0.20"));
        assert_eq!(get("MY_DB_SERVICE_PORT_SQL").as_deref(), Some("5432"));
        assert_eq!(get("MY_DB_PORT_5432_TCP").as_deref(), Some("tcp://10.96.0.20:5432"));
        // service links come first, then envFrom, then env
        assert!(env.iter().position(|(k, _)| k == "MY_DB_SERVICE_HOST") < env.iter().position(|(k, _)| k == "S_user"));
        assert_eq!(cfg.command, vec!["sh", "-c"]);
        assert_eq!(cfg.args, vec!["echo hi-web-0 $(MISSING)"]);
        assert_eq!(cfg.working_dir, "/w");
        assert_eq!(cfg.log_path, "app/3.log");
        assert_eq!(cfg.mounts.len(), 2);
        assert!(cfg.mounts[0].readonly);
        assert_eq!(cfg.mounts[1].host_path, "/pods/u-1/volumes/empty-dir/data/inner");
        let r = cfg.linux.and_then(|l| l.resources).expect("resources");
        assert_eq!((r.cpu_quota, r.cpu_period, r.cpu_shares, r.memory_limit_in_bytes), (50_000, 100_000, 512, 64 << 20));
    }

    #[test]
    fn missing_references_are_config_errors() {
        let p = pod(&format!("{BASE}spec:\n  containers:\n  - name: a\n    image: x\n    env: [{{name: P, valueFrom: {{secretKeyRef: {{name: nope, key: k}}}}}}]\n"));
        let c = p.spec.clone().expect("spec").containers[0].clone();
        let e = container_config(&p, &c, &node(), None, &VolumePaths::new(), &Lookups::default(), 0).expect_err("missing secret");
        assert!(e.0.contains("secret \"nope\" not found"), "{e:?}");
        let p2 = pod(&format!("{BASE}spec:\n  containers:\n  - name: a\n    image: x\n    env: [{{name: P, valueFrom: {{secretKeyRef: {{name: nope, key: k, optional: true}}}}}}]\n    volumeMounts: [{{name: v, mountPath: /v}}]\n"));
        let c2 = p2.spec.clone().expect("spec").containers[0].clone();
        let e2 = container_config(&p2, &c2, &node(), None, &VolumePaths::new(), &Lookups::default(), 0).expect_err("undefined volume");
        assert!(e2.0.contains("volume v"), "{e2:?}");
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_cpu_millis("250m"), Some(250));
        assert_eq!(parse_cpu_millis("2"), Some(2000));
        assert_eq!(parse_cpu_millis("0.5"), Some(500));
        assert_eq!(parse_bytes("128Mi"), Some(128 << 20));
        assert_eq!(parse_bytes("1G"), Some(1_000_000_000));
        assert_eq!(parse_bytes("512"), Some(512));
    }
}
