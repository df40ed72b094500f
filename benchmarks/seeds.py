"""python -m benchmarks.seeds NAME --seeds 1 2 3 [--device cuda]: train one experiment of experiments.json
once per seed and record how much its test accuracy moves with the seed alone.

A target a few test answers above a result is inside seed noise (Snips test has 700 sentences: one answer is
0.14 points), so one run says little about a configuration. Each seed trains into runs/NAME.seed-N/ with the
experiment's flags plus --seed N (python -m train evaluates checkpoint-best, chosen on valid, on test);
results/seeds.json keeps every run, and results/seeds.md the table with mean and sample standard deviation.
Runs already recorded are skipped, so the command resumes; a result for the same seed made elsewhere (another
machine, a GPU) can be added with --record SUMMARY_JSON --seeds N --device WHERE.
"""
import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from . import accuracy
from .common import machine_line


def store_path():
    return accuracy.RESULTS / "seeds.json"


def load_store():
    return json.loads(store_path().read_text()) if store_path().is_file() else {"runs": []}


def record(store, name, seed, device, summary, where):
    best = summary.get("best") or {}
    row = {"experiment": name, "seed": seed, "device": device, "machine": where,
           "valid_accuracy": best.get("valid_accuracy"), "best_epoch": best.get("epoch"),
           "epochs": summary.get("epochs"), "test_accuracy": summary["test_accuracy"],
           "test_macro_f1": summary.get("test_macro_f1"), "train_seconds": summary.get("train_seconds")}
    store["runs"] = [r for r in store["runs"]
                     if (r["experiment"], r["seed"], r["device"]) != (name, seed, device)] + [row]
    return row


def spread(rows):
    acc = [r["test_accuracy"] for r in rows]
    return {"n": len(acc), "mean": statistics.fmean(acc), "sd": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "min": min(acc), "max": max(acc)}


def write_table(store, experiments):
    accuracy.RESULTS.mkdir(exist_ok=True)
    store_path().write_text(json.dumps(store, indent=2) + "\n")
    targets = {e["name"]: e.get("target") for e in experiments}
    lines = ["Seed spread: each experiment of benchmarks/experiments.json trained once per seed, nothing else "
             "changed (`python -m benchmarks.seeds NAME --seeds ...`). Test accuracy of checkpoint-best (chosen "
             "on valid) per run; mean and sample standard deviation per experiment and device.", "",
             "| experiment | device | seeds | test mean | sd | min | max | target | runs at or above it | "
             "valid (each seed) | test (each seed) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    groups = {}
    for r in store["runs"]:
        groups.setdefault((r["experiment"], r["device"]), []).append(r)
    for (name, device), rows in groups.items():
        rows.sort(key=lambda r: r["seed"])
        s, target = spread(rows), targets.get(name)
        above = "-" if target is None else f"{sum(r['test_accuracy'] >= target for r in rows)} of {len(rows)}"
        lines.append(f"| {name} | {device} ({rows[0]['machine']}) | {s['n']} | **{s['mean']:.4f}** | {s['sd']:.4f} | "
                     f"{s['min']:.4f} | {s['max']:.4f} | {'-' if target is None else target} | {above} | "
                     + ", ".join(f"{r['seed']}: {r['valid_accuracy']:.4f}" for r in rows) + " | "
                     + ", ".join(f"{r['seed']}: {r['test_accuracy']:.4f}" for r in rows) + " |")
    lines += ["", "![test accuracy of each seed against the target](seeds.png)"]
    (accuracy.RESULTS / "seeds.md").write_text("\n".join(lines) + "\n")
    plot(groups, targets, accuracy.RESULTS / "seeds.png")


def plot(groups, targets, png):
    """A panel per experiment and device, each on its own scale: a dot per seed, the mean (black bar) and
    the target (red bar)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = list(groups)
    if not keys:
        return
    fig, axes = plt.subplots(len(keys), 1, figsize=(8, 0.4 + 0.9 * len(keys)), squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        acc = [r["test_accuracy"] for r in groups[key]]
        mean, target = spread(groups[key])["mean"], targets.get(key[0])
        ax.plot(acc, [0] * len(acc), "o", alpha=0.6,
                color="tab:green" if target is None or mean >= target else "tab:orange")
        ax.plot([mean], [0], "k|", markersize=18, mew=2)
        shown = acc + ([target] if target is not None else [])
        if target is not None:
            ax.plot([target], [0], "r|", markersize=18, mew=2)
        pad = max(0.002, 0.15 * (max(shown) - min(shown)))
        ax.set_xlim(min(shown) - pad, max(shown) + pad)
        ax.set_yticks([0], [f"{key[0]} ({key[1]})"], fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("test accuracy per seed (black: mean, red: target; green: mean meets it)")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", help="an experiment of benchmarks/experiments.json (a training one)")
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (recorded with each run)")
    p.add_argument("--record", metavar="SUMMARY_JSON",
                   help="record this summary.json (python -m train's) for the one --seed instead of training")
    p.add_argument("--machine", help="where a --record run ran (default: this machine)")
    args = p.parse_args(argv)
    experiments = json.loads(accuracy.EXPERIMENTS.read_text())["experiments"]
    exp = next((e for e in experiments if e["name"] == args.name), None)
    if exp is None or "train" not in exp:
        raise SystemExit(f"{args.name}: no training experiment of that name in {accuracy.EXPERIMENTS}")
    if "--seed" in exp["train"] or "--resume" in exp["train"]:
        raise SystemExit(f"{args.name}: its flags fix --seed or --resume; pick an experiment that trains from scratch")
    store = load_store()
    if args.record:
        if len(args.seeds) != 1:
            raise SystemExit("--record takes exactly one --seeds value")
        row = record(store, args.name, args.seeds[0], args.device, json.loads(Path(args.record).read_text()),
                     args.machine or machine_line())
        print(f"= {args.name} seed {row['seed']} ({args.device}): test {row['test_accuracy']:.4f}")
        write_table(store, experiments)
        return 0
    for seed in args.seeds:
        if any((r["experiment"], r["seed"], r["device"]) == (args.name, seed, args.device) for r in store["runs"]):
            print(f"= {args.name} seed {seed} ({args.device}): done already", flush=True)
            continue
        out = accuracy.RUNS / f"{args.name}.seed-{seed}"
        cmd = [sys.executable, "-m", "train", "--data", exp["data"], "--out", str(out), *exp["train"],
               "--seed", str(seed), "--device", args.device]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=accuracy.ROOT, check=True)
        store = load_store()   # read again: another run may have recorded meanwhile
        row = record(store, args.name, seed, args.device, json.loads((out / "summary.json").read_text()), machine_line())
        write_table(store, experiments)
        print(f"= {args.name} seed {seed} ({args.device}): test {row['test_accuracy']:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
