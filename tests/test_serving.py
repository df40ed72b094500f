"""One real TorchServe on 127.0.0.1: the tiny model archived with ./archive.sh, served with the repository's
config.properties (token auth on, URLs refused) on free ports, PYTHONPATH unset, a private temp folder.

Select with `-m serving`, skip with `-m "not serving"`. About a minute on 2 cores, mostly start-up.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from conftest import PROBE_TEXTS, ROOT
from textclf.predict import Predictor

pytestmark = pytest.mark.serving

MODEL = "tinytest"
START_TIMEOUT = 120     # seconds until the first prediction must answer
HTTP_TIMEOUT = 30
MODEL_CONFIG = """\
minWorkers: 1
maxWorkers: 1
batchSize: 8
maxBatchDelay: 50
responseTimeout: 30
handler:
  top_k: 3
  torch_threads: 1
  max_chars: 20000
"""


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def write_config(path, ports):
    """The repository's config.properties with free loopback ports and an absolute model store."""
    overrides = {
        "inference_address": f"http://127.0.0.1:{ports[0]}",
        "management_address": f"http://127.0.0.1:{ports[1]}",
        "metrics_address": f"http://127.0.0.1:{ports[2]}",
        "grpc_inference_port": str(ports[3]),
        "grpc_management_port": str(ports[4]),
        "model_store": str(ROOT / "model_store"),
        "vmargs": "-Xmx512m -XX:+UseSerialGC",
    }
    kept = [line for line in (ROOT / "config.properties").read_text().splitlines()
            if line.split("=", 1)[0].strip() not in overrides]
    settings = dict(line.split("=", 1) for line in kept if "=" in line and not line.lstrip().startswith("#"))
    assert settings.get("disable_token_authorization") == "false", "the shipped config must keep token auth on"
    assert settings.get("enable_model_api") == "false"
    path.write_text("\n".join(kept + [f"{k}={v}" for k, v in overrides.items()]) + "\n")
    return overrides


def log_tail(folder, lines=40):
    out = []
    for name in ("ts_log.log", "model_log.log"):
        path = folder / "logs" / name
        if path.is_file():
            out.append(f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
    return "\n".join(out)


class Server:
    def __init__(self, inference, management, keys, run_dir, tmp):
        self.inference, self.management, self.run_dir, self.tmp = inference, management, run_dir, tmp
        self.auth = {"Authorization": f"Bearer {keys['inference']['key']}"}
        self.manage_auth = {"Authorization": f"Bearer {keys['management']['key']}"}

    def predict(self, content_type="text/plain", data=None, json_body=None, headers=None, auth=True):
        """POST /predictions/MODEL. content_type None sends no Content-Type header at all."""
        h = dict(self.auth) if auth else {}
        if content_type is not None:
            h["Content-Type"] = content_type
        if json_body is not None:
            data = json.dumps(json_body).encode("utf-8")
        h.update(headers or {})
        return requests.post(f"{self.inference}/predictions/{MODEL}", data=data, headers=h, timeout=HTTP_TIMEOUT)

    def handler_calls(self):
        """How many batches the handler has run so far (one HandlerTime metric each), once the count settles."""
        path, last = self.run_dir / "logs" / "model_metrics.log", -1
        for _ in range(20):
            count = path.read_text(errors="replace").count("HandlerTime") if path.is_file() else 0
            if count == last:
                return count
            last = count
            time.sleep(0.5)
        return last

    def manage(self, method, path, auth=True):
        return requests.request(method, self.management + path, headers=self.manage_auth if auth else {},
                                timeout=HTTP_TIMEOUT)


def _environment(tmp):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    bin_dirs = [str(Path(sys.executable).parent), str(ROOT / ".venv" / "bin")]
    env.update(TMPDIR=str(tmp), TEMP=str(tmp), TMP=str(tmp), OMP_NUM_THREADS="1",
               PATH=os.pathsep.join(bin_dirs + [env.get("PATH", "")]))
    return env


def _wait_until_serving(launcher, run_dir, config, pid_file):
    deadline = time.monotonic() + START_TIMEOUT
    key_file = run_dir / "key_file.json"
    while time.monotonic() < deadline:
        if launcher.poll() not in (None, 0):
            pytest.fail(f"torchserve --start exited with {launcher.returncode}\n{log_tail(run_dir)}")
        if pid_file.is_file() and launcher.poll() == 0:
            pid = int(pid_file.read_text().split()[0])
            if not _alive(pid):
                pytest.fail(f"the TorchServe frontend (pid {pid}) died\n{log_tail(run_dir)}")
        if key_file.is_file():
            try:
                server = Server(config["inference_address"], config["management_address"],
                                json.loads(key_file.read_text()), run_dir, pid_file.parent)
                if server.predict(data=b"warm up").status_code == 200:
                    return server
            except (ValueError, KeyError, requests.RequestException):
                pass   # key file half written, or the port not open yet
        time.sleep(1)
    pytest.fail(f"no prediction within {START_TIMEOUT}s\n{log_tail(run_dir)}")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _group_alive(pgid):
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop(env, run_dir, launcher):
    """torchserve --stop (same TMPDIR and working dir as --start); then the process group as a fallback."""
    try:
        launcher.wait(timeout=10)   # `--start` returns at once; reap it so its group check sees only the server
    except subprocess.TimeoutExpired:
        pass
    try:
        subprocess.run(["torchserve", "--stop"], env=env, cwd=run_dir, timeout=60,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        pass
    pgid = launcher.pid   # start_new_session: the frontend and its workers share the launcher's group
    for sig, wait in ((None, 30), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        if sig is not None and _group_alive(pgid):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
        end = time.monotonic() + wait
        while _group_alive(pgid) and time.monotonic() < end:
            time.sleep(0.5)
        if not _group_alive(pgid):
            break
    if launcher.poll() is None:
        launcher.kill()
    launcher.wait(timeout=10)


@pytest.fixture(scope="module")
def server(tiny_ckpt, tmp_path_factory):
    if shutil.which("java") is None:
        pytest.skip("Java 17 is needed for TorchServe's frontend (run ./setup.sh)")
    base = tmp_path_factory.mktemp("torchserve")
    tmp, run_dir = base / "tmp", base / "cwd"
    tmp.mkdir()
    run_dir.mkdir()
    env = _environment(tmp)

    (base / "model-config.yaml").write_text(MODEL_CONFIG)
    mar = ROOT / "model_store" / f"{MODEL}.mar"
    try:
        archived = subprocess.run([str(ROOT / "archive.sh"), str(tiny_ckpt), MODEL], cwd=ROOT, timeout=180,
                                  env={**env, "MODEL_CONFIG": str(base / "model-config.yaml")},
                                  capture_output=True, text=True)
        assert archived.returncode == 0, archived.stderr + archived.stdout
        assert mar.is_file()
        config = write_config(base / "config.properties", free_ports(5))
        with open(base / "launcher.log", "wb") as log:
            launcher = subprocess.Popen(
                ["torchserve", "--start", "--ncs", "--ts-config", str(base / "config.properties"),
                 "--model-store", str(ROOT / "model_store"), "--models", f"{MODEL}={MODEL}.mar"],
                cwd=run_dir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        try:
            yield _wait_until_serving(launcher, run_dir, config, tmp / ".model_server.pid")
        finally:
            _stop(env, run_dir, launcher)
    finally:
        mar.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def predictor(tiny_ckpt):
    return Predictor.from_checkpoint(tiny_ckpt)


def assert_same(answer, expected, atol=1e-4):
    assert answer["label"] == expected["label"]
    assert answer["score"] == pytest.approx(expected["score"], abs=atol)
    assert {x["label"]: x["score"] for x in answer["top_k"]} == pytest.approx(
        {x["label"]: x["score"] for x in expected["top_k"]}, abs=atol)


TEXTS = PROBE_TEXTS + ["will it rain tomorrow", "play my jazz playlist", "a recipe for pasta and salad"]


def test_model_config_is_applied(server):
    r = server.manage("GET", f"/models/{MODEL}")
    assert r.status_code == 200, r.text
    [model] = r.json()
    assert (model["batchSize"], model["maxBatchDelay"], model["minWorkers"], model["maxWorkers"]) == (8, 50, 1, 1)
    assert [w["status"] for w in model["workers"]] == ["READY"]


def test_the_archive_carries_its_own_model_code(server):
    # The worker runs with PYTHONPATH unset in the frontend's environment, outside the repository:
    # the only textclf on its path is the one unpacked from the .mar.
    import psutil
    frontend = psutil.Process(int((server.tmp / ".model_server.pid").read_text().split()[0]))
    workers = [p for p in frontend.children(recursive=True) if "model_service_worker" in " ".join(p.cmdline())]
    assert len(workers) == 1, [p.cmdline() for p in frontend.children(recursive=True)]
    [worker] = workers
    path = [Path(p) for p in worker.environ().get("PYTHONPATH", "").split(os.pathsep) if p]
    assert path, "the worker gets the unpacked archive on its PYTHONPATH"
    assert not any(p == ROOT or ROOT in p.parents for p in path), path
    assert Path(worker.cwd()) != ROOT
    holders = [p for p in path if (p / "textclf" / "predict.py").is_file()]
    assert holders and (holders[0] / "config.json").is_file() and server.tmp in holders[0].parents, path


@pytest.mark.parametrize("how", ["plain", "json", "json-top1", "no-content-type"])
def test_answers_equal_the_in_process_predictor(server, predictor, how):
    for text in TEXTS:
        if how == "plain":
            r = server.predict("text/plain", data=text.encode("utf-8"))
        elif how == "json":
            r = server.predict("application/json", json_body={"text": text})
        elif how == "json-top1":
            r = server.predict("application/json", json_body={"text": text, "top_k": 1})
        else:   # no Content-Type header at all: read as plain text (curl -d sends a form instead: see below)
            r = server.predict(None, data=text.encode("utf-8"))
        assert r.status_code == 200, (text, r.text)
        assert r.headers["Content-Type"].startswith("application/json")
        answer = r.json()
        expected = predictor.predict([text], top_k=1 if how == "json-top1" else 3)[0]
        assert len(answer["top_k"]) == len(expected["top_k"])
        assert_same(answer, expected)


def test_a_concurrent_burst_is_answered_as_one_by_one(server):
    requests_ = [(TEXTS[i % len(TEXTS)], i % 2 == 0) for i in range(24)]

    def send(item):
        text, plain = item
        r = (server.predict("text/plain", data=text.encode()) if plain
             else server.predict("application/json", json_body={"text": text}))
        return r.status_code, r.json()

    one_by_one = {text: send((text, True)) for text in TEXTS}
    calls = server.handler_calls()
    with ThreadPoolExecutor(max_workers=12) as pool:
        burst = list(pool.map(send, requests_))
    # Dynamic batching did group requests (so padding inside served batches was exercised).
    assert server.handler_calls() - calls < len(requests_)
    for (text, _), (status, answer) in zip(requests_, burst):
        assert status == 200, answer
        assert_same(answer, one_by_one[text][1], atol=1e-5)


GOOD, FORM = "good", "application/x-www-form-urlencoded"
MIXED = [
    # (request keyword arguments, expected status, words in "error" | text whose answer is expected)
    (dict(content_type="text/plain", data=b""), 400, "'text' is empty"),
    (dict(content_type="text/plain", data=b" \t\r\n "), 400, "'text' is empty"),
    (dict(content_type="text/plain", data=b"caf\xe9 au lait"), 400, "not valid UTF-8"),
    (dict(content_type="text/plain", data="rain\x00snow".encode()), 400, "control character (U+0000"),
    (dict(content_type="application/json", data=b'{"text": "play jazz"'), 400, "not valid JSON"),
    (dict(content_type="application/json", data=b'["play jazz"]'), 400, "got array"),
    (dict(content_type="application/json", data=b'"play jazz"'), 400, "got string"),
    (dict(content_type="application/json", data=b"42"), 400, "must be an object"),
    (dict(content_type="application/json", data=b"null"), 400, "text"),
    (dict(content_type="application/json", json_body={"text": 42}), 400, "'text' must be a string, got number"),
    (dict(content_type="application/json", json_body={"text": ["a"]}), 400, "'text' must be a string, got array"),
    (dict(content_type="application/json", json_body={"top_k": 1}), 400, "no 'text' field"),
    (dict(content_type="application/json", json_body={"text": "soup", "lang": "en"}), 400, "unknown field 'lang'"),
    (dict(content_type="application/json", json_body={"text": "soup", "top_k": 0}), 400, "'top_k' must be between"),
    (dict(content_type="application/json", json_body={"text": "soup", "top_k": True}), 400, "got boolean"),
    (dict(content_type="image/png", data=b"\x89PNG\r\n\x1a\n"), 415, "unsupported Content-Type 'image/png'"),
    (dict(content_type=FORM, data=b"bake a pizza"), 400, "no text found"),   # what `curl -d` sends
    (dict(content_type="text/plain", data=b"x" * 30000), 413, "the limit is 20000"),
    (dict(content_type="text/plain", data=b"will it snow tomorrow"), 200, (GOOD, "will it snow tomorrow")),
    (dict(content_type="application/json", json_body={"text": "bake bread", "top_k": 2}), 200,
     (GOOD, "bake bread")),
    (dict(content_type=FORM, data=b"text=play+some+jazz"), 200, (GOOD, "play some jazz")),
    (dict(content_type=None, data=b"soup for dinner"), 200, (GOOD, "soup for dinner")),
]


def test_a_burst_of_bad_and_good_requests(server, predictor):
    items = MIXED * 2
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda item: server.predict(**item[0]), items))
    for (kwargs, status, expected), r in zip(items, responses):
        assert r.status_code == status, (kwargs, r.status_code, r.text)
        body = r.json()
        if status == 200:
            top_k = kwargs.get("json_body", {}).get("top_k", 3)
            assert_same(body, predictor.predict([expected[1]], top_k=top_k)[0])
        else:
            assert expected in body["error"], (kwargs, body)
            assert body["error_type"] == "validation" and body["status"] == status
    # The worker survived all of it.
    assert server.predict(data=b"is it sunny").status_code == 200
    [model] = server.manage("GET", f"/models/{MODEL}").json()
    assert [w["status"] for w in model["workers"]] == ["READY"]


def test_requests_over_max_request_size_are_refused_by_the_frontend(server):
    assert server.predict("text/plain", data=b"x" * 70000).status_code == 413


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-the-key"}, "management-key"])
def test_inference_needs_the_inference_token(server, headers):
    if headers == "management-key":
        headers = server.manage_auth
    r = server.predict("text/plain", data=b"will it rain", headers=headers, auth=False)
    assert r.status_code in (400, 401), r.text
    assert "label" not in r.text
    r = requests.get(f"{server.inference}/ping", headers=headers, timeout=HTTP_TIMEOUT)
    assert r.status_code in (400, 401)


@pytest.mark.parametrize("path", ["/workflows?url=http://127.0.0.1:9/x.war", "/models?url=http://127.0.0.1:9/x.mar",
                                  "/models?url=file:///etc/passwd", f"/models?url={MODEL}.mar&model_name=again"])
@pytest.mark.parametrize("auth", [True, False])
def test_management_refuses_to_register_anything(server, path, auth):
    r = server.manage("POST", path, auth=auth)
    assert 400 <= r.status_code < 500, r.text
    models = server.manage("GET", "/models").json()["models"]
    assert [m["modelName"] for m in models] == [MODEL]
    assert server.manage("GET", "/workflows").json()["workflows"] == []
