#!/usr/bin/env bash
# Installs what is missing, builds dari, starts `dari server` in the background with its data in
# /var/lib/dari, and applies a demo. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
echo "==> building dari (release)"
cargo build --release --quiet -p dari
DATA=${DARI_DATA_DIR:-/var/lib/dari}
mkdir -p "$DATA"
if [ -f "$DATA/server.pid" ] && kill -0 "$(cat "$DATA/server.pid")" 2>/dev/null; then
  echo "==> dari server already running (pid $(cat "$DATA/server.pid"))"
else
  echo "==> starting dari server (log: $DATA/server.log)"
  nohup ./target/release/dari server --data-dir "$DATA" >"$DATA/server.log" 2>&1 &
  echo $! >"$DATA/server.pid"
fi
export KUBECONFIG="$DATA/admin.kubeconfig"
for i in $(seq 1 100); do
  if [ -f "$KUBECONFIG" ] && kubectl get --raw /readyz >/dev/null 2>&1; then break; fi
  if ! kill -0 "$(cat "$DATA/server.pid")" 2>/dev/null; then echo "dari server exited:"; tail -20 "$DATA/server.log"; exit 1; fi
  sleep 0.2
done
kubectl get --raw /readyz >/dev/null
echo "==> demo: the hard-way nginx deployment and the ClusterIP scenario's service"
kubectl apply -f examples/demo.yaml
kubectl get ns
kubectl get deploy,svc,endpoints -n demo -o wide
cat <<MSG

dari server is up.
  export KUBECONFIG=$KUBECONFIG
  kubectl get svc -A
Stop it with: kill \$(cat $DATA/server.pid)
MSG
