"""python -m benchmarks.accuracy [--only NAME ...] [--list]: run the experiments of experiments.json in
turn, skipping those already done (resumable), and write results/accuracy.{json,md}.

Each experiment trains into runs/<name>/ (or exports from another experiment's checkpoint-best),
then evaluates checkpoint-best on the test split with python -m train.evaluate on CPU.
"""
import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import os
    return f"{os.cpu_count()} cores, {cpu}"


def run_one(exp, experiments):
    run_dir = ROOT / "runs" / exp["name"]
    ckpt = run_dir / "checkpoint-best"
    started = time.time()
    if "export" in exp:
        base = ROOT / "runs" / exp["base"] / "checkpoint-best"
        cmd = [sys.executable, "-m", "train.export", "--checkpoint", str(base), "--out", str(ckpt), *exp["export"]]
    else:
        cmd = [sys.executable, "-m", "train", "--data", exp["data"], "--out", str(run_dir), *exp["train"]]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    wall = time.time() - started
    data = exp.get("data") or next(e for e in experiments if e["name"] == exp["base"])["data"]
    subprocess.run([sys.executable, "-m", "train.evaluate", "--checkpoint", str(ckpt), "--data", data,
                    "--out", str(run_dir)], cwd=ROOT, check=True)
    ev = json.loads((run_dir / "eval-checkpoint-best-test.json").read_text())
    summary_file = run_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    size = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
    return {"name": exp["name"], "data": data, "command": " ".join(cmd[1:]),
            "test_accuracy": ev["accuracy"], "macro_f1": ev["macro_f1"],
            "epochs": summary.get("epochs"), "train_seconds": summary.get("train_seconds", round(wall, 1)),
            "ms_per_example_batch1": ev["ms_per_example_batch1"],
            "examples_per_second_batch32": ev["examples_per_second_batch32"],
            "size_mb": round(size / 1e6, 1), "reference": exp.get("reference")}


def write_tables(results):
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "accuracy.json").write_text(json.dumps({"machine": machine(), "results": results}, indent=2) + "\n")
    lines = [f"Machine: {machine()}. Command: `python -m benchmarks.accuracy` (experiments.json).", "",
             "| experiment | test acc | macro-F1 | epochs | train s | ms/ex b1 | ex/s b32 | MB | reference |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in results:
        ref = r.get("reference") or {}
        lines.append(f"| {r['name']} | {r['test_accuracy']:.4f} | {r['macro_f1']:.4f} | {r['epochs'] or '-'} | "
                     f"{r['train_seconds'] or '-'} | {r['ms_per_example_batch1']:.1f} | "
                     f"{r['examples_per_second_batch32']:.0f} | {r['size_mb']} | "
                     f"{ref.get('value', '-')} {ref.get('what', '')} |")
    (RESULTS / "accuracy.md").write_text("\n".join(lines) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", help="experiment names to run (default: all)")
    p.add_argument("--list", action="store_true")
    p.add_argument("--redo", action="store_true", help="run again even when a result exists")
    args = p.parse_args(argv)
    experiments = json.loads((ROOT / "benchmarks" / "experiments.json").read_text())["experiments"]
    if args.list:
        for e in experiments:
            print(e["name"])
        return 0
    store = RESULTS / "accuracy.json"
    results = json.loads(store.read_text())["results"] if store.is_file() else []
    for exp in experiments:
        if args.only and exp["name"] not in args.only:
            continue
        if any(r["name"] == exp["name"] for r in results) and not args.redo:
            print(f"= {exp['name']}: done already", flush=True)
            continue
        result = run_one(exp, experiments)
        results = [r for r in results if r["name"] != exp["name"]] + [result]
        write_tables(results)
        print(f"= {exp['name']}: test accuracy {result['test_accuracy']:.4f}", flush=True)
    write_tables(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
