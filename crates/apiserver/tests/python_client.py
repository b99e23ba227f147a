"""The official python kubernetes client (Debian's python3-kubernetes) against dari: list, create, watch.

Usage: /usr/bin/python3 python_client.py KUBECONFIG
Prints one line per check; exits non-zero on the first failure.
"""
import sys
import threading

from kubernetes import client, config, watch

config.load_kube_config(config_file=sys.argv[1])
v1 = client.CoreV1Api()

names = {ns.metadata.name for ns in v1.list_namespace().items}
assert {"default", "kube-system", "kube-public", "kube-node-lease"} <= names, names
print("list namespaces ok")

for i in range(5):
    v1.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"py{i}", labels={"py": "yes"}), data={"i": str(i)}))
page = v1.list_namespaced_config_map("default", label_selector="py=yes", limit=2)
assert len(page.items) == 2 and page.metadata._continue, page.metadata
rest = v1.list_namespaced_config_map("default", label_selector="py=yes", limit=10, _continue=page.metadata._continue)
assert len(rest.items) == 3, [c.metadata.name for c in rest.items]
print("paged list ok")

rv = v1.list_namespaced_config_map("default").metadata.resource_version
seen = []
def change():
    v1.patch_namespaced_config_map("py1", "default", {"data": {"i": "changed"}})
    v1.delete_namespaced_config_map("py2", "default")
threading.Timer(0.5, change).start()
w = watch.Watch()
for ev in w.stream(v1.list_namespaced_config_map, "default", resource_version=rv, timeout_seconds=10):
    seen.append((ev["type"], ev["object"].metadata.name))
    if ("DELETED", "py2") in seen:
        w.stop()
assert ("MODIFIED", "py1") in seen and ("DELETED", "py2") in seen, seen
print("watch ok")

try:
    v1.read_namespaced_config_map("nope", "default")
    raise SystemExit("expected 404")
except client.exceptions.ApiException as e:
    assert e.status == 404, e.status
print("404 ok")
