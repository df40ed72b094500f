"""RELIABILITY.md and the plots of one `python -m benchmarks.reliability` run (results.json).

Usage: python -m benchmarks.reliability.report OUT/results.json [--record RELIABILITY.md]
(reliability.py calls plots() and write_report() itself; this re-renders a stored run).
"""
import argparse
import json
import sys
from pathlib import Path


def _mark(ok):
    return "PASS" if ok else "FAIL"


def _f(value, digits=1, unit=""):
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def _pct(value):
    return "-" if value is None else f"{value:+.1%}"


def _checks(checks):
    return [f"- {_mark(ok)}: {name}" for name, ok in checks.items()]


def _statuses(by_status):
    names = {"-1": "unanswered at stop", "0": "no HTTP answer"}
    return ", ".join(f"{names.get(k, k)}: {v}" for k, v in by_status.items()) or "none"


def overload_section(o, st):
    lines = ["## 1. Overload", "",
             f"Locust users on the model's {st['job_queue_size']}-deep job queue (batchSize {st['batch_size']}, "
             f"maxBatchDelay {st['max_batch_delay_ms']} ms, responseTimeout {st['response_timeout_s']} s). "
             f"baseline and recovery: back to back; overload: paced to {o['factor']:g} x the baseline's answers/s, "
             f"{o['offered_req_per_s']:g} req/s offered in all; storm: the same users back to back, each refused "
             "client retrying at once. Refused: a 503/429 whose JSON body is TorchServe's ServiceUnavailableException "
             "(full queue, or no worker: TorchServe answers both alike) or the handler's overload; any other "
             "error counts as other.", "",
             "| run | users | requests | 200/s | refused | other | p50 200 ms | p99 200 ms | max 200 ms "
             "| max refused ms | statuses |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, r in o["runs"].items():
        lines.append(f"| {name} | {r['users']} | {r['requests']} | {_f(r['ok_per_s'])} | {r['refused']} | "
                     f"{r['other']} | {_f(r['p50_ok_ms'], 0)} | {_f(r['p99_ok_ms'], 0)} | {_f(r['max_ok_ms'], 0)} | "
                     f"{_f(r['max_refused_ms'], 0)} | {_statuses(r['by_status'])} |")
    types = {name: r["errors_by_type"] for name, r in o["runs"].items() if r.get("errors_by_type")}
    if types:
        lines += ["", "Errors by status and body type: " + "; ".join(
            f"{name}: " + ", ".join(f"{k} {v}" for k, v in t.items()) for name, t in types.items())]
    lines += ["", f"Recovery (after the storm): {_f(o['recovery_ok_per_s_first_5s'])} answers/s in its first 5 s, "
                  f"{_f(o['recovery_ratio'], 2)} x the baseline over the whole run.", "", *_checks(o["checks"]), "",
              "![overload](overload.png)", ""]
    return lines


def kill_section(k, st):
    first = ", ".join(f"{x:.0f}" for x in k["first_answers_after_recovery_ms"]) or "-"
    return ["## 2. Worker SIGKILL under load", "",
            f"{k['users']} users; worker pid {k['killed_pid']} killed with SIGKILL {_f(k['kill_after_s'])} s into the "
            f"run; new worker pid(s) {k['new_pids']} ({', '.join(k['worker_states'])}).", "",
            f"- Time to recover: a prediction sent right after the kill answered 200 after **{_f(k['recovery_s'], 2)} s** "
            f"({k['probes']} probe(s)); the load test's first 200 to a request sent after the kill came "
            f"{_f(k['load_recovery_s'], 2)} s after it. The replacement worker was READY (all "
            f"{len(k['new_pids'])} workers up again) {_f(k.get('replacement_ready_s'), 1)} s after the kill.",
            f"- Requests lost: **{k['failed']}** ({_statuses(k['failed_by_status'])}); {k['failed_in_flight']} of them "
            f"\"Worker died.\" answers to the batch in flight (batchSize {st['batch_size']}), "
            f"{k['failed_sent_before_kill']} sent before the kill.",
            f"- Before the kill: {k['before']['requests']} requests, p50 {_f(k['steady_p50_before_ms'], 0)} ms; after: "
            f"{k['after']['requests']} requests, {k['after']['ok']} answered 200; max latency of the run "
            f"{_f(k['max_ms'], 0)} ms (requests queued while the worker restarted wait for it).",
            f"- First answers of the new worker (ms, requests sent after it was back): {first}.", "",
            *_checks(k["checks"]), "", "![kill](kill.png)", ""]


def soak_section(s):
    r = s["summary"]
    first, last = (s["samples"][0], s["samples"][-1]) if s["samples"] else ({}, {})
    short = "" if s["minutes"] >= 30 else f" **Short run ({s['minutes']:g} min), not the 30-minute target.**"
    return ["## 3. Soak", "",
            f"{s['users']} users paced to {s['target_req_per_s']} req/s in all (half the baseline's "
            f"{_f(s['capacity_req_per_s'])} answers/s) for {s['minutes']:g} min"
            f"{' on a fresh TorchServe' if s.get('fresh_server') else ''}.{short}", "",
            f"- Requests: {r['requests']}, answered 200: {r['ok']} ({_statuses(r['by_status'])}); "
            f"{_f(r['ok_per_s'])} answers/s, p50 {_f(r['p50_ok_ms'], 0)} ms, p99 {_f(r['p99_ok_ms'], 0)} ms.",
            f"- RSS, {len(s['samples'])} samples: frontend (Java) {_f(first.get('frontend_mib'), 0)} -> "
            f"{_f(last.get('frontend_mib'), 0)} MiB, growth {_pct(s['frontend_growth'])}; worker (Python) "
            f"{_f(first.get('worker_mib'), 0)} -> {_f(last.get('worker_mib'), 0)} MiB, growth "
            f"{_pct(s['worker_growth'])}. Growth: median of the last 10% of the samples over the first 10%, "
            f"leaving out the first {s['warmup_s']:g} s at load (the JVM sizing its heap, allocator pools; "
            f"{s['samples_after_warmup']} samples left).", "",
            *_checks(s["checks"]), "", "![soak memory](soak_memory.png)", ""]


def hostile_section(h):
    lines = ["## 4. Hostile requests", "",
             "Sent concurrently and interleaved with good requests (so they share batches); the good ones carried "
             f"a random marker (`{h['marker']}`) as text, and so did most bad ones.", "",
             "| request | expected | got | message |", "|---|---:|---:|---|"]
    for c in h["cases"]:
        msg = c["message"] if c["message"] is not None else f"(no JSON body, {c['body_bytes']} bytes)"
        lines.append(f"| {c['name']} | {c['expected']} | {c['status']} | {msg[:120].replace('|', '/')} |")
    lines += ["", f"- Good requests alongside: {h['good_ok']}/{h['good_requests']} answered 200.",
              f"- Worker pids before {h['worker_pids_before']}, after {h['worker_pids_after']}.",
              "- Registration with the project's config: " + "; ".join(
                  f"`{x['request']}` -> {x['status']} ({x['message']})" for x in h["registration"]) + ".",
              f"- Log files containing the marker: {h['logs_with_request_text'] or 'none'}.", "",
              *_checks(h["checks"]), ""]
    return lines


def report(results, out):
    m, v, p = results["machine"], results["versions"], results["parameters"]
    st = results.get("settings", {})
    phases = [("overload", "1. Overload"), ("kill", "2. Worker SIGKILL"), ("soak", "3. Soak"),
              ("hostile", "4. Hostile requests")]
    ran = [(key, title) for key, title in phases if key in results]
    verdicts = ", ".join(f"{title} {_mark(results[key]['passed'])}" for key, title in ran)
    lines = ["# Reliability", "",
             f"Written by `benchmarks/reliability.sh` on {results['date']}. Overall: **{_mark(results['passed'])}** "
             f"({verdicts}).", "",
             *([f"**{results['note']}**", ""] if results.get("note") else []),
             f"- Command: `{results['command']}`",
             f"- Machine: {m['nproc']} cores, {m['cpu']}, {m['ram_gib']} GiB RAM, {m['os']}; load average "
             f"{results['loadavg_before']} before, {results['loadavg_after']} after",
             f"- Software: Python {m['python']}, torch {v['torch']}, transformers {v['transformers']}, TorchServe "
             f"{v['torchserve']}, locust {v['locust']}; commit {results['commit']}",
             f"- Checkpoint `{results['checkpoint']}`, archived afresh with `{results['model_config']}`; "
             f"config.properties as shipped (ports and model store changed); sentences from `{results['data']}`",
             f"- Serving settings: {st.get('workers')} worker(s), batchSize {st.get('batch_size')}, maxBatchDelay "
             f"{st.get('max_batch_delay_ms')} ms, job_queue_size {st.get('job_queue_size')}, responseTimeout "
             f"{st.get('response_timeout_s')} s, max_request_size {st.get('max_request_size')} bytes",
             f"- Parameters: overload {p['overload_users']} users at {p.get('overload_factor', 4):g} x the baseline, "
             f"normal load {p['normal_users']} users, "
             f"{p['duration_s']:g} s per overload run, SIGKILL after {p['kill_after_s']:g} s, soak "
             f"{p['soak_minutes']:g} min sampled every {p['sample_every_s']:g} s",
             f"- Files: `{out}` (results.json, plots, per-run locust records in */requests.csv, TorchServe logs)", ""]
    if "overload" in results:
        lines += overload_section(results["overload"], st)
    if "kill" in results:
        lines += kill_section(results["kill"], st)
    if "soak" in results:
        lines += soak_section(results["soak"])
    if "hostile" in results:
        lines += hostile_section(results["hostile"])
    return "\n".join(lines)


def write_report(results, out, record=None):
    text = report(results, out)
    (Path(out) / "RELIABILITY.md").write_text(text, encoding="utf-8")
    if record:   # the plots stay in OUT: point the record's image links there
        import os
        rel = Path(os.path.relpath(Path(out).resolve(), Path(record).resolve().parent)).as_posix()
        for name in ("overload.png", "kill.png", "soak_memory.png"):
            text = text.replace(f"]({name})", f"]({rel}/{name})")
        Path(record).write_text(text, encoding="utf-8")
    return text


# ---- plots
def plots(results, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out, written = Path(out), []
    limit_ms = results.get("settings", {}).get("response_timeout_s", 30) * 1000
    if "overload" in results:
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
        for i, (name, series) in enumerate(results["overload"]["timeline"].items()):
            if not series:
                continue
            t = [x[0] for x in series]
            top.plot(t, [x[1] for x in series], color="C0", label="200 /s" if i == 0 else None)
            top.plot(t, [x[2] for x in series], color="C1", label="refused (full queue, overload) /s" if i == 0 else None)
            top.plot(t, [x[3] for x in series], color="C3", label="other /s" if i == 0 else None)
            bottom.plot(t, [x[4] for x in series], color="C2", label="max latency in the second" if i == 0 else None)
            top.annotate(f"{name} ({results['overload']['runs'][name]['users']} users)", (t[0], 0),
                         xytext=(2, 2), textcoords="offset points", fontsize=8)
        bottom.axhline(limit_ms, ls="--", color="gray", label="responseTimeout")
        top.set(ylabel="answers per second", title="Overload: baseline, overload (paced), storm, recovery",
                ylim=(0, None))
        bottom.set(xlabel="seconds", ylabel="ms", yscale="log")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        written.append(_save(fig, out / "overload.png"))
    if "kill" in results:
        k = results["kill"]
        fig, ax = plt.subplots(figsize=(8, 4))
        series = k["timeline"]
        t = [x[0] for x in series]
        ok = [x[1] for x in series]
        ax.bar(t, ok, width=0.5, color="C0", label="200 per 0.5 s")
        ax.bar(t, [x[2] + x[3] for x in series], width=0.5, bottom=ok, color="C3", label="failed per 0.5 s")
        ax.axvline(0, color="k", ls="--", label="SIGKILL")
        if k["recovery_s"] is not None:
            ax.axvline(k["recovery_s"], color="C2", ls="--", label=f"answers again ({k['recovery_s']:.1f} s)")
        ax.set(xlabel="seconds after the SIGKILL (by completion time)", ylabel="answers",
               title=f"Worker SIGKILL at {k['users']} users: {k['failed']} requests lost")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        written.append(_save(fig, out / "kill.png"))
    if "soak" in results and results["soak"]["samples"]:
        s = results["soak"]
        fig, ax = plt.subplots(figsize=(8, 4))
        t = [x["t"] / 60 for x in s["samples"]]
        ax.plot(t, [x["frontend_mib"] for x in s["samples"]], label=f"frontend (Java), {_pct(s['frontend_growth'])}")
        ax.plot(t, [x["worker_mib"] for x in s["samples"]], label=f"worker (Python), {_pct(s['worker_growth'])}")
        ax.axvspan(0, s["warmup_s"] / 60, color="gray", alpha=0.15, label="warm-up, left out of the growth")
        ax.set(xlabel="minutes", ylabel="RSS MiB", ylim=(0, None),
               title=f"Soak at {s['target_req_per_s']} req/s: {s['summary']['requests']} requests, "
                     f"{s['summary']['requests'] - s['summary']['ok']} failed")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        written.append(_save(fig, out / "soak_memory.png"))
    return written


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("results", type=Path)
    p.add_argument("--record", default="")
    args = p.parse_args(argv)
    results = json.loads(args.results.read_text(encoding="utf-8"))
    plots(results, args.results.parent)
    print(write_report(results, args.results.parent, args.record or None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
