"""python -m benchmarks.gateway_cost [--requests 2000] [--old-gateway FILE] [--out results/gateway-cost]: what the
proxy in front of TorchServe costs.

A stand-in upstream on loopback answers every POST with a small JSON body (one write); the proxy runs in front of
it as deploy/entrypoint.sh runs it (serving/proxy.py starting nginx). One client sends --requests small POSTs with
a key over one kept-alive connection through it, then as many straight to the upstream. Recorded: the CPU time per
request of every process of the proxy (serving/proxy.py, nginx's master and worker: /proc, user + system) and the
client's p50/p99 latency both ways. --old-gateway FILE measures the same way, in the same run, the hand-written
gateway this project used before nginx (`git show 40236d0:serving/gateway.py > FILE`), for a side-by-side figure.
Writes OUT/result.json and OUT/result.md.
"""
import argparse
import http.client
import json
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile

import psutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from benchmarks.common import ROOT, git_commit, machine
from serving.proxy import find_nginx

BODY = b'{"text": "play some jazz by miles davis"}'


class Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    answer = json.dumps({"label": "PlayMusic", "score": 0.99}).encode()

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                         + str(len(self.answer)).encode() + b"\r\n\r\n" + self.answer)

    def do_GET(self):
        self.do_POST()

    def log_message(self, *args):
        pass


def send(port, n, headers):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times = []
    for _ in range(n):
        started = time.perf_counter()
        conn.request("POST", "/predictions/snips", body=BODY, headers=headers)
        r = conn.getresponse()
        r.read()
        times.append((time.perf_counter() - started) * 1e3)
        assert r.status == 200, r.status
    conn.close()
    times.sort()
    return {"p50_ms": round(statistics.median(times), 3), "p99_ms": round(times[int(0.99 * (len(times) - 1))], 3)}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_cpu_seconds(pid):
    """user + system CPU seconds of a process and all its descendants."""
    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def measure(command, port, key, requests_n):
    """Start `command` (a proxy listening on `port`), warm it up, send the requests; -> (cpu ms/request, latency)."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"gateway_cost: {command[1]} did not start")
                time.sleep(0.1)
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        send(port, 200, headers)                       # warm up
        before = tree_cpu_seconds(proc.pid)
        latency = send(port, requests_n, headers)
        cpu_ms = (tree_cpu_seconds(proc.pid) - before) * 1e3 / requests_n
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return round(cpu_ms, 3), latency


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--old-gateway", type=Path, help="serving/gateway.py of commit 40236d0, measured beside nginx")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "gateway-cost")
    args = p.parse_args(argv)
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    up = upstream.server_address[1]
    key = secrets.token_hex(32)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "api-keys"
        keys.write_text(key + "\n")
        port = free_port()
        rows["nginx"] = measure([sys.executable, str(ROOT / "serving" / "proxy.py"), "--listen", f"127.0.0.1:{port}",
                                 "--keys", str(keys), "--upstream", f"127.0.0.1:{up}", "--work", f"{tmp}/proxy"],
                                port, key, args.requests)
        if args.old_gateway:
            port = free_port()
            rows["old_gateway"] = measure([sys.executable, str(args.old_gateway), "--listen", f"127.0.0.1:{port}",
                                           "--keys", str(keys), "--upstream", f"http://127.0.0.1:{up}"],
                                          port, key, args.requests)
    direct = send(up, args.requests, {"Content-Type": "application/json"})
    upstream.shutdown()
    command = " ".join(["python -m benchmarks.gateway_cost", *(sys.argv[1:] if argv is None else argv)])
    m = machine()
    nginx_version = subprocess.run([find_nginx(), "-v"], capture_output=True, text=True).stderr.strip()
    result = {"command": command, "machine": m, "commit": git_commit(), "requests": args.requests,
              "nginx_version": nginx_version, "direct": direct,
              **{name: {"cpu_ms_per_request": cpu, "latency": latency} for name, (cpu, latency) in rows.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    names = {"nginx": f"nginx ({nginx_version.split('/')[-1]}, via serving/proxy.py)",
             "old_gateway": "the old hand-written gateway (serving/gateway.py at 40236d0)"}
    lines = [f"Machine: {m['nproc']} cores, {m['cpu']}, flags {', '.join(m['flags'])}. Command: `{command}`.", "",
             f"{args.requests} small POSTs with a key, one kept-alive client, a stand-in upstream.", "",
             "| in front | CPU per request (all its processes) | client p50 / p99 |", "| --- | --- | --- |"]
    for name, (cpu, latency) in rows.items():
        lines.append(f"| {names[name]} | {cpu:.3f} ms | {latency['p50_ms']} / {latency['p99_ms']} ms |")
    lines.append(f"| nothing (straight to the upstream) | - | {direct['p50_ms']} / {direct['p99_ms']} ms |")
    text = "\n".join(lines) + "\n"
    (args.out / "result.md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
