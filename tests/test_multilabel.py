"""Multi-label end to end on a toy multi-intent set (two or three toy sentences of different labels joined, as
MixSNIPS joins Snips utterances): training with sigmoid + binary cross-entropy and per-label thresholds, the
scores, every exported variant giving the label sets of fp32, and every request form of the handler."""
import json

import numpy as np
import pytest

from conftest import KEYWORDS, run_failing_cli, train_args
from test_handler import JSON, PLAIN, handle, start
from test_protocol import as_sent, infer_body, result, send
from textclf.config import ModelConfig
from textclf.predict import Predictor

LABELS = sorted(KEYWORDS)
TEXTS = ["rain and snow in the forecast and play jazz on the guitar", "bake a pizza with cheese",
         "sunny windy forecast, a guitar song by the band and a pasta recipe for dinner", "tell me"]


def test_training_chooses_on_micro_f1_and_tunes_a_threshold_per_label(multi_run, multi_ckpt):
    config = ModelConfig.from_json_file(multi_ckpt / "config.json")
    assert config.multi_label and len(config.thresholds) == 3 and all(0 < t < 1 for t in config.thresholds)
    summary = json.loads((multi_run / "summary.json").read_text())
    rows = [json.loads(line) for line in (multi_run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["valid_score_name"] == "micro_f1" for r in rows)
    assert summary["best"]["valid_score"] == max(r["valid_micro_f1"] for r in rows)
    assert summary["test_micro_f1"] > 0.8, summary          # chance is far below: labels are keyword-separable
    assert set(summary["calibration"]["thresholds"]) == set(LABELS)


def test_answers_are_label_sets_at_the_thresholds(multi_ckpt):
    predictor = Predictor.from_checkpoint(multi_ckpt)
    probs = predictor.predict_proba(TEXTS)
    assert ((probs > 0) & (probs < 1)).all() and not np.allclose(probs.sum(1), 1)   # sigmoid per label
    for answer, row in zip(predictor.predict(TEXTS, 3), probs):
        want = [predictor.labels[j] for j in np.argsort(-row, kind="stable") if row[j] >= predictor.thresholds[j]]
        assert [x["label"] for x in answer["labels"]] == want and len(answer["top_k"]) == 3
    sets = [{x["label"] for x in a["labels"]} for a in predictor.predict(TEXTS)]
    assert sets[1] == {"food"}


def right_two_label_line(predictor, data):
    """A test line of two labels whose label set the model gets right."""
    for line in (data / "test.txt").read_text().splitlines():
        text, labels = line.split("\t")
        gold = set(labels.split(","))
        if len(gold) == 2 and {x["label"] for x in predictor.predict([text])[0]["labels"]} == gold:
            return text, gold
    raise AssertionError("the toy model gets no two-label test line right")


def test_evaluate_reports_micro_and_macro_f1_and_the_confident_errors(multi_ckpt, multi_data, tmp_path, capsys):
    from train.evaluate import main
    assert main(["--checkpoint", str(multi_ckpt), "--data", str(multi_data), "--out", str(tmp_path),
                 "--latency-examples", "4"]) == 0
    printed = capsys.readouterr().out
    for words in ("micro-F1 ", "macro-F1 ", "subset accuracy ", "Hamming loss ", "mean ROC-AUC "):
        assert words in printed
    result = json.loads((tmp_path / "eval-checkpoint-best-test.json").read_text())
    assert 0.8 < result["micro_f1"] <= 1 and set(result["per_class"]) == set(LABELS)
    assert (tmp_path / "eval-checkpoint-best-test-per-label.png").stat().st_size > 1000
    errors = [json.loads(line) for line in (tmp_path / "eval-checkpoint-best-test-errors.jsonl").read_text().splitlines()]
    assert [e["confidence"] for e in errors] == sorted((e["confidence"] for e in errors), reverse=True)
    assert all(e["error"] in ("false positive", "false negative") for e in errors)


@pytest.mark.parametrize("flags, tolerance", [(("--onnx",), 1e-4), (("--fuse",), 1e-4), (("--int8",), 0.05),
                                              (("--fuse", "--int8"), 0.05), (("--bf16",), 0.03)])
def test_every_variant_gives_the_label_sets_of_fp32(multi_ckpt, exported, flags, tolerance):
    fp32 = Predictor.from_checkpoint(multi_ckpt)
    variant = Predictor.from_checkpoint(exported(multi_ckpt, *flags))
    assert variant.multi_label and np.allclose(variant.thresholds, fp32.thresholds)
    want, got = fp32.predict(TEXTS, 3), variant.predict(TEXTS, 3)
    assert [[x["label"] for x in a["labels"]] for a in got] == [[x["label"] for x in a["labels"]] for a in want]
    assert np.abs(variant.predict_proba(TEXTS) - fp32.predict_proba(TEXTS)).max() < tolerance


def test_train_optimize_holds_variants_to_micro_f1(multi_ckpt, multi_data, tmp_path):
    from train.optimize import main
    out = tmp_path / "opt"
    assert main(["--checkpoint", str(multi_ckpt), "--data", str(multi_data), "--out", str(out),
                 "--latency-examples", "2", "--threads", "1", "--batch-size", "8", "--candidates", "fp32,onnx"]) == 0
    report = json.loads((out / "optimize.json").read_text())
    fp32 = next(r for r in report["rows"] if r["name"] == "fp32")
    from train.evaluate import evaluate
    from textclf.data import read_examples
    examples, _ = read_examples(multi_data / "valid.txt", multi_label=True)
    assert fp32["accuracy"] == pytest.approx(evaluate(Predictor.from_checkpoint(multi_ckpt), examples,
                                                      multi_data / "valid.txt")[0]["micro_f1"])


def test_the_handler_answers_every_form_with_label_sets(multi_ckpt):
    handler, context = start(multi_ckpt)
    predictor = Predictor.from_checkpoint(multi_ckpt)
    want = predictor.predict(TEXTS, 3)
    one, many, v1, v2, plain = handle(handler, context, [
        ({"body": {"text": TEXTS[0]}}, {"body": JSON}),
        ({"body": {"texts": TEXTS}}, {"body": JSON}),
        ({"body": {"instances": TEXTS}}, {"body": JSON}),
        ({"body": {"inputs": [{"name": "text", "shape": [4], "datatype": "BYTES", "data": TEXTS}]}}, {"body": JSON}),
        ({"body": TEXTS[1].encode()}, {"body": PLAIN}),
    ])
    names = [[x["label"] for x in a["labels"]] for a in want]
    assert set(one) == {"labels", "top_k"} and [x["label"] for x in one["labels"]] == names[0]
    assert [[x["label"] for x in p["labels"]] for p in many["predictions"]] == names
    assert v1 == many and [x["label"] for x in plain["labels"]] == names[1]
    outputs = {o["name"]: o for o in v2["outputs"]}
    assert set(outputs) == {"label", "score", "selected"}
    assert outputs["label"]["shape"] == outputs["selected"]["shape"] == [4, 3]
    rows = np.array(outputs["label"]["data"]).reshape(4, 3)
    picked = np.array(outputs["selected"]["data"]).reshape(4, 3)
    assert [[label for label, on in zip(r, p) if on] for r, p in zip(rows, picked)] == names


def test_tritonclient_binary_requests_and_metadata_of_a_multi_label_model(multi_ckpt):
    handler, context = start(multi_ckpt)
    predictor = Predictor.from_checkpoint(multi_ckpt)
    names = [[x["label"] for x in a["labels"]] for a in predictor.predict(TEXTS, 3)]
    everything, top_two, metadata = send(handler, context, [
        as_sent(*infer_body(TEXTS)), as_sent(*infer_body(TEXTS[:1], parameters={"top_k": 2})),
        ({}, {"X-Textclf-Request": "metadata"})])
    got = result(everything)
    rows, picked = got.as_numpy("label"), got.as_numpy("selected")
    assert rows.shape == picked.shape == got.as_numpy("score").shape == (4, 3) and picked.dtype == bool
    assert [[label.decode() for label, on in zip(r, p) if on] for r, p in zip(rows, picked)] == names
    assert result(top_two).as_numpy("label").shape == (1, 2)
    assert json.loads(metadata[3])["outputs"] == [{"name": "label", "datatype": "BYTES", "shape": [-1, 3]},
                                                  {"name": "score", "datatype": "FP32", "shape": [-1, 3]},
                                                  {"name": "selected", "datatype": "BOOL", "shape": [-1, 3]}]


def test_explanations_of_each_predicted_label_or_a_named_one(multi_ckpt, multi_data):
    from textclf.explain import explain
    predictor = Predictor.from_checkpoint(multi_ckpt)
    text, gold = right_two_label_line(predictor, multi_data)
    every = explain(predictor, text)
    assert {x["label"] for x in every["labels"]} == gold and every["method"] == "occlusion, log-odds"
    scores = [x["score"] for x in every["labels"]]
    assert scores == sorted(scores, reverse=True)
    for x in every["labels"]:   # some keyword of each label speaks for it (the toy model also leans on "and")
        assert max(w["importance"] for w in x["words"] if w["word"] in KEYWORDS[x["label"]]) > 0, x
    other = next(label for label in LABELS if label not in gold)
    named = explain(predictor, text, other)
    assert named["label"] == other and "words" in named


def test_bulk_writes_label_sets(multi_ckpt, tmp_path):
    from train.predict import main
    (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    assert main(["--checkpoint", str(multi_ckpt), "--input", str(tmp_path / "in.txt"),
                 "--output", str(tmp_path / "out.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    want = Predictor.from_checkpoint(multi_ckpt).predict(TEXTS)
    assert [r["labels"] for r in rows] == [a["labels"] for a in want] and "label" not in rows[0]
    assert main(["--checkpoint", str(multi_ckpt), "--input", str(tmp_path / "in.txt"),
                 "--output", str(tmp_path / "out.tsv")]) == 0
    first = (tmp_path / "out.tsv").read_text().splitlines()[0].split("\t")
    assert first[1] == ",".join(x["label"] for x in want[0]["labels"])


def test_a_multi_label_line_without_labels_names_the_line(tmp_path, tiny_bert_dir, capfd, caplog):
    from train.__main__ import main
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.txt").write_text("rain and jazz\tmusic,weather\nbake bread\t\nsoup\tfood\n", encoding="utf-8")
    rc, said = run_failing_cli(main, capfd, caplog, train_args(bad, tmp_path / "r", tiny_bert_dir, epochs=1,
                                                               extra=["--multi-label", "--columns", "text-label"]))
    assert rc == 2 and "train.txt:2" in said and "--allow-no-label" in said
