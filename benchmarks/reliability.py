"""Reliability evidence for the served model: overload, a worker SIGKILL under load, a soak, hostile requests.

Usage: benchmarks/reliability.sh CKPT [--soak-minutes 30] [--overload-users 256] [--overload-factor 4]
           [--normal-users 16] [--duration 60s] [--kill-after 10s] [--phases hostile,overload,kill,soak] [--out results/reliability-<ts>]
           [--record RELIABILITY.md] [--data data/snips/test.txt] [--model-config handlers/model-config.yaml]

CKPT is archived afresh (archive.sh, --model-config) into a private model store and served with the
repository's config.properties (only ports and model store changed) by a private TorchServe on 127.0.0.1
(serving/torchserve.py); every request stays on loopback and every run is bounded in time.
  hostile   each bad request of hostile_cases(), sent concurrently with good ones: its 4xx and message, the worker
            still the same process, the good ones answered, registration by URL refused, and a random
            marker sent as request text absent from every TorchServe log
  overload  locust, --duration each: --normal-users back to back (baseline); --overload-users paced to
            --overload-factor x the baseline's answers/s (overload); the same users back to back, a refused
            client retrying at once (storm); --normal-users again (recovery). Statuses, refusal bodies, max
            latency against responseTimeout, throughput after
  kill      locust at --normal-users; after --kill-after, SIGKILL of the worker (the Python child of the Java
            frontend running model_service_worker); seconds until a prediction answers 200 again, requests lost
  soak      on a fresh TorchServe, locust at half the baseline throughput for --soak-minutes; RSS of the
            frontend and the worker every --sample-every seconds; growth of the last 10% over the first 10%
            of the samples after --soak-warmup
Writes OUT/results.json, overload.png, kill.png, soak_memory.png, the locust records (OUT/<phase>/requests.csv)
and TorchServe's logs; then --record (RELIABILITY.md at the repository root; '' for none).
Exit code: 0 all targets met, 1 some target missed (see the report), 2 bad arguments or TorchServe failed.
"""
import argparse
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from benchmarks.common import git_commit, machine, read_model_config, versions
from serving.torchserve import TorchServe, TorchServeError, archive

ROOT = Path(__file__).resolve().parents[1]

NAME = "reliability"
REFUSED = (429, 503)
WORKER_DIED = (500, 507)
RECOVERY_TARGET_S = 30
GROWTH_TARGET = 0.05
THROUGHPUT_BACK = 0.8      # recovery throughput must reach this share of the baseline
PHASES = ("hostile", "overload", "kill", "soak")
GOOD_TEXTS = ["play some jazz on the radio", "will it rain in paris tomorrow", "book a table for two tonight"]


# ---- command line
def seconds(text):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", str(text).strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a duration such as 30, 30s, 2m or 1h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="benchmarks/reliability.sh", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--overload-users", type=int, default=256)
    p.add_argument("--overload-factor", type=float, default=4.0,
                   help="offered load of the paced overload run, in multiples of the baseline's answers/s")
    p.add_argument("--normal-users", type=int, default=16, help="baseline, recovery, kill and soak users")
    p.add_argument("--duration", type=seconds, default=60.0,
                   help="each overload run (baseline, overload, storm, recovery)")
    p.add_argument("--kill-after", type=seconds, default=10.0, help="load before the SIGKILL, and kept after recovery")
    p.add_argument("--soak-minutes", type=float, default=30.0)
    p.add_argument("--sample-every", type=seconds, default=5.0, help="RSS sampling interval during the soak")
    p.add_argument("--soak-warmup", type=seconds, help="first seconds of the soak left out of the growth "
                   "(the JVM sizing its heap, allocator pools); default min(120 s, 10%% of the soak)")
    p.add_argument("--phases", default=",".join(PHASES))
    p.add_argument("--data", type=Path, default=ROOT / "data" / "snips" / "test.txt")
    p.add_argument("--model-config", type=Path, default=ROOT / "handlers" / "model-config.yaml")
    p.add_argument("--out", type=Path)
    p.add_argument("--record", default=str(ROOT / "RELIABILITY.md"), help="report to write ('' for none)")
    p.add_argument("--note", default="")
    args = p.parse_args(argv)
    args.phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    problems = [f"--phases: unknown {x!r}; choose from {', '.join(PHASES)}" for x in args.phases if x not in PHASES]
    if not args.checkpoint.is_dir():
        problems.append(f"checkpoint folder {args.checkpoint} does not exist")
    for name in ("data", "model_config"):
        if not getattr(args, name).is_file():
            problems.append(f"--{name.replace('_', '-')} {getattr(args, name)} not found")
    if not (1 <= args.normal_users <= 512 and 1 <= args.overload_users <= 512):
        problems.append("--normal-users and --overload-users: 1 to 512")
    if not 0 < args.overload_factor <= 100:
        problems.append("--overload-factor: more than 0, at most 100")
    if not (0 < args.duration <= 3600 and 0 < args.kill_after <= 600 and 0 <= args.soak_minutes <= 240):
        problems.append("--duration up to 1h, --kill-after up to 10m, --soak-minutes up to 240")
    if problems:
        p.error("; ".join(problems))
    return args


# ---- locust runs and their records
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
        cmd = [str(ROOT / ".venv" / "bin" / "locust"), "-f", str(ROOT / "benchmarks" / "reliability_locust.py"),
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
    """Every request of one locust run: start (epoch s), latency ms, status, json_ok (see reliability_locust.py)."""

    def __init__(self, rows, users):
        self.rows, self.users = sorted(rows), users

    @classmethod
    def read(cls, path, users):
        lines = Path(path).read_text(encoding="utf-8").splitlines()[1:]
        rows = []
        for line in lines:
            start, ms, status, ok = line.split(",")
            rows.append((float(start), float(ms), int(status), int(ok)))
        return cls(rows, users)

    def where(self, keep):
        return Records([r for r in self.rows if keep(r)], self.users)

    def summary(self, t0=None, t1=None):
        rows = self.rows
        ok = [r for r in rows if r[2] == 200]
        refused = [r for r in rows if r[2] in REFUSED]
        if t0 is None:
            t0 = rows[0][0] if rows else 0.0
        if t1 is None:
            t1 = max((r[0] + r[1] / 1000 for r in rows), default=t0)
        span = max(t1 - t0, 1e-9)
        by_status = {}
        for r in rows:
            by_status[str(r[2])] = by_status.get(str(r[2]), 0) + 1
        lat = sorted(r[1] for r in ok)
        return {
            "users": self.users, "requests": len(rows), "ok": len(ok), "refused": len(refused),
            "other": len(rows) - len(ok) - len(refused), "hung": sum(r[2] == -1 for r in rows),
            "no_answer": sum(r[2] == 0 for r in rows), "by_status": dict(sorted(by_status.items())),
            "errors_without_json_message": sum(1 for r in rows if r[2] > 0 and not r[3]),
            "seconds": round(span, 2), "ok_per_s": round(len(ok) / span, 2), "answers_per_s": round(len(rows) / span, 2),
            "p50_ok_ms": _pct(lat, 50), "p99_ok_ms": _pct(lat, 99), "max_ok_ms": round(lat[-1], 1) if lat else None,
            "max_refused_ms": round(max(r[1] for r in refused), 1) if refused else None,
            "max_ms": round(max(r[1] for r in rows), 1) if rows else None,
        }

    def per_second(self, t0, step=1.0):
        """[(t, ok, refused, other, max_ms)] by completion time, t seconds after t0."""
        buckets = {}
        for start, ms, status, _ in self.rows:
            b = buckets.setdefault(int((start + ms / 1000 - t0) // step), [0, 0, 0, 0.0])
            b[0 if status == 200 else 1 if status in REFUSED else 2] += 1
            b[3] = max(b[3], ms)
        return [(round(k * step, 2), *v) for k, v in sorted(buckets.items())]


def _pct(values, q):
    return round(float(np.percentile(values, q)), 1) if len(values) else None


# ---- serving settings
def serving_settings(model_config, ts):
    mc = read_model_config(model_config)
    cfg = ts.config
    timeout = mc.get("responseTimeout", cfg.get("default_response_timeout", 120))
    return {"job_queue_size": int(cfg.get("job_queue_size", 100)), "response_timeout_s": int(timeout),
            "batch_size": int(mc.get("batchSize", 1)), "max_batch_delay_ms": int(mc.get("maxBatchDelay", 100)),
            "workers": int(mc.get("minWorkers", 1)), "max_request_size": int(cfg.get("max_request_size", 6553500)),
            "max_chars": int(mc["handler"].get("max_chars", 20000))}


# ---- phase: overload
def overload(load, users, normal_users, run_seconds, settings, factor=4.0):
    """baseline (normal users, back to back) -> overload (`users` paced to `factor` x the baseline's answers/s in
    all) -> storm (`users` back to back: a refused client retries at once) -> recovery (normal users)."""
    runs, t0 = {}, time.time()
    print(f"== overload: baseline, {normal_users} users for {run_seconds:.0f} s", flush=True)
    runs["baseline"] = load.run("overload/baseline", normal_users, run_seconds)
    offered = factor * runs["baseline"].summary()["ok_per_s"]
    plan = [("overload", users, offered / users), ("storm", users, 0.0), ("recovery", normal_users, 0.0)]
    for name, n, rate in plan:
        pace = f", {rate * n:.0f} req/s offered in all" if rate else ", back to back"
        print(f"== overload: {name}, {n} users{pace} for {run_seconds:.0f} s", flush=True)
        runs[name] = load.run(f"overload/{name}", n, run_seconds, rate=rate)
    s = {name: r.summary() for name, r in runs.items()}
    base, rec = s["baseline"], s["recovery"]
    first = runs["recovery"].rows[0][0] if runs["recovery"].rows else t0
    early = runs["recovery"].where(lambda r: r[0] + r[1] / 1000 < first + min(5.0, run_seconds))
    early_rate = round(early.summary(first, first + min(5.0, run_seconds))["ok_per_s"], 2)
    limit_ms = settings["response_timeout_s"] * 1000
    back = rec["ok_per_s"] / base["ok_per_s"] if base["ok_per_s"] else None
    checks = {
        "no request hung or went unanswered": all(x["hung"] == 0 and x["no_answer"] == 0 for x in s.values()),
        "every answer 200 or a refusal (503/429)": all(x["other"] == 0 for x in s.values()),
        "every refusal a JSON body with a message": all(x["errors_without_json_message"] == 0 for x in s.values()),
        f"none slower than responseTimeout ({settings['response_timeout_s']} s)":
            all(x["max_ms"] is not None and x["max_ms"] < limit_ms for x in s.values()),
        f"recovery throughput >= {THROUGHPUT_BACK:.0%} of baseline": back is not None and back >= THROUGHPUT_BACK,
        "no refusals at normal load": base["refused"] == 0 and rec["refused"] == 0,
    }
    timeline = {name: r.per_second(t0) for name, r in runs.items()}
    return {"runs": s, "factor": factor, "offered_req_per_s": round(offered, 1),
            "recovery_ok_per_s_first_5s": early_rate, "recovery_ratio": round(back, 3) if back else None,
            "checks": checks, "timeline": timeline, "passed": all(checks.values())}


# ---- phase: worker SIGKILL under load
def probe_until_answered(ts, model, deadline_s):
    """Predictions one after another until one answers 200; -> (seconds, attempts) or (None, attempts)."""
    import requests
    start, attempts = time.time(), 0
    while time.time() - start < deadline_s:
        attempts += 1
        try:
            if ts.predict(model, GOOD_TEXTS[0].encode(), timeout=deadline_s).status_code == 200:
                return time.time() - start, attempts
        except requests.RequestException:
            pass
        time.sleep(0.1)
    return None, attempts


def wait_for_replacement(ts, model, victim_pid, count, since, deadline_s):
    """Seconds from `since` until `count` workers are READY again without the killed one (None: not in time)."""
    while time.time() - since < deadline_s:
        try:
            pids = [p.pid for p in ts.workers()]
            states = ts.worker_states(model)
        except TorchServeError:
            pids, states = [], []
        if victim_pid not in pids and len(pids) == count and states == ["READY"] * count:
            return time.time() - since
        time.sleep(0.2)
    return None


def worker_kill(load, users, kill_after, settings, recovery_limit=RECOVERY_TARGET_S * 2):
    ts, model = load.ts, load.model
    workers = ts.workers()
    [victim, *_] = workers or [None]
    if victim is None:
        raise TorchServeError("no model_service_worker process under the TorchServe frontend")
    print(f"== kill: {users} users; SIGKILL of worker {victim.pid} after {kill_after:.0f} s", flush=True)
    run = load.start("kill", users, kill_after * 2 + recovery_limit)
    try:
        run.wait_started()
        time.sleep(kill_after)
        killed_at = time.time()
        os.kill(victim.pid, signal.SIGKILL)
        recovery_s, probes = probe_until_answered(ts, model, recovery_limit)
        replaced_s = wait_for_replacement(ts, model, victim.pid, len(workers), killed_at, recovery_limit)
        time.sleep(kill_after)   # as long again at load after recovery: the steady state to compare with
    finally:
        run.stop()
    records = run.wait()
    new = [p.pid for p in ts.workers()]
    states = ts.worker_states(model)
    before, after = records.where(lambda r: r[0] < killed_at), records.where(lambda r: r[0] >= killed_at)
    failed = [r for r in records.rows if r[2] != 200]
    # TorchServe answers the batch the dead worker held with "Worker died." (507 after a SIGKILL, whose exit code
    # 137 it takes for the OOM killer; 500 otherwise); queued requests wait for the new worker. A request sent a
    # few ms after the kill can still be in that batch: the frontend has not noticed the death yet.
    lost_in_flight = [r for r in failed if r[2] in WORKER_DIED]
    # The first request sent after the kill and answered 200: the new worker's first answers.
    first_ok = min((r[0] + r[1] / 1000 for r in after.rows if r[2] == 200), default=None)
    load_recovery_s = round(first_ok - killed_at, 2) if first_ok else None
    back = records.where(lambda r: first_ok is not None and r[0] >= first_ok and r[2] == 200)
    first_answers = [round(r[1], 1) for r in back.rows[:10]]
    checks = {
        f"a prediction answers 200 within {RECOVERY_TARGET_S} s of the SIGKILL":
            recovery_s is not None and recovery_s <= RECOVERY_TARGET_S,
        "TorchServe started a new worker": replaced_s is not None and bool(new) and victim.pid not in new
            and states == ["READY"] * len(states),
        "no request hung or went unanswered": all(r[2] not in (-1, 0) for r in records.rows),
        "only requests in flight at the kill failed (Worker died, at most one batch)":
            len(failed) == len(lost_in_flight) and len(failed) <= settings["batch_size"] * settings["workers"],
        "every failure a JSON body with a message": all(r[3] for r in failed),
    }
    return {
        "users": users, "killed_pid": victim.pid, "new_pids": new, "worker_states": states,
        "kill_after_s": round(killed_at - records.rows[0][0], 2) if records.rows else None,
        "recovery_s": round(recovery_s, 2) if recovery_s is not None else None, "probes": probes,
        "replacement_ready_s": round(replaced_s, 2) if replaced_s is not None else None,
        "load_recovery_s": load_recovery_s, "failed": len(failed), "failed_in_flight": len(lost_in_flight),
        "failed_sent_before_kill": sum(r[0] < killed_at for r in failed),
        "failed_by_status": records.where(lambda r: r[2] != 200).summary()["by_status"],
        "before": before.summary(), "after": after.summary(),
        "first_answers_after_recovery_ms": first_answers,
        "steady_p50_before_ms": before.summary()["p50_ok_ms"],
        "max_ms": records.summary()["max_ms"], "timeline": records.per_second(killed_at, 0.5),
        "checks": checks, "passed": all(checks.values()),
    }


# ---- phase: soak
def rss_sample(ts):
    import psutil
    try:
        front = ts.frontend()
        workers = ts.workers()
        return {"frontend_mib": front.memory_info().rss / 2**20,
                "worker_mib": sum(p.memory_info().rss for p in workers) / 2**20, "worker_pids": [p.pid for p in workers]}
    except (psutil.NoSuchProcess, TorchServeError):
        return None


def growth(values):
    """Median of the last 10% of the samples over the median of the first 10%, minus 1 (None: too few)."""
    import statistics
    if len(values) < 2:
        return None
    n = max(1, len(values) // 10)
    first, last = statistics.median(values[:n]), statistics.median(values[-n:])
    return round(last / first - 1, 4) if first else None


def soak(load, minutes, users, total_rate, every, warmup):
    rate = total_rate / users
    print(f"== soak: {users} users at {total_rate:.1f} req/s in all for {minutes:g} min, RSS every {every:g} s",
          flush=True)
    run = load.start("soak", users, minutes * 60, rate=rate)
    samples = []
    try:
        started = run.wait_started()
        while run.proc.poll() is None and time.time() - started < minutes * 60 + 30:
            sample = rss_sample(load.ts)
            if sample and run.proc.poll() is None:
                samples.append({"t": round(time.time() - started, 2), **sample})
            time.sleep(every)
    finally:
        run.stop()
    records = run.wait()
    s = records.summary()
    steady = [x for x in samples if x["t"] >= warmup]
    front, worker = growth([x["frontend_mib"] for x in steady]), growth([x["worker_mib"] for x in steady])
    pids = {tuple(x["worker_pids"]) for x in samples}
    checks = {
        "no failed request": s["requests"] > 0 and s["ok"] == s["requests"],
        f"frontend RSS growth < {GROWTH_TARGET:.0%}": front is not None and front < GROWTH_TARGET,
        f"worker RSS growth < {GROWTH_TARGET:.0%}": worker is not None and worker < GROWTH_TARGET,
        "the same worker throughout": len(pids) == 1,
    }
    return {"minutes": minutes, "users": users, "target_req_per_s": round(total_rate, 2), "summary": s,
            "warmup_s": warmup, "samples_after_warmup": len(steady),
            "samples": samples, "frontend_growth": front, "worker_growth": worker,
            "checks": checks, "passed": all(checks.values())}


# ---- phase: hostile requests
def hostile_cases(marker, settings):
    """(name, request keyword arguments, expected status, words expected in the message or None)."""
    over = settings["max_request_size"] + 4096
    nested = "[" * 10000 + "]" * 10000
    deep_object = '{"a":' * 10000 + "1" + "}" * 10000
    plain, js, form = "text/plain", "application/json", "application/x-www-form-urlencoded"
    return [
        (f"body over max_request_size ({over} bytes)", dict(data=b"x" * over, content_type=plain), 413, None),
        ("text over max_chars", dict(data=("y" * (settings["max_chars"] + 1)).encode(), content_type=plain),
         413, f"the limit is {settings['max_chars']}"),
        ("JSON array nested 10,000 deep", dict(data=nested.encode(), content_type=js), 400, "nested too deeply"),
        ("JSON object nested 10,000 deep", dict(data=deep_object.encode(), content_type=js), 400, "nested too deeply"),
        ("JSON list instead of an object", dict(data=json.dumps([f"play jazz {marker}"]).encode(), content_type=js),
         400, "got array"),
        ("JSON list of 5,000 texts", dict(data=json.dumps(["hi"] * 5000).encode(), content_type=js), 400, "got array"),
        ("'text' a list of 5,000 texts", dict(data=json.dumps({"text": ["hi"] * 5000}).encode(), content_type=js),
         400, "'text' must be a string, got array"),
        ("NUL in text/plain", dict(data=f"rain\x00snow {marker}".encode(), content_type=plain), 400,
         "control character (U+0000"),
        ("escape character in JSON text", dict(data=json.dumps({"text": f"rain\x1b[2J {marker}"}).encode(),
                                               content_type=js), 400, "control character (U+001B"),
        ("invalid UTF-8", dict(data=b"caf\xe9 " + marker.encode(), content_type=plain), 400, "not valid UTF-8"),
        ("malformed JSON", dict(data=f'{{"text": "{marker}"'.encode(), content_type=js), 400, "not valid JSON"),
        ("empty body", dict(data=b"", content_type=plain), 400, "'text' is empty"),
        ("unknown Content-Type", dict(data=marker.encode(), content_type="application/xml"), 415,
         "unsupported Content-Type 'application/xml'"),
        ("curl -d without Content-Type (form-encoded)", dict(data=f"bake a pizza {marker}".encode(), content_type=form),
         400, "no text found"),
        ("unknown field with a 60,000-character name", dict(data=json.dumps({"k" * 60000: 1}).encode(),
                                                             content_type=js), 400, "(60000 characters)"),
        ("top_k out of range", dict(data=json.dumps({"text": f"soup {marker}", "top_k": 10**6}).encode(),
                                    content_type=js), 400, "'top_k' must be between"),
    ]


def _message(response):
    try:
        body = response.json()
    except ValueError:
        return None
    return (body.get("error") or body.get("message")) if isinstance(body, dict) else None


def hostile(ts, model, settings, rounds=2):
    marker = "zq" + secrets.token_hex(8)
    cases = hostile_cases(marker, settings)
    goods = [(f"good text/plain {i}", dict(data=f"{t} {marker}".encode(), content_type="text/plain"), 200, None)
             for i, t in enumerate(GOOD_TEXTS)]
    goods += [(f"good JSON {i}", dict(data=json.dumps({"text": f"{t} {marker}"}).encode(),
                                      content_type="application/json"), 200, None) for i, t in enumerate(GOOD_TEXTS)]
    # Bad and good requests interleaved and concurrent, so that they share batches.
    items = [x for pair in zip(cases, goods * len(cases)) for x in pair] * rounds
    before = sorted(p.pid for p in ts.workers())
    print(f"== hostile: {len(cases)} kinds of bad request and {len(goods)} good ones, {len(items)} requests", flush=True)

    def send(item):
        import requests
        try:
            r = ts.predict(model, **item[1])
        except requests.RequestException as e:   # e.g. the frontend closing the connection: no answer at all
            return 0, f"no HTTP answer: {e}", 0
        return r.status_code, _message(r), len(r.content)

    # No more at once than the job queue holds: a refusal for a full queue is the overload phase's business.
    with ThreadPoolExecutor(max_workers=max(1, min(8, settings["job_queue_size"]))) as pool:
        answers = list(pool.map(send, items))
    results, seen = [], set()
    for (name, _, status, words), (got, message, size) in zip(items, answers):
        ok = got == status and (words is None or (message is not None and words in message))
        if name.startswith("good"):
            results.append({"name": name, "expected": 200, "status": got, "ok": got == 200})
        elif name not in seen or not ok:
            seen.add(name)
            results.append({"name": name, "expected": status, "status": got, "message": message,
                            "body_bytes": size, "expected_words": words, "ok": ok})
    after_ok = ts.predict(model, GOOD_TEXTS[1].encode()).status_code == 200
    after = sorted(p.pid for p in ts.workers())
    registration = []
    for path in ("/models?url=http://127.0.0.1:9/x.mar", "/workflows?url=http://127.0.0.1:9/x.war",
                 f"/models?url=file://{ROOT}/model_store/x.mar"):
        r = ts.manage("POST", path)
        registration.append({"request": f"POST {path}", "status": r.status_code, "message": _message(r)})
    leaks = scan_logs(ts, marker)
    bad = [r for r in results if not r["name"].startswith("good")]
    good = [r for r in results if r["name"].startswith("good")]
    checks = {
        "every hostile request answered with its 4xx and message": all(r["ok"] for r in bad),
        "good requests sent alongside all answered 200": all(r["ok"] for r in good),
        "the worker lived (same process) and answers": before == after and after_ok,
        "registration by URL refused (4xx)": all(400 <= x["status"] < 500 for x in registration),
        "request text never in the logs": not leaks,
    }
    return {"marker": marker, "cases": bad, "good_requests": len(good), "good_ok": sum(r["ok"] for r in good),
            "worker_pids_before": before, "worker_pids_after": after, "registration": registration,
            "logs_with_request_text": leaks, "checks": checks, "passed": all(checks.values())}


def scan_logs(ts, marker, settle=2.0):
    """Files under TorchServe's log folder (and its console log) that contain `marker`."""
    time.sleep(settle)   # log4j appenders flush asynchronously
    paths = [p for p in ts.log_dir.rglob("*") if p.is_file()] + [ts.work / "launcher.log"]
    needle = marker.encode()
    return [str(p) for p in paths if p.is_file() and needle in p.read_bytes()]


# ---- driver
def copy_logs(ts, dest, limit=20 * 2**20):
    """TorchServe's logs (the last `limit` bytes of each) into dest."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in [p for p in ts.log_dir.glob("*.log")] + [ts.work / "launcher.log"]:
        if path.is_file():
            with open(path, "rb") as src:
                src.seek(max(0, path.stat().st_size - limit))
                (dest / path.name).write_bytes(src.read())


def serve(work, store, name):
    ts = TorchServe(work, store, {name: f"{name}.mar"})
    ts.start()
    try:
        ready = ts.wait_ready(name)
    except BaseException:
        ts.stop()
        raise
    print(f"== TorchServe ready on {ts.inference} after {ready:.0f} s", flush=True)
    return ts


def run_phases(args, out, work, store):
    results, labels = {}, args.checkpoint / "labels.json"
    if set(args.phases) & {"hostile", "overload", "kill"}:
        ts = serve(work / "server-1", store, NAME)
        load = Load(ts, NAME, args.data, labels, out)
        try:
            settings = results["settings"] = serving_settings(args.model_config, ts)
            if "hostile" in args.phases:
                results["hostile"] = hostile(ts, NAME, settings)
            if "overload" in args.phases:
                results["overload"] = overload(load, args.overload_users, args.normal_users, args.duration, settings,
                                               args.overload_factor)
            if "kill" in args.phases:
                results["kill"] = worker_kill(load, args.normal_users, args.kill_after, settings)
        finally:
            load.close()
            ts.stop()
            copy_logs(ts, out / "torchserve-logs" / "server-1")
    if "soak" in args.phases and args.soak_minutes > 0:
        ts = serve(work / "server-2", store, NAME)   # a fresh server: memory from a known start
        load = Load(ts, NAME, args.data, labels, out)
        try:
            results.setdefault("settings", serving_settings(args.model_config, ts))
            capacity = results.get("overload", {}).get("runs", {}).get("baseline", {}).get("ok_per_s")
            if not capacity:
                capacity = load.run("soak-baseline", args.normal_users, min(30.0, args.duration)).summary()["ok_per_s"]
            warmup = args.soak_warmup if args.soak_warmup is not None else min(120.0, args.soak_minutes * 6)
            results["soak"] = soak(load, args.soak_minutes, args.normal_users, capacity / 2, args.sample_every,
                                   warmup)
            results["soak"].update(capacity_req_per_s=capacity, fresh_server=True)
        finally:
            load.close()
            ts.stop()
            copy_logs(ts, out / "torchserve-logs" / "server-2")
    return results


def main(argv=None):
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, through the finally blocks that stop locust and TorchServe.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from benchmarks.reliability_report import plots, write_report

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = (args.out or ROOT / "results" / f"reliability-{stamp}").resolve()
    if out.exists() and any(out.iterdir()):
        print(f"reliability: --out {out} exists and is not empty", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    command = os.environ.get("RELIABILITY_COMMAND") or " ".join([sys.argv[0], *(argv or sys.argv[1:])])
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "command": command.strip(),
            "note": args.note, "machine": machine(), "versions": versions(), "commit": git_commit(),
            "checkpoint": str(args.checkpoint.resolve()), "model_config": str(args.model_config.resolve()),
            "data": str(args.data.resolve()), "loadavg_before": _loadavg(),
            "parameters": {"overload_users": args.overload_users, "overload_factor": args.overload_factor,
                           "normal_users": args.normal_users,
                           "duration_s": args.duration, "kill_after_s": args.kill_after,
                           "soak_minutes": args.soak_minutes, "sample_every_s": args.sample_every,
                           "soak_warmup_s": args.soak_warmup,
                           "phases": args.phases}}
    work = Path(tempfile.mkdtemp(prefix="reliability-"))
    try:
        store = work / "model_store"
        print(f"== archiving {args.checkpoint} as {NAME}.mar with {args.model_config}", flush=True)
        archive(args.checkpoint, NAME, store, args.model_config)
        results = run_phases(args, out, work, store)
    except TorchServeError as e:
        print(f"reliability: {e}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = {**meta, "loadavg_after": _loadavg(), **results}
    results["passed"] = all(results[p]["passed"] for p in PHASES if p in results)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    written = plots(results, out)
    report = write_report(results, out, args.record or None)
    print(f"== {out / 'results.json'}; plots: {', '.join(p.name for p in written)}"
          + (f"; report: {args.record}" if args.record else ""))
    print(report.split("\n## ", 1)[0].strip().splitlines()[-1])
    return 0 if results["passed"] else 1


def _loadavg():
    with open("/proc/loadavg", encoding="utf-8") as f:
        return " ".join(f.read().split()[:3])


if __name__ == "__main__":
    sys.exit(main())
