#!/usr/bin/env bash
# Fan-out figures of BENCHMARKS.md ("Topics across instances through Redis"),
# side by side in one sitting: one wheel-server alone, and three instances
# sharing topics through one redis-server, with 10,000 subscribers spread
# over the three and the publisher on the first:
#   burst:     one PUB to 10,000 subscribers, 20 times (time to last delivery)
#   sustained: 10 PUBs/s to 10,000 subscribers for 10 s (100,000 deliveries/s)
#   hop:       one subscriber, 10 PUBs/s (round trip; with Redis the
#              subscriber is on another instance than the publisher)
# Raw JSON lines go to target/redis-bench/. About 3 minutes.
#
#   scripts/redis-bench.sh [burst] [sustained] [hop]
set -euo pipefail
cd "$(dirname "$0")/.."

figures=("$@")
[ ${#figures[@]} -gt 0 ] || figures=(burst sustained hop)
out=target/redis-bench
mkdir -p "$out"
ulimit -n 20000
cargo build --release --quiet --bin wheel-server --example loadgen
wheel=target/release/wheel-server
loadgen=target/release/examples/loadgen

data=$(mktemp -d)
pids=()
cleanup() {
    [ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null
    wait 2>/dev/null
    rm -rf "$data"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listening on $1" >&2
    return 1
}

# Redis as deploy/pubsub-cluster runs it: an append-only file, fsync every
# second.
redis_port=$(free_port)
redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly yes \
    --appendfsync everysec --dir "$data" --maxclients 20000 >"$data/redis.log" &
pids+=($!)
wait_port "$redis_port"

common=(-q --service pubsub --max-connections 20000 --history 100)
alone=$(free_port)
"$wheel" "${common[@]}" --listen "127.0.0.1:$alone" &
pids+=($!)
shared=()
for _ in 1 2 3; do
    port=$(free_port)
    "$wheel" "${common[@]}" --redis "redis://127.0.0.1:$redis_port/0" --listen "127.0.0.1:$port" &
    pids+=($!)
    shared+=("$port")
done
for port in "$alone" "${shared[@]}"; do wait_port "$port"; done
spread=(--addr "127.0.0.1:${shared[0]}" --also-addr "127.0.0.1:${shared[1]}" --also-addr "127.0.0.1:${shared[2]}")

summary() {
    python3 -c '
import json, sys
r = json.loads(sys.stdin.read().strip().splitlines()[-1])
last, lat = r["time_to_last_delivery_ms"], r["latency_ms"]
figure, label = sys.argv[1], sys.argv[2]
print("%-10s %-6s delivered %d/%d lost %d  %.0f/s  latency p50 %.2f p99 %.2f ms  to last delivery p50 %.1f p99 %.1f ms" % (
    figure, label, r["delivered"], r["expected"], r["lost"], r["deliveries_per_sec"],
    lat["p50"], lat["p99"], last["p50"], last["p99"]))
' "$1" "$2"
}

run() { # figure label loadgen-args...
    local figure=$1 label=$2
    shift 2
    "$loadgen" fanout "$@" 2>/dev/null | tee -a "$out/$figure-$label.json" | summary "$figure" "$label"
}

for figure in "${figures[@]}"; do
    for round in 1 2; do
        case $figure in
        burst)
            run burst alone --addr "127.0.0.1:$alone" -n 10000 --rate 2 --count 20
            run burst redis "${spread[@]}" -n 10000 --rate 2 --count 20
            ;;
        sustained)
            run sustained alone --addr "127.0.0.1:$alone" -n 10000 --rate 10 --count 100
            run sustained redis "${spread[@]}" -n 10000 --rate 10 --count 100
            ;;
        hop)
            run hop alone --addr "127.0.0.1:$alone" -n 1 --rate 10 --count 100
            run hop redis --addr "127.0.0.1:${shared[1]}" --publish-addr "127.0.0.1:${shared[0]}" -n 1 --rate 10 --count 100
            ;;
        *) echo "unknown figure $figure" >&2; exit 2 ;;
        esac
    done
done
