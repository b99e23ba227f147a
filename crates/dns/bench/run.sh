#!/usr/bin/env bash
# dnsperf on loopback: dari-dns vs dnsmasq serving the same 10,000 names, and dari's cached forwarding
# (upstream: that dnsmasq) vs dnsmasq itself. Servers are pinned to CPU 0, dnsperf to CPU 1, so QPS is
# per core. Needs apt packages dnsperf, dnsmasq, dnsutils. Only loopback addresses are used.
#   bash crates/dns/bench/run.sh [SECONDS]
set -euo pipefail
SECS=${1:-10}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
for t in dnsperf dnsmasq dig taskset; do
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

DARI=127.0.0.1:53531; DARIFWD=127.0.0.1:53532; MASQ=127.0.0.1:53533
taskset -c 0 dnsmasq --keep-in-foreground --port=53533 --listen-address=127.0.0.1 --bind-interfaces \
  --no-resolv --no-hosts --addn-hosts="$W/hosts" --local-ttl=300 --cache-size=10000 --user=root \
  --pid-file="$W/dnsmasq.pid" --log-facility=- --quiet-dhcp 2>"$W/dnsmasq.log" &
PIDS+=($!); MASQ_PID=$!
taskset -c 0 "$SERVE" "$W/objects.json" "$DARI" 127.0.0.1:0 >"$W/dari.log" 2>&1 &
PIDS+=($!); DARI_PID=$!
echo '[]' > "$W/empty.json"
taskset -c 0 "$SERVE" "$W/empty.json" "$DARIFWD" 127.0.0.1:0 "$MASQ" >"$W/darifwd.log" 2>&1 &
PIDS+=($!); FWD_PID=$!

wait_for() { # addr name
  for _ in $(seq 1 100); do
    if [ -n "$(dig @"${1%:*}" -p "${1#*:}" +short +time=1 +tries=1 "$2" A 2>/dev/null)" ]; then return 0; fi
    sleep 0.1
  done
  echo "server $1 never answered $2" >&2; cat "$W"/*.log >&2; exit 1
}
wait_for $DARI svc-1.bench.svc.cluster.local
wait_for $MASQ svc-1.bench.svc.cluster.local
wait_for $DARIFWD ext-1.example

perf() { # label addr queries
  local out
  out=$(taskset -c 1 dnsperf -s "${2%:*}" -p "${2#*:}" -d "$3" -l "$SECS" -c 8 -q 200 -S 0 2>&1)
  local qps lat comp lost
  qps=$(awk '/Queries per second/{print $4}' <<<"$out")
  lat=$(awk '/Average Latency/{print $4, $6, $8, $10}' <<<"$out" | tr -d '(,)')
  comp=$(awk '/Queries completed/{print $3}' <<<"$out")
  lost=$(awk '/Queries lost/{print $3}' <<<"$out")
  printf "%-34s qps=%-12s completed=%-9s lost=%-6s latency(avg min max sd, s)=%s\n" "$1" "$qps" "$comp" "$lost" "$lat"
  echo "$qps"
}

echo "== dnsperf -l $SECS -c 8 -q 200, servers on CPU 0, dnsperf on CPU 1"
# warm dari's forwarding cache with one pass over the external names
taskset -c 1 dnsperf -s 127.0.0.1 -p 53532 -d "$W/queries-ext.txt" -n 1 -q 200 >/dev/null 2>&1
R1=$(perf "dari  cluster names (10,000)" $DARI "$W/queries-cluster.txt" | tee /dev/stderr | tail -1)
R2=$(perf "dnsmasq same names (hosts file)" $MASQ "$W/queries-cluster.txt" | tee /dev/stderr | tail -1)
R3=$(perf "dari  cached forwarding (ext names)" $DARIFWD "$W/queries-ext.txt" | tee /dev/stderr | tail -1)
R4=$(perf "dnsmasq same ext names (hosts file)" $MASQ "$W/queries-ext.txt" | tee /dev/stderr | tail -1)
echo "ratio dari/dnsmasq cluster names: $(python3 -c "print(round($R1/$R2, 2))")"
echo "ratio dari-cached-forward/dnsmasq: $(python3 -c "print(round($R3/$R4, 2))")"
rss() { awk '/VmRSS/{print $2}' /proc/"$1"/status; }
echo "RSS KiB: dari (10,000 + 1,000 headless Services, 30,000 endpoints) $(rss $DARI_PID); dari forwarder $(rss $FWD_PID); dnsmasq $(rss $MASQ_PID)"
grep -h "rss" "$W/dari.log"
