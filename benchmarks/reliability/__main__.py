"""python -m benchmarks.reliability CKPT [...]: the command line, and the phases in order (see __init__.py)."""
import argparse
import json
import os
import re
import shutil
import signal
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.common import git_commit, machine, versions
from benchmarks.reliability.load import Load
from benchmarks.reliability.logs import copy_logs
from benchmarks.reliability.phases import PHASES, hostile, overload, serving_settings, soak, worker_kill
from serving.torchserve import TorchServe, TorchServeError, archive

ROOT = Path(__file__).resolve().parents[2]
NAME = "reliability"


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
    from benchmarks.reliability.report import plots, write_report

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
