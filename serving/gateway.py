"""The key check in front of a pod's TorchServe: the one port of the pod that clients reach.

    python serving/gateway.py --listen 0.0.0.0:8080 --upstream http://127.0.0.1:8085 \
        --keys /home/model-server/keys/api-keys

Why it exists (deploy/README.md, "Keys"): TorchServe 0.12 draws new random keys at every start and cannot be
given one, so the replicas behind one Kubernetes Service cannot share a TorchServe key. In the container
TorchServe therefore listens on 127.0.0.1 only, with token authorization off, and this gateway checks
`Authorization: Bearer KEY` against the keys of a file mounted from a Secret: one key a line, several while
a key is being replaced; the file is read again when it changes, so a rotated Secret takes effect without a
restart. A missing or empty file refuses every request (fails closed).

Open without a key, for the kubelet's probes (they carry no headers of ours):
  GET /ping   TorchServe's own health answer, passed through: 200 when every model has its minimum workers
              (readiness).
  GET /live   200 when TorchServe's frontend answers at all, whatever it says (liveness), 503 when it does not.
Everything else needs a key and goes to TorchServe's inference port as it came, less the Authorization and
hop-by-hop headers. Refusals carry the handler's JSON shape: {"error", "error_type", "status"}.

Standard library only: the image runs it as a script beside TorchServe, outside the .mar's Python path.
"""
import argparse
import hmac
import http.client
import json
import logging
import os
import signal
import socket
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

log = logging.getLogger("gateway")
MIN_KEY_CHARS = 32
# Not passed on: hop-by-hop headers, the client's key, and what http.client sets itself.
DROPPED = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
           "transfer-encoding", "upgrade", "expect", "host", "content-length", "authorization"}
OPEN_PATHS = {"/ping", "/live"}


class Keys:
    """The accepted keys, read from `path` again whenever its identity or contents' time changes (checked at
    most every `recheck_s` seconds). Lines: one key each; blank lines and lines starting with # are skipped;
    keys shorter than MIN_KEY_CHARS or holding spaces are ignored with a warning (never logged themselves)."""

    def __init__(self, path, recheck_s=1.0):
        self.path, self.recheck_s = path, recheck_s
        self._lock = threading.Lock()
        self._stamp, self._keys, self._checked = None, (), float("-inf")
        self.refresh(force=True)

    def _read(self):
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            if stamp == self._stamp:
                return stamp, self._keys
            with open(self.path, encoding="utf-8") as f:
                lines = [line.strip() for line in f]
        except (OSError, UnicodeDecodeError) as e:
            if self._stamp != "missing":
                log.error("key file %s cannot be read (%s): every request is refused until it can",
                          self.path, type(e).__name__)
            return "missing", ()
        keys, bad = [], 0
        for n, line in enumerate(lines, 1):
            if not line or line.startswith("#"):
                continue
            if len(line) < MIN_KEY_CHARS or any(c.isspace() for c in line):
                bad += 1
                log.warning("key file %s line %d ignored: a key is one word of at least %d characters",
                            self.path, n, MIN_KEY_CHARS)
                continue
            keys.append(line.encode("utf-8"))
        log.info("key file %s: %d key(s) accepted%s", self.path, len(keys), f", {bad} ignored" if bad else "")
        return stamp, tuple(keys)

    def refresh(self, force=False):
        now = time.monotonic()
        if force or now - self._checked >= self.recheck_s:
            with self._lock:
                self._stamp, self._keys = self._read()
                self._checked = now
        return self._keys

    def accepts(self, token):
        if not token:
            return False
        given = token.encode("utf-8", "surrogateescape")
        # compare with every key, so the time taken says nothing about which one matched
        return sum(hmac.compare_digest(given, key) for key in self.refresh()) > 0


def bearer(header):
    """The token of an `Authorization: Bearer TOKEN` header, or None."""
    scheme, _, token = (header or "").strip().partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


class Gateway(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128        # the listen backlog (socketserver's default is 5)

    def __init__(self, listen, upstream, keys, max_body, timeout_s=60.0, max_connections=512):
        host, port = listen
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.upstream = urlsplit(upstream)
        if self.upstream.scheme != "http" or not self.upstream.hostname:
            raise ValueError(f"--upstream must be http://HOST:PORT, got {upstream!r}")
        self.keys, self.max_body, self.timeout_s = keys, max_body, timeout_s
        self.connections = threading.BoundedSemaphore(max_connections)
        self.in_flight, self._flight_lock = 0, threading.Lock()
        self._local = threading.local()
        self.draining = False
        super().__init__((host, port), Handler)

    def server_bind(self):
        # HTTPServer.server_bind would look up the host's name (socket.getfqdn), a DNS query at every start
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    # ---- connections to TorchServe, one kept per client thread
    def upstream_connection(self, fresh=False):
        conn = getattr(self._local, "conn", None)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port or 80, timeout=self.timeout_s)
            self._local.conn = conn
        return conn

    def forward(self, method, path, headers, body):
        """-> (status, reason, headers, body) from TorchServe. A kept connection that TorchServe closed meanwhile
        is opened again once (classification has no side effects, so a repeat is harmless)."""
        for attempt in (0, 1):
            conn = self.upstream_connection(fresh=attempt > 0)
            try:
                conn.request(method, path, body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
                if r.will_close:
                    conn.close()
                    self._local.conn = None
                return r.status, r.reason, r.getheaders(), data
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
            except BaseException:
                conn.close()
                self._local.conn = None
                raise

    # ---- accounting for a clean stop
    def begin(self):
        with self._flight_lock:
            self.in_flight += 1

    def end(self):
        with self._flight_lock:
            self.in_flight -= 1

    def drain(self, timeout_s):
        """Stop accepting connections, then wait up to timeout_s for the requests under way to be answered."""
        self.draining = True
        self.shutdown()
        end = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < end:
            time.sleep(0.05)
        self.server_close()

    def process_request(self, request, client_address):
        if not self.connections.acquire(blocking=False):
            request.close()     # more open connections than max_connections: refuse at once
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.release()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive: clients reuse their connections
    server_version = "textclf-gateway"
    sys_version = ""
    timeout = 75                    # seconds a client connection may sit idle or dribble its request

    def setup(self):
        super().setup()
        # The headers and the body of an answer leave in two writes: without this, Nagle's algorithm holds the
        # second until the client's delayed ACK (~40 ms) arrives.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self):
        self.handle_any()

    do_POST = do_PUT = do_DELETE = do_OPTIONS = do_PATCH = do_GET

    def handle_any(self):
        self.server.begin()
        try:
            path = self.path.split("?", 1)[0]
            if path == "/live" and self.command == "GET":
                return self.live()
            if not (path in OPEN_PATHS and self.command == "GET") and not self.server.keys.accepts(
                    bearer(self.headers.get("Authorization"))):
                return self.refuse(401, "authentication", "a valid key is needed: send 'Authorization: Bearer KEY'",
                                   {"WWW-Authenticate": 'Bearer realm="textclf"'})
            refusal, body = self.read_body()
            if refusal is None:
                self.relay(body)
        finally:
            if self.server.draining:
                self.close_connection = True
            self.server.end()

    def read_body(self):
        """-> (None, body: bytes or None when there is none), or (the refusal sent, None)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self.refuse(411, "validation", "send the body with a Content-Length (chunked bodies are not "
                                                  "accepted)"), None
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            return self.refuse(400, "validation", "Content-Length must be a whole number of bytes"), None
        if length > self.server.max_body:
            return self.refuse(413, "validation", f"the body has {length} bytes; the limit is "
                                                  f"{self.server.max_body}"), None
        if length:
            return None, self.rfile.read(length)
        return None, (None if self.command in ("GET", "OPTIONS", "DELETE") else b"")

    def relay(self, body):
        headers = {k: v for k, v in self.headers.items() if k.lower() not in DROPPED}
        forwarded = self.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{forwarded}, {self.client_address[0]}" if forwarded else self.client_address[0]
        try:
            status, reason, upstream_headers, data = self.server.forward(self.command, self.path, headers, body)
        except (socket.timeout, TimeoutError):
            return self.refuse(504, "unavailable", f"TorchServe did not answer within {self.server.timeout_s:g} s")
        except OSError as e:
            return self.refuse(502, "unavailable", f"TorchServe is not answering ({type(e).__name__})")
        self.send_response(status, reason)
        for k, v in upstream_headers:
            if k.lower() not in DROPPED:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def live(self):
        """Liveness: TorchServe's frontend answers /ping at all (500 'Unhealthy' while a worker restarts still
        counts: restarting the pod would not help it)."""
        try:
            status, _, _, _ = self.server.forward("GET", "/ping", {}, None)
        except OSError as e:
            return self.refuse(503, "unavailable", f"TorchServe is not answering ({type(e).__name__})")
        self.reply(200, {"status": "alive", "torchserve_ping": status})

    def refuse(self, status, kind, message, headers=None):
        if status >= 411 or status == 401:
            self.close_connection = True    # the unread body (if any) would be taken for the next request
        self.reply(status, {"error": message, "error_type": kind, "status": status}, headers)
        return status

    def reply(self, status, payload, headers=None):
        data = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):   # TorchServe's access log already records every request
        pass

    def log_error(self, fmt, *args):
        log.warning("%s: " + fmt, self.client_address[0], *args)


def parse_listen(value):
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--listen", type=parse_listen, default=("0.0.0.0", 8080), help="HOST:PORT (default 0.0.0.0:8080)")
    p.add_argument("--upstream", default="http://127.0.0.1:8085", help="TorchServe's inference address")
    p.add_argument("--keys", required=True, help="file of accepted keys, one a line (a mounted Secret)")
    p.add_argument("--max-body", type=int, default=524288, help="bytes; config.properties' max_request_size")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for TorchServe (above model-config.yaml's responseTimeout)")
    p.add_argument("--drain", type=float, default=35.0, help="seconds to finish requests under way on SIGTERM")
    p.add_argument("--check", action="store_true", help="only check that the key file holds a usable key")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gateway %(levelname)s %(message)s")
    keys = Keys(args.keys)
    if not keys.refresh():
        print(f"gateway: no usable key in {args.keys}: one key a line, each at least {MIN_KEY_CHARS} characters "
              "(e.g. `openssl rand -hex 32`); deploy/README.md 'Keys'", file=sys.stderr)
        return 2
    if args.check:
        return 0
    try:
        server = Gateway(args.listen, args.upstream, keys, args.max_body, args.timeout)
    except (OSError, ValueError) as e:
        print(f"gateway: cannot listen on {args.listen[0]}:{args.listen[1]}: {e}", file=sys.stderr)
        return 2
    stopping = threading.Event()

    def on_signal(signum, frame):
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=server.drain, args=(args.drain,), daemon=True).start()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("listening on %s:%d, forwarding to %s", *args.listen, args.upstream)
    server.serve_forever(poll_interval=0.5)
    while server.in_flight:     # serve_forever returned: drain() is finishing the requests under way
        time.sleep(0.05)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
