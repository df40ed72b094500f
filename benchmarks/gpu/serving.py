"""python -m benchmarks.gpu.serving MAR (from the repository root): the repository's TorchServe setup (serving/torchserve.py,
config.properties, a .mar made by archive.sh) with GPU workers (number_of_gpu=1), then the same with CPU
workers (number_of_gpu=0) on the same machine: one answer, two bad inputs, which device each worker loaded
on, and 12 s of load from 127.0.0.1 at 1, 8, 32 and 64 users. Writes $OUT/serving-gpu.json."""
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.common import machine
from serving.torchserve import TorchServe, log_tail

ROOT = Path(__file__).resolve().parents[2]

OUT = Path(os.environ["OUT"])
MAR = Path(sys.argv[1]).resolve()
MODEL = "snips"
TEXTS = [line.split("\t")[0].strip() for line in (ROOT / "data/snips/test.txt").read_text().splitlines() if line.strip()]
t0 = time.time()


def log(*a):
    print(f"[{time.time() - t0:.0f}s]", *a, flush=True)


def smi(query):
    try:
        return subprocess.run(["nvidia-smi", query, "--format=csv,noheader"], capture_output=True,
                              text=True).stdout.strip()
    except OSError as e:
        return repr(e)


def load(ts, users, seconds):
    """`users` threads, each sending one text after another for `seconds`; -> throughput and latency."""
    import requests
    lat, codes, lock = [], {}, threading.Lock()
    stop = time.monotonic() + seconds
    headers = {**ts.auth(), "Content-Type": "text/plain"}
    url = f"{ts.inference}/predictions/{MODEL}"

    def user(i):
        s = requests.Session()
        k = i
        while time.monotonic() < stop:
            text = TEXTS[k % len(TEXTS)].encode()
            k += users
            start = time.perf_counter()
            try:
                code = s.post(url, data=text, headers=headers, timeout=30).status_code
            except requests.RequestException as e:
                code = type(e).__name__
            with lock:
                lat.append(time.perf_counter() - start)
                codes[code] = codes.get(code, 0) + 1
    threads = [threading.Thread(target=user, args=(i,)) for i in range(users)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    lat.sort()
    q = lambda p: round(1000 * lat[min(len(lat) - 1, int(p * len(lat)))], 1)   # noqa: E731
    return {"users": users, "seconds": round(wall, 1), "requests": len(lat),
            "req_per_s": round(len(lat) / wall, 1), "p50_ms": q(0.5), "p95_ms": q(0.95), "p99_ms": q(0.99),
            "codes": {str(k): v for k, v in codes.items()}}


def serve(mode, gpus):
    work = Path(f"/tmp/ts-{mode}")
    result = {"mode": mode, "number_of_gpu": gpus}
    with TorchServe(work, MAR.parent, {MODEL: MAR.name}, {"number_of_gpu": str(gpus)}) as ts:
        result["ready_seconds"] = round(ts.wait_ready(MODEL, timeout=180), 1)
        r = ts.predict(MODEL, b"play some jazz by miles davis on spotify")
        result["answer"] = {"status": r.status_code, "body": r.json()}
        log(mode, "answer", r.status_code, r.text[:200])
        bad = ts.predict(MODEL, b"   ")
        result["blank_text"] = {"status": bad.status_code, "body": bad.text[:300]}
        bad = ts.predict(MODEL, b"\xff\xfe not utf-8")
        result["not_utf8"] = {"status": bad.status_code, "body": bad.text[:300]}
        log(mode, "bad input", result["blank_text"], result["not_utf8"])
        loaded = [line for f in (ts.cwd / "logs").glob("model_log.log*") for line in f.read_text().splitlines()
                  if "loaded" in line and " on " in line]
        result["worker_log"] = loaded[:4]
        log(mode, "workers:", *loaded[:4])
        if gpus:
            result["nvidia_smi_compute_apps"] = smi("--query-compute-apps=pid,used_memory")
            log(mode, "nvidia-smi apps:", result["nvidia_smi_compute_apps"])
        result["load"] = []
        for users in (1, 8, 32, 64):
            res = load(ts, users, 12)
            result["load"].append(res)
            log(mode, res)
        result["workers_after"] = ts.worker_states(MODEL)
        log(mode, "worker states after load:", result["workers_after"])
    return result


if __name__ == "__main__":
    results = {"machine": smi("--query-gpu=name"), "cpu": machine(), "mar": MAR.name, "runs": []}
    for mode, gpus in (("gpu", 1), ("cpu", 0)):
        try:
            results["runs"].append(serve(mode, gpus))
        except Exception as e:   # keep what the other mode finds
            log(mode, "FAILED:", repr(e)[:3000])
            results["runs"].append({"mode": mode, "error": repr(e)[:3000]})
        (OUT / "serving-gpu.json").write_text(json.dumps(results, indent=2) + "\n")
    for mode in ("gpu", "cpu"):
        (OUT / f"logs-{mode}.txt").write_text(log_tail(Path(f"/tmp/ts-{mode}/cwd"), lines=60))
    log("done")
