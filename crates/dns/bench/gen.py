#!/usr/bin/env python3
"""Generates the benchmark cluster: 10,000 ClusterIP Services (the names queried), plus 1,000 headless
Services with 30 ready endpoints each (30,000 endpoints, for the memory figure); the same 10,000 names as a
hosts file for dnsmasq, together with the external names it answers as the upstream; the cluster names
alone as hosts-cluster for kresd's hints module (external names must go through kresd's forwarder);
dnsperf query files for cluster names and for external names (ext-N.example)."""
import json, sys, os

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
items, hosts, q_cluster, q_ext = [], [], [], []
for i in range(10000):
    ip = f"10.96.{i // 250}.{i % 250 + 1}"
    name = f"svc-{i}"
    items.append({"apiVersion": "v1", "kind": "Service",
                  "metadata": {"name": name, "namespace": "bench"},
                  "spec": {"clusterIP": ip, "clusterIPs": [ip],
                           "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})
    fq = f"{name}.bench.svc.cluster.local"
    hosts.append(f"{ip} {fq}")
    q_cluster.append(f"{fq} A")
    hosts.append(f"192.0.{i // 250}.{i % 250 + 1} ext-{i}.example")
    q_ext.append(f"ext-{i}.example A")
for j in range(1000):
    name = f"hl-{j}"
    items.append({"apiVersion": "v1", "kind": "Service",
                  "metadata": {"name": name, "namespace": "bench"},
                  "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})
    eps = [{"addresses": [f"10.{100 + j // 250}.{j % 250}.{k + 1}"], "hostname": f"{name}-{k}",
            "conditions": {"ready": True}} for k in range(30)]
    items.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                  "metadata": {"name": f"{name}-x", "namespace": "bench",
                               "labels": {"kubernetes.io/service-name": name}},
                  "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                  "endpoints": eps})
json.dump(items, open(f"{out}/objects.json", "w"))
open(f"{out}/hosts", "w").write("\n".join(hosts) + "\n")
open(f"{out}/hosts-cluster", "w").write("\n".join(h for h in hosts if h.endswith(".cluster.local")) + "\n")
open(f"{out}/queries-cluster.txt", "w").write("\n".join(q_cluster) + "\n")
open(f"{out}/queries-ext.txt", "w").write("\n".join(q_ext) + "\n")
