"""Locust users for benchmarks/reliability: the project's load-test user (loadtest/locustfile.py, same
sentences, same answer checks, same loopback guard) plus a record of every request for the analysis.

Environment, besides loadtest/locustfile.py's TS_MODEL, TS_KEY_FILE, TS_DATA and TS_LABELS:
  TS_RECORD   CSV written when the run stops: start (epoch s), latency_ms, status, json_ok, error_type, one line per
              request. status 0: no HTTP answer (connection error, or locust's 60 s network timeout);
              -1: sent before the run began to stop and still unanswered --stop-timeout (10 s) later
              (a hung request). error_type: the JSON error body's "type" (TorchServe's) or "error_type" (the
              handler's), '' when none. json_ok: 1 when the
              answer is a 200, or an error whose body is a JSON object with a message.
  TS_RATE     requests per second per user (locust's constant_throughput); 0 or unset: back to back.
  TS_STARTED  file created once every user has been spawned.
  TS_STOP     when this file appears the run stops early, as if --run-time had been reached.
"""
import json
import os
import time
from pathlib import Path

import gevent
from locust import constant, constant_throughput, events

import loadtest.locustfile as base  # registers its init/test_stop listeners; its user class stays out of this module

RATE = float(os.environ.get("TS_RATE") or 0)
RECORDS = []   # (start, latency_ms, status, json_ok, error_type)
STOPPING = []  # when the run began to stop


def _error_body(content):
    """-> (a JSON object with a message?, its error type: TorchServe's "type" or the handler's "error_type")."""
    try:
        body = json.loads(content or b"")
    except ValueError:
        return False, ""
    if not isinstance(body, dict):
        return False, ""
    kind = str(body.get("type") or body.get("error_type") or "")
    return bool(body.get("message") or body.get("error")), "".join(c for c in kind if c.isalnum() or c == "_")[:60]


@events.request.add_listener
def _record(response_time, response=None, start_time=None, **_):
    status = getattr(response, "status_code", 0) or 0
    message, kind = _error_body(getattr(response, "content", b"")) if status not in (0, 200) else (False, "")
    ok = status == 200 or (status > 0 and message)
    RECORDS.append((start_time or time.time() - response_time / 1000, response_time, status, int(ok), kind))


@events.spawning_complete.add_listener
def _mark_started(**_):
    if os.environ.get("TS_STARTED"):
        Path(os.environ["TS_STARTED"]).touch()


@events.test_start.add_listener
def _watch_stop_file(environment, **_):
    stop = os.environ.get("TS_STOP")
    if not stop:
        return

    def watch():
        while not Path(stop).exists():
            gevent.sleep(0.2)
        environment.runner.quit()

    gevent.spawn(watch)


@events.test_stopping.add_listener
def _note_stopping(**_):
    STOPPING.append(time.time())


@events.test_stop.add_listener
def _write_records(**_):
    path = os.environ.get("TS_RECORD")
    if path:
        with open(path, "w", encoding="utf-8") as f:
            f.write("start,latency_ms,status,json_ok,error_type\n")
            f.writelines(f"{s:.3f},{ms:.1f},{code},{ok},{kind}\n" for s, ms, code, ok, kind in sorted(RECORDS))


class ReliabilityUser(base.TextClassifierUser):
    wait_time = constant_throughput(RATE) if RATE > 0 else constant(0)

    def _post(self, *args, **kwargs):
        started, answered = time.time(), False
        try:
            super()._post(*args, **kwargs)
            answered = True
        finally:
            # Killed unanswered. Sent before the run began to stop: locust waited --stop-timeout for it, so it
            # hung. Sent after: a user woke from its wait as locust stopped it; nothing to count.
            if not answered and not (STOPPING and started >= STOPPING[0]):
                RECORDS.append((started, (time.time() - started) * 1000, -1, 0, ""))
