"""benchmarks/accuracy.py: a stopped run evaluated as it is, and the results table it writes."""
import json
import shutil

from benchmarks import accuracy


def test_evaluate_only_records_a_stopped_run(tmp_path, monkeypatch, tiny_run, toy_data_dir):
    runs, results = tmp_path / "runs", tmp_path / "results"
    shutil.copytree(tiny_run[1], runs / "toy-tiny-cls")
    (runs / "toy-tiny-cls" / "summary.json").unlink()          # what a run stopped by hand lacks
    epochs = [json.loads(x) for x in (runs / "toy-tiny-cls" / "metrics.jsonl").read_text().splitlines()]
    experiments = tmp_path / "experiments.json"
    experiments.write_text(json.dumps({"experiments": [
        {"name": "toy-tiny-cls", "data": str(toy_data_dir), "target": 0.5, "note": "stopped by hand",
         "train": ["--embedding", "/somewhere/bert", "--epochs", "99"], "reference": {"value": 0.9, "what": "paper"}},
    ]}))
    monkeypatch.setattr(accuracy, "RUNS", runs)
    monkeypatch.setattr(accuracy, "RESULTS", results)
    monkeypatch.setattr(accuracy, "EXPERIMENTS", experiments)
    assert accuracy.main(["--only", "toy-tiny-cls", "--evaluate-only"]) == 0

    [row] = json.loads((results / "accuracy.json").read_text())["results"]
    evaluation = json.loads((runs / "toy-tiny-cls" / "eval-checkpoint-best-test.json").read_text())
    assert row["test_accuracy"] == evaluation["accuracy"] > 0.5
    assert row["stopped_early_by_hand"] is True and row["epochs"] == len(epochs)
    assert row["valid_accuracy"] == max(e["valid_accuracy"] for e in epochs)
    assert (row["dataset"], row["embedding"], row["encoder"], row["variant"]) == \
        (toy_data_dir.name, "/somewhere/bert", "cls", "float32")
    table = (results / "accuracy.md").read_text()
    assert f"**{row['test_accuracy']:.4f}** ✓" in table and "stopped" in table and "0.9 paper" in table
    assert "stopped by hand" in table


def test_evaluate_only_without_a_checkpoint_says_so(tmp_path, monkeypatch):
    experiments = tmp_path / "experiments.json"
    experiments.write_text(json.dumps({"experiments": [{"name": "nothing", "data": "data/snips", "train": []}]}))
    monkeypatch.setattr(accuracy, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(accuracy, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(accuracy, "EXPERIMENTS", experiments)
    try:
        accuracy.main(["--only", "nothing", "--evaluate-only"])
    except SystemExit as e:
        assert "has no checkpoint to evaluate" in str(e) and "nothing" in str(e)
    else:
        raise AssertionError("expected SystemExit")
