"""The one TorchServe harness: archived with ./archive.sh, served with the repository's config.properties,
PYTHONPATH unset, a temp folder and a working folder of its own, waited for until every model answers a
prediction, and always stopped (torchserve --stop, then its process group). Tests (tests/tsutil.py), the
benchmarks and quickstart.sh all start TorchServe through it.

    with TorchServe(work_dir, store, {"m": "m.mar"}) as ts:
        ts.wait_ready()
        ts.predict("m", b"play some jazz")

From a shell (quickstart.sh), a server that outlives the command:

    python -m serving.torchserve start --models snips=snips.mar --tmp /tmp/ts-me --cwd .   # 0 once it answers
    python -m serving.torchserve stop --tmp /tmp/ts-me                                    # only that one

Why each step (TORCHSERVE-NOTES.md): a private TMPDIR/TEMP because `torchserve --stop` finds its pid file
there and the worker sockets live there; the working folder because key_file.json and logs/ are written
there; PYTHONPATH unset so the .mar's own code is imported; free 127.0.0.1 ports unless the caller serves on
the ports of config.properties.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"
HTTP_TIMEOUT = 60          # above the 30 s response timeout, so TorchServe's own 5xx arrive first
WORKER_MARK = "model_service_worker"
MAX_TMP_CHARS = 80      # TMPDIR + "/.ts.sock.9000" must stay within a Unix socket path's 107 bytes
FRONTEND_MARK = "org.pytorch.serve.ModelServer"   # the Java frontend's main class, as torchserve --stop checks it
PID_FILE = ".model_server.pid"
ADDRESSES = ("inference_address", "management_address", "metrics_address")


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


def write_config(path, model_store, overrides=None, base=ROOT / "config.properties", free=True):
    """The repository's config.properties with this model store, `overrides` and, with `free`, free loopback
    ports (else the addresses of `base`). load_models is dropped: models come from --models. Returns the
    settings as written."""
    fixed = {"model_store": str(model_store)}
    if free:
        ports = free_ports(5)
        fixed |= {
            "inference_address": f"http://127.0.0.1:{ports[0]}",
            "management_address": f"http://127.0.0.1:{ports[1]}",
            "metrics_address": f"http://127.0.0.1:{ports[2]}",
            "grpc_inference_port": str(ports[3]),
            "grpc_management_port": str(ports[4]),
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
    done = subprocess.run([str(ROOT / "archive.sh"), *(["--gpu"] if gpu else []), str(checkpoint), name], cwd=ROOT,
                          env=env, timeout=timeout, capture_output=True, text=True)
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


def frontend_pid(tmp):
    """The pid in tmp's TorchServe pid file, or None."""
    try:
        return int((Path(tmp) / PID_FILE).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def is_frontend(pid):
    """Is pid a live TorchServe frontend (and not a process that took over the number of a stale pid file)?"""
    try:
        return FRONTEND_MARK in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def stop_torchserve(launcher, env, cwd):
    """torchserve --stop (same TMPDIR and working folder as --start); then the process group as a fallback.

    launcher: the Popen of `torchserve --start`, or None for a TorchServe another process started through
    this harness (its process group is then the frontend's, read through the pid file in env's TMPDIR)."""
    pid = frontend_pid(env["TMPDIR"])
    if launcher is not None:
        try:
            launcher.wait(timeout=10)   # `--start` returns at once; reap it so the group check sees only the server
        except subprocess.TimeoutExpired:
            pass
        pgid = launcher.pid
    else:
        pgid = _own_group(pid)
    try:
        subprocess.run([_tool("torchserve"), "--stop"], env=env, cwd=cwd, timeout=60,
                       stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    except (OSError, subprocess.TimeoutExpired):
        pass
    if pgid is not None:
        _end(os.killpg, pgid)
    elif pid is not None and is_frontend(pid):
        _end(os.kill, pid)   # a frontend outside a group of its own: only the frontend itself
    if launcher is not None:
        if launcher.poll() is None:
            launcher.kill()
        launcher.wait(timeout=10)


def _own_group(pid):
    """The process group of the frontend `pid` when it is a session of its own whose leader, the launcher, has
    exited (as launch() starts it); else None: a TorchServe started otherwise shares a group with others."""
    if pid is None or not is_frontend(pid):
        return None
    try:
        pgid, sid = os.getpgid(pid), os.getsid(pid)
    except ProcessLookupError:
        return None
    own = pgid == sid and pgid not in (os.getpgrp(), pid) and pgid > 1 and not alive(pgid)
    return pgid if own else None


def _end(send, target):
    """Wait for the process (group) to exit after --stop, then SIGTERM, then SIGKILL."""
    for sig, wait in ((None, 30), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        if sig is not None and _exists(send, target):
            try:
                send(target, sig)
            except ProcessLookupError:
                return
        end = time.monotonic() + wait
        while _exists(send, target) and time.monotonic() < end:
            time.sleep(0.5)
        if not _exists(send, target):
            return


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


def port_in_use(address):
    """Does something accept connections at http://HOST:PORT?"""
    host, port = address.rsplit("/", 1)[-1].rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((host, int(port))) == 0


class TorchServe:
    """One TorchServe. By default everything lives in `work`: work/tmp (TMPDIR: pid file, worker sockets),
    work/cwd (key_file.json, logs/), work/config.properties and work/launcher.log (what --start printed).

    tmp, cwd: other folders for those (quickstart.sh: a short /tmp path, and the repository root).
    free_ports: False serves on the addresses of base_config (then start() refuses ports already taken).
    env: variables added to the server's environment (OMP_NUM_THREADS, TS_SERVICE_ENVELOPE, ...)."""

    def __init__(self, work, model_store, models, config_overrides=None, *, env=None, tmp=None, cwd=None,
                 base_config=ROOT / "config.properties", free_ports=True):
        self.work = Path(work)
        self.tmp = Path(tmp) if tmp else self.work / "tmp"
        self._own_tmp = None
        if len(str(self.tmp.resolve())) > MAX_TMP_CHARS:
            # the worker sockets live in TMPDIR, and a Unix socket's path has at most 107 bytes
            self.tmp = self._own_tmp = Path(tempfile.mkdtemp(prefix="ts-", dir="/tmp"))
        self.cwd = Path(cwd) if cwd else self.work / "cwd"
        self.model_store, self.models = Path(model_store), dict(models)
        self.config_overrides, self.extra_env = dict(config_overrides or {}), dict(env or {})
        self.base_config, self.free_ports = Path(base_config), free_ports
        self.config_path, self.launcher_log = self.work / "config.properties", self.work / "launcher.log"
        self.config, self.launcher, self._keys = {}, None, None

    # ---- life cycle
    def env(self):
        return server_env(self.tmp) | self.extra_env

    def start(self):
        for d in (self.work, self.tmp, self.cwd):
            d.mkdir(parents=True, exist_ok=True)
        self.config = write_config(self.config_path, self.model_store, self.config_overrides, self.base_config,
                                   self.free_ports)
        if not self.free_ports:
            taken = [f"{self.config[k]} ({k})" for k in ADDRESSES if k in self.config and port_in_use(self.config[k])]
            if taken:
                raise TorchServeError(f"{', '.join(taken)} {'is' if len(taken) == 1 else 'are'} taken by another "
                                      "server (another TorchServe?): stop it, or change the ports in "
                                      f"{self.base_config}")
        self.key_file.unlink(missing_ok=True)   # an earlier run's keys would be read before the new ones are written
        self._keys = None
        self.launcher = launch(self.cwd, self.env(), self.config_path,
                               [f"{name}={mar}" for name, mar in self.models.items()], self.launcher_log)
        return self

    def wait_ready(self, model=None, timeout=300, probe=b"warm up"):
        """Poll until `model` (a name, a list of names, or None: every model) answers a prediction with 200;
        -> seconds waited. Raises TorchServeError with the log tail when the server dies or time runs out."""
        waiting = list(self.models) if model is None else [model] if isinstance(model, str) else list(model)
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            code = self.launcher.poll()
            if code not in (None, 0):
                raise TorchServeError(f"torchserve --start exited with {code}\n{self.log_tail()}")
            pid = self.frontend_pid()
            if code == 0 and pid is not None and not alive(pid):
                raise TorchServeError(f"the TorchServe frontend (pid {pid}) died\n{self.log_tail()}")
            if self.key_file.is_file():
                try:
                    self._keys = None
                    waiting = [m for m in waiting if self.predict(m, probe, timeout=30).status_code != 200]
                    if not waiting:
                        return time.monotonic() - started
                except (ValueError, KeyError, OSError):
                    pass   # the key file half written, or the port not open yet (requests' errors are OSErrors)
            time.sleep(1)
        raise TorchServeError(f"no prediction from {', '.join(waiting)} within {timeout} s\n{self.log_tail()}")

    def stop(self):
        if self.launcher is not None:
            launcher, self.launcher = self.launcher, None
            stop_torchserve(launcher, self.env(), self.cwd)
        if self._own_tmp is not None:
            shutil.rmtree(self._own_tmp, ignore_errors=True)

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
    def metrics(self):
        return self.config["metrics_address"]

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
        return frontend_pid(self.tmp)

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
        return log_tail(self.cwd, lines, self.launcher_log)


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


# ---- python -m serving.torchserve start|stop
def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m serving.torchserve",
                                description="Start TorchServe and wait until its models answer, or stop it.")
    sub = p.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start TorchServe in the background; exit 0 once every model answers")
    start.add_argument("--models", nargs="+", required=True, metavar="NAME=FILE.mar",
                       help="the models to serve, from --model-store")
    start.add_argument("--tmp", type=Path, required=True,
                       help="TorchServe's temp folder (pid file, worker sockets): one per server; `stop --tmp` "
                            "stops the server started with it. Keep it short: a socket path holds 107 bytes")
    start.add_argument("--cwd", type=Path, default=Path.cwd(), help="working folder: key_file.json, logs/ (default: .)")
    start.add_argument("--config", type=Path, default=ROOT / "config.properties",
                       help="the config.properties whose settings and ports to serve with")
    start.add_argument("--model-store", type=Path, help="default: model_store of --config, from --cwd")
    start.add_argument("--free-ports", action="store_true", help="free 127.0.0.1 ports instead of --config's")
    start.add_argument("--timeout", type=float, default=240, help="seconds until every model must answer")
    stop = sub.add_parser("stop", help="stop the TorchServe started with this --tmp, and only it")
    stop.add_argument("--tmp", type=Path, required=True)
    stop.add_argument("--cwd", type=Path, default=Path.cwd())
    return p.parse_args(argv)


def cli_start(args):
    """Start and wait; on failure stop what was started. The server outlives this command."""
    tmp, cwd = args.tmp.resolve(), args.cwd.resolve()
    store = args.model_store or Path(read_properties(args.config).get("model_store", "model_store"))
    store = store if store.is_absolute() else cwd / store
    models = dict(m.split("=", 1) for m in args.models)
    tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
    if frontend_pid(tmp) is not None and is_frontend(frontend_pid(tmp)):
        print(f"a TorchServe started with --tmp {tmp} is running: stop it first "
              f"(python -m serving.torchserve stop --tmp {tmp})", file=sys.stderr)
        return 1
    ts = TorchServe(tmp, store, models, tmp=tmp, cwd=cwd, base_config=args.config, free_ports=args.free_ports)
    try:
        ts.start()
    except TorchServeError as e:   # a port taken: nothing was started
        print(e, file=sys.stderr)
        return 1
    try:
        seconds = ts.wait_ready(timeout=args.timeout)
    except TorchServeError as e:
        ts.stop()
        print(f"TorchServe did not come up: {e}\n(logs: {ts.log_dir}, {ts.launcher_log})", file=sys.stderr)
        return 1
    except BaseException:
        ts.stop()
        raise
    print(f"TorchServe serves {', '.join(models)} at {ts.inference} (ready after {seconds:.0f} s; "
          f"keys in {ts.key_file})")
    return 0


def cli_stop(args):
    tmp = args.tmp.resolve()
    pid = frontend_pid(tmp)
    if pid is None or not is_frontend(pid):
        print(f"no TorchServe started with --tmp {tmp} is running")
        (tmp / PID_FILE).unlink(missing_ok=True)
        return 0
    stop_torchserve(None, server_env(tmp), args.cwd.resolve())
    if is_frontend(pid):
        print(f"TorchServe (pid {pid}) is still running", file=sys.stderr)
        return 1
    print(f"TorchServe (pid {pid}) stopped")
    return 0


def main(argv=None):
    args = parse_args(argv)
    return cli_start(args) if args.command == "start" else cli_stop(args)


if __name__ == "__main__":
    sys.exit(main())
