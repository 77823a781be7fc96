#!/usr/bin/env bash
# Three wheel-server --service pubsub instances, one Redis, HAProxy in front:
# topics shared across instances, clients on :5005, each instance's HTTP API
# on :9101..9103. Ctrl-C (or SIGTERM to this script) stops everything.
#
#   cargo build --release && deploy/pubsub-cluster/run.sh
#   # then, from another terminal:
#   cargo run --release --example heartbeat-client -- 127.0.0.1:5005 --subscribe news
#   curl -X POST --data-binary hello http://127.0.0.1:9102/publish/news
#
# Draining one instance: `kill -TERM <its pid>` (the script prints each
# pid). HAProxy stops sending it clients, its clients move to the others,
# it exits, and the rest keep running; the script says so and goes on.
#
# A component that fails to start (a port in use, a bad flag) is reported
# in one line with the end of its log, and everything is stopped; the logs
# are in the directory printed at start.
#
# Environment (all optional): WHEEL_SERVER (the binary), WHEEL_SERVER_ARGS
# (more flags for every instance), and the ports FRONT_PORT (5005),
# REDIS_PORT (6380), INSTANCE_PORTS ("5101 5102 5103"), ADMIN_PORTS
# ("9101 9102 9103").
#
# Needs redis-server and haproxy (Debian: apt-get install redis-server haproxy).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${WHEEL_SERVER:-$here/../../target/release/wheel-server}"
front="${FRONT_PORT:-5005}"
redis_port="${REDIS_PORT:-6380}"
read -r -a ports <<<"${INSTANCE_PORTS:-5101 5102 5103}"
read -r -a admins <<<"${ADMIN_PORTS:-9101 9102 9103}"
read -r -a extra <<<"${WHEEL_SERVER_ARGS:-}"
data="$(mktemp -d)"
declare -A names=()

say() { echo "cluster: $*" >&2; }

stop() {
    trap - EXIT INT TERM
    local pids=("${!names[@]}")
    if [ ${#pids[@]} -gt 0 ]; then
        kill "${pids[@]}" 2>/dev/null || true
    fi
    wait 2>/dev/null || true
    rm -rf "$data"
}
trap stop EXIT
trap 'say "stopping"; exit 0' INT TERM

# Starts a component in the background, its output in $data/NAME.log.
start() {
    local name=$1
    shift
    "$@" >"$data/$name.log" 2>&1 &
    names[$!]=$name
    say "$name started, pid $!"
}

# Fails (one line, the end of the log) unless the component with `pid`
# listens on `port` within 5 s.
started() {
    local pid=$1 port=$2 name=${names[$1]}
    for _ in $(seq 100); do
        if ! kill -0 "$pid" 2>/dev/null; then
            break
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.05
    done
    say "$name failed to start (port $port): $(tail -n 1 "$data/$name.log")"
    exit 1
}

say "logs in $data"
# Redis keeps every topic's numbering and history: give it an append-only
# file, or a restart renumbers topics (see README, "Running several instances").
start redis redis-server --bind 127.0.0.1 --port "$redis_port" --save "" \
    --appendonly yes --dir "$data"
started $! "$redis_port"
for i in 0 1 2; do
    start "wheel$((i + 1))" "$bin" --service pubsub --redis "redis://127.0.0.1:$redis_port/0" \
        --listen "127.0.0.1:${ports[$i]}" --metrics-listen "127.0.0.1:${admins[$i]}" \
        --proxy-protocol --proxy-from 127.0.0.1 --history 1000 --history-ttl 10m "${extra[@]}"
    started $! "${ports[$i]}"
done
# The configuration with this run's ports.
sed -e "s/127\.0\.0\.1:5005/127.0.0.1:$front/" \
    -e "s/127\.0\.0\.1:5101 check port 9101/127.0.0.1:${ports[0]} check port ${admins[0]}/" \
    -e "s/127\.0\.0\.1:5102 check port 9102/127.0.0.1:${ports[1]} check port ${admins[1]}/" \
    -e "s/127\.0\.0\.1:5103 check port 9103/127.0.0.1:${ports[2]} check port ${admins[2]}/" \
    "$here/haproxy.cfg" >"$data/haproxy.cfg"
start haproxy haproxy -db -f "$data/haproxy.cfg"
started $! "$front"
say "ready: clients on 127.0.0.1:$front"

# One component ends at a time: a drained instance (exit 0) leaves the
# others running; anything else stops the cluster.
while [ ${#names[@]} -gt 0 ]; do
    status=0
    wait -n -p ended || status=$?
    name=${names[$ended]:-?}
    unset "names[$ended]"
    case "$name:$status" in
    wheel*:0)
        say "$name (pid $ended) drained and exited; the others keep serving"
        ;;
    *)
        say "$name (pid $ended) exited with status $status: $(tail -n 1 "$data/$name.log"); stopping"
        exit 1
        ;;
    esac
done
