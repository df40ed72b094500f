"""Scores you can trust and "I don't know": temperature scaling, ECE, the reject threshold, NFKC normalisation,
and the out-of-scope answer in every variant, every request form and the metrics."""
import json
import shutil

import numpy as np
import pytest

from conftest import PROBE_TEXTS, run_failing_cli
from test_handler import JSON, handle, start
from textclf.config import ModelConfig
from textclf.checkpoint import STATS_FILE
from textclf.predict import Predictor
from train.calibrate import main as calibrate
from train.calibration import (coverage_curve, ece, fit_temperature, in_scope_score, nll, open_set_metrics, softmax,
                               threshold_for_precision)


# ---- the numbers

def synthetic(n=4000, classes=5, temperature=2.5, seed=0):
    """Logits and labels drawn from softmax(logits / temperature): the true temperature is known."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=4.0, size=(n, classes))
    p = softmax(logits, temperature)
    gold = np.array([rng.choice(classes, p=row) for row in p])
    return logits, gold


def test_fit_temperature_recovers_the_true_one_and_lowers_nll_and_ece():
    logits, gold = synthetic()
    t = fit_temperature(logits, gold)
    assert t == pytest.approx(2.5, rel=0.1)
    assert nll(logits, gold, t) < nll(logits, gold)
    assert ece(softmax(logits, t), gold)[0] < 0.03 < ece(softmax(logits), gold)[0]


def test_ece_is_the_weighted_gap_between_accuracy_and_confidence():
    probs = np.array([[0.9, 0.1]] * 10)           # confidence 0.9 ...
    gold = np.array([0] * 6 + [1] * 4)             # ... accuracy 0.6
    value, bins = ece(probs, gold)
    assert value == pytest.approx(0.3) and bins == [(pytest.approx(13 / 15), pytest.approx(14 / 15), 10, 0.6, pytest.approx(0.9))]


def test_the_threshold_is_the_lowest_that_reaches_the_precision():
    score = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6])
    right = np.array([True, True, True, False, True, False])
    assert threshold_for_precision(score, right, 1.0) == 0.9         # the top 3 are all right
    assert threshold_for_precision(score, right, 0.8) == 0.7         # 4 of the top 5
    assert threshold_for_precision(score, right, 0.5) == 0.6
    assert threshold_for_precision(score, np.zeros(6, bool), 0.5) is None


def test_open_set_metrics_and_coverage():
    m = open_set_metrics(np.linspace(0.6, 1.0, 100), np.linspace(0.0, 0.5, 50))
    assert m["auroc"] == 1.0 and m["fpr_at_95_tpr"] == 0.0
    m = open_set_metrics(np.linspace(0, 1, 100), np.linspace(0, 1, 100))
    assert 0.45 < m["auroc"] < 0.55 and m["fpr_at_95_tpr"] > 0.9
    curve = coverage_curve(np.array([0.9, 0.8, 0.1]), np.array([True, True, False]), points=3)
    assert curve[0][1] == 1.0 and curve[-1] == (1.0, pytest.approx(2 / 3))


def test_energy_is_temperature_times_logsumexp():
    logits = np.array([[2.0, 0.0, -1.0]])
    assert in_scope_score(logits, "energy", 2.0)[0] == pytest.approx(2 * np.log(np.exp(1) + 1 + np.exp(-0.5)))
    assert in_scope_score(logits, "calibrated", 1.0)[0] == pytest.approx(in_scope_score(logits, "msp")[0])


# ---- a checkpoint calibrated by train.calibrate

@pytest.fixture(scope="module")
def calibrated(tiny_ckpt, toy_data_dir, tmp_path_factory):
    ckpt = shutil.copytree(tiny_ckpt, tmp_path_factory.mktemp("calibrated") / "checkpoint")
    assert calibrate(["--checkpoint", str(ckpt), "--data", str(toy_data_dir), "--target-precision", "0.99"]) == 0
    return ckpt


def test_training_fits_a_temperature_and_keeps_the_labels(tiny_bert_dir, toy_data_dir, tmp_path):
    from conftest import train_args
    from train.__main__ import main as train
    args = train_args(toy_data_dir, tmp_path / "run", tiny_bert_dir, epochs=2, extra=["--limit", "30"])
    assert train(args + ["--calibrate", "true", "--target-precision", "0.9"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    config = ModelConfig.from_json_file(tmp_path / "run" / "checkpoint-best" / "config.json")
    assert config.temperature == pytest.approx(summary["calibration"]["temperature"]) and config.temperature != 1.0
    # the Mahalanobis score is fitted on the training texts, beside the weights
    assert config.out_of_scope_score == "mahalanobis" and (tmp_path / "run" / "checkpoint-best" / STATS_FILE).is_file()
    assert summary["calibration"]["nll_after"] <= summary["calibration"]["nll_before"] + 1e-9
    assert config.normalization == "NFKC" and summary["calibration"]["target_precision"] == 0.9
    uncalibrated = ModelConfig.from_json_file(tmp_path / "run" / "checkpoint-last" / "config.json")
    assert uncalibrated.temperature == 1.0   # checkpoint-best alone is calibrated


def test_probabilities_are_the_softmax_of_logits_over_the_temperature(calibrated):
    predictor = Predictor.from_checkpoint(calibrated)
    logits = predictor.predict_logits(PROBE_TEXTS)
    assert np.allclose(predictor.predict_proba(PROBE_TEXTS), softmax(logits, predictor.temperature), atol=1e-6)
    assert (predictor.predict_proba(PROBE_TEXTS).argmax(1) == logits.argmax(1)).all()


def test_calibrate_stores_a_threshold_that_reaches_the_precision_on_valid(calibrated, toy_data_dir):
    from textclf.data import read_examples
    config = ModelConfig.from_json_file(calibrated / "config.json")
    assert config.out_of_scope_score == "mahalanobis"   # auto, for transformers: the best in results/open-set
    assert (calibrated / STATS_FILE).is_file()
    predictor = Predictor.from_checkpoint(calibrated)
    examples, _ = read_examples(toy_data_dir / "valid.txt")
    answers = predictor.predict([e.text for e in examples])
    accepted = [(a, e) for a, e in zip(answers, examples) if not a["out_of_scope"]]
    assert accepted and sum(a["label"] == e.label for a, e in accepted) / len(accepted) >= 0.99
    logits, features = predictor.predict_logits([e.text for e in examples], features=True)
    with pytest.raises(ValueError, match="features"):
        predictor.in_scope(logits)
    scores = predictor.in_scope(logits, features)
    for a, score in zip(answers, scores):
        assert a["out_of_scope"] == (score < config.out_of_scope_threshold)
        assert (a["label"] is None) == a["out_of_scope"]


def test_auto_thresholds_energy_for_word_embedding_models_too(toy_data_dir, tmp_path):
    """--score auto is energy for every kind of model: over results/open-set's 21 pairs it beat the calibrated top
    probability for the GloVe CNN as for MiniLM."""
    from conftest import train_args
    from train.__main__ import main as train
    args = train_args(toy_data_dir, tmp_path / "run", "random", encoder="cnn", epochs=2,
                      extra=["--embedding-dim", "16", "--num-filters", "8"])
    assert train(args) == 0
    ckpt = tmp_path / "run" / "checkpoint-best"
    assert calibrate(["--checkpoint", str(ckpt), "--data", str(toy_data_dir), "--target-precision", "0.9"]) == 0
    config = ModelConfig.from_json_file(ckpt / "config.json")
    assert config.embedding != "transformer" and config.out_of_scope_score == "energy"


def test_the_probability_score_thresholds_the_calibrated_top_probability(calibrated, toy_data_dir, tmp_path):
    ckpt = shutil.copytree(calibrated, tmp_path / "p")
    assert calibrate(["--checkpoint", str(ckpt), "--data", str(toy_data_dir), "--target-precision", "0.99",
                      "--score", "probability"]) == 0
    config = ModelConfig.from_json_file(ckpt / "config.json")
    assert config.out_of_scope_score == "probability" and 0 < config.out_of_scope_threshold <= 1
    for a in Predictor.from_checkpoint(ckpt).predict(PROBE_TEXTS):
        assert a["out_of_scope"] == (a["score"] < config.out_of_scope_threshold)


def test_calibrate_threshold_by_hand_energy_and_removal(calibrated, toy_data_dir, tmp_path):
    ckpt = shutil.copytree(calibrated, tmp_path / "c")
    assert calibrate(["--checkpoint", str(ckpt), "--data", str(toy_data_dir), "--threshold", "1e9",
                      "--score", "energy", "--keep-temperature"]) == 0
    config = ModelConfig.from_json_file(ckpt / "config.json")
    assert (config.out_of_scope_score, config.out_of_scope_threshold) == ("energy", 1e9)
    assert config.temperature == ModelConfig.from_json_file(calibrated / "config.json").temperature
    assert all(a["out_of_scope"] and a["label"] is None for a in Predictor.from_checkpoint(ckpt).predict(PROBE_TEXTS))
    assert calibrate(["--checkpoint", str(ckpt), "--data", str(toy_data_dir), "--no-threshold"]) == 0
    assert "out_of_scope" not in Predictor.from_checkpoint(ckpt).predict(PROBE_TEXTS)[0]


def test_calibrate_refuses_data_with_other_labels(calibrated, tmp_path, capfd, caplog):
    (tmp_path / "valid.txt").write_text("rain today\tweather\nplay jazz\tPlayMusic\nsunny\tweather\n", encoding="utf-8")
    rc, said = run_failing_cli(calibrate, capfd, caplog, ["--checkpoint", str(calibrated), "--data", str(tmp_path)])
    assert rc == 2 and "valid.txt:2" in said and "'PlayMusic' is not one of the checkpoint's labels" in said


@pytest.mark.parametrize("flags", [("--onnx",), ("--fuse", "--int8"), ("--bf16",)])
def test_every_variant_carries_the_temperature_and_the_threshold(calibrated, tmp_path, flags):
    from train.export import main as export
    assert export(["--checkpoint", str(calibrated), "--out", str(tmp_path / "v"), *flags]) == 0
    source, variant = Predictor.from_checkpoint(calibrated), Predictor.from_checkpoint(tmp_path / "v")
    assert (variant.temperature, variant.out_of_scope_threshold) == (source.temperature, source.out_of_scope_threshold)
    want, got = source.predict(PROBE_TEXTS, 3), variant.predict(PROBE_TEXTS, 3)
    for w, g in zip(want, got):
        assert g["score"] == pytest.approx(w["score"], abs=2e-2)


# ---- NFKC

def test_full_width_and_compatibility_forms_read_as_their_plain_letters(tiny_ckpt):
    predictor = Predictor.from_checkpoint(tiny_ckpt)
    plain, wide = predictor.predict_proba(["play some jazz on the guitar", "ｐｌａｙ ｓｏｍｅ ｊａｚｚ ｏｎ ｔｈｅ ｇｕｉｔａｒ"])
    assert np.allclose(plain, wide, atol=1e-6)


def test_a_checkpoint_from_before_normalisation_reads_texts_as_they_are(tiny_ckpt, tmp_path):
    ckpt = shutil.copytree(tiny_ckpt, tmp_path / "old")
    raw = json.loads((ckpt / "config.json").read_text())
    for key in ("normalization", "temperature", "out_of_scope_score", "out_of_scope_threshold"):
        raw.pop(key)
    (ckpt / "config.json").write_text(json.dumps(raw))
    predictor = Predictor.from_checkpoint(ckpt)
    assert predictor.tokenizer.normalization == "" and predictor.temperature == 1.0
    plain, wide = predictor.predict_proba(["play some jazz", "ｐｌａｙ ｓｏｍｅ ｊａｚｚ"])
    assert not np.allclose(plain, wide, atol=1e-3)


def test_glove_vocabulary_is_built_from_normalised_texts(glove_cnn_ckpt):
    words = (glove_cnn_ckpt / "tokenizer" / "vocab.txt").read_text(encoding="utf-8").split("\n")
    assert not any(any("\uff01" <= ch <= "\uff5e" for ch in w) for w in words)   # no full-width letters
    predictor = Predictor.from_checkpoint(glove_cnn_ckpt)
    assert predictor.tokenizer.normalization == "NFKC"
    assert np.allclose(*predictor.predict_proba(["rain forecast", "ｒａｉｎ ｆｏｒｅｃａｓｔ"]), atol=1e-6)


# ---- serving: every form says out_of_scope

def test_the_handler_answers_out_of_scope_in_every_form(calibrated):
    handler, context = start(calibrated, out_of_scope_threshold=1e9, fallback_label="none-of-these")
    texts = ["rain", "play some jazz on the guitar"]
    answers = handle(handler, context, [
        ({"body": {"text": texts[0]}}, {"body": JSON}),
        ({"body": {"texts": texts}}, {"body": JSON}),
        ({"body": {"instances": texts}}, {"body": JSON}),
        ({"body": {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": texts}]}}, {"body": JSON}),
    ])
    one, many, v1, v2 = answers
    assert one["out_of_scope"] is True and one["label"] == "none-of-these" and one["score"] > 0
    assert [p["out_of_scope"] for p in many["predictions"]] == [True, True] == [p["out_of_scope"] for p in v1["predictions"]]
    outputs = {o["name"]: o for o in v2["outputs"]}
    assert outputs["out_of_scope"] == {"name": "out_of_scope", "shape": [2], "datatype": "BOOL", "data": [True, True]}
    assert outputs["label"]["data"] == [p["top_k"][0]["label"] for p in many["predictions"]]
    counted = {k[0]: v for k, v in context.metrics.counters.items()}
    assert counted["textclf_out_of_scope_total"] == 7


def test_a_threshold_of_none_in_the_model_config_turns_the_reject_option_off(calibrated):
    handler, context = start(calibrated, out_of_scope_threshold="none")
    [answer] = handle(handler, context, [({"body": {"text": "rain"}}, {"body": JSON})])
    assert set(answer) == {"label", "score", "top_k"} and answer["label"] is not None


def test_in_scope_answers_keep_their_label_and_say_so(calibrated):
    handler, context = start(calibrated, out_of_scope_threshold=-1e12)   # minus a squared distance: always above
    [answer] = handle(handler, context, [({"body": {"text": "rain"}}, {"body": JSON})])
    assert answer["out_of_scope"] is False and answer["label"] == answer["top_k"][0]["label"]


def test_a_valid_split_without_errors_never_sharpens_the_probabilities():
    logits, _ = synthetic(n=500)
    assert fit_temperature(logits, logits.argmax(1)) == 1.0   # every answer right: no evidence to sharpen on
    overconfident = logits * 5
    gold = overconfident.argmax(1)
    gold[:100] = (gold[:100] + 1) % 5    # 100 confident mistakes: soften
    assert fit_temperature(overconfident, gold) > 1.5
