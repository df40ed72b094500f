"""One request of N texts against N one-text requests, through a real TorchServe on 127.0.0.1.

    python -m benchmarks.batch_requests runs/snips-minilm-cls/checkpoint-best --out results/batch-requests

Archives the checkpoint with ./archive.sh and the shipped handlers/model-config.yaml, serves it on free
loopback ports, then alternates, round by round: N single requests sent by --clients concurrent clients
(each one request at a time), and one request {"texts": [N texts]}; first on an otherwise idle server, then
under load: --background-clients more clients send one-text requests all along (bounded in time). Both are
timed from the first send to the last answer; every answer must be 200 and both must give the same labels.
Writes OUT/result.json and OUT/batch_vs_single.png, and prints a last line
`under load: one request of N texts / N single requests: R x faster`.
"""
import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import requests
from tqdm import tqdm

from benchmarks.common import git_commit, machine, versions
from serving.torchserve import ROOT, TorchServe, archive
from textclf.config import read_model_config
from textclf.data import read_examples


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--data", type=Path, default=ROOT / "data" / "snips" / "test.txt")
    p.add_argument("--texts", type=int, default=256, help="texts per round (the batch request's size)")
    p.add_argument("--clients", type=int, default=32, help="concurrent clients sending the single requests")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--long-data", type=Path, default=ROOT / "data" / "r52" / "test.tsv",
                   help="long documents for the largest request the shipped limits allow")
    p.add_argument("--background-clients", type=int, default=16, help="clients sending one-text requests all "
                   "along during the 'under load' rounds")
    p.add_argument("--model-config", type=Path, default=ROOT / "handlers" / "model-config.yaml")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "batch-requests")
    return p.parse_args(argv)


def singles(ts, model, texts, clients):
    """-> (seconds from first send to last answer, per-request latencies in ms, labels)."""
    headers = ts.auth() | {"Content-Type": "text/plain"}

    def one(text):
        started = time.perf_counter()
        r = requests.post(f"{ts.inference}/predictions/{model}", data=text.encode(), headers=headers, timeout=120)
        return r, (time.perf_counter() - started) * 1e3

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        answers = list(pool.map(one, texts))
    wall = time.perf_counter() - started
    bad = [r.status_code for r, _ in answers if r.status_code != 200]
    if bad:
        raise SystemExit(f"{len(bad)} single requests failed: {bad[:5]}")
    return wall, [ms for _, ms in answers], [r.json()["label"] for r, _ in answers]


def batch(ts, model, texts):
    started = time.perf_counter()
    r = requests.post(f"{ts.inference}/predictions/{model}", data=json.dumps({"texts": texts, "top_k": 3}),
                      headers=ts.auth() | {"Content-Type": "application/json"}, timeout=300)
    wall = time.perf_counter() - started
    if r.status_code != 200:
        raise SystemExit(f"the batch request failed: {r.status_code} {r.text[:300]}")
    return wall, [p["label"] for p in r.json()["predictions"]]


class Background:
    """Clients sending one-text requests in a loop, one at a time each, until stopped or `limit_s` passed."""

    def __init__(self, ts, model, texts, clients, limit_s):
        self.url, self.headers = f"{ts.inference}/predictions/{model}", ts.auth() | {"Content-Type": "text/plain"}
        self.texts, self.deadline = texts, time.monotonic() + limit_s
        self.stop, self.lock, self.answered, self.failed = threading.Event(), threading.Lock(), 0, 0
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(clients)]

    def _loop(self, i):
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            r = requests.post(self.url, data=self.texts[i % len(self.texts)].encode(), headers=self.headers,
                              timeout=120)
            with self.lock:
                self.answered += r.status_code == 200
                self.failed += r.status_code != 200
            i += len(self.threads)

    def __enter__(self):
        for t in self.threads:
            t.start()
        time.sleep(1)   # let the load settle
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=150)


def largest(ts, checkpoint, long_data, model_config, rounds):
    """The largest request the handler's limits allow (max_texts texts sharing max_total_chars), from long
    documents, on an idle server: its seconds, and its tokens as the model's tokenizer counts them (truncated to
    max_length): the rate behind handler.max_batch_tokens."""
    from textclf.config import ModelConfig
    from textclf.tokenization import load_tokenizer
    limits = read_model_config(model_config)["handler"]
    n, total = int(limits.get("max_texts", 256)), int(limits.get("max_total_chars", 100000))
    docs = [e.text for e in read_examples(long_data)[0]][:n]
    texts = [d[: total // n] for d in docs]
    config = ModelConfig.from_json_file(Path(checkpoint) / "config.json")
    tokenizer = load_tokenizer(Path(checkpoint) / "tokenizer", config.embedding, config.normalization)
    tokens = int(tokenizer.encode(texts, config.max_length)["attention_mask"].sum())
    seconds = [batch(ts, "model", texts)[0] for _ in range(rounds)]
    return {"texts": len(texts), "characters": sum(map(len, texts)), "tokens": tokens,
            "seconds": seconds, "seconds_median": statistics.median(seconds),
            "tokens_per_s_median": tokens / statistics.median(seconds)}


def measure(ts, texts, clients, rounds, load):
    """-> rounds of {"singles", "batch"} timings; with load (a Background), its throughput during each."""
    runs = []
    for _ in tqdm(range(rounds), desc="under load" if load else "idle"):
        row = {}
        for name in ("singles", "batch"):
            before = load.answered if load else 0
            if name == "singles":
                wall, latencies, labels = singles(ts, "model", texts, clients)
                row[name] = {"seconds": wall, "p50_ms": float(np.percentile(latencies, 50)),
                             "p99_ms": float(np.percentile(latencies, 99))}
            else:
                wall, batch_labels = batch(ts, "model", texts)
                row[name] = {"seconds": wall}
            if load:
                row[name]["background_req_per_s"] = (load.answered - before) / wall
        row["label_agreement"] = sum(a == b for a, b in zip(labels, batch_labels)) / len(texts)
        runs.append(row)
    return runs


def summary(runs, n):
    out = {"runs": runs, "label_agreement_min": min(r["label_agreement"] for r in runs)}
    for name in ("singles", "batch"):
        seconds = statistics.median(r[name]["seconds"] for r in runs)
        out[name] = {"seconds_median": seconds, "texts_per_s_median": n / seconds}
        if "background_req_per_s" in runs[0][name]:
            out[name]["background_req_per_s_median"] = statistics.median(r[name]["background_req_per_s"]
                                                                         for r in runs)
    out["singles"]["p50_ms_median"] = statistics.median(r["singles"]["p50_ms"] for r in runs)
    out["speedup"] = out["singles"]["seconds_median"] / out["batch"]["seconds_median"]
    return out


def plot(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n, conditions = result["texts"], ("idle", "under_load")
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    width = 0.38
    for k, (name, label, color) in enumerate((("singles", f"{n} one-text requests, {result['clients']} clients",
                                               "#8da0cb"),
                                              ("batch", f"one request of {n} texts", "#66c2a5"))):
        rates = [result[c][name]["texts_per_s_median"] for c in conditions]
        bars = ax.bar([i + (k - 0.5) * width for i in range(2)], rates, width, label=label, color=color)
        ax.bar_label(bars, [f"{r:.0f}/s" for r in rates], fontsize=8)
    ax.set_xticks(range(2), ["idle server", f"under load ({result['background_clients']} more clients)"])
    ax.set_ylabel("texts classified per second (median)")
    ax.set_title(f"{Path(result['model']).parent.name} on {result['machine']['nproc']} cores of "
                 f"{result['machine']['cpu']}", fontsize=9)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    texts = [e.text for e in read_examples(args.data)[0]][: args.texts]
    if len(texts) < args.texts:
        raise SystemExit(f"{args.data} holds only {len(texts)} texts")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        store = Path(work) / "store"
        store.mkdir()
        archive(args.checkpoint, "model", store, args.model_config)
        with TorchServe(Path(work) / "ts", store, {"model": "model.mar"}) as ts:
            ts.wait_ready("model")
            singles(ts, "model", texts[:64], args.clients)   # warm up both paths
            batch(ts, "model", texts[:64])
            idle = measure(ts, texts, args.clients, args.rounds, None)
            biggest = largest(ts, args.checkpoint, args.long_data, args.model_config, 3)
            with Background(ts, "model", texts, args.background_clients, limit_s=60 * args.rounds) as load:
                loaded = measure(ts, texts, args.clients, args.rounds, load)
            if load.failed:
                raise SystemExit(f"{load.failed} background requests failed")
    result = {
        "command": "python -m benchmarks.batch_requests " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": git_commit(),
        "machine": machine(), "versions": versions(),
        "model": str(args.checkpoint), "model_config": str(args.model_config), "data": str(args.data),
        "texts": args.texts, "clients": args.clients, "rounds": args.rounds,
        "background_clients": args.background_clients,
        "idle": summary(idle, args.texts), "under_load": summary(loaded, args.texts), "largest_request": biggest,
    }
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out / "batch_vs_single.png")
    for condition in ("idle", "under_load"):
        r = result[condition]
        extra = (f"; background {r['singles']['background_req_per_s_median']:.0f} / "
                 f"{r['batch']['background_req_per_s_median']:.0f} req/s meanwhile" if condition == "under_load" else "")
        print(f"{condition}: {args.texts} one-text requests ({args.clients} clients) {r['singles']['seconds_median']:.2f} s"
              f" ({r['singles']['texts_per_s_median']:.0f} texts/s, p50 {r['singles']['p50_ms_median']:.0f} ms); one "
              f"request of {args.texts} texts {r['batch']['seconds_median']:.2f} s "
              f"({r['batch']['texts_per_s_median']:.0f} texts/s){extra}; labels agree {r['label_agreement_min']:.1%}")
    print(f"largest request allowed ({biggest['texts']} texts, {biggest['characters']} characters, "
          f"{biggest['tokens']} tokens), idle: {biggest['seconds_median']:.2f} s "
          f"({biggest['tokens_per_s_median']:.0f} tokens/s)")
    print(f"under load: one request of {args.texts} texts / {args.texts} single requests: "
          f"{result['under_load']['speedup']:.2f} x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
