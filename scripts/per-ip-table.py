#!/usr/bin/env python3
"""The per-address rate table under 100,000 distinct client addresses
(issue 17): connects 100,000 times with forged PROXY v1 addresses
(10.x.y.z) and reports the table's peak size (wheel_admission_rate_addresses,
sampled every 50 ms) and the server's peak RSS.

    wheel-server -q --listen 127.0.0.1:5460 --proxy-protocol \
        --max-connect-rate-per-ip 1 --admin-listen 127.0.0.1:5461 & pid=$!
    scripts/per-ip-table.py 5460 127.0.0.1:5461 "$pid"

Run it again against a server without --max-connect-rate-per-ip: the
difference in peak RSS is the table's.
"""
import socket, sys, threading, time, urllib.request, re
port, admin, pid = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS:"): return int(l.split()[1])
def gauge():
    t = urllib.request.urlopen(f"http://{admin}/metrics").read().decode()
    return re.search(r"^wheel_admission_rate_addresses (\d+)", t, re.M).group(1)
before = rss()
N = 100000
def worker(k):
    for i in range(k, N, 8):
        a = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        try:
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(f"PROXY TCP4 {a} 127.0.0.1 1000 5005\r\n".encode())
            s.close()
        except OSError:
            pass
peak = {"addr": 0, "rss": 0}
done = False
def sample():
    while not done:
        try:
            peak["addr"] = max(peak["addr"], int(gauge()))
        except Exception:
            pass
        peak["rss"] = max(peak["rss"], rss())
        time.sleep(0.05)
sampler = threading.Thread(target=sample); sampler.start()
t0 = time.time()
ts = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
[t.start() for t in ts]; [t.join() for t in ts]
done = True; sampler.join()
time.sleep(1)
print({"peak_rate_addresses": peak["addr"], "peak_rss_kib": peak["rss"], "seconds": round(time.time()-t0,1), "rss_before_kib": before, "rss_after_kib": rss(), "rate_addresses": gauge()})
