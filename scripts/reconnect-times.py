#!/usr/bin/env python3
"""Measures how fast the heartbeat client notices a killed server and
reconnects to a restarted one.

Usage (after `cargo build --release --examples`):

    python3 scripts/reconnect-times.py [--trials 5] [-- extra heartbeat-client flags]

Each trial starts ./target/release/wheel-server on 127.0.0.1:5222, runs the
heartbeat-client example with --json, kills the server with SIGKILL after 1 s,
restarts it on the same port 2.0 s + 0.37 s x trial later, and reads the
client's events. Prints per-trial and summary figures in milliseconds. The
client's t_ms counts from its own start, a few ms after this script's clock,
so figures near 0 carry that error.
"""
import argparse, json, statistics, subprocess, time

ap = argparse.ArgumentParser()
ap.add_argument("--trials", type=int, default=5)
ap.add_argument("client_flags", nargs="*")
args = ap.parse_args()

addr = "127.0.0.1:5222"
server_cmd = ["./target/release/wheel-server", "-q", "--listen", addr]
kill_to_dead, restart_to_connected = [], []
for trial in range(args.trials):
    server = subprocess.Popen(server_cmd)
    time.sleep(0.3)
    t0 = time.monotonic()
    client = subprocess.Popen(
        ["./target/release/examples/heartbeat-client", addr, "--json", "--duration", "9s"] + args.client_flags,
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    time.sleep(1.0)
    killed = (time.monotonic() - t0) * 1000
    server.kill(); server.wait()
    time.sleep(2.0 + trial * 0.37)
    restarted = (time.monotonic() - t0) * 1000
    server = subprocess.Popen(server_cmd)
    out, _ = client.communicate()
    server.kill(); server.wait()
    events = [json.loads(line) for line in out.splitlines()]
    dead = next(e for e in events if e["event"] == "dead")
    connected = [e for e in events if e["event"] == "connected"][1]
    kill_to_dead.append(dead["t_ms"] - killed)
    restart_to_connected.append(connected["t_ms"] - restarted)
    delays = [e["delay_ms"] for e in events if e["event"] == "reconnecting"]
    print(f"trial {trial}: dead ({dead['reason']}) {kill_to_dead[-1]:.0f} ms after the kill; "
          f"connected {restart_to_connected[-1]:.0f} ms after the restart; retry delays {delays} ms")
for name, xs in [("kill -> dead", kill_to_dead), ("restart -> connected", restart_to_connected)]:
    print(f"{name}: min {min(xs):.0f} ms, median {statistics.median(xs):.0f} ms, max {max(xs):.0f} ms")
