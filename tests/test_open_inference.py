"""The Open Inference Protocol as standard clients speak it: tritonclient's HTTP client in its default settings
(BYTES tensors in the binary tensor data extension, binary outputs asked for) against the pod as it runs, nginx
in front of TorchServe (deploy/entrypoint.sh), with a single-label and a multi-label model; and the latency
histograms those requests move on the metrics port, read with prometheus_client's parser."""
import time

import numpy as np
import pytest
import requests

import tsutil
from podutil import KEY, running_pod
from textclf.predict import Predictor

pytestmark = pytest.mark.serving
tritonclient_http = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

TEXTS = ["will it rain tomorrow in paris", "play some jazz on the guitar", "bake a pizza with cheese",
         "sunny and windy forecast", "a guitar song by the band"]
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def pod(tiny_ckpt, multi_ckpt, tmp_path_factory):
    with running_pod(tmp_path_factory, "oip", {"toy": tiny_ckpt, "multi": multi_ckpt}) as p:
        yield p


@pytest.fixture(scope="module")
def client(pod):
    c = tritonclient_http.InferenceServerClient(pod.url.removeprefix("http://"), connection_timeout=30,
                                                network_timeout=60)
    yield c
    c.close()


def infer(client, model, texts, headers=AUTH, **kwargs):
    """tritonclient's defaults: a BYTES input sent as binary data, no outputs named (all of them, binary)."""
    text = tritonclient_http.InferInput("text", [len(texts)], "BYTES")
    text.set_data_from_numpy(np.array(texts, dtype=object))
    return client.infer(model, [text], headers=headers, **kwargs)


def test_health_needs_no_key_and_readiness_metadata_do(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata(headers=AUTH)["extensions"] == ["binary_tensor_data"]
    assert client.is_model_ready("toy", headers=AUTH) and client.is_model_ready("multi", headers=AUTH)
    assert not client.is_model_ready("toy")                      # no key: 401, so not ready for this caller
    assert not client.is_model_ready("nosuchmodel", headers=AUTH)
    with pytest.raises(InferenceServerException, match="401|key"):
        client.get_model_metadata("toy")


def test_metadata_names_and_types_what_inference_returns(client, tiny_ckpt, multi_ckpt):
    meta = client.get_model_metadata("toy", headers=AUTH)
    assert meta["name"] == "toy"
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    outputs = {o["name"]: o for o in meta["outputs"]}
    assert outputs["label"]["datatype"] == "BYTES" and outputs["score"]["datatype"] == "FP32"
    result = infer(client, "toy", TEXTS[:2])
    assert {o["name"] for o in result.get_response()["outputs"]} == set(outputs)
    for name, o in outputs.items():
        assert list(result.as_numpy(name).shape) == [2] and o["shape"] == [-1], name

    labels = Predictor.from_checkpoint(multi_ckpt).labels
    meta = client.get_model_metadata("multi", headers=AUTH)
    assert {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]} == {
        "label": ("BYTES", [-1, len(labels)]), "score": ("FP32", [-1, len(labels)]),
        "selected": ("BOOL", [-1, len(labels)])}


@pytest.mark.parametrize("n", [1, len(TEXTS)])
def test_single_label_infer_in_tritonclients_defaults(client, tiny_ckpt, n):
    expected = Predictor.from_checkpoint(tiny_ckpt).predict(TEXTS[:n], top_k=1)
    result = infer(client, "toy", TEXTS[:n])
    assert result.get_response()["model_name"] == "toy"
    labels = [x.decode() for x in result.as_numpy("label")]
    assert labels == [e["label"] for e in expected]
    np.testing.assert_allclose(result.as_numpy("score"), [e["score"] for e in expected], atol=1e-4)
    assert result.as_numpy("score").dtype == np.float32


def test_multi_label_infer_gives_the_label_sets(client, multi_ckpt):
    predictor = Predictor.from_checkpoint(multi_ckpt)
    expected = predictor.predict(TEXTS)
    result = infer(client, "multi", TEXTS)
    labels, selected = result.as_numpy("label"), result.as_numpy("selected")
    assert labels.shape == selected.shape == (len(TEXTS), len(predictor.labels)) and selected.dtype == bool
    got = [sorted(lab.decode() for lab, s in zip(row_labels, row) if s) for row_labels, row in zip(labels, selected)]
    assert got == [sorted(x["label"] for x in e["labels"]) for e in expected]


def test_infer_without_the_key_or_with_a_bad_body_is_refused_in_json(client, pod):
    with pytest.raises(InferenceServerException) as refused:
        infer(client, "toy", TEXTS[:1], headers={})
    assert refused.value.status() == "401" or "401" in str(refused.value) or "key" in str(refused.value)
    text = tritonclient_http.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array([""], dtype=object))
    with pytest.raises(InferenceServerException, match="empty"):
        client.infer("toy", [text], headers=AUTH)
    # a body whose binary part is cut short: the handler's 400, in JSON, through the proxy
    header = b'{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":9}}]}'
    r = requests.post(f"{pod.url}/v2/models/toy/infer", data=header + b"\x05\x00\x00\x00ab", timeout=30,
                      headers=AUTH | {"Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 400 and r.json()["error_type"] == "validation", r.text


def histograms(pod):
    """{textclf_* histogram: observations so far} on the pod's metrics port."""
    return {name: h["count"] for name, h in tsutil.histograms(pod.metrics).items()}


def test_request_duration_histogram_counts_every_request_through_the_proxy(client, pod):
    before = histograms(pod)
    for n in (1, 2, 3, 4):
        infer(client, "toy", TEXTS[:n])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:        # the frontend reads the workers' metric lines asynchronously
        after = histograms(pod)
        if after.get("textclf_request_duration_seconds", 0) - before.get("textclf_request_duration_seconds", 0) >= 4:
            break
        time.sleep(0.5)
    assert after["textclf_request_duration_seconds"] - before.get("textclf_request_duration_seconds", 0) == 4
    forward = after["textclf_forward_seconds"] - before.get("textclf_forward_seconds", 0)
    tokenize = after["textclf_tokenize_seconds"] - before.get("textclf_tokenize_seconds", 0)
    assert 1 <= forward <= 4 and 1 <= tokenize <= 4        # once per batch that ran the model
