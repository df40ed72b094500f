"""The other CLIs in-process: `python -m train.evaluate`, `python -m train.predict`, and the training
options that shape a run (--resume, --patience, --save-every-epoch, --lr-decay-rate)."""
import io
import json
import re

import pytest

from conftest import KEYWORDS, train_args, write_toy_dataset
from textclf.predict import Predictor
from train import evaluate as evaluate_cli
from train import predict as predict_cli
from train.__main__ import main as train_main

LABELS = sorted(KEYWORDS)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def predictor(tiny_ckpt):
    return Predictor.from_checkpoint(tiny_ckpt)


# ---- python -m train.evaluate

def test_evaluate_writes_scores_confusion_and_errors(tiny_ckpt, toy_data_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = evaluate_cli.main(["--checkpoint", str(tiny_ckpt), "--data", str(toy_data_dir), "--out", str(out),
                            "--latency-examples", "5"])
    assert rc == 0
    printed = capsys.readouterr().out
    match = re.search(r"^accuracy (\d\.\d{4}) \((\d+)/(\d+)\)$", printed, re.M)
    assert match, printed
    accuracy, correct, total = float(match[1]), int(match[2]), int(match[3])
    assert total == 30 and accuracy == pytest.approx(correct / total, abs=1e-4)
    assert re.search(r"^macro-F1 \d\.\d{4}$", printed, re.M), printed
    for label in LABELS:
        assert re.search(rf"^{label}\s+\d\.\d{{4}}\s+\d\.\d{{4}}\s+\d\.\d{{4}}\s+10$", printed, re.M), printed

    [summary_path] = out.glob("eval-*.json")
    assert summary_path.name == "eval-checkpoint-best-test.json"
    summary = json.loads(summary_path.read_text())
    assert (summary["correct"], summary["total"]) == (correct, total)
    assert summary["accuracy"] == pytest.approx(accuracy, abs=1e-4) and summary["accuracy"] >= 0.9
    assert 0 < summary["macro_f1"] <= 1
    assert set(summary["per_class"]) == set(LABELS)
    for scores in summary["per_class"].values():
        assert {"precision", "recall", "f1", "support"} <= set(scores) and scores["support"] == 10
    assert summary["ms_per_example_batch1"] > 0 and summary["examples_per_second_batch32"] > 0
    assert sum(map(sum, summary["confusion"])) == total

    assert (out / "eval-checkpoint-best-test-confusion.png").read_bytes()[:8] == PNG
    errors = [json.loads(line) for line in
              (out / "eval-checkpoint-best-test-errors.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(errors) == total - correct
    test_lines = (toy_data_dir / "test.txt").read_text().splitlines()
    for e in errors:
        assert e["predicted"] != e["gold"] and e["predicted"] in LABELS
        assert test_lines[e["line"] - 1] == f"{e['text']}\t{e['gold']}"
    assert [e["score"] for e in errors] == sorted((e["score"] for e in errors), reverse=True)


def test_evaluate_errors_list_is_limited_and_sorted(tmp_path, tiny_ckpt, capsys):
    # Swapped labels make most predictions wrong: --worst bounds the list, most confident first.
    data = write_toy_dataset(tmp_path / "data", splits=("test",))
    swap = {"food": "music", "music": "weather", "weather": "food"}
    lines = [line.rsplit("\t", 1) for line in (data / "test.txt").read_text().splitlines()]
    (data / "test.txt").write_text("".join(f"{t}\t{swap[lab]}\n" for t, lab in lines))
    rc = evaluate_cli.main(["--checkpoint", str(tiny_ckpt), "--data", str(data), "--out", str(tmp_path / "eval"),
                            "--latency-examples", "2", "--worst", "4"])
    assert rc == 0
    summary = json.loads((tmp_path / "eval" / "eval-checkpoint-best-test.json").read_text())
    assert summary["total"] - summary["correct"] > 4
    errors = [json.loads(line) for line in
              (tmp_path / "eval" / "eval-checkpoint-best-test-errors.jsonl").read_text().splitlines()]
    assert len(errors) == 4
    assert [e["score"] for e in errors] == sorted((e["score"] for e in errors), reverse=True)


def test_evaluate_with_an_unknown_label_exits_2(tmp_path, tiny_ckpt, capfd, caplog):
    data = write_toy_dataset(tmp_path / "data", splits=("test",))
    with (data / "test.txt").open("a") as f:
        f.write("book a flight to paris\ttravel\n")
    rc = evaluate_cli.main(["--checkpoint", str(tiny_ckpt), "--data", str(data), "--out", str(tmp_path / "eval"),
                            "--latency-examples", "2"])
    captured = capfd.readouterr()
    assert rc == 2
    assert "Traceback" not in captured.out + captured.err
    assert f"{data / 'test.txt'}:31:" in caplog.text and "'travel'" in caplog.text
    assert not list((tmp_path).glob("eval/eval-*"))


# ---- python -m train.predict

def predict_lines(capsys, argv):
    assert predict_cli.main(argv) == 0
    return capsys.readouterr().out.splitlines()


def test_predict_prints_one_line_per_text(tiny_ckpt, predictor, capsys):
    texts = ["will it rain tomorrow", "play my jazz playlist", "a recipe for pasta"]
    lines = predict_lines(capsys, ["--checkpoint", str(tiny_ckpt), *texts])
    assert len(lines) == len(texts)
    for line, text, expected in zip(lines, texts, predictor.predict(texts)):
        label, score, echoed = line.split("\t")
        assert (label, echoed) == (expected["label"], text)
        assert float(score) == pytest.approx(expected["score"], abs=1e-4)
    assert [line.split("\t")[0] for line in lines] == ["weather", "music", "food"]


def ranked(line):
    """'  music 0.9123  food 0.0500  weather 0.0377' -> [(label, score), ...]"""
    assert line.startswith("  "), line
    parts = line.split()
    return [(parts[i], float(parts[i + 1])) for i in range(0, len(parts), 2)]


def test_predict_reads_stdin_and_ranks_three_labels(tiny_ckpt, predictor, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("a\n\nb\n"))
    lines = predict_lines(capsys, ["--checkpoint", str(tiny_ckpt)])
    assert len(lines) == 4 and lines[0] == "a" and lines[2] == "b", lines   # the empty line is skipped
    for text, line in (("a", lines[1]), ("b", lines[3])):
        answer = ranked(line)
        assert len(answer) == min(3, len(LABELS))
        assert sorted(label for label, _ in answer) == LABELS
        scores = [s for _, s in answer]
        assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0, abs=1e-3)
        expected = predictor.predict([text], top_k=3)[0]["top_k"]
        assert [label for label, _ in answer] == [x["label"] for x in expected]


@pytest.mark.parametrize("stdin", [False, True])
def test_predict_json_lines(tiny_ckpt, predictor, capsys, monkeypatch, stdin):
    texts = ["snow and fog", "bake some bread"]
    if stdin:
        monkeypatch.setattr("sys.stdin", io.StringIO("".join(t + "\n" for t in texts)))
    lines = predict_lines(capsys, ["--checkpoint", str(tiny_ckpt), "--json", *([] if stdin else texts)])
    answers = [json.loads(line) for line in lines]
    assert [a["text"] for a in answers] == texts
    for answer, expected in zip(answers, predictor.predict(texts, top_k=3 if stdin else 1)):
        assert answer["label"] == expected["label"]
        assert answer["score"] == pytest.approx(expected["score"], abs=1e-6)
        assert [x["label"] for x in answer["top_k"]] == [x["label"] for x in expected["top_k"]]


def test_predict_top_k_option(tiny_ckpt, capsys):
    [line] = predict_lines(capsys, ["--checkpoint", str(tiny_ckpt), "--json", "--top-k", "2", "rain"])
    assert len(json.loads(line)["top_k"]) == 2


def test_predict_with_a_missing_checkpoint_exits_2(tmp_path, capsys):
    assert predict_cli.main(["--checkpoint", str(tmp_path / "nowhere"), "rain"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "does not exist" in captured.err


# ---- training options, on the tiny models (a few seconds each)

def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def word_cnn_args(data, out, epochs, extra=()):
    return train_args(data, out, "random", encoder="cnn", epochs=epochs, lr="1e-2",
                      extra=["--embedding-dim", "16", "--num-filters", "8", *extra])


def test_resume_continues_for_one_more_epoch(tiny_ckpt, tiny_bert_dir, toy_data_dir, tmp_path):
    source_epoch = json.loads((tiny_ckpt / "metrics.json").read_text())["epoch"]
    out = tmp_path / "resumed"
    rc = train_main(train_args(toy_data_dir, out, tiny_bert_dir, epochs=1, extra=["--resume", str(tiny_ckpt)]))
    assert rc == 0
    assert [r["epoch"] for r in records(out)] == [source_epoch + 1]
    last = json.loads((out / "checkpoint-last" / "metrics.json").read_text())
    assert last["epoch"] == source_epoch + 1
    # the architecture comes from the checkpoint and the model goes on from what it had learned
    assert json.loads((out / "checkpoint-last" / "config.json").read_text()) == \
        json.loads((tiny_ckpt / "config.json").read_text())
    assert records(out)[0]["valid_accuracy"] >= 0.9
    assert json.loads((out / "summary.json").read_text())["epochs"] == 1


def test_resume_with_other_labels_exits_2(tiny_ckpt, tiny_bert_dir, tmp_path, caplog):
    data = write_toy_dataset(tmp_path / "data")
    for split in ("train", "valid", "test"):
        path = data / f"{split}.txt"
        path.write_text(path.read_text().replace("\tfood\n", "\tcooking\n"))
    rc = train_main(train_args(data, tmp_path / "run", tiny_bert_dir, epochs=1, extra=["--resume", str(tiny_ckpt)]))
    assert rc == 2
    assert "labels differ" in caplog.text
    assert not (tmp_path / "run" / "checkpoint-last").exists()


def test_patience_stops_early(toy_data_dir, tmp_path):
    out = tmp_path / "patient"
    epochs = 30
    assert train_main(word_cnn_args(toy_data_dir, out, epochs, ["--patience", "1"])) == 0
    history = records(out)
    assert 1 < len(history) < epochs
    assert [r["epoch"] for r in history] == list(range(1, len(history) + 1))
    # stopped at the first epoch that did not beat the best before it
    accuracies = [r["valid_accuracy"] for r in history]
    assert accuracies[-1] <= max(accuracies[:-1])
    assert all(accuracies[i] > max(accuracies[:i]) for i in range(1, len(accuracies) - 1))
    assert json.loads((out / "summary.json").read_text())["epochs"] == len(history)
    best = json.loads((out / "checkpoint-best" / "metrics.json").read_text())
    assert best["valid_accuracy"] == max(accuracies)


def test_save_every_epoch_keeps_each_epoch(toy_data_dir, tmp_path):
    out = tmp_path / "every"
    assert train_main(word_cnn_args(toy_data_dir, out, 2, ["--save-every-epoch"])) == 0
    assert sorted(p.name for p in out.glob("checkpoint-epoch-*")) == ["checkpoint-epoch-1", "checkpoint-epoch-2"]
    for n in (1, 2):
        folder = out / f"checkpoint-epoch-{n}"
        assert json.loads((folder / "metrics.json").read_text())["epoch"] == n
        assert Predictor.from_checkpoint(folder).labels == LABELS
    # the last epoch's folder holds the same weights as checkpoint-last
    assert (out / "checkpoint-epoch-2" / "model.safetensors").read_bytes() == \
        (out / "checkpoint-last" / "model.safetensors").read_bytes()


def test_lr_decay_rate_halves_the_learning_rate_each_epoch(toy_data_dir, tmp_path):
    out = tmp_path / "decay"
    assert train_main(word_cnn_args(toy_data_dir, out, 3, ["--lr-decay-rate", "0.5"])) == 0
    lrs = [r["lr"] for r in records(out)]
    # no warm-up: after epoch e the rate is 1e-2 * 0.5**e
    assert lrs == pytest.approx([1e-2 * 0.5 ** e for e in (1, 2, 3)])
    assert json.loads((out / "checkpoint-best" / "train_args.json").read_text())["lr_decay_rate"] == 0.5
