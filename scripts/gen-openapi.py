#!/usr/bin/env python3
"""Regenerate crates/api/openapi/swagger.json, the OpenAPI v2 document dari serves.

Source: the Kubernetes v1.32 definitions (Apache-2.0, generated from kubernetes/api) as shipped in the
PyPI package kubernetes-validate (kubernetes-json-schema/v1.32.0-local/_definitions.json). That file is
JSON-schema flavoured (type: [T, "null"], $defs); this script turns it back into swagger 2.0 definitions,
which kubectl parses for `kubectl explain` and client-side apply.

    pip download kubernetes-validate --no-deps -d /tmp/kv && unzip ... && scripts/gen-openapi.py DEFS.json
"""
import json, sys

def clean(node, parent_key=None):
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                out[k] = v.replace("#/$defs/", "#/definitions/")
            elif k == "type" and isinstance(v, list):
                types = [t for t in v if t != "null"]
                out[k] = types[0] if len(types) == 1 else types
            elif k == "properties":
                out[k] = {pk: clean(pv) for pk, pv in v.items()}
            else:
                out[k] = clean(v, k)
        # apiVersion/kind got an enum added by the json-schema conversion; swagger has none
        if parent_key is None and "enum" in out and out.get("type") == "string" and len(out["enum"]) == 1:
            pass
        return out
    if isinstance(node, list):
        return [clean(x) for x in node]
    return node

defs = json.load(open(sys.argv[1]))
defs = defs.get("$defs", defs.get("definitions"))
out = {}
for name, d in defs.items():
    d = clean(d)
    for f in ("apiVersion", "kind"):
        p = d.get("properties", {}).get(f)
        if p is not None:
            p.pop("enum", None)
    # IntOrString and Quantity are oneOf in json-schema; swagger 2.0 says string with a format
    if name == "io.k8s.apimachinery.pkg.util.intstr.IntOrString":
        d = {"description": d.get("description", ""), "type": "string", "format": "int-or-string"}
    if name == "io.k8s.apimachinery.pkg.api.resource.Quantity":
        d = {"description": d.get("description", ""), "type": "string"}
    out[name] = d
doc = {"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.32.0"}, "paths": {}, "definitions": out}
json.dump(doc, open("crates/api/openapi/swagger.json", "w"), separators=(",", ":"), sort_keys=False)
