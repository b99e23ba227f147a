use super::*;
use crate::registry::find_kind;
use serde_json::json;

fn res(group: &str, kind: &str) -> &'static Resource {
    match find_kind(group, kind) {
        Some(r) => r,
        None => panic!("{kind} not served"),
    }
}

fn fields(errs: &[FieldError]) -> Vec<String> {
    errs.iter().map(|e| e.field.clone()).collect()
}

fn pod(spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "default"}, "spec": spec})
}

#[test]
fn valid_pod_passes() {
    let p = pod(
        json!({"containers": [{"name": "c", "image": "nginx", "ports": [{"containerPort": 80, "name": "http"}]}]}),
    );
    assert_eq!(validate_create(res("", "Pod"), &p), vec![]);
}

#[test]
fn upstream_name_message() {
    let mut p = pod(json!({"containers": [{"name": "c", "image": "i"}]}));
    p["metadata"]["name"] = json!("Web_1");
    let errs = validate_create(res("", "Pod"), &p);
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].field, "metadata.name");
    assert_eq!(errs[0].cause_type(), "FieldValueInvalid");
    assert_eq!(
        errs[0].message,
        "Invalid value: \"Web_1\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
    );
    assert_eq!(
        status_message("Pod", "Web_1", &errs[..1])
            .split(": ")
            .next(),
        Some("Pod \"Web_1\" is invalid")
    );
    let ns = json!({"metadata": {"name": "a.b"}});
    let errs = validate_create(res("", "Namespace"), &ns);
    assert_eq!(fields(&errs), ["metadata.name"]);
    assert!(
        errs[0].message.contains("'my-name',  or '123-abc'"),
        "{}",
        errs[0].message
    );
    let svc = json!({"metadata": {"name": "1web", "namespace": "default"}, "spec": {"ports": [{"port": 80}]}});
    let errs = validate_create(res("", "Service"), &svc);
    assert_eq!(fields(&errs), ["metadata.name"]);
    assert!(errs[0].message.contains("DNS-1035"));
}

#[test]
fn name_required_unless_generate_name() {
    let p = json!({"metadata": {"namespace": "default"}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
    let errs = validate_create(res("", "Pod"), &p);
    assert_eq!(
        errs,
        vec![FieldError::required(
            "metadata.name",
            "name or generateName is required"
        )]
    );
    let p = json!({"metadata": {"generateName": "web-", "namespace": "default"}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
    assert!(validate_create(res("", "Pod"), &p).is_empty());
}

#[test]
fn pod_spec_rules() {
    let p = pod(json!({
        "containers": [
            {"name": "c", "image": "", "ports": [{"containerPort": 70000, "protocol": "HTTP"}],
             "volumeMounts": [{"name": "missing", "mountPath": "/x"}]},
            {"name": "c", "image": "i"}
        ],
        "restartPolicy": "Sometimes"
    }));
    let errs = validate_create(res("", "Pod"), &p);
    assert_eq!(
        fields(&errs),
        [
            "spec.containers[0].image",
            "spec.containers[0].ports[0].containerPort",
            "spec.containers[0].ports[0].protocol",
            "spec.containers[0].volumeMounts[0].name",
            "spec.containers[1].name",
            "spec.restartPolicy",
        ]
    );
    let reasons: Vec<&str> = errs.iter().map(FieldError::cause_type).collect();
    assert_eq!(
        reasons,
        [
            "FieldValueRequired",
            "FieldValueInvalid",
            "FieldValueNotSupported",
            "FieldValueNotFound",
            "FieldValueDuplicate",
            "FieldValueNotSupported"
        ]
    );
    assert_eq!(
        errs[1].message,
        "Invalid value: 70000: must be between 1 and 65535, inclusive"
    );
    assert_eq!(
        errs[2].message,
        "Unsupported value: \"HTTP\": supported values: \"SCTP\", \"TCP\", \"UDP\""
    );
    let none = pod(json!({"containers": []}));
    assert_eq!(
        fields(&validate_create(res("", "Pod"), &none)),
        ["spec.containers"]
    );
}

#[test]
fn labels_and_annotations() {
    let mut p = pod(json!({"containers": [{"name": "c", "image": "i"}]}));
    p["metadata"]["labels"] = json!({"app": "ok", "bad key": "v", "k": "-bad"});
    p["metadata"]["annotations"] = json!({"example.com/a": "anything goes here", "a/b/c": "x"});
    let errs = validate_create(res("", "Pod"), &p);
    assert_eq!(
        fields(&errs),
        ["metadata.labels", "metadata.labels", "metadata.annotations"]
    );
}

#[test]
fn service_ports() {
    let svc = json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {"ports": [
        {"port": 80}, {"name": "a", "port": 0}, {"name": "a", "port": 443, "targetPort": 70000}]}});
    let errs = validate_create(res("", "Service"), &svc);
    assert_eq!(
        fields(&errs),
        [
            "spec.ports[0].name",
            "spec.ports[1].port",
            "spec.ports[2].name",
            "spec.ports[2].targetPort"
        ]
    );
    let one = json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {"ports": [{"port": 80}]}});
    assert!(validate_create(res("", "Service"), &one).is_empty());
    let headless =
        json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {"clusterIP": "None"}});
    assert!(validate_create(res("", "Service"), &headless).is_empty());
    let ext = json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {"type": "ExternalName"}});
    assert_eq!(
        fields(&validate_create(res("", "Service"), &ext)),
        ["spec.externalName"]
    );
    let np = json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {"ports": [{"port": 80, "nodePort": 30080}]}});
    assert_eq!(
        fields(&validate_create(res("", "Service"), &np)),
        ["spec.ports[0].nodePort"]
    );
}

fn deployment(sel: Value, labels: Value) -> Value {
    json!({"metadata": {"name": "web", "namespace": "default"},
           "spec": {"selector": sel, "template": {"metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "c", "image": "i"}]}}}})
}

#[test]
fn deployment_selector_must_match_template() {
    let r = res("apps", "Deployment");
    assert!(validate_create(
        r,
        &deployment(
            json!({"matchLabels": {"app": "web"}}),
            json!({"app": "web", "x": "y"})
        )
    )
    .is_empty());
    let errs = validate_create(
        r,
        &deployment(json!({"matchLabels": {"app": "web"}}), json!({"app": "db"})),
    );
    assert_eq!(fields(&errs), ["spec.template.metadata.labels"]);
    assert!(errs[0]
        .message
        .ends_with("`selector` does not match template `labels`"));
    let errs = validate_create(r, &deployment(json!({}), json!({"app": "db"})));
    assert_eq!(fields(&errs), ["spec.selector"]);
    assert!(errs[0]
        .message
        .ends_with("empty selector is invalid for deployment"));
}

#[test]
fn updates_enforce_immutability() {
    let r = res("apps", "Deployment");
    let old = deployment(
        json!({"matchLabels": {"app": "web"}}),
        json!({"app": "web", "v": "2"}),
    );
    let new = deployment(
        json!({"matchLabels": {"app": "web", "v": "2"}}),
        json!({"app": "web", "v": "2"}),
    );
    assert_eq!(fields(&validate_update(r, &old, &new)), ["spec.selector"]);

    let pr = res("", "Pod");
    let old = pod(
        json!({"containers": [{"name": "c", "image": "a:1"}], "tolerations": [{"key": "k", "operator": "Exists"}]}),
    );
    let mut new = old.clone();
    new["spec"]["containers"][0]["image"] = json!("a:2");
    new["spec"]["tolerations"] =
        json!([{"key": "k", "operator": "Exists"}, {"key": "j", "operator": "Exists"}]);
    new["metadata"]["labels"] = json!({"relabel": "ok"});
    assert_eq!(validate_update(pr, &old, &new), vec![]);
    let mut bad = old.clone();
    bad["spec"]["containers"][0]["args"] = json!(["x"]);
    let errs = validate_update(pr, &old, &bad);
    assert_eq!(fields(&errs), ["spec"]);
    assert_eq!(errs[0].cause_type(), "FieldValueForbidden");
    let mut renamed = old.clone();
    renamed["metadata"]["name"] = json!("other");
    assert_eq!(
        fields(&validate_update(pr, &old, &renamed)),
        ["metadata.name"]
    );

    let sr = res("", "Service");
    let old = json!({"metadata": {"name": "s", "namespace": "d"}, "spec": {"clusterIP": "10.43.0.10", "ports": [{"port": 53}]}});
    let mut new = old.clone();
    new["spec"]["clusterIP"] = json!("10.43.0.11");
    assert_eq!(
        fields(&validate_update(sr, &old, &new)),
        ["spec.clusterIPs[0]"]
    );

    let cr = res("", "ConfigMap");
    let old =
        json!({"metadata": {"name": "c", "namespace": "d"}, "immutable": true, "data": {"a": "1"}});
    let mut new = old.clone();
    new["data"]["a"] = json!("2");
    assert_eq!(fields(&validate_update(cr, &old, &new)), ["data"]);
}

#[test]
fn config_keys() {
    let cm = json!({"metadata": {"name": "c", "namespace": "d"}, "data": {"ok.key": "1", "bad/key": "2"}});
    assert_eq!(
        fields(&validate_create(res("", "ConfigMap"), &cm)),
        ["data[bad/key]"]
    );
}

#[test]
fn unknown_fields_for_strict_validation() {
    let p = pod(json!({"containers": [{"name": "c", "imagee": "i"}]}));
    assert_eq!(
        unknown_fields("io.k8s.api.core.v1.Pod", &p),
        [".spec.containers[0].imagee"]
    );
}

#[test]
fn qualified_names() {
    assert!(qualified_name_errors("app.kubernetes.io/name").is_empty());
    assert!(!qualified_name_errors("/name").is_empty());
    assert!(!qualified_name_errors(&"a".repeat(64)).is_empty());
    assert!(label_value_errors("").is_empty());
    assert!(port_name_errors("http").is_empty());
    assert!(!port_name_errors("8080").is_empty());
}
