#!/usr/bin/env bash
# Runs every cargo-fuzz target for a given time and prints one summary line each
# (executions, coverage, corpus size). Needs a nightly toolchain and cargo-fuzz:
#   rustup toolchain install nightly && cargo install cargo-fuzz
#   shards/fuzz/run.sh 1800            # 30 minutes per target, one after another
#   JOBS=2 shards/fuzz/run.sh 1800     # two targets at a time
# A crash stops that target and leaves its input in artifacts/<target>/; keep it as a
# unit test in shards/src/codec/fuzz_tests.rs once fixed.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
jobs=${JOBS:-1}
targets=$(cargo +nightly fuzz list)
mkdir -p logs
cargo +nightly fuzz build -O >/dev/null
run() {
    t=$1
    mkdir -p "corpus/$t"
    cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true
    if cargo +nightly fuzz run -O "$t" "corpus/$t" -- -max_total_time="$secs" -print_final_stats=1 \
        >"logs/$t.log" 2>&1; then status=ok; else status="CRASH (logs/$t.log, artifacts/$t/)"; fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$t.log" | grep -o '[0-9]*$' || echo '?')
    cov=$(grep -o 'cov: [0-9]*' "logs/$t.log" | tail -1 | grep -o '[0-9]*' || echo '?')
    ft=$(grep -o 'ft: [0-9]*' "logs/$t.log" | tail -1 | grep -o '[0-9]*' || echo '?')
    echo "$t: ${secs}s, $runs executions, cov $cov edges, ft $ft features, corpus $(ls "corpus/$t" | wc -l) inputs: $status"
}
export -f run; export secs
printf '%s\n' $targets | xargs -P "$jobs" -I{} bash -c 'run {}'
