#!/usr/bin/env bash
# Pub/sub fan-out and publish throughput, wheel-server and redis-server
# alternating in one sitting (BENCHMARKS.md, "Pub/sub under bounds").
#
#   cargo build --release --bin wheel-server --example loadgen
#   scripts/pubsub-bench.sh            # needs redis-server; about 3 minutes
set -u
cd "$(dirname "$0")/.."
ulimit -n 20000
loadgen=./target/release/examples/loadgen
./target/release/wheel-server -q --service pubsub --max-connections 20000 \
    --max-publish-rate 0 --max-publish-bytes 0 --listen 127.0.0.1:6301 &
wheel=$!
redis-server --port 6302 --save '' --appendonly no --maxclients 20000 >/dev/null &
redis=$!
trap 'kill $wheel $redis 2>/dev/null; wait' EXIT
sleep 1
run() { # label, then loadgen fanout arguments
    local label=$1
    shift
    echo "== $label"
    "$loadgen" fanout "$@" 2>&1 | tail -1
}
for round in 1 2; do
    for target in wheel redis; do
        if [ "$target" = wheel ]; then args=(--addr 127.0.0.1:6301); else args=(--target redis --addr 127.0.0.1:6302); fi
        run "$target $round: one PUB to 10,000, 20 times" "${args[@]}" -n 10000 --rate 2 --count 20
        run "$target $round: 100,000 deliveries/s" "${args[@]}" -n 10000 --rate 10 --count 100
        run "$target $round: 25,000 publishes/s to one subscriber" "${args[@]}" -n 1 --rate 25000 --count 50000
    done
done
for target in wheel redis; do
    if [ "$target" = wheel ]; then args=(--addr 127.0.0.1:6301); else args=(--target redis --addr 127.0.0.1:6302); fi
    run "$target: one subscriber, 10 publishes/s" "${args[@]}" -n 1 --rate 10 --count 100
done
