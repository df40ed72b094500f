"""python -m benchmarks.accuracy [--only NAME ...] [--list]: run the experiments of experiments.json in
turn, skipping those already done (resumable), and write results/accuracy.{json,md}.

Each experiment trains into runs/<name>/ (or exports from another experiment's checkpoint-best),
then evaluates checkpoint-best on the test split with python -m train.evaluate on CPU.
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import machine_line

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
RUNS = ROOT / "runs"
EXPERIMENTS = ROOT / "benchmarks" / "experiments.json"


def stopped_run_summary(run_dir):
    """summary.json's fields rebuilt from metrics.jsonl, for a run stopped before it wrote summary.json."""
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if not epochs:
        raise SystemExit(f"{run_dir}/metrics.jsonl: no finished epoch to evaluate")
    return {"epochs": len(epochs), "train_seconds": round(sum(e["epoch_seconds"] for e in epochs), 1),
            "best": max(epochs, key=lambda e: e["valid_accuracy"]), "stopped_early_by_hand": True}


def base_of(exp, experiments):
    """The experiment an export is made from, or None for a training experiment."""
    return next((e for e in experiments if e["name"] == exp.get("base")), None)


def resumed_epochs(exp):
    """Epochs the checkpoint named by an experiment's --resume had trained before this run (0: not resumed)."""
    flags = exp.get("train", [])
    if "--resume" not in flags:
        return 0
    meta = ROOT / flags[flags.index("--resume") + 1] / "metrics.json"
    return json.loads(meta.read_text()).get("epoch", 0) if meta.is_file() else 0


def run_one(exp, experiments, evaluate_only=False):
    run_dir = RUNS / exp["name"]
    ckpt = run_dir / "checkpoint-best"
    trained = base_of(exp, experiments) or exp     # the experiment that trained the model
    started = time.time()
    if "export" in exp:
        base = RUNS / exp["base"] / "checkpoint-best"
        cmd = [sys.executable, "-m", "train.export", "--checkpoint", str(base), "--out", str(ckpt), *exp["export"]]
    elif "optimize" in exp:   # the variant train.optimize keeps, chosen on the base's valid split
        base = RUNS / exp["base"] / "checkpoint-best"
        cmd = [sys.executable, "-m", "train.optimize", "--checkpoint", str(base), "--data", trained["data"],
               "--out", str(ckpt), *exp["optimize"]]
    else:
        cmd = [sys.executable, "-m", "train", "--data", exp["data"], "--out", str(run_dir), *exp["train"]]
    if not evaluate_only:
        if run_dir.exists():   # an earlier or stopped attempt: keep it aside, do not mix its files with this run's
            aside = run_dir.with_name(f"{run_dir.name}.before-{time.strftime('%Y%m%d-%H%M%S')}")
            run_dir.rename(aside)
            print(f"= {exp['name']}: moved the earlier {run_dir} aside to {aside.name}", flush=True)
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
    elif not (ckpt / "config.json").is_file():
        raise SystemExit(f"--evaluate-only: {ckpt} has no checkpoint to evaluate")
    wall = time.time() - started
    data = trained["data"]
    skip = ["--skip-empty"] if "--skip-empty" in trained["train"] else []   # the same lines left out of test
    subprocess.run([sys.executable, "-m", "train.evaluate", "--checkpoint", str(ckpt), "--data", data,
                    "--out", str(run_dir), *skip], cwd=ROOT, check=True)
    ev = json.loads((run_dir / "eval-checkpoint-best-test.json").read_text())
    summary_file = run_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    if evaluate_only and not summary_file.is_file():
        summary = stopped_run_summary(run_dir)
    size = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
    best = summary.get("best") or {}
    return {"name": exp["name"], "data": data, "command": " ".join(cmd[1:]),
            "test_accuracy": ev["accuracy"], "macro_f1": ev["macro_f1"], "micro_f1": ev.get("micro_f1"),
            "epochs": summary.get("epochs"), "best_epoch": best.get("epoch"),
            "valid_accuracy": best.get("valid_accuracy"), "train_seconds": summary.get("train_seconds", round(wall, 1)),
            "ms_per_example_batch1": ev["ms_per_example_batch1"],
            "examples_per_second_batch32": ev["examples_per_second_batch32"],
            "size_mb": round(size / 1e6, 1), "reference": exp.get("reference"),
            "stopped_early_by_hand": summary.get("stopped_early_by_hand", False)}


def describe(exp, experiments):
    """dataset, embedding, encoder, variant and the flags that matter, read from an experiment's definition."""
    base = base_of(exp, experiments)
    flags = (base or exp)["train"]

    def flag(name, default):
        return flags[flags.index(name) + 1] if name in flags else default
    embedding = flag("--embedding", "minilm")
    embedding = {"minilm": "MiniLM-L6", "glove": "GloVe 6B 50d"}.get(embedding, embedding)
    variant = "float32"
    if "--remove-layers" in flags:
        variant = f"layers {flag('--remove-layers', '')} removed"
    if base is not None and "optimize" in exp:
        chosen = RUNS / exp["name"] / "checkpoint-best" / "optimize.json"
        variant = "optimized" + (f" ({json.loads(chosen.read_text())['chosen']})" if chosen.is_file() else "")
    elif base is not None:
        variant = ("ONNX Runtime int8 per-tensor export" if "per-tensor" in exp["export"]
                   else "ONNX Runtime int8 per-channel export") \
            if "--int8" in exp["export"] else "ONNX export" if "--onnx" in exp["export"] else \
            "export " + " ".join(exp["export"])
    return {"dataset": Path((base or exp)["data"]).name, "embedding": embedding,
            "encoder": flag("--encoder", "cls"), "variant": variant, "flags": " ".join(exp.get("export", exp.get("optimize", flags)))}


def write_tables(results, experiments=(), machine=None):
    """results/accuracy.json and accuracy.md (+ the plot). machine: the header's machine, as stored in
    accuracy.json (so a table rewritten elsewhere still names where its numbers were measured)."""
    machine = machine or machine_line()
    RESULTS.mkdir(exist_ok=True)
    known = {e["name"]: e for e in experiments}
    order = [e["name"] for e in experiments]
    results = sorted(results, key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))
    for r in results:
        if r["name"] in known:
            exp = known[r["name"]]
            r.update(describe(exp, experiments), target=exp.get("target"), note=exp.get("note", ""),
                     reference=exp.get("reference"), target_metric=exp.get("target_metric"))
            r.setdefault("epochs_before", resumed_epochs(exp))   # read while the resumed checkpoint is at hand
            base = next((b for b in results if b["name"] == exp.get("base")), None)
            if base is not None and ("--int8" in exp.get("export", ()) or "optimize" in exp):
                r["target"] = round(base["test_accuracy"] - 0.003, 4)   # within 0.3 points of its float model
    (RESULTS / "accuracy.json").write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
    lines = [f"Machine: {machine}, CPU only. Command: `python -m benchmarks.accuracy` "
             "(definitions and hyperparameters: benchmarks/experiments.json; every run: runs/<experiment>/).", "",
             "Test accuracy on each dataset's test split, of checkpoint-best (chosen on valid). Target: this "
             "project's goal; reference: the published number it is compared with. ms/ex: CPU, batch 1, median; "
             "train min: wall time of training (or of the export); epochs a+b: b epochs resumed from a run of a.",
             "", "![test accuracy against the reference and the target](accuracy.png)", "",
             "| experiment | dataset | embedding | encoder | variant | test acc | target | reference | macro-F1 | valid acc "
             "| epochs (best) | train min | ms/ex | MB | flags |",
             "| --- | --- | --- | --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in results:
        ref, target = r.get("reference") or {}, r.get("target")
        # multi-label rows: test acc is subset accuracy (every label of a text right); the target may be on
        # micro-F1 instead ("target_metric" in experiments.json)
        metric = r.get("target_metric") or "test_accuracy"
        mark = "" if target is None else (" ✓" if r[metric] >= target else " ✗")
        if r.get("micro_f1") is not None:
            mark += f" (subset; micro-F1 {r['micro_f1']:.4f})"
        before = f"{r['epochs_before']}+" if r.get("epochs_before") else ""    # resumed: earlier + this run's
        epochs = "-" if not r.get("epochs") else f"{before}{r['epochs']} ({r.get('best_epoch') or '-'})"
        if r.get("stopped_early_by_hand"):
            epochs += " stopped"
        valid = f"{r['valid_accuracy']:.4f}" if r.get("valid_accuracy") else "-"
        minutes = f"{r['train_seconds'] / 60:.1f}" if r.get("train_seconds") else "-"
        lines.append(f"| {r['name']} | {r.get('dataset', '')} | {r.get('embedding', '')} | {r.get('encoder', '')} | "
                     f"{r.get('variant', '')} | **{r['test_accuracy']:.4f}**{mark} | "
                     f"{'-' if target is None else f'{target:.4g}'} | {ref.get('value', '-')} {ref.get('what', '')} | "
                     f"{r['macro_f1']:.4f} | {valid} | {epochs} | {minutes} | {r['ms_per_example_batch1']:.1f} | "
                     f"{r['size_mb']} | `{r.get('flags', r['command'])}` |")
    notes = [f"- {r['name']}: {r['note']}" for r in results if r.get("note")]
    if notes:
        lines += ["", "Notes:", *notes]
    missing = [e["name"] for e in experiments if not any(r["name"] == e["name"] for r in results)]
    if missing:
        lines += ["", f"Defined in experiments.json but not run yet: {', '.join(missing)} "
                  f"(`python -m benchmarks.accuracy --only NAME`)."]
    (RESULTS / "accuracy.md").write_text("\n".join(lines) + "\n")
    plot_results(results, RESULTS / "accuracy.png")


def plot_results(results, png):
    """One panel per dataset: a bar per experiment (test accuracy), the reference (black diamond) and the
    target (red bar) beside it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    datasets = list(dict.fromkeys(r.get("dataset", "") for r in results))
    if not datasets:
        return None
    heights = [sum(r.get("dataset", "") == d for r in results) for d in datasets]
    fig, axes = plt.subplots(len(datasets), 1, figsize=(9, 1.2 + 0.38 * sum(heights) + 0.5 * len(datasets)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, dataset in zip(axes[:, 0], datasets):
        rows = [r for r in results if r.get("dataset", "") == dataset]
        y = range(len(rows))
        acc = [r.get(r.get("target_metric") or "test_accuracy") for r in rows]
        refs = [(i, (r.get("reference") or {}).get("value")) for i, r in enumerate(rows)]
        targets = [(i, r.get("target")) for i, r in enumerate(rows)]
        shown = acc + [v for _, v in refs if v] + [v for _, v in targets if v]
        low = max(0.0, min(shown) - 0.02)
        ax.barh(y, [a - low for a in acc], left=low, color=["tab:green" if t is None or a >= t else "tab:orange"
                                                           for a, (_, t) in zip(acc, targets)])
        for i, a in enumerate(acc):
            ax.text(low, i, f" {a:.4f}", va="center", fontsize=8, color="white", fontweight="bold")
        ax.plot([v for _, v in refs if v], [i for i, v in refs if v], "kD", markersize=5, label="reference")
        ax.plot([v for _, v in targets if v], [i for i, v in targets if v], "r|", markersize=14, mew=2,
                label="target")
        ax.set_yticks(list(y), [r["name"] for r in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(low, min(1.0, max(shown) + 0.012))
        ax.set_title(dataset, fontsize=10, loc="left")
    axes[0, 0].legend(loc="lower right", fontsize=8)
    axes[-1, 0].set_xlabel("test accuracy (green: target met or none set; orange: target missed)")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", help="experiment names to run (default: all)")
    p.add_argument("--list", action="store_true")
    p.add_argument("--redo", action="store_true", help="run again even when a result exists")
    p.add_argument("--evaluate-only", action="store_true",
                   help="evaluate runs/<name>/checkpoint-best as it is (a run stopped by hand before its last "
                        "epoch) instead of training; the table says so")
    p.add_argument("--table", action="store_true", help="only rewrite results/accuracy.md from accuracy.json")
    args = p.parse_args(argv)
    experiments = json.loads(EXPERIMENTS.read_text())["experiments"]
    if args.list:
        for e in experiments:
            print(e["name"])
        return 0
    store = RESULTS / "accuracy.json"
    stored = json.loads(store.read_text()) if store.is_file() else {}
    results, machine = stored.get("results", []), stored.get("machine")
    if args.table:
        write_tables(results, experiments, machine)
        return 0
    for exp in experiments:
        if args.only and exp["name"] not in args.only:
            continue
        if any(r["name"] == exp["name"] for r in results) and not args.redo:
            print(f"= {exp['name']}: done already", flush=True)
            continue
        result = run_one(exp, experiments, args.evaluate_only and "base" not in exp)
        if store.is_file():   # read again: another run may have recorded its result meanwhile
            results = json.loads(store.read_text())["results"]
        results = [r for r in results if r["name"] != exp["name"]] + [result]
        write_tables(results, experiments, machine)
        print(f"= {exp['name']}: test accuracy {result['test_accuracy']:.4f}", flush=True)
    write_tables(results, experiments, machine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
