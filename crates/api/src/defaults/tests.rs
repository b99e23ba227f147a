use super::*;

fn defaulted(group: &str, kind: &str, mut v: Value) -> Value {
    apply_defaults(group, kind, &mut v);
    v
}

#[test]
fn image_pull_policy_follows_tag() {
    assert_eq!(image_pull_policy("nginx"), "Always");
    assert_eq!(image_pull_policy("nginx:latest"), "Always");
    assert_eq!(image_pull_policy("nginx:1.25"), "IfNotPresent");
    assert_eq!(image_pull_policy("localhost:5000/nginx"), "Always");
    assert_eq!(image_pull_policy("localhost:5000/nginx:1"), "IfNotPresent");
    assert_eq!(image_pull_policy("nginx@sha256:00"), "IfNotPresent");
}

#[test]
fn user_values_are_kept() {
    let p = defaulted(
        "",
        "Pod",
        json!({"spec": {"restartPolicy": "Never", "serviceAccountName": "builder",
                        "tolerations": [{"operator": "Exists"}],
                        "containers": [{"name": "c", "image": "i", "imagePullPolicy": "Never"}]}}),
    );
    assert_eq!(p["spec"]["restartPolicy"], "Never");
    assert_eq!(p["spec"]["serviceAccountName"], "builder");
    assert_eq!(p["spec"]["serviceAccount"], "builder");
    assert_eq!(p["spec"]["containers"][0]["imagePullPolicy"], "Never");
    // A wildcard toleration already covers not-ready/unreachable.
    assert_eq!(p["spec"]["tolerations"], json!([{"operator": "Exists"}]));
    let d = defaulted(
        "apps",
        "Deployment",
        json!({"spec": {"replicas": 0, "strategy": {"type": "Recreate"}}}),
    );
    assert_eq!(d["spec"]["replicas"], 0);
    assert_eq!(d["spec"]["strategy"], json!({"type": "Recreate"}));
}

#[test]
fn small_kinds() {
    assert_eq!(defaulted("", "Secret", json!({}))["type"], "Opaque");
    assert_eq!(
        defaulted("", "Secret", json!({"type": "kubernetes.io/tls"}))["type"],
        "kubernetes.io/tls"
    );
    assert_eq!(
        defaulted("apps", "ReplicaSet", json!({"spec": {}}))["spec"]["replicas"],
        1
    );
    let np = defaulted(
        "networking.k8s.io",
        "NetworkPolicy",
        json!({"spec": {"egress": [{"ports": [{"port": 53}]}]}}),
    );
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(np["spec"]["egress"][0]["ports"][0]["protocol"], "TCP");
    let rb = defaulted(
        "rbac.authorization.k8s.io",
        "RoleBinding",
        json!({"subjects": [{"kind": "User", "name": "a"}, {"kind": "ServiceAccount", "name": "b"}]}),
    );
    assert_eq!(rb["subjects"][0]["apiGroup"], "rbac.authorization.k8s.io");
    assert!(rb["subjects"][1].get("apiGroup").is_none());
    // Unknown kinds and non-objects are left alone.
    assert_eq!(
        defaulted("", "ConfigMap", json!({"data": {}})),
        json!({"data": {}})
    );
    assert_eq!(defaulted("", "Pod", json!("x")), json!("x"));
}

#[test]
fn services() {
    let ext = defaulted(
        "",
        "Service",
        json!({"spec": {"type": "ExternalName", "externalName": "a.b"}}),
    );
    assert!(ext["spec"].get("ipFamilies").is_none());
    assert!(ext["spec"].get("internalTrafficPolicy").is_none());
    let headless = defaulted("", "Service", json!({"spec": {"clusterIP": "None"}}));
    assert_eq!(headless["spec"]["ipFamilyPolicy"], "RequireDualStack");
    assert_eq!(headless["spec"]["clusterIPs"], json!(["None"]));
    let lb = defaulted(
        "",
        "Service",
        json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}),
    );
    assert_eq!(lb["spec"]["allocateLoadBalancerNodePorts"], true);
    assert_eq!(lb["spec"]["externalTrafficPolicy"], "Cluster");
}

#[test]
fn qos() {
    assert_eq!(
        qos_class(&json!({"containers": [{"name": "a"}]})),
        "BestEffort"
    );
    let g = json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]});
    assert_eq!(qos_class(&g), "Guaranteed");
    let b = json!({"containers": [{"resources": {"requests": {"cpu": "1"}}}]});
    assert_eq!(qos_class(&b), "Burstable");
}

#[test]
fn service_allocations_carry_over() {
    let old = json!({"spec": {"type": "NodePort", "clusterIP": "10.43.0.7", "clusterIPs": ["10.43.0.7"],
                              "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}});
    let mut new = json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP"}, {"port": 81}]}});
    carry_over_service_allocations(&old, &mut new);
    assert_eq!(new["spec"]["clusterIP"], "10.43.0.7");
    assert_eq!(new["spec"]["ports"][0]["nodePort"], 30080);
    assert!(new["spec"]["ports"][1].get("nodePort").is_none());
}
