#!/usr/bin/env bash
# Reproduces the throughput table of docs/benchmarks.md:
#   bench/throughput.sh [--seconds N] [--connections N] ...
# Installs nginx and wrk (apt) and the published vllm-router (pip, in a virtualenv
# under target/), builds this router in release mode, then runs bench/throughput.py.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
  apt-get update -qq && apt-get install -y -qq nginx-light wrk
fi
venv=target/published-venv
if [ ! -x "$venv/bin/vllm-router" ]; then
  python3 -m venv "$venv" && "$venv/bin/pip" install -q vllm-router
fi
cargo build --release -p vllm-router
exec python3 bench/throughput.py --published "$venv/bin/vllm-router" "$@"
