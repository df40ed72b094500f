"""Serving benchmark: how much of the in-process limit TorchServe delivers, at several user levels.

Usage: python -m benchmarks.serving CKPT [--duration 30s] [--levels "1 8 32 64"] [--out results/serving-<timestamp>]
           [--model-config handlers/model-config.yaml] [--data data/snips/test.txt]
           [--inprocess-seconds SECONDS] [--record BENCHMARKS.md] [--note TEXT] [--optimized DIR]

--optimized DIR: serve CKPT (fp32) and then DIR (python -m train.optimize's --out) one after the other, each as
below, into OUT/fp32 and OUT/optimized; benchmarks/serving_compare.py puts them side by side (test accuracy of
both too) and prints a last line `optimized/fp32 served ratio R at 32 users`.

Steps: (a) benchmarks/inprocess.py: batch-1 latency and batched examples/s of the checkpoint, same sentences,
torch threads = cores; (b) archive.sh CKPT bench with --model-config; (c) TorchServe through the harness
(serving/torchserve.py: config.properties on free 127.0.0.1 ports, a private temp dir, PYTHONPATH unset);
(d) loadtest/run.sh at each user level for --duration; (e) TorchServe stopped (also on error or Ctrl-C);
(f)-(h) table, ratio, plots and results.json in --out (benchmarks/serving_report.py), and a section appended
to --record (BENCHMARKS.md at the repo root; '' for none). Writes OUT/inprocess.json, OUT/users-N/,
OUT/metrics.txt (TorchServe's metrics over the whole run) and OUT/torchserve-logs/.
Nothing else should run on the machine meanwhile: the load generator shares its cores.
"""
import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from serving.torchserve import BIN, ROOT, TorchServe, TorchServeError, archive

NAME = "bench"
READY_TIMEOUT = 300   # seconds for TorchServe to load the model; generous for a busy 2-core machine
MAX_USERS = 512


class BenchmarkError(Exception):
    pass


def say(text):
    print(text, flush=True)   # between the outputs of the subprocesses, in order


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.serving", description=__doc__.split("\n")[0],
                                epilog="See the module docstring (benchmarks/serving.py) for the steps.")
    p.add_argument("checkpoint")
    p.add_argument("--duration", default="30s", help="per user level: a number with s, m or h (30s, 2m)")
    p.add_argument("--levels", nargs="+", default=["1 8 32 64"], help='user counts, "1 8 32 64" or 1 8 32 64')
    p.add_argument("--out", help="results folder, new or empty (default: results/serving-<timestamp>)")
    p.add_argument("--model-config", default=str(ROOT / "handlers" / "model-config.yaml"))
    p.add_argument("--data", default=str(ROOT / "data" / "snips" / "test.txt"))
    p.add_argument("--inprocess-seconds", help="length of each in-process measurement (default: --duration)")
    p.add_argument("--record", default=str(ROOT / "BENCHMARKS.md"), help="markdown file to append to ('' for none)")
    p.add_argument("--note", default="")
    p.add_argument("--optimized", help="also serve this variant of CKPT and compare (OUT/fp32, OUT/optimized)")
    return p.parse_args(argv)


def seconds(duration):
    m = re.fullmatch(r"([0-9]+)([smh]?)", duration)
    if not m:
        raise BenchmarkError(f"--duration '{duration}': expected a number with s, m or h (30s, 2m)")
    return int(m.group(1)) * {"m": 60, "h": 3600}.get(m.group(2), 1)


def checked(args):
    """The arguments made absolute and validated (BenchmarkError says which one is wrong)."""
    ckpt = Path(os.path.abspath(args.checkpoint))
    if not ckpt.is_dir():
        raise BenchmarkError(f"checkpoint folder '{args.checkpoint}' does not exist")
    if not (ckpt / "labels.json").is_file():
        raise BenchmarkError(f"{ckpt} has no labels.json: not a checkpoint folder?")
    model_config, data = Path(os.path.abspath(args.model_config)), Path(os.path.abspath(args.data))
    if not model_config.is_file():
        raise BenchmarkError(f"--model-config '{args.model_config}' not found")
    if not data.is_file():
        raise BenchmarkError(f"--data '{args.data}' not found")
    inprocess = args.inprocess_seconds or str(seconds(args.duration))
    if not re.fullmatch(r"[0-9]+([.][0-9]+)?", inprocess):
        raise BenchmarkError(f"--inprocess-seconds '{inprocess}': expected seconds")
    levels = [u for text in args.levels for u in text.replace(",", " ").split()]
    if not levels:
        raise BenchmarkError("--levels is empty")
    for u in levels:
        if not re.fullmatch(r"[1-9][0-9]*", u) or int(u) > MAX_USERS:
            raise BenchmarkError(f"--levels: '{u}' is not a user count from 1 to {MAX_USERS}")
    if not (BIN / "torchserve").is_file():
        raise BenchmarkError(f"{BIN / 'torchserve'} not found: run ./setup.sh first")
    optimized = None
    if args.optimized:
        optimized = Path(os.path.abspath(args.optimized))
        if not (optimized / "labels.json").is_file():
            raise BenchmarkError(f"--optimized '{args.optimized}' is not a checkpoint folder (no labels.json)")
    out = Path(os.path.abspath(args.out or ROOT / "results" / f"serving-{time.strftime('%Y%m%d-%H%M%S')}"))
    if out.is_dir() and any(out.iterdir()):
        raise BenchmarkError(f"--out '{out}' exists and is not empty")
    return argparse.Namespace(checkpoint=ckpt, duration=args.duration, levels=[int(u) for u in levels], out=out,
                              model_config=model_config, data=data, inprocess_seconds=inprocess,
                              record=os.path.abspath(args.record) if args.record else "", note=args.note,
                              optimized=optimized)


def command(argv):
    return shlex.join(["python", "-m", "benchmarks.serving", *argv])


def loadavg():
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run(a, command_line):
    """One checkpoint: in-process limit, then served at every level, then the report."""
    a.out.mkdir(parents=True, exist_ok=True)
    before = loadavg()
    say(f"== (a) in-process limit: {a.inprocess_seconds} s per measurement")
    subprocess.run([sys.executable, "-m", "benchmarks.inprocess", str(a.checkpoint), "--data", str(a.data),
                    "--model-config", str(a.model_config), "--seconds", a.inprocess_seconds,
                    "--out", str(a.out / "inprocess.json")], cwd=ROOT, check=True)
    # (b) the archive with the model-config.yaml under test; (c) TorchServe in a private folder of its own
    work = Path(tempfile.mkdtemp(prefix="serving-bench."))
    ts = TorchServe(work, work / "model_store", {NAME: f"{NAME}.mar"})
    try:
        (work / "model_store").mkdir()
        say(f"== (b) archiving {a.checkpoint} as {NAME}.mar with {a.model_config}")
        archive(a.checkpoint, NAME, work / "model_store", a.model_config)
        ts.start()
        say(f"== (c) starting TorchServe on {ts.inference} (work folder {work})")
        say(f"== TorchServe ready after {ts.wait_ready(NAME, timeout=READY_TIMEOUT):.0f} s")
        serve(ts, a)
        ts.stop()   # (e) before reporting, so the report does not compete with an idle server
        say("== (e) TorchServe stopped")
    finally:
        ts.stop()
        if ts.log_dir.is_dir():
            shutil.copytree(ts.log_dir, a.out / "torchserve-logs", dirs_exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    after = loadavg()
    # (f)-(h) table, ratio, plots, results.json, BENCHMARKS.md section
    from benchmarks.serving_report import main as report
    return report([str(a.out), "--levels", *map(str, a.levels), "--checkpoint", str(a.checkpoint),
                   "--model-config", str(a.model_config), "--data", str(a.data), "--duration", a.duration,
                   "--command", command_line, "--record", a.record, "--note", a.note,
                   "--loadavg-before", before, "--loadavg-after", after])


def serve(ts, a):
    """(d) one bounded locust run per user level, then TorchServe's own metrics over the whole run (queue time,
    the handler's textclf_* counters)."""
    import requests
    for u in a.levels:
        say(f"== (d) {u} users for {a.duration}")
        rc = subprocess.run([str(ROOT / "loadtest" / "run.sh"), "--users", str(u), "--spawn-rate", str(u),
                             "--duration", a.duration, "--host", ts.inference, "--model", NAME,
                             "--key-file", str(ts.key_file), "--data", str(a.data),
                             "--labels", str(a.checkpoint / "labels.json"), "--out", str(a.out / f"users-{u}")]
                            ).returncode
        if rc > 1:
            raise BenchmarkError(f"the load test at {u} users failed (exit {rc}); see {a.out}/users-{u}/locust.log")
    try:
        page = requests.get(ts.metrics + "/metrics", timeout=30)
        page.raise_for_status()
        (a.out / "metrics.txt").write_text(page.text, encoding="utf-8")
    except OSError as e:   # requests' errors are OSErrors
        print(f"benchmarks.serving: no metrics scraped ({e})", file=sys.stderr)


def compare(a, argv):
    """fp32 (CKPT) and the optimized variant, each served as run() does, then side by side."""
    for name, ckpt in (("fp32", a.checkpoint), ("optimized", a.optimized)):
        say(f"==== {name}: {ckpt}")
        one = argparse.Namespace(**{**vars(a), "checkpoint": ckpt, "out": a.out / name, "record": "",
                                    "optimized": None})
        status = run(one, command([str(ckpt), "--duration", a.duration, "--levels", " ".join(map(str, a.levels)),
                                   "--out", str(one.out), "--model-config", str(a.model_config), "--data", str(a.data),
                                   "--inprocess-seconds", a.inprocess_seconds, "--record", "", "--note", a.note]))
        if status:
            return status
    from benchmarks.serving_compare import main as side_by_side
    return side_by_side([str(a.out), "--fp32", str(a.checkpoint), "--optimized", str(a.optimized), "--data",
                         str(a.data), "--command", command(argv), "--record", a.record, "--note", a.note])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    try:
        a = checked(args)
        return compare(a, argv) if a.optimized else run(a, command(argv))
    except (BenchmarkError, TorchServeError) as e:
        print(f"benchmarks.serving: {e}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as e:
        print(f"benchmarks.serving: {shlex.join(map(str, e.cmd))} failed (exit {e.returncode})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)   # stop TorchServe on `kill` as on Ctrl-C
    sys.exit(main())
