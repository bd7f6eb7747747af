#!/usr/bin/env bash
# Reproduces the routing-quality table of docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins
exec python3 bench/routing_quality.py "$@"
