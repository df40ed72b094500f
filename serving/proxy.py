"""nginx in front of a pod's TorchServe, with the clients' keys taken from a file that may change while it runs.

    python serving/proxy.py --listen 0.0.0.0:8080 --upstream 127.0.0.1:8085 \
        --keys /home/model-server/keys/api-keys --work /home/model-server/work/proxy

nginx does the serving: framing, limits, the key check, the paths, the JSON refusals (deploy/nginx/textclf.conf.in
says which and why). This script only
  - renders that template into WORK/nginx.conf (listen address, upstream, body limit, deadlines);
  - keeps the accepted keys as empty files named by the keys in WORK/keys/ (mode 0700), which nginx looks up on
    every request (`if (-f ...)`), so a changed key file takes effect within --recheck-s seconds without a
    reload, and no request or kept-alive connection is dropped by a rotation;
  - runs nginx in the foreground and ends with it: SIGTERM or SIGINT become nginx's graceful SIGQUIT (requests
    under way are finished, at most worker_shutdown_timeout), and an nginx that ends by itself ends this with 1.

Keys file (a Kubernetes Secret mounted as a volume): one key a line, 32 to 256 characters of A-Z a-z 0-9 _ -
(`openssl rand -hex 32`); blank lines and lines starting with # are skipped; any other line is ignored with a
warning naming its line number, never the key. No usable key: every request but the probes gets 401 (fails
closed), and `--check` exits with 2.

Standard library only: the image runs it as a script beside TorchServe, outside the .mar's Python path.
"""
import argparse
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "deploy" / "nginx" / "textclf.conf.in"
METRICS_TEMPLATE = ROOT / "deploy" / "nginx" / "metrics.conf.in"
VERSION = "0.13.0"
KEY = re.compile(r"[A-Za-z0-9_-]{32,128}")   # a file name each: well under the 255-byte limit
LIMITS = {"HEAD_S": 10, "BODY_S": 10, "IDLE_S": 5, "MAX_INFLIGHT": 512}
log = logging.getLogger("proxy")


class ProxyError(RuntimeError):
    pass


def read_keys(path):
    """The usable keys of `path` (a set) and a warning per unusable line. A missing file holds no key."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return set(), [f"{path}: no such file"]
    keys, warnings = set(), []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if KEY.fullmatch(line):
            keys.add(line)
        else:
            warnings.append(f"{path}:{number}: not a key (32-128 characters of A-Z a-z 0-9 _ -); line ignored")
    return keys, warnings


def sync_keys(keys, keys_dir):
    """Make `keys_dir` hold exactly one empty file per key: new ones first, then the old ones go, so a key in
    both the old and the new file is never missing."""
    keys_dir = Path(keys_dir)
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for key in keys:
        (keys_dir / key).touch(mode=0o600)
    for path in keys_dir.iterdir():
        if path.name not in keys:
            path.unlink()


def find_nginx():
    """$TEXTCLF_NGINX, else nginx on PATH or in /usr/sbin, else the copy setup.sh unpacks into .tools/."""
    for candidate in (os.environ.get("TEXTCLF_NGINX"), shutil.which("nginx"), "/usr/sbin/nginx",
                      str(ROOT / ".tools" / "nginx" / "usr" / "sbin" / "nginx")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ProxyError("nginx not found: install Debian's nginx package, run ./setup.sh (it unpacks one into "
                     ".tools/nginx), or set TEXTCLF_NGINX=/path/to/nginx")


def fill(template, fields):
    """The template's text with every @NAME@ replaced by fields[NAME]; refuses values nginx would misread."""
    text = Path(template).read_text(encoding="utf-8")
    for name, value in fields.items():
        if re.search(r"[\s;{}'\"]", value) and name != "USER":
            raise ProxyError(f"{name.lower()} {value!r} cannot go into nginx.conf")
        text = text.replace(f"@{name}@", value)
    left = sorted(set(re.findall(r"@[A-Z_]+@", text)))
    if left:
        raise ProxyError(f"{template}: no value for {', '.join(left)}")
    return text


def render(work, listen, upstream, max_body, limits=None, metrics=None, template=TEMPLATE):
    """Write WORK/nginx.conf, WORK/key-check.conf and WORK/metrics.conf (the metrics port's server when
    metrics = (listen, upstream), else empty); return the nginx.conf path."""
    work = Path(work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    keys_dir = work / "keys"
    values = {**LIMITS, **(limits or {})}
    fields = {
        "WORK": str(work), "KEYS_DIR": str(keys_dir), "LISTEN": listen, "UPSTREAM": upstream,
        "MAX_BODY": str(int(max_body)), "VERSION": VERSION,
        # nginx started by root would run its worker as nobody, who cannot use WORK; started by anyone else it
        # stays that user (the image runs as uid 1000).
        "USER": "user root;" if os.geteuid() == 0 else "",
        **{name: str(value) for name, value in values.items()},
    }
    text = fill(template, fields)
    (work / "metrics.conf").write_text(
        fill(METRICS_TEMPLATE, {"METRICS_LISTEN": metrics[0], "METRICS_UPSTREAM": metrics[1], "WORK": str(work)})
        if metrics
        else "# no metrics port (serving/proxy.py --metrics-listen)\n", encoding="utf-8")
    (work / "canonical.conf").write_text(
        "# Written by serving/proxy.py: a path with percent-encoding, a dot segment or an empty segment is refused.\n"
        'if ($request_uri ~ "^[^?]*(%|/\\.|//)") { return 400; }\n', encoding="utf-8")
    (work / "key-check.conf").write_text(
        "# Written by serving/proxy.py: a path that is not canonical, no key, or a key that is not a file of the\n"
        "# keys folder is refused.\n"
        f"include {work}/canonical.conf;\n"
        'if ($textclf_key = "") { return 401; }\n'
        f"if (!-f {keys_dir}/$textclf_key) {{ return 401; }}\n", encoding="utf-8")
    conf = work / "nginx.conf"
    conf.write_text(text, encoding="utf-8")
    return conf


def nginx_command(nginx, work, *extra):
    work = Path(work).resolve()
    return [nginx, "-p", f"{work}/", "-c", str(work / "nginx.conf"), "-e", "stderr", *extra]


def check_config(nginx, work):
    done = subprocess.run(nginx_command(nginx, work, "-t", "-q"), capture_output=True, text=True)
    if done.returncode != 0:
        raise ProxyError(f"nginx refuses {Path(work) / 'nginx.conf'}:\n{done.stderr.strip()}")


class KeyWatch:
    """Re-reads the keys file when its identity, size or time changes (a Secret update swaps a symlink)."""

    def __init__(self, path, keys_dir):
        self.path, self.keys_dir, self.stamp = Path(path), Path(keys_dir), None

    def _stamp(self):
        try:
            s = self.path.stat()
            return s.st_ino, s.st_dev, s.st_size, s.st_mtime_ns
        except OSError:
            return None

    def poll(self, force=False):
        """Mirror the file's keys when it changed. The stamp is kept only once the keys folder holds them, so a
        failure is tried again at the next poll; a file rewritten while it was read is read again. Errors name
        the errno, never a path (a key file's name is the key)."""
        stamp = self._stamp()
        if stamp == self.stamp and not force:
            return False
        keys, warnings = read_keys(self.path)
        if self._stamp() != stamp:
            return False                    # changed under us: read it whole at the next poll
        for warning in warnings:
            log.warning(warning)
        if not keys:
            log.warning("%s holds no usable key: every request but the probes is refused", self.path)
        try:
            sync_keys(keys, self.keys_dir)
        except OSError as e:
            raise ProxyError(f"the keys folder could not be updated ({e.strerror or type(e).__name__})") from None
        self.stamp = stamp
        log.info("%d key(s) in use from %s", len(keys), self.path)
        return True


def become_subreaper():
    """Orphaned descendants come to this process instead of init (Linux prctl PR_SET_CHILD_SUBREAPER): an nginx
    master that dies leaves its worker running, still holding the port, unless someone ends it."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def end_children():
    """SIGKILL every child left (nginx's orphaned workers, through become_subreaper) and reap them."""
    me = str(os.getpid())
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "stat").read_text().rsplit(")", 1)[1].split()[1] == me:
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, IndexError):
            pass
    while True:
        try:
            os.waitpid(-1, 0)           # each was sent SIGKILL: this returns at once
        except ChildProcessError:
            return


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", default="127.0.0.1:8080", help="address:port clients reach (default loopback)")
    p.add_argument("--upstream", default="127.0.0.1:8085", help="TorchServe's inference address:port")
    p.add_argument("--keys", required=True, help="the clients' keys, one a line")
    p.add_argument("--work", required=True, help="a writable folder of the proxy's own (config, keys, temp)")
    p.add_argument("--max-body", type=int, default=6553500, help="bytes; TorchServe's max_request_size")
    p.add_argument("--metrics-listen", help="address:port for GET /metrics (default: no metrics port)")
    p.add_argument("--metrics-upstream", default="127.0.0.1:8083", help="TorchServe's metrics address:port")
    p.add_argument("--recheck-s", type=float, default=1.0, help="how often the keys file is looked at")
    for name, value in LIMITS.items():
        p.add_argument(f"--{name.lower().replace('_', '-')}", type=int, default=value)
    p.add_argument("--check", action="store_true", help="only say whether the keys file is usable (exit 0 or 2)")
    return p.parse_args(argv)


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="proxy: %(levelname)s %(message)s")
    args = parse_args(argv)
    if args.check:
        keys, warnings = read_keys(args.keys)
        for warning in warnings:
            log.warning(warning)
        if not keys:
            print(f"proxy: {args.keys} holds no usable key (one a line, 32-128 characters of A-Z a-z 0-9 _ -; "
                  "`openssl rand -hex 32` makes one)", file=sys.stderr)
            return 2
        try:
            find_nginx()
        except ProxyError as e:
            print(f"proxy: {e}", file=sys.stderr)
            return 2
        return 0
    limits = {name: getattr(args, name.lower()) for name in LIMITS}
    try:
        nginx = find_nginx()
        work = Path(args.work).resolve()
        metrics = (args.metrics_listen, args.metrics_upstream) if args.metrics_listen else None
        render(work, args.listen, args.upstream, args.max_body, limits, metrics)
        watch = KeyWatch(args.keys, work / "keys")
        watch.poll(force=True)
        check_config(nginx, work)
    except (ProxyError, OSError) as e:
        print(f"proxy: {e}", file=sys.stderr)
        return 2
    become_subreaper()
    stopping, started = [], []

    def on_signal(signum, frame):
        if not stopping:
            stopping.append(signum)
            if started:
                started[0].send_signal(signal.SIGQUIT)      # graceful: finish what is under way, then exit

    # Handlers first, signals held while nginx starts: a SIGTERM then is acted on once nginx exists.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        # NGINX in the environment is nginx's own variable (inherited sockets): never passed on
        env = {k: v for k, v in os.environ.items() if k != "NGINX"}
        process = subprocess.Popen(nginx_command(nginx, work), env=env)
        started.append(process)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
    log.info("nginx (pid %d) on %s in front of %s%s", process.pid, args.listen, args.upstream,
             f", metrics on {args.metrics_listen} from {args.metrics_upstream}" if args.metrics_listen else "")
    while process.poll() is None:
        if not stopping:
            try:
                watch.poll()
            except (OSError, ProxyError) as e:
                log.warning("keys not updated, tried again in %s s: %s", args.recheck_s,
                            e if isinstance(e, ProxyError) else (e.strerror or type(e).__name__))
        try:
            process.wait(timeout=args.recheck_s)
        except subprocess.TimeoutExpired:
            pass
    end_children()
    if stopping:
        return 0
    log.error("nginx ended by itself (status %s)", process.returncode)
    return 1


if __name__ == "__main__":
    sys.exit(main())
