//! Defaulting as kube-apiserver does it for the fields users see (`kubectl get -o yaml`):
//! the `SetDefaults_*` functions of `k8s.io/kubernetes/pkg/apis/*/v1`, plus what the default
//! admission plugins add to pods (`ServiceAccount`, `DefaultTolerationSeconds`, `Priority`) and
//! the initial pod/namespace status.
//!
//! Not done here: cluster IP / node port allocation and the service account token volume; the
//! API server does those with state.

use serde_json::{json, Map, Value};

/// Applies defaults in place for an object of `group`/`kind` (group "" for core).
pub fn apply_defaults(group: &str, kind: &str, obj: &mut Value) {
    let Some(o) = obj.as_object_mut() else { return };
    match (group, kind) {
        ("", "Pod") => default_pod(o),
        ("", "Service") => default_service(o),
        ("", "Namespace") => default_namespace(o),
        ("", "Secret") => {
            set(o, "type", json!("Opaque"));
        }
        ("", "Endpoints") => {
            for subset in arr_mut(o, "subsets") {
                if let Some(sm) = subset.as_object_mut() {
                    for p in arr_mut(sm, "ports") {
                        if let Some(pm) = p.as_object_mut() {
                            set(pm, "protocol", json!("TCP"));
                        }
                    }
                }
            }
        }
        ("apps", "Deployment") => {
            let spec = obj_mut(o, "spec");
            set(spec, "replicas", json!(1));
            let strategy = obj_mut(spec, "strategy");
            set(strategy, "type", json!("RollingUpdate"));
            if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                let ru = obj_mut(strategy, "rollingUpdate");
                set(ru, "maxUnavailable", json!("25%"));
                set(ru, "maxSurge", json!("25%"));
            }
            set(spec, "revisionHistoryLimit", json!(10));
            set(spec, "progressDeadlineSeconds", json!(600));
            default_template(spec);
        }
        ("apps", "ReplicaSet") => {
            let spec = obj_mut(o, "spec");
            set(spec, "replicas", json!(1));
            default_template(spec);
        }
        ("apps", "DaemonSet") => {
            let spec = obj_mut(o, "spec");
            let strategy = obj_mut(spec, "updateStrategy");
            set(strategy, "type", json!("RollingUpdate"));
            if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                let ru = obj_mut(strategy, "rollingUpdate");
                set(ru, "maxUnavailable", json!(1));
                set(ru, "maxSurge", json!(0));
            }
            set(spec, "revisionHistoryLimit", json!(10));
            default_template(spec);
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            for p in arr_mut(o, "ports") {
                if let Some(pm) = p.as_object_mut() {
                    set(pm, "name", json!(""));
                    set(pm, "protocol", json!("TCP"));
                }
            }
        }
        ("networking.k8s.io", "NetworkPolicy") => {
            let spec = obj_mut(o, "spec");
            for dir in ["ingress", "egress"] {
                for rule in arr_mut(spec, dir) {
                    if let Some(rm) = rule.as_object_mut() {
                        for p in arr_mut(rm, "ports") {
                            if let Some(pm) = p.as_object_mut() {
                                set(pm, "protocol", json!("TCP"));
                            }
                        }
                    }
                }
            }
            if !spec.contains_key("policyTypes") {
                let mut types = vec![json!("Ingress")];
                if spec
                    .get("egress")
                    .and_then(Value::as_array)
                    .is_some_and(|e| !e.is_empty())
                {
                    types.push(json!("Egress"));
                }
                spec.insert("policyTypes".into(), Value::Array(types));
            }
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            for s in arr_mut(o, "subjects") {
                if let Some(sm) = s.as_object_mut() {
                    let kind = sm.get("kind").and_then(Value::as_str).unwrap_or("");
                    if matches!(kind, "User" | "Group") {
                        set(sm, "apiGroup", json!("rbac.authorization.k8s.io"));
                    }
                }
            }
        }
        _ => {}
    }
}

/// Sets `key` to `v` when absent or null.
fn set(m: &mut Map<String, Value>, key: &str, v: Value) {
    match m.get(key) {
        Some(x) if !x.is_null() => {}
        _ => {
            m.insert(key.to_string(), v);
        }
    }
}

/// The object at `key`, created (replacing a non-object) if needed.
fn obj_mut<'a>(m: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let slot = m
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    match slot {
        Value::Object(o) => o,
        _ => unreachable_object(),
    }
}

// Never reached: the slot was just made an object. Kept panic-free by leaking an empty map.
fn unreachable_object<'a>() -> &'a mut Map<String, Value> {
    Box::leak(Box::new(Map::new()))
}

fn arr_mut<'a>(m: &'a mut Map<String, Value>, key: &str) -> std::slice::IterMut<'a, Value> {
    match m.get_mut(key) {
        Some(Value::Array(a)) => a.iter_mut(),
        _ => [].iter_mut(),
    }
}

/// `Always` for `:latest` or untagged images, else `IfNotPresent` (digests count as tagged).
pub fn image_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, tag)) if tag != "latest" => "IfNotPresent",
        _ => "Always",
    }
}

fn default_probe(p: &mut Value) {
    let Some(m) = p.as_object_mut() else { return };
    set(m, "timeoutSeconds", json!(1));
    set(m, "periodSeconds", json!(10));
    set(m, "successThreshold", json!(1));
    set(m, "failureThreshold", json!(3));
    if let Some(Value::Object(h)) = m.get_mut("httpGet") {
        set(h, "path", json!("/"));
        set(h, "scheme", json!("HTTP"));
    }
}

fn default_container(c: &mut Value, host_network: bool, copy_limits: bool) {
    let Some(m) = c.as_object_mut() else { return };
    set(m, "terminationMessagePath", json!("/dev/termination-log"));
    set(m, "terminationMessagePolicy", json!("File"));
    let image = m
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    set(m, "imagePullPolicy", json!(image_pull_policy(&image)));
    set(m, "resources", json!({}));
    if copy_limits {
        if let Some(Value::Object(res)) = m.get_mut("resources") {
            if let Some(Value::Object(limits)) = res.get("limits").cloned() {
                let req = obj_mut(res, "requests");
                for (k, v) in limits {
                    req.entry(k).or_insert(v);
                }
            }
        }
    }
    for p in arr_mut(m, "ports") {
        if let Some(pm) = p.as_object_mut() {
            set(pm, "protocol", json!("TCP"));
            if host_network {
                if let Some(cp) = pm.get("containerPort").cloned() {
                    set(pm, "hostPort", cp);
                }
            }
        }
    }
    for e in arr_mut(m, "env") {
        if let Some(Value::Object(fr)) = e.pointer_mut("/valueFrom/fieldRef") {
            set(fr, "apiVersion", json!("v1"));
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = m.get_mut(probe) {
            default_probe(p);
        }
    }
}

fn default_volume(v: &mut Value) {
    let Some(m) = v.as_object_mut() else { return };
    for src in ["secret", "configMap", "downwardAPI", "projected"] {
        if let Some(Value::Object(s)) = m.get_mut(src) {
            set(s, "defaultMode", json!(420));
        }
    }
    if let Some(Value::Object(h)) = m.get_mut("hostPath") {
        set(h, "type", json!(""));
    }
    if let Some(Value::Object(h)) = m.get_mut("downwardAPI") {
        for item in arr_mut(h, "items") {
            if let Some(Value::Object(fr)) = item.pointer_mut("/fieldRef") {
                set(fr, "apiVersion", json!("v1"));
            }
        }
    }
}

/// `SetDefaults_PodSpec` plus container defaults; `pod` adds what only Pods get
/// (`SetDefaults_Pod` and admission).
fn default_pod_spec(spec: &mut Map<String, Value>, pod: bool) {
    set(spec, "dnsPolicy", json!("ClusterFirst"));
    set(spec, "restartPolicy", json!("Always"));
    set(spec, "terminationGracePeriodSeconds", json!(30));
    set(spec, "schedulerName", json!("default-scheduler"));
    set(spec, "securityContext", json!({}));
    let host_network = spec.get("hostNetwork").and_then(Value::as_bool) == Some(true);
    for list in ["initContainers", "containers"] {
        for c in arr_mut(spec, list) {
            default_container(c, host_network, pod);
        }
    }
    for v in arr_mut(spec, "volumes") {
        default_volume(v);
    }
    if pod {
        set(spec, "enableServiceLinks", json!(true));
        // ServiceAccount admission.
        set(spec, "serviceAccountName", json!("default"));
        let sa = spec
            .get("serviceAccountName")
            .cloned()
            .unwrap_or(json!("default"));
        set(spec, "serviceAccount", sa);
        // Priority admission.
        set(spec, "priority", json!(0));
        set(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
        // DefaultTolerationSeconds admission.
        let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
        if let Value::Array(ts) = tolerations {
            for key in [
                "node.kubernetes.io/not-ready",
                "node.kubernetes.io/unreachable",
            ] {
                let tolerated = ts.iter().any(|t| {
                    let k = t.get("key").and_then(Value::as_str);
                    let effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
                    let op = t.get("operator").and_then(Value::as_str).unwrap_or("Equal");
                    (k == Some(key) || (k.is_none_or(str::is_empty) && op == "Exists"))
                        && (effect.is_empty() || effect == "NoExecute")
                });
                if !tolerated {
                    ts.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
                }
            }
        }
    }
}

fn default_template(spec: &mut Map<String, Value>) {
    let template = obj_mut(spec, "template");
    let tspec = obj_mut(template, "spec");
    default_pod_spec(tspec, false);
}

/// The pod's QoS class from its containers' requests and limits.
pub fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .flat_map(|k| spec.get(*k).and_then(Value::as_array).into_iter().flatten())
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let req = c.pointer("/resources/requests").and_then(Value::as_object);
        let lim = c.pointer("/resources/limits").and_then(Value::as_object);
        let nonzero = |m: Option<&Map<String, Value>>, k: &str| {
            m.and_then(|m| m.get(k))
                .is_some_and(|v| v.as_str() != Some("0") && v.as_i64() != Some(0))
        };
        for r in ["cpu", "memory"] {
            if nonzero(req, r) || nonzero(lim, r) {
                any = true;
            }
            let l = lim.and_then(|m| m.get(r));
            let q = req.and_then(|m| m.get(r)).or(l);
            if l.is_none() || q != l {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

fn default_pod(o: &mut Map<String, Value>) {
    let spec = obj_mut(o, "spec");
    default_pod_spec(spec, true);
    let spec_v = Value::Object(spec.clone());
    let status = obj_mut(o, "status");
    set(status, "phase", json!("Pending"));
    set(status, "qosClass", json!(qos_class(&spec_v)));
}

fn default_service(o: &mut Map<String, Value>) {
    let spec = obj_mut(o, "spec");
    set(spec, "type", json!("ClusterIP"));
    set(spec, "sessionAffinity", json!("None"));
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    if spec.get("sessionAffinity").and_then(Value::as_str) == Some("ClientIP") {
        let cfg = obj_mut(spec, "sessionAffinityConfig");
        let cip = obj_mut(cfg, "clientIP");
        set(cip, "timeoutSeconds", json!(10800));
    }
    for p in arr_mut(spec, "ports") {
        if let Some(pm) = p.as_object_mut() {
            set(pm, "protocol", json!("TCP"));
            let unset = match pm.get("targetPort") {
                None | Some(Value::Null) => true,
                Some(Value::Number(n)) => n.as_i64() == Some(0),
                Some(Value::String(s)) => s.is_empty(),
                _ => false,
            };
            if unset {
                if let Some(port) = pm.get("port").cloned() {
                    pm.insert("targetPort".into(), port);
                }
            }
        }
    }
    if ty == "ExternalName" {
        return;
    }
    set(spec, "internalTrafficPolicy", json!("Cluster"));
    if matches!(ty.as_str(), "NodePort" | "LoadBalancer") {
        set(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if ty == "LoadBalancer" {
        set(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    if let Some(ip) = spec
        .get("clusterIP")
        .filter(|v| v.as_str().is_some_and(|s| !s.is_empty()))
        .cloned()
    {
        set(spec, "clusterIPs", json!([ip]));
    }
    let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
    let has_selector = spec
        .get("selector")
        .and_then(Value::as_object)
        .is_some_and(|m| !m.is_empty());
    if headless && !has_selector {
        set(spec, "ipFamilyPolicy", json!("RequireDualStack"));
    } else {
        set(spec, "ipFamilyPolicy", json!("SingleStack"));
    }
    set(spec, "ipFamilies", json!(["IPv4"]));
}

fn default_namespace(o: &mut Map<String, Value>) {
    let spec = obj_mut(o, "spec");
    set(spec, "finalizers", json!(["kubernetes"]));
    let status = obj_mut(o, "status");
    set(status, "phase", json!("Active"));
}

/// Carries server-allocated Service fields from `old` to `new` when an update omits them (as
/// kube-apiserver's service REST does before validation): `clusterIP`, `clusterIPs`,
/// `ipFamilies`, `ipFamilyPolicy`, `healthCheckNodePort` and each port's `nodePort` (matched
/// by port and protocol).
pub fn carry_over_service_allocations(old: &Value, new: &mut Value) {
    let Some(os) = old.get("spec") else { return };
    let Some(ns) = new.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let same_type = os.get("type") == ns.get("type") || ns.get("type").is_none();
    if ns.get("type").and_then(Value::as_str) == Some("ExternalName") {
        return;
    }
    for key in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
        if let Some(v) = os.get(key) {
            let empty = match ns.get(key) {
                None | Some(Value::Null) => true,
                Some(Value::String(s)) => s.is_empty(),
                Some(Value::Array(a)) => a.is_empty(),
                _ => false,
            };
            if empty {
                ns.insert(key.into(), v.clone());
            }
        }
    }
    if same_type {
        if let Some(v) = os.get("healthCheckNodePort") {
            set(ns, "healthCheckNodePort", v.clone());
        }
        let old_ports = os
            .get("ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for p in arr_mut(ns, "ports") {
            let Some(pm) = p.as_object_mut() else {
                continue;
            };
            let proto = pm
                .get("protocol")
                .and_then(Value::as_str)
                .unwrap_or("TCP")
                .to_string();
            let port = pm.get("port").cloned();
            if pm
                .get("nodePort")
                .is_some_and(|v| !v.is_null() && v.as_i64() != Some(0))
            {
                continue;
            }
            let found = old_ports.iter().find(|op| {
                op.get("port") == port.as_ref()
                    && op.get("protocol").and_then(Value::as_str).unwrap_or("TCP") == proto
            });
            if let Some(np) = found.and_then(|op| op.get("nodePort")) {
                pm.insert("nodePort".into(), np.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests;
