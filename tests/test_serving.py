"""One real TorchServe on 127.0.0.1: the tiny model archived with ./archive.sh, served with the repository's
config.properties (token auth on, URLs refused) on free ports, PYTHONPATH unset, a private temp folder
(tests/tsutil.py does the starting and stopping).

Select with `-m serving`, skip with `-m "not serving"`. About a minute on 2 cores, mostly start-up.
"""
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from conftest import PROBE_TEXTS, ROOT
from textclf.predict import Predictor
from tsutil import HTTP_TIMEOUT, module_server

pytestmark = pytest.mark.serving

MODEL = "tinytest"
MODEL_CONFIG = """\
minWorkers: 1
maxWorkers: 1
batchSize: 8
maxBatchDelay: 50
responseTimeout: 30
handler:
  top_k: 3
  torch_threads: 1
  max_chars: 20000
"""


@pytest.fixture(scope="module")
def server(tiny_ckpt, tmp_path_factory):
    with module_server(tmp_path_factory, "torchserve", {MODEL: tiny_ckpt}, MODEL_CONFIG) as server:
        yield server


@pytest.fixture(scope="module")
def predictor(tiny_ckpt):
    return Predictor.from_checkpoint(tiny_ckpt)


def assert_same(answer, expected, atol=1e-4):
    assert answer["label"] == expected["label"]
    assert answer["score"] == pytest.approx(expected["score"], abs=atol)
    assert {x["label"]: x["score"] for x in answer["top_k"]} == pytest.approx(
        {x["label"]: x["score"] for x in expected["top_k"]}, abs=atol)


TEXTS = PROBE_TEXTS + ["will it rain tomorrow", "play my jazz playlist", "a recipe for pasta and salad"]


def test_model_config_is_applied(server):
    r = server.manage("GET", f"/models/{MODEL}")
    assert r.status_code == 200, r.text
    [model] = r.json()
    assert (model["batchSize"], model["maxBatchDelay"], model["minWorkers"], model["maxWorkers"]) == (8, 50, 1, 1)
    assert [w["status"] for w in model["workers"]] == ["READY"]


def test_the_archive_carries_its_own_model_code(server):
    # The worker runs with PYTHONPATH unset in the frontend's environment, outside the repository:
    # the only textclf on its path is the one unpacked from the .mar.
    import psutil
    frontend = psutil.Process(int((server.tmp / ".model_server.pid").read_text().split()[0]))
    workers = [p for p in frontend.children(recursive=True) if "model_service_worker" in " ".join(p.cmdline())]
    assert len(workers) == 1, [p.cmdline() for p in frontend.children(recursive=True)]
    [worker] = workers
    path = [Path(p) for p in worker.environ().get("PYTHONPATH", "").split(os.pathsep) if p]
    assert path, "the worker gets the unpacked archive on its PYTHONPATH"
    assert not any(p == ROOT or ROOT in p.parents for p in path), path
    assert Path(worker.cwd()) != ROOT
    holders = [p for p in path if (p / "textclf" / "predict.py").is_file()]
    assert holders and (holders[0] / "config.json").is_file() and server.tmp in holders[0].parents, path


@pytest.mark.parametrize("how", ["plain", "json", "json-top1", "no-content-type"])
def test_answers_equal_the_in_process_predictor(server, predictor, how):
    for text in TEXTS:
        if how == "plain":
            r = server.predict("text/plain", data=text.encode("utf-8"))
        elif how == "json":
            r = server.predict("application/json", json_body={"text": text})
        elif how == "json-top1":
            r = server.predict("application/json", json_body={"text": text, "top_k": 1})
        else:   # no Content-Type header at all: read as plain text (curl -d sends a form instead: see below)
            r = server.predict(None, data=text.encode("utf-8"))
        assert r.status_code == 200, (text, r.text)
        assert r.headers["Content-Type"].startswith("application/json")
        answer = r.json()
        expected = predictor.predict([text], top_k=1 if how == "json-top1" else 3)[0]
        assert len(answer["top_k"]) == len(expected["top_k"])
        assert_same(answer, expected)


def test_a_concurrent_burst_is_answered_as_one_by_one(server):
    requests_ = [(TEXTS[i % len(TEXTS)], i % 2 == 0) for i in range(24)]

    def send(item):
        text, plain = item
        r = (server.predict("text/plain", data=text.encode()) if plain
             else server.predict("application/json", json_body={"text": text}))
        return r.status_code, r.json()

    one_by_one = {text: send((text, True)) for text in TEXTS}
    calls = server.handler_calls()
    with ThreadPoolExecutor(max_workers=12) as pool:
        burst = list(pool.map(send, requests_))
    # Dynamic batching did group requests (so padding inside served batches was exercised).
    assert server.handler_calls() - calls < len(requests_)
    for (text, _), (status, answer) in zip(requests_, burst):
        assert status == 200, answer
        assert_same(answer, one_by_one[text][1], atol=1e-5)


GOOD, FORM = "good", "application/x-www-form-urlencoded"
MIXED = [
    # (request keyword arguments, expected status, words in "error" | text whose answer is expected)
    (dict(content_type="text/plain", data=b""), 400, "'text' is empty"),
    (dict(content_type="text/plain", data=b" \t\r\n "), 400, "'text' is empty"),
    (dict(content_type="text/plain", data=b"caf\xe9 au lait"), 400, "not valid UTF-8"),
    (dict(content_type="text/plain", data="rain\x00snow".encode()), 400, "control character (U+0000"),
    (dict(content_type="application/json", data=b'{"text": "play jazz"'), 400, "not valid JSON"),
    (dict(content_type="application/json", data=b'["play jazz"]'), 400, "got array"),
    (dict(content_type="application/json", data=b'"play jazz"'), 400, "got string"),
    (dict(content_type="application/json", data=b"42"), 400, "must be an object"),
    (dict(content_type="application/json", data=b"null"), 400, "text"),
    (dict(content_type="application/json", json_body={"text": 42}), 400, "'text' must be a string, got number"),
    (dict(content_type="application/json", json_body={"text": ["a"]}), 400, "'text' must be a string, got array"),
    (dict(content_type="application/json", json_body={"top_k": 1}), 400, "no 'text' field"),
    (dict(content_type="application/json", json_body={"text": "soup", "lang": "en"}), 400, "unknown field 'lang'"),
    (dict(content_type="application/json", data=b'{"text": "\\u200b\\ufeff"}'), 400, "'text' is empty"),
    (dict(content_type="text/plain; charset=klingon", data=b"soup"), 415, "unsupported charset 'klingon'"),
    (dict(content_type="text/plain; charset=iso-8859-1", data="café".encode("latin-1")), 200, (GOOD, "café")),
    (dict(content_type="application/json", data=b'\xef\xbb\xbf{"text": "bake bread"}'), 200, (GOOD, "bake bread")),
    (dict(content_type="application/json", json_body={"text": "soup", "top_k": 0}), 400, "'top_k' must be between"),
    (dict(content_type="application/json", json_body={"text": "soup", "top_k": True}), 400, "got boolean"),
    (dict(content_type="image/png", data=b"\x89PNG\r\n\x1a\n"), 415, "unsupported Content-Type 'image/png'"),
    (dict(content_type=FORM, data=b"bake a pizza"), 400, "no text found"),   # what `curl -d` sends
    (dict(content_type="text/plain", data=b"x" * 30000), 413, "the limit is 20000"),
    (dict(content_type="text/plain", data=b"will it snow tomorrow"), 200, (GOOD, "will it snow tomorrow")),
    (dict(content_type="application/json", json_body={"text": "bake bread", "top_k": 2}), 200,
     (GOOD, "bake bread")),
    (dict(content_type=FORM, data=b"text=play+some+jazz"), 200, (GOOD, "play some jazz")),
    (dict(content_type=None, data=b"soup for dinner"), 200, (GOOD, "soup for dinner")),
]


def test_a_burst_of_bad_and_good_requests(server, predictor):
    items = MIXED * 2
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda item: server.predict(**item[0]), items))
    for (kwargs, status, expected), r in zip(items, responses):
        assert r.status_code == status, (kwargs, r.status_code, r.text)
        body = r.json()
        if status == 200:
            top_k = kwargs.get("json_body", {}).get("top_k", 3)
            assert_same(body, predictor.predict([expected[1]], top_k=top_k)[0])
        else:
            assert expected in body["error"], (kwargs, body)
            assert body["error_type"] == "validation" and body["status"] == status
    # The worker survived all of it.
    assert server.predict(data=b"is it sunny").status_code == 200
    [model] = server.manage("GET", f"/models/{MODEL}").json()
    assert [w["status"] for w in model["workers"]] == ["READY"]


def test_requests_over_max_request_size_are_refused_by_the_frontend(server):
    assert server.predict("text/plain", data=b"x" * 600000).status_code == 413


def test_a_lone_surrogate_inside_a_burst_fails_only_itself(server, predictor):
    # {"text": "hello \ud800 world"} is valid JSON whose string no tokenizer takes; it used to fail its
    # whole TorchServe batch with 503. Sent amid good requests, batched together (batchSize 8, 50 ms).
    bad = b'{"text": "hello \\ud800 world"}'
    items = [bad if i % 6 == 3 else TEXTS[i % len(TEXTS)].encode() for i in range(30)]
    calls = server.handler_calls()
    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(pool.map(lambda b: server.predict("application/json" if b == bad else "text/plain",
                                                           data=b), items))
    assert server.handler_calls() - calls < len(items)   # batches did form
    for body, r in zip(items, responses):
        if body == bad:
            assert r.status_code == 400, r.text
            assert "unpaired surrogate (U+D800 at position 6)" in r.json()["error"]
        else:
            assert r.status_code == 200, r.text
            assert_same(r.json(), predictor.predict([body.decode()], top_k=3)[0])


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-the-key"}, "management-key"])
def test_inference_needs_the_inference_token(server, headers):
    if headers == "management-key":
        headers = server.manage_auth
    r = server.predict("text/plain", data=b"will it rain", headers=headers, auth=False)
    assert r.status_code in (400, 401), r.text
    assert "label" not in r.text
    r = requests.get(f"{server.inference}/ping", headers=headers, timeout=HTTP_TIMEOUT)
    assert r.status_code in (400, 401)


@pytest.mark.parametrize("path", ["/workflows?url=http://127.0.0.1:9/x.war", "/models?url=http://127.0.0.1:9/x.mar",
                                  "/models?url=file:///etc/passwd", f"/models?url={MODEL}.mar&model_name=again"])
@pytest.mark.parametrize("auth", [True, False])
def test_management_refuses_to_register_anything(server, path, auth):
    r = server.manage("POST", path, auth=auth)
    assert 400 <= r.status_code < 500, r.text
    models = server.manage("GET", "/models").json()["models"]
    assert [m["modelName"] for m in models] == [MODEL]
    assert server.manage("GET", "/workflows").json()["workflows"] == []
