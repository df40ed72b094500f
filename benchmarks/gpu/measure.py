"""The GPU measurement in one prepared run (issue: the transformer on GPU workers). benchmarks/gpu/measure.sh
stages what a lent machine lacks and calls `run`; `prepare` runs here first. See benchmarks/gpu/README.md.

python -m benchmarks.gpu.measure prepare --checkpoint CKPT --carry DIR
    here, on CPU: DIR/ckpt16 (the checkpoint with float16 weights: what travels) and DIR/reference.json
    (this machine's float32 probabilities for the Snips test sentences, the labels the GPU must agree with)
python -m benchmarks.gpu.measure run --checkpoint DIR/ckpt16 --reference DIR/reference.json --out OUT [--small]
    there: every figure below, written to OUT/summary.json (keys device, ceiling_encoder_ex_s,
    served_p50_ms_1user, served_req_s_64users, served_texts_s_64x64, bulk_lines_s, label_agreement) and
    OUT/measure.json (everything, per stage); a stage that fails records its error and the rest still run.
    --small: the same steps scaled down (few texts and requests, seconds of load) so that a CPU rehearses
    the whole script (tests/test_gpu_measure.py) before device minutes are spent on it.

Stages: the in-process ceiling (the encoder alone on pre-tokenized batches, and one text at a time), label
agreement with the CPU's float32, the tokenizer alone in one process, bulk train.predict on Snips-like lines,
and TorchServe with GPU workers (./archive.sh --gpu): one answer, bad inputs, p50 at 1 user, req/s at 1..256
users, and 64-text requests at 64 users.
"""
import argparse
import http.client
import json
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, git_commit, machine, versions

SNIPS_TEST = ROOT / "data" / "snips" / "test.txt"
SNIPS_TRAIN = ROOT / "data" / "snips" / "train.txt"
MODEL = "snips"
SCALES = {
    "full": dict(ceiling_batch=2048, ceiling_repeats=20, batch1_repeats=200, agreement_texts=0, tokenizer_texts=100_000,
                 bulk_lines=1_000_000, tokenize_workers=8, p50_requests=500, load_seconds=15,
                 users=(1, 8, 64, 128, 256), many_users=64, many_texts=64, load_processes=12),
    "small": dict(ceiling_batch=64, ceiling_repeats=2, batch1_repeats=5, agreement_texts=40, tokenizer_texts=2000,
                  bulk_lines=3000, tokenize_workers=2, p50_requests=10, load_seconds=2,
                  users=(1, 4), many_users=4, many_texts=8, load_processes=2),
}
t0 = time.time()


def log(*parts):
    print(f"[{time.time() - t0:5.0f}s]", *parts, flush=True)


def snips_texts(path):
    return [line.split("\t")[0].strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def nvidia_smi(query):
    try:
        return subprocess.run(["nvidia-smi", f"--query-{query}", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({type(e).__name__})"


def device_name():
    import torch
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU: {machine()['cpu']}"


# ---- here: what travels

def prepare(args):
    """DIR/ckpt16 (weights in float16: half the bytes) and DIR/reference.json (float32 CPU probabilities)."""
    from safetensors.torch import load_file, save_file
    from textclf.predict import Predictor
    carry, src = Path(args.carry), Path(args.checkpoint)
    dst = carry / "ckpt16"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.png", "eval-*", "optimize*"))
    state = load_file(str(src / "model.safetensors"))
    save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, str(dst / "model.safetensors"),
              metadata={"format": "pt"})
    texts = snips_texts(SNIPS_TEST)
    probs = Predictor.from_checkpoint(src).predict_proba(texts)
    reference = {"checkpoint": str(src), "machine": machine(), "texts": texts, "probabilities": probs.tolist()}
    (carry / "reference.json").write_text(json.dumps(reference) + "\n", encoding="utf-8")
    size = sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())
    print(f"{dst}: {size / 1e6:.1f} MB; {carry / 'reference.json'}: {len(texts)} texts")
    return 0


# ---- there: the stages

def stage_model(ckpt, reference, scale, device):
    """Label agreement with the CPU's float32, and the in-process ceiling of the encoder on this device."""
    import torch
    from textclf.predict import Predictor
    predictor = Predictor.from_checkpoint(ckpt, device)
    if predictor.device.type == "cpu":
        predictor.cast("bf16")   # the rehearsal: the half-precision path, on the CPU
    texts, want = reference["texts"], np.array(reference["probabilities"], dtype=np.float32)
    if scale["agreement_texts"]:
        texts, want = texts[:scale["agreement_texts"]], want[:scale["agreement_texts"]]
    got = predictor.predict_proba(texts, batch_size=256)
    agree = float((got.argmax(1) == want.argmax(1)).mean())
    result = {"precision": predictor.precision, "texts": len(texts), "label_agreement": agree,
              "max_score_difference": float(np.abs(got - want).max())}
    log("agreement", result)
    pool = snips_texts(SNIPS_TEST)
    batch = [pool[i % len(pool)] for i in range(scale["ceiling_batch"])]
    encoded = {k: v.to(predictor.device) for k, v in predictor.tokenizer.encode(batch, predictor.max_length).items()}
    one = {k: v[:1] for k, v in encoded.items()}

    def timed(inputs, repeats):
        with torch.inference_mode():
            for _ in range(2):
                predictor.forward(inputs)
            sync(predictor.device)
            started = time.perf_counter()
            for _ in range(repeats):
                predictor.forward(inputs)
            sync(predictor.device)
        return (time.perf_counter() - started) / repeats
    per_batch = timed(encoded, scale["ceiling_repeats"])
    result.update(ceiling_batch=len(batch), ceiling_tokens=int(encoded["attention_mask"].shape[1]),
                  ceiling_encoder_ex_s=round(len(batch) / per_batch, 1),
                  batch1_forward_ms=round(1000 * timed(one, scale["batch1_repeats"]), 3))
    log("ceiling", result)
    predictor = encoded = one = None   # free the device memory before the next stages
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def sync(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stage_tokenizer(ckpt, scale):
    """Texts/s of the fast tokenizer in one process: what one tokenizing process can feed a device."""
    from textclf.checkpoint import check_folder
    from textclf.tokenization import load_tokenizer
    config = check_folder(ckpt)
    tokenizer = load_tokenizer(Path(ckpt) / "tokenizer", config.embedding, config.normalization)
    pool = snips_texts(SNIPS_TRAIN)
    texts = [pool[i % len(pool)] for i in range(scale["tokenizer_texts"])]
    started = time.perf_counter()
    for i in range(0, len(texts), 512):
        tokenizer.encode(texts[i: i + 512], 128)
    rate = len(texts) / (time.perf_counter() - started)
    log("tokenizer", round(rate), "texts/s in one process")
    return {"texts": len(texts), "one_process_texts_s": round(rate, 1)}


def stage_bulk(ckpt, scale, device, work):
    """python -m train.predict --input/--output on Snips-like lines (train sentences drawn with a fixed seed)."""
    rng = random.Random(0)
    pool = snips_texts(SNIPS_TRAIN)
    source, out = work / "bulk-input.txt", work / "bulk-output.jsonl"
    with source.open("w", encoding="utf-8") as f:
        for _ in range(scale["bulk_lines"]):
            f.write(rng.choice(pool) + "\n")
    command = [sys.executable, "-m", "train.predict", "--checkpoint", str(ckpt), "--input", str(source),
               "--output", str(out), "--device", device, "--batch-size", "512", "--overwrite",
               "--tokenize-workers", str(scale["tokenize_workers"])]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"bulk exited with {done.returncode}: {done.stderr[-2000:]}")
    with out.open(encoding="utf-8") as f:
        written = sum(1 for _ in f)
    result = {"lines": scale["bulk_lines"], "written": written, "seconds": round(wall, 2),
              "bulk_lines_s": round(scale["bulk_lines"] / wall, 1), "tokenize_workers": scale["tokenize_workers"],
              "command": " ".join(command[1:]), "last_line": done.stderr.strip().splitlines()[-1:]}
    log("bulk", result)
    source.unlink()
    out.unlink()
    return result


# ---- the load client: processes x threads, one kept-alive connection per thread

def _user(args):
    host, port, path, headers, bodies, seconds, barrier_at = args
    conn = http.client.HTTPConnection(host, port, timeout=60)
    latencies, codes, k = [], {}, 0
    while time.time() < barrier_at:
        time.sleep(0.001)
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        body = bodies[k % len(bodies)]
        k += 1
        started = time.perf_counter()
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            code = response.status
        except (OSError, http.client.HTTPException) as e:
            code = type(e).__name__
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=60)
        latencies.append(time.perf_counter() - started)
        codes[str(code)] = codes.get(str(code), 0) + 1
    conn.close()
    return latencies, codes


def _process(args):
    users, user_args = args
    results = [None] * users
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, _user(user_args))) for i in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def load(url, headers, bodies, users, seconds, processes):
    """req/s and latency percentiles of `users` clients sending bodies one after another for `seconds`."""
    from urllib.parse import urlsplit
    parts = urlsplit(url)
    processes = max(1, min(processes, users))
    share = [users // processes + (1 if i < users % processes else 0) for i in range(processes)]
    start_at = time.time() + 1.0
    job = (parts.hostname, parts.port, parts.path, headers, bodies, seconds, start_at)
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        per_process = pool.map(_process, [(n, job) for n in share])
    latencies, codes = [], {}
    for result in per_process:
        for lat, c in result:
            latencies.extend(lat)
            for code, n in c.items():
                codes[code] = codes.get(code, 0) + n
    lat = np.array(latencies) * 1000
    return {"users": users, "seconds": seconds, "requests": len(lat), "req_s": round(len(lat) / seconds, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2), "p95_ms": round(float(np.percentile(lat, 95)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2), "codes": codes,
            "failures": sum(n for code, n in codes.items() if code != "200")}


def stage_serving(ckpt, scale, work):
    from serving.torchserve import TorchServe, archive
    store = work / "store"
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(parents=True)
    archive(ckpt, MODEL, store, gpu=True)
    result = {}
    with TorchServe(work / "ts", store, {MODEL: f"{MODEL}.mar"}) as ts:
        result["ready_seconds"] = round(ts.wait_ready(MODEL, timeout=300), 1)
        answer = ts.predict(MODEL, json.dumps({"text": "play some jazz by miles davis"}).encode(), "application/json")
        result["answer"] = {"status": answer.status_code, "body": answer.json()}
        result["bad_inputs"] = [
            {"status": r.status_code, "body": r.json() if r.headers.get("content-type", "").startswith("application/json")
             else r.text[:200]}
            for r in (ts.predict(MODEL, b"   "), ts.predict(MODEL, b"\xff\xfe not utf-8"),
                      ts.predict(MODEL, b'{"text": 42}', "application/json"))]
        result["worker_log"] = [line.split("INFO", 1)[-1].strip()[:300] for f in sorted(ts.log_dir.glob("model_log*"))
                                for line in f.read_text(errors="replace").splitlines()
                                if "loaded " in line and " on " in line][:8]
        result["nvidia_smi_apps"] = nvidia_smi("compute-apps=pid,used_memory")
        log("serving", {k: result[k] for k in ("ready_seconds", "answer", "bad_inputs", "worker_log")})
        url = f"{ts.inference}/predictions/{MODEL}"
        headers = {**ts.auth(), "Content-Type": "text/plain"}
        texts = [t.encode() for t in snips_texts(SNIPS_TEST)]
        result["p50_1user"] = one_user(ts, texts[: scale["p50_requests"]])
        log("1 user", result["p50_1user"])
        result["load"] = []
        for users in scale["users"]:
            result["load"].append(load(url, headers, texts, users, scale["load_seconds"], scale["load_processes"]))
            log("load", result["load"][-1])
        n = scale["many_texts"]
        many = [json.dumps({"texts": [t.decode() for t in texts[i: i + n]]}).encode()
                for i in range(0, len(texts) - n + 1, n)]
        run = load(url, {**headers, "Content-Type": "application/json"}, many, scale["many_users"],
                   scale["load_seconds"], scale["load_processes"])
        run["texts_per_request"], run["texts_s"] = n, round(run["req_s"] * n, 1)
        result["many"] = run
        log("many texts", run)
        result["workers_after"] = ts.worker_states(MODEL)
    return result


def one_user(ts, bodies):
    latencies, codes = [], {}
    for body in bodies:
        started = time.perf_counter()
        code = ts.predict(MODEL, body).status_code
        latencies.append(1000 * (time.perf_counter() - started))
        codes[str(code)] = codes.get(str(code), 0) + 1
    return {"requests": len(bodies), "p50_ms": round(float(np.percentile(latencies, 50)), 2),
            "p95_ms": round(float(np.percentile(latencies, 95)), 2), "codes": codes}


# ---- the run

def summarize(record):
    """The keys the issue asks for, None where a stage failed."""
    def pick(stage, key):
        return (record.get(stage) or {}).get(key)
    load_at = {r["users"]: r for r in (record.get("serving") or {}).get("load", [])}
    top = max(load_at) if load_at else None
    return {"device": record["device"], "ceiling_encoder_ex_s": pick("model", "ceiling_encoder_ex_s"),
            "served_p50_ms_1user": ((record.get("serving") or {}).get("p50_1user") or {}).get("p50_ms"),
            "served_req_s_64users": (load_at.get(64) or load_at.get(top) or {}).get("req_s"),
            "served_texts_s_64x64": ((record.get("serving") or {}).get("many") or {}).get("texts_s"),
            "bulk_lines_s": pick("bulk", "bulk_lines_s"), "label_agreement": pick("model", "label_agreement"),
            "scale": record["scale"], "errors": {k: v for k, v in record.get("errors", {}).items()}}


def run(args):
    import torch
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    scale = SCALES["small" if args.small else "full"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    reference = json.loads(Path(args.reference).read_text(encoding="utf-8"))
    record = {"device": device_name(), "scale": "small" if args.small else "full", "torch_device": device,
              "gpu": nvidia_smi("gpu=name,memory.total,driver_version"), "cuda": torch.version.cuda,
              "machine": machine(), "versions": versions(), "commit": git_commit(),
              "reference_machine": reference.get("machine"), "command": " ".join(sys.argv), "errors": {}}
    stages = [("model", lambda: stage_model(args.checkpoint, reference, scale, device)),
              ("tokenizer", lambda: stage_tokenizer(args.checkpoint, scale)),
              ("bulk", lambda: stage_bulk(args.checkpoint, scale, device, work)),
              ("serving", lambda: stage_serving(args.checkpoint, scale, work))]
    for name, stage in stages:
        if args.only and name not in args.only.split(","):
            continue
        try:
            record[name] = stage()
        except Exception as e:   # keep what the other stages find
            log(name, "FAILED:", repr(e)[:3000])
            record["errors"][name] = repr(e)[:3000]
        (out / "measure.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        (out / "summary.json").write_text(json.dumps(summarize(record), indent=2) + "\n", encoding="utf-8")
    log("summary", json.dumps(summarize(record)))
    return 0 if not record["errors"] else 1


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="verb", required=True)
    pp = sub.add_parser("prepare")
    pp.add_argument("--checkpoint", required=True)
    pp.add_argument("--carry", default=".devcarry")
    pr = sub.add_parser("run")
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("--reference", required=True)
    pr.add_argument("--out", required=True)
    pr.add_argument("--work", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "textclf-gpu-measure"))
    pr.add_argument("--small", action="store_true", help="scaled down: a CPU rehearsal of every step")
    pr.add_argument("--only", default="", help="comma-separated stages: model,tokenizer,bulk,serving")
    args = p.parse_args(argv)
    return prepare(args) if args.verb == "prepare" else run(args)


if __name__ == "__main__":
    sys.exit(main())
