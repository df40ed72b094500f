"""Whole-file classification against line-by-line stdin, as real processes: throughput, ratios, peak memory.

    python -m benchmarks.bulk --checkpoint CKPT [--optimized CKPT2] [--lines 100000] [--stdin-lines 2000]
        [--tokenize-workers 0,2] [--rss-lines 10000,1000000 --rss-checkpoint CKPT3] --out results/bulk

Builds a deterministic Snips-like input (--lines texts drawn with a seeded RNG from data/snips/train.txt, one a
line, in a temporary folder), then times, each as its own `python -m train.predict` process: the bulk mode
(--input/--output) on CKPT with every --tokenize-workers value, and on the --optimized checkpoint; and the
line-by-line stdin mode on the first --stdin-lines lines piped in. Nothing is subtracted: a process's rate is
lines / its wall time, model loading included (the bulk mode's own rate, loading excluded, is recorded too).
The peak RSS of the bulk process (os.wait4) is measured at every --rss-lines size with --rss-checkpoint
(default CKPT): it must stay flat as the file grows. Writes OUT/bulk.json and OUT/bulk.md.
"""
import argparse
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, git_commit, machine, machine_line, versions
from textclf.data import read_examples

RATE = re.compile(r"classified (\d+) texts in ([\d.]+) s: ([\d.]+) texts/s")


def int_list(text):
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="the float32 model")
    p.add_argument("--optimized", type=Path, default=None, help="an exported variant to compare (train.optimize)")
    p.add_argument("--lines", type=int, default=100000, help="lines of the bulk input")
    p.add_argument("--stdin-lines", type=int, default=2000, help="lines piped into the line-by-line mode")
    p.add_argument("--tokenize-workers", type=int_list, default=[0], help="values to compare, e.g. 0,2")
    p.add_argument("--rss-lines", type=int_list, default=[], help="input sizes for peak RSS, e.g. 10000,1000000")
    p.add_argument("--rss-checkpoint", type=Path, default=None, help="model of the RSS runs (default --checkpoint)")
    p.add_argument("--threads", type=int, default=None, help="--threads of the bulk runs (default: usable cores)")
    p.add_argument("--data", type=Path, default=ROOT / "data" / "snips" / "train.txt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bulk")
    return p.parse_args(argv)


def write_input(path, texts, n, seed):
    """n texts drawn with Random(seed): a file of n lines starts with the lines of any smaller one."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            f.write(rng.choice(texts) + "\n")
    return path


def run_child(cmd, stdin=None, stdout=None, stderr=None):
    """-> (exit code, wall seconds, peak RSS of the child in MiB) of one process (os.wait4: this child only)."""
    started = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=ROOT, stdin=stdin, stdout=stdout, stderr=stderr)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, wall, usage.ru_maxrss / 1024   # ru_maxrss is in KiB on Linux


def digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def bulk(checkpoint, src, work, workers=0, threads=None):
    """One `python -m train.predict --input --output` process -> its measurements."""
    out, log = work / f"out-{os.getpid()}-{time.monotonic_ns()}.jsonl", work / "stderr.txt"
    cmd = [sys.executable, "-m", "train.predict", "--checkpoint", str(checkpoint), "--input", str(src),
           "--output", str(out), "--overwrite", "--tokenize-workers", str(workers)]
    cmd += ["--threads", str(threads)] if threads else []
    with open(log, "wb") as err:
        rc, wall, rss = run_child(cmd, stdin=subprocess.DEVNULL, stderr=err)
    text = log.read_text(encoding="utf-8", errors="replace")
    found = RATE.findall(text)
    if rc != 0 or not found:
        raise SystemExit(f"{' '.join(cmd)} exited with {rc}:\n{text[-2000:]}")
    with open(out, "rb") as f:
        lines = sum(1 for _ in f)
    result = {"checkpoint": str(checkpoint), "lines": lines, "tokenize_workers": workers, "wall_s": wall,
              "lines_per_s_wall": lines / wall, "classify_s": float(found[-1][1]),
              "lines_per_s_classify": float(found[-1][2]), "peak_rss_mib": rss, "output_sha256": digest(out)}
    out.unlink()
    return result


def stdin_mode(checkpoint, src, n, work):
    """`head -n N src | python -m train.predict --checkpoint CKPT` (top 3 printed per line) -> measurements."""
    piped = work / "stdin.txt"
    with open(src, encoding="utf-8") as f, open(piped, "w", encoding="utf-8") as g:
        g.writelines(line for _, line in zip(range(n), f))
    cmd = [sys.executable, "-m", "train.predict", "--checkpoint", str(checkpoint)]
    with open(piped, "rb") as stdin:
        rc, wall, rss = run_child(cmd, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} < {piped} exited with {rc}")
    return {"checkpoint": str(checkpoint), "lines": n, "wall_s": wall, "lines_per_s_wall": n / wall,
            "peak_rss_mib": rss}


def measure(args, texts, work):
    src = write_input(work / "input.txt", texts, args.lines, args.seed)
    runs = {"stdin": stdin_mode(args.checkpoint, src, min(args.stdin_lines, args.lines), work)}
    print(f"stdin, line by line: {runs['stdin']['lines_per_s_wall']:.1f} lines/s", flush=True)
    runs["bulk"] = []
    for workers in args.tokenize_workers:
        runs["bulk"].append(bulk(args.checkpoint, src, work, workers, args.threads))
        print(f"bulk, {workers} tokenize workers: {runs['bulk'][-1]['lines_per_s_wall']:.1f} lines/s", flush=True)
    if args.optimized:
        runs["optimized"] = bulk(args.optimized, src, work, args.tokenize_workers[0], args.threads)
        print(f"bulk, optimized: {runs['optimized']['lines_per_s_wall']:.1f} lines/s", flush=True)
    src.unlink()
    runs["rss"] = []
    for n in args.rss_lines:
        src = write_input(work / f"rss-{n}.txt", texts, n, args.seed)
        runs["rss"].append(bulk(args.rss_checkpoint or args.checkpoint, src, work, 0, args.threads))
        print(f"{n} lines: peak RSS {runs['rss'][-1]['peak_rss_mib']:.0f} MiB", flush=True)
        src.unlink()
    return runs


def ratios(runs):
    base = runs["bulk"][0]
    out = {"bulk_over_stdin": base["lines_per_s_wall"] / runs["stdin"]["lines_per_s_wall"],
           "tokenize_workers_over_first": {str(r["tokenize_workers"]): r["lines_per_s_wall"] / base["lines_per_s_wall"]
                                           for r in runs["bulk"][1:]},
           "tokenize_workers_same_output": all(r["output_sha256"] == base["output_sha256"] for r in runs["bulk"])}
    if "optimized" in runs:
        out["optimized_over_fp32"] = runs["optimized"]["lines_per_s_wall"] / base["lines_per_s_wall"]
        out["optimized_over_fp32_classify"] = (runs["optimized"]["lines_per_s_classify"] /
                                               base["lines_per_s_classify"])
    return out


def table(result):
    runs, m = result["runs"], result["machine"]
    rows = [("stdin, line by line", runs["stdin"])]
    rows += [(f"bulk, {r['tokenize_workers']} tokenize workers", r) for r in runs["bulk"]]
    rows += [("bulk, optimized", runs["optimized"])] if "optimized" in runs else []
    about = (f"Command: `{result['command']}`. Machine: {machine_line(m)} ({', '.join(m['flags']) or 'no flags'}), "
             f"{m['ram_gib']} GiB; commit {result['commit']}; torch {result['versions']['torch']}, onnxruntime "
             f"{result['versions']['onnxruntime']}. Input: {result['lines']} lines drawn (seed {result['seed']}) "
             f"from {result['data']}. Each row is one process; lines/s (wall) counts its whole life, model loading "
             "included; lines/s (classify) is the bulk mode's own figure, loading excluded.")
    lines = ["# Bulk classification: `python -m train.predict --input/--output` against stdin", "", about, "",
             "| mode | checkpoint | lines | wall s | lines/s (wall) | lines/s (classify) | peak RSS MiB |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in rows:
        classify = f"{r['lines_per_s_classify']:.1f}" if "lines_per_s_classify" in r else "-"
        lines.append(f"| {name} | {Path(r['checkpoint']).parent.name}/{Path(r['checkpoint']).name} | {r['lines']} | "
                     f"{r['wall_s']:.1f} | {r['lines_per_s_wall']:.1f} | {classify} | {r['peak_rss_mib']:.0f} |")
    q = result["ratios"]
    lines += ["", f"Bulk / stdin: {q['bulk_over_stdin']:.1f}x."]
    if "optimized_over_fp32" in q:
        lines.append(f"Optimized / fp32 (bulk): {q['optimized_over_fp32']:.2f}x by wall time, "
                     f"{q['optimized_over_fp32_classify']:.2f}x classifying.")
    for workers, ratio in q["tokenize_workers_over_first"].items():
        lines.append(f"{workers} tokenize workers / {runs['bulk'][0]['tokenize_workers']}: {ratio:.2f}x.")
    lines.append(f"Same output bytes for every --tokenize-workers value: {q['tokenize_workers_same_output']}.")
    if runs["rss"]:
        lines += ["", "Peak RSS of the bulk process by input size (--chunk 8192: memory must not grow with the file):",
                  "", "| lines | checkpoint | peak RSS MiB | lines/s (classify) |", "| ---: | --- | ---: | ---: |"]
        lines += [f"| {r['lines']} | {Path(r['checkpoint']).name} | {r['peak_rss_mib']:.0f} | "
                  f"{r['lines_per_s_classify']:.1f} |" for r in runs["rss"]]
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    if not args.tokenize_workers:
        raise SystemExit("--tokenize-workers needs at least one value")
    texts = [e.text for e in read_examples(args.data)[0]]
    with tempfile.TemporaryDirectory(prefix="bulk-bench-") as work:
        runs = measure(args, texts, Path(work))
    command = "python -m benchmarks.bulk " + " ".join(sys.argv[1:] if argv is None else argv)
    result = {"command": command, "machine": machine(), "versions": versions(), "commit": git_commit(),
              "data": str(args.data), "lines": args.lines, "seed": args.seed, "threads": args.threads,
              "runs": runs}
    result["ratios"] = ratios(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bulk.json").write_text(json.dumps(result, indent=2) + "\n")
    md = table(result)
    (args.out / "bulk.md").write_text(md)
    print(md, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
