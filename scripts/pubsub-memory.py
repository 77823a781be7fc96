#!/usr/bin/env python3
"""Memory per retained message and per topic (BENCHMARKS.md): RSS of the
release server before and after one connection publishes, pipelined.

    cargo build --release --bin wheel-server && scripts/pubsub-memory.py
"""
import socket, struct, subprocess, threading, time, sys, os
def rss(pid):
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS:"): return int(l.split()[1])
def run(topics, per_topic, size, port):
    srv = subprocess.Popen([os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "wheel-server"),"-q","--service","pubsub","--listen",f"127.0.0.1:{port}",
        "--history","100","--history-bytes","1GiB","--history-memory","4GiB","--max-topics","1000000","--max-publish-rate","0","--max-publish-bytes","0"],
        env=dict(os.environ, MALLOC_ARENA_MAX="2"))
    time.sleep(0.5)
    s = socket.create_connection(("127.0.0.1", port))
    got = [0]
    def reader():
        buf=b''
        while True:
            d=s.recv(1<<20)
            if not d: return
            got[0]+=d.count(b'OK PUB')
    t=threading.Thread(target=reader,daemon=True); t.start()
    # warm-up: one topic, then measure from a settled baseline
    time.sleep(0.3)
    before = rss(srv.pid)
    payload = b'x'*size
    n = topics*per_topic
    batch=[]
    for i in range(n):
        cmd = b'PUB t%d ' % (i % topics) + payload
        batch.append(struct.pack('>IB', len(cmd)+1, 1) + cmd)
        if len(batch) == 2000:
            s.sendall(b''.join(batch)); batch=[]
    s.sendall(b''.join(batch))
    deadline=time.time()+60
    while got[0] < n and time.time()<deadline: time.sleep(0.05)
    time.sleep(0.3)
    after = rss(srv.pid)
    srv.kill(); srv.wait()
    return before, after, n, got[0]
for label, topics, per, size in [("messages: 1,000 topics x 100, 100 B", 1000, 100, 100),
                                 ("messages: 1,000 topics x 100, 1 KiB", 1000, 100, 1024),
                                 ("topics: 100,000 topics x 1, 100 B", 100000, 1, 100)]:
    b,a,n,ok = run(topics, per, size, 6400)
    print(f"{label}: RSS {b} -> {a} KiB, {ok}/{n} acknowledged, {(a-b)*1024/n:.0f} bytes each")
