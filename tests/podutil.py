"""deploy/entrypoint.sh run as the container runs it, without Docker: a private model store, config folder, key
file and work folder, free 127.0.0.1 ports, PYTHONPATH unset; in a process group of its own, always stopped.
Shared by test_container.py (what the manifests rely on) and test_proxy.py (the proxy's guarantees)."""
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time

import pytest
import requests

from serving.torchserve import ROOT, archive, free_ports, server_env

ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"
KEY = secrets.token_hex(32)
# Another Python environment to run the entrypoint with, e.g. one installed from deploy/requirements-serve.txt
# alone (what the image installs): TEXTCLF_SERVE_PYTHON=/path/to/venv/bin/python. Default: this one.
SERVE_PYTHON = os.environ.get("TEXTCLF_SERVE_PYTHON") or sys.executable


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


class Pod:
    """One deploy/entrypoint.sh run, in a session (process group) of its own so that nothing outlives it."""

    def __init__(self, base, store, config_dir, env_extra=None):
        self.base, self.work = base, base / "work"
        self.keys = base / "keys" / "api-keys"
        self.keys.parent.mkdir(parents=True, exist_ok=True)
        self.keys.write_text(f"{KEY}\n")
        proxy, inference, management, metrics, ts_metrics, grpc_i, grpc_m = free_ports(7)
        self.url = f"http://127.0.0.1:{proxy}"
        self.metrics = f"http://127.0.0.1:{metrics}"
        self.ports = {"proxy": proxy, "inference": inference, "management": management, "metrics": metrics,
                      "ts_metrics": ts_metrics,
                      "grpc_inference": grpc_i, "grpc_management": grpc_m}
        env = server_env(base / "tmp")
        env["PATH"] = os.pathsep.join([os.path.dirname(SERVE_PYTHON), env["PATH"]])
        self.env = env | {
            "MODEL_STORE": str(store), "CONFIG_DIR": str(config_dir), "KEYS_FILE": str(self.keys),
            "WORK_DIR": str(self.work), "PROXY_LISTEN": f"127.0.0.1:{proxy}",
            "METRICS_LISTEN": f"127.0.0.1:{metrics}", "TS_METRICS_PORT": str(ts_metrics), "TS_INFERENCE_PORT": str(inference),
            "TS_MANAGEMENT_PORT": str(management), "TS_GRPC_INFERENCE_PORT": str(grpc_i),
            "TS_GRPC_MANAGEMENT_PORT": str(grpc_m), "PYTHON": SERVE_PYTHON, "OMP_NUM_THREADS": "1",
            **(env_extra or {})}
        self.log_path = base / "entrypoint.log"
        self.process = None

    def start(self):
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([str(ENTRYPOINT)], env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait_ready(self, timeout=180):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.process.poll() is not None:
                pytest.fail(f"entrypoint.sh exited with {self.process.returncode}\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/ping", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(1)
        pytest.fail(f"the proxy's /ping did not answer 200 within {timeout} s\n{self.log_tail()}")

    def log_tail(self):
        out = [self.log_path.read_text(errors="replace")[-3000:] if self.log_path.is_file() else ""]
        for name in ("ts_log.log", "model_log.log"):
            path = self.work / "logs" / name
            if path.is_file():
                out.append(f"--- {name}\n" + path.read_text(errors="replace")[-2000:])
        return "\n".join(out)

    def stop(self):
        """SIGTERM to the entrypoint, then its process group if anything is left. -> the entrypoint's status."""
        if self.process is None:
            return None
        pgid = self.process.pid
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                pass
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            if not group_alive(pgid):
                break
            os.killpg(pgid, sig)
            end = time.monotonic() + wait
            while group_alive(pgid) and time.monotonic() < end:
                time.sleep(0.2)
        if self.process.poll() is None:
            self.process.kill()
        return self.process.wait(timeout=10)

    def auth(self, key=KEY):
        return {"Authorization": f"Bearer {key}"}


def model_store(base, checkpoints, model_config=ROOT / "handlers" / "model-config.yaml"):
    """base/model-store with NAME.mar of each {NAME: checkpoint}, and base/config with the repository's
    config.properties and that model-config.yaml, as the ConfigMap carries them."""
    if shutil.which("java") is None:
        pytest.fail("Java 17 is needed for TorchServe's frontend: run ./setup.sh")
    store, config_dir = base / "model-store", base / "config"
    store.mkdir()
    config_dir.mkdir()
    for name, checkpoint in checkpoints.items():
        archive(checkpoint, name, store, model_config)
    shutil.copy(ROOT / "config.properties", config_dir / "config.properties")
    shutil.copy(model_config, config_dir / "model-config.yaml")
    return store, config_dir


@contextlib.contextmanager
def started(pod):
    """The pod started and answering /ping through the proxy; always stopped after."""
    pod.start()
    try:
        pod.wait_ready()
        yield pod
    finally:
        pod.stop()


@contextlib.contextmanager
def running_pod(tmp_path_factory, prefix, checkpoints, env_extra=None):
    """A pod serving {NAME: checkpoint}, archived with handlers/model-config.yaml, in fresh temp folders."""
    store, config_dir = model_store(tmp_path_factory.mktemp(f"{prefix}-store"), checkpoints)
    with started(Pod(tmp_path_factory.mktemp(f"{prefix}-pod"), store, config_dir, env_extra)) as pod:
        yield pod
