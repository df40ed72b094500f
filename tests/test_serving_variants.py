"""One real TorchServe serving seven small models at once, each archived with ./archive.sh from a checkpoint
made in this test run: GloVe (a text file) + CNN, random + DenseNet-DSA, tiny BERT + CNN, three exports
of the tiny BERT + CLS model (ONNX Runtime int8 of the fused graph, plain ONNX, and PyTorch bf16), and a
RoBERTa sequence classifier with a byte-level BPE tokenizer imported from a Hugging Face folder. Every one
answers as the in-process Predictor does (the imported one as transformers does), and refuses a bad request
without harm. Two of them (the ONNX export and the tiny BERT + CNN) carry a Mahalanobis out-of-scope threshold
that rejects half of the test texts, so their features travel through the served path too. The same handler serves them all, with no per-variant branches.
"""
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import PROBE_TEXTS, train_args
from test_mahalanobis import reject_half
from textclf.predict import Predictor
from tsutil import torchserve

pytestmark = pytest.mark.serving

MODEL_CONFIG = """\
minWorkers: 1
maxWorkers: 1
batchSize: 4
maxBatchDelay: 20
responseTimeout: 30
handler:
  top_k: 3
  torch_threads: 1
  max_chars: 20000
"""
TEXTS = PROBE_TEXTS[:4] + ["will it rain tomorrow", "play my jazz playlist"]


def train(data, out, embedding, encoder, extra):
    """Two epochs on 30 lines (train_args: --max-length 32, --threads 1): a few seconds."""
    from train.__main__ import main
    assert main(train_args(data, out, embedding, encoder=encoder, epochs=2, lr="1e-2",
                           extra=["--limit", "30", *extra])) == 0, f"training {out.name} failed"
    return out / "checkpoint-best"


def imported_roberta(base, minilm_dir):
    from test_import_hf import build_hf_folder
    from train.import_hf import main
    hf = build_hf_folder(base / "roberta-hf", "roberta", minilm_dir)
    assert main(["--model", str(hf), "--out", str(base / "roberta")]) == 0
    return base / "roberta"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, toy_data_dir, tiny_bert_dir, tiny_ckpt, glove_cnn_ckpt, exported, minilm_dir):
    """name -> checkpoint folder; the served model name is the .mar name."""
    base = tmp_path_factory.mktemp("variants")
    return {
        "glove-cnn": glove_cnn_ckpt,
        "random-dsa": train(toy_data_dir, base / "random-dsa", "random", "densenet-dsa",
                            ["--embedding-dim", "16", "--densenet-layers", "2", "--densenet-growth", "8",
                             "--dsa-iterations", "2"]),
        "bert-cnn": reject_half(train(toy_data_dir, base / "bert-cnn-trained", tiny_bert_dir, "cnn",
                                      ["--num-filters", "8"]), base / "bert-cnn", toy_data_dir, TEXTS),
        "bert-int8": exported(tiny_ckpt, "--fuse", "--int8"),
        "bert-onnx": reject_half(exported(tiny_ckpt, "--onnx"), base / "bert-onnx", toy_data_dir, TEXTS),
        "bert-bf16": exported(tiny_ckpt, "--bf16"),
        "roberta-hf": imported_roberta(base, minilm_dir),
    }


@pytest.fixture(scope="module")
def server(checkpoints, tmp_path_factory):
    base = tmp_path_factory.mktemp("torchserve-variants")
    (base / "model-config.yaml").write_text(MODEL_CONFIG)
    # six workers start side by side on two shared cores: allow for it
    with torchserve(base, checkpoints, base / "model-config.yaml", start_timeout=300) as server:
        yield server


@pytest.fixture(scope="module")
def predictors(checkpoints):
    return {name: Predictor.from_checkpoint(folder) for name, folder in checkpoints.items()}


NAMES = ["glove-cnn", "random-dsa", "bert-cnn", "bert-int8", "bert-onnx", "bert-bf16", "roberta-hf"]


def test_every_model_is_registered_with_one_ready_worker(server, checkpoints):
    assert sorted(checkpoints) == sorted(NAMES)
    listed = server.manage("GET", "/models").json()["models"]
    assert sorted(m["modelName"] for m in listed) == sorted(NAMES)
    for name in NAMES:
        [model] = server.manage("GET", f"/models/{name}").json()
        assert [w["status"] for w in model["workers"]] == ["READY"], (name, model["workers"])


def assert_same(answer, expected, atol=1e-4):
    assert answer["label"] == expected["label"] and answer.get("out_of_scope") == expected.get("out_of_scope")
    assert answer["score"] == pytest.approx(expected["score"], abs=atol)
    assert {x["label"]: x["score"] for x in answer["top_k"]} == pytest.approx(
        {x["label"]: x["score"] for x in expected["top_k"]}, abs=atol)


@pytest.mark.parametrize("name", NAMES)
def test_answers_equal_the_in_process_predictor(server, predictors, name):
    expected = [predictors[name].predict([text], top_k=3)[0] for text in TEXTS]

    def send(text):
        return server.predict("application/json", json_body={"text": text}, model=name)

    if name in ("bert-int8", "bert-bf16"):
        # Dynamic int8 scales activations per forward pass, over the whole padded batch, and bfloat16 rounds
        # differently at another padded length: a text's probabilities move (~1e-3) with its batch mates,
        # so compare batches of one.
        responses = [send(text) for text in TEXTS]
    else:
        # Sent together, so the worker also runs padded batches of mixed lengths.
        with ThreadPoolExecutor(max_workers=4) as pool:
            responses = list(pool.map(send, TEXTS))
    if name in ("bert-onnx", "bert-cnn"):   # half of the texts below the Mahalanobis threshold
        assert 0 < sum(w["out_of_scope"] for w in expected) < len(TEXTS)
    for text, r, want in zip(TEXTS, responses, expected):
        assert r.status_code == 200, (name, text, r.text)
        answer = r.json()
        assert len(answer["top_k"]) == 3
        assert_same(answer, want)
    plain = server.predict("text/plain", data=TEXTS[1].encode(), model=name)
    assert plain.status_code == 200
    assert_same(plain.json(), expected[1])


@pytest.mark.parametrize("name", NAMES)
def test_a_bad_request_gets_400_and_the_model_still_answers(server, predictors, name):
    r = server.predict("application/json", json_body={"text": 42}, model=name)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error_type"] == "validation" and "'text' must be a string" in body["error"]
    r = server.predict("text/plain", data=b"", model=name)
    assert r.status_code == 400 and "'text' is empty" in r.json()["error"]
    r = server.predict("application/json", json_body={"text": "bake bread for dinner", "top_k": 1}, model=name)
    assert r.status_code == 200, r.text
    assert_same(r.json(), predictors[name].predict(["bake bread for dinner"], top_k=1)[0])


def test_an_imported_model_serves_the_probabilities_transformers_computes(server, checkpoints):
    from test_import_hf import LABELS, transformers_probabilities
    folder = checkpoints["roberta-hf"]
    expected = transformers_probabilities(folder.parent / "roberta-hf", TEXTS, Predictor.from_checkpoint(folder).max_length)
    r = server.predict("application/json", json_body={"texts": TEXTS, "top_k": 3}, model="roberta-hf")
    assert r.status_code == 200, r.text
    for answer, row in zip(r.json()["predictions"], expected):
        assert answer["label"] == LABELS[int(row.argmax())]
        assert {x["label"]: x["score"] for x in answer["top_k"]} == pytest.approx(
            {LABELS[i]: float(p) for i, p in enumerate(row)}, abs=1e-5)
