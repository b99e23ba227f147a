#!/usr/bin/env bash
# dnsperf on loopback, in one run: dari-dns vs dnsmasq vs knot-resolver (kresd) serving the same 10,000
# names, and dari's cached forwarding (upstream: that dnsmasq) vs the peers on the external names.
# One dari process holds the whole cluster (10,000 ClusterIP + 1,000 headless Services, 30,000
# endpoints) and forwards, as in a cluster. Roles of the peers:
#   dnsmasq  answers the cluster names and the external names from one hosts file (it is also the
#            upstream of dari and kresd); its "ext" figure is answers from its own hosts table, shown
#            for reference only: it is not forwarding.
#   dnsmasq-fwd  a second dnsmasq that forwards everything to that upstream through its cache (the
#            same job as dari's cached forwarding), warmed with one pass like dari's.
#   kresd    answers the cluster names from its hints module (hosts-cluster: cluster names only) and
#            forwards everything else to the dnsmasq upstream through its cache (policy.FORWARD), i.e.
#            the same job as dari; its cache is warmed with one pass like dari's. Checked before
#            measuring: cluster names never go upstream.
# The faster peer per mode (by median) is the one dari is compared with.
# Servers are pinned to CPU 0 (kresd is one process per core: a single kresd) and dnsperf to CPU 1,
# so every QPS figure is per core. The machine is shared and noisy, so runs are interleaved
# (dari, dnsmasq, kresd, dari, ...) for ROUNDS rounds and medians compared. Latency percentiles come
# from separate runs at a fixed rate (dnsperf -Q, -v).
# Needs apt packages dnsperf, dnsmasq, knot-resolver, dnsutils. Only loopback addresses are used; all
# state (kresd cache and control socket included) lives in a temp dir removed at exit.
#   bash crates/dns/bench/run.sh [SECONDS] [ROUNDS] [LATENCY_QPS]
set -euo pipefail
SECS=${1:-10}
ROUNDS=${2:-3}
LQPS=${3:-20000}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
for t in dnsperf dnsmasq kresd dig taskset python3; do
  command -v "$t" >/dev/null || {
    echo "missing $t: apt-get install -y dnsperf dnsmasq knot-resolver dnsutils util-linux" >&2; exit 1; }
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

DARI=127.0.0.1:53531; MASQ=127.0.0.1:53533; KRES=127.0.0.1:53535; MFWD=127.0.0.1:53537
taskset -c 0 dnsmasq --keep-in-foreground --port=53533 --listen-address=127.0.0.1 --bind-interfaces \
  --no-resolv --no-hosts --addn-hosts="$W/hosts" --local-ttl=300 --cache-size=10000 --user=root \
  --pid-file="$W/dnsmasq.pid" --log-facility=- --quiet-dhcp 2>"$W/dnsmasq.log" &
PIDS+=($!); MASQ_PID=$!
taskset -c 0 dnsmasq --keep-in-foreground --port=53537 --listen-address=127.0.0.1 --bind-interfaces \
  --no-resolv --no-hosts --server=127.0.0.1#53533 --cache-size=10000 --user=root \
  --pid-file="$W/dnsmasq-fwd.pid" --log-facility=- --quiet-dhcp 2>"$W/dnsmasq-fwd.log" &
PIDS+=($!); MFWD_PID=$!
taskset -c 0 "$SERVE" "$W/objects.json" "$DARI" 127.0.0.1:0 "$MASQ" >"$W/dari.log" 2>&1 &
PIDS+=($!); DARI_PID=$!
# kresd 5.x: one process. Modules that send queries of their own (root priming, time-skew checks,
# trust-anchor updates) or only serve DNSSEC/systemd are unloaded: no trust anchor, as dnsmasq and dari
# do not validate either; the rest of the default pipeline (iterate, cache, policy, hints) stays.
mkdir -p "$W/kresd"
cat >"$W/kresd.conf" <<KRESD_CONF
net.listen('${KRES%:*}', ${KRES#*:}, { kind = 'dns' })
modules = { 'hints > iterate' }
for _, m in ipairs({ 'priming', 'detect_time_skew', 'detect_time_jump', 'ta_update', 'ta_signal_query',
                     'ta_sentinel', 'validate', 'watchdog', 'refuse_nord', 'extended_error',
                     'edns_keepalive' }) do modules.unload(m) end
trust_anchors.remove('.')
hints.add_hosts('$W/hosts-cluster')
hints.ttl(300)
cache.open(100 * MB, 'lmdb://$W/kresd/cache')
policy.add(policy.all(policy.FORWARD('${MASQ%:*}@${MASQ#*:}')))
KRESD_CONF
(cd "$W/kresd" && exec taskset -c 0 kresd -n -c "$W/kresd.conf" "$W/kresd" >"$W/kresd.log" 2>&1) &
PIDS+=($!); KRES_PID=$!
# kresd counters over its control socket: prints "queries_answered queries_sent_upstream"
kstat() {
  python3 - "$W/kresd/control/$KRES_PID" <<'PY'
import re, socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])
s.sendall(b"'KSTAT '..worker.stats().queries..' '..(worker.stats().ipv4 + worker.stats().ipv6)\n")
buf, pat = b"", re.compile(rb"KSTAT (\d+) (\d+)")
while not pat.search(buf):
    chunk = s.recv(4096)
    if not chunk:
        sys.exit("kresd control socket closed: " + buf.decode(errors="replace"))
    buf += chunk
print(" ".join(x.decode() for x in pat.search(buf).groups()))
PY
}

wait_for() { # addr name
  for _ in $(seq 1 200); do
    # dig +short prints its errors ("connection refused", "timed out") on stdout: wait for an address
    if dig @"${1%:*}" -p "${1#*:}" +short +time=1 +tries=1 "$2" A 2>/dev/null | grep -Eq '^[0-9.]+$'; then
      return 0
    fi
    sleep 0.1
  done
  echo "server $1 never answered $2" >&2; cat "$W"/*.log >&2; exit 1
}
wait_for $DARI svc-1.bench.svc.cluster.local
wait_for $MASQ svc-1.bench.svc.cluster.local
wait_for $KRES svc-1.bench.svc.cluster.local
wait_for $DARI ext-1.example
wait_for $KRES ext-1.example
wait_for $MFWD ext-1.example
# each server must give the hosts file's answers (a cluster name and an external name)
for a in $DARI $MASQ $KRES $MFWD; do
  for n in svc-9999.bench.svc.cluster.local=10.96.39.250 ext-9999.example=192.0.39.250; do
    got=$(dig @"${a%:*}" -p "${a#*:}" +short +time=2 +tries=1 "${n%=*}" A 2>&1 || true)
    [ "$got" = "${n#*=}" ] || { echo "server $a answered '$got' for ${n%=*}, want ${n#*=}" >&2; exit 1; }
  done
done
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
# the same for the forwarding dnsmasq
taskset -c 1 dnsperf -s 127.0.0.1 -p "${MFWD#*:}" -d "$W/queries-ext.txt" -n 1 -c 8 -q 100 >/dev/null 2>&1
# the same for kresd, then check that a full pass over the cluster names sends nothing upstream (hints answer)
KRES_RSS_START=$(rss $KRES_PID)
taskset -c 1 dnsperf -s 127.0.0.1 -p "${KRES#*:}" -d "$W/queries-ext.txt" -n 1 -c 8 -q 100 >/dev/null 2>&1
read -r KQ0 KU0 <<<"$(kstat)"
taskset -c 1 dnsperf -s 127.0.0.1 -p "${KRES#*:}" -d "$W/queries-cluster.txt" -n 1 -c 8 -q 100 >/dev/null 2>&1
read -r KQ1 KU1 <<<"$(kstat)"
[ "$KQ1" -ge $((KQ0 + 10000)) ] || { echo "kresd answered only $((KQ1 - KQ0)) of 10000 cluster queries" >&2; exit 1; }
[ "$KU1" -eq "$KU0" ] || { echo "kresd sent $((KU1 - KU0)) cluster queries upstream (hints not answering)" >&2; exit 1; }
echo "kresd check: the warm-up pass over 10,000 external names sent $KU0 queries upstream;" \
  "a pass over the 10,000 cluster names sent $((KU1 - KU0))"
KRES_RSS_WARM=$(rss $KRES_PID)

echo "== dnsperf -l $SECS -c 8 -q 200, $ROUNDS interleaved rounds; servers on CPU 0, dnsperf on CPU 1"
printf "%-5s %-32s %12s %10s %6s %10s\n" round run qps completed lost avg_lat_s
declare -A Q
for r in $(seq 1 "$ROUNDS"); do
  for spec in "dari-cluster $DARI queries-cluster.txt" "dnsmasq-cluster $MASQ queries-cluster.txt" \
              "kresd-cluster $KRES queries-cluster.txt" "dari-cached-forward $DARI queries-ext.txt" \
              "dnsmasq-ext $MASQ queries-ext.txt" "dnsmasq-cached-forward $MFWD queries-ext.txt" \
              "kresd-cached-forward $KRES queries-ext.txt"; do
    set -- $spec
    res=$(perf "$2" "$W/$3")
    printf "%-5s %-32s %12.0f %10s %6s %10s\n" "$r" "$1" $res
    Q[$1]="${Q[$1]:-} $(cut -d' ' -f1 <<<"$res")"
  done
done
echo "== medians (QPS on one core)"
for k in dari-cluster dnsmasq-cluster kresd-cluster dari-cached-forward dnsmasq-ext dnsmasq-cached-forward kresd-cached-forward; do
  printf "%-22s %10.0f  (runs:%s)\n" "$k" "$(tr ' ' '\n' <<<"${Q[$k]}" | grep . | median)" "${Q[$k]}"
done
m() { tr ' ' '\n' <<<"${Q[$1]}" | grep . | median; }
echo "ratio dari/dnsmasq, cluster names (median): $(python3 -c "print(round($(m dari-cluster)/$(m dnsmasq-cluster), 2))")"
echo "ratio dari cached forwarding/dnsmasq cached forwarding (median): $(python3 -c "print(round($(m dari-cached-forward)/$(m dnsmasq-cached-forward), 2))")"
echo "ratio dari cached forwarding/dnsmasq answering from its hosts table (median, reference): $(python3 -c "print(round($(m dari-cached-forward)/$(m dnsmasq-ext), 2))")"
echo "ratio dari/kresd, cluster names (median): $(python3 -c "print(round($(m dari-cluster)/$(m kresd-cluster), 2))")"
echo "ratio dari cached forwarding/kresd cached forwarding (median): $(python3 -c "print(round($(m dari-cached-forward)/$(m kresd-cached-forward), 2))")"
best() { # dari-key peer-key... : prints "best-peer its-median dari/it"
  python3 -c "import sys
d, peers = float(sys.argv[1]), list(zip(sys.argv[2::2], map(float, sys.argv[3::2])))
k, v = max(peers, key=lambda p: p[1]); print(k, round(v), round(d / v, 2))" "$(m "$1")" \
    "$2" "$(m "$2")" "$3" "$(m "$3")"
}
read -r BC BCM BCR <<<"$(best dari-cluster dnsmasq-cluster kresd-cluster)"
read -r BE BEM BER <<<"$(best dari-cached-forward dnsmasq-cached-forward kresd-cached-forward)"
echo "faster peer, cluster names: $BC (median $BCM); ratio dari/best peer: $BCR"
echo "faster peer, external names: $BE (median $BEM); ratio dari cached forwarding/best peer: $BER"
echo "CoreDNS anchor: 33.7k QPS on 2 vCPU = 16.9k per core; dari cluster names per core / that: $(python3 -c "print(round($(m dari-cluster)/16850, 2))")"

echo "== latency at a fixed $LQPS QPS, 3 s each (p50 p90 p99 p99.9 max, microseconds)"
for spec in "dari-cluster $DARI queries-cluster.txt" "dnsmasq-cluster $MASQ queries-cluster.txt" \
            "kresd-cluster $KRES queries-cluster.txt" "dari-cached-forward $DARI queries-ext.txt" \
            "dnsmasq-ext $MASQ queries-ext.txt" "dnsmasq-cached-forward $MFWD queries-ext.txt" \
            "kresd-cached-forward $KRES queries-ext.txt"; do
  set -- $spec
  printf "%-22s %s\n" "$1" "$(lat "$2" "$W/$3")"
done

RSS_END=$(rss $DARI_PID)
echo "== RSS KiB: dari with 10,000 ClusterIP + 1,000 headless Services and 30,000 endpoints: $RSS_START before" \
  "any query, $RSS_WARM with the forwarding cache full (10,000 entries), $RSS_END at the end; dnsmasq $(rss $MASQ_PID), forwarding dnsmasq $(rss $MFWD_PID)"
echo "== RSS KiB: kresd with 10,000 hints (counts the lmdb cache pages it has mapped): $KRES_RSS_START before any query," \
  "$KRES_RSS_WARM with the cache warm (10,000 external names), $(rss $KRES_PID) at the end"
read -r KQ2 KU2 <<<"$(kstat)"
echo "kresd totals: $KQ2 queries answered, $KU2 sent upstream"
echo "CoreDNS anchor for 10,000 Services + 30,000 endpoints: (40,000 / 1000 + 54) MB = 94 MB; half = 47 MB = 48128 KiB"
grep -h "rss" "$W/dari.log"
