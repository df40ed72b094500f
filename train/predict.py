"""python -m train.predict --checkpoint CKPT [TEXT ...]: label and score per text.

Without texts it reads lines from standard input until EOF and prints the top 3 for each.
With --input FILE --output FILE it classifies a whole file in chunks, resumably (train/bulk.py).
"""
import argparse
import json
import logging
import sys

import torch

from textclf.data import COLUMNS
from textclf.errors import CheckpointError, DataError
from textclf.predict import Predictor, usable_cores
from train import bulk


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Classify texts with a checkpoint.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--top-k", type=int, default=None, help="labels to show per text (default 1, or 3 interactively)")
    p.add_argument("--json", action="store_true", help="print one JSON object per text")
    p.add_argument("texts", nargs="*")
    b = p.add_argument_group("a whole file (--input and --output)")
    b.add_argument("--input", help=".jsonl/.ndjson, .csv (header row), .tsv or .txt (one text a line, or TSV)")
    b.add_argument("--output", help=".jsonl or .tsv; an existing one is resumed unless --overwrite")
    b.add_argument("--overwrite", action="store_true", help="start the output afresh instead of resuming it")
    b.add_argument("--batch-size", type=int, default=64, help="texts per forward pass at most")
    b.add_argument("--chunk", type=int, default=8192, help="records read, classified and written at a time")
    b.add_argument("--threads", type=int, default=None, help="torch threads (default: the usable cores)")
    b.add_argument("--tokenize-workers", type=workers_arg, default="auto",
                   help="processes tokenizing the next chunks while this one runs the model (0: none); auto: none "
                        "on CPU, where the model needs every core (BENCHMARKS.md \"Classify a whole file\"), and "
                        "up to 8 with a GPU, which one tokenizing process cannot keep fed")
    b.add_argument("--cuda-precision", choices=("fp16", "bf16", "fp32"), default="fp16",
                   help="on a CUDA device: the weights' type (default fp16, as the GPU handler runs them)")
    b.add_argument("--field", default="text", help="the text's field (JSON Lines) or column (CSV)")
    b.add_argument("--columns", choices=COLUMNS, default="auto", help="TSV column order (auto: detected)")
    args = p.parse_args(argv)
    if bool(args.input) != bool(args.output):
        p.error("--input and --output go together")
    if args.input and args.texts:
        p.error("give texts or --input, not both")
    if min(args.batch_size, args.chunk) < 1 or (args.threads or 1) < 1:
        p.error("--batch-size, --chunk and --threads must be positive")
    return args


def workers_arg(text):
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected auto or a number of processes (0 or more), got {text!r}")
    return value


def tokenize_workers(asked, device):
    """auto: none on CPU; on a GPU one per core left beside this process, at most 8."""
    if asked != "auto":
        return asked
    return min(8, max(1, usable_cores() - 1)) if str(device).startswith("cuda") else 0


def bulk_main(args):
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    threads = args.threads or usable_cores()
    torch.set_num_threads(threads)
    try:
        predictor = Predictor.from_checkpoint(args.checkpoint, args.device, threads, args.cuda_precision)
        args.tokenize_workers = tokenize_workers(args.tokenize_workers, predictor.device)
        return bulk.run(predictor, args)
    except (DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def main(argv=None):
    args = parse_args(argv)
    if args.input:
        return bulk_main(args)
    try:
        predictor = Predictor.from_checkpoint(args.checkpoint, args.device)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def show(texts, k):
        for text, result in zip(texts, predictor.predict(texts, top_k=k)):
            if args.json:
                print(json.dumps({"text": text, **result}, ensure_ascii=False))
            elif k == 1:
                print(f"{result['label']}\t{result['score']:.4f}\t{text}")
            else:
                ranked = "  ".join(f"{r['label']} {r['score']:.4f}" for r in result["top_k"])
                print(f"{text}\n  {ranked}")
        sys.stdout.flush()

    if args.texts:
        show(args.texts, args.top_k or 1)
        return 0
    if sys.stdin.isatty():
        print("type a sentence and press Enter (Ctrl-D to quit)", file=sys.stderr)
    for line in sys.stdin:
        text = line.strip()
        if text:
            show([text], args.top_k or 3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
