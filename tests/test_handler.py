"""handlers/text_classifier.py with a fake TorchServe context (after pytorch/serve's MockContext):
every request in a batch is answered on its own; bad ones get their 4xx, good ones the Predictor's answer."""
import importlib.util
import json
import time
from http import HTTPStatus

import pytest
import yaml

from conftest import ROOT
from textclf.predict import Predictor

PLAIN, JSON = {"content-type": "text/plain"}, {"content-type": "application/json"}


class FakeMetrics:
    def __init__(self):
        self.times, self.counters, self.observed = [], {}, []

    def add_time(self, name, value, idx=None, unit="ms"):
        self.times.append((name, value, unit))

    def add_counter(self, name, value, idx=None, dimensions=()):
        key = (name, tuple((d.name, d.value) for d in dimensions))
        self.counters[key] = self.counters.get(key, 0) + value

    def add_metric(self, name, value, unit, idx=None, dimensions=(), metric_type=None):
        self.observed.append((name, value, unit, getattr(metric_type, "value", metric_type)))


class FakeContext:
    """What the handler reads from TorchServe's Context, and a record of what it sets."""

    def __init__(self, model_dir, yaml_config):
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None, "batch_size": 16}
        self.model_yaml_config = yaml_config
        self.manifest = {"model": {"modelName": "tinytest", "handler": "text_classifier.py"}}
        self.metrics = FakeMetrics()
        self.headers = []
        self.statuses, self.content_types, self.response_headers = {}, {}, {}

    def new_batch(self, headers):
        """Per-request headers as the worker builds them: {parameter name: {"content-type": ...}, header: value};
        TorchServe's frontend adds "explain": "True" or "False" to every request."""
        self.headers = [{"explain": "False", **h} for h in headers]
        self.statuses, self.content_types, self.response_headers = {}, {}, {}

    def get_request_header(self, idx, key):
        return self.headers[idx].get(key) if idx < len(self.headers) else None

    def get_all_request_header(self, idx):
        return self.headers[idx] if idx < len(self.headers) else {}

    def set_response_status(self, code=200, phrase="", idx=0):
        self.statuses[idx] = (code, phrase)

    def set_response_content_type(self, idx, value):
        self.content_types[idx] = value

    def set_response_header(self, idx, key, value):
        self.response_headers.setdefault(idx, {})[key] = value


def load_handler_module():
    spec = importlib.util.spec_from_file_location("text_classifier", ROOT / "handlers" / "text_classifier.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def settings(**handler):
    config = yaml.safe_load((ROOT / "handlers" / "model-config.yaml").read_text())
    config["handler"] = {**config.get("handler", {}), "torch_threads": 1, "max_chars": 200, **handler}
    return config


@pytest.fixture(scope="module")
def predictor(tiny_ckpt):
    return Predictor.from_checkpoint(tiny_ckpt)


def start(tiny_ckpt, **handler):
    context = FakeContext(tiny_ckpt, settings(**handler))
    handler = load_handler_module().TextClassifierHandler()
    handler.initialize(context)
    assert handler.initialized
    return handler, context


@pytest.fixture(scope="module")
def served(tiny_ckpt):
    return start(tiny_ckpt)


def handle(handler, context, requests):
    """requests: [(row, headers)] -> the handler's answers (JSON-serialisable, one per request)."""
    context.new_batch([h for _, h in requests])
    answers = handler.handle([row for row, _ in requests], context)
    assert len(answers) == len(requests)
    assert all(isinstance(a, str) for a in answers)   # compact JSON, passed through by TorchServe as it is
    answers = [json.loads(a) for a in answers]
    assert context.metrics.times[-1][0] == "HandlerTime"
    return answers


def assert_same_answer(answer, expected):
    assert set(answer) == {"label", "score", "top_k"}
    assert answer["label"] == expected["label"]
    assert answer["score"] == pytest.approx(expected["score"], abs=1e-5)
    assert {x["label"]: x["score"] for x in answer["top_k"]} == pytest.approx(
        {x["label"]: x["score"] for x in expected["top_k"]}, abs=1e-5)


GOOD = "good"
MIXED = [
    # (row, headers, expected: (GOOD, text, top_k) or (status, words in the error))
    ({"body": "will it rain tomorrow"}, {"body": PLAIN}, (GOOD, "will it rain tomorrow", 3)),
    ({"body": b""}, {"body": PLAIN}, (400, "'text' is empty")),
    ({"body": {"text": "play some jazz on the guitar", "top_k": 1}}, {"body": JSON},
     (GOOD, "play some jazz on the guitar", 1)),
    ({"body": b'{"text": "play jazz"'}, {"body": JSON}, (400, "not valid JSON")),
    ({"body": b"\x89PNG\r\n"}, {"body": {"content-type": "image/png"}}, (415, "unsupported Content-Type 'image/png'")),
    ({"body": b"a" * 201}, {"body": PLAIN}, (413, "the limit is 200")),
    ({"body": ["play jazz"]}, {"body": JSON}, (400, "must be an object")),
    ({}, {"Content-Type": "application/x-www-form-urlencoded"}, (400, "no text found")),
    ({"body": b"   \n "}, {"body": PLAIN}, (400, "'text' is empty")),
    ({"text": "bake a pizza with cheese"}, {"text": PLAIN, "Content-Type": "application/x-www-form-urlencoded"},
     (GOOD, "bake a pizza with cheese", 3)),
    ({"body": b"rain\x00snow"}, {"body": PLAIN}, (400, "control character (U+0000")),
    ({"data": "Café crème brûlée recipe".encode()}, {"data": {"content-type": "text/plain; charset=utf-8"}},
     (GOOD, "Café crème brûlée recipe", 3)),
    ({"body": b"caf\xe9"}, {"body": PLAIN}, (400, "not valid UTF-8")),
    ({"body": {"text": "soup", "top_k": 5}}, {"body": JSON}, (400, "'top_k' must be between 1 and 3, got 5")),
    ({"body": {"text": 42}}, {"body": JSON}, (400, "'text' must be a string, got number")),
    ({"body": {"text": "soup", "lang": "en"}}, {"body": JSON}, (400, "unknown field 'lang'")),
    ({"body": {"text": "hello \ud800 world"}}, {"body": JSON}, (400, "unpaired surrogate (U+D800 at position 6)")),
    ({"body": {"text": "\u200b\u200b"}}, {"body": JSON}, (400, "'text' is empty")),
    # TorchServe strips the parameters from the body's content type; the client's header keeps them
    ({"body": "soup"}, {"body": PLAIN, "Content-Type": "text/plain; charset=klingon"},
     (415, "unsupported charset 'klingon'")),
    ({"body": "caf\u00e9".encode("latin-1")}, {"body": {"content-type": "text/plain"},
                                              "content-type": "text/plain; charset=ISO-8859-1"}, (GOOD, "café", 3)),
    ({"body": b'{"text": "what is the forecast", "top_k": 2}'}, {"body": JSON}, (GOOD, "what is the forecast", 2)),
]


def test_mixed_batch_answers_each_request(served, predictor):
    handler, context = served
    answers = handle(handler, context, [(row, headers) for row, headers, _ in MIXED])
    for idx, (answer, (_, _, expected)) in enumerate(zip(answers, MIXED)):
        assert context.content_types[idx] == "application/json"
        if expected[0] == GOOD:
            _, text, top_k = expected
            assert idx not in context.statuses, f"request {idx} got status {context.statuses.get(idx)}"
            assert_same_answer(answer, predictor.predict([text], top_k=top_k)[0])
        else:
            status, words = expected
            assert answer["error_type"] == "validation" and answer["status"] == status, (idx, answer)
            assert words in answer["error"], (idx, answer)
            assert context.statuses[idx] == (status, HTTPStatus(status).phrase), idx


def test_good_answers_match_the_predictor_for_a_whole_batch(served, predictor):
    handler, context = served
    texts = ["rain", "play some jazz", "bake a pizza for dinner tomorrow please", "a b c " * 20, "soup"]
    answers = handle(handler, context, [({"body": t.encode()}, {"body": PLAIN}) for t in texts])
    assert not context.statuses
    for answer, expected in zip(answers, predictor.predict(texts, top_k=3)):
        assert_same_answer(answer, expected)


def test_a_batch_of_only_bad_requests(served):
    handler, context = served
    answers = handle(handler, context, [({"body": b""}, {"body": PLAIN}), ({}, {})])
    assert [a["status"] for a in answers] == [400, 400]
    assert sorted(context.statuses) == [0, 1]


def test_handler_settings_come_from_model_config(tiny_ckpt, predictor):
    handler, context = start(tiny_ckpt, top_k=2, max_chars=10)
    [short, long] = handle(handler, context, [({"body": b"rain"}, {"body": PLAIN}),
                                              ({"body": b"rain" * 3}, {"body": PLAIN})])
    assert len(short["top_k"]) == 2
    assert long["status"] == 413 and "the limit is 10" in long["error"]


def test_default_top_k_is_capped_at_the_number_of_labels(tiny_ckpt):
    handler, context = start(tiny_ckpt, top_k=50)
    [answer] = handle(handler, context, [({"body": b"rain"}, {"body": PLAIN})])
    assert len(answer["top_k"]) == 3


def test_the_handler_module_defines_one_class():
    # TorchServe's loader refuses a handler module with more than one class ("Expected only one class")
    import inspect
    module = load_handler_module()
    assert [n for n, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == module.__name__] == [
        "TextClassifierHandler"]


def test_every_form_in_one_batch(served, predictor):
    handler, context = served
    texts = ["will it rain tomorrow", "play some jazz on the guitar", "bake a pizza", "rain"]
    v2 = {"id": "r1", "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": texts[:2]}],
          "parameters": {"top_k": 2}}
    answers = handle(handler, context, [
        ({"body": {"texts": texts, "top_k": 2}}, {"body": JSON}),
        ({"body": {"instances": [texts[2], {"data": texts[3]}]}}, {"body": JSON}),
        ({"body": v2}, {"body": JSON}),
        ({"body": {"inputs": [{"name": "t", "shape": [1], "datatype": "BYTES", "data": ["rain"]}]}}, {"body": JSON}),
        ({"body": texts[0].encode()}, {"body": PLAIN}),
    ])
    assert not context.statuses
    many, v1, v2_answer, v2_plain, one = answers
    for answer, expected in zip(many["predictions"], predictor.predict(texts, top_k=2)):
        assert_same_answer(answer, expected)
    for answer, expected in zip(v1["predictions"], predictor.predict(texts[2:], top_k=3)):
        assert_same_answer(answer, expected)
    expected = predictor.predict(texts[:2], top_k=2)
    assert v2_answer["model_name"] == "tinytest" and v2_answer["id"] == "r1"
    labels, scores = v2_answer["outputs"]
    assert (labels["name"], labels["datatype"], labels["shape"]) == ("label", "BYTES", [2, 2])
    assert (scores["name"], scores["datatype"], scores["shape"]) == ("score", "FP32", [2, 2])
    assert labels["data"] == [x["label"] for e in expected for x in e["top_k"]]
    assert scores["data"] == pytest.approx([x["score"] for e in expected for x in e["top_k"]], abs=1e-5)
    assert "id" not in v2_plain and [o["shape"] for o in v2_plain["outputs"]] == [[1], [1]]
    assert v2_plain["outputs"][0]["data"] == [predictor.predict(["rain"])[0]["label"]]
    assert_same_answer(one, predictor.predict([texts[0]], top_k=3)[0])


def test_texts_are_split_into_bounded_forward_passes(tiny_ckpt, predictor):
    handler, context = start(tiny_ckpt, max_batch_texts=2)
    texts = ["rain", "play jazz", "a b c " * 10, "bake a pizza please", "soup"]
    [answer] = handle(handler, context, [({"body": {"texts": texts}}, {"body": JSON})])
    for got, expected in zip(answer["predictions"], predictor.predict(texts, top_k=3)):
        assert_same_answer(got, expected)
    assert context.metrics.counters[("textclf_forward_passes_total", ())] == 3
    assert context.metrics.counters[("textclf_texts_total", ())] == 5


def test_histograms_time_each_proxied_request_and_each_batchs_tokenization_and_forward_pass(tiny_ckpt):
    """Seconds, as Prometheus histograms: a request from the time the proxy took it (its X-Request-Start, nginx's
    $msec) to its answer, errors included; a request that did not come through the proxy is not timed."""
    handler, context = start(tiny_ckpt, max_batch_texts=2)
    took = time.time() - 0.25
    handle(handler, context, [({"body": b"rain"}, PLAIN | {"X-Request-Start": f"t={took:.3f}"}),
                              ({"body": b""}, PLAIN | {"x-request-start": f"t={took:.3f}"}),
                              ({"body": b"play jazz"}, PLAIN),
                              ({"body": b"snow"}, PLAIN | {"X-Request-Start": "t=garbage"})])
    observed = {}
    for name, value, unit, kind in context.metrics.observed:
        assert unit == "seconds" and kind == "histogram", name
        observed.setdefault(name, []).append(value)
    assert len(observed["textclf_request_duration_seconds"]) == 2
    assert all(0.25 <= v < 5 for v in observed["textclf_request_duration_seconds"])
    assert len(observed["textclf_tokenize_seconds"]) == len(observed["textclf_forward_seconds"]) == 1
    assert 0 < observed["textclf_forward_seconds"][0] < 5


def test_a_large_request_may_borrow_idle_cores_and_gives_them_back(tiny_ckpt, predictor):
    import torch
    handler, context = start(tiny_ckpt, parallel_min_texts=4)
    assert handler.threads == 1
    texts = ["rain", "play jazz", "bake a pizza please", "soup", "guitar songs"]
    [answer] = handle(handler, context, [({"body": {"texts": texts}}, {"body": JSON})])
    for got, expected in zip(answer["predictions"], predictor.predict(texts, top_k=3)):
        assert_same_answer(got, expected)
    assert torch.get_num_threads() == 1
    assert 1 <= handler._threads_for(len(texts)) <= handler.cores
    assert handler._threads_for(3) == 1


def failing_on(handler, word):
    """Make the tokenizer raise for any batch holding `word`, as an unforeseen input would."""
    encode = handler.predictor.tokenizer.encode

    def encode_or_fail(texts, max_length):
        if any(word in t for t in texts):
            raise RuntimeError(f"cannot tokenize {word}")
        return encode(texts, max_length)
    handler.predictor.tokenizer.encode = encode_or_fail


def test_a_forward_pass_that_raises_fails_only_its_own_request(tiny_ckpt, predictor, caplog):
    handler, context = start(tiny_ckpt)
    failing_on(handler, "boom")
    batch = [({"body": b"will it rain"}, {"body": PLAIN}),
             ({"body": {"texts": ["play jazz", "boom goes the drum"]}}, {"body": JSON}),
             ({"body": {"text": "bake bread"}}, {"body": JSON}),
             ({"body": b""}, {"body": PLAIN})]
    with caplog.at_level("INFO"):
        answers = handle(handler, context, batch)
    assert_same_answer(answers[0], predictor.predict(["will it rain"], top_k=3)[0])
    assert_same_answer(answers[2], predictor.predict(["bake bread"], top_k=3)[0])
    assert answers[1] == {"error": "the model failed on this request (RuntimeError)", "error_type": "internal",
                          "status": 500}
    assert context.statuses == {1: (500, "Internal Server Error"), 3: (400, "Bad Request")}
    assert "boom" not in caplog.text and "RuntimeError" in caplog.text   # logged without the text
    counters = context.metrics.counters
    assert counters[("textclf_requests_total", (("outcome", "answered"), ("status", "200")))] == 2
    assert counters[("textclf_requests_total", (("outcome", "5xx"), ("status", "500")))] == 1
    assert counters[("textclf_requests_total", (("outcome", "4xx"), ("status", "400")))] == 1


def test_explanations_and_predictions_in_one_batch_are_each_answered_in_kind(served, predictor):
    # TorchServe batches /explanations with /predictions; BaseHandler would follow request 0 for all
    handler, context = served
    for first in ("True", "False"):
        second = "False" if first == "True" else "True"
        answers = handle(handler, context, [
            ({"body": b"play some jazz on the guitar"}, {"body": PLAIN, "explain": first}),
            ({"body": b"play some jazz on the guitar"}, {"body": PLAIN, "explain": second}),
        ])
        explained, predicted = answers if first == "True" else answers[::-1]
        assert not context.statuses
        assert_same_answer(predicted, predictor.predict(["play some jazz on the guitar"], top_k=3)[0])
        assert explained["label"] == predicted["label"]
        assert [w["word"] for w in explained["words"]] == ["play", "some", "jazz", "on", "the", "guitar"]


def test_explanation_of_a_named_label_and_v1(served, predictor):
    handler, context = served
    labels = predictor.labels
    answers = handle(handler, context, [
        ({"body": {"text": "rain and snow", "label": labels[1]}}, {"body": JSON, "explain": "True"}),
        ({"body": {"instances": ["rain", "jazz guitar"]}}, {"body": JSON, "explain": "True"}),
        ({"body": {"text": "rain", "label": "nope"}}, {"body": JSON, "explain": "True"}),
    ])
    assert answers[0]["label"] == labels[1]
    assert answers[0]["score"] == pytest.approx(predictor.predict_proba(["rain and snow"])[0][1], abs=1e-5)
    assert [len(e["words"]) for e in answers[1]["explanations"]] == [1, 2]
    assert answers[2]["status"] == 400 and "'label' must be one of" in answers[2]["error"]


def test_model_work_per_request_and_per_batch_is_bounded(tiny_ckpt, predictor):
    # tiny model: max_length 32, so a 40-character text counts as 32 tokens of work
    handler, context = start(tiny_ckpt, max_batch_tokens=105)
    text = "rain and snow and wind all over the town"
    answers = handle(handler, context, [
        ({"body": {"texts": [text] * 4}}, {"body": JSON}),            # 128 tokens alone: over the limit
        ({"body": {"texts": [text] * 3}}, {"body": JSON}),            # 96: runs
        ({"body": text.encode()}, {"body": PLAIN}),                   # 32 more would pass 105: retry later
        ({"body": b"rain"}, {"body": PLAIN}),                         # 4 + 2 tokens: fits
    ])
    assert answers[0]["status"] == 413 and "up to 128 tokens of model work; the limit is 105" in answers[0]["error"]
    assert [p["label"] for p in answers[1]["predictions"]] == [predictor.predict([text])[0]["label"]] * 3
    assert answers[2] == {"error": "the server is busy with other large requests: retry", "error_type": "overload",
                          "status": 503}
    assert_same_answer(answers[3], predictor.predict(["rain"], top_k=3)[0])
    assert context.statuses == {0: (413, "Request Entity Too Large"), 2: (503, "Service Unavailable")}


def test_an_explanation_counts_one_pass_per_word(tiny_ckpt):
    handler, context = start(tiny_ckpt, max_batch_tokens=50)
    [answer] = handle(handler, context, [({"body": b"play some jazz now"}, {"body": PLAIN, "explain": "True"})])
    assert answer["status"] == 413 and "up to 100 tokens" in answer["error"]   # (4 words + 1) x 20


def test_an_answer_over_max_answer_bytes_is_413_alone(tiny_ckpt, predictor):
    handler, context = start(tiny_ckpt, max_answer_bytes=300)
    answers = handle(handler, context, [({"body": {"texts": ["rain"] * 5, "top_k": 3}}, {"body": JSON}),
                                        ({"body": b"rain"}, {"body": PLAIN})])
    assert answers[0]["status"] == 413 and "the limit is 300: ask for a smaller top_k" in answers[0]["error"]
    assert_same_answer(answers[1], predictor.predict(["rain"], top_k=3)[0])


def test_explanations_are_counted_in_the_metrics(tiny_ckpt):
    handler, context = start(tiny_ckpt)
    handle(handler, context, [({"body": b"play some jazz"}, {"body": PLAIN, "explain": "True"})])
    assert context.metrics.counters[("textclf_texts_total", ())] == 4   # the text, then without each word


def test_only_one_worker_at_a_time_borrows_idle_cores(tiny_ckpt):
    # two handlers (two workers) on one machine: while one holds the borrowed cores, the other runs as configured
    first, _ = start(tiny_ckpt, parallel_min_texts=2)
    second, _ = start(tiny_ckpt, parallel_min_texts=2)
    assert first._borrow() is True
    assert second._borrow() is False
    import fcntl
    fcntl.flock(first._borrow_lock, fcntl.LOCK_UN)
    assert second._borrow() is True
    fcntl.flock(second._borrow_lock, fcntl.LOCK_UN)
