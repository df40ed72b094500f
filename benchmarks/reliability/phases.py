"""The four phases (hostile, overload, kill, soak): each runs against a served model and returns its
numbers, its checks and whether they all passed."""
import json
import os
import secrets
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.reliability.logs import scan_logs
from serving.torchserve import TorchServeError
from textclf.config import read_model_config

ROOT = Path(__file__).resolve().parents[2]

PHASES = ("hostile", "overload", "kill", "soak")
RECOVERY_TARGET_S = 30
GROWTH_TARGET = 0.05
THROUGHPUT_BACK = 0.8      # recovery throughput must reach this share of the baseline
WORKER_DIED = (500, 507)
GOOD_TEXTS = ["play some jazz on the radio", "will it rain in paris tomorrow", "book a table for two tonight"]


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
        "every answer 200 or a refusal (a 503/429 of a full queue or overload)": all(x["other"] == 0 for x in s.values()),
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


