"""In-process limit of one checkpoint on this machine: the most a TorchServe worker could serve.

Predictor.from_checkpoint + predict (tokenization, forward, softmax, top-k), on the same sentences the
load test sends, with torch threads = cores. Batches are drawn in random order, as requests reach the
server (train.evaluate sorts by length, which pads less and reads faster). Each measurement runs for
--seconds after a warm-up: batch-1 latency, then examples/s at each batch size (by default the
handler's batchSize from --model-config, and 32).

Usage: python benchmarks/inprocess.py CKPT [--data data/snips/test.txt] [--model-config handlers/model-config.yaml]
                                       [--batch-sizes 16 32] [--seconds 10] [--threads 0] [--out FILE.json]
"""
import argparse
import json
import logging
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

from textclf.config import read_model_config

ROOT = Path(__file__).resolve().parents[1]

log = logging.getLogger(__name__)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--data", type=Path, default=ROOT / "data/snips/test.txt")
    p.add_argument("--model-config", type=Path, default=ROOT / "handlers/model-config.yaml",
                   help="read batchSize and handler.top_k from it")
    p.add_argument("--batch-sizes", type=int, nargs="+", help="default: the model config's batchSize and 32")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each measurement")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: the cores this process may use)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write the results here as JSON")
    return p.parse_args(argv)


def serving_settings(path):
    """(batchSize, top_k) from a TorchServe model-config.yaml."""
    config = read_model_config(path)
    return int(config.get("batchSize", 1)), int(config["handler"].get("top_k", 3))


def batches(texts, batch_size, rng):
    """Endless random batches cut from back-to-back shuffled passes over the texts (any file size)."""
    pool = []
    while True:
        while len(pool) < batch_size:
            shuffled = texts[:]
            rng.shuffle(shuffled)
            pool += shuffled
        yield pool[:batch_size]
        pool = pool[batch_size:]


def measure(predictor, texts, batch_size, seconds, top_k, rng):
    source = batches(texts, batch_size, rng)
    for _ in range(3):   # warm-up: first calls allocate and pick kernels
        predictor.predict(next(source), top_k, batch_size)
    times, started = [], time.perf_counter()
    while time.perf_counter() - started < seconds:
        batch = next(source)
        t0 = time.perf_counter()
        predictor.predict(batch, top_k, batch_size)
        times.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    result = {"batch_size": batch_size, "batches": len(times), "examples": len(times) * batch_size,
              "seconds": round(elapsed, 3), "examples_per_s": round(len(times) * batch_size / elapsed, 2)}
    for q in (50, 95, 99):
        result[f"p{q}_ms_per_batch"] = round(1000 * float(np.percentile(times, q)), 2)
    return result


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch
    from textclf.errors import CheckpointError, DataError
    from textclf.predict import Predictor
    from textclf.data import read_examples

    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    try:
        handler_batch, top_k = serving_settings(args.model_config)
        texts = [e.text for e in read_examples(args.data)[0]]
        predictor = Predictor.from_checkpoint(args.checkpoint, "cpu", threads)
    except (OSError, DataError, CheckpointError) as e:
        log.error("inprocess: %s", e)
        return 2
    sizes = list(dict.fromkeys(args.batch_sizes or [handler_batch, 32]))
    if min(sizes) < 1:
        log.error("inprocess: batch sizes must be at least 1, got %s", sizes)
        return 2
    top_k = min(top_k, len(predictor.labels))
    rng = random.Random(args.seed)

    single = measure(predictor, texts, 1, args.seconds, top_k, rng)
    log.info("batch 1: %.1f examples/s, latency p50 %.1f ms, p95 %.1f ms, p99 %.1f ms", single["examples_per_s"],
             single["p50_ms_per_batch"], single["p95_ms_per_batch"], single["p99_ms_per_batch"])
    batched = []
    for size in sizes:
        batched.append(measure(predictor, texts, size, args.seconds, top_k, rng))
        log.info("batch %d: %.1f examples/s (p50 %.1f ms per batch)", size, batched[-1]["examples_per_s"],
                 batched[-1]["p50_ms_per_batch"])
    result = {
        "checkpoint": str(args.checkpoint.resolve()), "data": str(args.data.resolve()), "texts": len(texts),
        "model_config": str(args.model_config.resolve()), "handler_batch_size": handler_batch, "top_k": top_k,
        "threads": threads, "torch": torch.__version__, "seconds_per_measurement": args.seconds,
        "batch1": single, "batched": batched,
        "best_batched": max(batched, key=lambda r: r["examples_per_s"]),
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
