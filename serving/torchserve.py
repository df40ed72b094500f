"""A private TorchServe for tests and benchmarks: archived with ./archive.sh, served with the repository's
config.properties on free 127.0.0.1 ports, its own temp folder and working folder, PYTHONPATH unset,
and always stopped (torchserve --stop, then its process group).

    with TorchServe(work_dir, store, {"m": "m.mar"}) as ts:
        ts.wait_ready("m")
        ts.predict("m", b"play some jazz")

The Python twin of what benchmarks/serving.sh does in bash (see TORCHSERVE-NOTES.md for why each step):
a private TMPDIR/TEMP because `torchserve --stop` and the worker sockets live there; the working folder
because key_file.json and logs/ are written there; PYTHONPATH unset so the .mar's own code is imported.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"
HTTP_TIMEOUT = 60          # above the 30 s response timeout, so TorchServe's own 5xx arrive first
WORKER_MARK = "model_service_worker"


class TorchServeError(RuntimeError):
    pass


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def read_properties(path):
    """key -> value of a Java .properties file (comments and blank lines skipped)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.lstrip().startswith("#"))


def read_model_config(path):
    """A TorchServe model-config.yaml as a dict, with its handler section as a dict (empty when absent)."""
    import yaml
    config = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    config["handler"] = config.get("handler") or {}
    return config


def write_config(path, model_store, overrides=None, base=ROOT / "config.properties"):
    """The repository's config.properties with free loopback ports, this model store and `overrides`.

    load_models is dropped: models come from --models. Returns the settings as written."""
    ports = free_ports(5)
    fixed = {
        "inference_address": f"http://127.0.0.1:{ports[0]}",
        "management_address": f"http://127.0.0.1:{ports[1]}",
        "metrics_address": f"http://127.0.0.1:{ports[2]}",
        "grpc_inference_port": str(ports[3]),
        "grpc_management_port": str(ports[4]),
        "model_store": str(model_store),
    }
    changed = {**fixed, **(overrides or {})}
    kept = [line for line in Path(base).read_text(encoding="utf-8").splitlines()
            if line.split("=", 1)[0].strip() not in set(changed) | {"load_models"}]
    Path(path).write_text("\n".join(kept + [f"{k}={v}" for k, v in changed.items()]) + "\n", encoding="utf-8")
    return read_properties(path)


def archive(checkpoint, name, model_store, model_config=None, timeout=300, gpu=False):
    """./archive.sh [--gpu] CHECKPOINT NAME into model_store (a private temp dir of its own); -> the .mar path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"MODEL_STORE": str(model_store)}
    if model_config:
        env["MODEL_CONFIG"] = str(model_config)
    done = subprocess.run([str(ROOT / "archive.sh"), *(["--gpu"] if gpu else []), str(checkpoint), name], cwd=ROOT, env=env, timeout=timeout,
                          capture_output=True, text=True)
    mar = Path(model_store) / f"{name}.mar"
    if done.returncode != 0 or not mar.is_file():
        raise TorchServeError(f"archive.sh {checkpoint} {name} failed ({done.returncode}):\n"
                              f"{done.stderr[-2000:]}{done.stdout[-1000:]}")
    return mar


def server_env(tmp):
    """This environment for TorchServe: PYTHONPATH and TS_CONFIG_FILE unset, TMPDIR/TEMP/TMP = tmp, the venv first."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TS_CONFIG_FILE")}
    path = os.pathsep.join([str(Path(sys.executable).parent), str(BIN), env.get("PATH", "")])
    return env | {"TMPDIR": str(tmp), "TEMP": str(tmp), "TMP": str(tmp), "PATH": path}


def launch(cwd, env, config_path, models, log_path):
    """`torchserve --start` in cwd (key_file.json, logs/), in a session of its own: the frontend and its
    workers share the launcher's process group, the fallback of stop_torchserve(). -> the launcher."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [_tool("torchserve"), "--start", "--ncs", "--ts-config", str(config_path), "--models", *models],
            cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_torchserve(launcher, env, cwd):
    """torchserve --stop (same TMPDIR and working folder as --start); then the process group as a fallback."""
    try:
        launcher.wait(timeout=10)   # `--start` returns at once; reap it so the group check sees only the server
    except subprocess.TimeoutExpired:
        pass
    try:
        subprocess.run([_tool("torchserve"), "--stop"], env=env, cwd=cwd, timeout=60,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        pass
    pgid = launcher.pid
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


def _exists(send, target):
    """Signal 0 through `send` (os.kill or os.killpg): does the process (group) exist?"""
    try:
        send(target, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # exists, owned by someone else
        return True
    return True


def alive(pid):
    return _exists(os.kill, pid)


def _group_alive(pgid):
    return _exists(os.killpg, pgid)


class TorchServe:
    """One TorchServe in `work` (work/tmp: TMPDIR, pid file, worker sockets; work/cwd: key_file.json, logs/)."""

    def __init__(self, work, model_store, models, config_overrides=None):
        self.work = Path(work)
        self.tmp, self.cwd = self.work / "tmp", self.work / "cwd"
        self.model_store, self.models = Path(model_store), dict(models)
        self.config_overrides = dict(config_overrides or {})
        self.config_path = self.work / "config.properties"
        self.config, self.launcher, self._keys = {}, None, None

    # ---- life cycle
    def env(self):
        return server_env(self.tmp)

    def start(self):
        for d in (self.tmp, self.cwd):
            d.mkdir(parents=True, exist_ok=True)
        self.config = write_config(self.config_path, self.model_store, self.config_overrides)
        self.launcher = launch(self.cwd, self.env(), self.config_path,
                               [f"{name}={mar}" for name, mar in self.models.items()], self.work / "launcher.log")
        return self

    def wait_ready(self, model, timeout=300, probe=b"warm up"):
        """Poll until `model` answers a prediction with 200; -> seconds waited. Raises with the log tail."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            code = self.launcher.poll()
            if code not in (None, 0):
                raise TorchServeError(f"torchserve --start exited with {code}\n{self.log_tail()}")
            pid = self.frontend_pid()
            if code == 0 and pid is not None and not alive(pid):
                raise TorchServeError(f"the TorchServe frontend (pid {pid}) died\n{self.log_tail()}")
            if (self.cwd / "key_file.json").is_file():
                try:
                    self._keys = None
                    if self.predict(model, probe, timeout=30).status_code == 200:
                        return time.monotonic() - started
                except (ValueError, KeyError, OSError):
                    pass   # the key file half written, or the port not open yet (requests' errors are OSErrors)
            time.sleep(1)
        raise TorchServeError(f"{model} did not answer a prediction within {timeout} s\n{self.log_tail()}")

    def stop(self):
        if self.launcher is not None:
            launcher, self.launcher = self.launcher, None
            stop_torchserve(launcher, self.env(), self.cwd)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ---- addresses, keys, requests
    @property
    def inference(self):
        return self.config["inference_address"]

    @property
    def management(self):
        return self.config["management_address"]

    @property
    def key_file(self):
        return self.cwd / "key_file.json"

    def key(self, kind):
        """The "inference" or "management" token (token authorization is on in config.properties)."""
        if self._keys is None:
            self._keys = json.loads(self.key_file.read_text(encoding="utf-8"))
        return self._keys[kind]["key"]

    def auth(self, kind="inference"):
        return {"Authorization": f"Bearer {self.key(kind)}"}

    def predict(self, model, data=None, content_type="text/plain", headers=None, auth=True, timeout=HTTP_TIMEOUT):
        """POST /predictions/MODEL. content_type None sends no Content-Type header at all."""
        import requests
        h = dict(self.auth()) if auth else {}
        if content_type is not None:
            h["Content-Type"] = content_type
        h.update(headers or {})
        return requests.post(f"{self.inference}/predictions/{model}", data=data, headers=h, timeout=timeout)

    def manage(self, method, path, auth=True, timeout=HTTP_TIMEOUT):
        import requests
        return requests.request(method, self.management + path, headers=self.auth("management") if auth else {},
                                timeout=timeout)

    def worker_states(self, model):
        r = self.manage("GET", f"/models/{model}", timeout=30)
        r.raise_for_status()
        return [w["status"] for w in r.json()[0]["workers"]]

    # ---- processes and logs
    def frontend_pid(self):
        try:
            return int((self.tmp / ".model_server.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def frontend(self):
        import psutil
        pid = self.frontend_pid()
        if pid is None:
            raise TorchServeError("TorchServe wrote no pid file: not started?")
        return psutil.Process(pid)

    def workers(self):
        """The Python backend workers: children of the Java frontend running model_service_worker."""
        import psutil
        found = []
        for p in self.frontend().children(recursive=True):
            try:
                if WORKER_MARK in " ".join(p.cmdline()):
                    found.append(p)
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                pass
        return found

    @property
    def log_dir(self):
        return self.cwd / "logs"

    def log_tail(self, lines=40):
        return log_tail(self.cwd, lines, self.work / "launcher.log")


def log_tail(cwd, lines=40, launcher_log=None):
    """The last lines of TorchServe's logs in cwd/logs (and of the launcher's output), for error messages."""
    out = []
    for name in ("ts_log.log", "model_log.log"):
        path = Path(cwd) / "logs" / name
        if path.is_file():
            out.append(f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
    if launcher_log is not None and Path(launcher_log).is_file():
        out.append("--- launcher.log\n" + Path(launcher_log).read_text(errors="replace")[-2000:])
    return "\n".join(out)


def _tool(name):
    path = BIN / name
    return str(path) if path.exists() else name
