"""The proxy's guarantees, each checked against the real nginx binary on loopback: in front of a real TorchServe
(deploy/entrypoint.sh, as the pod runs it, with deadlines shortened to keep the test quick), and, for what only an
upstream can see (the headers it is sent, a request under way at SIGTERM), in front of a stand-in upstream."""
import contextlib
import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from podutil import KEY, running_pod
from serving.proxy import ROOT, find_nginx, read_keys
from serving.torchserve import free_ports

pytestmark = pytest.mark.serving
NAME = "toy"
HEAD_S, BODY_S, IDLE_S = 2, 2, 1
MAX_BODY = 524288           # config.properties' max_request_size, which the entrypoint hands to the proxy


@pytest.fixture(scope="module")
def pod(tiny_ckpt, tmp_path_factory):
    with running_pod(tmp_path_factory, "proxy", {NAME: tiny_ckpt},
                     {"PROXY_HEAD_S": str(HEAD_S), "PROXY_BODY_S": str(BODY_S), "PROXY_IDLE_S": str(IDLE_S)}) as p:
        yield p


def port_of(url):
    return int(url.rsplit(":", 1)[1])


def connect(port, timeout=10):
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_all(sock):
    """Everything the server sends until it closes the connection."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, socket.timeout):
            return data
        if not chunk:
            return data
        data += chunk


def status_and_json(raw):
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body.decode()) if body.strip() else None


def predict(url, key=KEY, data=b"rain", content_type="text/plain", **kwargs):
    headers = {"Content-Type": content_type} | ({"Authorization": f"Bearer {key}"} if key else {})
    return requests.post(f"{url}/predictions/{NAME}", data=data, headers=headers, timeout=30, **kwargs)


# ---- the key

def test_no_key_a_wrong_key_or_a_malformed_one_get_401_in_json(pod):
    for headers in ({}, {"Authorization": f"Bearer {secrets.token_hex(32)}"}, {"Authorization": KEY},
                    {"Authorization": f"Basic {KEY}"}, {"Authorization": f"Bearer {KEY[:20]}"},
                    {"Authorization": f"Bearer ../../{KEY}"}):
        r = requests.post(f"{pod.url}/predictions/{NAME}", data=b"rain", timeout=30,
                          headers=headers | {"Content-Type": "text/plain"})
        assert r.status_code == 401, (headers, r.text)
        assert r.json() == {"error": "missing or unknown key: send Authorization: Bearer KEY",
                            "error_type": "authentication", "status": 401}
        assert r.headers["Content-Type"].startswith("application/json")


def test_with_the_key_the_answer_is_torchserves_own(pod, tiny_ckpt):
    from textclf.predict import Predictor
    r = predict(pod.url, data=json.dumps({"texts": ["rain", "play jazz"]}).encode(), content_type="application/json")
    assert r.status_code == 200, r.text
    expected = Predictor.from_checkpoint(tiny_ckpt).predict(["rain", "play jazz"], top_k=1)
    assert [p["label"] for p in r.json()["predictions"]] == [e["label"] for e in expected]
    # the scheme is case-insensitive (RFC 9110); the key is not
    r = requests.post(f"{pod.url}/predictions/{NAME}", data=b"rain", timeout=30,
                      headers={"Authorization": f"bearer {KEY}", "Content-Type": "text/plain"})
    assert r.status_code == 200
    assert predict(pod.url, key=KEY.upper()).status_code == 401
    # the handler's refusals pass through unchanged
    r = predict(pod.url, data=b"{}", content_type="application/json")
    assert r.status_code == 400 and r.json()["error_type"] == "validation", r.text


def test_a_rotated_key_file_takes_effect_without_dropping_a_request(pod):
    """Clients keep sending on kept-alive connections while the key file goes from {old} to {old, new} to {new}:
    no request fails for any other reason than its key, and every change is in force within 2 s."""
    new = secrets.token_hex(32)
    outcomes, stop = [], threading.Event()

    def client(key):
        with requests.Session() as s:
            while not stop.is_set():
                try:
                    r = s.post(f"{pod.url}/predictions/{NAME}", data=b"rain", timeout=30,
                               headers={"Content-Type": "text/plain", "Authorization": f"Bearer {key}"})
                    outcomes.append((key, r.status_code))
                except requests.RequestException as e:
                    outcomes.append((key, repr(e)))

    def replace(text):
        staged = pod.keys.with_suffix(".new")
        staged.write_text(text)
        os.replace(staged, pod.keys)
        time.sleep(2)

    threads = [threading.Thread(target=client, args=(k,)) for k in (KEY, new)]
    for t in threads:
        t.start()
    try:
        time.sleep(1)
        replace(f"{KEY}\n{new}\n")
        both = len(outcomes)
        time.sleep(1)
        assert predict(pod.url, key=new).status_code == 200
        replace(f"# rotated\n{new}\n")
        assert predict(pod.url, key=KEY).status_code == 401
        assert predict(pod.url, key=new).status_code == 200
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        replace(f"{KEY}\n")
    assert predict(pod.url).status_code == 200
    assert all(status in (200, 401) for _, status in outcomes), [o for o in outcomes if o[1] not in (200, 401)]
    assert len(outcomes) > 20 and both > 0
    assert any(k == new and s == 200 for k, s in outcomes) and any(k == KEY and s == 401 for k, s in outcomes)


def test_a_file_without_a_usable_key_fails_closed(tmp_path):
    (tmp_path / "keys").write_text(f"# comment\n\nshort\n{KEY} trailing\n")
    keys, warnings = read_keys(tmp_path / "keys")
    assert keys == set()
    assert [w.split(": ", 1)[0] for w in warnings] == [f"{tmp_path / 'keys'}:3", f"{tmp_path / 'keys'}:4"]
    assert all(KEY not in w for w in warnings), "a key must never be logged"
    done = subprocess.run([sys.executable, str(ROOT / "serving" / "proxy.py"), "--keys", str(tmp_path / "keys"),
                           "--work", str(tmp_path / "w"), "--check"], capture_output=True, text=True)
    assert done.returncode == 2 and "holds no usable key" in done.stderr


def test_keys_are_32_to_128_characters(tmp_path):
    """Each key is a file name in the keys folder: 128 characters at most, well under the 255-byte limit."""
    longest, too_long = "a" * 128, "b" * 129
    (tmp_path / "keys").write_text(f"{longest}\n{too_long}\n{'c' * 31}\n")
    keys, warnings = read_keys(tmp_path / "keys")
    assert keys == {longest} and len(warnings) == 2


# ---- the paths

def raw_request(port, request):
    with connect(port) as s:
        s.sendall(request)
        return status_and_json(read_all(s))


@pytest.mark.parametrize("path", [
    f"/predictions/{NAME}/1.0/../../../ping", f"/predictions/{NAME}/1.0/..%2F..%2F..%2Fping",
    f"/explanations/{NAME}/1.0/../../../ping", f"/api-description/..%2Fpredictions/{NAME}",
    f"/predictions/{NAME}%2F1.0", f"//predictions/{NAME}", f"/predictions/./{NAME}"])
def test_paths_that_are_not_canonical_are_refused_before_anything_else(pod, path):
    """nginx picks a location from the cleaned-up path but would pass the client's own on; TorchServe decodes
    %2F and does not resolve "..": such a path could match /ping here and run the model there, without a key."""
    before = requests.get(pod.metrics + "/metrics", timeout=10).text.count("\n")
    for key in ((), (f"Authorization: Bearer {KEY}",)):
        status, body = raw_request(port_of(pod.url), "\r\n".join([
            f"GET {path} HTTP/1.1", "Host: x", "Content-Type: text/plain", "Content-Length: 13", *key,
            "Connection: close", "", "rain tomorrow"]).encode())
        # 400, or 413 where the cleaned-up path is a probe's, which takes no body: never the model
        assert (status, body["error_type"]) in ((400, "bad_request"), (413, "too_large")), (path, status, body)
        status, body = raw_request(port_of(pod.url), f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        assert status == 400 and body["error_type"] == "bad_request", (path, status, body)
    assert requests.get(pod.metrics + "/metrics?a=%2e", timeout=10).status_code == 200   # a query may be escaped
    after = requests.get(pod.metrics + "/metrics", timeout=10).text
    assert before > 0 and "ts_inference_requests_total" in after


def test_the_open_paths_take_no_body_and_speak_http_1_only(pod):
    for path in ("/ping", "/live", "/v2/health/ready", "/v2/health/live"):
        status, body = raw_request(port_of(pod.url), (
            f"GET {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\nConnection: close\r\n\r\n").encode())
        assert status == 413 and body["error_type"] == "too_large", (path, status)
    for port in (port_of(pod.url), port_of(pod.metrics)):
        status, body = raw_request(port, b"GET /ping HTTP/2.0\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert status == 505 and body["status"] == 505
    status, body = raw_request(port_of(pod.metrics), (
        "GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000000\r\nConnection: close\r\n\r\n").encode())
    assert status == 413 and body["error_type"] == "too_large"


def test_the_probes_are_open_and_get_only(pod):
    for path in ("/ping", "/v2/health/ready"):
        r = requests.get(pod.url + path, timeout=10)
        assert r.status_code == 200 and r.json() == {"status": "Healthy"}, (path, r.text)
    for path in ("/live", "/v2/health/live"):
        assert requests.get(pod.url + path, timeout=10).status_code == 200
    for path in ("/ping", "/live", "/v2/health/ready", "/v2/health/live"):
        r = requests.post(pod.url + path, timeout=10)
        assert r.status_code == 405 and r.json()["error_type"] == "method_not_allowed", (path, r.text)


@pytest.mark.parametrize("method, path", [
    ("GET", "/models"), ("GET", f"/models/{NAME}"), ("POST", "/models?url=x.mar"), ("DELETE", f"/models/{NAME}"),
    ("POST", "/workflows?url=x.war"), ("GET", "/api-description"), ("GET", "/metrics"), ("GET", "/token"),
    ("GET", "/"), ("GET", "/predictions"), ("GET", f"/v2/models/{NAME}/versions/1/infer")])
def test_nothing_but_the_inference_paths_is_passed_on_even_with_the_key(pod, method, path):
    r = requests.request(method, pod.url + path, headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    assert r.status_code == 404, r.text
    assert r.json()["error_type"] == "not_found"


def test_the_metrics_port_is_nginx_too_and_serves_get_metrics_only(pod):
    """TorchServe's metrics port stays on loopback; the port Prometheus scrapes is nginx's, GET /metrics only."""
    from prometheus_client.parser import text_string_to_metric_families
    r = requests.get(pod.metrics + "/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    samples = {s.name for f in text_string_to_metric_families(r.text) for s in f.samples}
    assert "ts_inference_requests_total" in samples
    assert r.headers["Server"] == "nginx"
    r = requests.post(pod.metrics + "/metrics", data=b"x", timeout=10)
    assert r.status_code in (405, 413), r.text
    for path in ("/models", "/ping", "/predictions/toy", "/metrics/../models"):
        assert requests.get(pod.metrics + path, timeout=10).status_code == 404, path


# ---- the limits

def test_a_body_over_the_limit_is_refused_before_it_is_read(pod):
    with connect(port_of(pod.url)) as s:
        s.sendall(f"POST /predictions/{NAME} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                  f"Content-Type: text/plain\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n".encode())
        status, body = status_and_json(read_all(s))      # answered and closed with no body byte sent
    assert status == 413 and body["error_type"] == "too_large"
    r = predict(pod.url, data=b"a " * (MAX_BODY // 2 + 1))
    assert r.status_code == 413


def test_a_chunked_body_is_read_whole_and_passed_on_with_its_length(pod):
    def chunks():
        yield b"play "
        yield b"some jazz"
    r = predict(pod.url, data=chunks())
    assert r.status_code == 200, r.text
    with connect(port_of(pod.url)) as s:
        s.sendall(f"POST /predictions/{NAME} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                  f"Content-Type: text/plain\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\n".encode())
        status, _ = status_and_json(read_all(s))
    assert status in (400, 501)


def test_headers_over_16_KiB_are_refused_before_the_key_is_looked_at(pod):
    r = requests.post(f"{pod.url}/predictions/{NAME}", data=b"rain", timeout=10,
                      headers={"X-Big": "a" * 17000, "Content-Type": "text/plain"})
    assert r.status_code == 431 and r.json()["error_type"] == "too_large", r.text
    r = requests.get(f"{pod.url}/ping?" + "a" * 17000, timeout=10)
    assert r.status_code == 414


def test_a_client_dribbling_its_headers_is_cut_off_at_the_head_deadline(pod):
    with connect(port_of(pod.url), timeout=HEAD_S + 10) as s:
        started = time.monotonic()
        s.sendall(b"POST /predictions/toy HTTP/1.1\r\n")
        try:
            while time.monotonic() - started < HEAD_S + 5:
                s.sendall(b"X: y\r\n")
                time.sleep(0.5)
        except (BrokenPipeError, ConnectionResetError):
            pass
        read_all(s)
        assert time.monotonic() - started < HEAD_S + 3


def test_a_body_that_stops_arriving_is_cut_off(pod):
    with connect(port_of(pod.url), timeout=BODY_S + 10) as s:
        s.sendall(f"POST /predictions/{NAME} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                  f"Content-Type: text/plain\r\nContent-Length: 100\r\n\r\nrain".encode())
        started = time.monotonic()
        raw = read_all(s)
        waited = time.monotonic() - started
    assert BODY_S - 0.5 < waited < BODY_S + 3
    assert raw == b"" or status_and_json(raw)[0] == 408


def test_an_idle_kept_alive_connection_is_closed(pod):
    conn = http.client.HTTPConnection("127.0.0.1", port_of(pod.url), timeout=10)
    conn.request("GET", "/ping")
    assert conn.getresponse().read() and conn.sock is not None
    time.sleep(IDLE_S + 1)
    assert conn.sock.recv(1) == b""                   # the proxy closed it
    conn.close()


def test_slow_clients_do_not_keep_others_out(pod):
    """100 connections dribbling their headers, and a normal request still answers at once."""
    slow = [connect(port_of(pod.url)) for _ in range(100)]
    try:
        for s in slow:
            s.sendall(b"POST /predictions/toy HTTP/1.1\r\n")
        started = time.monotonic()
        assert predict(pod.url).status_code == 200
        assert requests.get(pod.url + "/ping", timeout=5).status_code == 200
        assert time.monotonic() - started < 5
    finally:
        for s in slow:
            s.close()


def test_expect_100_continue_without_the_key_ends_in_401(pod):
    """nginx answers 100 Continue while it discards the body of a refused request (the old gateway did not):
    the body is read and dropped, never passed on, and the answer is the 401."""
    with connect(port_of(pod.url)) as s:
        s.sendall(f"POST /predictions/{NAME} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                  f"Content-Length: 4\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n".encode())
        s.sendall(b"rain")
        raw = read_all(s)
    assert raw.removeprefix(b"HTTP/1.1 100 Continue\r\n\r\n").startswith(b"HTTP/1.1 401"), raw[:100]


# ---- what the upstream is sent, and a stop with a request under way (a stand-in upstream)

class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        Echo.seen.append((self.command, self.path, dict(self.headers), body))
        if self.path.endswith("/slow"):
            time.sleep(1.5)
        answer = json.dumps({"ok": True}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_POST

    def log_message(self, *args):
        pass


@pytest.fixture
def echo_proxy(tmp_path):
    with echo_proxy_running(tmp_path) as running:
        yield running


@contextlib.contextmanager
def echo_proxy_running(tmp_path, *extra):
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    (tmp_path / "keys").write_text(f"{KEY}\n")
    listen = free_ports(1)[0]
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "serving" / "proxy.py"), "--listen", f"127.0.0.1:{listen}",
         "--upstream", f"127.0.0.1:{upstream.server_address[1]}", "--keys", str(tmp_path / "keys"),
         "--work", str(tmp_path / "work"), "--max-body", "1000", *extra], start_new_session=True)
    url = f"http://127.0.0.1:{listen}"
    try:
        for _ in range(50):
            try:
                requests.get(url + "/live", timeout=2)
                break
            except requests.ConnectionError:
                time.sleep(0.2)
        Echo.seen.clear()
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        upstream.shutdown()


def test_requests_past_the_in_flight_limit_get_503_and_the_others_are_answered(tmp_path):
    """--max-inflight 2 and three slow requests at once: two answered, one refused at once with 503 in JSON."""
    with echo_proxy_running(tmp_path, "--max-inflight", "2") as (url, _):
        results = []

        def slow():
            r = requests.post(url + "/predictions/slow", data=b"x", timeout=30,
                              headers={"Authorization": f"Bearer {KEY}", "Content-Type": "text/plain"})
            results.append((r.status_code, r.json()))
        threads = [threading.Thread(target=slow) for _ in range(3)]
        for t in threads:
            t.start()
            time.sleep(0.2)
        for t in threads:
            t.join(timeout=30)
        assert sorted(status for status, _ in results) == [200, 200, 503], results
        assert next(body for status, body in results if status == 503)["error_type"] == "overloaded"
        assert requests.get(url + "/live", timeout=5).status_code == 200       # the probes are not counted


def test_the_upstream_gets_no_key_no_hop_by_hop_headers_and_a_content_length(echo_proxy):
    find_nginx()
    url, _ = echo_proxy
    body = b"play some jazz"
    r = requests.post(url + "/predictions/m", data=iter([body[:4], body[4:]]), timeout=10,
                      headers={"Authorization": f"Bearer {KEY}", "Content-Type": "text/plain", "X-Custom": "kept",
                               "X-Textclf-Request": "metadata", "Proxy-Authorization": "x"})
    assert r.status_code == 200, r.text
    method, path, headers, got = Echo.seen[-1]
    lowered = {k.lower(): v for k, v in headers.items()}
    assert (method, path, got) == ("POST", "/predictions/m", body)
    assert lowered["content-length"] == str(len(body)) and "transfer-encoding" not in lowered
    assert "authorization" not in lowered and "proxy-authorization" not in lowered
    assert "x-textclf-request" not in lowered, "only the proxy's own metadata route may set it"
    assert lowered["x-custom"] == "kept" and lowered["content-type"] == "text/plain"
    started = float(lowered["x-request-start"].removeprefix("t="))
    assert abs(started - time.time()) < 5


def test_open_inference_protocol_routes(echo_proxy):
    url, _ = echo_proxy
    auth = {"Authorization": f"Bearer {KEY}"}
    # tritonclient's binary tensor data comes without a Content-Type: it goes on as octet-stream
    r = requests.post(url + "/v2/models/m/infer", data=b"{}", headers=auth | {"Inference-Header-Content-Length": "2"},
                      timeout=10)
    assert r.status_code == 200
    headers = {k.lower(): v for k, v in Echo.seen[-1][2].items()}
    assert headers["content-type"] == "application/octet-stream" and headers["inference-header-content-length"] == "2"
    # model metadata and readiness become a metadata request to the model
    for path in ("/v2/models/m", "/v2/models/m/ready"):
        assert requests.get(url + path, timeout=10).status_code == 401
        assert requests.get(url + path, headers=auth, timeout=10).status_code == 200
        method, upstream_path, headers, body = Echo.seen[-1]
        headers = {k.lower(): v for k, v in headers.items()}
        assert (method, upstream_path, body) == ("POST", "/predictions/m", b"")
        assert headers["x-textclf-request"] == "metadata" and "authorization" not in headers
    r = requests.get(url + "/v2", headers=auth, timeout=10)
    assert r.status_code == 200 and "binary_tensor_data" in r.json()["extensions"]
    assert requests.get(url + "/v2/models/m/infer", headers=auth, timeout=10).status_code == 405


def test_sigterm_finishes_the_request_under_way_then_stops(echo_proxy):
    url, process = echo_proxy
    result = {}

    def slow():
        result["status"] = requests.post(url + "/predictions/slow", data=b"x", timeout=30,
                                         headers={"Authorization": f"Bearer {KEY}"}).status_code
    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    t.join(timeout=30)
    assert result.get("status") == 200
    assert process.wait(timeout=30) == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/live", timeout=2)


def test_the_proxy_ends_with_1_when_nginx_dies(echo_proxy):
    url, process = echo_proxy
    nginx_pid = int(subprocess.run(["pgrep", "-P", str(process.pid), "nginx"], capture_output=True,
                                   text=True).stdout.split()[0])
    workers = subprocess.run(["pgrep", "-P", str(nginx_pid)], capture_output=True, text=True).stdout.split()
    assert workers
    os.kill(nginx_pid, signal.SIGKILL)
    assert process.wait(timeout=10) == 1
    # the worker, orphaned by its master, is ended too: nothing keeps the port
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/live", timeout=2)
