#!/usr/bin/env python3
"""Mixed workload for scripts/soak.sh: reads, uploads, permitted and denied deletes, through the
gateway, for DURATION seconds; samples the gateway's RSS and open fds; fails on growth or on any
unexpected answer. Standard library only."""

import http.client
import json
import os
import sys
import threading
import time
import uuid

gw_host, gw_port = sys.argv[1].split(":")
gw_pid = int(sys.argv[2])
duration = float(sys.argv[3])
alice, bob = sys.argv[4], sys.argv[5]
referenced = sys.argv[6]

lock = threading.Lock()
counts = {"requests": 0, "unexpected": 0}
unexpected_examples = []
stop_at = time.time() + duration


def call(conn, method, path, key, body=None, headers=None, expect=(200,)):
    h = {"x-api-key": key}
    if headers:
        h.update(headers)
    conn.request(method, path, body=body, headers=h)
    resp = conn.getresponse()
    data = resp.read()
    with lock:
        counts["requests"] += 1
        if resp.status not in expect:
            counts["unexpected"] += 1
            if len(unexpected_examples) < 10:
                unexpected_examples.append(f"{method} {path}: {resp.status} {data[:200]!r}")
    return resp.status, data


def multipart(filename, size):
    boundary = uuid.uuid4().hex
    parts = [
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"method\"\r\n\r\ndirect\r\n".encode(),
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"filename\"\r\n\r\n{filename}\r\n".encode(),
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
        f"Content-Type: video/mp4\r\n\r\n".encode() + b"\0" * size + b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def worker(n):
    conn = http.client.HTTPConnection(gw_host, int(gw_port), timeout=30)
    i = 0
    while time.time() < stop_at:
        i += 1
        call(conn, "GET", "/v1.3/assets?page=1&page_limit=10", bob)
        call(conn, "GET", f"/v1.3/assets/{referenced}/indexed-assets?page=1", bob)
        if i % 3 == 0:
            body, ctype = multipart(f"soak-{n}-{i}.mp4", 256 * 1024)
            status, data = call(conn, "POST", "/v1.3/assets", bob, body, {"Content-Type": ctype}, expect=(201,))
            if status == 201:
                asset = json.loads(data)["_id"]
                call(conn, "DELETE", f"/v1.3/assets/{asset}", alice)
        if i % 5 == 0:
            # A member's forced delete: always refused by policy, never forwarded.
            call(conn, "DELETE", f"/v1.3/assets/{referenced}?force=true", bob, expect=(403,))
            # A member's plain delete of a referenced asset: forwarded, the upstream's 409 passes.
            call(conn, "DELETE", f"/v1.3/assets/{referenced}", bob, expect=(409,))


def sample():
    status = open(f"/proc/{gw_pid}/status").read()
    rss = int(next(l.split()[1] for l in status.splitlines() if l.startswith("VmRSS:")))
    fds = len(os.listdir(f"/proc/{gw_pid}/fd"))
    return rss, fds


threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
for t in threads:
    t.start()
samples = []
started = time.time()
while any(t.is_alive() for t in threads):
    rss, fds = sample()
    samples.append((time.time() - started, rss, fds))
    time.sleep(min(10.0, max(1.0, duration / 30)))
for t in threads:
    t.join()
rss, fds = sample()
samples.append((time.time() - started, rss, fds))

# Compare the end with the state after warm-up (the first tenth of the run).
warm = [s for s in samples if s[0] >= duration / 10] or samples
base_rss, base_fds = warm[0][1], warm[0][2]
end_rss, end_fds = samples[-1][1], samples[-1][2]
peak_rss = max(s[1] for s in samples)
print(f"requests {counts['requests']}  unexpected {counts['unexpected']}  "
      f"({counts['requests'] / duration:.0f} req/s over {duration:.0f} s)")
print(f"RSS  start {samples[0][1] / 1024:.1f} MiB  after warm-up {base_rss / 1024:.1f} MiB  "
      f"end {end_rss / 1024:.1f} MiB  peak {peak_rss / 1024:.1f} MiB")
print(f"fds  start {samples[0][2]}  after warm-up {base_fds}  end {end_fds}")
failed = False
if counts["unexpected"]:
    failed = True
    print("FAIL: unexpected answers:", *unexpected_examples, sep="\n  ")
if end_rss > base_rss * 1.25 + 8 * 1024:
    failed = True
    print("FAIL: RSS grew after warm-up")
if end_fds > base_fds + 16:
    failed = True
    print("FAIL: open file descriptors grew")
print("FAIL" if failed else "PASS")
sys.exit(1 if failed else 0)
