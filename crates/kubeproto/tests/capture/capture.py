#!/usr/bin/env python3
"""Capture real kubectl protobuf request bodies, plus the `--dry-run=client -o json` oracle.

Runs a tiny plain-HTTP API server on 127.0.0.1:0 (legacy discovery, 201 to POSTs, one Deployment to GET),
points kubectl at it through a throwaway kubeconfig, and writes for each case NAME:
  tests/data/NAME.pb    the POST body kubectl sent (Content-Type application/vnd.kubernetes.protobuf)
  tests/data/NAME.json  what `kubectl ... --dry-run=client -o json` prints for the same command

Usage: crates/kubeproto/tests/capture/capture.py [KUBECTL]   (default: kubectl on PATH)
"""
import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")

CASES = [
    ("configmap", ["create", "configmap", "x", "--from-literal=a=b"]),
    ("secret", ["create", "secret", "generic", "s", "--from-literal=k=v"]),
    ("namespace", ["create", "ns", "n"]),
    ("deployment", ["create", "deployment", "d", "--image=nginx", "--replicas=2", "--port=80"]),
    ("service-clusterip", ["create", "service", "clusterip", "s", "--tcp=80:8080"]),
    ("service-nodeport", ["create", "service", "nodeport", "np", "--tcp=80:80", "--node-port=30080"]),
    ("job", ["create", "job", "j", "--image=busybox"]),
    ("ingress", ["create", "ingress", "i", "--rule=a.com/=svc:80"]),
    ("deployment-zero", ["create", "deployment", "z", "--image=busybox", "--replicas=0", "--", "sleep", "3600"]),
    ("cronjob", ["create", "cronjob", "c", "--image=busybox", "--schedule=*/5 * * * *", "--", "date"]),
    ("secret-empty-value", ["create", "secret", "generic", "bin", "--from-literal=empty=", "--type=Opaque"]),
    ("role", ["create", "role", "r", "--verb=get,list", "--resource=pods", "--resource-name=a"]),
    ("clusterrolebinding", ["create", "clusterrolebinding", "crb", "--clusterrole=view", "--user=u", "--serviceaccount=default:sa"]),
    ("serviceaccount", ["create", "serviceaccount", "sa"]),
    ("quota", ["create", "quota", "q", "--hard=cpu=1,memory=1Gi,pods=10"]),
    ("pdb", ["create", "pdb", "pdb", "--selector=app=x", "--min-available=50%"]),
    ("priorityclass", ["create", "priorityclass", "pc", "--value=1000", "--description=d"]),
]

# kubectl 1.32 sends these as application/json (not protobuf): checked, nothing saved.
JSON_CASES = [
    ("pod-run", ["run", "p", "--image=nginx", "--labels=a=b", "--port=80"]),
    ("service-expose", ["expose", "deployment", "d", "--port=80"]),
]

RES = {
    "v1": [("configmaps", "ConfigMap", True), ("secrets", "Secret", True), ("namespaces", "Namespace", False),
           ("services", "Service", True), ("pods", "Pod", True), ("serviceaccounts", "ServiceAccount", True),
           ("resourcequotas", "ResourceQuota", True)],
    "apps/v1": [("deployments", "Deployment", True)],
    "batch/v1": [("jobs", "Job", True), ("cronjobs", "CronJob", True)],
    "networking.k8s.io/v1": [("ingresses", "Ingress", True)],
    "rbac.authorization.k8s.io/v1": [("roles", "Role", True), ("clusterrolebindings", "ClusterRoleBinding", False),
                                     ("clusterroles", "ClusterRole", False)],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    "scheduling.k8s.io/v1": [("priorityclasses", "PriorityClass", False)],
}

DEPLOYMENT = {
    "kind": "Deployment", "apiVersion": "apps/v1",
    "metadata": {"name": "d", "namespace": "default", "labels": {"app": "d"}},
    "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "d"}},
             "template": {"metadata": {"labels": {"app": "d"}},
                          "spec": {"containers": [{"name": "nginx", "image": "nginx", "ports": [{"containerPort": 80}]}]}}},
}

captured = []


def with_flags(args, *flags):
    """Flags go before a `--` (after it they would become the container's command)."""
    i = args.index("--") if "--" in args else len(args)
    return [*args[:i], *flags, *args[i:]]


def resource_list(gv):
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": [
        {"name": p, "singularName": k.lower(), "namespaced": ns, "kind": k,
         "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]} for p, k, ns in RES[gv]]}


class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def reply(self, code, obj):
        b = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)

    def do_GET(self):
        p = self.path.split("?")[0]
        if p == "/api":
            return self.reply(200, {"kind": "APIVersions", "versions": ["v1"]})
        if p == "/apis":
            groups = [{"name": gv.split("/")[0], "versions": [{"groupVersion": gv, "version": gv.split("/")[1]}],
                       "preferredVersion": {"groupVersion": gv, "version": gv.split("/")[1]}} for gv in RES if "/" in gv]
            return self.reply(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        if p == "/api/v1":
            return self.reply(200, resource_list("v1"))
        if p.startswith("/apis/") and p.count("/") == 3 and p[len("/apis/"):] in RES:
            return self.reply(200, resource_list(p[len("/apis/"):]))
        if p == "/apis/apps/v1/namespaces/default/deployments/d":
            return self.reply(200, DEPLOYMENT)
        if p == "/version":
            return self.reply(200, {"major": "1", "minor": "32", "gitVersion": "v1.32.0"})
        return self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        captured.append((self.path, self.headers.get("Content-Type"), body))
        self.reply(201, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})


def main():
    kubectl = sys.argv[1] if len(sys.argv) > 1 else "kubectl"
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    tmp = tempfile.mkdtemp()
    kc = os.path.join(tmp, "kubeconfig")
    with open(kc, "w") as f:
        f.write(f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "http://127.0.0.1:{srv.server_address[1]}"}}}}]
users: [{{name: u, user: {{}}}}]
contexts: [{{name: c, context: {{cluster: c, user: u, namespace: default}}}}]
current-context: c
""")
    env = dict(os.environ, KUBECONFIG=kc, KUBECACHEDIR=os.path.join(tmp, "cache"), HOME=tmp)
    os.makedirs(DATA, exist_ok=True)
    failed = False
    for name, args in CASES:
        captured.clear()
        extra = ["--validate=false"] if args[0] == "create" else []
        r = subprocess.run([kubectl, *with_flags(args, *extra)], env=env, capture_output=True, text=True, timeout=60)
        posts = [c for c in captured if c[1] and "protobuf" in c[1]]
        if r.returncode != 0 or len(posts) != 1:
            print(f"{name}: kubectl exit {r.returncode}, {len(captured)} POSTs {[c[:2] for c in captured]}\n{r.stderr}", file=sys.stderr)
            failed = True
            continue
        oracle = subprocess.run([kubectl, *with_flags(args, "--dry-run=client", "-o", "json")], env=env, capture_output=True,
                                text=True, timeout=60, check=True).stdout
        with open(os.path.join(DATA, name + ".pb"), "wb") as f:
            f.write(posts[0][2])
        with open(os.path.join(DATA, name + ".json"), "w") as f:
            f.write(oracle)
        print(f"{name}: POST {posts[0][0]} {len(posts[0][2])} bytes")
    for name, args in JSON_CASES:
        captured.clear()
        r = subprocess.run([kubectl, *args], env=env, capture_output=True, text=True, timeout=60)
        cts = [c[1] for c in captured]
        print(f"{name}: kubectl exit {r.returncode}, POST content types {cts}")
        failed |= r.returncode != 0 or cts != ["application/json"]
    srv.shutdown()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
