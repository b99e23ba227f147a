#!/usr/bin/env bash
# Installs what is missing, builds dari, starts a 4-node lab cluster (network namespaces on this
# machine: myk8s-control-plane + 3 workers, each with its own containerd) and applies the seed 003
# ClusterIP scenario. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
echo "==> building dari"
cargo build --quiet --workspace --bins
./target/debug/dari lab down >/dev/null 2>&1 || true
./target/debug/dari lab up --nodes myk8s-control-plane,myk8s-worker,myk8s-worker2,myk8s-worker3
export KUBECONFIG=/var/lib/dari-lab/kubeconfig
echo "==> seed 003: three whoami pods, a netshoot pod and a ClusterIP Service"
SCEN=../shared/scenarios; [ -d "$SCEN" ] || SCEN=/work/shared/scenarios
kubectl apply -f "$SCEN/seed-003-clusterip/"
kubectl wait --for=condition=Ready pod --all --timeout=120s || true
kubectl get nodes -o wide
kubectl get pods -o wide
cat <<MSG

The lab is up.
  export KUBECONFIG=$KUBECONFIG
  kubectl get svc svc-clusterip
  ./target/debug/dari lab exec myk8s-control-plane -- curl -s \$(kubectl get svc svc-clusterip -o jsonpath={.spec.clusterIP}):9000
Tear it down with: ./target/debug/dari lab down
MSG
