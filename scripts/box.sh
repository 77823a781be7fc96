#!/usr/bin/env bash
# The box-level figure (BENCHMARKS.md, "One box"): N idle connections, a
# PING every 20 s each, held by P wheel-server processes sharing one port
# with --reuse-port (one process may open 20,000 descriptors on this
# machine), opened by P load generators. Prints the whole machine's memory
# per connection from /proc/meminfo (MemAvailable's drop, KernelStack, Slab:
# the generators' side included), the servers' RSS, threads and CPU.
#
#   scripts/box.sh                                  # 100,000 over 6 processes
#   N=30000 P=2 scripts/box.sh                      # smaller
#   WHEEL_ARGS="--park-after 0" N=30000 P=2 scripts/box.sh   # a thread each
#
# The servers listen on 127.0.0.1 to 127.0.0.4: one destination address
# gives a client only 28,232 ephemeral ports. They park after 200 ms, so
# that while the connections open, no more than a few thousand of them hold
# a thread at once (this machine allows 32,768 tasks in all).
set -euo pipefail
cd "$(dirname "$0")/.."

n=${N:-100000}
p=${P:-6}
ulimit -n 20000
cargo build --release --quiet --bin wheel-server --example loadgen
wheel=target/release/wheel-server
loadgen=target/release/examples/loadgen

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
listen=()
also=()
for i in 1 2 3 4; do
    listen+=(--listen "127.0.0.$i:$port")
    [ "$i" -gt 1 ] && also+=(--also-addr "127.0.0.$i:$port")
done

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

meminfo() { awk -v k="$1:" '$1 == k { print $2 }' /proc/meminfo; }
before_avail=$(meminfo MemAvailable)
before_stack=$(meminfo KernelStack)
before_slab=$(meminfo Slab)

servers=()
for _ in $(seq "$p"); do
    # shellcheck disable=SC2086
    "$wheel" -q --reuse-port "${listen[@]}" --max-connections 19900 --idle-timeout 60s \
        --park-after 200ms --stats-interval 0s ${WHEEL_ARGS:-} 2>/dev/null &
    servers+=($!)
    pids+=($!)
done
sleep 1

per=$(( n / p ))
for _ in $(seq "$p"); do
    "$loadgen" idle -n "$per" --addr "127.0.0.1:$port" "${also[@]}" --connect-concurrency 64 \
        --ping-every 20s --measure 600s >/dev/null 2>&1 &
    pids+=($!)
done

established() {
    ss -Htn state established "( sport = :$port )" | wc -l
}
started=$(date +%s)
while [ "$(established)" -lt $(( per * p )) ]; do
    if [ $(( $(date +%s) - started )) -gt 300 ]; then
        echo "box: only $(established) of $(( per * p )) connections after 300 s" >&2
        break
    fi
    sleep 2
done
held=$(established)
opened=$(( $(date +%s) - started ))
# Settled: every connection parked (or idle on its thread), the thread
# caches trimmed.
sleep 10

cpu_ticks() {
    local total=0
    for pid in "${servers[@]}"; do
        total=$(( total + $(awk '{ print $14 + $15 }' "/proc/$pid/stat") ))
    done
    echo "$total"
}
t0=$(cpu_ticks)
sleep 20
t1=$(cpu_ticks)
hz=$(getconf CLK_TCK)

rss=0
threads=0
for pid in "${servers[@]}"; do
    rss=$(( rss + $(awk '$1 == "VmRSS:" { print $2 }' "/proc/$pid/status") ))
    threads=$(( threads + $(awk '$1 == "Threads:" { print $2 }' "/proc/$pid/status") ))
done

python3 - "$held" "$opened" "$p" "$before_avail" "$(meminfo MemAvailable)" \
    "$before_stack" "$(meminfo KernelStack)" "$before_slab" "$(meminfo Slab)" \
    "$rss" "$threads" "$(( t1 - t0 ))" "$hz" <<'EOF'
import json, sys
held, opened, procs, a0, a1, k0, k1, s0, s1, rss, threads, ticks, hz = map(int, sys.argv[1:])
per = lambda before, after: round((after - before) / max(held, 1), 2)
print(json.dumps({
    "connections": held, "processes": procs, "open_seconds": opened,
    "machine_per_connection_kib": {
        "mem_available_drop": per(a1, a0), "kernel_stack": per(k0, k1), "slab": per(s0, s1),
    },
    "machine_total_mib": round((a0 - a1) / 1024),
    "servers": {
        "rss_mib": round(rss / 1024), "rss_per_connection_kib": round(rss / max(held, 1), 2),
        "threads": threads, "cpu_percent_of_one_core": round(100 * ticks / hz / 20, 2),
    },
}))
EOF
