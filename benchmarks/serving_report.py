"""Collect one serving benchmark (python -m benchmarks.serving) into results.json, plots, a table and BENCHMARKS.md.

Reads OUT/inprocess.json and OUT/users-N/summary.json for each level; writes OUT/results.json and
the two PNGs (benchmarks/plot_serving.py), appends a section to --record, and prints the table with
a last line `served/in-process ratio R at 32 users`: successful served requests/s at 32 users (or
the highest level when 32 was not run) over the best in-process batched examples/s.
"""
import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.common import append_section, git_commit, machine, versions
from textclf.config import read_model_config

ROOT = Path(__file__).resolve().parents[1]
RATIO_USERS = 32


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path, help="the benchmark's output folder")
    p.add_argument("--levels", type=int, nargs="+", required=True)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--model-config", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--duration", required=True)
    p.add_argument("--command", required=True)
    p.add_argument("--record", default="", help="markdown file to append a section to ('' for none)")
    p.add_argument("--note", default="")
    p.add_argument("--loadavg-before", default="")
    p.add_argument("--loadavg-after", default="")
    return p.parse_args(argv)


def serving_config(path):
    config = read_model_config(path)
    return {k: config.get(k) for k in ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "handler")}


def level_row(out, users):
    s = json.loads((out / f"users-{users}" / "summary.json").read_text(encoding="utf-8"))
    ok = s["requests"] - s["failures"]
    return {"users": users, "requests": s["requests"], "failures": s["failures"], "failure_ratio": s["failure_ratio"],
            "requests_per_s": s["requests_per_s"],
            "ok_per_s": round(s["requests_per_s"] * ok / s["requests"], 3) if s["requests"] else 0.0,
            "p50_ms": s["p50_ms"], "p95_ms": s["p95_ms"], "p99_ms": s["p99_ms"], "avg_ms": s["avg_ms"],
            "max_ms": s["max_ms"]}


def ratio(levels, inprocess):
    at = next((r for r in levels if r["users"] == RATIO_USERS), max(levels, key=lambda r: r["users"]))
    best = inprocess["best_batched"]
    value = at["ok_per_s"] / best["examples_per_s"] if best["examples_per_s"] else None
    return {"value": round(value, 3) if value is not None else None, "users": at["users"],
            "served_ok_per_s": at["ok_per_s"], "inprocess_examples_per_s": best["examples_per_s"],
            "inprocess_batch_size": best["batch_size"]}


def _fmt(value, digits=0):
    return "-" if value is None else f"{value:.{digits}f}"


def table(levels):
    lines = ["| users | req/s | p50 ms | p95 ms | p99 ms | failures |", "|---:|---:|---:|---:|---:|---:|"]
    for r in levels:
        fails = f"{r['failures']} ({r['failure_ratio']:.1%})" if r["failures"] else "0"
        lines.append(f"| {r['users']} | {_fmt(r['requests_per_s'], 1)} | {_fmt(r['p50_ms'])} | {_fmt(r['p95_ms'])} "
                     f"| {_fmt(r['p99_ms'])} | {fails} |")
    return lines


def ratio_line(r):
    return f"served/in-process ratio {_fmt(r['value'], 2)} at {r['users']} users"


def section(results, out):
    m, v, ip, sc, r = (results[k] for k in ("machine", "versions", "inprocess", "serving_config", "ratio"))
    b1 = ip["batch1"]
    batched = "; ".join(f"batch {b['batch_size']} {b['examples_per_s']:.1f}/s" for b in ip["batched"])
    lines = [
        f"## Serving benchmark, {results['date']}", "",
        *([f"**{results['note']}**", ""] if results["note"] else []),
        f"- Machine: {m['nproc']} cores, {m['cpu']}, {m['ram_gib']} GiB RAM; load average {results['loadavg_before']}"
        f" before, {results['loadavg_after']} after",
        f"- Software: torch {v['torch']}, transformers {v['transformers']}, TorchServe {v['torchserve']}, "
        f"locust {v['locust']}; commit {results['commit']}",
        f"- Command: `{results['command']}`",
        f"- Checkpoint: `{results['checkpoint']}`; serving config `{results['model_config']}`: "
        f"{sc['minWorkers']}-{sc['maxWorkers']} workers, batchSize {sc['batchSize']}, maxBatchDelay {sc['maxBatchDelay']} ms",
        f"- Load: `{results['data']}` sentences, half text/plain, half JSON, each user one request at a time "
        f"(no think time), {results['duration']} per level",
        f"- In-process, same sentences, {ip['threads']} torch threads, tokenization included: batch 1 "
        f"{b1['examples_per_s']:.1f}/s (p50 {b1['p50_ms_per_batch']:.1f} ms); {batched}", "",
        *table(results["levels"]), "",
        f"{ratio_line(r)} ({r['served_ok_per_s']:.1f} successful req/s over in-process batch "
        f"{r['inprocess_batch_size']} at {r['inprocess_examples_per_s']:.1f} examples/s).",
        f"Results: `{out}` (results.json, throughput_vs_users.png, latency_vs_users.png, users-N/ locust reports).", "",
    ]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    from benchmarks.plot_serving import plot

    out = args.out.resolve()
    inprocess = json.loads((out / "inprocess.json").read_text(encoding="utf-8"))
    levels = [level_row(out, u) for u in args.levels]
    results = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "note": args.note,
        "machine": machine(), "versions": versions(), "commit": git_commit(), "command": args.command,
        "loadavg_before": args.loadavg_before, "loadavg_after": args.loadavg_after,
        "checkpoint": str(args.checkpoint), "model_config": str(args.model_config),
        "serving_config": serving_config(args.model_config), "data": str(args.data), "duration": args.duration,
        "inprocess": inprocess, "levels": levels, "ratio": ratio(levels, inprocess),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    plots = plot(results, out)
    if args.record:
        append_section(args.record, section(results, out))
    print(f"== results: {out / 'results.json'}, plots: {', '.join(p.name for p in plots)}"
          + (f"; appended to {args.record}" if args.record else ""))
    print("\n".join(table(levels)))
    print(ratio_line(results["ratio"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
