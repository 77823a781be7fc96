#!/usr/bin/env bash
# Thread per connection against tokio, in one sitting: runs wheel-server and
# the tokio peer (examples/tokio-peer.rs) through the same loadgen modes and
# prints the table of BENCHMARKS.md ("Thread per connection against tokio").
#
#   scripts/compare.sh                 # everything, about 9 minutes
#   scripts/compare.sh idle churn      # some figures only
#   WHEEL_ARGS="--thread-cache 0" scripts/compare.sh churn   # extra server flags
#   AGAINST=ws scripts/compare.sh idle ping echo1 echo8     # frame mode against WebSocket
#
# AGAINST picks the second column: tokio (the default: the tokio peer in
# frame mode) or ws (wheel-server itself on a ws:// listener, the load
# generator upgrading every connection with --ws; figures idle, ping, echo1
# and echo8 only).
#
# Figures: idle (at 18,000 idle connections, a PING each every 20 s: the
# whole machine's memory per connection from /proc/meminfo, MemAvailable's
# drop with KernelStack and Slab, this client's side included and the same
# for both; server RSS; server CPU), sparse (1,000 connections, one DATA
# each every 2 s: the echo's round trip when every DATA finds its connection
# parked; also run against wheel-server with --park-after 0, whose
# connections keep their threads), idle15 (as idle at 15,000, also against
# --park-after 0: a thread each cannot reach 18,000 under this box's
# vm.max_map_count), ping (p99 at 20,000 PINGs/s over 1,000 connections), echo1 (64 B,
# 100 connections, 1 in flight), echo8 (1,000 connections, 8 in flight),
# churn (connect + PING + close cycles/s, 16 loops), storm (15,000 clients
# at once, cold and warm), burst (10,000 connections expiring in one tick).
# Raw JSON lines go to target/compare/. Each server is started fresh for each
# figure, on a free loopback port.
set -euo pipefail
cd "$(dirname "$0")/.."

figures=("$@")
[ ${#figures[@]} -gt 0 ] || figures=(idle idle15 sparse ping echo1 echo8 churn storm burst)
out=target/compare
mkdir -p "$out"
ulimit -n 20000

cargo build --release --quiet --bin wheel-server --example loadgen --example tokio-peer
wheel=target/release/wheel-server
peer=target/release/examples/tokio-peer
loadgen=target/release/examples/loadgen

server_pid=
stop_server() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=
    fi
}
trap stop_server EXIT

# A loopback port nothing listens on now.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

against=${AGAINST:-tokio}
case $against in
    tokio) against_name="tokio peer" ;;
    ws) against_name="wheel-server, WebSocket" ;;
    *) echo "compare: AGAINST must be tokio or ws" >&2; exit 2 ;;
esac

# start_server wheel|tokio|ws IDLE_TIMEOUT: starts one fresh, waits until it
# accepts, sets $server_pid and $addr.
start_server() {
    local which=$1 idle=$2
    addr=127.0.0.1:$(free_port)
    if [ "$which" = wheel ] || [ "$which" = ws ] || [ "$which" = unparked ]; then
        local listen=$addr extra=
        [ "$which" = ws ] && listen=ws://$addr/ws
        # unparked: every connection keeps its thread.
        [ "$which" = unparked ] && extra="--park-after 0"
        # shellcheck disable=SC2086
        "$wheel" -q --listen "$listen" --max-connections 20000 --idle-timeout "$idle" \
            --stats-interval 0s $extra ${WHEEL_ARGS:-} &
    else
        "$peer" --listen "$addr" --idle-timeout "$idle" 2>/dev/null &
    fi
    server_pid=$!
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/${addr%:*}/${addr#*:}") 2>/dev/null; then
            return
        fi
        sleep 0.05
    done
    echo "compare: $which did not start" >&2
    exit 1
}

# run FIGURE SERVER IDLE LOADGEN-ARGS...: one figure against one server;
# prints the JSON line and keeps it in target/compare/FIGURE-SERVER.json.
run() {
    local figure=$1 which=$2 idle=$3
    shift 3
    start_server "$which" "$idle"
    local args=("$@")
    for i in "${!args[@]}"; do
        [ "${args[$i]}" = PID ] && args[$i]=$server_pid
    done
    [ "$which" = ws ] && args+=(--ws /ws)
    "$loadgen" "${args[0]}" --addr "$addr" "${args[@]:1}" 2>/dev/null >"$out/$figure-$which.json"
    stop_server
    sleep 1
}

field() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, d))" "$@"; }
row() {
    local name=$1 figure=$2 expr=$3 unit=$4
    local w t
    w=$(field "$out/$figure-wheel.json" "$expr")
    t=$(field "$out/$figure-$against.json" "$expr")
    python3 -c "import sys; w, t = float(sys.argv[1]), float(sys.argv[2]); print(f'| {sys.argv[3]} | {w:,.2f} {sys.argv[4]} | {t:,.2f} {sys.argv[4]} | {w / t:.2f}x |')" \
        "$w" "$t" "$name" "$unit"
}

for figure in "${figures[@]}"; do
    servers=(wheel "$against")
    case $figure in sparse | idle15) servers+=(unparked) ;; esac
    for which in "${servers[@]}"; do
        echo "compare: $figure against $which" >&2
        case $figure in
            idle) run idle $which 60s idle -n 18000 --pid PID --ping-every 20s --measure 20s ;;
            idle15) run idle15 $which 60s idle -n 15000 --pid PID --ping-every 20s --measure 20s ;;
            sparse) run sparse $which 60s sparse -n 1000 --every 2s --duration 20s ;;
            ping) run ping $which 60s ping -n 1000 --rate 20000 --duration 10s ;;
            echo1) run echo1 $which 60s echo -n 100 --in-flight 1 --duration 10s ;;
            echo8) run echo8 $which 60s echo -n 1000 --in-flight 8 --duration 10s ;;
            churn) run churn $which 60s churn -n 16 --duration 10s --pid PID ;;
            storm) run storm $which 60s storm -n 15000 --connect-concurrency 15000 --pid PID ;;
            burst) run burst $which 5s expiry -n 10000 --idle-timeout 5s ;;
            *) echo "compare: unknown figure $figure" >&2; exit 2 ;;
        esac
    done
done

echo "| figure | wheel-server | $against_name | ratio |"
echo "|---|---|---|---|"
for figure in "${figures[@]}"; do
    case $figure in
        idle)
            row "machine memory per idle connection, 18,000 (MemAvailable drop)" idle 'machine["mem_available_drop_per_connection_kib"]' KiB
            row "of which KernelStack" idle 'machine["kernel_stack_per_connection_kib"]' KiB
            row "of which Slab" idle 'machine["slab_per_connection_kib"]' KiB
            row "server RSS per idle connection, 18,000" idle 'server["rss_per_connection_kib"]' KiB
            row "server CPU, 18,000 idle, a PING each every 20 s" idle 'server["idle_cpu_percent"]' % ;;
        idle15)
            row "machine memory per idle connection, 15,000" idle15 'machine["mem_available_drop_per_connection_kib"]' KiB
            row "server RSS per idle connection, 15,000" idle15 'server["rss_per_connection_kib"]' KiB
            row "server CPU, 15,000 idle" idle15 'server["idle_cpu_percent"]' %
            against_saved=$against; against=unparked
            row "machine memory, 15,000: parked vs a thread each (--park-after 0)" idle15 'machine["mem_available_drop_per_connection_kib"]' KiB
            row "of which KernelStack, parked vs a thread each" idle15 'machine["kernel_stack_per_connection_kib"]' KiB
            row "server RSS, parked vs a thread each" idle15 'server["rss_per_connection_kib"]' KiB
            row "server CPU, parked vs a thread each" idle15 'server["idle_cpu_percent"]' %
            against=$against_saved ;;
        sparse)
            row "DATA after 2 s quiet (parked), p50" sparse 'rtt_ms["p50"]' ms
            row "DATA after 2 s quiet (parked), p99" sparse 'rtt_ms["p99"]' ms
            against_saved=$against; against=unparked
            row "p50, parked vs keeping the thread (--park-after 0)" sparse 'rtt_ms["p50"]' ms
            row "p99, parked vs keeping the thread (--park-after 0)" sparse 'rtt_ms["p99"]' ms
            against=$against_saved ;;
        ping) row "PING p99 at 20,000/s over 1,000" ping 'rtt_ms["p99"]' ms ;;
        echo1) row "echo 64 B, 100 x 1 in flight" echo1 'msgs_per_sec / 1000' k/s ;;
        echo8) row "echo 64 B, 1,000 x 8 in flight" echo8 'msgs_per_sec / 1000' k/s ;;
        churn)
            row "connect + PING + close" churn 'cycles_per_sec / 1000' k/s
            row "server CPU per connect + PING + close" churn 'server["cpu_us_per_cycle"]' us ;;
        storm)
            row "storm of 15,000, cold: last PONG" storm 'cold_ms' ms
            row "storm of 15,000, warm: last PONG" storm 'warm_ms' ms ;;
        burst)
            row "10,000 expiring in one tick: last CLOSE after T" burst 'close_after_timeout_ms["max"]' ms
            row "10,000 expiring in one tick: p50 after T" burst 'close_after_timeout_ms["p50"]' ms ;;
    esac
done
