#!/usr/bin/env bash
# TLS figures of BENCHMARKS.md ("TLS, one sitting"), side by side with plain
# TCP: handshakes per second (full, resumed), a storm of 5,000 reconnecting
# clients (full, resumed, and resumed on a replacement instance sharing the
# ticket key), idle RSS per connection at 10,000, PING p99 at
# 20,000/s over 1,000 connections. About 3 minutes. Certificates are made
# with openssl in a temporary directory; raw JSON lines go to
# target/tls-bench/.
#
#   scripts/tls-bench.sh
#   GLIBC_TUNABLES=glibc.malloc.tcache_count=0 scripts/tls-bench.sh idle
set -euo pipefail
cd "$(dirname "$0")/.."

figures=("$@")
[ ${#figures[@]} -gt 0 ] || figures=(handshakes storm idle ping)
out=target/tls-bench
mkdir -p "$out"
ulimit -n 20000
cargo build --release --quiet --bin wheel-server --example tls-bench
wheel=target/release/wheel-server
bench=target/release/examples/tls-bench

pki=$(mktemp -d)
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$pki"
}
trap cleanup EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -keyout "$pki/ca.key" -out "$pki/ca.pem" -subj "/CN=tls-bench CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$pki/key.pem" -out "$pki/req.csr" -subj /CN=localhost 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >"$pki/ext.cnf"
openssl x509 -req -in "$pki/req.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 2 -extfile "$pki/ext.cnf" -out "$pki/cert.pem" 2>/dev/null

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

openssl rand -hex 32 >"$pki/ticket.key"

# start [ARGS]: a fresh server with a TLS and a plain listener (and ARGS);
# sets $tls, $plain, $server_pid.
start() {
    tls=127.0.0.1:$(free_port)
    plain=127.0.0.1:$(free_port)
    "$wheel" -q --max-connections 20000 --stats-interval 0s \
        --listen "tls://$tls" --listen "$plain" \
        --tls-cert "$pki/cert.pem" --tls-key "$pki/key.pem" "$@" &
    server_pid=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/${plain%:*}/${plain#*:}") 2>/dev/null && return
        sleep 0.05
    done
    echo "tls-bench: the server did not start" >&2
    exit 1
}
stop() {
    kill "$server_pid" && wait "$server_pid" 2>/dev/null || true
    server_pid=
    sleep 1
}

# The storm after a restart: clients primed on one instance reconnect at
# once to its replacement, which has the same ticket key (--resume) or not.
restart_storm() {
    local name=$1
    shift
    start --tls-ticket-key "$pki/ticket.key"
    local old=$tls old_pid=$server_pid
    start --tls-ticket-key "$pki/ticket.key"
    "$bench" storm --addr "$old" --storm-addr "$tls" --ca "$pki/ca.pem" "$@" | tee "$out/$name.json"
    kill "$old_pid" && wait "$old_pid" 2>/dev/null || true
    stop
}

# run NAME ARGS...: one figure against a fresh server, kept as NAME.json.
run() {
    local name=$1
    shift
    start
    local args=()
    for a in "$@"; do
        case $a in
            TLS) args+=(--addr "$tls" --ca "$pki/ca.pem") ;;
            PLAIN) args+=(--addr "$plain") ;;
            PID) args+=(--pid "$server_pid") ;;
            *) args+=("$a") ;;
        esac
    done
    "$bench" "${args[@]}" | tee "$out/$name.json"
    stop
}

for figure in "${figures[@]}"; do
    case $figure in
        handshakes)
            run handshakes-full handshakes TLS --duration 5s
            run handshakes-resumed handshakes TLS --duration 5s --resume ;;
        storm)
            run storm-full storm TLS -n 5000
            run storm-resumed storm TLS -n 5000 --resume
            restart_storm storm-restart-resumed -n 5000 --resume ;;
        idle)
            run idle-plain idle PLAIN -n 10000 PID
            run idle-tls idle TLS -n 10000 PID ;;
        ping)
            run ping-plain ping PLAIN -n 1000 --rate 20000 --duration 10s
            run ping-tls ping TLS -n 1000 --rate 20000 --duration 10s ;;
        *) echo "tls-bench: unknown figure $figure" >&2; exit 2 ;;
    esac
done
