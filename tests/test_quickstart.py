"""./quickstart.sh end to end, training skipped (a checkpoint is already in place, as on a second run): it
picks the optimized variant, packs it, starts TorchServe on 127.0.0.1:8080, answers the curl, and stops only
the TorchServe it started: a TorchServe the user already runs (another temp folder, other ports) keeps serving
through it all. A second run with --fp32 serves the float checkpoint instead.

Runs in a copy of the scripts and model code with the tiny fixture model, and the toy data it was trained on
in place of data/snips (train.optimize measures accuracy on its valid split); needs port 8080 free.
"""
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT
from tsutil import torchserve

FILES = ["quickstart.sh", "setup.sh", "archive.sh", "requirements.txt", "pyproject.toml", "config.properties",
         "handlers", "textclf", "protocol", "train", "serving", "benchmarks"]
MODEL_CONFIG = "minWorkers: 1\nmaxWorkers: 1\nbatchSize: 4\nmaxBatchDelay: 5\nresponseTimeout: 30\n" \
               "handler:\n  torch_threads: 1\n"


def test_the_epoch_time_it_announces_is_the_committed_quickstart_run():
    """quickstart.sh's training line quotes results/quickstart-run (the fresh run of this very command)."""
    line = next(line for line in (ROOT / "quickstart.sh").read_text().splitlines() if "== training" in line)
    seconds, where = re.search(r"one epoch: (\d+) s on .* in (results/[\w/-]+)", line).groups()
    best = json.loads((ROOT / where / "summary.json").read_text())["best"]
    assert int(seconds) == round(best["epoch_seconds"]), (line, best)


def port_taken(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def repo_copy(tmp_path, tiny_ckpt, toy_data_dir):
    # The copy shares this checkout's .venv: its setup.sh must find the venv up to date, or it would install
    # the copy (editable) into it.
    stamp = ROOT / ".venv" / ".requirements.sha256"
    want = hashlib.sha256(b"".join((ROOT / f).read_bytes() for f in ("requirements.txt", "pyproject.toml")))
    if not stamp.is_file() or stamp.read_text().strip() != want.hexdigest():
        pytest.skip(".venv is not set up for this checkout's requirements: run ./setup.sh first")
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in filter(lambda f: (ROOT / f).exists(), FILES):   # protocol/: where archive.sh packs it too
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(ROOT / name, repo / name)
    (repo / ".venv").symlink_to(ROOT / ".venv")
    shutil.copytree(tiny_ckpt, repo / "runs" / "snips-minilm-cls" / "checkpoint-best")
    shutil.copytree(toy_data_dir, repo / "data" / "snips")
    (repo / "handlers" / "model-config.yaml").write_text(MODEL_CONFIG)
    yield repo
    stop(repo, check=False)
    shutil.rmtree(private_tmp(repo), ignore_errors=True)


def private_tmp(repo):
    """The temp folder quickstart.sh gives its TorchServe (named after the checkout's path)."""
    digest = hashlib.sha256(str(repo).encode()).hexdigest()[:10]
    return Path(f"/tmp/textclf-ts-{os.getuid()}-{digest}")


def stop(repo, check=True):
    """The stop command quickstart.sh prints: the harness stops the server whose pid file is in the private temp."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "serving.torchserve", "stop", "--tmp",
                    str(private_tmp(repo))], cwd=repo, env=env, timeout=120, check=check, capture_output=True)


def quickstart(repo, *args):
    """-> (exit code, what it printed). Output goes to a file: a server left running must not hold our pipe."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TMPDIR")}
    log = repo / "quickstart.log"
    with open(log, "w") as out:
        rc = subprocess.run(["bash", "quickstart.sh", *args], cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, timeout=400).returncode
    return rc, log.read_text()


@pytest.mark.serving
def test_quickstart_serves_and_stops_only_its_own_torchserve(repo_copy, tiny_ckpt, tmp_path):
    if port_taken(8080):
        pytest.skip("port 8080 on 127.0.0.1 is taken; quickstart.sh serves there")
    base = tmp_path / "users-own"
    base.mkdir()
    (base / "model-config.yaml").write_text(MODEL_CONFIG)
    with torchserve(base, {"theirs": tiny_ckpt}, base / "model-config.yaml") as theirs:
        rc, out = quickstart(repo_copy)
        assert rc == 0, out[-4000:]
        assert '"label"' in out and "expires" in out
        optimized = repo_copy / "runs" / "snips-minilm-cls" / "optimized"
        chosen = json.loads((optimized / "optimize.json").read_text())["chosen"]
        assert f"== serving {chosen} (table: runs/snips-minilm-cls/optimized/optimize.md" in out
        assert "== packaging runs/snips-minilm-cls/optimized" in out
        assert theirs.predict(data=b"rain").status_code == 200
        # a second run stops the first run's server (its own) and serves again, the float checkpoint this time
        rc, out = quickstart(repo_copy, "--fp32")
        assert rc == 0, out[-4000:]
        assert "stopping the TorchServe an earlier ./quickstart.sh started" in out and '"label"' in out
        assert "== packaging runs/snips-minilm-cls/checkpoint-best" in out and "choosing the fastest" not in out
        assert theirs.predict(data=b"rain").status_code == 200
        assert quickstart(repo_copy, "--gpu")[0] == 2   # an unknown flag: usage, nothing started
        # the stop command it prints stops it, and only it
        assert f".venv/bin/python -m serving.torchserve stop --tmp {private_tmp(repo_copy)}" in out
        stop(repo_copy)
        deadline = time.monotonic() + 30   # the port closes as the frontend exits
        while port_taken(8080) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not port_taken(8080)
        assert theirs.predict(data=b"rain").status_code == 200
