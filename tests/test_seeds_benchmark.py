"""benchmarks/seeds.py: one experiment trained per seed, recorded, summarised, resumable."""
import json
import statistics

import pytest

from benchmarks import accuracy, seeds


@pytest.fixture
def harness(tmp_path, monkeypatch, toy_data_dir):
    experiments = tmp_path / "experiments.json"
    experiments.write_text(json.dumps({"experiments": [
        {"name": "toy-cnn", "data": str(toy_data_dir), "target": 0.5,
         "train": ["--embedding", "random", "--encoder", "cnn", "--embedding-dim", "16", "--num-filters", "8",
                   "--epochs", "2", "--batch-size", "8", "--threads", "1"]},
        {"name": "toy-more", "data": str(toy_data_dir), "train": ["--resume", "runs/toy/checkpoint-last"]},
    ]}))
    monkeypatch.setattr(accuracy, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(accuracy, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(accuracy, "EXPERIMENTS", experiments)
    return tmp_path


def test_each_seed_trains_once_and_the_table_gives_the_spread(harness, capsys):
    assert seeds.main(["toy-cnn", "--seeds", "1", "2"]) == 0
    rows = json.loads((harness / "results" / "seeds.json").read_text())["runs"]
    assert [(r["seed"], r["device"]) for r in rows] == [(1, "cpu"), (2, "cpu")]
    for r in rows:
        run = harness / "runs" / f"toy-cnn.seed-{r['seed']}"
        assert json.loads((run / "checkpoint-best" / "train_args.json").read_text())["seed"] == r["seed"]
        assert r["test_accuracy"] == json.loads((run / "summary.json").read_text())["test_accuracy"]
    mean = statistics.fmean(r["test_accuracy"] for r in rows)
    line = next(x for x in (harness / "results" / "seeds.md").read_text().splitlines() if x.startswith("| toy-cnn |"))
    assert f"**{mean:.4f}**" in line and "| 2 |" in line and "of 2" in line
    assert (harness / "results" / "seeds.png").read_bytes().startswith(b"\x89PNG")

    capsys.readouterr()
    assert seeds.main(["toy-cnn", "--seeds", "2"]) == 0            # resumes: nothing trained again
    assert "seed 2 (cpu): done already" in capsys.readouterr().out

    summary = harness / "elsewhere.json"                              # a run made on another machine
    summary.write_text(json.dumps({"best": {"valid_accuracy": 0.9, "epoch": 1}, "epochs": 2,
                                   "test_accuracy": 0.75, "train_seconds": 3.0}))
    assert seeds.main(["toy-cnn", "--seeds", "7", "--device", "cuda", "--record", str(summary),
                       "--machine", "a GPU box"]) == 0
    table = (harness / "results" / "seeds.md").read_text()
    assert "| toy-cnn | cuda (a GPU box) | 1 | **0.7500** |" in table and "| 1 of 1 |" in table


def test_experiments_that_fix_their_start_are_refused(harness):
    with pytest.raises(SystemExit, match="--resume"):
        seeds.main(["toy-more", "--seeds", "1"])
    with pytest.raises(SystemExit, match="no training experiment"):
        seeds.main(["nope", "--seeds", "1"])
