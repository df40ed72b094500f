"""`python -m train.export` in-process: every export is a checkpoint folder that says what was done, loads
through Predictor, and answers like its source (exactly for ONNX, closely for int8); bad requests exit 2."""
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from conftest import PROBE_TEXTS, refusing_pickle, run_failing_cli, toy_lines
from textclf.checkpoint import load_checkpoint, save_checkpoint
from textclf.config import ModelConfig
from textclf.embeddings import remove_layers
from textclf.errors import CheckpointError
from textclf.predict import Predictor
from train.export import main

TOY_TEXTS = [line.split("\t")[0] for split in ("valid", "test") for line in toy_lines(split)]
# Lengths from 1 to 32+ tokens (truncated at max_length 32), none like the two texts traced at export.
TEXTS = PROBE_TEXTS + ["will it rain tomorrow", "play my jazz playlist", "a recipe for pasta and salad"]
SOURCES = ["transformer-cls", "glove-cnn"]
ALLOWED_FILES = {"config.json", "labels.json", "metrics.json", "model.safetensors", "model.onnx"}


@pytest.fixture(scope="module")
def source(tiny_ckpt, glove_cnn_ckpt):
    """name -> (checkpoint folder, its Predictor)."""
    folders = {"transformer-cls": tiny_ckpt, "glove-cnn": glove_cnn_ckpt}
    return {name: (folder, Predictor.from_checkpoint(folder)) for name, folder in folders.items()}


def load(folder):
    with refusing_pickle():
        return Predictor.from_checkpoint(folder)


def config_of(folder):
    return ModelConfig.from_json_file(folder / "config.json")


def check_files(folder, weights):
    """Only JSON, the weights file and the tokenizer: no pickles, no leftovers from the source."""
    top = {p.name for p in folder.iterdir()}
    assert {"config.json", "labels.json", "tokenizer", weights} <= top, top
    assert not (folder.parent / (folder.name + ".tmp")).exists()
    for path in folder.rglob("*"):
        if path.is_file() and path.parent == folder:
            assert path.name in ALLOWED_FILES, path
        assert path.suffix not in (".bin", ".pt", ".pth", ".pkl", ".pickle"), path


def int8_tensors(folder):
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k).dtype for k in f.keys() if k.endswith(".weight_int8")}


# ---- ONNX

@pytest.mark.parametrize("name", SOURCES)
def test_onnx_export_equals_the_source(exported, source, name):
    folder, reference = source[name]
    out = exported(folder, "--onnx")
    config = config_of(out)
    assert (config.runtime, config.quantization, config.removed_layers) == ("onnx", "", [])
    check_files(out, "model.onnx")
    assert not (out / "model.safetensors").exists() and not (out / "transformer").exists()
    predictor = load(out)
    assert predictor.labels == reference.labels and predictor.max_length == reference.max_length
    expected = reference.predict_proba(TEXTS)
    widths = predictor.encode(TEXTS)["attention_mask"].sum(dim=1)
    assert widths.max() == 32 and len(set(widths.tolist())) >= 6, widths   # many lengths, not only the traced one
    # Dynamic axes: one padded batch of all, odd batches of 3 (never seen at export) and single texts.
    for batch_size in (len(TEXTS), 3, 1):
        np.testing.assert_allclose(predictor.predict_proba(TEXTS, batch_size=batch_size), expected, atol=1e-4,
                                   err_msg=f"batch size {batch_size}")
    toy = predictor.predict_proba(TOY_TEXTS)
    np.testing.assert_allclose(toy, reference.predict_proba(TOY_TEXTS), atol=1e-4)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["max_probability_difference_vs_source"] <= 1e-4
    assert metrics["exported_from"] == str(folder)


# ---- dynamic int8

@pytest.mark.parametrize("name", SOURCES)
def test_int8_export_is_close_to_the_source(exported, source, name):
    folder, reference = source[name]
    out = exported(folder, "--int8")
    config = config_of(out)
    assert (config.quantization, config.runtime, config.removed_layers) == ("dynamic-int8-per-channel", "torch", [])
    check_files(out, "model.safetensors")
    dtypes = int8_tensors(out)
    assert "classifier.weight_int8" in dtypes, dtypes
    if name == "transformer-cls":   # the transformer's Linear layers are quantized too
        assert any(k.startswith("embedding.model.encoder.layer.") for k in dtypes), dtypes
    assert set(dtypes.values()) == {torch.int8}
    predictor = load(out)
    assert predictor.labels == reference.labels
    quantized, expected = predictor.predict_proba(TOY_TEXTS), reference.predict_proba(TOY_TEXTS)
    assert np.abs(quantized - expected).max() < 0.1
    assert (quantized.argmax(axis=1) == expected.argmax(axis=1)).all()
    assert np.abs(predictor.predict_proba(TEXTS) - reference.predict_proba(TEXTS)).max() < 0.1


@pytest.mark.parametrize("name", SOURCES)
def test_int8_round_trip_gives_identical_probabilities(exported, source, name, tmp_path):
    out = exported(source[name][0], "--int8")
    before = load(out).predict_proba(TEXTS + TOY_TEXTS)
    with refusing_pickle(saving=True):
        model, tokenizer, labels = load_checkpoint(out)
        again = save_checkpoint(tmp_path / "again", model, tokenizer, labels)
    assert config_of(again) == config_of(out)
    assert int8_tensors(again) == int8_tensors(out)
    np.testing.assert_array_equal(load(again).predict_proba(TEXTS + TOY_TEXTS), before)


def test_per_tensor_int8_scheme_stores_one_scale_per_matrix(exported, source, tmp_path):
    folder, reference = source["transformer-cls"]
    per_tensor, per_channel = exported(folder, "--int8", "--int8-scheme", "per-tensor"), exported(folder, "--int8")
    assert config_of(per_tensor).quantization == "dynamic-int8"
    with safe_open(str(per_tensor / "model.safetensors"), framework="pt") as f:
        assert f.get_tensor("classifier.weight_scale").dim() == 0
    with safe_open(str(per_channel / "model.safetensors"), framework="pt") as f:
        rows = f.get_tensor("classifier.weight_int8").shape[0]
        assert f.get_tensor("classifier.weight_scale").shape == (rows,)
        assert f.get_tensor("classifier.weight_zero_point").shape == (rows,)
    expected = reference.predict_proba(TOY_TEXTS)
    errors = {name: np.abs(load(out).predict_proba(TOY_TEXTS) - expected).max()
              for name, out in (("tensor", per_tensor), ("channel", per_channel))}
    assert errors["channel"] < 0.1 and errors["tensor"] < 0.1, errors


def test_unknown_quantization_in_config_is_refused(exported, source, tmp_path):
    import shutil
    out = tmp_path / "int8"
    shutil.copytree(exported(source["glove-cnn"][0], "--int8"), out)
    config = json.loads((out / "config.json").read_text())
    config["quantization"] = "int4-magic"
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="unknown quantization 'int4-magic'"):
        load_checkpoint(out)


# ---- layer removal (tiny BERT has layers 0 and 1)

def without_layer_1(folder):
    model, tokenizer, labels = load_checkpoint(folder)
    remove_layers(model.embedding.model, [1])
    return Predictor(model, tokenizer, labels, model.config.max_length)


def test_remove_layers_export_equals_the_source_without_that_layer(exported, source):
    folder, _ = source["transformer-cls"]
    out = exported(folder, "--remove-layers", "1")
    config = config_of(out)
    assert (config.removed_layers, config.quantization, config.runtime) == ([1], "", "torch")
    assert json.loads((out / "transformer" / "config.json").read_text())["num_hidden_layers"] == 1
    check_files(out, "model.safetensors")
    predictor = load(out)
    assert len(predictor.model.embedding.model.encoder.layer) == 1
    np.testing.assert_allclose(predictor.predict_proba(TEXTS + TOY_TEXTS),
                               without_layer_1(folder).predict_proba(TEXTS + TOY_TEXTS), atol=1e-5)


def test_remove_layers_and_int8(exported, source, tmp_path):
    folder, _ = source["transformer-cls"]
    out = exported(folder, "--remove-layers", "1", "--int8")
    config = config_of(out)
    assert (config.removed_layers, config.quantization, config.runtime) == ([1], "dynamic-int8-per-channel", "torch")
    assert json.loads((out / "transformer" / "config.json").read_text())["num_hidden_layers"] == 1
    assert "classifier.weight_int8" in int8_tensors(out)
    predictor = load(out)
    expected = without_layer_1(folder).predict_proba(TOY_TEXTS)
    quantized = predictor.predict_proba(TOY_TEXTS)
    assert np.abs(quantized - expected).max() < 0.1
    assert (quantized.argmax(axis=1) == expected.argmax(axis=1)).all()
    with refusing_pickle(saving=True):
        again = save_checkpoint(tmp_path / "again", *load_checkpoint(out))
    np.testing.assert_array_equal(load(again).predict_proba(TOY_TEXTS), quantized)


# ---- refusals

def test_onnx_and_int8_together_are_refused_by_argparse(tiny_ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--checkpoint", str(tiny_ckpt), "--out", str(tmp_path / "out"), "--onnx", "--int8"])
    assert exit_.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags", [["--int8"], ["--onnx"], ["--remove-layers", "0"]])
def test_exporting_a_quantized_checkpoint_exits_2(exported, tiny_ckpt, tmp_path, caplog, capfd, flags):
    quantized = exported(tiny_ckpt, "--int8")
    rc, text = run_failing_cli(main, capfd, caplog, ["--checkpoint", str(quantized), "--out", str(tmp_path / "out"), *flags])
    assert rc == 2
    assert "already quantized" in text and "export from the float checkpoint" in text
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("layers", ["2", "0,5", "-1"])
def test_removing_a_layer_out_of_range_exits_2(tiny_ckpt, tmp_path, caplog, capfd, layers):
    rc, text = run_failing_cli(main, capfd, caplog, ["--checkpoint", str(tiny_ckpt), "--out", str(tmp_path / "out"),
                                       "--remove-layers", layers])
    assert rc == 2
    assert "the model has layers 0..1" in text, text
    assert not (tmp_path / "out").exists()


def test_remove_layers_on_a_word_model_exits_2(glove_cnn_ckpt, tmp_path, caplog, capfd):
    rc, text = run_failing_cli(main, capfd, caplog, ["--checkpoint", str(glove_cnn_ckpt), "--out", str(tmp_path / "out"),
                                       "--remove-layers", "0"])
    assert rc == 2
    assert "--remove-layers needs a transformer checkpoint" in text
    assert not (tmp_path / "out").exists()


def test_out_equal_to_the_checkpoint_exits_2(ckpt_copy, caplog, capfd):
    before = {p.name: p.stat().st_mtime_ns for p in ckpt_copy.iterdir()}
    rc, text = run_failing_cli(main, capfd, caplog, ["--checkpoint", str(ckpt_copy), "--out", str(ckpt_copy), "--int8"])
    assert rc == 2 and "--out must differ from --checkpoint" in text
    assert {p.name: p.stat().st_mtime_ns for p in ckpt_copy.iterdir()} == before


def test_int8_batch_mates_move_probabilities_only_slightly(exported, tiny_ckpt):
    # Dynamic int8 picks activation scales per forward pass over the whole padded batch, so unlike the
    # float model (test_model.py) a text's probabilities depend a little on its batch: bounded here.
    predictor = load(exported(tiny_ckpt, "--int8"))
    batch = predictor.predict_proba(TEXTS, batch_size=len(TEXTS))
    alone = np.stack([predictor.predict_proba([text])[0] for text in TEXTS])
    assert np.abs(alone - batch).max() < 0.02
    assert (alone.argmax(axis=1) == batch.argmax(axis=1)).all()


def test_remove_layers_that_are_not_integers_are_refused_by_argparse(tiny_ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--checkpoint", str(tiny_ckpt), "--out", str(tmp_path / "out"), "--remove-layers", "1,a"])
    assert exit_.value.code == 2
    assert "expected comma-separated integers, got '1,a'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
