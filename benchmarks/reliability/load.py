"""Locust runs against one TorchServe model (users from locust_user.py), each recorded request by request,
and the analysis of those records: answered, refused (TorchServe's full queue, or the handler's overload 503),
anything else, latencies."""
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np

from serving.torchserve import TorchServeError

ROOT = Path(__file__).resolve().parents[2]
REFUSED = (429, 503)
# A refusal is a 429/503 whose JSON body says it is one: TorchServe's ServiceUnavailableException (a full job
# queue; TorchServe answers "no worker" with the same type, so the two cannot be told apart), or the handler's
# "overload" (a batch over max_batch_tokens). A 503 "Prediction failed" (a handler that raised) is no refusal.
REFUSAL_TYPES = ("ServiceUnavailableException", "overload")


class Load:
    """Locust runs against one TorchServe model, each recorded into its own folder."""

    def __init__(self, ts, model, data, labels, out):
        self.ts, self.model, self.data, self.labels, self.out = ts, model, data, labels, Path(out)
        self.runs = []

    def start(self, name, users, run_seconds, rate=0.0):
        folder = self.out / name
        folder.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
            "TS_MODEL": self.model, "TS_KEY_FILE": str(self.ts.key_file), "TS_DATA": str(self.data),
            "TS_LABELS": str(self.labels), "TS_RECORD": str(folder / "requests.csv"), "TS_RATE": str(rate),
            "TS_STARTED": str(folder / "started"), "TS_STOP": str(folder / "stop")}
        for stale in ("started", "stop", "requests.csv"):
            (folder / stale).unlink(missing_ok=True)
        cmd = [str(ROOT / ".venv" / "bin" / "locust"), "-f", str(Path(__file__).with_name("locust_user.py")),
               "--headless", "--only-summary", "--host", self.ts.inference, "--users", str(users),
               "--spawn-rate", str(users), "--run-time", f"{max(1, round(run_seconds))}s", "--stop-timeout", "10",
               "--csv", str(folder / "locust"), "--logfile", str(folder / "locust.log")]
        with open(folder / "locust.out", "wb") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.runs.append(LocustRun(proc, folder, users, run_seconds))
        return self.runs[-1]

    def run(self, name, users, run_seconds, rate=0.0):
        run = self.start(name, users, run_seconds, rate)
        return run.wait()

    def close(self):
        """Kill any locust still running (after an error or Ctrl-C): nothing outlives the benchmark."""
        for run in self.runs:
            if run.proc.poll() is None:
                os.killpg(run.proc.pid, signal.SIGKILL)
                run.proc.wait(timeout=30)


class LocustRun:
    def __init__(self, proc, folder, users, run_seconds):
        self.proc, self.folder, self.users, self.run_seconds = proc, folder, users, run_seconds

    def wait_started(self, timeout=120):
        """-> epoch seconds when every user was running. Raises if locust exited or never got there."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if (self.folder / "started").exists():
                return time.time()
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise TorchServeError(f"locust did not start its users; see {self.folder / 'locust.log'}")

    def stop(self):
        (self.folder / "stop").touch()

    def wait(self):
        """Wait for locust (bounded: run time + start-up + --stop-timeout + margin); -> its Records."""
        try:
            self.proc.wait(timeout=self.run_seconds + 180)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
            raise TorchServeError(f"locust did not stop in time; see {self.folder / 'locust.log'}") from None
        path = self.folder / "requests.csv"
        if not path.is_file():
            raise TorchServeError(f"locust (exit {self.proc.returncode}) wrote no records; "
                                  f"see {self.folder / 'locust.log'} and locust.out")
        return Records.read(path, self.users)


class Records:
    """Every request of one locust run: (start (epoch s), latency ms, status, json_ok, error_type), as
    locust_user.py records them."""

    def __init__(self, rows, users):
        self.rows, self.users = sorted(rows), users

    @classmethod
    def read(cls, path, users):
        lines = Path(path).read_text(encoding="utf-8").splitlines()[1:]
        rows = []
        for line in lines:
            start, ms, status, ok, kind = line.split(",")
            rows.append((float(start), float(ms), int(status), int(ok), kind))
        return cls(rows, users)

    def where(self, keep):
        return Records([r for r in self.rows if keep(r)], self.users)

    def summary(self, t0=None, t1=None):
        rows = self.rows
        ok = [r for r in rows if r[2] == 200]
        refused = [r for r in rows if refusal(r)]
        if t0 is None:
            t0 = rows[0][0] if rows else 0.0
        if t1 is None:
            t1 = max((r[0] + r[1] / 1000 for r in rows), default=t0)
        span = max(t1 - t0, 1e-9)
        by_status, by_type = {}, {}
        for r in rows:
            by_status[str(r[2])] = by_status.get(str(r[2]), 0) + 1
            if r[2] not in (0, 200):
                by_type[f"{r[2]} {r[4] or '(none)'}"] = by_type.get(f"{r[2]} {r[4] or '(none)'}", 0) + 1
        lat = sorted(r[1] for r in ok)
        return {
            "users": self.users, "requests": len(rows), "ok": len(ok), "refused": len(refused),
            "other": len(rows) - len(ok) - len(refused), "hung": sum(r[2] == -1 for r in rows),
            "no_answer": sum(r[2] == 0 for r in rows), "by_status": dict(sorted(by_status.items())),
            "errors_by_type": dict(sorted(by_type.items())),
            "errors_without_json_message": sum(1 for r in rows if r[2] > 0 and not r[3]),
            "seconds": round(span, 2), "ok_per_s": round(len(ok) / span, 2), "answers_per_s": round(len(rows) / span, 2),
            "p50_ok_ms": _pct(lat, 50), "p99_ok_ms": _pct(lat, 99), "max_ok_ms": round(lat[-1], 1) if lat else None,
            "max_refused_ms": round(max(r[1] for r in refused), 1) if refused else None,
            "max_ms": round(max(r[1] for r in rows), 1) if rows else None,
        }

    def per_second(self, t0, step=1.0):
        """[(t, ok, refused, other, max_ms)] by completion time, t seconds after t0."""
        buckets = {}
        for row in self.rows:
            start, ms, status = row[:3]
            b = buckets.setdefault(int((start + ms / 1000 - t0) // step), [0, 0, 0, 0.0])
            b[0 if status == 200 else 1 if refusal(row) else 2] += 1
            b[3] = max(b[3], ms)
        return [(round(k * step, 2), *v) for k, v in sorted(buckets.items())]


def refusal(row):
    """A refusal to retry later (see REFUSAL_TYPES), not a failure."""
    return row[2] in REFUSED and row[4] in REFUSAL_TYPES


def _pct(values, q):
    return round(float(np.percentile(values, q)), 1) if len(values) else None


