#!/bin/sh
# Pod-to-pod throughput and latency in a 3-node lab, per backend: a 100 MB file over HTTP
# (busybox httpd -> curl, speed as curl reports it) and ping RTT, across nodes and on one node.
# Root only; uses its own prefix/subnet (dbn*, 172.31.81-82.0/24). Usage:
#   cargo build -p dari -p dari-lab --bins && sh crates/lab/bench/pod_network.sh [vxlan host-gw]
set -eu
DARI=${DARI_BIN:-$(dirname "$0")/../../../target/debug/dari}
BACKENDS=${*:-vxlan host-gw}
i=0
for b in $BACKENDS; do
  i=$((i+1))
  dir=$(mktemp -d /tmp/dari-bench-XXXX)
  port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
  trap '"$DARI" lab down --dir "$dir" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
  DARI_LOG=warn "$DARI" lab up --nodes bn$i-cp,bn$i-w1,bn$i-w2 --backend "$b" --prefix dbn$i --subnet 172.31.8$i.0/24 \
    --cluster-cidr 10.$((247+i)).0.0/16 --api-listen 127.0.0.1:$port --dir "$dir" >/dev/null 2>&1
  export KUBECONFIG=$dir/kubeconfig
  kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: server}
spec:
  nodeName: bn$i-w1
  containers:
  - {name: httpd, image: busybox, command: ["sh", "-c", "mkdir -p /www && dd if=/dev/zero of=/www/big bs=1048576 count=100 2>/dev/null && exec httpd -f -p 8080 -h /www"]}
---
apiVersion: v1
kind: Pod
metadata: {name: far}
spec:
  nodeName: bn$i-w2
  containers: [{name: c, image: nicolaka/netshoot, command: ["sleep", "3600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: near}
spec:
  nodeName: bn$i-w1
  containers: [{name: c, image: nicolaka/netshoot, command: ["sleep", "3600"]}]
YAML
  kubectl wait --for=condition=Ready pod --all --timeout=120s >/dev/null
  ip=$(kubectl get pod server -o jsonpath='{.status.podIP}')
  # the file is complete once it has 100 MB (poll, bounded)
  n=0
  until [ "$(kubectl exec server -- sh -c 'wc -c < /www/big' 2>/dev/null | tr -d ' ')" = "104857600" ]; do
    n=$((n+1)); [ $n -lt 120 ] || { echo "server never wrote /www/big" >&2; exit 1; }; sleep 0.5
  done
  for c in far near; do
    where=$([ $c = far ] && echo "across nodes" || echo "same node")
    for run in 1 2 3; do
      kubectl exec $c -- curl -s -o /dev/null -w '%{speed_download}\n' "http://$ip:8080/big"
    done | awk -v b="$b" -v w="$where" '{s+=$1; n++} END {printf "%-8s %-13s 100 MB HTTP: %.0f MB/s (mean of %d)\n", b, w, s/n/1e6, n}'
    kubectl exec $c -- ping -c 20 -i 0.2 -q "$ip" | awk -v b="$b" -v w="$where" -F/ '/rtt|round-trip/ {printf "%-8s %-13s ping rtt avg %s ms\n", b, w, $4}'
  done
  "$DARI" lab down --dir "$dir" >/dev/null 2>&1
  rm -rf "$dir"
  trap - EXIT
done
