//! Strategic merge patch semantics on a small test schema, one case per rule of apimachinery's
//! `strategicpatch` (cases written for dari, modelled on the behaviours upstream's
//! `patch_test.go` checks: order preservation, directives, retainKeys, parallel lists).

use dari_api::openapi::Schemas;
use dari_api::patch::{strategic_merge_patch_with, PatchError};
use serde_json::{json, Value};

const SCHEMA: &str = r##"{"definitions": {
  "t.Item": {"type": "object", "properties": {
    "name": {"type": "string"}, "value": {"type": "string"}, "other": {"type": "string"},
    "mergingList": {"type": "array", "items": {"$ref": "#/definitions/t.Item"},
                    "x-kubernetes-patch-strategy": "merge", "x-kubernetes-patch-merge-key": "name"},
    "nonMergingList": {"type": "array", "items": {"$ref": "#/definitions/t.Item"}},
    "mergingIntList": {"type": "array", "items": {"type": "integer"}, "x-kubernetes-patch-strategy": "merge"},
    "simpleMap": {"type": "object", "additionalProperties": {"type": "string"}},
    "replacingItem": {"$ref": "#/definitions/t.Raw", "x-kubernetes-patch-strategy": "replace"},
    "retainKeysMap": {"$ref": "#/definitions/t.Item", "x-kubernetes-patch-strategy": "retainKeys"},
    "retainKeysMergingList": {"type": "array", "items": {"$ref": "#/definitions/t.Item"},
                              "x-kubernetes-patch-strategy": "merge,retainKeys", "x-kubernetes-patch-merge-key": "name"}
  }},
  "t.Raw": {"type": "object"}
}}"##;

fn apply(original: Value, patch: Value) -> Result<Value, PatchError> {
    let sc = Schemas::from_swagger(SCHEMA).expect("test schema parses");
    strategic_merge_patch_with(&sc, &original, &patch, "t.Item")
}

fn case(name: &str, original: Value, patch: Value, want: Value) {
    match apply(original, patch) {
        Ok(got) => assert_eq!(got, want, "case {name}"),
        Err(e) => panic!("case {name}: {}", e.detail()),
    }
}

#[test]
fn scalars_in_merging_int_list_are_unique() {
    case(
        "union",
        json!({"mergingIntList": [1, 2]}),
        json!({"mergingIntList": [2, 3]}),
        json!({"mergingIntList": [1, 2, 3]}),
    );
}

#[test]
fn map_directives() {
    case(
        "delete nested map",
        json!({"simpleMap": {"a": "1", "b": "2"}}),
        json!({"simpleMap": {"$patch": "delete"}}),
        json!({"simpleMap": {}}),
    );
    case(
        "replace top map",
        json!({"name": "1", "value": "1"}),
        json!({"$patch": "replace"}),
        json!({}),
    );
    case(
        "replace with content",
        json!({"name": "1", "value": "1"}),
        json!({"other": "a", "$patch": "replace"}),
        json!({"other": "a"}),
    );
}

#[test]
fn list_directives() {
    case(
        "replace empties list",
        json!({"mergingList": [{"name": "1"}, {"name": "2"}]}),
        json!({"mergingList": [{"$patch": "replace"}]}),
        json!({"mergingList": []}),
    );
    case(
        "empty lists",
        json!({"mergingList": []}),
        json!({"mergingList": []}),
        json!({"mergingList": []}),
    );
    case(
        "delete removes every entry with the key",
        json!({"mergingList": [{"name": "1"}, {"name": "1"}, {"name": "2", "value": "a"}, {"name": "3"}]}),
        json!({"mergingList": [{"name": "1", "$patch": "delete"}, {"name": "3", "$patch": "delete"}]}),
        json!({"mergingList": [{"name": "2", "value": "a"}]}),
    );
    case(
        "delete and add",
        json!({"mergingList": [{"name": "1"}, {"name": "2"}]}),
        json!({"mergingList": [{"name": "1", "$patch": "delete"}, {"name": "4"}]}),
        json!({"mergingList": [{"name": "4"}, {"name": "2"}]}),
    );
}

#[test]
fn order_follows_patch_then_server() {
    case(
        "patch order wins",
        json!({"mergingList": [{"name": "1"}, {"name": "2", "value": "b"}, {"name": "3"}]}),
        json!({"mergingList": [{"name": "3", "value": "c"}, {"name": "1", "value": "a"}, {"name": "2", "other": "x"}]}),
        json!({"mergingList": [{"name": "3", "value": "c"}, {"name": "1", "value": "a"}, {"name": "2", "value": "b", "other": "x"}]}),
    );
    case(
        "server-only items keep their place",
        json!({"mergingList": [{"name": "1"}, {"name": "2", "value": "b"}, {"name": "3"}]}),
        json!({"mergingList": [{"name": "3", "value": "c"}, {"name": "1", "value": "a"}]}),
        json!({"mergingList": [{"name": "2", "value": "b"}, {"name": "3", "value": "c"}, {"name": "1", "value": "a"}]}),
    );
    case(
        "int list order",
        json!({"mergingIntList": [1, 2, 3]}),
        json!({"mergingIntList": [3, 1]}),
        json!({"mergingIntList": [2, 3, 1]}),
    );
}

#[test]
fn set_element_order() {
    case(
        "order list names an absent item",
        json!({"mergingList": [{"name": "1"}, {"name": "3"}]}),
        json!({"$setElementOrder/mergingList": [{"name": "3"}, {"name": "2"}, {"name": "1"}],
               "mergingList": [{"name": "3", "value": "3"}, {"name": "1", "value": "1"}]}),
        json!({"mergingList": [{"name": "3", "value": "3"}, {"name": "1", "value": "1"}]}),
    );
    case(
        "order only, ints",
        json!({"mergingIntList": [1, 3]}),
        json!({"$setElementOrder/mergingIntList": [3, 2, 1]}),
        json!({"mergingIntList": [3, 1]}),
    );
    case(
        "add in the middle",
        json!({"mergingList": [{"name": "1"}, {"name": "3"}]}),
        json!({"$setElementOrder/mergingList": [{"name": "1"}, {"name": "2"}, {"name": "3"}], "mergingList": [{"name": "2"}]}),
        json!({"mergingList": [{"name": "1"}, {"name": "2"}, {"name": "3"}]}),
    );
    case(
        "order with deletion",
        json!({"mergingList": [{"name": "1"}, {"name": "2"}, {"name": "3"}]}),
        json!({"$setElementOrder/mergingList": [{"name": "3"}, {"name": "1"}], "mergingList": [{"name": "2", "$patch": "delete"}]}),
        json!({"mergingList": [{"name": "3"}, {"name": "1"}]}),
    );
}

#[test]
fn retain_keys() {
    case(
        "no directive adds",
        json!({"retainKeysMap": {"name": "foo"}}),
        json!({"retainKeysMap": {"value": "bar"}}),
        json!({"retainKeysMap": {"name": "foo", "value": "bar"}}),
    );
    case(
        "null deletes",
        json!({"retainKeysMap": {"name": "foo", "value": "a"}}),
        json!({"retainKeysMap": {"value": null}}),
        json!({"retainKeysMap": {"name": "foo"}}),
    );
    case(
        "empty map merges",
        json!({"retainKeysMap": {"name": "foo", "value": "a"}}),
        json!({"retainKeysMap": {}}),
        json!({"retainKeysMap": {"name": "foo", "value": "a"}}),
    );
    case(
        "directive clears others",
        json!({"retainKeysMap": {"name": "foo", "value": "a", "other": "o"}}),
        json!({"retainKeysMap": {"$retainKeys": ["name", "value"], "value": "b"}}),
        json!({"retainKeysMap": {"name": "foo", "value": "b"}}),
    );
    case(
        "list elements",
        json!({"retainKeysMergingList": [{"name": "bar"}, {"name": "foo", "value": "a", "other": "x"}]}),
        json!({"retainKeysMergingList": [{"name": "foo", "$retainKeys": ["name", "other"], "other": "y"}]}),
        json!({"retainKeysMergingList": [{"name": "bar"}, {"name": "foo", "other": "y"}]}),
    );
}

#[test]
fn replace_strategy_and_non_merging_lists() {
    case(
        "replace strategy",
        json!({"replacingItem": {"a": 1, "b": {"c": 2}}}),
        json!({"replacingItem": {"b": {"d": 3}}}),
        json!({"replacingItem": {"b": {"d": 3}}}),
    );
    case(
        "non-merging list",
        json!({"nonMergingList": [{"name": "1"}, {"name": "2"}]}),
        json!({"nonMergingList": [{"name": "3"}]}),
        json!({"nonMergingList": [{"name": "3"}]}),
    );
    case(
        "type change replaces",
        json!({"value": {"a": 1}}),
        json!({"value": "s"}),
        json!({"value": "s"}),
    );
}

#[test]
fn parallel_delete_list() {
    case(
        "delete scalars",
        json!({"mergingIntList": [1, 2, 3]}),
        json!({"$deleteFromPrimitiveList/mergingIntList": [1, 3]}),
        json!({"mergingIntList": [2]}),
    );
    case(
        "add and delete",
        json!({"mergingIntList": [1, 2]}),
        json!({"mergingIntList": [3], "$deleteFromPrimitiveList/mergingIntList": [1]}),
        json!({"mergingIntList": [3, 2]}),
    );
}

#[test]
fn nested_merging_lists() {
    case(
        "nested",
        json!({"mergingList": [{"name": "a", "mergingList": [{"name": "x", "value": "1"}], "nonMergingList": [{"name": "k"}]}]}),
        json!({"mergingList": [{"name": "a", "mergingList": [{"name": "x", "other": "2"}], "nonMergingList": [{"name": "j"}]}]}),
        json!({"mergingList": [{"name": "a", "mergingList": [{"name": "x", "value": "1", "other": "2"}], "nonMergingList": [{"name": "j"}]}]}),
    );
}

#[test]
fn malformed() {
    let orig = json!({"mergingList": [{"name": "1"}], "mergingIntList": [1], "retainKeysMap": {"name": "a"}});
    let bad = [
        json!({"mergingList": [{"value": "no key"}]}),
        json!({"mergingList": [{"name": "1", "$patch": "merge"}]}),
        json!({"mergingList": [{"name": "1", "$patch": "explode"}]}),
        json!({"$patch": "explode"}),
        json!({"retainKeysMap": {"$retainKeys": "name"}}),
        json!({"retainKeysMap": {"$retainKeys": ["name"], "value": "v"}}),
        json!({"mergingIntList": ["a"]}),
        json!({"$setElementOrder/mergingList": {"name": "1"}}),
        json!({"$deleteFromPrimitiveList/": [1]}),
        json!({"$unknownDirective": 1}),
    ];
    for p in bad {
        assert!(
            apply(orig.clone(), p.clone()).is_err(),
            "expected an error for {p}"
        );
    }
}
