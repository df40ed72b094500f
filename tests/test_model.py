"""textclf model code: batch-versus-single consistency, checkpoint round trips, strict loading."""
import json
import pickle

import numpy as np
import pytest
import torch

from conftest import PROBE_TEXTS, toy_lines
from textclf.checkpoint import save_checkpoint
from textclf.config import ModelConfig
from textclf.embeddings import TransformerEmbedding
from textclf.errors import CheckpointError
from textclf.model import TextClassifier
from textclf.predict import Predictor
from textclf.tokenization import HFTokenizer, WordTokenizer

LABELS = ["food", "music", "weather"]
ENCODERS = ["cls", "cnn", "densenet-cnn", "densenet-dsa"]
WORD_ENCODERS = ["cnn", "densenet-cnn", "densenet-dsa"]
# Small encoders: the point is the arithmetic, not the capacity.
SMALL = dict(num_labels=len(LABELS), max_length=32, num_filters=8, densenet_layers=2, densenet_growth=8,
             dsa_heads=2, dsa_size=8, dsa_iterations=3)


def sharpen(model):
    """Random classifiers answer ~1/3 everywhere: spread the logits so probabilities show differences
    (not so far that softmax saturates and hides them; the logits are compared as well)."""
    with torch.no_grad():
        model.classifier.weight.mul_(4.0)
    return model


def transformer_model(tiny_bert_dir, encoder):
    torch.manual_seed(0)
    config = ModelConfig(embedding="transformer", encoder=encoder, **SMALL).validate()
    model = TextClassifier(config, TransformerEmbedding.from_pretrained(tiny_bert_dir))
    return sharpen(model).eval(), HFTokenizer.load(tiny_bert_dir)


def word_model(encoder, embedding="random"):
    torch.manual_seed(0)
    tokenizer = WordTokenizer.from_texts(PROBE_TEXTS + [line.split("\t")[0] for line in toy_lines("train")])
    config = ModelConfig(embedding=embedding, encoder=encoder, vocab_size=len(tokenizer), embedding_dim=16,
                         **SMALL).validate()
    return sharpen(TextClassifier.for_words(config)).eval(), tokenizer


def cases():
    return ([pytest.param(("transformer", e), id=f"transformer-{e}") for e in ENCODERS]
            + [pytest.param((emb, e), id=f"{emb}-{e}") for emb in ("random", "glove") for e in WORD_ENCODERS])


@pytest.fixture
def built(request, tiny_bert_dir):
    embedding, encoder = request.param
    if embedding == "transformer":
        return transformer_model(tiny_bert_dir, encoder)
    return word_model(encoder, embedding)


@pytest.mark.parametrize("built", cases(), indirect=True)
def test_same_probabilities_alone_and_in_a_padded_batch(built):
    model, tokenizer = built
    predictor = Predictor(model, tokenizer, LABELS, max_length=32)
    batch = predictor.predict_proba(PROBE_TEXTS, batch_size=len(PROBE_TEXTS))
    widths = predictor.encode(PROBE_TEXTS)["attention_mask"].sum(dim=1)
    assert widths.min() < widths.max(), "the batch must pad its shorter texts"
    assert batch.max() - batch.min() > 0.2, "probabilities too flat for the comparison to mean anything"
    with torch.inference_mode():
        batch_logits = model(**predictor.encode(PROBE_TEXTS))
    for i, text in enumerate(PROBE_TEXTS):
        alone = predictor.predict_proba([text])
        np.testing.assert_allclose(alone[0], batch[i], atol=1e-5, err_msg=text)
        with torch.inference_mode():
            alone_logits = model(**predictor.encode([text]))
        torch.testing.assert_close(alone_logits[0], batch_logits[i], atol=1e-5, rtol=1e-5, msg=text)
    in_pairs = predictor.predict_proba(PROBE_TEXTS, batch_size=2)   # other paddings, other groupings
    np.testing.assert_allclose(in_pairs, batch, atol=1e-5)
    np.testing.assert_allclose(batch.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("lengths, max_texts, overhead, want", [
    ([5] * 6, 4, 64, [[0, 1, 2, 3], [4, 5]]),                          # similar lengths: by count only
    ([5] * 15 + [500], 64, 64, [list(range(15)), [15]]),               # one document among sentences
    ([5] * 15 + [500], 64, 0, [list(range(16))]),                      # 0: never split by length
    ([10, 12, 14, 200, 210, 220], 64, 64, [[0, 1, 2], [3, 4, 5]]),     # two length classes
    ([10, 11], 64, 64, [[0, 1]]),                                      # 1 token of padding: one pass
    ([], 8, 64, []),
])
def test_passes_split_by_count_and_by_padding(lengths, max_texts, overhead, want):
    from textclf.predict import passes
    assert passes(lengths, max_texts, overhead) == want


@pytest.mark.parametrize("built", [("transformer", "cls"), ("glove", "cnn")], indirect=True)
def test_mixed_lengths_run_in_separate_passes_with_the_same_probabilities(built):
    model, tokenizer = built
    predictor = Predictor(model, tokenizer, LABELS, max_length=32)
    texts = ["jazz"] * 6 + [" ".join(["play some music by the band"] * 8)]   # 1-2 tokens vs 32
    stats_split, stats_one = {}, {}
    split = predictor.predict_proba(texts, batch_size=16, stats=stats_split)
    predictor.pass_overhead_tokens = 0
    one = predictor.predict_proba(texts, batch_size=16, stats=stats_one)
    np.testing.assert_allclose(split, one, atol=1e-5)
    assert (stats_one["forward_passes"], stats_split["forward_passes"]) == (1, 2)
    assert stats_split["tokens"] == stats_one["tokens"] == stats_split["padded_tokens"]   # no padding left
    assert stats_one["padded_tokens"] == 7 * 32 > stats_split["tokens"]


@pytest.mark.parametrize("built", cases(), indirect=True)
def test_checkpoint_round_trip_gives_the_same_probabilities(built, tmp_path):
    model, tokenizer = built
    before = Predictor(model, tokenizer, LABELS, max_length=32).predict_proba(PROBE_TEXTS)
    folder = save_checkpoint(tmp_path / "ckpt", model, tokenizer, LABELS, metrics={"valid_accuracy": 0.5})
    assert not (tmp_path / "ckpt.tmp").exists()
    loaded = Predictor.from_checkpoint(folder)
    assert loaded.labels == LABELS
    assert loaded.max_length == 32
    assert not loaded.model.training, "a loaded model must be in eval mode (no dropout)"
    assert ModelConfig.from_json_file(folder / "config.json") == model.config
    np.testing.assert_allclose(loaded.predict_proba(PROBE_TEXTS), before, atol=1e-6)
    assert [p["label"] for p in loaded.predict(PROBE_TEXTS)] == [LABELS[i] for i in before.argmax(axis=1)]


def test_predict_shapes_and_top_k(tiny_bert_dir):
    model, tokenizer = transformer_model(tiny_bert_dir, "cls")
    predictor = Predictor(model, tokenizer, LABELS, max_length=32)
    assert predictor.predict_proba([]).shape == (0, 3)
    [answer] = predictor.predict(["rain"], top_k=2)
    assert set(answer) == {"label", "score", "top_k"}
    assert [x["label"] for x in answer["top_k"]][0] == answer["label"] and len(answer["top_k"]) == 2
    assert answer["top_k"][0]["score"] >= answer["top_k"][1]["score"]
    assert len(predictor.predict(["rain"], top_k=99)[0]["top_k"]) == 3


@pytest.mark.parametrize("embedding", ["random", "glove"])
def test_cls_with_word_embeddings_lists_the_possible_encoders(embedding):
    with pytest.raises(CheckpointError) as err:
        ModelConfig(embedding=embedding, encoder="cls", vocab_size=10, embedding_dim=4).validate()
    assert "cnn, densenet-cnn, densenet-dsa" in str(err.value)


@pytest.mark.parametrize("field, value, expected", [
    ("encoder", "lstm", "choose one of cls, cnn, densenet-cnn, densenet-dsa"),
    ("embedding", "word2vec", "choose one of transformer, glove, random"),
    ("num_labels", 1, "num_labels must be at least 2"),
])
def test_unknown_names_list_the_choices(field, value, expected):
    with pytest.raises(CheckpointError, match=expected):
        ModelConfig(**{field: value}).validate()


# ---- strict loading of a damaged checkpoint (a copy of the trained tiny model)

def edit_json(path, change):
    data = json.loads(path.read_text())
    data = change(data) or data
    path.write_text(json.dumps(data))


def test_trained_checkpoint_loads(ckpt_copy, no_pickle):
    predictor = Predictor.from_checkpoint(ckpt_copy)
    assert predictor.labels == LABELS
    assert predictor.predict(["will it rain tomorrow"])[0]["label"] == "weather"


def test_missing_weights_are_named(ckpt_copy, no_pickle):
    (ckpt_copy / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing model.safetensors"):
        Predictor.from_checkpoint(ckpt_copy)


@pytest.mark.parametrize("damage", ["truncated", "pickle", "empty", "text"])
def test_unreadable_weights_are_a_checkpoint_error(ckpt_copy, no_pickle, damage):
    path = ckpt_copy / "model.safetensors"
    raw = path.read_bytes()
    path.write_bytes({"truncated": raw[: len(raw) // 2], "pickle": pickle.dumps({"classifier.weight": [1.0]}),
                      "empty": b"", "text": b"not a tensor file\n"}[damage])
    with pytest.raises(CheckpointError) as err:
        Predictor.from_checkpoint(ckpt_copy)
    assert "model.safetensors" in str(err.value) and "safetensors" in str(err.value)


def test_labels_json_length_must_match_config(ckpt_copy):
    (ckpt_copy / "labels.json").write_text(json.dumps(["food", "music"]))
    with pytest.raises(CheckpointError, match="labels.json has 2 labels, config.json says num_labels=3"):
        Predictor.from_checkpoint(ckpt_copy)


def test_labels_and_config_disagreeing_with_the_weights(ckpt_copy):
    (ckpt_copy / "labels.json").write_text(json.dumps(LABELS + ["travel"]))
    edit_json(ckpt_copy / "config.json", lambda c: c.update(num_labels=4))
    with pytest.raises(CheckpointError) as err:
        Predictor.from_checkpoint(ckpt_copy)
    assert "classifier.weight" in str(err.value) and "wrong shape" in str(err.value)


@pytest.mark.parametrize("labels, problem", [('{"a": 1}', "JSON list"), ('["a", "a", "b"]', "duplicate"),
                                             ("[not json", "not valid JSON")])
def test_bad_labels_json(ckpt_copy, labels, problem):
    (ckpt_copy / "labels.json").write_text(labels)
    with pytest.raises(CheckpointError, match=problem):
        Predictor.from_checkpoint(ckpt_copy)


def test_unknown_format_version_is_named(ckpt_copy):
    edit_json(ckpt_copy / "config.json", lambda c: c.update(format_version=99))
    with pytest.raises(CheckpointError, match="format_version 99"):
        Predictor.from_checkpoint(ckpt_copy)


def test_unknown_config_field_is_named(ckpt_copy):
    edit_json(ckpt_copy / "config.json", lambda c: c.update(hidden_magic=1))
    with pytest.raises(CheckpointError, match="unknown fields: hidden_magic"):
        Predictor.from_checkpoint(ckpt_copy)


@pytest.mark.parametrize("missing", ["config.json", "tokenizer", "transformer/config.json"])
def test_missing_files_are_named(ckpt_copy, missing):
    import shutil
    target = ckpt_copy / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(CheckpointError, match=missing.replace(".", r"\.")):
        Predictor.from_checkpoint(ckpt_copy)


def _rewrite_weights(folder, change):
    from safetensors.torch import load_file, save_file
    state = load_file(str(folder / "model.safetensors"))
    change(state)
    save_file(state, str(folder / "model.safetensors"))


def test_missing_key_is_named(ckpt_copy):
    _rewrite_weights(ckpt_copy, lambda s: s.pop("classifier.bias"))
    with pytest.raises(CheckpointError, match="missing keys: classifier.bias"):
        Predictor.from_checkpoint(ckpt_copy)


def test_unexpected_key_is_named(ckpt_copy):
    _rewrite_weights(ckpt_copy, lambda s: s.update({"extra.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match="unexpected keys: extra.weight"):
        Predictor.from_checkpoint(ckpt_copy)


def test_word_model_vocabulary_must_match_config(tmp_path):
    model, tokenizer = word_model("cnn")
    folder = save_checkpoint(tmp_path / "ckpt", model, tokenizer, LABELS)
    with (folder / "tokenizer" / "vocab.txt").open("a") as f:
        f.write("brandnewword\n")
    with pytest.raises(CheckpointError, match="vocab_size"):
        Predictor.from_checkpoint(folder)


@pytest.mark.parametrize("files, want", [
    ({"cpu.max": "200000 100000\n"}, 2),                                   # cgroup v2, 2 CPUs
    ({"cpu.max": "150000 100000\n"}, 2),                                   # 1.5 CPUs: rounded up
    ({"cpu.max": "max 100000\n"}, None),                                   # no limit
    ({"cpu/cpu.cfs_quota_us": "400000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 4),   # cgroup v1
    ({"cpu,cpuacct/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 1),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1, no limit
    ({}, None),                                                             # no cgroup files at all
])
def test_cpu_quota_reads_cgroup_v2_and_v1(tmp_path, files, want):
    from textclf.predict import cpu_quota
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cpu_quota(str(tmp_path)) == want
