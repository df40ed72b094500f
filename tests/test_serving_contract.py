"""The serving contract against a real TorchServe: many texts per request, KServe v1, Open Inference Protocol
v2, explanations, Prometheus metrics and keys, on a real Snips model (GloVe + CNN, trained by conftest).

Select with `-m serving`. About a minute on 2 cores, mostly start-up.
"""
import json
import time
from datetime import datetime, timezone

import pytest
import requests

from serving.torchserve import read_properties
from conftest import ROOT
from textclf.predict import Predictor
from tsutil import HTTP_TIMEOUT, histograms, module_server

pytestmark = pytest.mark.serving

MODEL = "snips"
MODEL_CONFIG = """\
minWorkers: 1
maxWorkers: 1
batchSize: 8
maxBatchDelay: 20
responseTimeout: 30
handler:
  top_k: 3
  torch_threads: 1
  max_chars: 2000
  max_texts: 16
  max_total_chars: 4000
  max_batch_texts: 8
  explain_max_words: 20
  max_batch_tokens: 1000
"""
SENTENCES = ["play some jazz by miles davis", "will it rain in paris tomorrow", "book a table for two tonight",
             "add this song to my road trip playlist", "rate this book five stars", "find the movie schedule",
             "show me the tv series the wire"]


@pytest.fixture(scope="module")
def server(snips_glove_ckpt, tmp_path_factory):
    with module_server(tmp_path_factory, "torchserve-contract", {MODEL: snips_glove_ckpt}, MODEL_CONFIG) as server:
        yield server


@pytest.fixture(scope="module")
def predictor(snips_glove_ckpt):
    return Predictor.from_checkpoint(snips_glove_ckpt)


def post(server, path, body=None, data=None, content_type="application/json", headers=None):
    h = {**server.auth, "Content-Type": content_type, **(headers or {})}
    return requests.post(server.inference + path, data=json.dumps(body) if body is not None else data, headers=h,
                         timeout=HTTP_TIMEOUT)


def assert_prediction(answer, expected, atol=1e-4):
    assert answer["label"] == expected["label"]
    assert answer["score"] == pytest.approx(expected["score"], abs=atol)
    assert [x["label"] for x in answer["top_k"]] == [x["label"] for x in expected["top_k"]]


def assert_error(r, status, words):
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert body["status"] == status and body["error_type"] == "validation" and words in body["error"], body


# ---- many texts

def test_many_texts_in_one_request_answer_in_order(server, predictor):
    r = post(server, f"/predictions/{MODEL}", {"texts": SENTENCES, "top_k": 2})
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert len(predictions) == len(SENTENCES)
    for answer, expected in zip(predictions, predictor.predict(SENTENCES, top_k=2)):
        assert_prediction(answer, expected)
    assert [p["label"] for p in predictions][:2] == ["PlayMusic", "GetWeather"]


def test_limits_and_bad_texts_in_a_list(server):
    assert_error(post(server, f"/predictions/{MODEL}", {"texts": ["a"] * 17}), 413, "the limit is 16 per request")
    assert_error(post(server, f"/predictions/{MODEL}", {"texts": ["x" * 1500] * 3}), 413,
                 "4500 characters in all; the limit is 4000")
    assert_error(post(server, f"/predictions/{MODEL}", {"texts": ["play jazz", "", "rain"]}), 400,
                 "'texts'[1] is empty")
    assert_error(post(server, f"/predictions/{MODEL}", data=b'{"texts": ["ok", "\\udc00"]}'), 400,
                 "'texts'[1] holds an unpaired surrogate")
    # 12 texts of 100 characters: up to 12 x 102 tokens of model work, over max_batch_tokens 1000
    assert_error(post(server, f"/predictions/{MODEL}", {"texts": ["play " * 20] * 12}), 413,
                 "up to 1224 tokens of model work; the limit is 1000 per request")


# ---- KServe v1

@pytest.mark.parametrize("path", [f"/v1/models/{MODEL}:predict", f"/predictions/{MODEL}"])
def test_kserve_v1(server, predictor, path):
    r = post(server, path, {"instances": [SENTENCES[0], {"data": SENTENCES[1]}, {"text": SENTENCES[2]}]})
    assert r.status_code == 200, r.text
    for answer, expected in zip(r.json()["predictions"], predictor.predict(SENTENCES[:3], top_k=3)):
        assert_prediction(answer, expected)


@pytest.mark.parametrize("body, words", [({"instances": []}, "'instances' is empty"),
                                         ({"instances": "play jazz"}, "must be an array"),
                                         ({"instances": ["ok", {"b64": "AAA="}]}, "'instances'[1] must be")])
def test_malformed_v1(server, body, words):
    assert_error(post(server, f"/v1/models/{MODEL}:predict", body), 400, words)


# ---- Open Inference Protocol v2

def v2(texts, **extra):
    return {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}], **extra}


def test_v2_infer(server, predictor):
    r = post(server, f"/v2/models/{MODEL}/infer", v2(SENTENCES[:3], id="req-42"))
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["model_name"], answer["id"]) == (MODEL, "req-42")
    labels, scores = answer["outputs"]
    expected = predictor.predict(SENTENCES[:3])
    assert labels == {"name": "label", "shape": [3], "datatype": "BYTES", "data": [e["label"] for e in expected]}
    assert (scores["name"], scores["shape"], scores["datatype"]) == ("score", [3], "FP32")
    assert scores["data"] == pytest.approx([e["score"] for e in expected], abs=1e-4)


def test_v2_top_k_and_one_text(server, predictor):
    r = post(server, f"/v2/models/{MODEL}/infer", v2(["play jazz"], parameters={"top_k": 3}))
    assert r.status_code == 200, r.text
    labels, scores = r.json()["outputs"]
    assert labels["shape"] == scores["shape"] == [1, 3]
    assert labels["data"] == [x["label"] for x in predictor.predict(["play jazz"], top_k=3)[0]["top_k"]]
    assert "id" not in r.json()


@pytest.mark.parametrize("body, words", [
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0.5]}]}, 'datatype must be "BYTES"'),
    (v2(["a", "b"]) | {"inputs": [{"name": "t", "shape": [3], "datatype": "BYTES", "data": ["a", "b"]}]},
     "'inputs'[0].shape holds 3 elements"),
    ({"inputs": "play jazz"}, "exactly one input"),
    (v2(["ok", 5]), "'inputs'[0].data[1] must be a string, got number"),
])
def test_malformed_v2(server, body, words):
    assert_error(post(server, f"/v2/models/{MODEL}/infer", body), 400, words)


def test_v2_body_that_is_not_json(server):
    assert_error(post(server, f"/v2/models/{MODEL}/infer", data=b'{"inputs": ['), 400, "not valid JSON")


# ---- Open Inference Protocol as tritonclient sends it (binary tensor data), and model metadata

@pytest.mark.parametrize("path", [f"/v2/models/{MODEL}/infer", f"/predictions/{MODEL}"])
def test_tritonclient_binary_request_and_answer(server, predictor, path):
    import numpy as np
    import tritonclient.http as th
    tensor = th.InferInput("text", [3], "BYTES")
    tensor.set_data_from_numpy(np.array(SENTENCES[:3], dtype=object))
    body, size = th.InferenceServerClient.generate_request_body([tensor], request_id="b-1")
    binary = {"Inference-Header-Content-Length": str(size)}
    r = post(server, path, data=body, content_type="application/octet-stream", headers=binary)
    assert r.status_code == 200, r.text
    # the handler's response header reaches the client through TorchServe's frontend
    got = th.InferenceServerClient.parse_response_body(r.content,
                                                       header_length=r.headers["Inference-Header-Content-Length"])
    expected = predictor.predict(SENTENCES[:3])
    assert got.get_response()["id"] == "b-1"
    assert got.as_numpy("label").tolist() == [e["label"].encode() for e in expected]
    assert got.as_numpy("score") == pytest.approx([e["score"] for e in expected], abs=1e-4)
    assert_error(post(server, path, data=body[:-3], content_type="application/octet-stream", headers=binary), 400,
                 "binary_data_size is")


def test_model_metadata(server):
    r = requests.post(f"{server.inference}/predictions/{MODEL}", data=b"", timeout=HTTP_TIMEOUT,
                      headers={**server.auth, "X-Textclf-Request": "metadata"})
    assert r.status_code == 200, r.text
    assert r.json() == {"name": MODEL, "versions": ["1.0"], "platform": "pytorch_torchserve",
                        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
                        "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                                    {"name": "score", "datatype": "FP32", "shape": [-1]}]}


# ---- explanations

@pytest.mark.parametrize("how", ["plain", "json"])
def test_explanation_ranks_a_content_word_first(server, how):
    text = "play some jazz by miles davis"
    r = (post(server, f"/explanations/{MODEL}", data=text.encode(), content_type="text/plain") if how == "plain"
         else post(server, f"/explanations/{MODEL}", {"text": text}))
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["label"] == "PlayMusic"
    assert [w["word"] for w in answer["words"]] == text.split()
    assert all(text[w["start"]:w["end"]] == w["word"] for w in answer["words"])
    best = max(answer["words"], key=lambda w: w["importance"])
    assert best["word"] in ("play", "jazz", "miles", "davis"), answer["words"]


def test_explanation_of_another_label_and_v1_explain(server):
    r = post(server, f"/explanations/{MODEL}", {"text": "will it rain in paris", "label": "PlayMusic"})
    assert r.status_code == 200 and r.json()["label"] == "PlayMusic" and r.json()["score"] < 0.5, r.text
    r = post(server, f"/v1/models/{MODEL}:explain", {"instances": ["play jazz", "will it rain"]})
    assert r.status_code == 200, r.text
    assert [e["label"] for e in r.json()["explanations"]] == ["PlayMusic", "GetWeather"]


def test_bad_explanation_requests(server):
    assert_error(post(server, f"/explanations/{MODEL}", {"text": "play jazz", "label": "Dance"}), 400,
                 "'label' must be one of the model's labels")
    assert_error(post(server, f"/explanations/{MODEL}", {"text": " ".join(["jazz"] * 21)}), 413,
                 "the request has 21 words to explain; the limit is 20 per request")
    assert_error(post(server, f"/explanations/{MODEL}", {"texts": ["a", "b"]}), 400, "explanations take one text")
    assert_error(post(server, f"/explanations/{MODEL}", data=b"", content_type="text/plain"), 400, "is empty")


# ---- Prometheus metrics

def scrape(server):
    """{(sample name, outcome, status): value summed over the other labels}, read by prometheus_client's own
    parser of the text format (what a Prometheus scrape accepts), textclf_* and ts_inference_requests_total."""
    from prometheus_client.parser import text_string_to_metric_families
    r = requests.get(server.metrics + "/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    values = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            if sample.name.startswith(("textclf_", "ts_inference_requests_total")):
                key = (sample.name, sample.labels.get("outcome"), sample.labels.get("status"))
                values[key] = values.get(key, 0) + sample.value
    return values


def test_metrics_move_by_exactly_the_traffic_sent(server):
    before, hist_before = scrape(server), histograms(server.metrics)
    # X-Request-Start is what the proxy adds (nginx's $msec); requests without it (the 415) are not timed
    proxied = {"X-Request-Start": f"t={time.time():.3f}"}
    sent = [post(server, f"/predictions/{MODEL}", data=s.encode(), content_type="text/plain",
                 headers={"X-Request-Start": f"t={time.time():.3f}"}) for s in SENTENCES[:3]]
    sent.append(post(server, f"/predictions/{MODEL}", {"texts": SENTENCES[3:7]}, headers=proxied))
    sent += [post(server, f"/predictions/{MODEL}", {"text": ""}, headers=proxied),
             post(server, f"/predictions/{MODEL}", {"txt": 1}, headers=proxied)]
    sent.append(post(server, f"/predictions/{MODEL}", data=b"x", content_type="image/png"))
    assert [r.status_code for r in sent] == [200] * 4 + [400, 400, 415]
    expected = {("textclf_requests_total", "answered", "200"): 4, ("textclf_requests_total", "4xx", "400"): 2,
                ("textclf_requests_total", "4xx", "415"): 1, ("textclf_texts_total", None, None): 7,
                ("ts_inference_requests_total", None, None): 7, ("textclf_request_duration_seconds", None, None): 6}
    deadline, moved = time.monotonic() + 20, {}
    while time.monotonic() < deadline:   # the frontend reads the workers' metric lines asynchronously
        after, hist_after = scrape(server), histograms(server.metrics)
        moved = {k: after.get(k, 0) - before.get(k, 0) for k in expected if k[0] != "textclf_request_duration_seconds"}
        moved[("textclf_request_duration_seconds", None, None)] = (
            hist_after.get("textclf_request_duration_seconds", {}).get("count", 0)
            - hist_before.get("textclf_request_duration_seconds", {}).get("count", 0))
        if moved == expected:
            break
        time.sleep(0.5)
    assert moved == expected
    batches = after[("textclf_batches_total", None, None)] - before.get(("textclf_batches_total", None, None), 0)
    forward_batches = (hist_after["textclf_forward_seconds"]["count"]
                       - hist_before.get("textclf_forward_seconds", {}).get("count", 0))
    assert 1 <= forward_batches <= batches      # every batch that ran the model, once
    for name, h in hist_after.items():
        les = sorted(h["buckets"])
        assert les[-1] == float("inf") and h["buckets"][les[-1]] == h["count"], name
        assert all(h["buckets"][a] <= h["buckets"][b] for a, b in zip(les, les[1:])), name   # cumulative
        assert les[0] <= 0.005 and 10 in les, (name, les)                                     # 5 ms .. 10 s
    assert hist_after["textclf_request_duration_seconds"]["sum"] > hist_before.get(
        "textclf_request_duration_seconds", {}).get("sum", 0)
    for name in ("textclf_tokens_total", "textclf_batches_total", "textclf_forward_passes_total",
                 "textclf_tokenize_milliseconds_total", "textclf_forward_milliseconds_total"):
        assert after[(name, None, None)] > before.get((name, None, None), 0), name
    assert after[("textclf_tokens_total", None, None)] - before.get(("textclf_tokens_total", None, None), 0) >= 7


def test_metrics_listen_on_loopback_only():
    config = read_properties(ROOT / "config.properties")
    assert config["metrics_address"].startswith("http://127.0.0.1:")
    assert config["metrics_mode"] == "prometheus"


# ---- keys

def test_keys_live_for_the_configured_lifetime_and_rotate(server):
    minutes = int(read_properties(ROOT / "config.properties")["token_expiration_min"])
    keys = json.loads((server.run_dir / "key_file.json").read_text())
    expires = datetime.fromisoformat(keys["inference"]["expiration time"].replace("Z", "+00:00")[:26] + "+00:00")
    left = (expires - datetime.now(timezone.utc)).total_seconds() / 60
    assert minutes - 10 < left <= minutes, (left, minutes)
    # rotation: the API key mints a new inference key; the old one stops working at once
    old = dict(server.auth)
    r = requests.post(f"{server.management}/token?type=inference",
                      headers={"Authorization": f"Bearer {keys['API']['key']}"}, timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, r.text
    new = json.loads((server.run_dir / "key_file.json").read_text())["inference"]["key"]
    assert new != keys["inference"]["key"]
    server.auth = {"Authorization": f"Bearer {new}"}
    assert post(server, f"/predictions/{MODEL}", data=b"play jazz", content_type="text/plain").status_code == 200
    r = requests.post(f"{server.inference}/predictions/{MODEL}", data=b"play jazz",
                      headers={**old, "Content-Type": "text/plain"}, timeout=HTTP_TIMEOUT)
    assert r.status_code in (400, 401) and "label" not in r.text
