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


def test_table_counts_resumed_epochs_and_plots_every_dataset(tmp_path, monkeypatch):
    earlier = tmp_path / "runs" / "first" / "checkpoint-last"
    earlier.mkdir(parents=True)
    (earlier / "metrics.json").write_text(json.dumps({"epoch": 3, "valid_accuracy": 0.8}))
    monkeypatch.setattr(accuracy, "ROOT", tmp_path)
    monkeypatch.setattr(accuracy, "RESULTS", tmp_path / "results")
    experiments = [
        {"name": "more", "data": "data/a", "target": 0.9, "note": "went on from first",
         "train": ["--resume", "runs/first/checkpoint-last", "--epochs", "2"]},
        {"name": "plain", "data": "data/b", "train": ["--embedding", "glove", "--encoder", "cnn"],
         "reference": {"value": 0.7, "what": "paper"}},
    ]
    assert accuracy.resumed_epochs(experiments[0]) == 3 and accuracy.resumed_epochs(experiments[1]) == 0

    def row(name, acc, epochs, best, before):
        return {"name": name, "test_accuracy": acc, "macro_f1": acc, "epochs": epochs, "best_epoch": best,
                "epochs_before": before, "valid_accuracy": acc, "train_seconds": 60.0,
                "ms_per_example_batch1": 1.0, "size_mb": 1.0, "command": "train", "reference": None}
    accuracy.write_tables([row("plain", 0.75, 4, 2, 0), row("more", 0.88, 2, 5, 3)], experiments)
    table = (tmp_path / "results" / "accuracy.md").read_text().splitlines()
    more = next(line for line in table if line.startswith("| more |"))
    assert "| 3+2 (5) |" in more and "**0.8800** ✗" in more and "| a | MiniLM-L6 | cls |" in more
    plain = next(line for line in table if line.startswith("| plain |"))
    assert "| 4 (2) |" in plain and "0.7 paper" in plain
    assert "- more: went on from first" in table
    png = (tmp_path / "results" / "accuracy.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_a_rerun_moves_the_earlier_run_aside(tmp_path, monkeypatch, tiny_ckpt, toy_data_dir):
    runs = tmp_path / "runs"
    shutil.copytree(tiny_ckpt, runs / "toy" / "checkpoint-best")
    (runs / "toy-int8").mkdir(parents=True)
    (runs / "toy-int8" / "metrics.jsonl").write_text('{"epoch": 1}\n')       # left by an earlier attempt
    experiments = tmp_path / "experiments.json"
    experiments.write_text(json.dumps({"experiments": [
        {"name": "toy", "data": str(toy_data_dir), "train": []},
        {"name": "toy-int8", "base": "toy", "export": ["--int8"]},
    ]}))
    monkeypatch.setattr(accuracy, "RUNS", runs)
    monkeypatch.setattr(accuracy, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(accuracy, "EXPERIMENTS", experiments)
    assert accuracy.main(["--only", "toy-int8"]) == 0

    [aside] = runs.glob("toy-int8.before-*")
    assert (aside / "metrics.jsonl").read_text() == '{"epoch": 1}\n'
    assert not (runs / "toy-int8" / "metrics.jsonl").exists()
    assert (runs / "toy-int8" / "checkpoint-best" / "config.json").is_file()
    [row] = json.loads((tmp_path / "results" / "accuracy.json").read_text())["results"]
    assert row["name"] == "toy-int8" and row["variant"] == "ONNX Runtime int8 per-channel export"
