#!/usr/bin/env bash
# Builds and runs vllm-router on 127.0.0.1:30000 in front of the vLLM URLs given as
# arguments, or, with none, in front of two bundled mock workers (:8001, :8002).
#   bench/run-local.sh                          # mock workers
#   bench/run-local.sh http://gpu-1:8000 ...    # real vLLM
# Extra router flags go in ROUTER_ARGS, e.g. ROUTER_ARGS="--policy random".
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins
bin="${CARGO_TARGET_DIR:-target}/release"
pids=()
cleanup() { [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT
if [ $# -eq 0 ]; then
  for port in 8001 8002; do
    # Each publishes vLLM KV events (port + 10000, replay port + 10100), for
    # ROUTER_ARGS="--policy kv_aware".
    "$bin/mock-vllm" --port "$port" --token-delay-us 20000 --kv-events-port $((port + 10000)) \
      --kv-events-replay-port $((port + 10100)) &
    pids+=($!)
  done
  # Let the mocks listen before the router's first health check.
  for port in 8001 8002; do
    for _ in $(seq 50); do
      (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
      sleep 0.1
    done
  done
  set -- http://127.0.0.1:8001 http://127.0.0.1:8002
fi
# shellcheck disable=SC2086
"$bin/vllm-router" --worker-startup-check-interval 2 ${ROUTER_ARGS:-} --worker-urls "$@"
