"""python -m benchmarks.latency CKPT [CKPT ...] [--delays 5 1] [--requests 300] [--out results/latency-1user]

Where one user's time goes: for each checkpoint and each maxBatchDelay, a private TorchServe (the project's
config.properties and handlers/model-config.yaml with that delay) on free 127.0.0.1 ports answers --requests
sentences of data/snips/test.txt sent one at a time, as one user does. The client's latencies (p50, p90) are
set beside TorchServe's own metrics, per request: ts_queue_latency (waiting for a worker and for the batch to
fill), HandlerTime (the Python handler: parse, tokenize, forward, answer), the handler's tokenize and forward
milliseconds (textclf_* counters), and the rest of ts_inference_latency (the Java frontend and the socket to
the worker). Writes latency.json and latency.md into --out and prints the table.
"""
import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import git_commit, machine, versions
from serving.torchserve import ROOT, TorchServe, archive

WARMUP = 20


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="*", type=Path)
    p.add_argument("--delays", type=int, nargs="+", default=[5, 1], help="maxBatchDelay values (ms) to compare")
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--data", type=Path, default=ROOT / "data" / "snips" / "test.txt")
    p.add_argument("--model-config", type=Path, default=ROOT / "handlers" / "model-config.yaml")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "latency-1user")
    p.add_argument("--table", action="store_true", help="only rewrite OUT/latency.md from OUT/latency.json")
    args = p.parse_args(argv)
    if not args.checkpoints and not args.table:
        p.error("give at least one checkpoint folder")
    return args


def metric_sums(text):
    """name -> sum over its series of a Prometheus text page (histogram buckets left out)."""
    sums = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name = re.split(r"[{ ]", line, 1)[0]
        try:
            sums[name] = sums.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        except ValueError:
            continue
    return sums


def measure(checkpoint, delay, texts, model_config, work):
    import requests
    config, found = re.subn(r"(?m)^maxBatchDelay: *\d+", f"maxBatchDelay: {delay}", model_config.read_text())
    if found != 1:
        raise SystemExit(f"{model_config}: expected one 'maxBatchDelay:' line, found {found}")
    (work / "model-config.yaml").write_text(config)
    store = work / "store"
    store.mkdir()
    archive(checkpoint, "m", store, work / "model-config.yaml")
    with TorchServe(work / "ts", store, {"m": "m.mar"}) as ts:
        ts.wait_ready("m")
        session = requests.Session()
        headers = {**ts.auth(), "Content-Type": "text/plain"}
        url = f"{ts.inference}/predictions/m"
        metrics_url = ts.config["metrics_address"] + "/metrics"
        for text in texts[:WARMUP]:
            session.post(url, data=text.encode(), headers=headers, timeout=60).raise_for_status()
        before = metric_sums(session.get(metrics_url, timeout=30).text)
        latencies = []
        for text in texts:
            started = time.perf_counter()
            r = session.post(url, data=text.encode(), headers=headers, timeout=60)
            latencies.append((time.perf_counter() - started) * 1e3)
            r.raise_for_status()
        after = metric_sums(session.get(metrics_url, timeout=30).text)
    n = len(texts)

    def per_request(name, scale=1.0):
        return round((after.get(name, 0.0) - before.get(name, 0.0)) * scale / n, 3)

    latencies.sort()
    row = {"checkpoint": str(checkpoint), "max_batch_delay_ms": delay, "requests": n,
           "client_p50_ms": round(statistics.median(latencies), 2),
           "client_p90_ms": round(latencies[int(0.9 * (n - 1))], 2),
           "client_mean_ms": round(statistics.fmean(latencies), 2),
           "queue_ms": per_request("ts_queue_latency_microseconds", 1e-3),
           "inference_ms": per_request("ts_inference_latency_microseconds", 1e-3),
           "tokenize_ms": per_request("textclf_tokenize_milliseconds_total"),
           "forward_ms": per_request("textclf_forward_milliseconds_total")}
    # HandlerTime is a gauge of the last batch in 0.12, not a counter: the handler's share is taken from the
    # inference latency instead (inference - queue = the time after a worker took the batch)
    row["worker_ms"] = round(row["inference_ms"] - row["queue_ms"], 3)
    row["handler_rest_ms"] = round(row["worker_ms"] - row["tokenize_ms"] - row["forward_ms"], 3)
    row["outside_ms"] = round(row["client_mean_ms"] - row["inference_ms"], 3)
    return row


def label(checkpoint):
    """runs/NAME/checkpoint-best -> NAME/checkpoint-best: the run names the model."""
    path = Path(checkpoint)
    return f"{path.parent.name}/{path.name}"


def table(rows):
    lines = ["| checkpoint | maxBatchDelay ms | client p50 ms | p90 ms | mean ms | queue + batch wait ms | "
             "worker ms | of which tokenize | of which forward | rest of worker (IPC, parse, answer) | "
             "outside TorchServe's timing (HTTP, client) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {label(r['checkpoint'])} | {r['max_batch_delay_ms']} | {r['client_p50_ms']} | "
                     f"{r['client_p90_ms']} | {r['client_mean_ms']} | {r['queue_ms']} | {r['worker_ms']} | "
                     f"{r['tokenize_ms']} | {r['forward_ms']} | {r['handler_rest_ms']} | {r['outside_ms']} |")
    return lines


def write_table(out, result):
    m, rows = result["machine"], result["rows"]
    text = "\n".join([f"Machine: {m['nproc']} cores, {m['cpu']}, flags {', '.join(m.get('flags', []))}. "
                      f"Command: `{result['command']}`. One user, {rows[0]['requests']} requests of "
                      f"{Path(result['data']).name} sentences, text/plain, after {WARMUP} to warm up; per-request "
                      "means from TorchServe's metrics.", "", *table(rows)]) + "\n"
    (out / "latency.md").write_text(text)
    return text


def main(argv=None):
    args = parse_args(argv)
    if args.table:
        print(write_table(args.out, json.loads((args.out / "latency.json").read_text())), end="")
        return 0
    from textclf.data import read_examples
    examples, _ = read_examples(args.data)
    texts = [e.text for e in examples][: args.requests]
    rows = []
    for checkpoint in args.checkpoints:
        for delay in args.delays:
            with tempfile.TemporaryDirectory(prefix="latency-") as work:
                rows.append(measure(checkpoint.resolve(), delay, texts, args.model_config, Path(work)))
            print("\n".join(table(rows[-1:])[2:]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.latency " + " ".join(sys.argv[1:] if argv is None else argv)
    result = {"command": command, "machine": machine(), "versions": versions(), "commit": git_commit(),
              "model_config": str(args.model_config), "data": str(args.data), "rows": rows}
    (args.out / "latency.json").write_text(json.dumps(result, indent=2) + "\n")
    print(write_table(args.out, result), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
