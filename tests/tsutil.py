"""One real TorchServe for a test module: checkpoints archived with ./archive.sh into a private model store,
served with the repository's config.properties (token auth on, URLs refused) on free 127.0.0.1 ports,
PYTHONPATH unset (the .mar must carry its own code), a private TMPDIR/TEMP (pid file, worker sockets) and
a private working folder (key_file.json, logs/), and always stopped: `torchserve --stop`, then its
process group. The starting and stopping is serving/torchserve.py's, shared with the benchmarks.

    with torchserve(base, {"name": checkpoint, ...}, model_config_yaml) as server:
        server.predict(data=b"play jazz", model="name")
"""
import contextlib
import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from serving.torchserve import alive, archive, launch, log_tail, server_env, stop_torchserve
from serving.torchserve import write_config as _write_config

START_TIMEOUT = 120     # seconds until the first prediction of every model must answer
HTTP_TIMEOUT = 30
ARCHIVE_TIMEOUT = 180


def write_config(path, model_store):
    """The repository's config.properties as shipped, with free loopback ports and an absolute model store."""
    settings = _write_config(path, model_store, {})
    assert settings.get("disable_token_authorization") == "false", "the shipped config must keep token auth on"
    assert settings.get("enable_model_api") == "false"
    return settings


class Server:
    def __init__(self, config, keys, run_dir, tmp, models):
        self.inference, self.management = config["inference_address"], config["management_address"]
        self.metrics = config["metrics_address"]
        self.run_dir, self.tmp = run_dir, tmp
        self.models = list(models)
        self.auth = {"Authorization": f"Bearer {keys['inference']['key']}"}
        self.manage_auth = {"Authorization": f"Bearer {keys['management']['key']}"}

    def predict(self, content_type="text/plain", data=None, json_body=None, headers=None, auth=True, model=None):
        """POST /predictions/MODEL (default: the first model). content_type None sends no Content-Type."""
        h = dict(self.auth) if auth else {}
        if content_type is not None:
            h["Content-Type"] = content_type
        if json_body is not None:
            data = json.dumps(json_body).encode("utf-8")
        h.update(headers or {})
        return requests.post(f"{self.inference}/predictions/{model or self.models[0]}", data=data, headers=h,
                             timeout=HTTP_TIMEOUT)

    def handler_calls(self):
        """How many batches the handlers have run so far (one HandlerTime metric each), once the count settles."""
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


def _wait_until_serving(launcher, run_dir, config, pid_file, models, timeout):
    """Poll until every model answers a prediction with 200 (workers start in parallel)."""
    deadline = time.monotonic() + timeout
    key_file, waiting = run_dir / "key_file.json", list(models)
    server = None
    while time.monotonic() < deadline:
        if launcher.poll() not in (None, 0):
            pytest.fail(f"torchserve --start exited with {launcher.returncode}\n{log_tail(run_dir)}")
        if pid_file.is_file() and launcher.poll() == 0:
            pid = int(pid_file.read_text().split()[0])
            if not alive(pid):
                pytest.fail(f"the TorchServe frontend (pid {pid}) died\n{log_tail(run_dir)}")
        if key_file.is_file():
            try:
                server = server or Server(config, json.loads(key_file.read_text()), run_dir, pid_file.parent, models)
                waiting = [m for m in waiting if server.predict(data=b"warm up", model=m).status_code != 200]
                if not waiting:
                    return server
            except (ValueError, KeyError, requests.RequestException):
                server = None   # key file half written, or the port not open yet
        time.sleep(1)
    pytest.fail(f"no prediction from {', '.join(waiting)} within {timeout}s\n{log_tail(run_dir)}")


@contextlib.contextmanager
def torchserve(base, checkpoints, model_config, start_timeout=START_TIMEOUT):
    """Archive {name: checkpoint folder} into base/model_store, serve them all from one TorchServe, yield
    a Server once every model answers, and stop TorchServe whatever happens."""
    if shutil.which("java") is None:
        pytest.skip("Java 17 is needed for TorchServe's frontend (run ./setup.sh)")
    tmp, run_dir, store = base / "tmp", base / "cwd", base / "model_store"
    for folder in (tmp, run_dir, store):
        folder.mkdir()
    env = server_env(tmp) | {"OMP_NUM_THREADS": "1"}
    with ThreadPoolExecutor(max_workers=2) as pool:   # archive.sh is mostly start-up and zipping
        mars = dict(zip(checkpoints, pool.map(
            lambda item: archive(item[1], item[0], store, model_config, ARCHIVE_TIMEOUT).name, checkpoints.items())))
    config = write_config(base / "config.properties", store)
    launcher = launch(run_dir, env, base / "config.properties", [f"{name}={mar}" for name, mar in mars.items()],
                      base / "launcher.log")
    try:
        yield _wait_until_serving(launcher, run_dir, config, tmp / ".model_server.pid", list(mars), start_timeout)
    finally:
        stop_torchserve(launcher, env, run_dir)


@contextlib.contextmanager
def module_server(tmp_path_factory, prefix, checkpoints, model_config_text):
    """torchserve() in a fresh temp folder, with this model-config.yaml: the body of a module's server fixture."""
    base = tmp_path_factory.mktemp(prefix)
    (base / "model-config.yaml").write_text(model_config_text)
    with torchserve(base, checkpoints, base / "model-config.yaml") as server:
        yield server
