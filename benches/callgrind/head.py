#!/usr/bin/env python3
"""Instructions per `HEAD /v2/<name>/manifests/<tag>`, counted by callgrind.

Starts the release server under `valgrind --tool=callgrind` on a fresh
data directory (defaults: auth off, access log off), pushes one small
image over loopback, zeroes the counters, sends N HEADs by tag on one
keep-alive connection, dumps the counters, and prints the instructions
per request. Instruction counts do not depend on how busy the machine
is, unlike times.

    cargo build --release --bin ferro
    python3 benches/callgrind/head.py [--requests 2000] [--out DIR]

Needs valgrind (callgrind_control comes with it). The dump is left in
DIR for `callgrind_annotate`.
"""

import argparse
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(conn, method, path, body=None, headers=None):
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    data = r.read()
    return r, data


def push_blob(conn, repo, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r, _ = request(conn, "POST", f"/v2/{repo}/blobs/uploads/")
    assert r.status == 202, r.status
    loc = r.getheader("Location")
    sep = "&" if "?" in loc else "?"
    r, _ = request(conn, "PUT", f"{loc}{sep}digest={digest}", data,
                   {"Content-Type": "application/octet-stream"})
    assert r.status == 201, r.status
    return digest


def push_image(conn, repo, tag):
    config = b"{}"
    layer = b"a small layer"
    cd = push_blob(conn, repo, config)
    ld = push_blob(conn, repo, layer)
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": cd, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": ld, "size": len(layer)}],
    }).encode()
    r, _ = request(conn, "PUT", f"/v2/{repo}/manifests/{tag}", manifest,
                   {"Content-Type": OCI_MANIFEST})
    assert r.status == 201, r.status


def callgrind_control(*args):
    subprocess.run(["callgrind_control", *args], check=True,
                   stdout=subprocess.DEVNULL)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--binary", default=os.path.join(ROOT, "target/release/ferro"))
    p.add_argument("--out", default=None, help="where the callgrind files go")
    a = p.parse_args()
    out = a.out or tempfile.mkdtemp(prefix="ferro-callgrind-")
    os.makedirs(out, exist_ok=True)
    data = tempfile.mkdtemp(prefix="ferro-callgrind-data-")
    port = free_port()
    server = subprocess.Popen(
        ["valgrind", "--tool=callgrind",
         f"--callgrind-out-file={out}/callgrind.out.%p",
         a.binary, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                r, _ = request(c, "GET", "/readyz")
                if r.status == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline or server.poll() is not None:
                sys.exit("the server did not become ready")
            time.sleep(0.2)
        push_image(c, "bench/app", "latest")
        # Warm up: first requests fill caches and lazily built statics.
        for _ in range(50):
            r, _ = request(c, "HEAD", "/v2/bench/app/manifests/latest")
            assert r.status == 200, r.status
        # Count only the HEADs: zero the counters before, dump after.
        callgrind_control("-z", str(server.pid))
        for _ in range(a.requests):
            r, _ = request(c, "HEAD", "/v2/bench/app/manifests/latest")
            assert r.status == 200, r.status
        callgrind_control("-d", "heads", str(server.pid))
        c.close()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
        shutil.rmtree(data, ignore_errors=True)
    total = 0
    for name in os.listdir(out):
        if not name.startswith("callgrind.out") or "heads" not in open(os.path.join(out, name), errors="replace").read(4096):
            continue
        for line in open(os.path.join(out, name), errors="replace"):
            if line.startswith("summary:") or line.startswith("totals:"):
                total = max(total, int(line.split()[1]))
    print(f"requests: {a.requests}")
    print(f"instructions: {total}")
    print(f"instructions per request: {total / a.requests:.0f}")
    print(f"callgrind files: {out}")


if __name__ == "__main__":
    main()
