"""handlers/text_classifier.py with a fake TorchServe context (after pytorch/serve's MockContext):
every request in a batch is answered on its own; bad ones get their 4xx, good ones the Predictor's answer."""
import importlib.util
import json

import pytest
import yaml

from conftest import ROOT
from textclf.predict import Predictor

PLAIN, JSON = {"content-type": "text/plain"}, {"content-type": "application/json"}


class FakeMetrics:
    def __init__(self):
        self.times = []

    def add_time(self, name, value, idx=None, unit="ms"):
        self.times.append((name, value, unit))


class FakeContext:
    """What the handler reads from TorchServe's Context, and a record of what it sets."""

    def __init__(self, model_dir, yaml_config):
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None, "batch_size": 16}
        self.model_yaml_config = yaml_config
        self.manifest = {"model": {"modelName": "tinytest", "handler": "text_classifier.py"}}
        self.metrics = FakeMetrics()
        self.headers = []
        self.statuses, self.content_types = {}, {}

    def new_batch(self, headers):
        """Per-request headers as the worker builds them: {parameter name: {"content-type": ...}, header: value}."""
        self.headers = list(headers)
        self.statuses, self.content_types = {}, {}

    def get_request_header(self, idx, key):
        return self.headers[idx].get(key) if idx < len(self.headers) else None

    def set_response_status(self, code=200, phrase="", idx=0):
        self.statuses[idx] = (code, phrase)

    def set_response_content_type(self, idx, value):
        self.content_types[idx] = value


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
    json.dumps(answers)
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
            assert context.statuses[idx] == (status, answer["error"]), idx


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
