"""The Mahalanobis out-of-scope score as served: its arithmetic, its file, the features every runtime returns
beside the logits, and the reject answers it gives in-process, in bulk and after each export."""
import json
import logging
import shutil

import numpy as np
import pytest
import torch

from conftest import PROBE_TEXTS
from test_bulk_predict import read_jsonl, run_bulk, sample_texts, write_lines
from test_import_hf import imported  # noqa: F401 (a fixture)
from textclf.checkpoint import STATS_FILE, check_folder, load_checkpoint
from textclf.errors import CheckpointError
from textclf.mahalanobis import RIDGE, Mahalanobis
from textclf.predict import Predictor
from train.calibrate import main as calibrate


# ---- the arithmetic and the file

def gaussian_classes(n=600, dim=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=5.0, size=(classes, dim))
    mixing = rng.normal(size=(dim, dim))   # a covariance far from the identity
    y = rng.integers(0, classes, size=n)
    return centres[y] + rng.normal(size=(n, dim)) @ mixing, y, centres


def test_the_score_is_minus_the_squared_distance_to_the_nearest_class_mean():
    x, y, _ = gaussian_classes()
    stats = Mahalanobis.fit(x, y, 3)
    means = np.stack([x[y == c].mean(0) for c in range(3)])
    np.testing.assert_allclose(stats.means, means)
    centred = x - means[y]
    precision = np.linalg.inv(centred.T @ centred / len(x) + RIDGE * np.eye(x.shape[1]))
    probe = np.random.default_rng(1).normal(scale=6.0, size=(50, x.shape[1]))
    expected = -np.min([np.einsum("ij,jk,ik->i", probe - m, precision, probe - m) for m in means], axis=0)
    np.testing.assert_allclose(stats.score(probe), expected, rtol=1e-5)   # scored in float32
    assert (stats.score(means) > -1e-3).all()   # a class mean is at distance 0


def test_points_far_from_every_class_score_lower():
    x, y, centres = gaussian_classes()
    stats = Mahalanobis.fit(x, y, 3)
    near, far = stats.score(centres + 0.1), stats.score(centres * 4 + 30)
    assert (near > far.max()).all()


def test_the_statistics_round_trip_and_a_bad_file_is_named(tmp_path):
    x, y, _ = gaussian_classes()
    stats = Mahalanobis.fit(x, y, 3)
    stats.save(tmp_path / STATS_FILE)
    again = Mahalanobis.load(tmp_path / STATS_FILE, 3)
    np.testing.assert_array_equal(again.score(x), stats.score(x))
    with pytest.raises(CheckpointError, match=r"'means' has shape \(3, 6\), expected \(4, features\)"):
        Mahalanobis.load(tmp_path / STATS_FILE, 4)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="bad.safetensors is not a readable safetensors file"):
        Mahalanobis.load(tmp_path / "bad.safetensors", 3)
    with pytest.raises(ValueError, match=r"no fitting text for classes \[2\]"):
        Mahalanobis.fit(x[y < 2], y[y < 2], 3)


# ---- a checkpoint that serves it

@pytest.fixture(scope="module")
def served(tiny_ckpt, toy_data_dir, tmp_path_factory):
    """The tiny BERT with a Mahalanobis threshold at the median score of sample texts: half of them are
    answered out of scope, so every check below sees both answers."""
    return reject_half(tiny_ckpt, tmp_path_factory.mktemp("mahalanobis") / "checkpoint", toy_data_dir,
                       sample_texts(60))


def reject_half(src, dst, data, texts):
    """A copy of checkpoint src at dst whose Mahalanobis threshold (fitted on data) is the median score of texts."""
    ckpt = shutil.copytree(src, dst)
    assert calibrate(["--checkpoint", str(ckpt), "--data", str(data), "--target-precision", "0.5",
                      "--score", "mahalanobis"]) == 0
    predictor = Predictor.from_checkpoint(ckpt)
    scores = predictor.in_scope(*predictor.predict_logits(texts, features=True))
    assert calibrate(["--checkpoint", str(ckpt), "--data", str(data), "--score", "mahalanobis",
                      "--threshold", str(float(np.median(scores))), "--keep-temperature"]) == 0
    return ckpt


def test_a_checkpoint_without_its_statistics_is_incomplete(served, tmp_path):
    ckpt = shutil.copytree(served, tmp_path / "c")
    (ckpt / STATS_FILE).unlink()
    with pytest.raises(CheckpointError, match=f"incomplete: missing {STATS_FILE}"):
        check_folder(ckpt)


def test_the_features_are_the_input_of_the_classifier_layer(served):
    model, tokenizer, _ = load_checkpoint(served)
    enc = tokenizer.encode(PROBE_TEXTS, 32)
    with torch.inference_mode():
        logits, features = model(enc["input_ids"], enc["attention_mask"], return_features=True)
        torch.testing.assert_close(model.classifier(features), logits)
        torch.testing.assert_close(model(enc["input_ids"], enc["attention_mask"]), logits)


@pytest.mark.parametrize("architecture", ["bert", "roberta"])
def test_a_hugging_face_head_gives_the_input_of_its_last_linear_layer(imported, architecture):
    _, ckpt = imported(architecture)
    model, tokenizer, _ = load_checkpoint(ckpt)
    enc = tokenizer.encode(PROBE_TEXTS, 32)
    with torch.inference_mode():
        logits, features = model(enc["input_ids"], enc["attention_mask"], return_features=True)
        torch.testing.assert_close(model.head_layer()(features), logits)
        torch.testing.assert_close(model(enc["input_ids"], enc["attention_mask"]), logits)
    assert not model.head_layer()._forward_hooks   # the hook is gone afterwards


def test_answers_follow_the_score_and_the_threshold(served):
    predictor = Predictor.from_checkpoint(served)
    texts = sample_texts(60)
    threads = torch.get_num_threads()
    answers = predictor.predict(texts, top_k=2)
    assert torch.get_num_threads() == threads   # the score runs on one thread, then gives the others back
    scores = predictor.in_scope(*predictor.predict_logits(texts, features=True))
    assert [a["out_of_scope"] for a in answers] == list(scores < predictor.out_of_scope_threshold)
    assert 0 < sum(a["out_of_scope"] for a in answers) < len(texts)
    assert all((a["label"] is None) == a["out_of_scope"] for a in answers)


def test_features_do_not_depend_on_batching(served):
    predictor = Predictor.from_checkpoint(served)
    _, together = predictor.predict_logits(PROBE_TEXTS, batch_size=len(PROBE_TEXTS), features=True)
    alone = np.concatenate([predictor.predict_logits([t], features=True)[1] for t in PROBE_TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-4)
    logits, features = predictor.predict_logits([], features=True)
    assert logits.shape == (0, len(predictor.labels)) and features.shape == (0, predictor.mahalanobis.dim)


def rank_correlation(a, b):
    return float(np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1])


@pytest.mark.parametrize("flags", [("--onnx",), ("--fuse", "--int8"), ("--bf16",)])
def test_every_variant_scores_as_the_source(served, tmp_path, flags):
    """ONNX fp32 scores as the source; int8 and bf16 perturb the features, which the precision matrix amplifies
    in the directions training barely varied (far more in this tiny random model than in MiniLM: README), so
    there the order of the texts is compared."""
    from train.export import main as export
    assert export(["--checkpoint", str(served), "--out", str(tmp_path / "v"), *flags]) == 0
    assert (tmp_path / "v" / STATS_FILE).read_bytes() == (served / STATS_FILE).read_bytes()
    source, variant = Predictor.from_checkpoint(served), Predictor.from_checkpoint(tmp_path / "v")
    texts = sample_texts(60)
    want = source.in_scope(*source.predict_logits(texts, features=True))
    got = variant.in_scope(*variant.predict_logits(texts, features=True))
    if flags == ("--onnx",):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
        assert [a["out_of_scope"] for a in variant.predict(texts)] == [a["out_of_scope"] for a in source.predict(texts)]
    else:
        assert rank_correlation(got, want) > 0.8


def test_calibrating_an_int8_export_fits_its_own_features(served, toy_data_dir, tmp_path):
    from train.export import main as export
    assert export(["--checkpoint", str(served), "--out", str(tmp_path / "v"), "--fuse", "--int8"]) == 0
    assert calibrate(["--checkpoint", str(tmp_path / "v"), "--data", str(toy_data_dir), "--target-precision",
                      "0.5"]) == 0
    variant = Predictor.from_checkpoint(tmp_path / "v")
    assert not np.allclose(variant.mahalanobis.precision, Predictor.from_checkpoint(served).mahalanobis.precision)
    answers = variant.predict(sample_texts(60))
    assert all((a["label"] is None) == a["out_of_scope"] for a in answers)


def test_an_onnx_graph_without_features_is_refused_clearly(served, tmp_path):
    import onnx
    from train.export import main as export
    assert export(["--checkpoint", str(served), "--out", str(tmp_path / "v"), "--onnx"]) == 0
    graph = onnx.load(str(tmp_path / "v" / "model.onnx"))
    graph.graph.output.remove(next(o for o in graph.graph.output if o.name == "features"))
    onnx.save(graph, str(tmp_path / "v" / "model.onnx"))
    predictor = Predictor.from_checkpoint(tmp_path / "v")
    assert predictor.predict_proba(["rain"]).shape == (1, len(predictor.labels))   # the logits alone still work
    with pytest.raises(CheckpointError, match="no 'features' output .* export it again"):
        predictor.predict(["rain"])


def test_removing_layers_drops_the_threshold_it_no_longer_fits(served, tmp_path, caplog):
    from train.export import main as export
    with caplog.at_level(logging.WARNING, logger="train.export"):
        assert export(["--checkpoint", str(served), "--out", str(tmp_path / "v"), "--remove-layers", "1"]) == 0
    config = check_folder(tmp_path / "v")
    assert config.out_of_scope_threshold is None and not (tmp_path / "v" / STATS_FILE).exists()
    assert "removing layers changes the features" in caplog.text and "train.calibrate" in caplog.text
    assert "out_of_scope" not in Predictor.from_checkpoint(tmp_path / "v").predict(["rain"])[0]


@pytest.mark.parametrize("workers", [[], ["--tokenize-workers", "2"]])
def test_bulk_classification_answers_out_of_scope_as_the_predictor(served, tmp_path, workers):
    texts = sample_texts(150, seed=3)
    src = write_lines(tmp_path / "in.txt", texts)
    assert run_bulk(served, src, tmp_path / "out.jsonl", "--chunk", "40", *workers) == 0
    records = read_jsonl(tmp_path / "out.jsonl")
    expected = Predictor.from_checkpoint(served).predict(texts)
    assert [r["out_of_scope"] for r in records] == [e["out_of_scope"] for e in expected]
    assert [r["label"] for r in records] == [e["label"] for e in expected]
    assert 0 < sum(r["out_of_scope"] for r in records) < len(texts)


def test_calibrate_fits_on_the_training_texts_only(served, toy_data_dir, tmp_path):
    """Without a valid file the score is fitted on what training kept of train, not on the held-out valid."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(next(toy_data_dir.glob("train.*")), data / "train.txt")
    ckpt = shutil.copytree(served, tmp_path / "c")
    (ckpt / "train_args.json").write_text(json.dumps({"valid_fraction": 0.5, "seed": 7}))
    assert calibrate(["--checkpoint", str(ckpt), "--data", str(data), "--target-precision", "0.5"]) == 0
    from train.data import load_dataset
    kept = load_dataset(data, valid_fraction=0.5, seed=7).train
    predictor = Predictor.from_checkpoint(ckpt)
    features = predictor.predict_logits([e.text for e in kept], features=True)[1]
    index = {label: i for i, label in enumerate(predictor.labels)}
    expected = Mahalanobis.fit(features, [index[e.label] for e in kept], len(predictor.labels))
    np.testing.assert_allclose(predictor.mahalanobis.means, expected.means, rtol=1e-5, atol=1e-6)


def test_evaluate_reports_what_the_threshold_answers(served, toy_data_dir, tmp_path, capsys):
    from textclf.data import read_examples
    from train.evaluate import main as evaluate
    assert evaluate(["--checkpoint", str(served), "--data", str(toy_data_dir), "--split", "valid",
                     "--out", str(tmp_path), "--latency-examples", "2"]) == 0
    assert "(mahalanobis):" in capsys.readouterr().out
    reported = json.loads((tmp_path / "eval-checkpoint-valid.json").read_text())["calibration"]
    texts = [e.text for e in read_examples(toy_data_dir / "valid.txt")[0]]
    answered = [not a["out_of_scope"] for a in Predictor.from_checkpoint(served).predict(texts)]
    assert reported["out_of_scope_score"] == "mahalanobis"
    assert reported["coverage"] == pytest.approx(sum(answered) / len(texts))


def test_optimize_fits_the_chosen_int8_variant_on_its_own_features(served, toy_data_dir, tmp_path, monkeypatch):
    from train import optimize
    # whichever is faster on this CPU, take the int8 row: that is the case to check
    monkeypatch.setattr(optimize, "choose", lambda rows, tolerance: next(r for r in rows if r["name"] == "onnx-int8"))
    out = tmp_path / "chosen"
    assert optimize.main(["--checkpoint", str(served), "--data", str(toy_data_dir), "--out", str(out),
                          "--candidates", "fp32,onnx-int8", "--latency-examples", "2", "--threads", "1"]) == 0
    report = json.loads((out / "optimize.json").read_text())
    variant, source = Predictor.from_checkpoint(out), Predictor.from_checkpoint(served)
    assert variant.out_of_scope_threshold == source.out_of_scope_threshold and variant.precision == "fp32"
    assert not np.allclose(variant.mahalanobis.means, source.mahalanobis.means)   # its own statistics
    from textclf.data import read_examples
    texts = [e.text for e in read_examples(toy_data_dir / "valid.txt")[0]]
    answered = np.mean([not a["out_of_scope"] for a in variant.predict(texts)])
    assert report["out_of_scope"]["valid_coverage"] == pytest.approx(answered)
    assert "fitted on its own features" in (out / "optimize.md").read_text()


def test_tritonclient_reads_the_mahalanobis_decisions(served):
    """The Open Inference Protocol's out_of_scope output, read by tritonclient in its defaults (binary), says what
    the Predictor decides with the Mahalanobis score."""
    from test_handler import start
    from test_protocol import as_sent, infer_body, result, send
    texts = sample_texts(12)
    expected = [a["out_of_scope"] for a in Predictor.from_checkpoint(served).predict(texts)]
    assert 0 < sum(expected) < len(texts)
    handler, context = start(served)
    [answer] = send(handler, context, [as_sent(*infer_body(texts))])
    assert result(answer).as_numpy("out_of_scope").tolist() == expected
