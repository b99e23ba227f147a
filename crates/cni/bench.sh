#!/usr/bin/env bash
# ADD+DEL latency of dari-cni vs the reference bridge + host-local (/usr/lib/cni), side by side
# in one hyperfine run, plus bare start-up (CNI_COMMAND=VERSION). Needs root, hyperfine,
# containernetworking-plugins, iproute2. Everything runs inside a throwaway "node" netns.
#   usage: crates/cni/bench.sh            (N=200 runs each; BIN=path/to/dari-cni to skip the build)
set -euo pipefail
N=${N:-200}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
if [ -z "${BIN:-}" ]; then
  (cd "$root" && cargo build --release -p dari-cni >&2)
  BIN=$root/target/release/dari-cni
fi
for t in hyperfine nsenter ip /usr/lib/cni/bridge /usr/lib/cni/host-local; do
  command -v "$t" >/dev/null || { echo "missing $t (apt-get install hyperfine containernetworking-plugins iproute2)" >&2; exit 1; }
done
node=dcnib-node-$$; pod=dcnib-pod-$$
work=$(mktemp -d)
cleanup() { ip netns del "$node" 2>/dev/null || true; ip netns del "$pod" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
ip netns add "$node"; ip netns add "$pod"
mkdir -p "$work/bin"
ln -s "$BIN" "$work/bin/dari-bridge"
cat > "$work/dari.json" <<J
{"cniVersion":"1.0.0","name":"bench-dari","type":"dari-bridge","bridge":"bdari0","isGateway":true,"isDefaultGateway":true,
 "ipam":{"type":"dari-host-local","dataDir":"$work/data","ranges":[[{"subnet":"10.98.0.0/24"}]]}}
J
cat > "$work/ref.json" <<J
{"cniVersion":"1.0.0","name":"bench-ref","type":"bridge","bridge":"bref0","isGateway":true,"isDefaultGateway":true,
 "ipam":{"type":"host-local","dataDir":"$work/data","ranges":[[{"subnet":"10.99.0.0/24"}]]}}
J
for v in dari ref; do
  if [ $v = dari ]; then plugin=$work/bin/dari-bridge; path=$work/bin; else plugin=/usr/lib/cni/bridge; path=/usr/lib/cni; fi
  cat > "$work/$v.sh" <<S
#!/bin/sh
export CNI_CONTAINERID=bench-$v CNI_NETNS=/var/run/netns/$pod CNI_IFNAME=eth$v CNI_PATH=$path
CNI_COMMAND=ADD $plugin < $work/$v.json > /dev/null || exit 1
CNI_COMMAND=DEL $plugin < $work/$v.json > /dev/null || exit 1
S
  chmod +x "$work/$v.sh"
done
in_node() { nsenter --net=/var/run/netns/"$node" "$@"; }
in_node hyperfine -N --warmup 5 --runs "$N" --export-json "$work/adddel.json" \
  -n "dari-cni ADD+DEL" "$work/dari.sh" -n "reference bridge+host-local ADD+DEL" "$work/ref.sh" >&2
in_node hyperfine -N --warmup 5 --runs "$N" --export-json "$work/startup.json" \
  -n "dari-cni VERSION (start-up)" "env CNI_COMMAND=VERSION $work/bin/dari-bridge" \
  -n "reference bridge VERSION (start-up)" "env CNI_COMMAND=VERSION /usr/lib/cni/bridge" >&2
/usr/bin/python3 - "$work/adddel.json" "$work/startup.json" "$BIN" <<'P'
import json, os, statistics, sys
def q(xs, p):
    xs = sorted(xs); k = (len(xs) - 1) * p; f = int(k); c = min(f + 1, len(xs) - 1)
    return xs[f] + (xs[c] - xs[f]) * (k - f)
for f in sys.argv[1:3]:
    rs = json.load(open(f))["results"]
    for r in rs:
        t = r["times"]
        print(f'{r["command"]:<42} median {statistics.median(t)*1e3:7.2f} ms   p99 {q(t, .99)*1e3:7.2f} ms   n={len(t)}')
    a, b = (statistics.median(r["times"]) for r in rs)
    print(f'  ratio reference/dari (median): {b / a:.2f}x')
print(f'binary: {sys.argv[3]} ({os.path.getsize(sys.argv[3]) / 1e6:.1f} MB)')
P
