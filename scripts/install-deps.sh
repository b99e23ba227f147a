#!/usr/bin/env bash
# Installs what dari's build, lab and tests need on Debian 12 (as root). Idempotent and quiet
# when everything is already there.
set -euo pipefail
pkgs=(
  kubectl python3-kubernetes            # real clients driven by the tests
  nftables iproute2 conntrack tcpdump iputils-ping util-linux curl   # the node network and its inspection
  containernetworking-plugins           # reference CNI plugins (delegate IPAM, benchmarks)
  golang-go golang-github-appc-cni-dev  # builds libcni's cnitool, a real CNI runtime for the tests
  dnsutils                              # dig, for DNS tests
  containerd runc busybox-static        # the node runtime and the lab's stand-in images
  dnsmasq nginx binutils openssl        # the lab's in-lab resolver, the nginx stand-in image, strip, cert checks
  hyperfine                             # benchmarks
  pkg-config etcd-server etcd-client protobuf-compiler
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "==> installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
