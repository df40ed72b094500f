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
Everything else needs a key, and only TorchServe's inference paths are passed on (ALLOWED_PREFIXES,
ALLOWED_PATHS; others 404), so a gateway pointed at the management port by mistake still cannot manage. They go
to TorchServe as they came, less the Authorization and hop-by-hop headers. Refusals carry the handler's JSON
shape, {"error", "error_type", "status"}, and close the connection, so that an unread body is never taken for
the next request.

Limits, so that slow or idle clients cannot hold the connections (Gateway's class attributes and arguments):
  IDLE_S      5 s     for a request to begin, on a new connection or one kept alive (then closed, no answer)
  HEAD_S      10 s    for the request line and headers once begun (408); HEAD_BYTES 16 KiB of them (431):
                      both enforced before the key is looked at
  body        10 s + 1 s per MB, 60 s at most, to arrive (408); --max-body bytes (413); chunked bodies are
              refused (411) and any other Transfer-Encoding (501)
  max_connections    512 connections served at once; probe_connections 8 more, kept for the probes: there one
                     GET /ping or /live is answered within PROBE_S (2 s), anything else gets 503; beyond both a
                     connection is closed unanswered.
There is no cap per client address: an ingress sends everything from one. Whoever keeps idle connections to
the gateway (an ingress's upstream keep-alive) should close them before IDLE_S, or a request sent just as the
gateway closes one can fail.

Standard library only: the image runs it as a script beside TorchServe, outside the .mar's Python path.
"""
import argparse
import hmac
import http.client
import io
import json
import logging
import os
import re
import signal
import socket
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import urlsplit

log = logging.getLogger("gateway")
MIN_KEY_CHARS = 32
# Not passed on: hop-by-hop headers, the client's key, and what http.client sets itself.
DROPPED = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
           "transfer-encoding", "upgrade", "expect", "host", "content-length", "authorization"}
# TorchServe's own Server and Date would follow the gateway's.
DROPPED_FROM_ANSWERS = DROPPED | {"server", "date"}
OPEN_PATHS = {"/ping", "/live"}
# TorchServe's inference API; nothing of the management API (/models, ...) is ever passed on.
ALLOWED_PATHS = {"/ping", "/live", "/api-description"}
ALLOWED_PREFIXES = ("/predictions/", "/explanations/", "/v1/models/", "/v2/")
PRINTABLE_ASCII = re.compile(r"[!-~]+")
CONTENT_LENGTH = re.compile(r"[0-9]{1,10}")


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


class DeadlineReader(io.RawIOBase):
    """A client socket's reading side under one deadline for a whole read (request head, body), not one per
    recv: a client sending a byte now and then cannot keep a connection by that."""

    def __init__(self, sock):
        self.sock, self.deadline = sock, float("inf")

    def readable(self):
        return True

    def readinto(self, buffer):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


class Gateway(HTTPServer):
    request_queue_size = 128        # the listen backlog (socketserver's default is 5)
    IDLE_S = 5.0                    # for a request to begin, on a new or a kept-alive connection
    HEAD_S = 10.0                   # for the request line and headers, from their first byte
    HEAD_BYTES = 16384              # request line and headers together
    PROBE_S = 2.0                   # for a whole probe request on a reserved connection, from its accept
    BODY_S, BODY_BYTES_PER_S, BODY_MAX_S = 10.0, 1_000_000, 60.0    # a body's (and an answer's) time to cross
    LINGER_S = 2.0                  # after a refusal, reading what the client still sends (see Handler.finish)

    def __init__(self, listen, upstream, keys, max_body, timeout_s=60.0, max_connections=512, probe_connections=8):
        host, port = listen
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.upstream = urlsplit(upstream)
        if self.upstream.scheme != "http" or not self.upstream.hostname:
            raise ValueError(f"--upstream must be http://HOST:PORT, got {upstream!r}")
        self.keys, self.max_body, self.timeout_s = keys, max_body, timeout_s
        self.max_connections = max_connections
        self.connections = threading.BoundedSemaphore(max_connections)
        self.probe_connections = threading.BoundedSemaphore(probe_connections)
        self.in_flight, self._flight_lock = 0, threading.Lock()
        self._local = threading.local()
        self.draining = False
        super().__init__((host, port), Handler)

    def transfer_s(self, nbytes):
        """Seconds allowed for nbytes to cross between the client and the gateway, either way."""
        return min(self.BODY_MAX_S, self.BODY_S + nbytes / self.BODY_BYTES_PER_S)

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
        """One thread per connection, MAX_CONNECTIONS of them; past that a connection takes one of the slots kept
        for the probes, and past those it is closed at once."""
        if self.connections.acquire(blocking=False):
            slots = self.connections
        elif self.probe_connections.acquire(blocking=False):
            slots = self.probe_connections
        else:
            self.shutdown_request(request)
            return
        try:
            threading.Thread(target=self.serve_connection, args=(request, client_address, slots), daemon=True).start()
        except BaseException:
            slots.release()
            self.shutdown_request(request)
            raise

    def serve_connection(self, request, client_address, slots):
        try:
            self.RequestHandlerClass(request, client_address, self, probes_only=slots is self.probe_connections)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            conn = getattr(self._local, "conn", None)
            if conn is not None:
                conn.close()
            slots.release()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive: clients reuse their connections
    server_version = "textclf-gateway"
    timeout = None                  # the deadlines are set per read and per answer instead

    def __init__(self, request, client_address, server, probes_only=False):
        # on a connection kept for the probes: one GET /ping or /live, nothing else
        self.probes_only, self.accepted = probes_only, time.monotonic()
        self.linger = False
        super().__init__(request, client_address, server)

    def setup(self):
        super().setup()
        # The headers and the body of an answer leave in two writes: without this, Nagle's algorithm holds the
        # second until the client's delayed ACK (~40 ms) arrives.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile.close()              # the socket's own file, replaced by one reading under deadlines
        self.reader = DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self.reader)

    def finish(self):
        super().finish()
        if self.linger:
            # Closing a socket with unread data resets the connection, and the client may lose the refusal before
            # reading it: say we are done, then read and drop what still comes, for a short while.
            try:
                self.connection.shutdown(socket.SHUT_WR)
                end = time.monotonic() + self.server.LINGER_S
                while (left := end - time.monotonic()) > 0:
                    self.connection.settimeout(left)
                    if not self.connection.recv(65536):
                        break
            except OSError:
                pass

    def version_string(self):
        return self.server_version

    def handle_one_request(self):
        """BaseHTTPRequestHandler's, with deadlines and a size limit on the request's head."""
        server = self.server
        self.close_connection, self.command, self.requestline, self.request_version = True, None, "", ""
        self.expect_continue = False
        try:
            if self.probes_only:
                self.reader.deadline = self.accepted + server.PROBE_S
            else:
                self.reader.deadline = time.monotonic() + server.IDLE_S
            if not self.rfile.peek(1):
                return                  # the client closed the connection
        except OSError:
            return                      # idle too long: close without a word, no request has begun
        if not self.probes_only:
            self.reader.deadline = time.monotonic() + server.HEAD_S
        try:
            if not (self.read_head() and self.parse_request()):
                return                  # the client closed, or the refusal is sent
            method = getattr(self, "do_" + self.command, None)
            if method is None:
                self.send_error(501, f"the method {self.command!r} is not supported")
            else:
                method()
        except OSError:
            self.close_connection = True    # the client left, or did not take the answer in time

    def read_head(self):
        """Read the request line (to self.raw_requestline) and the headers (for parse_request, which reads them
        from self.rfile), within the deadline set and HEAD_BYTES: -> False when the client closed or the head was
        refused."""
        limit, lines, size = self.server.HEAD_BYTES, [], 0
        try:
            while (not lines or lines[-1] not in (b"\r\n", b"\n")) and size <= limit:
                line = self.rfile.readline(limit - size + 1)
                if not line:
                    return False
                lines.append(line)
                size += len(line)
        except TimeoutError:
            seconds = self.server.PROBE_S if self.probes_only else self.server.HEAD_S
            self.refuse(408, "validation", f"the request line and headers did not arrive within {seconds:g} s")
            return False
        if size > limit:
            self.refuse(431, "validation", f"the request line and headers take over {limit} bytes")
            return False
        self.raw_requestline = lines[0]
        # parse_request reads the headers from self.rfile: this request's, and nothing after them
        self.rfile, self.socket_rfile = io.BytesIO(b"".join(lines[1:])), self.rfile
        return True

    def parse_request(self):
        try:
            return super().parse_request()
        finally:
            self.rfile = self.socket_rfile

    def handle_expect_100(self):
        # Sent by read_body once the key and the length have been accepted, not before the key is looked at.
        self.expect_continue = True
        return True

    def send_error(self, code, message=None, explain=None):
        """BaseHTTPRequestHandler's own refusals (bad request line, too many headers, unknown method) in the
        gateway's JSON shape."""
        if self.request_version == "HTTP/0.9":     # parse_request's guess for a malformed line: answer in 1.1
            self.request_version = ""
        self.refuse(code, "validation", message or explain or f"HTTP {code}")

    def do_GET(self):
        self.handle_any()

    do_POST = do_PUT = do_DELETE = do_OPTIONS = do_PATCH = do_GET

    def handle_any(self):
        self.server.begin()
        try:
            if self.server.draining or self.probes_only:
                self.close_connection = True
            path = self.path.split("?", 1)[0]
            if not PRINTABLE_ASCII.fullmatch(self.path):
                return self.refuse(400, "validation", "the path must be printable ASCII, without spaces or "
                                                      "control characters")
            if self.probes_only and not (path in OPEN_PATHS and self.command == "GET" and not self.has_body()):
                return self.refuse(503, "unavailable", f"the gateway is serving its limit of "
                                                       f"{self.server.max_connections} connections; try again",
                                   {"Retry-After": "1"})
            if path == "/live" and self.command == "GET":
                return self.live()
            if not (path in OPEN_PATHS and self.command == "GET") and not self.server.keys.accepts(
                    bearer(self.headers.get("Authorization"))):
                return self.refuse(401, "authentication", "a valid key is needed: send 'Authorization: Bearer KEY'",
                                   {"WWW-Authenticate": 'Bearer realm="textclf"'})
            if not (path in ALLOWED_PATHS or path.startswith(ALLOWED_PREFIXES)):
                return self.refuse(404, "validation", f"no such path: {path}; the gateway passes on "
                                                      f"{', '.join(sorted(ALLOWED_PATHS))} and "
                                                      f"{', '.join(p + '...' for p in ALLOWED_PREFIXES)}")
            refusal, body = self.read_body()
            if refusal is None:
                self.relay(body)
        finally:
            self.server.end()

    def has_body(self):
        return "Transfer-Encoding" in self.headers or self.headers.get("Content-Length", "0").strip() != "0"

    def read_body(self):
        """-> (None, body: bytes or None when there is none), or (the refusal sent, None)."""
        codings = self.headers.get_all("Transfer-Encoding") or []
        if codings:
            if [c.strip().lower() for c in codings] == ["chunked"]:
                return self.refuse(411, "validation", "send the body with a Content-Length (chunked bodies are "
                                                      "not accepted)"), None
            return self.refuse(501, "validation", f"Transfer-Encoding {', '.join(codings)!r} is not supported: "
                                                  "send the body as it is, with a Content-Length"), None
        lengths = self.headers.get_all("Content-Length") or []
        if len(lengths) > 1 or (lengths and not CONTENT_LENGTH.fullmatch(lengths[0].strip(" \t"))):
            return self.refuse(400, "validation", "Content-Length must appear once, as a whole number of bytes "
                                                  "(digits only)"), None
        length = int(lengths[0]) if lengths else 0
        if length > self.server.max_body:
            return self.refuse(413, "validation", f"the body has {length} bytes; the limit is "
                                                  f"{self.server.max_body}"), None
        if not length:
            return None, (None if self.command in ("GET", "OPTIONS", "DELETE") else b"")
        seconds = self.server.transfer_s(length)
        try:
            if self.expect_continue:
                self.connection.settimeout(seconds)
                self.send_response_only(100)
                self.end_headers()
            self.reader.deadline = time.monotonic() + seconds
            body = self.rfile.read(length)
        except TimeoutError:
            return self.refuse(408, "validation", f"the body of {length} bytes did not arrive within "
                                                  f"{seconds:g} s"), None
        if len(body) < length:
            raise ConnectionResetError("the client closed the connection before sending its whole body")
        return None, body

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
        except (http.client.InvalidURL, ValueError) as e:  # what http.client will not send (a bad header...)
            return self.refuse(400, "validation", f"the request cannot be passed on ({type(e).__name__})")
        except http.client.HTTPException as e:
            return self.refuse(502, "unavailable", f"TorchServe's answer cannot be read ({type(e).__name__})")
        self.connection.settimeout(self.server.transfer_s(len(data)))
        self.send_response(status, reason)
        for k, v in upstream_headers:
            if k.lower() not in DROPPED_FROM_ANSWERS:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
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
        """Every refusal closes the connection: what the client sent after the refused part (an unread body, a
        malformed rest) must never be read as its next request."""
        self.close_connection = self.linger = True
        self.reply(status, {"error": message, "error_type": kind, "status": status}, headers)
        return status

    def reply(self, status, payload, headers=None):
        data = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        self.connection.settimeout(self.server.transfer_s(len(data)))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
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
    drainer = threading.Thread(target=server.drain, args=(args.drain,), daemon=True)

    def on_signal(signum, frame):
        if drainer.ident is None:    # the first signal starts the drain; more change nothing
            drainer.start()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("listening on %s:%d, forwarding to %s", *args.listen, args.upstream)
    server.serve_forever(poll_interval=0.5)
    # serve_forever returned: drain() is finishing the requests under way, for --drain seconds at most (plus
    # the half-second it may take serve_forever to notice); what is still under way then is abandoned.
    if drainer.ident is not None:
        drainer.join(args.drain + 5)
    if server.in_flight:
        log.warning("stopped with %d request(s) unanswered after the %g s drain", server.in_flight, args.drain)
    else:
        log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
