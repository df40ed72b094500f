"""`python -m train.import_hf` and `python -m train.export --hf`: Hugging Face sequence classifiers of every
supported architecture (tiny random configurations, real tokenizers: MiniLM's WordPiece, and byte-level BPE
and SentencePiece-style Unigram tokenizers trained here with the tokenizers library) become checkpoints that
answer exactly as transformers does, through the Predictor, the handler and train.optimize, and go back."""
import json

import numpy as np
import pytest
import torch

from conftest import PROBE_TEXTS, run_failing_cli, toy_lines
from test_handler import JSON, handle, start
from textclf.config import ModelConfig
from textclf.predict import Predictor
from train.hf import reference_probabilities
from train.import_hf import main

LABELS = {0: "food", 1: "music", 2: "weather"}
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]   # RoBERTa's order: pad id 1, as the configs say
CORPUS = [line.split("\t")[0] for split in ("train", "valid") for line in toy_lines(split)] + PROBE_TEXTS * 3


def bpe_tokenizer(folder):
    from tokenizers import ByteLevelBPETokenizer, processors
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(CORPUS, vocab_size=400, special_tokens=SPECIALS)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return save_fast(tok, folder)


def unigram_tokenizer(folder):
    from tokenizers import SentencePieceUnigramTokenizer, processors
    tok = SentencePieceUnigramTokenizer()
    tok.train_from_iterator(CORPUS, vocab_size=300, special_tokens=SPECIALS, unk_token="<unk>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return save_fast(tok, folder)


def save_fast(tok, folder):
    from transformers import PreTrainedTokenizerFast
    fast = PreTrainedTokenizerFast(tokenizer_object=tok._tokenizer, bos_token="<s>", eos_token="</s>",
                                   cls_token="<s>", sep_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                   mask_token="<mask>")
    fast.save_pretrained(str(folder))
    return fast


def wordpiece_tokenizer(folder, minilm_dir):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(minilm_dir), local_files_only=True)
    tok.save_pretrained(str(folder))
    return tok


SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
SPECIAL_IDS = dict(pad_token_id=1, bos_token_id=0, eos_token_id=2)
# architecture: (config class, extra config fields, tokenizer)
ARCHITECTURES = {
    "bert": ("BertConfig", dict(SMALL, max_position_embeddings=128), "wordpiece"),
    "distilbert": ("DistilBertConfig", dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=128),
                   "wordpiece"),
    "electra": ("ElectraConfig", dict(SMALL, embedding_size=16, max_position_embeddings=128), "wordpiece"),
    "roberta": ("RobertaConfig", dict(SMALL, **SPECIAL_IDS, max_position_embeddings=130), "bpe"),
    "xlm-roberta": ("XLMRobertaConfig", dict(SMALL, **SPECIAL_IDS, max_position_embeddings=130), "unigram"),
    "albert": ("AlbertConfig", dict(SMALL, **SPECIAL_IDS, embedding_size=16, max_position_embeddings=128), "unigram"),
    "deberta-v2": ("DebertaV2Config", dict(SMALL, **SPECIAL_IDS, max_position_embeddings=128, relative_attention=True,
                                           pos_att_type=["p2c", "c2p"], position_biased_input=False,
                                           type_vocab_size=0), "unigram"),
    "modernbert": ("ModernBertConfig", dict(SMALL, **SPECIAL_IDS, cls_token_id=0, sep_token_id=2,
                                            max_position_embeddings=128, global_attn_every_n_layers=2,
                                            local_attention=16), "bpe"),
}


def build_hf_folder(folder, name, minilm_dir, **overrides):
    """A random *ForSequenceClassification of the named architecture, saved with its tokenizer."""
    import transformers
    class_name, fields, kind = ARCHITECTURES[name]
    folder.mkdir(parents=True, exist_ok=True)
    tok = {"wordpiece": lambda f: wordpiece_tokenizer(f, minilm_dir), "bpe": bpe_tokenizer,
           "unigram": unigram_tokenizer}[kind](folder)
    settings = {"vocab_size": len(tok), "id2label": LABELS, "label2id": {v: k for k, v in LABELS.items()},
                "initializer_range": 0.3, **fields, **overrides}
    config = getattr(transformers, class_name)(**settings)
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_config(config)
    with torch.no_grad():   # a head of random scale gives probabilities far from uniform: a sharper check
        for p in model.parameters():
            if p.dim() == 2 and p.shape[0] == 3:
                p.normal_(std=2.0)
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def imported(tmp_path_factory, minilm_dir):
    """architecture -> (Hugging Face folder, imported checkpoint), each made once."""
    done = {}

    def make(name):
        if name not in done:
            base = tmp_path_factory.mktemp(name)
            hf = build_hf_folder(base / "hf", name, minilm_dir)
            rc = main(["--model", str(hf), "--out", str(base / "ckpt")])
            assert rc == 0, f"importing {name} exited with {rc}"
            done[name] = hf, base / "ckpt"
        return done[name]
    return make


def transformers_probabilities(folder, texts, max_length, multi_label=False):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return reference_probabilities(model, tokenizer, texts, max_length, multi_label)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_imported_probabilities_equal_transformers(imported, name):
    hf, ckpt = imported(name)
    config = ModelConfig.from_json_file(ckpt / "config.json")
    assert (config.embedding, config.encoder, config.num_labels) == ("transformer", "head", 3)
    assert json.loads((ckpt / "labels.json").read_text()) == ["food", "music", "weather"]
    predictor = Predictor.from_checkpoint(ckpt)
    expected = transformers_probabilities(hf, PROBE_TEXTS, config.max_length)
    assert np.abs(predictor.predict_proba(PROBE_TEXTS) - expected).max() <= 1e-5   # in one padded batch
    assert np.abs(expected - expected.mean(0)).max() > 0.02, "the random head should tell the texts apart"


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_the_handler_serves_an_imported_model_unchanged(imported, name):
    hf, ckpt = imported(name)
    handler, context = start(ckpt)
    texts = PROBE_TEXTS[:4]
    answer = handle(handler, context, [({"body": {"texts": texts, "top_k": 3}}, {"body": JSON})])[0]
    expected = transformers_probabilities(hf, texts, Predictor.from_checkpoint(ckpt).max_length)
    for got, row in zip(answer["predictions"], expected):
        assert got["label"] == LABELS[int(row.argmax())]
        assert {x["label"]: x["score"] for x in got["top_k"]} == pytest.approx(
            {LABELS[i]: float(p) for i, p in enumerate(row)}, abs=1e-5)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_export_back_loads_in_transformers_with_the_same_probabilities(imported, name, tmp_path):
    from train.export import main as export
    _, ckpt = imported(name)
    assert export(["--checkpoint", str(ckpt), "--hf", str(tmp_path / "back")]) == 0
    predictor = Predictor.from_checkpoint(ckpt)
    again = transformers_probabilities(tmp_path / "back", PROBE_TEXTS, predictor.max_length)
    assert np.abs(predictor.predict_proba(PROBE_TEXTS) - again).max() <= 1e-5
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert config["id2label"] == {str(k): v for k, v in LABELS.items()}


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_train_optimize_takes_an_imported_model(imported, name, tmp_path, toy_data_dir):
    from train.optimize import main as optimize
    _, ckpt = imported(name)
    out = tmp_path / "optimized"
    assert optimize(["--checkpoint", str(ckpt), "--data", str(toy_data_dir), "--out", str(out),
                     "--latency-examples", "2", "--threads", "1", "--batch-size", "8"]) == 0
    report = json.loads((out / "optimize.json").read_text())
    fp32 = next(r for r in report["rows"] if r["name"] == "fp32")
    measured = [r for r in report["rows"] if "accuracy" in r]
    assert len(measured) >= 2, report["rows"]   # fp32 and at least one ONNX variant
    for row in report["rows"]:
        assert "accuracy" in row or row.get("skipped"), row
    diff = abs(Predictor.from_checkpoint(out).predict_proba(PROBE_TEXTS)
               - Predictor.from_checkpoint(ckpt).predict_proba(PROBE_TEXTS)).max()
    # a random head of scale 2 is far from robust to rounding: only the float graphs must be equal
    assert diff < (1.0 if "int8" in report["chosen"] or report["chosen"] == "bf16" else 1e-4)
    assert fp32["total"] == 30


def test_a_model_trained_with_the_head_encoder_exports_to_transformers(tiny_bert_dir, toy_data_dir, tmp_path):
    from conftest import train_args
    from train.__main__ import main as train
    from train.export import main as export
    run = tmp_path / "toy-head"
    assert train(train_args(toy_data_dir, run, tiny_bert_dir, encoder="head", epochs=6)) == 0
    ckpt = run / "checkpoint-best"
    assert json.loads((ckpt / "metrics.json").read_text())["valid_accuracy"] > 0.6
    assert export(["--checkpoint", str(ckpt), "--hf", str(tmp_path / "hf")]) == 0
    predictor = Predictor.from_checkpoint(ckpt)
    expected = transformers_probabilities(tmp_path / "hf", PROBE_TEXTS, predictor.max_length)
    assert np.abs(predictor.predict_proba(PROBE_TEXTS) - expected).max() <= 1e-5


def test_a_cls_checkpoint_on_bert_exports_through_a_near_identity_pooler(tiny_ckpt, tmp_path):
    from train.export import main as export
    assert export(["--checkpoint", str(tiny_ckpt), "--hf", str(tmp_path / "hf")]) == 0
    predictor = Predictor.from_checkpoint(tiny_ckpt)
    expected = transformers_probabilities(tmp_path / "hf", PROBE_TEXTS, predictor.max_length)
    assert np.abs(predictor.predict_proba(PROBE_TEXTS) - expected).max() <= 1e-5


def test_export_refuses_what_has_no_hugging_face_form(glove_cnn_ckpt, exported, tiny_ckpt, tmp_path, capfd, caplog):
    from train.export import main as export
    rc, said = run_failing_cli(export, capfd, caplog, ["--checkpoint", str(glove_cnn_ckpt), "--hf", str(tmp_path / "a")])
    assert rc == 2 and "glove + cnn checkpoint has no Hugging Face form" in said
    onnx = exported(tiny_ckpt, "--onnx")
    rc, said = run_failing_cli(export, capfd, caplog, ["--checkpoint", str(onnx), "--hf", str(tmp_path / "b")])
    assert rc == 2 and "export the float checkpoint" in said
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("change, words", [
    (dict(problem_type="regression"), "is a regression model"),
    (dict(id2label={0: "x"}, label2id={"x": 0}), "is a regression model"),
])
def test_import_refuses_regression_and_multi_label_by_name(tmp_path, minilm_dir, capfd, caplog, change, words):
    hf = build_hf_folder(tmp_path / "hf", "bert", minilm_dir, **change)
    rc, said = run_failing_cli(main, capfd, caplog, ["--model", str(hf), "--out", str(tmp_path / "ckpt")])
    assert rc == 2 and words in said
    assert not (tmp_path / "ckpt").exists()


def test_import_refuses_a_pickle_only_folder_with_the_conversion_command(imported, tmp_path, capfd, caplog):
    import shutil
    hf, _ = imported("bert")
    folder = shutil.copytree(hf, tmp_path / "pickled")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    rc, said = run_failing_cli(main, capfd, caplog, ["--model", str(folder), "--out", str(tmp_path / "ckpt")])
    assert rc == 2 and "pytorch_model.bin" in said and "save_pretrained" in said and "never loads" in said


def test_import_refuses_a_base_model_without_a_trained_head(tiny_bert_dir, tmp_path, capfd, caplog):
    rc, said = run_failing_cli(main, capfd, caplog, ["--model", str(tiny_bert_dir), "--out", str(tmp_path / "c")])
    assert rc == 2 and ("not a *ForSequenceClassification" in said or "lacks trained weights" in said)


def test_import_refuses_a_max_length_beyond_the_positions(imported, tmp_path, capfd, caplog):
    hf, _ = imported("bert")
    rc, said = run_failing_cli(main, capfd, caplog, ["--model", str(hf), "--out", str(tmp_path / "c"),
                                                     "--max-length", "4096"])
    assert rc == 2 and "max_position_embeddings 128" in said


def test_a_multi_label_hugging_face_model_imports_as_multi_label_and_goes_back(tmp_path, minilm_dir):
    from train.export import main as export
    hf = build_hf_folder(tmp_path / "hf", "roberta", minilm_dir, problem_type="multi_label_classification")
    assert main(["--model", str(hf), "--out", str(tmp_path / "ckpt")]) == 0
    config = ModelConfig.from_json_file(tmp_path / "ckpt" / "config.json")
    assert config.multi_label and config.thresholds is None
    predictor = Predictor.from_checkpoint(tmp_path / "ckpt")
    expected = transformers_probabilities(hf, PROBE_TEXTS, config.max_length, multi_label=True)
    assert np.abs(predictor.predict_proba(PROBE_TEXTS) - expected).max() <= 1e-5   # sigmoid, not softmax
    for answer, row in zip(predictor.predict(PROBE_TEXTS, 3), expected):
        assert [x["label"] for x in answer["labels"]] == [LABELS[j] for j in np.argsort(-row) if row[j] >= 0.5]
    assert export(["--checkpoint", str(tmp_path / "ckpt"), "--hf", str(tmp_path / "back")]) == 0
    assert json.loads((tmp_path / "back" / "config.json").read_text())["problem_type"] == "multi_label_classification"
