#!/usr/bin/env bash
# The whole test suite: unit and golden tests, loopback integration (real kubectl, python
# client), and root-only network-namespace tests. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
export CARGO_TERM_COLOR=never
echo "==> cargo build (workspace)"
cargo build --workspace --bins --quiet
echo "==> cargo test (workspace)"
cargo test --workspace --no-fail-fast -- --test-threads=2
