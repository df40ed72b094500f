"""Data-parallel training with torchrun (2 ranks, gloo, CPU) on the toy data: the ranks end with identical
weights, rank 0 alone writes one set of checkpoints and metrics, evaluation counts every example once, the
result equals a one-process run with the same global batch, --resume works, and a launch with a rank
missing stops with an error instead of hanging."""
import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import PROBE_TEXTS, ROOT, TOY_SIZES
from textclf.predict import Predictor
from train.distributed import Ranks, shard, usable
from train.loop import steps_per_epoch

TORCHRUN = ROOT / ".venv" / "bin" / "torchrun"
ARGS = ["--embedding", "random", "--encoder", "cnn", "--epochs", "3", "--batch-size", "8", "--lr", "1e-2",
        "--num-filters", "8", "--dropout", "0", "--warmup-ratio", "0", "--length-buckets", "2", "--seed", "3"]


def env():
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "WORLD_SIZE", "RANK", "LOCAL_RANK")}


def torchrun(*args, timeout=300):
    return subprocess.run([str(TORCHRUN), "--nproc_per_node", "2", "-m", "train", *args], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def runs(toy_data_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp")
    two = torchrun("--data", str(toy_data_dir), "--out", str(base / "two"), *ARGS)
    one = subprocess.run([sys.executable, "-m", "train", "--data", str(toy_data_dir), "--out", str(base / "one"),
                          "--threads", "1", *ARGS], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    return base, two, one


def test_two_ranks_train_like_one_process(runs):
    base, two, one = runs
    assert two.returncode == 0, two.stderr[-3000:]
    assert one.returncode == 0, one.stderr[-3000:]
    assert "all 2 ranks hold identical weights" in two.stderr
    # the same global batches: the same model, up to the order of float additions
    a = Predictor.from_checkpoint(base / "one" / "checkpoint-last").predict_proba(PROBE_TEXTS)
    b = Predictor.from_checkpoint(base / "two" / "checkpoint-last").predict_proba(PROBE_TEXTS)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_rank_0_alone_writes_and_evaluates_every_example_once(runs):
    base, two, _ = runs
    out = base / "two"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-best",
                                                                                       "checkpoint-last"]
    assert not list(out.glob("*.tmp")) and not list(out.glob("*.old"))
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]            # one line per epoch, not one per rank
    valid = TOY_SIZES["valid"] * 3
    # "valid accuracy 0.9667 (29/30)": once an epoch, over the whole split
    assert len(re.findall(rf"valid accuracy [0-9.]+ \(\d+/{valid}\)", two.stderr)) == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ranks"] == 2 and summary["test_accuracy"] > 0.5
    assert [p["label"] for p in Predictor.from_checkpoint(out / "checkpoint-best").predict(["rain and snow"])]


def test_resume_under_torchrun(runs, toy_data_dir):
    base, _, _ = runs
    done = torchrun("--data", str(toy_data_dir), "--out", str(base / "resumed"), *ARGS[:4], "--epochs", "1",
                    "--resume", str(base / "two" / "checkpoint-last"), "--batch-size", "8", "--lr", "1e-3")
    assert done.returncode == 0, done.stderr[-3000:]
    [record] = [json.loads(line) for line in (base / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert record["epoch"] == 4


def test_a_missing_rank_stops_with_an_error(toy_data_dir, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lone = env() | {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2",
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    done = subprocess.run([sys.executable, "-m", "train", "--data", str(toy_data_dir), "--out", str(tmp_path / "x"),
                           *ARGS, "--dist-timeout", "5"], cwd=ROOT, env=lone, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "rank 0 of 2: the gloo process group did not form within 5 s" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "x" / "checkpoint-best").exists()


def test_global_batches_are_split_over_the_ranks():
    two = Ranks(rank=1, world=2, local_rank=1, local_world=2)
    assert shard(list(range(8)), two) == [1, 3, 5, 7]
    assert usable([4], two) is False and usable([4, 5], two)
    assert steps_per_epoch(61, 8, two) == 8 and steps_per_epoch(57, 8, two) == 7    # a last batch of 1: dropped
    assert steps_per_epoch(57, 8, Ranks()) == 8
