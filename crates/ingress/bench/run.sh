#!/usr/bin/env bash
# wrk against dari ingress and against nginx as an equivalent reverse proxy, same two upstreams,
# on loopback, one run. Needs apt packages: wrk nginx.
# Usage: bash crates/ingress/bench/run.sh [RULES=1] [DURATION=10s] [CONNS=64]
set -euo pipefail
RULES=${1:-1}; DUR=${2:-10s}; CONNS=${3:-64}
cd "$(dirname "$0")/../../.."
for t in wrk nginx; do command -v $t >/dev/null || { echo "missing $t: apt-get install -y wrk nginx" >&2; exit 1; }; done
cargo build --release -q -p dari-ingress --example bench_ingress --example bench_upstream
BIN=target/release/examples
W=$(mktemp -d); PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
rss_kb() { local t=0; for p in "$@"; do t=$((t + $(awk '/VmRSS/{print $2}' /proc/$p/status))); done; echo $t; }

$BIN/bench_upstream 127.0.0.1:18081 one & PIDS+=($!)
$BIN/bench_upstream 127.0.0.1:18082 two & PIDS+=($!)
$BIN/bench_ingress 127.0.0.1:18080 "$RULES" 127.0.0.1:18081 127.0.0.1:18082 2>"$W/dari.log" & DARI=$!; PIDS+=($DARI)

# nginx: same upstreams, keepalive pool, one server block per rule (host), like ingress-nginx.
{
  echo "worker_processes 2; pid $W/nginx.pid; error_log $W/error.log warn; daemon off;"
  echo "events { worker_connections 4096; }"
  echo "http { access_log off; server_names_hash_max_size 8192; server_names_hash_bucket_size 128;"
  echo "  upstream up { server 127.0.0.1:18081; server 127.0.0.1:18082; keepalive 64; }"
  echo "  server { listen 127.0.0.1:18090 default_server; return 404; }"
  echo "  server { listen 127.0.0.1:18090; server_name a.com; location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host \$host; proxy_set_header X-Forwarded-For \$remote_addr; proxy_set_header X-Real-IP \$remote_addr; proxy_set_header X-Forwarded-Proto \$scheme; proxy_set_header X-Forwarded-Host \$host; } }"
  for i in $(seq 1 $((RULES - 1))); do
    echo "  server { listen 127.0.0.1:18090; server_name h$i.example.com; location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; } location /api/v$i/ { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
  done
  echo "}"
} > "$W/nginx.conf"
nginx -c "$W/nginx.conf" -p "$W" & NGINX=$!; PIDS+=($NGINX)
wait_port 18081; wait_port 18082; wait_port 18080; wait_port 18090
curl -sf -H 'Host: a.com' http://127.0.0.1:18080/ >/dev/null || { echo "dari ingress not answering"; cat "$W/dari.log"; exit 1; }
curl -sf -H 'Host: a.com' http://127.0.0.1:18090/ >/dev/null || { echo "nginx not answering"; cat "$W/error.log"; exit 1; }
grep built "$W/dari.log" || true

run() { # name port pids...
  local name=$1 port=$2; shift 2
  wrk -t2 -c"$CONNS" -d2s -H 'Host: a.com' "http://127.0.0.1:$port/" >/dev/null  # warm-up
  local out; out=$(wrk -t2 -c"$CONNS" -d"$DUR" --latency -H 'Host: a.com' "http://127.0.0.1:$port/")
  local rps p50 p99 non2xx
  rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
  p50=$(awk '$1=="50%"{print $2}' <<<"$out"); p99=$(awk '$1=="99%"{print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/{print $4}' <<<"$out"); non2xx=${non2xx:-0}
  local pids=("$@")
  if [ "$name" = nginx ]; then pids+=($(pgrep -P "$NGINX" || true)); fi
  printf "%-12s rules=%-5s req/s=%-10s p50=%-9s p99=%-9s rss=%sKiB non2xx=%s\n" "$name" "$RULES" "$rps" "$p50" "$p99" "$(rss_kb "${pids[@]}")" "$non2xx"
}
echo "wrk -t2 -c$CONNS -d$DUR --latency -H 'Host: a.com' (2 cores shared by wrk, proxy and upstreams)"
run dari-ingress 18080 "$DARI"
run nginx 18090 "$NGINX"
