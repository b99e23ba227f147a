#!/usr/bin/env python3
"""Generate crates/kubeproto/src/table.rs: the wire schema dari-kubeproto decodes with.

Sources, all read locally (no network):
  * k8s-pb 0.9.0 (prost-generated, in ~/.cargo/registry/src/*/k8s-pb-0.9.0): messages, field tags, wire types.
  * crates/api/openapi/swagger.json: x-kubernetes-group-version-kind (apiVersion/kind -> message) and the
    JSON property names (fallback only).
  * the Go type metadata compiled into real kubectl binaries (default: the gcloud SDK's kubectl.1.33 and
    kubectl.1.32): each API struct's fields with their json/protobuf struct tags and Go kinds. This is what
    makes the output *Go's* JSON: exact names, `omitempty`, `,inline`, pointer or value, Go field order.

Only messages reachable from the kinds dari serves (crates/api/src/registry.rs) plus EXTRA_KINDS are emitted.

Usage: scripts/gen-kubeproto.py [--check]   (--check: fail if the committed table differs)
"""
import argparse
import glob
import json
import os
import re
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "crates/kubeproto/src/table.rs")
SWAGGER = os.path.join(ROOT, "crates/api/openapi/swagger.json")
REGISTRY = os.path.join(ROOT, "crates/api/src/registry.rs")
KUBECTLS = ["/usr/lib/google-cloud-sdk/bin/kubectl.1.33", "/usr/lib/google-cloud-sdk/bin/kubectl.1.32"]

# (group, version, kind) decoded on top of the served kinds.
EXTRA_KINDS = [
    ("autoscaling", "v1", "Scale"),
    ("batch", "v1", "Job"),
    ("batch", "v1", "CronJob"),
    ("policy", "v1", "Eviction"),
    ("policy", "v1", "PodDisruptionBudget"),
    ("", "v1", "Binding"),
    ("", "v1", "ResourceQuota"),
    ("", "v1", "LimitRange"),
    ("", "v1", "PersistentVolumeClaim"),
    ("", "v1", "PersistentVolume"),
    ("", "v1", "ReplicationController"),
    ("", "v1", "PodTemplate"),
    ("apps", "v1", "StatefulSet"),
    ("apps", "v1", "ControllerRevision"),
    ("scheduling.k8s.io", "v1", "PriorityClass"),
    ("authentication.k8s.io", "v1", "TokenRequest"),
    ("authentication.k8s.io", "v1", "TokenReview"),
    ("authentication.k8s.io", "v1", "SelfSubjectReview"),
    ("authorization.k8s.io", "v1", "SelfSubjectAccessReview"),
    ("authorization.k8s.io", "v1", "SelfSubjectRulesReview"),
    ("authorization.k8s.io", "v1", "SubjectAccessReview"),
    ("authorization.k8s.io", "v1", "LocalSubjectAccessReview"),
    ("events.k8s.io", "v1", "Event"),
    ("certificates.k8s.io", "v1", "CertificateSigningRequest"),
    ("storage.k8s.io", "v1", "StorageClass"),
    ("", "v1", "DeleteOptions"),
]
# apiVersion aliases a body's typeMeta may carry for a message that swagger files under another group.
ALIASES = [("meta.k8s.io/v1", "DeleteOptions", "v1")]

# Messages with a JSON form of their own (see crates/kubeproto/src/decode.rs).
SPECIAL = {
    "apimachinery.pkg.apis.meta.v1.Time": "Time",
    "apimachinery.pkg.apis.meta.v1.MicroTime": "MicroTime",
    "apimachinery.pkg.apis.meta.v1.Duration": "Duration",
    "apimachinery.pkg.apis.meta.v1.FieldsV1": "FieldsV1",
    "apimachinery.pkg.util.intstr.IntOrString": "IntOrString",
    "apimachinery.pkg.api.resource.Quantity": "Quantity",
    "apimachinery.pkg.runtime.RawExtension": "RawExtension",
    # Go: `type ExtraValue []string`; the proto wraps it as {repeated string items = 1}.
    "api.authentication.v1.ExtraValue": "StringList",
    "api.authorization.v1.ExtraValue": "StringList",
    "api.certificates.v1.ExtraValue": "StringList",
}
SCALARS = {"string": "String", "int32": "Int32", "int64": "Int64", "bool": "Bool", "double": "Double",
           "bytes": "Bytes"}


# ---------------------------------------------------------------- k8s-pb
def parse_k8s_pb(src):
    """-> {"api.apps.v1.Deployment": [(tag, snake, card, ty)]}; card in one|rep|map, ty a scalar or a full name."""
    msgs = {}
    for path in glob.glob(os.path.join(src, "**/mod.rs"), recursive=True):
        mod = os.path.relpath(os.path.dirname(path), src).split(os.sep)
        text = open(path).read()
        for m in re.finditer(r"pub struct (\w+) \{(.*?)\n\}", text, re.S):
            fields = []
            body = m.group(2)
            for f in re.finditer(r"#\[prost\(([^\]]*)\)\]\s*pub (r#)?(\w+):\s*([^;]*?),\s*(?=(///|#\[|$))", body, re.S):
                attr, snake, ty = f.group(1), f.group(3), re.sub(r",>", ">", re.sub(r"\s+", "", f.group(4)))
                tag = int(re.search(r'tag = "(\d+)"', attr).group(1))
                if attr.startswith("btree_map"):
                    k, v = re.search(r'btree_map = "(\w+), (\w+)"', attr).groups()
                    assert k == "string", (path, snake)
                    if v == "message":
                        inner = re.search(r"BTreeMap<::prost::alloc::string::String,(.*)>$", ty).group(1)
                        fields.append((tag, snake, "map", resolve(mod, inner)))
                    else:
                        fields.append((tag, snake, "map", SCALARS[v]))
                    continue
                kind = attr.split(",")[0].split(" ")[0]
                card = "rep" if "repeated" in attr else "one"
                if kind == "message":
                    inner = re.sub(r"^::core::option::Option<(.*)>$", r"\1", ty)
                    inner = re.sub(r"^::prost::alloc::vec::Vec<(.*)>$", r"\1", inner)
                    inner = re.sub(r"^::prost::alloc::boxed::Box<(.*)>$", r"\1", inner)
                    fields.append((tag, snake, card, resolve(mod, inner)))
                else:
                    fields.append((tag, snake, card, SCALARS[kind]))
            msgs[".".join(mod + [m.group(1)])] = fields
    return msgs


def resolve(mod, path):
    parts = path.split("::")
    cur = list(mod)
    while parts and parts[0] == "super":
        cur.pop()
        parts.pop(0)
    return ".".join(cur + parts)


# ---------------------------------------------------------------- Go types from a kubectl binary
def read_go_structs(path):
    """Walk the abi.StructType records in a Go 1.17+ ELF binary's .rodata.

    -> {(pkgpath, TypeName): [(goname, tag, kind, elemkind, embedded)]}, kinds as in reflect.Kind.
    """
    data = open(path, "rb").read()
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    secs = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    stroff = secs[shstrndx][4]
    named = {data[stroff + s[0]:data.index(b"\0", stroff + s[0])].decode(): s for s in secs}
    _, _, _, ro_addr, ro_off, ro_size = named[".rodata"]
    ro = memoryview(data)[ro_off:ro_off + ro_size]

    def inro(a):
        return ro_addr <= a < ro_addr + ro_size

    def varint(a):
        v = s = 0
        while True:
            b = ro[a - ro_addr]
            a += 1
            v |= (b & 0x7F) << s
            s += 7
            if b < 0x80:
                return v, a

    def name_at(a):
        flags = ro[a - ro_addr]
        n, p = varint(a + 1)
        nm = bytes(ro[p - ro_addr:p - ro_addr + n]).decode()
        p += n
        tag = ""
        if flags & 2:
            t, p = varint(p)
            tag = bytes(ro[p - ro_addr:p - ro_addr + t]).decode()
        return nm, tag, bool(flags & 8)

    out = {}
    for off in range(0, ro_size - 88, 8):
        if ro[off + 23] & 31 != 25 or not ro[off + 20] & 1:  # kind Struct, tflag Uncommon (named)
            continue
        fp, fl, fc = struct.unpack_from("<QQQ", ro, off + 56)
        if not (0 < fl < 300 and fl == fc and inro(fp) and inro(fp + fl * 24 - 1)):
            continue
        try:
            sname, _, _ = name_at(ro_addr + struct.unpack_from("<i", ro, off + 40)[0])
            pkg, _, _ = name_at(ro_addr + struct.unpack_from("<i", ro, off + 80)[0])
            if not pkg.startswith("k8s.io/"):
                continue
            fields = []
            for i in range(fl):
                np_, tp, _ = struct.unpack_from("<QQQ", ro, fp - ro_addr + i * 24)
                if not inro(np_) or not inro(tp):
                    raise ValueError
                fname, ftag, emb = name_at(np_)
                fkind = ro[tp - ro_addr + 23] & 31
                elem = None
                if fkind == 22:
                    e, = struct.unpack_from("<Q", ro, tp - ro_addr + 48)
                    elem = ro[e - ro_addr + 23] & 31 if inro(e) else None
                fields.append((fname, ftag, fkind, elem, emb))
        except (ValueError, IndexError, struct.error, UnicodeDecodeError):
            continue
        out[(pkg, sname.lstrip("*").split(".")[-1])] = fields
    if not out:
        sys.exit(f"no Go struct types found in {path}: not a Go 1.17+ ELF binary?")
    return out


def go_pkg(full):
    parts = full.split(".")[:-1]
    if parts[0] == "api":
        return "k8s.io/api/" + "/".join(parts[1:])
    if parts[0] == "apimachinery":
        return "k8s.io/apimachinery/" + "/".join(parts[1:])
    return None


def go_fields(gostructs, full):
    """-> ({proto tag: (json, omitempty, inline, gokind, elemkind)}, [tags in Go field order]) or None."""
    pkg, name = go_pkg(full), full.split(".")[-1].lower()
    for structs in gostructs:
        cands = [v for (p, n), v in structs.items() if p == pkg and n.lower() == name]
        if not cands:
            continue
        info, order = {}, []
        for goname, tag, kind, elem, emb in cands[0]:
            pm = re.search(r'protobuf:"(\w+),(\d+),', tag)
            if not pm:
                continue
            jm = re.search(r'json:"([^"]*)"', tag)
            jparts = jm.group(1).split(",") if jm else [goname]
            jname = jparts[0] or (goname if not emb else "")
            t = int(pm.group(2))
            info[t] = (jname, "omitempty" in jparts[1:], "inline" in jparts[1:], kind, elem)
            order.append(t)
        yield info, order


# ---------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--k8s-pb", default=None)
    ap.add_argument("--kubectl", action="append", default=None)
    args = ap.parse_args()
    src = args.k8s_pb or (glob.glob(os.path.expanduser("~/.cargo/registry/src/*/k8s-pb-0.9.0/src")) or [None])[0]
    if not src:
        sys.exit("k8s-pb-0.9.0 not found in ~/.cargo/registry: run `cargo fetch` in a crate depending on it")
    bins = args.kubectl or [b for b in KUBECTLS if os.path.exists(b)]
    if not bins:
        sys.exit("no kubectl binary to read Go types from (pass --kubectl PATH)")
    gostructs = [read_go_structs(b) for b in bins]
    msgs = parse_k8s_pb(src)
    sw = json.load(open(SWAGGER))["definitions"]

    kinds = [tuple(m) for m in re.findall(r'res!\("([^"]*)", "([^"]*)", "([^"]*)"', open(REGISTRY).read())]
    kinds += [k for k in EXTRA_KINDS if k not in kinds]
    roots = []  # (apiVersion, kind, message)
    for g, v, k in kinds:
        defs = [d for d, s in sw.items()
                if {"group": g, "version": v, "kind": k} in s.get("x-kubernetes-group-version-kind", [])]
        if len(defs) != 1:
            sys.exit(f"{g}/{v} {k}: {len(defs)} swagger definitions")
        full = defs[0][len("io.k8s."):]
        full = next((m for m in msgs if m.lower() == full.lower()), None)
        if not full:
            sys.exit(f"{defs[0]}: no k8s-pb message")
        roots.append((f"{g}/{v}" if g else v, k, full))
    for av, k, target in ALIASES:
        roots.append((av, k, next(f for a, kk, f in roots if a == target and kk == k)))

    order, seen = [], set()

    def visit(full):
        if full in seen or full in SPECIAL:
            return
        if full not in msgs:
            sys.exit(f"unknown message {full}")
        seen.add(full)
        order.append(full)
        for _, _, _, ty in msgs[full]:
            if ty not in SCALARS.values():
                visit(ty)

    for _, _, full in roots:
        visit(full)
    order.sort()
    index = {m: i for i, m in enumerate(order)}

    warnings = []
    lines = []
    for full in order:
        swdef = sw.get("io.k8s." + full) or next((v for k, v in sw.items() if k.lower() == ("io.k8s." + full).lower()), {})
        props = swdef.get("properties", {})
        required = set(swdef.get("required", []))
        gi = next(go_fields(gostructs, full), None)
        if gi is None:
            warnings.append(f"{full}: no Go struct, JSON rules from swagger")
            gi = ({}, [])
        info, gorder = gi
        ptags = {f[0]: f for f in msgs[full]}
        tags = [t for t in gorder if t in ptags] + sorted(t for t in ptags if t not in gorder)
        fl = []
        for t in tags:
            _, snake, card, ty = ptags[t]
            if t in info:
                jname, omit, inline, gk, elem = info[t]
                ptr = gk == 22
            else:
                key = snake.replace("_", "")
                jname = next((p for p in props if p.lower() == key), None)
                if jname is None:
                    jname = re.sub(r"_(\w)", lambda m: m.group(1).upper(), snake)
                    warnings.append(f"{full}.{snake}: no Go field, no swagger property; JSON name {jname!r}")
                else:
                    warnings.append(f"{full}.{snake}: no Go field; swagger name {jname!r}")
                omit, inline = jname not in required, False
                ptr = card == "one" and (ty not in SCALARS.values() or omit)
            if not inline and props and jname not in props:
                warnings.append(f"{full}.{jname}: not a swagger property")
            if ty in SCALARS.values():
                rty = f"Ty::{ty}"
            elif ty in SPECIAL:
                rty = f"Ty::{SPECIAL[ty]}"
            else:
                rty = f"Ty::Msg({index[ty]})"
            card_r = {"one": "Card::One", "rep": "Card::Repeated", "map": "Card::Map"}[card]
            flags = "|".join(n for n, c in (("OMITEMPTY", omit), ("POINTER", ptr), ("INLINE", inline)) if c) or "0"
            fl.append(f"F{{tag:{t},json:{json.dumps(jname)},ty:{rty},card:{card_r},flags:{flags}}}")
        lines.append(f"    // {index[full]}\n    Msg {{ name: {json.dumps(full)}, fields: &[{', '.join(fl)}] }},")

    kind_lines = [f"    ({json.dumps(av)}, {json.dumps(k)}, {index[full]})," for av, k, full in sorted(roots)]
    out = "\n".join([
        "// @generated by scripts/gen-kubeproto.py from k8s-pb 0.9.0, crates/api/openapi/swagger.json and the Go",
        f"// type metadata of {', '.join(os.path.basename(b) for b in bins)}. Do not edit; rerun the script.",
        "#![allow(clippy::all)]",
        "use crate::schema::{Card, Msg, Ty, F, INLINE, OMITEMPTY, POINTER};",
        "",
        "/// Every message reachable from [`KINDS`], sorted by full name (k8s-pb module path).",
        "pub(crate) static MESSAGES: &[Msg] = &[",
        *lines,
        "];",
        "",
        "/// (apiVersion, kind, index into [`MESSAGES`]), sorted.",
        "pub(crate) static KINDS: &[(&str, &str, u16)] = &[",
        *kind_lines,
        "];",
        "",
    ])
    out = out.replace("Ty::Msg(", "Ty::Msg(")
    for w in warnings:
        print("warning:", w, file=sys.stderr)
    if args.check:
        if open(OUT).read() != out:
            sys.exit(f"{OUT} is stale: rerun scripts/gen-kubeproto.py")
        return
    with open(OUT, "w") as f:
        f.write(out)
    print(f"wrote {OUT}: {len(order)} messages, {len(roots)} kinds, {len(warnings)} warnings", file=sys.stderr)


if __name__ == "__main__":
    main()
