"""python -m benchmarks.gateway_cost [--requests 2000] [--out results/gateway-cost]: what serving/gateway.py costs.

A stand-in upstream on loopback answers every POST with a small JSON body (one write); the gateway runs as its
own process in front of it, as deploy/entrypoint.sh runs it. One client sends --requests small POSTs over one
kept-alive connection through the gateway, then as many straight to the upstream. Recorded: the gateway
process's CPU time per request (/proc/PID/stat, user + system) and the client's p50/p99 latency both ways.
Writes OUT/result.json and OUT/result.md.
"""
import argparse
import http.client
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from benchmarks.common import ROOT, git_commit, machine

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


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime + stime


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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "gateway-cost")
    args = p.parse_args(argv)
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    key = secrets.token_hex(32)
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "api-keys"
        keys.write_text(key + "\n")
        port = free_port()
        proc = subprocess.Popen([sys.executable, str(ROOT / "serving" / "gateway.py"), "--listen", f"127.0.0.1:{port}",
                                 "--keys", str(keys), "--upstream", f"http://127.0.0.1:{upstream.server_address[1]}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise SystemExit("gateway_cost: the gateway did not start")
                    time.sleep(0.1)
            headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
            send(port, 100, headers)                       # warm up
            before = cpu_seconds(proc.pid)
            through = send(port, args.requests, headers)
            cpu_ms = (cpu_seconds(proc.pid) - before) * 1e3 / args.requests
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    direct = send(upstream.server_address[1], args.requests, {"Content-Type": "application/json"})
    upstream.shutdown()
    command = " ".join(["python -m benchmarks.gateway_cost", *(sys.argv[1:] if argv is None else argv)])
    m = machine()
    result = {"command": command, "machine": m, "commit": git_commit(), "requests": args.requests,
              "gateway_cpu_ms_per_request": round(cpu_ms, 3), "through_gateway": through, "direct": direct}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    text = (f"Machine: {m['nproc']} cores, {m['cpu']}, flags {', '.join(m['flags'])}. Command: `{command}`.\n\n"
            f"Gateway CPU per request: {cpu_ms:.3f} ms ({args.requests} requests, one kept-alive client). "
            f"Client latency p50/p99: through the gateway {through['p50_ms']}/{through['p99_ms']} ms, "
            f"straight to the upstream {direct['p50_ms']}/{direct['p99_ms']} ms.\n")
    (args.out / "result.md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
