"""One real TorchServe for a test module: checkpoints archived with ./archive.sh into a private model store,
served with the repository's config.properties (token auth on, URLs refused) on free 127.0.0.1 ports,
PYTHONPATH unset (the .mar must carry its own code), a private TMPDIR/TEMP (pid file, worker sockets) and
a private working folder (key_file.json, logs/), and always stopped: `torchserve --stop`, then its
process group.

    with torchserve(base, {"name": checkpoint, ...}, model_config_yaml) as server:
        server.predict(data=b"play jazz", model="name")
"""
import contextlib
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

from conftest import ROOT

START_TIMEOUT = 120     # seconds until the first prediction of every model must answer
HTTP_TIMEOUT = 30
ARCHIVE_TIMEOUT = 180


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def write_config(path, ports, model_store):
    """The repository's config.properties with free loopback ports and an absolute model store."""
    overrides = {
        "inference_address": f"http://127.0.0.1:{ports[0]}",
        "management_address": f"http://127.0.0.1:{ports[1]}",
        "metrics_address": f"http://127.0.0.1:{ports[2]}",
        "grpc_inference_port": str(ports[3]),
        "grpc_management_port": str(ports[4]),
        "model_store": str(model_store),
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
    def __init__(self, inference, management, keys, run_dir, tmp, models):
        self.inference, self.management, self.run_dir, self.tmp = inference, management, run_dir, tmp
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


def environment(tmp):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TS_CONFIG_FILE")}
    bin_dirs = [str(Path(sys.executable).parent), str(ROOT / ".venv" / "bin")]
    env.update(TMPDIR=str(tmp), TEMP=str(tmp), TMP=str(tmp), OMP_NUM_THREADS="1",
               PATH=os.pathsep.join(bin_dirs + [env.get("PATH", "")]))
    return env


def archive(checkpoint, name, store, model_config, env):
    """MODEL_STORE=store MODEL_CONFIG=model_config ./archive.sh CHECKPOINT NAME -> store/NAME.mar"""
    done = subprocess.run([str(ROOT / "archive.sh"), str(checkpoint), name], cwd=ROOT, timeout=ARCHIVE_TIMEOUT,
                          env={**env, "MODEL_STORE": str(store), "MODEL_CONFIG": str(model_config)},
                          capture_output=True, text=True)
    mar = store / f"{name}.mar"
    assert done.returncode == 0, f"archive.sh {checkpoint} {name}:\n{done.stderr}{done.stdout}"
    assert mar.is_file(), done.stdout
    return mar


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
            if not _alive(pid):
                pytest.fail(f"the TorchServe frontend (pid {pid}) died\n{log_tail(run_dir)}")
        if key_file.is_file():
            try:
                server = server or Server(config["inference_address"], config["management_address"],
                                          json.loads(key_file.read_text()), run_dir, pid_file.parent, models)
                waiting = [m for m in waiting if server.predict(data=b"warm up", model=m).status_code != 200]
                if not waiting:
                    return server
            except (ValueError, KeyError, requests.RequestException):
                server = None   # key file half written, or the port not open yet
        time.sleep(1)
    pytest.fail(f"no prediction from {', '.join(waiting)} within {timeout}s\n{log_tail(run_dir)}")


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


def stop(env, run_dir, launcher):
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


@contextlib.contextmanager
def torchserve(base, checkpoints, model_config, start_timeout=START_TIMEOUT):
    """Archive {name: checkpoint folder} into base/model_store, serve them all from one TorchServe, yield
    a Server once every model answers, and stop TorchServe whatever happens."""
    if shutil.which("java") is None:
        pytest.skip("Java 17 is needed for TorchServe's frontend (run ./setup.sh)")
    tmp, run_dir, store = base / "tmp", base / "cwd", base / "model_store"
    for folder in (tmp, run_dir, store):
        folder.mkdir()
    env = environment(tmp)
    with ThreadPoolExecutor(max_workers=2) as pool:   # archive.sh is mostly start-up and zipping
        mars = dict(zip(checkpoints, pool.map(lambda item: archive(item[1], item[0], store, model_config, env).name,
                                              checkpoints.items())))
    config = write_config(base / "config.properties", free_ports(5), store)
    with open(base / "launcher.log", "wb") as log:
        launcher = subprocess.Popen(
            ["torchserve", "--start", "--ncs", "--ts-config", str(base / "config.properties"),
             "--model-store", str(store), "--models", *(f"{name}={mar}" for name, mar in mars.items())],
            cwd=run_dir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        yield _wait_until_serving(launcher, run_dir, config, tmp / ".model_server.pid", list(mars), start_timeout)
    finally:
        stop(env, run_dir, launcher)
