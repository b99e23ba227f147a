#!/usr/bin/env bash
# wrk against dari ingress and against nginx as an equivalent reverse proxy, with the same two
# upstreams, on loopback, in one run: 1 host and 2,000 Ingress rules, rounds interleaved
# (dari-1, nginx-1, dari-2000, nginx-2000, dari-1, ...) because the 2-core machine is shared and
# noisy; prints every round and then the median of each target.
#
# Fairness: nginx `worker_processes` = dari's worker threads = $WORKERS (default 2); both keep idle
# HTTP/1.1 upstream connections (nginx `keepalive 64` per worker, dari up to 128 per endpoint per
# worker: with 64 client connections neither limit is reached); both set X-Forwarded-For/-Proto/
# -Host/-Port and X-Real-IP. dari serves plain HTTP on its HTTP/1.1 fast path (src/h1.rs), its
# default.
# Needs apt packages: wrk nginx.
#
# Usage: bash crates/ingress/bench/run.sh [ROUNDS=5] [DURATION=10s] [CONNS=64] [RULES=2000]
# Env: WORKERS=2 (proxy workers for both), HOST=a.com URLPATH=/ (what wrk requests).
# Columns: req/s, p50, p99 (wrk --latency), rss = VmRSS summed over the proxy's processes after the
# run (nginx: master + workers, so pages shared by them count twice), pss = proportional set size
# (shared pages split between the processes), cpu/req = proxy CPU time (utime+stime) per request.
set -euo pipefail
ROUNDS=${1:-5}; DUR=${2:-10s}; CONNS=${3:-64}; RULES=${4:-2000}
WORKERS=${WORKERS:-2}; HOST=${HOST:-a.com}; URLPATH=${URLPATH:-/}
cd "$(dirname "$0")/../../.."
for t in wrk nginx; do command -v $t >/dev/null || { echo "missing $t: apt-get install -y wrk nginx" >&2; exit 1; }; done
cargo build --release -q -p dari-ingress --example bench_ingress --example bench_upstream
BIN=${BIN:-target/release/examples}
W=$(mktemp -d); PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
rss_kb() { local t=0; for p in "$@"; do t=$((t + $(awk '/VmRSS/{print $2}' /proc/$p/status))); done; echo $t; }
pss_kb() { local t=0; for p in "$@"; do t=$((t + $(awk '/^Pss:/{print $2}' /proc/$p/smaps_rollup))); done; echo $t; }
cpu_ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' /proc/$p/stat))); done; echo $t; }

$BIN/bench_upstream 127.0.0.1:18081 one & PIDS+=($!)
$BIN/bench_upstream 127.0.0.1:18082 two & PIDS+=($!)
BENCH_WORKERS=$WORKERS $BIN/bench_ingress 127.0.0.1:18080 1 127.0.0.1:18081 127.0.0.1:18082 2>"$W/dari-1.log" & DARI1=$!; PIDS+=($DARI1)
BENCH_WORKERS=$WORKERS $BIN/bench_ingress 127.0.0.1:18083 "$RULES" 127.0.0.1:18081 127.0.0.1:18082 2>"$W/dari-$RULES.log" & DARIN=$!; PIDS+=($DARIN)

# nginx: same upstreams, keepalive pool, one server block per Ingress (host), like ingress-nginx.
nginx_conf() { # rules port dir
  local rules=$1 port=$2 d=$3
  local fwd="proxy_set_header Host \$host; proxy_set_header X-Forwarded-For \$remote_addr; proxy_set_header X-Real-IP \$remote_addr; proxy_set_header X-Forwarded-Proto \$scheme; proxy_set_header X-Forwarded-Host \$host; proxy_set_header X-Forwarded-Port \$server_port;"
  local up="proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; $fwd"
  mkdir -p "$d"
  {
    echo "worker_processes $WORKERS; pid $d/nginx.pid; error_log $d/error.log warn; daemon off;"
    echo "events { worker_connections 4096; }"
    echo "http { access_log off; server_names_hash_max_size 8192; server_names_hash_bucket_size 128;"
    echo "  upstream up { server 127.0.0.1:18081; server 127.0.0.1:18082; keepalive 64; }"
    echo "  server { listen 127.0.0.1:$port default_server; return 404; }"
    echo "  server { listen 127.0.0.1:$port; server_name a.com; location / { $up } }"
    for i in $(seq 1 $((rules - 1))); do
      echo "  server { listen 127.0.0.1:$port; server_name h$i.example.com; location / { $up } location /api/v$i/ { $up } }"
    done
    echo "}"
  } > "$d/nginx.conf"
}
nginx_conf 1 18090 "$W/n1"; nginx_conf "$RULES" 18093 "$W/nN"
nginx -c "$W/n1/nginx.conf" -p "$W/n1" & NGINX1=$!; PIDS+=($NGINX1)
nginx -c "$W/nN/nginx.conf" -p "$W/nN" & NGINXN=$!; PIDS+=($NGINXN)
for p in 18081 18082 18080 18083 18090 18093; do wait_port $p; done
for p in 18080 18083 18090 18093; do
  curl -sf -H "Host: $HOST" "http://127.0.0.1:$p$URLPATH" >/dev/null || { echo "proxy on $p not answering"; cat "$W"/*.log "$W"/n*/error.log; exit 1; }
done
grep -h built "$W"/dari-*.log || true

procs() { # pids of a target
  case $1 in
    dari-1) echo "$DARI1";; dari-N) echo "$DARIN";;
    nginx-1) echo "$NGINX1 $(pgrep -P "$NGINX1" | tr '\n' ' ')";; nginx-N) echo "$NGINXN $(pgrep -P "$NGINXN" | tr '\n' ' ')";;
  esac
}
port() { case $1 in dari-1) echo 18080;; dari-N) echo 18083;; nginx-1) echo 18090;; nginx-N) echo 18093;; esac; }
label() { case $1 in *-1) echo "${1%-1} rules=1";; *-N) echo "${1%-N} rules=$RULES";; esac; }
TARGETS=(dari-1 nginx-1 dari-N nginx-N)
for t in "${TARGETS[@]}"; do wrk -t2 -c"$CONNS" -d2s -H "Host: $HOST" "http://127.0.0.1:$(port $t)$URLPATH" >/dev/null; done  # warm-up

echo "wrk -t2 -c$CONNS -d$DUR --latency -H 'Host: $HOST' http://127.0.0.1:PORT$URLPATH; $WORKERS workers each; $(nproc) cores shared by wrk, proxies and upstreams"
RES="$W/results"; : > "$RES"
for r in $(seq 1 "$ROUNDS"); do
  for t in "${TARGETS[@]}"; do
    # shellcheck disable=SC2046
    pids=($(procs "$t")); c0=$(cpu_ticks "${pids[@]}")
    out=$(wrk -t2 -c"$CONNS" -d"$DUR" --latency -H "Host: $HOST" "http://127.0.0.1:$(port "$t")$URLPATH")
    c1=$(cpu_ticks "${pids[@]}")
    rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
    n=$(awk '/requests in/{print $1}' <<<"$out")
    p50=$(awk '$1=="50%"{print $2}' <<<"$out"); p99=$(awk '$1=="99%"{print $2}' <<<"$out")
    bad=$(awk '/Non-2xx/{print $4}' <<<"$out"); bad=${bad:-0}
    errs=$(awk '/Socket errors/{print $0}' <<<"$out")
    cpu_us=$(awk -v c=$((c1 - c0)) -v n="$n" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.1f", c * 1e6 / hz / n}')
    rss=$(rss_kb "${pids[@]}"); pss=$(pss_kb "${pids[@]}")
    printf "round %d %-22s req/s=%-10s p50=%-9s p99=%-9s rss=%sKiB pss=%sKiB cpu/req=%sus non2xx=%s %s\n" "$r" "$(label "$t")" "$rps" "$p50" "$p99" "$rss" "$pss" "$cpu_us" "$bad" "$errs"
    echo "$t $rps $p50 $p99 $rss $cpu_us $pss" >> "$RES"
  done
done
# wrk prints latencies with units (us, ms, s): convert to ms for the median.
echo "median of $ROUNDS rounds:"
for t in "${TARGETS[@]}"; do
  awk -v t="$t" -v lbl="$(label "$t")" '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    function med(a, n,   i, j, x) { for (i = 2; i <= n; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j+1] = a[j]; a[j+1] = x }
      return (n % 2) ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2 }
    $1 == t { n++; rps[n] = $2; p50[n] = ms($3); p99[n] = ms($4); rss[n] = $5; cpu[n] = $6; pss[n] = $7 }
    END { printf "%-22s req/s=%-8.0f p50=%.2fms p99=%.2fms rss=%dKiB pss=%dKiB cpu/req=%.1fus\n", lbl, med(rps, n), med(p50, n), med(p99, n), med(rss, n), med(pss, n), med(cpu, n) }' "$RES"
done
