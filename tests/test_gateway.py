"""serving/gateway.py against a stand-in TorchServe (an echo server on loopback): the key check, the open
probe paths, key rotation through the file, body limits, errors when TorchServe is away, and a clean stop;
slow or malformed clients (deadlines, head size, framing, paths) over raw sockets, and the connections kept for
the probes. The same gateway in front of a real TorchServe: tests/test_container.py."""
import http.client
import json
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from serving import gateway

class Echo(BaseHTTPRequestHandler):
    """Answers every request with what it received; /ping says Healthy; /predictions/slow waits 0.5 s first,
    /predictions/hang until `release` is set (30 s at most)."""
    protocol_version = "HTTP/1.1"
    release = threading.Event()

    def do_GET(self):
        if self.path == "/predictions/slow":
            time.sleep(0.5)
        if self.path == "/predictions/hang":
            self.release.wait(30)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        payload = {"status": "Healthy"} if self.path == "/ping" else {
            "method": self.command, "path": self.path, "headers": dict(self.headers.items()),
            "body": body.decode("utf-8", "replace")}
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except OSError:     # /predictions/hang: the gateway in front went away meanwhile
            pass

    do_POST = do_OPTIONS = do_GET

    def log_message(self, *args):
        pass


def serve(server):
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@pytest.fixture
def upstream():
    server = serve(ThreadingHTTPServer(("127.0.0.1", 0), Echo))
    yield server
    server.shutdown()
    server.server_close()


def write_keys(path, *keys):
    """Replace the file the way a Secret volume does: write aside, then rename over it."""
    tmp = path.with_suffix(".new")
    tmp.write_text("".join(f"{k}\n" for k in keys))
    os.replace(tmp, path)


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "api-keys"
    write_keys(path, "# comment lines and blank lines are skipped", "", KEY)
    return path


KEY, OTHER = secrets.token_hex(32), secrets.token_hex(32)


@pytest.fixture
def gw(upstream, key_file):
    keys = gateway.Keys(str(key_file), recheck_s=0)
    server = serve(gateway.Gateway(("127.0.0.1", 0), f"http://127.0.0.1:{upstream.server_address[1]}", keys,
                                   max_body=1024, timeout_s=5))
    yield server
    server.shutdown()
    server.server_close()


def call(server, method, path, key=None, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    h = dict(headers or {})
    if key:
        h["Authorization"] = f"Bearer {key}"
    conn.request(method, path, body=body, headers=h)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r, (json.loads(data) if data else None)


def test_a_request_without_the_key_is_refused_with_401_and_json(gw):
    for key in (None, OTHER, KEY[:-1], KEY + "x"):
        r, body = call(gw, "POST", "/predictions/snips", key, b"play jazz", {"Content-Type": "text/plain"})
        assert r.status == 401 and body["error_type"] == "authentication" and body["status"] == 401
        assert r.getheader("WWW-Authenticate", "").startswith("Bearer")
    r, _ = call(gw, "POST", "/predictions/snips", headers={"Authorization": f"Basic {KEY}"})
    assert r.status == 401


def test_the_key_lets_the_request_through_unchanged_but_for_the_key(gw):
    r, body = call(gw, "POST", "/predictions/snips?x=1", KEY, b"play jazz",
                   {"Content-Type": "text/plain; charset=utf-8", "X-Request-Id": "r1"})
    assert r.status == 200
    assert (body["method"], body["path"], body["body"]) == ("POST", "/predictions/snips?x=1", "play jazz")
    sent = {k.lower(): v for k, v in body["headers"].items()}
    assert "authorization" not in sent, "the client's key must not reach TorchServe"
    assert sent["content-type"] == "text/plain; charset=utf-8" and sent["x-request-id"] == "r1"
    assert sent["x-forwarded-for"] == "127.0.0.1"
    # the scheme is case-insensitive, spaces around the token are tolerated
    r, _ = call(gw, "POST", "/v2/models/snips/infer", None, b"{}", {"Authorization": f"bearer   {KEY}  "})
    assert r.status == 200


def test_probe_paths_are_open_and_only_for_get(gw, upstream):
    r, body = call(gw, "GET", "/ping")
    assert r.status == 200 and body == {"status": "Healthy"}
    r, body = call(gw, "GET", "/live")
    assert r.status == 200 and body == {"status": "alive", "torchserve_ping": 200}
    r, _ = call(gw, "POST", "/ping")
    assert r.status == 401
    upstream.shutdown()
    upstream.server_close()
    r, body = call(gw, "GET", "/live")
    assert r.status == 503 and body["error_type"] == "unavailable"
    r, body = call(gw, "POST", "/predictions/snips", KEY, b"x")
    assert r.status == 502 and "not answering" in body["error"]


def test_keys_follow_the_file(gw, key_file):
    assert call(gw, "GET", "/predictions/snips", KEY)[0].status == 200
    write_keys(key_file, KEY, OTHER)                 # rotation: both work while clients move over
    assert call(gw, "GET", "/predictions/snips", KEY)[0].status == 200 and call(gw, "GET", "/predictions/snips", OTHER)[0].status == 200
    write_keys(key_file, OTHER)                      # the old key is withdrawn
    assert call(gw, "GET", "/predictions/snips", KEY)[0].status == 401 and call(gw, "GET", "/predictions/snips", OTHER)[0].status == 200
    write_keys(key_file, "short", "two words " * 8)  # no usable key: every request refused
    assert call(gw, "GET", "/predictions/snips", OTHER)[0].status == 401 and call(gw, "GET", "/predictions/snips", "short")[0].status == 401
    key_file.unlink()                                # a missing file fails closed too
    assert call(gw, "GET", "/predictions/snips", OTHER)[0].status == 401
    assert call(gw, "GET", "/ping")[0].status == 200


def test_bodies_over_the_limit_or_chunked_are_refused_before_they_are_read(gw):
    r, body = call(gw, "POST", "/predictions/snips", KEY, b"x" * 1025)
    assert r.status == 413 and "limit is 1024" in body["error"]
    assert call(gw, "POST", "/predictions/snips", KEY, b"x" * 1024)[0].status == 200
    conn = http.client.HTTPConnection("127.0.0.1", gw.server_address[1], timeout=10)
    conn.putrequest("POST", "/predictions/snips")
    conn.putheader("Authorization", f"Bearer {KEY}")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    conn.send(b"3\r\nabc\r\n0\r\n\r\n")
    r = conn.getresponse()
    assert r.status == 411 and json.loads(r.read())["error_type"] == "validation"
    conn.close()


def test_one_client_connection_carries_many_requests(gw):
    conn = http.client.HTTPConnection("127.0.0.1", gw.server_address[1], timeout=10)
    for i in range(5):
        conn.request("POST", "/predictions/snips", body=f"text {i}".encode(), headers={"Authorization": f"Bearer {KEY}"})
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["body"] == f"text {i}"
    conn.close()


def test_drain_answers_the_requests_under_way_then_stops(gw):
    answers = []
    t = threading.Thread(target=lambda: answers.append(call(gw, "GET", "/predictions/slow", KEY)[0].status))
    t.start()
    time.sleep(0.2)                       # the request is in the gateway, waiting for the upstream
    gw.drain(timeout_s=5)
    t.join(5)
    assert answers == [200]
    with pytest.raises(OSError):
        call(gw, "GET", "/ping")


def test_main_refuses_to_start_without_a_usable_key(tmp_path, capsys):
    (tmp_path / "keys").write_text("replace-me\n")
    assert gateway.main(["--listen", "127.0.0.1:0", "--keys", str(tmp_path / "keys")]) == 2
    assert "no usable key" in capsys.readouterr().err
    assert gateway.main(["--listen", "127.0.0.1:0", "--keys", str(tmp_path / "missing")]) == 2


def test_bearer_parsing():
    assert gateway.bearer(f"Bearer {KEY}") == KEY
    assert gateway.bearer("Bearer") is None and gateway.bearer("") is None and gateway.bearer(None) is None
    assert gateway.bearer(f"Token {KEY}") is None


# ---- raw sockets: what http.client would not send

def connect(server, timeout=5):
    return socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=timeout)


def read_to_end(sock):
    """Everything the gateway sends until it closes the connection; socket.timeout if it keeps it open."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def answers(data):
    """-> [(status, headers with lower-case names, body)] of the HTTP answers in data, in order."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict((k.strip().lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:]))
        n = int(headers.get("content-length", 0))
        out.append((int(lines[0].split()[1]), headers, rest[:n]))
        data = rest[n:]
    return out


def exchange(server, data):
    """Send data, read until the gateway closes: the answers it gave."""
    with connect(server) as sock:
        sock.sendall(data)
        return answers(read_to_end(sock))


def dribble(server, start, piece, seconds):
    """Send start, then piece every 0.2 s for up to `seconds`, stopping as soon as the gateway answers: -> what it
    sent until it closed, or b"" when it never answered."""
    with connect(server) as sock:
        sock.sendall(start)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if select.select([sock], [], [], 0.2)[0]:
                return read_to_end(sock)
            sock.sendall(piece)
    return b""


def head(method, path, *headers, key=KEY):
    lines = [f"{method} {path} HTTP/1.1", "Host: gateway"] + ([f"Authorization: Bearer {key}"] if key else [])
    return ("\r\n".join(lines + list(headers)) + "\r\n\r\n").encode("latin-1")


def test_a_client_sending_its_headers_a_byte_at_a_time_is_cut_off_at_the_head_deadline(gw):
    gw.HEAD_S = 1.0     # 10 s in service; every piece below arrives well within any per-read timeout
    got = dribble(gw, b"GET /ping HTTP/1.1\r\n", b"X-Slow: 1\r\n", seconds=6)
    [(status, headers, body)] = answers(got)
    assert status == 408 and headers["connection"] == "close"
    assert json.loads(body)["error_type"] == "validation"


def test_a_body_sent_too_slowly_is_cut_off_at_its_deadline(gw):
    gw.BODY_S = 0.5     # 10 s + 1 s per MB in service
    got = dribble(gw, head("POST", "/predictions/snips", "Content-Length: 20") + b"abc", b"d", seconds=6)
    [(status, headers, body)] = answers(got)
    assert status == 408 and "did not arrive" in json.loads(body)["error"]


def test_a_kept_connection_left_idle_is_closed(gw):
    gw.IDLE_S = 0.5     # 5 s in service
    conn = http.client.HTTPConnection("127.0.0.1", gw.server_address[1], timeout=10)
    conn.request("GET", "/ping")
    r = conn.getresponse()
    assert r.status == 200 and r.read()
    conn.sock.settimeout(5)
    assert conn.sock.recv(1) == b"", "the gateway should have closed the idle connection"
    conn.close()
    with connect(gw) as sock:   # a connection that never sends a request is closed too, without an answer
        assert read_to_end(sock) == b""


def test_request_heads_over_16_KiB_or_100_headers_are_refused_before_the_key_is_looked_at(gw):
    padding = [f"X-Pad-{i}: {'a' * 500}" for i in range(40)]          # about 20 KB
    [(status, headers, body)] = exchange(gw, head("GET", "/predictions/snips", *padding, key=None))
    assert status == 431 and headers["connection"] == "close" and "16384 bytes" in json.loads(body)["error"]
    [(status, _, body)] = exchange(gw, head("GET", "/predictions/snips", "X-Long: " + "a" * 20000))
    assert status == 431
    many = [f"X-{i}: 1" for i in range(101)]                           # small, but more than http.client takes
    [(status, headers, body)] = exchange(gw, head("GET", "/ping", *many))
    assert status == 431 and json.loads(body)["status"] == 431
    # just under the limit is fine
    fits = [f"X-Pad-{i}: {'a' * 500}" for i in range(30)]
    assert call(gw, "GET", "/ping", headers=dict(h.split(": ") for h in fits))[0].status == 200


def test_probes_are_answered_on_the_kept_connections_when_every_other_one_is_taken(upstream, key_file):
    keys = gateway.Keys(str(key_file), recheck_s=0)
    server = serve(gateway.Gateway(("127.0.0.1", 0), f"http://127.0.0.1:{upstream.server_address[1]}", keys,
                                   max_body=1024, timeout_s=5, max_connections=2, probe_connections=4))
    idle = [connect(server) for _ in range(2)]      # they send nothing and hold both ordinary connections
    try:
        time.sleep(0.2)
        assert call(server, "GET", "/ping")[0].status == 200
        r, body = call(server, "GET", "/live")
        assert r.status == 200 and body["torchserve_ping"] == 200
        r, body = call(server, "POST", "/predictions/snips", KEY, b"play jazz")
        assert r.status == 503 and body["error_type"] == "unavailable" and r.getheader("Retry-After") == "1"
        assert r.getheader("Connection") == "close"
    finally:
        for sock in idle:
            sock.close()
        server.shutdown()
        server.server_close()


def test_after_a_refusal_the_connection_is_closed_so_the_rest_is_never_read_as_a_request(gw):
    got = exchange(gw, head("GET", "/ping", "Content-Length: abc", key=None) + head("GET", "/live", key=None))
    assert [a[0] for a in got] == [400]
    got = exchange(gw, head("POST", "/predictions/snips", "Content-Length: 20", key=None)
                   + head("GET", "/ping", key=None)[:20])
    assert [a[0] for a in got] == [401]
    got = exchange(gw, head("POST", "/models") + head("GET", "/ping"))
    assert [a[0] for a in got] == [404]


@pytest.mark.parametrize("lengths", [["1_0"], ["+5"], ["-1"], ["0x5"], ["5 5"], [""], ["12345678901"], ["5", "5"],
                                     ["5", "6"]])
def test_content_length_must_be_plain_digits_and_appear_once(gw, lengths):
    request = head("POST", "/predictions/snips", *(f"Content-Length: {n}" for n in lengths)) + b"hello"
    [(status, headers, body)] = exchange(gw, request)
    assert status == 400 and headers["connection"] == "close" and "Content-Length" in json.loads(body)["error"]


def test_content_length_with_spaces_around_it_is_accepted(gw):
    request = head("POST", "/predictions/snips", "Content-Length:   5  ", "Connection: close") + b"hello"
    [(status, _, body)] = exchange(gw, request)
    assert status == 200 and json.loads(body)["body"] == "hello"


@pytest.mark.parametrize("coding, status", [("gzip", 501), ("gzip, chunked", 501), ("identity", 501),
                                            ("chunked", 411), ("Chunked", 411)])
def test_only_plain_bodies_are_taken_a_transfer_encoding_is_refused(gw, coding, status):
    request = head("POST", "/predictions/snips", f"Transfer-Encoding: {coding}") + b"5\r\nhello\r\n0\r\n\r\n"
    [(got, headers, body)] = exchange(gw, request)
    assert got == status and headers["connection"] == "close" and json.loads(body)["error_type"] == "validation"


def test_control_characters_in_the_path_are_refused_with_400(gw):
    for path in ("/predictions/x\x01y", "/predictions/x\x7fy", "/predictions/caf\xe9"):
        [(status, headers, body)] = exchange(gw, head("GET", path))
        assert status == 400 and json.loads(body)["error_type"] == "validation", path


@pytest.mark.parametrize("error, status", [(http.client.InvalidURL("URL can't contain control characters"), 400),
                                           (ValueError("Invalid header value"), 400),
                                           (http.client.BadStatusLine("?"), 502)])
def test_what_http_client_cannot_send_or_read_is_an_answer_not_a_traceback(gw, monkeypatch, error, status):
    def forward(*args):
        raise error
    monkeypatch.setattr(gw, "forward", forward)
    r, body = call(gw, "POST", "/predictions/snips", KEY, b"x")
    assert r.status == status and body["status"] == status


def test_only_the_inference_paths_are_passed_on(gw):
    for method, path in [("GET", "/models"), ("POST", "/models?url=x.mar"), ("DELETE", "/models/snips"),
                         ("GET", "/"), ("OPTIONS", "/"), ("GET", "/metrics"), ("GET", "/predictionsx"),
                         ("GET", "/ping/../models")]:
        r, body = call(gw, method, path, KEY)
        assert r.status == 404 and body["error_type"] == "validation", (method, path)
    [(status, _, _)] = exchange(gw, head("GET", "http://gateway/models", "Connection: close"))
    assert status == 404
    for method, path in [("POST", "/predictions/snips"), ("POST", "/explanations/snips"),
                         ("POST", "/v1/models/snips:predict"), ("POST", "/v2/models/snips/infer"),
                         ("GET", "/v2/health/ready"), ("GET", "/api-description"), ("OPTIONS", "/predictions/snips")]:
        r, body = call(gw, method, path, KEY, b"{}" if method == "POST" else None)
        assert r.status == 200 and body["path"] == path, (method, path)


def test_the_answer_carries_the_gateways_server_and_date_only(gw):
    conn = http.client.HTTPConnection("127.0.0.1", gw.server_address[1], timeout=10)
    conn.request("POST", "/predictions/snips", body=b"x", headers={"Authorization": f"Bearer {KEY}"})
    r = conn.getresponse()
    r.read()
    assert r.status == 200
    assert r.headers.get_all("Server") == ["textclf-gateway"] and len(r.headers.get_all("Date")) == 1
    conn.close()


def test_expect_100_continue_is_not_granted_before_the_key_is_checked(gw):
    with connect(gw) as sock:
        sock.sendall(head("POST", "/predictions/snips", "Content-Length: 5", "Expect: 100-continue", key=None))
        first = sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 401 ")
    with connect(gw) as sock:
        sock.sendall(head("POST", "/predictions/snips", "Content-Length: 5", "Expect: 100-continue"))
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 ")
        sock.sendall(b"hello")
        sock.settimeout(5)
        data = b""
        while b"hello" not in data:
            data += sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 200 ")


def call_quietly(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {KEY}"})
        conn.getresponse().read()
    except OSError:
        pass
    finally:
        conn.close()


def test_main_stops_within_its_drain_time_even_with_a_request_still_under_way(upstream, key_file):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    Echo.release.clear()
    proc = subprocess.Popen([sys.executable, gateway.__file__, "--listen", f"127.0.0.1:{port}", "--keys", str(key_file),
                             "--upstream", f"http://127.0.0.1:{upstream.server_address[1]}", "--drain", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        hung = threading.Thread(target=call_quietly, args=(port, "/predictions/hang"), daemon=True)
        hung.start()
        time.sleep(0.5)                 # the request waits in the gateway for the stand-in, which waits for 30 s
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert b"unanswered after the 1 s drain" in proc.stderr.read()
    finally:
        Echo.release.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
