#!/usr/bin/env bash
# Three wheel-server --service pubsub instances, one Redis, HAProxy in front:
# topics shared across instances, clients on :5005, each instance's HTTP API
# on :9101..9103. Ctrl-C stops everything.
#
#   cargo build --release && deploy/pubsub-cluster/run.sh
#   # then, from another terminal:
#   cargo run --release --example heartbeat-client -- 127.0.0.1:5005 --subscribe news
#   curl -X POST --data-binary hello http://127.0.0.1:9102/publish/news
#
# Needs redis-server and haproxy (Debian: apt-get install redis-server haproxy).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${WHEEL_SERVER:-$here/../../target/release/wheel-server}"
data="$(mktemp -d)"
pids=()
stop() {
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$data"
}
trap stop EXIT INT TERM

# Redis keeps every topic's numbering and history: give it an append-only
# file, or a restart renumbers topics (see README, "Running several instances").
redis-server --bind 127.0.0.1 --port 6380 --save "" --appendonly yes --dir "$data" >"$data/redis.log" &
pids+=($!)
for i in 1 2 3; do
    "$bin" --service pubsub --redis redis://127.0.0.1:6380/0 \
        --listen "127.0.0.1:510$i" --metrics-listen "127.0.0.1:910$i" \
        --proxy-protocol --history 1000 --history-ttl 10m &
    pids+=($!)
done
haproxy -db -f "$here/haproxy.cfg" &
pids+=($!)
wait -n
