#!/usr/bin/env bash
# dnsperf on loopback, in one run: dari-dns vs dnsmasq serving the same 10,000 names, and dari's cached
# forwarding (upstream: that dnsmasq) vs dnsmasq itself. One dari process holds the whole cluster
# (10,000 ClusterIP + 1,000 headless Services, 30,000 endpoints) and forwards, as in a cluster.
# Servers are pinned to CPU 0 and dnsperf to CPU 1, so every QPS figure is per core. The machine is
# shared and noisy, so runs are interleaved (dari, dnsmasq, dari, dnsmasq ...) for ROUNDS rounds and
# medians compared. Latency percentiles come from separate runs at a fixed rate (dnsperf -Q, -v).
# Needs apt packages dnsperf, dnsmasq, dnsutils. Only loopback addresses are used.
#   bash crates/dns/bench/run.sh [SECONDS] [ROUNDS] [LATENCY_QPS]
set -euo pipefail
SECS=${1:-10}
ROUNDS=${2:-3}
LQPS=${3:-20000}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
for t in dnsperf dnsmasq dig taskset python3; do
  command -v "$t" >/dev/null || { echo "missing $t: apt-get install dnsperf dnsmasq dnsutils util-linux" >&2; exit 1; }
done
W=$(mktemp -d /tmp/dari-dns-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT
python3 "$HERE/gen.py" "$W"
# DARI_DNS_SERVE: a prebuilt `serve` example binary (skips the release build)
SERVE=${DARI_DNS_SERVE:-}
if [ -z "$SERVE" ]; then
  (cd "$ROOT" && cargo build --release -p dari-dns --example serve >&2)
  SERVE=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/serve
fi

DARI=127.0.0.1:53531; MASQ=127.0.0.1:53533
taskset -c 0 dnsmasq --keep-in-foreground --port=53533 --listen-address=127.0.0.1 --bind-interfaces \
  --no-resolv --no-hosts --addn-hosts="$W/hosts" --local-ttl=300 --cache-size=10000 --user=root \
  --pid-file="$W/dnsmasq.pid" --log-facility=- --quiet-dhcp 2>"$W/dnsmasq.log" &
PIDS+=($!); MASQ_PID=$!
taskset -c 0 "$SERVE" "$W/objects.json" "$DARI" 127.0.0.1:0 "$MASQ" >"$W/dari.log" 2>&1 &
PIDS+=($!); DARI_PID=$!

wait_for() { # addr name
  for _ in $(seq 1 200); do
    if [ -n "$(dig @"${1%:*}" -p "${1#*:}" +short +time=1 +tries=1 "$2" A 2>/dev/null)" ]; then return 0; fi
    sleep 0.1
  done
  echo "server $1 never answered $2" >&2; cat "$W"/*.log >&2; exit 1
}
wait_for $DARI svc-1.bench.svc.cluster.local
wait_for $MASQ svc-1.bench.svc.cluster.local
wait_for $DARI ext-1.example
rss() { awk '/VmRSS/{print $2}' /proc/"$1"/status; }
RSS_START=$(rss $DARI_PID)

# one saturating run: prints "qps completed lost avg_latency"
perf() { # addr queries
  local out
  out=$(taskset -c 1 dnsperf -s "${1%:*}" -p "${1#*:}" -d "$2" -l "$SECS" -c 8 -q 200 -S 0 2>&1)
  awk '/Queries per second/{q=$4} /Queries completed/{c=$3} /Queries lost/{l=$3} /Average Latency/{a=$4}
       END{print q, c, l, a}' <<<"$out"
}
# fixed-rate run with per-query output: prints "p50 p90 p99 p99.9 max" in microseconds
lat() { # addr queries
  taskset -c 1 dnsperf -s "${1%:*}" -p "${1#*:}" -d "$2" -l 3 -c 8 -q 200 -Q "$LQPS" -v 2>/dev/null |
    awk '/^> /{print $NF * 1e6}' | sort -n |
    awk '{v[NR]=$1} END{if(NR==0){print "none"; exit}
         printf "%d %d %d %d %d\n", v[int(NR*0.5)+1], v[int(NR*0.9)+1], v[int(NR*0.99)+1], v[int(NR*0.999)+1], v[NR]}'
}
median() { sort -g | awk '{v[NR]=$1} END{print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }

# warm dari's forwarding cache with one pass over the external names (all 10,000 fit: cache size 10,000)
taskset -c 1 dnsperf -s 127.0.0.1 -p 53531 -d "$W/queries-ext.txt" -n 1 -c 8 -q 100 >/dev/null 2>&1
RSS_WARM=$(rss $DARI_PID)

echo "== dnsperf -l $SECS -c 8 -q 200, $ROUNDS interleaved rounds; servers on CPU 0, dnsperf on CPU 1"
printf "%-5s %-32s %12s %10s %6s %10s\n" round run qps completed lost avg_lat_s
declare -A Q
for r in $(seq 1 "$ROUNDS"); do
  for spec in "dari-cluster $DARI queries-cluster.txt" "dnsmasq-cluster $MASQ queries-cluster.txt" \
              "dari-cached-forward $DARI queries-ext.txt" "dnsmasq-ext $MASQ queries-ext.txt"; do
    set -- $spec
    res=$(perf "$2" "$W/$3")
    printf "%-5s %-32s %12.0f %10s %6s %10s\n" "$r" "$1" $res
    Q[$1]="${Q[$1]:-} $(cut -d' ' -f1 <<<"$res")"
  done
done
echo "== medians (QPS on one core)"
for k in dari-cluster dnsmasq-cluster dari-cached-forward dnsmasq-ext; do
  printf "%-22s %10.0f  (runs:%s)\n" "$k" "$(tr ' ' '\n' <<<"${Q[$k]}" | grep . | median)" "${Q[$k]}"
done
m() { tr ' ' '\n' <<<"${Q[$1]}" | grep . | median; }
echo "ratio dari/dnsmasq, cluster names (median): $(python3 -c "print(round($(m dari-cluster)/$(m dnsmasq-cluster), 2))")"
echo "ratio dari cached forwarding/dnsmasq (median): $(python3 -c "print(round($(m dari-cached-forward)/$(m dnsmasq-ext), 2))")"
echo "CoreDNS anchor: 33.7k QPS on 2 vCPU = 16.9k per core; dari cluster names per core / that: $(python3 -c "print(round($(m dari-cluster)/16850, 2))")"

echo "== latency at a fixed $LQPS QPS, 3 s each (p50 p90 p99 p99.9 max, microseconds)"
for spec in "dari-cluster $DARI queries-cluster.txt" "dnsmasq-cluster $MASQ queries-cluster.txt" \
            "dari-cached-forward $DARI queries-ext.txt" "dnsmasq-ext $MASQ queries-ext.txt"; do
  set -- $spec
  printf "%-22s %s\n" "$1" "$(lat "$2" "$W/$3")"
done

RSS_END=$(rss $DARI_PID)
echo "== RSS KiB: dari with 10,000 ClusterIP + 1,000 headless Services and 30,000 endpoints: $RSS_START before" \
  "any query, $RSS_WARM with the forwarding cache full (10,000 entries), $RSS_END at the end; dnsmasq $(rss $MASQ_PID)"
echo "CoreDNS anchor for 10,000 Services + 30,000 endpoints: (40,000 / 1000 + 54) MB = 94 MB; half = 47 MB = 48128 KiB"
grep -h "rss" "$W/dari.log"
