#!/usr/bin/env bash
# Reproduces docs/benchmarks.md on one machine (2+ CPUs, Linux with io_uring):
#   bench/compare.sh [--quick]
# Installs nginx and wrk (apt) and the published vllm-router (pip, in a virtualenv
# under target/), builds this router, the mock worker and vllm-router-bench in release
# mode, then runs each benchmark in turn. Tables print as they finish; JSON and SVG
# outputs go to target/bench-*/.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
[ "${1:-}" = "--quick" ] && quick=1

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
  apt-get update -qq && apt-get install -y -qq nginx-light wrk
fi
venv=target/published-venv
if [ ! -x "$venv/bin/vllm-router" ]; then
  python3 -m venv "$venv" && "$venv/bin/pip" install -q vllm-router
fi
cargo build --release --workspace

secs=8; rounds=3; lat=20; pdn=2000
if [ "$quick" = 1 ]; then secs=3; rounds=1; lat=5; pdn=300; fi

echo "== 1. Throughput and CPU per request (docs/benchmarks.md §1b) =="
python3 bench/throughput.py --published "$venv/bin/vllm-router" --pin \
  --seconds "$secs" --rounds "$rounds" --connections 64

echo "== 2. Streaming latency at a moderate rate (§7) =="
python3 bench/latency.py --published "$venv/bin/vllm-router" --relay --duration "$lat"

echo "== 3. Router's own time per P/D request (§6) =="
python3 bench/pd_overhead.py --requests "$pdn"
python3 bench/pd_overhead.py --requests "$pdn" --stream

echo "== 4. Routing quality (§3) =="
python3 bench/routing_quality.py

echo "== 5. Memory per idle keep-alive connection (§10) =="
idle=10000,18000
[ "$quick" = 1 ] && idle=2000
python3 bench/idle_connections.py --published "$venv/bin/vllm-router" --connections "$idle"
