"""Put the two runs of `python -m benchmarks.serving CKPT --optimized DIR` side by side.

Reads OUT/fp32/results.json and OUT/optimized/results.json (each written by serving_report.py), evaluates
both checkpoints on the test split of the load's data (accuracy, in-process), and writes OUT/comparison.json,
OUT/comparison.md and OUT/comparison.png; appends a section to --record; prints the table with a last line
`optimized/fp32 served ratio R at 32 users` (successful req/s of the optimized variant over fp32's).
"""
import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.common import append_section, git_commit, machine, versions

RATIO_USERS = 32


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--fp32", type=Path, required=True, help="the float32 checkpoint")
    p.add_argument("--optimized", type=Path, required=True, help="the optimized variant (train.optimize's --out)")
    p.add_argument("--data", type=Path, required=True, help="the load's sentences: a split file SPLIT.txt")
    p.add_argument("--command", default="")
    p.add_argument("--record", default="", help="markdown file to append a section to ('' for none)")
    p.add_argument("--note", default="")
    return p.parse_args(argv)


def test_accuracy(checkpoint, split_file):
    from textclf.data import read_examples
    from textclf.predict import Predictor
    from train.evaluate import evaluate
    examples, _ = read_examples(split_file)
    result, _ = evaluate(Predictor.from_checkpoint(checkpoint), examples, split_file)
    return {"accuracy": result["accuracy"], "correct": result["correct"], "total": result["total"],
            "macro_f1": result["macro_f1"]}


def rows(fp32, optimized):
    by_users = {r["users"]: r for r in optimized["levels"]}
    out = []
    for a in fp32["levels"]:
        b = by_users.get(a["users"])
        if b is None:
            continue
        out.append({"users": a["users"], "fp32": a, "optimized": b,
                    "ratio": round(b["ok_per_s"] / a["ok_per_s"], 3) if a["ok_per_s"] else None})
    return out


def table(compared):
    lines = ["| users | fp32 req/s | fp32 p50 ms | fp32 p99 ms | optimized req/s | optimized p50 ms | "
             "optimized p99 ms | optimized/fp32 req/s | failures (fp32, optimized) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in compared:
        a, b = r["fp32"], r["optimized"]
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        lines.append(f"| {r['users']} | {a['ok_per_s']:.1f} | {a['p50_ms']} | {a['p99_ms']} | {b['ok_per_s']:.1f} | "
                     f"{b['p50_ms']} | {b['p99_ms']} | {ratio} | {a['failures']}, {b['failures']} |")
    return lines


def plot(compared, png, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    users = [r["users"] for r in compared]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, colour in (("fp32", "C0"), ("optimized", "C2")):
        left.plot(users, [r[key]["ok_per_s"] for r in compared], "o-", color=colour, label=key)
        right.plot(users, [r[key]["p50_ms"] for r in compared], "o-", color=colour, label=f"{key} p50")
        right.plot(users, [r[key]["p99_ms"] for r in compared], "x--", color=colour, label=f"{key} p99")
    left.set(xscale="log", xlabel="concurrent users", ylabel="successful requests/s", title="throughput")
    right.set(xscale="log", yscale="log", xlabel="concurrent users", ylabel="ms", title="latency")
    for ax in (left, right):
        ax.set_xticks(users, [str(u) for u in users])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def section(result, out):
    m, v = result["machine"], result["versions"]
    fp, op = result["accuracy"]["fp32"], result["accuracy"]["optimized"]
    one = result["p50_at_1_user"]
    chosen = result["chosen"] or "see the checkpoint's config.json"
    lines = [
        f"## fp32 vs optimized variant, served side by side, {result['date']}", "",
        *([f"**{result['note']}**", ""] if result["note"] else []),
        f"- Machine: {m['nproc']} cores, {m['cpu']}; flags: {', '.join(m['flags']) or 'none of note'}",
        f"- Software: torch {v['torch']}, TorchServe {v['torchserve']}, locust {v['locust']}; commit {result['commit']}",
        f"- Command: `{result['command']}`",
        f"- fp32: `{result['fp32']}`; optimized: `{result['optimized']}` (chosen variant: {chosen})",
        f"- Test accuracy ({result['accuracy_split']}): fp32 {fp['accuracy']:.4f}, optimized {op['accuracy']:.4f} "
        f"({100 * (op['accuracy'] - fp['accuracy']):+.2f} points)",
        f"- p50 at 1 user: fp32 {one['fp32']} ms, optimized {one['optimized']} ms "
        f"(optimized/fp32 {one['ratio']:.2f})" if one else "- p50 at 1 user: not measured (no level of 1 user)",
        "",
        *table(result["levels"]), "",
        f"{ratio_line(result)}. Results: `{out}` (comparison.json, comparison.png; fp32/ and optimized/ hold each "
        "run's results.json, plots and locust reports).", "",
    ]
    return "\n".join(lines)


def ratio_line(result):
    r = result["ratio"]
    value = "-" if r["value"] is None else f"{r['value']:.2f}"
    return f"optimized/fp32 served ratio {value} at {r['users']} users"


def main(argv=None):
    args = parse_args(argv)
    out = args.out.resolve()
    fp32 = json.loads((out / "fp32" / "results.json").read_text(encoding="utf-8"))
    optimized = json.loads((out / "optimized" / "results.json").read_text(encoding="utf-8"))
    compared = rows(fp32, optimized)
    if not compared:
        raise SystemExit("serving_compare.py: the two runs share no user level")
    at = next((r for r in compared if r["users"] == RATIO_USERS), compared[-1])
    one = next((r for r in compared if r["users"] == 1), None)
    report = args.optimized / "optimize.json"
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "note": args.note,
        "machine": machine(), "versions": versions(), "commit": git_commit(),
        "command": args.command, "fp32": str(args.fp32), "optimized": str(args.optimized),
        "chosen": json.loads(report.read_text())["chosen"] if report.is_file() else None,
        "accuracy_split": str(args.data),
        "accuracy": {"fp32": test_accuracy(args.fp32, args.data),
                     "optimized": test_accuracy(args.optimized, args.data)},
        "levels": compared,
        "ratio": {"value": at["ratio"], "users": at["users"]},
        "p50_at_1_user": None if one is None else {
            "fp32": one["fp32"]["p50_ms"], "optimized": one["optimized"]["p50_ms"],
            "ratio": round(one["optimized"]["p50_ms"] / one["fp32"]["p50_ms"], 3)},
    }
    (out / "comparison.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    text = section(result, out)
    (out / "comparison.md").write_text(text, encoding="utf-8")
    plot(compared, out / "comparison.png",
         f"{args.fp32} vs {args.optimized} ({result['chosen']}); {result['machine']['cpu']}, "
         f"{result['machine']['nproc']} cores; {result['date']}")
    if args.record:
        append_section(args.record, text)
    print(f"== results: {out / 'comparison.json'}, comparison.md, comparison.png"
          + (f"; appended to {args.record}" if args.record else ""))
    print("\n".join(table(compared)))
    print(ratio_line(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
