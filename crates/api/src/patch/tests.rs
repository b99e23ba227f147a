use super::*;
use proptest::prelude::*;
use serde_json::json;

const POD: &str = "io.k8s.api.core.v1.Pod";
const DEPLOY: &str = "io.k8s.api.apps.v1.Deployment";

fn smp(doc: Value, patch: Value, def: &str) -> Value {
    match strategic_merge_patch(&doc, &patch, def) {
        Ok(v) => v,
        Err(e) => panic!("patch failed: {}", e.detail()),
    }
}

fn pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "labels": {"app": "web", "tier": "fe"}, "finalizers": ["a", "b"]},
        "spec": {
            "containers": [
                {"name": "web", "image": "nginx:1", "args": ["-a"],
                 "ports": [{"containerPort": 80, "protocol": "TCP"}, {"containerPort": 443, "protocol": "TCP"}],
                 "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                {"name": "side", "image": "busybox"}
            ],
            "volumes": [{"name": "data", "emptyDir": {}}]
        }
    })
}

#[test]
fn merges_containers_by_name_keeping_others() {
    let out = smp(
        pod(),
        json!({"spec": {"containers": [{"name": "side", "image": "busybox:2"}]}}),
        POD,
    );
    let cs = &out["spec"]["containers"];
    assert_eq!(cs.as_array().map(Vec::len), Some(2));
    assert_eq!(cs[0]["name"], "web");
    assert_eq!(cs[0]["image"], "nginx:1");
    assert_eq!(cs[1], json!({"name": "side", "image": "busybox:2"}));
}

#[test]
fn appends_new_merge_key_items_and_merges_nested_lists() {
    let out = smp(
        pod(),
        json!({"spec": {"containers": [{"name": "web", "ports": [{"containerPort": 8080}],
                                         "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}]}]}}),
        POD,
    );
    let web = &out["spec"]["containers"][0];
    // As upstream without $setElementOrder: items new to the server come first (the kubectl
    // docs' patch-demo shows the added container before the existing one).
    assert_eq!(
        web["ports"],
        json!([{"containerPort": 8080}, {"containerPort": 80, "protocol": "TCP"}, {"containerPort": 443, "protocol": "TCP"}])
    );
    assert_eq!(
        web["env"],
        json!([{"name": "A", "value": "1"}, {"name": "B", "value": "3"}, {"name": "C", "value": "4"}])
    );
    // args has no strategy: replaced, and absent here so kept.
    assert_eq!(web["args"], json!(["-a"]));
}

#[test]
fn lists_without_strategy_are_replaced() {
    let out = smp(
        pod(),
        json!({"spec": {"containers": [{"name": "web", "args": ["-b", "-c"]}]}}),
        POD,
    );
    assert_eq!(out["spec"]["containers"][0]["args"], json!(["-b", "-c"]));
}

#[test]
fn null_deletes_and_unmatched_null_is_ignored() {
    let out = smp(
        pod(),
        json!({"metadata": {"labels": {"tier": null, "nope": null}}}),
        POD,
    );
    assert_eq!(out["metadata"]["labels"], json!({"app": "web"}));
}

#[test]
fn patch_delete_directive_in_list() {
    let out = smp(
        pod(),
        json!({"spec": {"containers": [{"name": "side", "$patch": "delete"}]}}),
        POD,
    );
    assert_eq!(out["spec"]["containers"].as_array().map(Vec::len), Some(1));
    assert_eq!(out["spec"]["containers"][0]["name"], "web");
}

#[test]
fn patch_replace_directive_in_list_and_map() {
    let out = smp(
        pod(),
        json!({"spec": {"containers": [{"name": "only", "image": "x"}, {"$patch": "replace"}]}}),
        POD,
    );
    assert_eq!(
        out["spec"]["containers"],
        json!([{"name": "only", "image": "x"}])
    );
    let out = smp(
        pod(),
        json!({"metadata": {"labels": {"$patch": "replace", "new": "1"}}}),
        POD,
    );
    assert_eq!(out["metadata"]["labels"], json!({"new": "1"}));
    let out = smp(
        pod(),
        json!({"metadata": {"labels": {"$patch": "delete"}}}),
        POD,
    );
    assert_eq!(out["metadata"]["labels"], json!({}));
}

#[test]
fn primitive_merge_list_union_and_delete_from_primitive_list() {
    let out = smp(pod(), json!({"metadata": {"finalizers": ["c", "a"]}}), POD);
    // Patch order wins for items in the patch; server-only items keep their place.
    assert_eq!(out["metadata"]["finalizers"], json!(["c", "a", "b"]));
    let out = smp(
        pod(),
        json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        POD,
    );
    assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
    let out = smp(
        pod(),
        json!({"metadata": {"$deleteFromPrimitiveList/nothere": ["a"]}}),
        POD,
    );
    assert!(out["metadata"].get("nothere").is_none());
}

#[test]
fn set_element_order_reorders() {
    let out = smp(
        pod(),
        json!({"spec": {"$setElementOrder/containers": [{"name": "side"}, {"name": "web"}],
                        "containers": [{"name": "web", "image": "nginx:2"}]}}),
        POD,
    );
    let names: Vec<&str> = out["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["side", "web"]);
    assert_eq!(out["spec"]["containers"][1]["image"], "nginx:2");
    let out = smp(
        pod(),
        json!({"metadata": {"$setElementOrder/finalizers": ["b", "a"]}}),
        POD,
    );
    assert_eq!(out["metadata"]["finalizers"], json!(["b", "a"]));
}

#[test]
fn kubectl_apply_style_patch() {
    // What `kubectl apply` sends after changing an image and adding an annotation.
    let patch = json!({
        "metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
        "spec": {"$setElementOrder/containers": [{"name": "web"}, {"name": "side"}],
                 "containers": [{"image": "nginx:1.25", "name": "web"}]}
    });
    let out = smp(pod(), patch, POD);
    assert_eq!(out["spec"]["containers"][0]["image"], "nginx:1.25");
    assert_eq!(
        out["spec"]["containers"][0]["ports"][0]["containerPort"],
        80
    );
    assert_eq!(out["spec"]["containers"][1]["name"], "side");
    assert_eq!(
        out["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"],
        "{}"
    );
}

#[test]
fn retain_keys_clears_other_strategy_fields() {
    let d = json!({"spec": {"replicas": 1, "strategy": {"type": "RollingUpdate",
                   "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}}});
    let out = smp(
        d.clone(),
        json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
        DEPLOY,
    );
    assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
    // Without the directive the merge keeps rollingUpdate.
    let out = smp(
        d.clone(),
        json!({"spec": {"strategy": {"type": "Recreate"}}}),
        DEPLOY,
    );
    assert!(out["spec"]["strategy"].get("rollingUpdate").is_some());
    // A field in the patch that is not retained is an error.
    let e = strategic_merge_patch(
        &d,
        &json!({"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": {}}}}),
        DEPLOY,
    );
    assert!(e.is_err());
}

#[test]
fn volumes_merge_with_retain_keys_per_element() {
    let out = smp(
        pod(),
        json!({"spec": {"volumes": [{"name": "data", "$retainKeys": ["name", "configMap"], "configMap": {"name": "cm"}}]}}),
        POD,
    );
    assert_eq!(
        out["spec"]["volumes"],
        json!([{"name": "data", "configMap": {"name": "cm"}}])
    );
}

#[test]
fn new_lists_and_maps_are_cleaned_of_directives() {
    let out = smp(
        json!({"metadata": {"name": "p"}}),
        json!({"spec": {"containers": [{"name": "a", "image": "i", "x": null}, {"name": "gone", "$patch": "delete"}]}}),
        POD,
    );
    assert_eq!(
        out["spec"]["containers"],
        json!([{"name": "a", "image": "i"}])
    );
}

#[test]
fn unknown_definition_merges_maps_replaces_lists() {
    let out = smp(
        json!({"a": {"b": 1, "l": [1, 2]}}),
        json!({"a": {"c": 2, "l": [3]}}),
        "no.such.Def",
    );
    assert_eq!(out, json!({"a": {"b": 1, "c": 2, "l": [3]}}));
}

#[test]
fn malformed_patches_are_errors() {
    let cases = [
        json!({"spec": {"containers": [{"image": "no-name"}]}}),
        json!({"spec": {"containers": [{"name": "web", "$patch": "bogus"}]}}),
        json!({"spec": {"containers": [{"name": "web", "$patch": "merge"}]}}),
        json!({"metadata": {"labels": {"$patch": "bogus"}}}),
        json!({"spec": {"strategy": {"$retainKeys": "type"}}}),
        json!({"spec": {"$setElementOrder/containers": "x"}}),
        json!({"metadata": {"finalizers": [1, "a"]}}),
        json!({"metadata": {"finalizers": [["a"]]}}),
    ];
    for p in cases {
        assert!(
            strategic_merge_patch(&pod(), &p, POD).is_err(),
            "expected error for {p}"
        );
    }
    assert!(strategic_merge_patch(&pod(), &json!([1]), POD).is_err());
    let e = strategic_merge_patch(
        &pod(),
        &json!({"spec": {"containers": [{"image": "x"}]}}),
        POD,
    );
    match e {
        Err(PatchError::Strategic { path, message }) => {
            assert_eq!(path, ".spec.containers");
            assert!(
                message.contains("does not contain declared merge key: name"),
                "{message}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn json_patch_and_merge_patch() {
    let doc = json!({"a": {"b": 1}, "l": [1, 2]});
    let out = json_patch(
        &doc,
        &json!([{"op": "add", "path": "/l/-", "value": 3}, {"op": "replace", "path": "/a/b", "value": 2}]),
    );
    assert_eq!(out.ok(), Some(json!({"a": {"b": 2}, "l": [1, 2, 3]})));
    assert!(json_patch(&doc, &json!([{"op": "remove", "path": "/nope"}])).is_err());
    assert!(json_patch(&doc, &json!({"op": "add"})).is_err());
    let e = json_patch(&doc, &json!([{"op": "test", "path": "/a/b", "value": 5}])).err();
    let detail = e.map(|e| e.detail()).unwrap_or_default();
    assert!(
        detail.starts_with("JSON patch could not be applied: "),
        "{detail}"
    );
    let out = merge_patch(&doc, &json!({"a": {"b": null, "c": 1}, "l": [9]}));
    assert_eq!(out.ok(), Some(json!({"a": {"c": 1}, "l": [9]})));
}

fn arb_json() -> impl Strategy<Value = Value> {
    let keys = prop::sample::select(vec![
        "spec",
        "metadata",
        "containers",
        "name",
        "image",
        "ports",
        "containerPort",
        "finalizers",
        "labels",
        "$patch",
        "$retainKeys",
        "$setElementOrder/containers",
        "$deleteFromPrimitiveList/finalizers",
        "$setElementOrder/finalizers",
        "env",
        "volumes",
        "strategy",
        "replace",
        "delete",
        "merge",
        "x",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (0i64..100).prop_map(|n| json!(n)),
        prop::sample::select(vec![
            "web", "side", "a", "b", "replace", "delete", "merge", "name"
        ])
        .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(5, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((keys.clone(), inner), 0..5).prop_map(|kv| Value::Object(
                kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
            )),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn random_patches_never_panic(patch in arb_json(), doc in arb_json()) {
        let _ = strategic_merge_patch(&pod(), &patch, POD);
        let _ = strategic_merge_patch(&doc, &patch, POD);
        let _ = strategic_merge_patch(&doc, &json!({"spec": patch.clone()}), DEPLOY);
        let _ = json_patch(&doc, &patch);
        let _ = merge_patch(&doc, &patch);
    }
}
