"""python -m train.optimize --checkpoint CKPT --data DIR --out DIR: the fastest variant that keeps accuracy.

Builds candidate variants of a float checkpoint (PyTorch fp32 as it is, PyTorch bf16 where the CPU has
AVX-512 BF16 or AMX, ONNX Runtime fp32 plain and with transformer fusions, ONNX Runtime dynamic int8 of
both), measures each on this CPU as one TorchServe worker runs it (its torch threads, its batch size) and
on the valid split, and keeps the fastest whose valid accuracy (micro-F1 for a multi-label checkpoint) is within
--tolerance points of fp32's.
The winner is written to --out as a checkpoint folder that archive.sh serves; optimize.json and optimize.md
there hold the table of all candidates, which is also printed.
"""
import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from textclf.checkpoint import _swap_in, check_folder, readable
from textclf.config import read_model_config
from textclf.data import COLUMNS
from textclf.errors import CheckpointError, DataError
from textclf.machine import cpu_flags, machine
from textclf.predict import Predictor, worker_threads

from .data import train_split, valid_split
from .evaluate import evaluate, measure_speed
from .export import has_bf16, has_vnni

log = logging.getLogger("train.optimize")
ROOT = Path(__file__).resolve().parent.parent
MODEL_CONFIG = ROOT / "handlers" / "model-config.yaml"

# name -> train.export flags; None: the source checkpoint itself
CANDIDATES = {
    "fp32": None,
    "bf16": ["--bf16"],
    "onnx": ["--onnx"],
    "onnx-fused": ["--fuse"],
    "onnx-int8": ["--int8"],
    "onnx-fused-int8": ["--fuse", "--int8"],
}
TRANSFORMER_ONLY = {"onnx-fused", "onnx-fused-int8"}


def served_settings(path=MODEL_CONFIG):
    """(torch threads, batch size) of one TorchServe worker under handlers/model-config.yaml, as the handler
    counts them."""
    config = read_model_config(path)
    threads = worker_threads(config["handler"].get("torch_threads"), config.get("minWorkers", 1))
    return threads, int(config.get("batchSize", 1) or 1)


def parse_args(argv):
    p = argparse.ArgumentParser(description="Build, measure and keep the fastest variant that keeps accuracy.")
    p.add_argument("--checkpoint", required=True, help="float checkpoint folder (as training writes it)")
    p.add_argument("--data", required=True, help="data folder whose valid split decides accuracy")
    p.add_argument("--split", default="valid")
    p.add_argument("--columns", default="auto", choices=COLUMNS)
    p.add_argument("--out", required=True, help="folder for the chosen variant (replaced if it exists)")
    p.add_argument("--tolerance", type=float, default=0.3,
                   help="accuracy points a variant may lose against fp32 on the split (default 0.3)")
    p.add_argument("--candidates", default=",".join(CANDIDATES),
                   help=f"comma-separated, from: {', '.join(CANDIDATES)}")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads while measuring (0: those of one worker under handlers/model-config.yaml)")
    p.add_argument("--batch-size", type=int, default=0,
                   help="batch size of the throughput measure (0: batchSize of handlers/model-config.yaml)")
    p.add_argument("--latency-examples", type=int, default=200, help="examples timed one at a time (at least 1)")
    p.add_argument("--keep-candidates", action="store_true", help="keep every candidate in OUT.candidates/")
    args = p.parse_args(argv)
    args.candidates = [c.strip() for c in args.candidates.split(",") if c.strip()]
    unknown = [c for c in args.candidates if c not in CANDIDATES]
    if unknown or not args.candidates:
        p.error(f"unknown candidates {unknown}; choose from {', '.join(CANDIDATES)}")
    if args.latency_examples < 1:
        p.error("--latency-examples must be at least 1")
    if "fp32" not in args.candidates:
        args.candidates.insert(0, "fp32")   # the reference every other candidate is held to
    return args


def skip_reason(name, config, flags):
    if name in TRANSFORMER_ONLY and config.embedding != "transformer":
        return "word embeddings: nothing to fuse"
    if name == "bf16" and not has_bf16(flags):
        return "this CPU has no AVX-512 BF16 or AMX"
    return ""


def build(name, src, folder):
    """The candidate's checkpoint folder; raises CheckpointError when its export fails."""
    from .export import main as export_main
    if CANDIDATES[name] is None:
        return src
    status = export_main(["--checkpoint", str(src), "--out", str(folder), *CANDIDATES[name]])
    if status:
        raise CheckpointError(f"export failed (exit status {status}; its error is logged above)")
    return folder


def check_out(src, out):
    """--out may be a new folder or an earlier result of this command; never the checkpoint, inside it, above it
    or another folder that would be replaced."""
    if out == src or src in out.parents or out in src.parents:
        raise CheckpointError(f"--out {out} must be a folder of its own: not the checkpoint, inside it or above it")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "optimize.json").is_file())):
        raise CheckpointError(f"--out {out} exists and is not an earlier train.optimize result: "
                              "choose a new folder (it would be replaced)")


def measure(folder, examples, path, threads, batch_size, latency_examples):
    predictor = Predictor.from_checkpoint(folder, "cpu", threads)
    result, _ = evaluate(predictor, examples, path)
    speed = measure_speed(predictor, [e.text for e in examples], latency_examples, batch_size)
    size = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()
               and f.name in ("model.safetensors", "model.onnx"))
    # the score variants are held to: accuracy, or micro-F1 for a multi-label model
    return {"accuracy": result.get("micro_f1", result["accuracy"]), "correct": result["correct"],
            "total": result["total"],
            "macro_f1": result["macro_f1"], "ms_batch1": speed["ms_per_example_batch1"],
            "examples_per_second": speed[f"examples_per_second_batch{batch_size}"], "weights_mb": size / 1e6}


def choose(rows, tolerance):
    """The fastest measured row whose accuracy is within tolerance points of the fp32 row's."""
    reference = next(r for r in rows if r["name"] == "fp32")
    floor = reference["accuracy"] - tolerance / 100 - 1e-9
    eligible = [r for r in rows if "accuracy" in r and r["accuracy"] >= floor]
    return max(eligible, key=lambda r: r["examples_per_second"])


def table(rows, chosen, batch_size):
    ref = next(r for r in rows if r["name"] == "fp32")
    lines = [f"| variant | valid accuracy | vs fp32 (points) | examples/s, batch {batch_size} | speed-up | "
             "ms/example, batch 1 | weights MB | |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        if "accuracy" not in r:
            lines.append(f"| {r['name']} | | | | | | | skipped: {r['skipped']} |")
            continue
        mark = "**chosen**" if r is chosen else ("" if r["eligible"] else "loses accuracy")
        lines.append(f"| {r['name']} | {r['accuracy']:.4f} | {100 * (r['accuracy'] - ref['accuracy']):+.2f} | "
                     f"{r['examples_per_second']:.1f} | {r['examples_per_second'] / ref['examples_per_second']:.2f}x"
                     f" | {r['ms_batch1']:.2f} | {r['weights_mb']:.1f} | {mark} |")
    return "\n".join(lines)


def run(args):
    src, out = Path(args.checkpoint).resolve(), Path(args.out).resolve()
    check_out(src, out)
    threads, batch_size = served_settings()
    threads, batch_size = args.threads or threads, args.batch_size or batch_size
    torch.set_num_threads(threads)
    path, examples = valid_split(args.data, args.split, args.columns, src)
    config = check_folder(readable(src))
    if config.runtime != "torch" or config.precision != "fp32":
        raise CheckpointError(f"{src} is already an export ({config.runtime}, {config.precision}); "
                              "optimize the float checkpoint training wrote")
    flags = cpu_flags()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=out.name + ".candidates.", dir=out.parent)) if not args.keep_candidates \
        else out.with_name(out.name + ".candidates")
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        from tqdm import tqdm
        for name in tqdm(args.candidates, desc="candidates", unit="variant"):
            reason = skip_reason(name, config, flags)
            if reason:
                rows.append({"name": name, "skipped": reason})
                continue
            started = time.perf_counter()
            try:
                folder = build(name, src, work / name)
            except CheckpointError as e:   # one candidate failing leaves the others to choose from
                rows.append({"name": name, "skipped": str(e)})
                continue
            row = {"name": name, "folder": str(folder), "build_s": round(time.perf_counter() - started, 1)}
            row.update(measure(folder, examples, path, threads, batch_size, args.latency_examples))
            rows.append(row)
            log.info("%s: valid accuracy %.4f, %.1f examples/s at batch %d, %.2f ms at batch 1", name,
                     row["accuracy"], row["examples_per_second"], batch_size, row["ms_batch1"])
        reference = next(r for r in rows if r["name"] == "fp32")
        for r in rows:
            if "accuracy" in r:
                r["eligible"] = r["accuracy"] >= reference["accuracy"] - args.tolerance / 100 - 1e-9
        chosen = choose(rows, args.tolerance)
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(chosen["folder"], tmp)
        if chosen["name"] != "fp32" and config.out_of_scope_score == "mahalanobis" \
                and config.out_of_scope_threshold is not None:
            chosen["out_of_scope"] = refit_mahalanobis(tmp, src, args, examples)
        write_report(tmp, args, src, path, examples, rows, chosen, threads, batch_size, flags)
        _swap_in(tmp, out)   # a crash leaves the earlier result or this one, never half of one
        shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if not args.keep_candidates:
            shutil.rmtree(work, ignore_errors=True)
    print((out / "optimize.md").read_text(), end="")
    print(f"wrote {out} (optimize.json, optimize.md)")
    return 0


def refit_mahalanobis(folder, src, args, examples):
    """The chosen variant's own Mahalanobis statistics, fitted on its features of the training texts: int8 moves
    the features away from the float model's class means, so the float statistics would answer fewer texts at the
    same threshold; with its own, the threshold answers about the share the float model does. -> the coverage of
    both on the valid examples."""
    from .calibrate import calibrate
    source = Predictor.from_checkpoint(src)
    texts = [e.text for e in examples]
    before = float((source.in_scope(*source.predict_logits(texts, features=True)) >= source.out_of_scope_threshold).mean())
    summary = calibrate(folder, examples, score="mahalanobis", threshold=source.out_of_scope_threshold, fit=False,
                        fit_examples=train_split(args.data, args.columns, src)[1])
    log.info("the chosen variant's mahalanobis statistics fitted on its own features: at threshold %.4g it answers "
             "%.1f%% of the valid texts (the float checkpoint %.1f%%)", source.out_of_scope_threshold,
             100 * summary["coverage"], 100 * before)
    return {"threshold": source.out_of_scope_threshold, "valid_coverage": summary["coverage"],
            "float_valid_coverage": before}


def write_report(folder, args, src, path, examples, rows, chosen, threads, batch_size, flags):
    text = table(rows, chosen, batch_size)
    where = path.name if path.stem == args.split else f"the valid examples training held out of {path.name}"
    reason = (f"Chosen: **{chosen['name']}**, the fastest at batch {batch_size} among the variants within "
              f"{args.tolerance} points of fp32's accuracy on {where} ({len(examples)} examples); "
              f"{threads} CPU thread(s), as one TorchServe worker runs.")
    report = {"checkpoint": str(src), "data": str(path), "chosen": chosen["name"], "tolerance_points": args.tolerance,
              "threads": threads, "batch_size": batch_size, "vnni": has_vnni(flags), "bf16": has_bf16(flags),
              "machine": machine(), "rows": [{k: v for k, v in r.items() if k not in ("folder", "out_of_scope")}
                                             for r in rows]}
    if "out_of_scope" in chosen:
        report["out_of_scope"] = chosen["out_of_scope"]
        c = chosen["out_of_scope"]
        reason += (f" Its Mahalanobis statistics were fitted on its own features: at the threshold {c['threshold']:.4g} "
                   f"it answers {c['valid_coverage']:.1%} of the valid texts, the float checkpoint "
                   f"{c['float_valid_coverage']:.1%}.")
    (folder / "optimize.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / "optimize.md").write_text(f"{text}\n\n{reason}\n")


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        return run(args)
    except (CheckpointError, DataError) as e:
        log.error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
