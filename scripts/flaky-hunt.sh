#!/usr/bin/env bash
# Runs the whole suite again and again with every core kept busy, and counts
# what fails. A test that fails here one run in ten fails CI one run in ten.
#
#   scripts/flaky-hunt.sh            # 10 runs, one busy loop per core
#   RUNS=20 BUSY=4 scripts/flaky-hunt.sh
#   scripts/flaky-hunt.sh --test pubsub   # arguments go to `cargo test`
#
# The busy loops are `stress-ng --cpu N` when it is installed, else one shell
# loop per core. Each run's output is kept in $OUT (default
# target/flaky-hunt/); the summary lists every failed test with its count.
# Exits non-zero when any run failed.
set -uo pipefail
cd "$(dirname "$0")/.."

runs=${RUNS:-10}
busy=${BUSY:-$(nproc)}
out=${OUT:-target/flaky-hunt}
mkdir -p "$out"
rm -f "$out"/run-*.log

# Build first, quietly and without the load, so every run measures tests.
cargo test --no-run "$@" >"$out/build.log" 2>&1 || {
    echo "flaky-hunt: the suite does not build; see $out/build.log" >&2
    exit 2
}

pids=()
stop_load() { [ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; }
trap stop_load EXIT
if command -v stress-ng >/dev/null 2>&1; then
    stress-ng --cpu "$busy" --quiet >/dev/null 2>&1 &
    pids+=($!)
else
    for _ in $(seq "$busy"); do
        ( while :; do :; done ) &
        pids+=($!)
    done
fi
echo "flaky-hunt: $runs runs of cargo test $* beside $busy busy loops"

failed_runs=0
for i in $(seq "$runs"); do
    start=$(date +%s)
    if cargo test --no-fail-fast "$@" >"$out/run-$i.log" 2>&1; then
        verdict=ok
    else
        verdict=FAILED
        failed_runs=$((failed_runs + 1))
    fi
    echo "run $i: $verdict in $(( $(date +%s) - start )) s"
done

echo "flaky-hunt: $failed_runs of $runs runs failed"
# libtest prints a failed test as `test NAME ... FAILED`.
grep -h -- '\.\.\. FAILED$' "$out"/run-*.log 2>/dev/null \
    | sed 's/^test //; s/ \.\.\. FAILED$//' | sort | uniq -c | sort -rn
[ "$failed_runs" -eq 0 ]
