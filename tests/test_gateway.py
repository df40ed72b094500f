"""serving/gateway.py against a stand-in TorchServe (an echo server on loopback): the key check, the open
probe paths, key rotation through the file, body limits, errors when TorchServe is away, and a clean stop.
The same gateway in front of a real TorchServe: tests/test_container.py."""
import http.client
import json
import os
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from serving import gateway

class Echo(BaseHTTPRequestHandler):
    """Answers every request with what it received; /ping says Healthy; /slow waits 0.5 s first."""
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/slow":
            time.sleep(0.5)
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
        self.wfile.write(data)

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
    assert call(gw, "GET", "/models", KEY)[0].status == 200
    write_keys(key_file, KEY, OTHER)                 # rotation: both work while clients move over
    assert call(gw, "GET", "/models", KEY)[0].status == 200 and call(gw, "GET", "/models", OTHER)[0].status == 200
    write_keys(key_file, OTHER)                      # the old key is withdrawn
    assert call(gw, "GET", "/models", KEY)[0].status == 401 and call(gw, "GET", "/models", OTHER)[0].status == 200
    write_keys(key_file, "short", "two words " * 8)  # no usable key: every request refused
    assert call(gw, "GET", "/models", OTHER)[0].status == 401 and call(gw, "GET", "/models", "short")[0].status == 401
    key_file.unlink()                                # a missing file fails closed too
    assert call(gw, "GET", "/models", OTHER)[0].status == 401
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
    t = threading.Thread(target=lambda: answers.append(call(gw, "GET", "/slow", KEY)[0].status))
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
