//! Core group printers: pods, services, endpoints, nodes, namespaces, configmaps, secrets,
//! serviceaccounts, events.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::{col, wide, Column, Ctx, Printer, Row, AGE, NAME};
use crate::json::{
    arr_at, bool_at, get, int_at, map_at, map_len, opt_bool_at, opt_int_at, present, str_at,
    time_at,
};
use crate::selector::format_labels;

// ---------------------------------------------------------------------------------------- pods

pub(crate) const PODS: Printer = Printer {
    columns: pod_columns,
    row: pod_row,
};

fn pod_columns() -> Vec<Column> {
    vec![
        NAME,
        col("Ready", "string", "The aggregate readiness state of this pod for accepting traffic."),
        col("Status", "string", "The aggregate status of the containers in this pod."),
        col("Restarts", "string", "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
        AGE,
        wide("IP", "string", "podIP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated."),
        wide("Node", "string", "NodeName indicates in which node this pod is scheduled. If empty, this pod is a candidate for scheduling by the scheduler defined in schedulerName. Once this field is set, the kubelet for this node becomes responsible for the lifecycle of this pod. This field should not be used to express a desire for the pod to be scheduled on a specific node. https://kubernetes.io/docs/concepts/scheduling-eviction/assign-pod-node/#nodename"),
        wide("Nominated Node", "string", "nominatedNodeName is set only when this pod preempts other pods on the node, but it cannot be scheduled right away as preemption victims receive their graceful termination periods. This field does not guarantee that the pod will be scheduled on this node. Scheduler may decide to place the pod elsewhere if other nodes become available sooner. Scheduler may also decide to give the resources on this node to a higher priority pod that is created after preemption. As a result, this field may be different than PodSpec.nodeName when the pod is scheduled."),
        wide("Readiness Gates", "string", "If specified, all readiness gates will be evaluated for pod readiness. A pod is ready when all its containers are ready AND all conditions specified in the readiness gates have status equal to \"True\" More info: https://git.k8s.io/enhancements/keps/sig-network/580-pod-readiness-gates"),
    ]
}

/// Newest of `current` and the container's `lastState.terminated.finishedAt`.
fn later_restart(current: Option<DateTime<Utc>>, status: &Value) -> Option<DateTime<Utc>> {
    let finished = time_at(status, &["lastState", "terminated", "finishedAt"]);
    match (current, finished) {
        (Some(c), Some(f)) if f > c => Some(f),
        (None, f) => f,
        (c, _) => c,
    }
}

fn condition_true(conditions: &[Value], kind: &str) -> bool {
    conditions
        .iter()
        .any(|c| str_at(c, &["type"]) == kind && str_at(c, &["status"]) == "True")
}

/// `printPod`: READY "ready/total", STATUS (the reason logic of kubectl), RESTARTS "n (age ago)".
fn pod_row(pod: &Value, ctx: &Ctx<'_>) -> Row {
    let conditions = arr_at(pod, &["status", "conditions"]);
    let phase = str_at(pod, &["status", "phase"]);
    let mut restarts: i64 = 0;
    let mut restartable_init_restarts: i64 = 0;
    let mut total = arr_at(pod, &["spec", "containers"]).len();
    let mut ready = 0usize;
    let mut last_restart: Option<DateTime<Utc>> = None;
    let mut last_restartable_init_restart: Option<DateTime<Utc>> = None;

    let mut reason = phase.to_string();
    let status_reason = str_at(pod, &["status", "reason"]);
    if !status_reason.is_empty() {
        reason = status_reason.to_string();
    }
    if conditions.iter().any(|c| {
        str_at(c, &["type"]) == "PodScheduled" && str_at(c, &["reason"]) == "SchedulingGated"
    }) {
        reason = "SchedulingGated".to_string();
    }

    let mut row_conditions = Vec::new();
    match phase {
        "Succeeded" => row_conditions.push(json!({"type": "Completed", "status": "True", "reason": "Succeeded", "message": "The pod has completed successfully."})),
        "Failed" => row_conditions.push(json!({"type": "Completed", "status": "True", "reason": "Failed", "message": "The pod failed."})),
        _ => {}
    }

    let init_specs = arr_at(pod, &["spec", "initContainers"]);
    // IsRestartableInitContainer: restartPolicy Always (a sidecar).
    let restartable: HashMap<&str, bool> = init_specs
        .iter()
        .map(|c| {
            (
                str_at(c, &["name"]),
                str_at(c, &["restartPolicy"]) == "Always",
            )
        })
        .collect();
    total += restartable.values().filter(|r| **r).count();

    let mut initializing = false;
    for (i, c) in arr_at(pod, &["status", "initContainerStatuses"])
        .iter()
        .enumerate()
    {
        restarts += int_at(c, &["restartCount"]);
        last_restart = later_restart(last_restart, c);
        let is_restartable = restartable
            .get(str_at(c, &["name"]))
            .copied()
            .unwrap_or(false);
        if is_restartable {
            restartable_init_restarts += int_at(c, &["restartCount"]);
            last_restartable_init_restart = later_restart(last_restartable_init_restart, c);
        }
        let terminated = get(c, &["state", "terminated"]);
        let waiting_reason = str_at(c, &["state", "waiting", "reason"]);
        if terminated.is_some_and(|t| int_at(t, &["exitCode"]) == 0) {
            continue;
        } else if is_restartable && opt_bool_at(c, &["started"]) == Some(true) {
            if bool_at(c, &["ready"]) {
                ready += 1;
            }
            continue;
        } else if let Some(t) = terminated {
            let r = str_at(t, &["reason"]);
            reason = if !r.is_empty() {
                format!("Init:{r}")
            } else if int_at(t, &["signal"]) != 0 {
                format!("Init:Signal:{}", int_at(t, &["signal"]))
            } else {
                format!("Init:ExitCode:{}", int_at(t, &["exitCode"]))
            };
            initializing = true;
        } else if !waiting_reason.is_empty() && waiting_reason != "PodInitializing" {
            reason = format!("Init:{waiting_reason}");
            initializing = true;
        } else {
            reason = format!("Init:{}/{}", i, init_specs.len());
            initializing = true;
        }
        break;
    }

    // isPodInitializedConditionTrue: the first Initialized condition decides.
    let initialized = conditions
        .iter()
        .find(|c| str_at(c, &["type"]) == "Initialized")
        .is_some_and(|c| str_at(c, &["status"]) == "True");
    if !initializing || initialized {
        restarts = restartable_init_restarts;
        last_restart = last_restartable_init_restart;
        let mut has_running = false;
        for c in arr_at(pod, &["status", "containerStatuses"]).iter().rev() {
            restarts += int_at(c, &["restartCount"]);
            last_restart = later_restart(last_restart, c);
            let waiting_reason = str_at(c, &["state", "waiting", "reason"]);
            let terminated = get(c, &["state", "terminated"]);
            if !waiting_reason.is_empty() {
                reason = waiting_reason.to_string();
            } else if let Some(t) = terminated {
                let r = str_at(t, &["reason"]);
                reason = if !r.is_empty() {
                    r.to_string()
                } else if int_at(t, &["signal"]) != 0 {
                    format!("Signal:{}", int_at(t, &["signal"]))
                } else {
                    format!("ExitCode:{}", int_at(t, &["exitCode"]))
                };
            } else if bool_at(c, &["ready"]) && present(c, &["state", "running"]) {
                has_running = true;
                ready += 1;
            }
        }
        // Back to Running if a container still runs after another completed.
        if reason == "Completed" && has_running {
            reason = if condition_true(conditions, "Ready") {
                "Running".to_string()
            } else {
                "NotReady".to_string()
            };
        }
    }

    let deleting = present(pod, &["metadata", "deletionTimestamp"]);
    if deleting && status_reason == "NodeLost" {
        reason = "Unknown".to_string();
    } else if deleting && phase != "Succeeded" && phase != "Failed" {
        reason = "Terminating".to_string();
    }

    let restarts_str = match last_restart {
        Some(t) if restarts != 0 => format!("{restarts} ({} ago)", ctx.since(Some(t))),
        _ => restarts.to_string(),
    };

    // Wide cells. The internal PodStatus always has PodIPs (conversion fills it from podIP).
    let pod_ip = arr_at(pod, &["status", "podIPs"])
        .first()
        .map(|ip| str_at(ip, &["ip"]))
        .unwrap_or_else(|| str_at(pod, &["status", "podIP"]));
    let gates = arr_at(pod, &["spec", "readinessGates"]);
    let readiness_gates = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let true_count = gates
            .iter()
            .filter(|g| {
                let kind = str_at(g, &["conditionType"]);
                conditions
                    .iter()
                    .find(|c| str_at(c, &["type"]) == kind)
                    .is_some_and(|c| str_at(c, &["status"]) == "True")
            })
            .count();
        format!("{true_count}/{}", gates.len())
    };

    let mut row = Row::new(vec![
        Value::from(str_at(pod, &["metadata", "name"])),
        Value::from(format!("{ready}/{total}")),
        Value::from(reason),
        Value::from(restarts_str),
        ctx.age(pod),
        Value::from(or_none(pod_ip)),
        Value::from(or_none(str_at(pod, &["spec", "nodeName"]))),
        Value::from(or_none(str_at(pod, &["status", "nominatedNodeName"]))),
        Value::from(readiness_gates),
    ]);
    row.conditions = row_conditions;
    row
}

fn or_none(s: &str) -> String {
    if s.is_empty() {
        "<none>".to_string()
    } else {
        s.to_string()
    }
}

// ------------------------------------------------------------------------------------ services

pub(crate) const SERVICES: Printer = Printer {
    columns: service_columns,
    row: service_row,
};

fn service_columns() -> Vec<Column> {
    vec![
        NAME,
        col("Type", "string", "type determines how the Service is exposed. Defaults to ClusterIP. Valid options are ExternalName, ClusterIP, NodePort, and LoadBalancer."),
        col("Cluster-IP", "string", "clusterIP is the IP address of the service and is usually assigned randomly."),
        col("External-IP", "string", "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service."),
        col("Port(s)", "string", "The list of ports that are exposed by this service."),
        AGE,
        wide("Selector", "string", "Route service traffic to pods with label keys and values matching this selector."),
    ]
}

/// `loadBalancerStatusStringer` with wide=true (the server always generates wide rows): the
/// sorted, de-duplicated IPs (or hostnames) of `status.loadBalancer.ingress`.
pub(crate) fn load_balancer_ingress(obj: &Value) -> String {
    let set: BTreeSet<&str> = arr_at(obj, &["status", "loadBalancer", "ingress"])
        .iter()
        .filter_map(|i| {
            let ip = str_at(i, &["ip"]);
            let host = str_at(i, &["hostname"]);
            if !ip.is_empty() {
                Some(ip)
            } else if !host.is_empty() {
                Some(host)
            } else {
                None
            }
        })
        .collect();
    set.into_iter().collect::<Vec<_>>().join(",")
}

/// The service type, defaulted as the API server's defaulting would have (ClusterIP).
fn service_type(svc: &Value) -> &str {
    match str_at(svc, &["spec", "type"]) {
        "" => "ClusterIP",
        t => t,
    }
}

/// `getServiceExternalIP`.
fn service_external_ip(svc: &Value) -> String {
    let external: Vec<&str> = arr_at(svc, &["spec", "externalIPs"])
        .iter()
        .map(|v| v.as_str().unwrap_or(""))
        .collect();
    match service_type(svc) {
        "ClusterIP" | "NodePort" => {
            if external.is_empty() {
                "<none>".to_string()
            } else {
                external.join(",")
            }
        }
        "LoadBalancer" => {
            let lb = load_balancer_ingress(svc);
            if !external.is_empty() {
                let mut all: Vec<&str> = Vec::new();
                if !lb.is_empty() {
                    all.extend(lb.split(','));
                }
                all.extend(external);
                return all.join(",");
            }
            if lb.is_empty() {
                "<pending>".to_string()
            } else {
                lb
            }
        }
        "ExternalName" => str_at(svc, &["spec", "externalName"]).to_string(),
        _ => "<unknown>".to_string(),
    }
}

/// `makePortString`: "80/TCP", "80:30080/TCP", joined by ",".
fn service_ports(svc: &Value) -> String {
    arr_at(svc, &["spec", "ports"])
        .iter()
        .map(|p| {
            let port = int_at(p, &["port"]);
            let proto = match str_at(p, &["protocol"]) {
                "" => "TCP",
                proto => proto,
            };
            let node_port = int_at(p, &["nodePort"]);
            if node_port > 0 {
                format!("{port}:{node_port}/{proto}")
            } else {
                format!("{port}/{proto}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn service_row(svc: &Value, ctx: &Ctx<'_>) -> Row {
    let cluster_ip = arr_at(svc, &["spec", "clusterIPs"])
        .first()
        .and_then(Value::as_str)
        .unwrap_or_else(|| str_at(svc, &["spec", "clusterIP"]));
    let ports = service_ports(svc);
    Row::new(vec![
        Value::from(str_at(svc, &["metadata", "name"])),
        Value::from(service_type(svc)),
        Value::from(or_none(cluster_ip)),
        Value::from(service_external_ip(svc)),
        Value::from(if ports.is_empty() {
            "<none>".to_string()
        } else {
            ports
        }),
        ctx.age(svc),
        Value::from(format_labels(map_at(svc, &["spec", "selector"]))),
    ])
}

// ----------------------------------------------------------------------------------- endpoints

pub(crate) const ENDPOINTS: Printer = Printer {
    columns: || {
        vec![
            NAME,
            col("Endpoints", "string", "The set of all endpoints is the union of all subsets. Addresses are placed into subsets according to the IPs they share. A single address with multiple ports, some of which are ready and some of which are not (because they come from different containers) will result in the address being displayed in different subsets for the different ports. No address will appear in both Addresses and NotReadyAddresses in the same subset. Sets of addresses and ports that comprise a service."),
            AGE,
        ]
    },
    row: |ep, ctx| {
        Row::new(vec![
            Value::from(str_at(ep, &["metadata", "name"])),
            Value::from(format_endpoints(ep)),
            ctx.age(ep),
        ])
    },
};

/// `net.JoinHostPort`: brackets around IPv6 literals.
fn join_host_port(host: &str, port: i64) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `formatEndpoints(endpoints, nil)`: the first 3 ready `ip:port` pairs, then " + N more...".
fn format_endpoints(ep: &Value) -> String {
    let subsets = arr_at(ep, &["subsets"]);
    if subsets.is_empty() {
        return "<none>".to_string();
    }
    const MAX: usize = 3;
    let mut list: Vec<String> = Vec::new();
    let mut more = false;
    let mut count = 0usize;
    for ss in subsets {
        let addresses = arr_at(ss, &["addresses"]);
        let ports = arr_at(ss, &["ports"]);
        if ports.is_empty() {
            // Headless services without ports.
            count += addresses.len();
            for a in addresses {
                if list.len() == MAX {
                    more = true;
                    break;
                }
                list.push(str_at(a, &["ip"]).to_string());
            }
            continue;
        }
        for p in ports {
            count += addresses.len();
            for a in addresses {
                if list.len() == MAX {
                    more = true;
                    break;
                }
                list.push(join_host_port(str_at(a, &["ip"]), int_at(p, &["port"])));
            }
        }
    }
    let ret = list.join(",");
    if more {
        return format!("{ret} + {} more...", count - MAX);
    }
    ret
}

// --------------------------------------------------------------------------------------- nodes

pub(crate) const NODES: Printer = Printer {
    columns: node_columns,
    row: node_row,
};

fn node_columns() -> Vec<Column> {
    const ADDRESSES: &str = "List of addresses reachable to the node. Queried from cloud provider, if available. More info: https://kubernetes.io/docs/reference/node/node-status/#addresses Note: This field is declared as mergeable, but the merge key is not sufficiently unique, which can cause data corruption when it is merged. Callers should instead use a full-replacement patch. See https://pr.k8s.io/79391 for an example. Consumers should assume that addresses can change during the lifetime of a Node. However, there are some exceptions where this may not be possible, such as Pods that inherit a Node's address in its own status or consumers of the downward API (status.hostIP).";
    vec![
        NAME,
        col("Status", "string", "The status of the node"),
        col("Roles", "string", "The roles of the node"),
        AGE,
        col("Version", "string", "Kubelet Version reported by the node."),
        wide("Internal-IP", "string", ADDRESSES),
        wide("External-IP", "string", ADDRESSES),
        wide("OS-Image", "string", "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy))."),
        wide("Kernel-Version", "string", "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64)."),
        wide("Container-Runtime", "string", "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2)."),
    ]
}

/// `findNodeRoles`: `node-role.kubernetes.io/<role>` keys and `kubernetes.io/role=<role>`, sorted.
fn node_roles(node: &Value) -> String {
    let mut roles = BTreeSet::new();
    for (k, v) in map_at(node, &["metadata", "labels"]).into_iter().flatten() {
        if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
            if !role.is_empty() {
                roles.insert(role.to_string());
            }
        } else if k == "kubernetes.io/role" {
            if let Some(v) = v.as_str().filter(|v| !v.is_empty()) {
                roles.insert(v.to_string());
            }
        }
    }
    if roles.is_empty() {
        return "<none>".to_string();
    }
    roles.into_iter().collect::<Vec<_>>().join(",")
}

fn node_address(node: &Value, kind: &str) -> String {
    arr_at(node, &["status", "addresses"])
        .iter()
        .find(|a| str_at(a, &["type"]) == kind)
        .map_or_else(
            || "<none>".to_string(),
            |a| str_at(a, &["address"]).to_string(),
        )
}

fn or_unknown(s: &str) -> String {
    if s.is_empty() {
        "<unknown>".to_string()
    } else {
        s.to_string()
    }
}

fn node_row(node: &Value, ctx: &Ctx<'_>) -> Row {
    // conditionMap: the last condition of each type wins; only Ready is reported.
    let ready = arr_at(node, &["status", "conditions"])
        .iter()
        .rfind(|c| str_at(c, &["type"]) == "Ready");
    let mut status = vec![match ready {
        Some(c) if str_at(c, &["status"]) == "True" => "Ready",
        Some(_) => "NotReady",
        None => "Unknown",
    }];
    if bool_at(node, &["spec", "unschedulable"]) {
        status.push("SchedulingDisabled");
    }
    let info = |k: &str| str_at(node, &["status", "nodeInfo", k]);
    Row::new(vec![
        Value::from(str_at(node, &["metadata", "name"])),
        Value::from(status.join(",")),
        Value::from(node_roles(node)),
        ctx.age(node),
        Value::from(info("kubeletVersion")),
        Value::from(node_address(node, "InternalIP")),
        Value::from(node_address(node, "ExternalIP")),
        Value::from(or_unknown(info("osImage"))),
        Value::from(or_unknown(info("kernelVersion"))),
        Value::from(or_unknown(info("containerRuntimeVersion"))),
    ])
}

// ---------------------------------------------------------- namespaces, configmaps, secrets, SAs

pub(crate) const NAMESPACES: Printer = Printer {
    columns: || {
        vec![
            NAME,
            col("Status", "string", "The status of the namespace"),
            AGE,
        ]
    },
    row: |ns, ctx| {
        // The namespace strategy sets phase Active on create; show that if the store lacks it.
        let phase = match str_at(ns, &["status", "phase"]) {
            "" => "Active",
            p => p,
        };
        Row::new(vec![
            Value::from(str_at(ns, &["metadata", "name"])),
            Value::from(phase),
            ctx.age(ns),
        ])
    },
};

pub(crate) const CONFIGMAPS: Printer = Printer {
    columns: || {
        vec![
            NAME,
            col("Data", "string", "Data contains the configuration data. Each key must consist of alphanumeric characters, '-', '_' or '.'. Values with non-UTF-8 byte sequences must use the BinaryData field. The keys stored in Data must not overlap with the keys in the BinaryData field, this is enforced during validation process."),
            AGE,
        ]
    },
    row: |cm, ctx| {
        let data = map_len(cm, &["data"]) + map_len(cm, &["binaryData"]);
        Row::new(vec![
            Value::from(str_at(cm, &["metadata", "name"])),
            Value::from(data as i64),
            ctx.age(cm),
        ])
    },
};

pub(crate) const SECRETS: Printer = Printer {
    columns: || {
        vec![
            NAME,
            col("Type", "string", "Used to facilitate programmatic handling of secret data. More info: https://kubernetes.io/docs/concepts/configuration/secret/#secret-types"),
            col("Data", "string", "Data contains the secret data. Each key must consist of alphanumeric characters, '-', '_' or '.'. The serialized form of the secret data is a base64 encoded string, representing the arbitrary (possibly non-string) data value here. Described in https://tools.ietf.org/html/rfc4648#section-4"),
            AGE,
        ]
    },
    row: |secret, ctx| {
        // Defaulting sets type Opaque; stringData is merged into data on write.
        let kind = match str_at(secret, &["type"]) {
            "" => "Opaque",
            t => t,
        };
        Row::new(vec![
            Value::from(str_at(secret, &["metadata", "name"])),
            Value::from(kind),
            Value::from(map_len(secret, &["data"]) as i64),
            ctx.age(secret),
        ])
    },
};

pub(crate) const SERVICEACCOUNTS: Printer = Printer {
    columns: || {
        vec![
            NAME,
            col("Secrets", "string", "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use. Pods are only limited to this list if this service account has a \"kubernetes.io/enforce-mountable-secrets\" annotation set to \"true\". The \"kubernetes.io/enforce-mountable-secrets\" annotation is deprecated since v1.32. Prefer separate namespaces to isolate access to mounted secrets. This field should not be used to find auto-generated service account token secrets for use outside of pods. Instead, tokens can be requested directly using the TokenRequest API, or service account token secrets can be manually created. More info: https://kubernetes.io/docs/concepts/configuration/secret"),
            AGE,
        ]
    },
    row: |sa, ctx| {
        Row::new(vec![
            Value::from(str_at(sa, &["metadata", "name"])),
            Value::from(arr_at(sa, &["secrets"]).len() as i64),
            ctx.age(sa),
        ])
    },
};

// -------------------------------------------------------------------------------------- events

pub(crate) const EVENTS: Printer = Printer {
    columns: event_columns,
    row: event_row,
};

fn event_columns() -> Vec<Column> {
    vec![
        col("Last Seen", "string", "The time at which the most recent occurrence of this event was recorded."),
        col("Type", "string", "Type of this event (Normal, Warning), new types could be added in the future"),
        col("Reason", "string", "This should be a short, machine understandable string that gives the reason for the transition into the object's current status."),
        col("Object", "string", "The object that this event is about."),
        wide("Subobject", "string", "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement, such as desiredState.manifest.containers[2]. For example, if the object reference is to a container within a pod, this would take on a value like: \"spec.containers{name}\" (where \"name\" refers to the name of the container that triggered the event) or if no container name is specified \"spec.containers[2]\" (container with index 2 in this pod). This syntax is chosen only to have some well-defined way of referencing a part of an object."),
        wide("Source", "string", "The component reporting this event. Should be a short machine understandable string."),
        col("Message", "string", "A human-readable description of the status of this operation."),
        wide("First Seen", "string", "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)"),
        wide("Count", "string", "The number of times this event has occurred."),
        Column {
            priority: 1,
            ..NAME
        },
    ]
}

/// Field names of core/v1 Event and, in brackets, events.k8s.io/v1 Event (which kube-apiserver
/// converts to the same internal type before printing).
struct EventFields {
    involved: &'static str,
    message: &'static str,
    source: &'static str,
    first: &'static str,
    last: &'static str,
    count: &'static str,
}

const CORE_EVENT: EventFields = EventFields {
    involved: "involvedObject",
    message: "message",
    source: "source",
    first: "firstTimestamp",
    last: "lastTimestamp",
    count: "count",
};

const EVENTS_K8S_IO_EVENT: EventFields = EventFields {
    involved: "regarding",
    message: "note",
    source: "deprecatedSource",
    first: "deprecatedFirstTimestamp",
    last: "deprecatedLastTimestamp",
    count: "deprecatedCount",
};

fn event_row(ev: &Value, ctx: &Ctx<'_>) -> Row {
    let f = if ctx.group == "events.k8s.io" {
        &EVENTS_K8S_IO_EVENT
    } else {
        &CORE_EVENT
    };
    let first_time = time_at(ev, &[f.first]);
    let first = match first_time {
        Some(t) => ctx.since(Some(t)),
        None => ctx.since(time_at(ev, &["eventTime"])),
    };
    let mut last = match time_at(ev, &[f.last]) {
        Some(t) => ctx.since(Some(t)),
        None => first.clone(),
    };
    let mut count = opt_int_at(ev, &[f.count]).unwrap_or(0);
    if present(ev, &["series"]) {
        last = ctx.since(time_at(ev, &["series", "lastObservedTime"]));
        count = int_at(ev, &["series", "count"]);
    } else if count == 0 {
        // Singleton events don't have a count set in the new API.
        count = 1;
    }
    let kind = str_at(ev, &[f.involved, "kind"]).to_lowercase();
    let name = str_at(ev, &[f.involved, "name"]);
    let target = if name.is_empty() {
        kind
    } else {
        format!("{kind}/{name}")
    };
    // formatEventSource: component (or reportingController), ", host" (or reportingInstance).
    let first_non_empty = |a: &'static str, b: &'static str| -> String {
        let a = str_at(ev, &[f.source, a]);
        if a.is_empty() {
            str_at(ev, &[b]).to_string()
        } else {
            a.to_string()
        }
    };
    let component = first_non_empty("component", "reportingController");
    let instance = first_non_empty("host", "reportingInstance");
    let source = if instance.is_empty() {
        component
    } else {
        format!("{component}, {instance}")
    };
    Row::new(vec![
        Value::from(last),
        Value::from(str_at(ev, &["type"])),
        Value::from(str_at(ev, &["reason"])),
        Value::from(target),
        Value::from(str_at(ev, &[f.involved, "fieldPath"])),
        Value::from(source),
        Value::from(str_at(ev, &[f.message]).trim()),
        Value::from(first),
        Value::from(count),
        Value::from(str_at(ev, &["metadata", "name"])),
    ])
}
