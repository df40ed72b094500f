"""`python -m train.optimize`: builds the candidate variants, measures each on the valid split and on this CPU,
keeps the fastest within the tolerance, writes its table, and refuses what it cannot optimize."""
import json

import numpy as np
import pytest

from conftest import run_failing_cli
from textclf.config import ModelConfig
from textclf.predict import Predictor
from train import optimize
from train.optimize import choose, main


@pytest.fixture(scope="module")
def optimized(tmp_path_factory, tiny_ckpt, toy_data_dir):
    out = tmp_path_factory.mktemp("optimize") / "chosen"
    rc = main(["--checkpoint", str(tiny_ckpt), "--data", str(toy_data_dir), "--out", str(out),
               "--latency-examples", "10", "--threads", "1", "--batch-size", "8"])
    assert rc == 0
    return out


def test_every_candidate_is_measured_or_skipped_with_a_reason(optimized, toy_data_dir):
    report = json.loads((optimized / "optimize.json").read_text())
    names = [r["name"] for r in report["rows"]]
    assert names == list(optimize.CANDIDATES)
    total = sum(1 for line in (toy_data_dir / "valid.txt").read_text().splitlines() if line.strip())
    for row in report["rows"]:
        if "skipped" in row:
            assert row["name"] == "bf16" and not report["bf16"], row   # only bf16 may be skipped, on CPUs without it
            continue
        assert row["total"] == total and 0 <= row["accuracy"] <= 1
        assert row["examples_per_second"] > 0 and row["ms_batch1"] > 0 and row["weights_mb"] > 0
    assert (report["threads"], report["batch_size"]) == (1, 8)
    assert "flags" in report["machine"] or "cpu" in report["machine"]


def test_the_chosen_variant_is_the_fastest_within_the_tolerance(optimized):
    report = json.loads((optimized / "optimize.json").read_text())
    measured = [r for r in report["rows"] if "accuracy" in r]
    fp32 = next(r for r in measured if r["name"] == "fp32")
    eligible = [r for r in measured if r["accuracy"] >= fp32["accuracy"] - 0.003 - 1e-9]
    assert [r["eligible"] for r in measured] == [r in eligible for r in measured]
    best = max(eligible, key=lambda r: r["examples_per_second"])
    assert report["chosen"] == best["name"]
    table = (optimized / "optimize.md").read_text()
    chosen_line = next(line for line in table.splitlines() if "**chosen**" in line)
    assert chosen_line.startswith(f"| {best['name']} |")
    assert f"Chosen: **{best['name']}**" in table


def test_the_chosen_folder_is_a_checkpoint_that_answers_like_its_row(optimized, toy_data_dir):
    report = json.loads((optimized / "optimize.json").read_text())
    row = next(r for r in report["rows"] if r["name"] == report["chosen"])
    config = ModelConfig.from_json_file(optimized / "config.json")
    runtime = {"fp32": ("torch", "fp32"), "bf16": ("torch", "bf16")}.get(row["name"], ("onnx", "fp32"))
    assert (config.runtime, config.precision) == runtime
    from textclf.data import read_examples
    examples, _ = read_examples(toy_data_dir / "valid.txt")
    predictor = Predictor.from_checkpoint(optimized)
    probs = predictor.predict_proba([e.text for e in examples])
    correct = sum(predictor.labels[i] == e.label for i, e in zip(probs.argmax(axis=1), examples))
    assert correct == row["correct"]
    assert not list(optimized.parent.glob("chosen.candidates*")), "candidate folders left behind"


def test_choose_prefers_speed_only_within_the_tolerance():
    rows = [{"name": "fp32", "accuracy": 0.9000, "examples_per_second": 100.0},
            {"name": "fast-but-worse", "accuracy": 0.8960, "examples_per_second": 500.0},   # -0.40 points
            {"name": "faster", "accuracy": 0.8975, "examples_per_second": 300.0},            # -0.25 points
            {"name": "slower", "accuracy": 0.9100, "examples_per_second": 200.0},
            {"name": "bf16", "skipped": "this CPU has no AVX-512 BF16 or AMX"}]
    assert choose(rows, 0.3)["name"] == "faster"
    assert choose(rows, 0.5)["name"] == "fast-but-worse"
    assert choose(rows, 0.0)["name"] == "slower"
    assert choose(rows[:1], 0.3)["name"] == "fp32"


def test_word_embedding_models_skip_fusions_and_cpus_without_bf16_skip_bf16(glove_cnn_ckpt, toy_data_dir,
                                                                            tmp_path, monkeypatch):
    monkeypatch.setattr(optimize, "cpu_flags", lambda: {"avx2", "fma"})
    out = tmp_path / "glove"
    assert main(["--checkpoint", str(glove_cnn_ckpt), "--data", str(toy_data_dir), "--out", str(out),
                 "--latency-examples", "5", "--threads", "1", "--batch-size", "8"]) == 0
    rows = {r["name"]: r for r in json.loads((out / "optimize.json").read_text())["rows"]}
    assert rows["onnx-fused"]["skipped"] == rows["onnx-fused-int8"]["skipped"] == "word embeddings: nothing to fuse"
    assert rows["bf16"]["skipped"] == "this CPU has no AVX-512 BF16 or AMX"
    assert {"accuracy", "examples_per_second"} <= set(rows["onnx-int8"])
    assert "| onnx-fused | | | | | | | skipped: word embeddings: nothing to fuse |" in (out / "optimize.md").read_text()
    probs = Predictor.from_checkpoint(out).predict_proba(["play some jazz"])
    assert probs.shape == (1, len(json.loads((glove_cnn_ckpt / "labels.json").read_text())))
    assert np.isclose(probs.sum(), 1, atol=1e-5)


def test_optimizing_an_export_exits_2(exported, tiny_ckpt, toy_data_dir, tmp_path, caplog, capfd):
    onnx = exported(tiny_ckpt, "--onnx")
    rc, text = run_failing_cli(main, capfd, caplog, ["--checkpoint", str(onnx), "--data", str(toy_data_dir),
                                                     "--out", str(tmp_path / "out")])
    assert rc == 2 and "already an export (onnx, fp32)" in text and "optimize the float checkpoint" in text
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["inside", "above", "same"])
def test_out_inside_or_above_the_checkpoint_exits_2_and_deletes_nothing(ckpt_copy, toy_data_dir, caplog, capfd,
                                                                        where):
    out = {"inside": ckpt_copy / "optimized", "above": ckpt_copy.parent, "same": ckpt_copy}[where]
    before = sorted(p.name for p in ckpt_copy.iterdir())
    rc, text = run_failing_cli(main, capfd, caplog, ["--checkpoint", str(ckpt_copy), "--data", str(toy_data_dir),
                                                     "--out", str(out)])
    assert rc == 2 and "must be a folder of its own" in text
    assert sorted(p.name for p in ckpt_copy.iterdir()) == before


def test_an_unrelated_existing_out_folder_is_not_replaced(tiny_ckpt, toy_data_dir, tmp_path, caplog, capfd):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    rc, text = run_failing_cli(main, capfd, caplog, ["--checkpoint", str(tiny_ckpt), "--data", str(toy_data_dir),
                                                     "--out", str(tmp_path / "mine")])
    assert rc == 2 and "is not an earlier train.optimize result" in text
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_without_a_valid_file_it_measures_the_examples_training_held_out(tiny_ckpt, toy_data_dir, tmp_path):
    import shutil
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(toy_data_dir / "train.txt", data / "train.txt")
    out = tmp_path / "new" / "parent" / "chosen"    # a parent that does not exist yet
    assert main(["--checkpoint", str(tiny_ckpt), "--data", str(data), "--out", str(out), "--candidates", "onnx",
                 "--latency-examples", "3", "--threads", "1"]) == 0
    report = json.loads((out / "optimize.json").read_text())
    held_out = json.loads((tiny_ckpt / "train_args.json").read_text()).get("valid_fraction", 0.1)
    lines = sum(1 for line in (data / "train.txt").read_text().splitlines() if line.strip())
    assert report["rows"][0]["total"] == max(1, int(lines * held_out))
    assert "the valid examples training held out of train.txt" in (out / "optimize.md").read_text()


def test_a_failing_candidate_is_skipped_with_its_reason(tiny_ckpt, toy_data_dir, tmp_path, monkeypatch):
    import train.export as export

    def broken(*args):
        raise RuntimeError("fusion pattern not found")
    monkeypatch.setattr(export, "fuse_onnx", broken)
    out = tmp_path / "chosen"
    assert main(["--checkpoint", str(tiny_ckpt), "--data", str(toy_data_dir), "--out", str(out),
                 "--candidates", "onnx-fused,onnx", "--latency-examples", "3", "--threads", "1"]) == 0
    rows = {r["name"]: r for r in json.loads((out / "optimize.json").read_text())["rows"]}
    assert rows["onnx-fused"]["skipped"].startswith("export failed")
    assert {"accuracy", "examples_per_second"} <= set(rows["onnx"])
    # run again into the same folder: an earlier result is replaced
    assert main(["--checkpoint", str(tiny_ckpt), "--data", str(toy_data_dir), "--out", str(out),
                 "--candidates", "onnx", "--latency-examples", "3", "--threads", "1"]) == 0
    assert [r["name"] for r in json.loads((out / "optimize.json").read_text())["rows"]] == ["fp32", "onnx"]
    assert not (tmp_path / "chosen.tmp").exists()


def test_unknown_candidates_are_refused_by_argparse(tiny_ckpt, toy_data_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--checkpoint", str(tiny_ckpt), "--data", str(toy_data_dir), "--out", str(tmp_path / "o"),
              "--candidates", "onnx,tensorrt"])
    assert exit_.value.code == 2 and "unknown candidates ['tensorrt']" in capsys.readouterr().err


def test_served_settings_follow_the_model_config(tmp_path, monkeypatch):
    config = tmp_path / "model-config.yaml"
    config.write_text("minWorkers: 2\nbatchSize: 16\nhandler:\n  torch_threads: 0\n")
    import textclf.predict
    monkeypatch.setattr(textclf.predict, "usable_cores", lambda: 8)
    assert optimize.served_settings(config) == (4, 16)
    config.write_text("minWorkers: 2\nbatchSize: 4\nhandler:\n  torch_threads: 3\n")
    assert optimize.served_settings(config) == (3, 4)
