"""`python -m train.export` in-process: every export is a checkpoint folder that says what was done, loads
through Predictor, and answers like its source (exactly for ONNX with or without fusions, closely for ONNX
Runtime int8 and bf16); bad requests exit 2."""
import json

import numpy as np
import pytest

from conftest import PROBE_TEXTS, refusing_pickle, run_failing_cli, toy_lines
from textclf.checkpoint import load_checkpoint
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


def onnx_ops(folder):
    import onnx
    return {node.op_type for node in onnx.load(str(folder / "model.onnx")).graph.node}


def int8_weights(folder):
    """name -> shape of the int8 weight matrices in model.onnx, and name -> shape of their scales."""
    import onnx
    from onnx import numpy_helper
    weights, scales = {}, {}
    for t in onnx.load(str(folder / "model.onnx")).graph.initializer:
        array = numpy_helper.to_array(t)
        if array.dtype == np.int8 and array.ndim == 2:
            weights[t.name] = array.shape
        elif t.name.endswith("_scale") and array.dtype == np.float32:
            scales[t.name] = array.shape
    return weights, scales


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


# ---- dynamic int8 (ONNX Runtime), fusions, bf16

@pytest.mark.parametrize("name", SOURCES)
def test_int8_export_is_close_to_the_source(exported, source, name):
    folder, reference = source[name]
    out = exported(folder, "--int8", "--int8-weights", "8bit")
    config = config_of(out)
    assert (config.quantization, config.runtime, config.removed_layers) == ("ort-dynamic-int8-per-channel", "onnx", [])
    check_files(out, "model.onnx")
    assert not (out / "model.safetensors").exists() and not (out / "transformer").exists()
    weights, _ = int8_weights(out)
    assert weights, "no int8 weight matrix in model.onnx"
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= onnx_ops(out) or "DynamicQuantizeMatMul" in onnx_ops(out)
    predictor = load(out)
    assert predictor.labels == reference.labels
    quantized, expected = predictor.predict_proba(TOY_TEXTS), reference.predict_proba(TOY_TEXTS)
    assert np.abs(quantized - expected).max() < 0.1
    assert (quantized.argmax(axis=1) == expected.argmax(axis=1)).all()
    assert np.abs(predictor.predict_proba(TEXTS) - reference.predict_proba(TEXTS)).max() < 0.1
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 < metrics["max_probability_difference_vs_source"] < 0.1   # quantized: close, not equal


def test_int8_weight_scales_follow_the_scheme(exported, source):
    folder, reference = source["transformer-cls"]
    per_tensor = exported(folder, "--int8", "--int8-scheme", "per-tensor", "--int8-weights", "8bit")
    per_channel = exported(folder, "--int8", "--int8-weights", "8bit")
    assert config_of(per_tensor).quantization == "ort-dynamic-int8"
    weights, scales = int8_weights(per_channel)
    rows = {shape[1] for shape in weights.values()}        # MatMul weights are (in, out): one scale per out
    assert any(shape and shape[0] in rows for shape in scales.values()), scales
    _, tensor_scales = int8_weights(per_tensor)
    weight_scales = {n: s for n, s in tensor_scales.items() if n.replace("_scale", "") in weights
                     or n.replace("_scale", "_quantized") in weights}
    assert weight_scales and all(s in ((), (1,)) for s in weight_scales.values()), tensor_scales
    expected = reference.predict_proba(TOY_TEXTS)
    errors = {name: np.abs(load(out).predict_proba(TOY_TEXTS) - expected).max()
              for name, out in (("tensor", per_tensor), ("channel", per_channel))}
    assert errors["channel"] < 0.1 and errors["tensor"] < 0.1, errors


@pytest.mark.parametrize("flags, vnni, want", [
    ({"avx2", "avx512_vnni"}, True, "ort-dynamic-int8-per-channel"),
    ({"avx2", "avx_vnni"}, True, "ort-dynamic-int8-per-channel"),
    ({"avx2", "amx_int8"}, True, "ort-dynamic-int8-per-channel"),
    ({"avx2", "fma"}, False, "ort-dynamic-int8-per-channel-7bit"),
])
def test_int8_weights_auto_keeps_7_bits_without_vnni(monkeypatch, flags, vnni, want):
    import train.export as export
    monkeypatch.setattr(export, "cpu_flags", lambda: flags)
    assert export.has_vnni() is vnni
    args = export.parse_args(["--checkpoint", "c", "--out", "o", "--int8"])
    assert args.onnx and export.quantization_name(args) == want
    args = export.parse_args(["--checkpoint", "c", "--out", "o", "--int8", "--int8-weights", "7bit"])
    assert export.quantization_name(args).endswith("-7bit")


def test_7bit_int8_export_loads_and_is_close(exported, source):
    folder, reference = source["transformer-cls"]
    out = exported(folder, "--int8", "--int8-weights", "7bit")
    assert config_of(out).quantization == "ort-dynamic-int8-per-channel-7bit"
    weights, _ = int8_weights(out)
    import onnx
    from onnx import numpy_helper
    graph = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out / "model.onnx")).graph.initializer}
    assert max(int(np.abs(graph[n]).max()) for n in weights) <= 64   # 7 bits: [-64, 63]
    assert np.abs(load(out).predict_proba(TOY_TEXTS) - reference.predict_proba(TOY_TEXTS)).max() < 0.1


def test_fused_export_equals_the_source(exported, source):
    folder, reference = source["transformer-cls"]
    out = exported(folder, "--fuse")
    config = config_of(out)
    assert (config.runtime, config.onnx_fusions, config.quantization) == ("onnx", True, "")
    fused = json.loads((out / "metrics.json").read_text())["onnx_fused_ops"]
    assert fused.get("Attention", 0) == 2 and fused.get("SkipLayerNormalization", 0) >= 2, fused   # 2 layers
    assert {"Attention", "SkipLayerNormalization"} <= onnx_ops(out)
    predictor = load(out)
    for batch_size in (len(TEXTS), 3, 1):
        np.testing.assert_allclose(predictor.predict_proba(TEXTS, batch_size=batch_size),
                                   reference.predict_proba(TEXTS), atol=1e-4, err_msg=f"batch size {batch_size}")


def test_fused_int8_export_is_close_to_the_source(exported, source):
    folder, reference = source["transformer-cls"]
    out = exported(folder, "--fuse", "--int8", "--int8-weights", "8bit")
    config = config_of(out)
    assert (config.onnx_fusions, config.quantization) == (True, "ort-dynamic-int8-per-channel")
    assert "QAttention" in onnx_ops(out) or "Attention" in onnx_ops(out)
    quantized, expected = load(out).predict_proba(TOY_TEXTS), reference.predict_proba(TOY_TEXTS)
    assert np.abs(quantized - expected).max() < 0.1
    assert (quantized.argmax(axis=1) == expected.argmax(axis=1)).all()


@pytest.mark.parametrize("name", SOURCES)
def test_bf16_export_runs_under_autocast_and_is_close(exported, source, name):
    folder, reference = source[name]
    out = exported(folder, "--bf16")
    config = config_of(out)
    assert (config.precision, config.runtime) == ("bf16", "torch")
    check_files(out, "model.safetensors")
    predictor = load(out)
    assert predictor.precision == "bf16"
    got, expected = predictor.predict_proba(TEXTS + TOY_TEXTS), reference.predict_proba(TEXTS + TOY_TEXTS)
    assert 0 < np.abs(got - expected).max() < 0.05   # bfloat16 products: close, not equal
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).mean() >= 0.9


def test_unknown_quantization_in_config_is_refused(exported, source, tmp_path):
    import shutil
    out = tmp_path / "int8"
    shutil.copytree(exported(source["glove-cnn"][0], "--int8", "--int8-weights", "8bit"), out)
    config = json.loads((out / "config.json").read_text())
    config["quantization"] = "int4-magic"
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="unknown quantization 'int4-magic'"):
        Predictor.from_checkpoint(out)


@pytest.mark.parametrize("scheme", ["dynamic-int8-per-channel", "dynamic-int8"])
def test_a_pytorch_int8_checkpoint_of_an_older_version_gets_a_clear_error(ckpt_copy, scheme):
    config = json.loads((ckpt_copy / "config.json").read_text())
    config["quantization"] = scheme
    (ckpt_copy / "config.json").write_text(json.dumps(config))
    for loader in (load_checkpoint, Predictor.from_checkpoint):
        with pytest.raises(CheckpointError, match="PyTorch int8 export .* train.export --int8"):
            loader(ckpt_copy)


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


def test_remove_layers_and_int8(exported, source):
    folder, _ = source["transformer-cls"]
    out = exported(folder, "--remove-layers", "1", "--int8", "--int8-weights", "8bit")
    config = config_of(out)
    assert (config.removed_layers, config.quantization, config.runtime) == ([1], "ort-dynamic-int8-per-channel",
                                                                            "onnx")
    assert int8_weights(out)[0]
    expected = without_layer_1(folder).predict_proba(TOY_TEXTS)
    quantized = load(out).predict_proba(TOY_TEXTS)
    assert np.abs(quantized - expected).max() < 0.1
    assert (quantized.argmax(axis=1) == expected.argmax(axis=1)).all()


# ---- refusals

@pytest.mark.parametrize("other", ["--onnx", "--fuse", "--int8"])
def test_bf16_with_onnx_is_refused_by_argparse(tiny_ckpt, tmp_path, capsys, other):
    with pytest.raises(SystemExit) as exit_:
        main(["--checkpoint", str(tiny_ckpt), "--out", str(tmp_path / "out"), "--bf16", other])
    assert exit_.value.code == 2
    assert "--bf16 applies to the PyTorch runtime" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("made_with, flags, says", [
    (("--int8",), ["--int8"], "already an export (onnx, ort-dynamic-int8"),
    (("--onnx",), ["--remove-layers", "0"], "already an export (onnx)"),
    (("--bf16",), ["--onnx"], "is a bf16 export"),
])
def test_exporting_an_export_exits_2(exported, tiny_ckpt, tmp_path, caplog, capfd, made_with, flags, says):
    source = exported(tiny_ckpt, *made_with)
    rc, text = run_failing_cli(main, capfd, caplog, ["--checkpoint", str(source), "--out", str(tmp_path / "out"), *flags])
    assert rc == 2, text
    assert says in text and "export from the float checkpoint" in text
    assert not (tmp_path / "out").exists()


def test_fuse_on_a_word_model_exits_2(glove_cnn_ckpt, tmp_path, caplog, capfd):
    rc, text = run_failing_cli(main, capfd, caplog, ["--checkpoint", str(glove_cnn_ckpt), "--out", str(tmp_path / "out"),
                                                     "--fuse"])
    assert rc == 2 and "--fuse needs a transformer checkpoint" in text
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
    predictor = load(exported(tiny_ckpt, "--int8", "--int8-weights", "8bit"))
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


def test_a_failing_onnx_runtime_step_leaves_no_export(tiny_ckpt, tmp_path, caplog, capfd, monkeypatch):
    import train.export as export

    def broken(*args):
        raise ValueError("no pattern matched")
    monkeypatch.setattr(export, "quantize_onnx", broken)
    out = tmp_path / "int8"
    rc, text = run_failing_cli(main, capfd, caplog, ["--checkpoint", str(tiny_ckpt), "--out", str(out), "--int8"])
    assert rc == 2 and "ONNX Runtime could not quantize the graph: ValueError: no pattern matched" in text
    assert not out.exists() and list(tmp_path.iterdir()) == []   # no half export, no staging folder


def test_left_padding_tokenizer_settings_do_not_change_predictions(source):
    folder, reference = source["transformer-cls"]
    predictor = load(folder)
    predictor.tokenizer.tokenizer.padding_side = "left"   # as a tokenizer_config.json may say
    np.testing.assert_allclose(predictor.predict_proba(TEXTS, batch_size=len(TEXTS)),
                               reference.predict_proba(TEXTS), atol=1e-5)
