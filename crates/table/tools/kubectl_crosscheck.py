#!/usr/bin/env python3
"""Cross-check dari-table against a real kubectl.

Serves, on 127.0.0.1 only, a stub API server (legacy discovery + one list per golden input,
answered with the Table JSON this crate produced), runs `kubectl get X` and `kubectl get X -o wide`
against it, and compares kubectl's stdout with tests/golden/<name>.txt.

  cargo build -p dari-table --example table_json
  python3 crates/table/tools/kubectl_crosscheck.py <path to table_json binary>

Needs /usr/bin/kubectl (Debian package kubectl). Exit status 1 on any difference.
"""
import http.server, json, os, subprocess, sys, tempfile, threading

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "..", "tests", "golden")
CLUSTER_SCOPED = {"nodes", "namespaces", "ingressclasses", "clusterroles", "clusterrolebindings"}
VERSIONS = {"": "v1", "apps": "v1", "batch": "v1", "discovery.k8s.io": "v1", "networking.k8s.io": "v1",
            "events.k8s.io": "v1", "coordination.k8s.io": "v1", "rbac.authorization.k8s.io": "v1", "example.com": "v1"}

def main():
    binary = sys.argv[1]
    inputs = sorted(f for f in os.listdir(GOLDEN) if f.endswith(".json"))
    tables, resources = {}, {}
    for f in inputs:
        src = json.load(open(os.path.join(GOLDEN, f)))
        g, r = src["group"], src["resource"]
        out = subprocess.run([binary, os.path.join(GOLDEN, f)], check=True, capture_output=True, text=True).stdout
        tables[(g, r)] = out.encode()
        kind = src["objects"][0]["kind"]
        resources.setdefault(g, []).append({"name": r, "singularName": kind.lower(), "namespaced": r not in CLUSTER_SCOPED,
                                            "kind": kind, "verbs": ["get", "list"]})

    class H(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a): pass
        def send(self, body, ctype="application/json"):
            if not isinstance(body, bytes): body = json.dumps(body).encode()
            self.send_response(200); self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
        def do_GET(self):
            path = self.path.split("?")[0].rstrip("/")
            if path == "/api":
                return self.send({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
            if path == "/apis":
                groups = [{"name": g, "versions": [{"groupVersion": f"{g}/{VERSIONS[g]}", "version": VERSIONS[g]}],
                           "preferredVersion": {"groupVersion": f"{g}/{VERSIONS[g]}", "version": VERSIONS[g]}} for g in resources if g]
                return self.send({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
            if path == "/api/v1":
                return self.send({"kind": "APIResourceList", "groupVersion": "v1", "resources": resources[""]})
            parts = path.strip("/").split("/")
            if len(parts) < 3:
                self.send_response(404); self.end_headers(); return
            if len(parts) == 3 and parts[0] == "apis" and parts[1] in resources:
                return self.send({"kind": "APIResourceList", "groupVersion": f"{parts[1]}/{parts[2]}", "resources": resources[parts[1]]})
            # /api/v1/[namespaces/default/]R or /apis/G/V/[namespaces/default/]R
            group = "" if parts[0] == "api" else parts[1]
            plural = parts[-1]
            if (group, plural) in tables and "as=Table" in self.headers.get("Accept", ""):
                return self.send(tables[(group, plural)], "application/json;as=Table;v=v1;g=meta.k8s.io")
            self.send_response(404); self.end_headers()

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = srv.server_address[1]
    kc = tempfile.NamedTemporaryFile("w", suffix=".kubeconfig", delete=False)
    kc.write(f"""apiVersion: v1
kind: Config
clusters: [{{name: stub, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
users: [{{name: anon, user: {{}}}}]
contexts: [{{name: stub, context: {{cluster: stub, user: anon, namespace: default}}}}]
current-context: stub
""")
    kc.close()
    cache = tempfile.mkdtemp()
    failed = 0
    for f in inputs:
        src = json.load(open(os.path.join(GOLDEN, f)))
        g, r = src["group"], src["resource"]
        what = r if not g else f"{r}.{g}"
        got = ""
        for extra in ([], ["-o", "wide"]):
            p = subprocess.run(["kubectl", "--kubeconfig", kc.name, "--cache-dir", cache, "get", what, *extra],
                               capture_output=True, text=True)
            if p.returncode != 0:
                print(f"{f}: kubectl failed: {p.stderr}"); failed += 1
            got += f"$ kubectl get {what}{' -o wide' if extra else ''}\n{p.stdout}" + ("\n" if not extra else "")
        want = open(os.path.join(GOLDEN, f[:-5] + ".txt")).read()
        if got != want:
            failed += 1
            print(f"--- {f}: kubectl differs\n--- kubectl:\n{got}--- golden:\n{want}")
        else:
            print(f"ok  {f}")
    srv.shutdown(); os.unlink(kc.name)
    sys.exit(1 if failed else 0)

main()
