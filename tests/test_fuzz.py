"""Property-based tests (hypothesis): arbitrary bodies, content types and JSON through parse_request, both
tokenizers and the handler. Every outcome is an answer or a 4xx RequestError, never another exception; and
whatever validation lets through, both tokenizers can encode.

Examples per test: TEXTCLF_FUZZ_EXAMPLES (default 300; the closing notes record longer runs). The real
MiniLM tokenizer and the tiny model trained by conftest are used; nothing is stubbed.
"""
import json
import os
from http import HTTPStatus

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import Limits, Request, RequestError, parse_request
from textclf.tokenization import HFTokenizer, WordTokenizer

EXAMPLES = int(os.environ.get("TEXTCLF_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
LABELS = ["food", "music", "weather"]
LIMITS = Limits(max_chars=300, max_texts=8, max_total_chars=800, explain_max_words=16)

# every code point, lone surrogates, controls and unassigned ones included
ANY_CHAR = st.characters(exclude_categories=())
TRICKY = st.sampled_from(["\ud800", "\udfff", "\x00", "\u200b", "\ufeff", "\u202e", "\r\n", "\t", "\U0001f3b5",
                          "\u0301", "[CLS]", "[SEP]", "[PAD]", "##", "\u3164", "\uffff", "\U0010ffff", "é", " "])
TEXT = st.one_of(st.text(ANY_CHAR, max_size=60), st.lists(st.one_of(TRICKY, st.text(ANY_CHAR, max_size=5)),
                                                          max_size=12).map("".join))
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-5, 10), st.floats(allow_nan=True), TEXT)
JSON_VALUE = st.recursive(SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(TEXT, inner, max_size=4)), max_leaves=12)
TOP_K = st.one_of(st.integers(-1, 5), SCALAR)


def v2_body(texts, shape, datatype, request_id, params, outputs):
    body = {"inputs": [{"name": "text", "shape": shape, "datatype": datatype, "data": texts}]}
    for key, value in (("id", request_id), ("parameters", params), ("outputs", outputs)):
        if value is not None:
            body[key] = value
    return body


# Bodies in our forms with fuzzed contents reach deeper than random JSON alone.
FORM_BODY = st.one_of(
    st.fixed_dictionaries({"text": st.one_of(TEXT, SCALAR)}, optional={"top_k": TOP_K, "label": SCALAR}),
    st.fixed_dictionaries({"texts": st.one_of(st.lists(st.one_of(TEXT, SCALAR), max_size=10), SCALAR)},
                          optional={"top_k": TOP_K}),
    st.fixed_dictionaries({"instances": st.lists(st.one_of(TEXT, st.fixed_dictionaries({"data": TEXT}),
                                                           st.dictionaries(TEXT, SCALAR, max_size=2)), max_size=10)},
                          optional={"top_k": TOP_K, "label": st.sampled_from(LABELS + ["x"])}),
    st.builds(v2_body, st.one_of(st.lists(TEXT, max_size=10), st.lists(st.lists(TEXT, max_size=3), max_size=3), TEXT,
                                 SCALAR),
              st.one_of(st.lists(st.one_of(st.integers(-1, 12), st.integers()), max_size=10), SCALAR),
              st.sampled_from(["BYTES", "BYTES", "FP32", "bytes", None]), st.one_of(st.none(), TEXT, st.integers()),
              st.one_of(st.none(), st.fixed_dictionaries({"top_k": TOP_K}), SCALAR),
              st.one_of(st.none(), st.lists(st.fixed_dictionaries({"name": st.sampled_from(["label", "score", "x"])}),
                                            max_size=3))),
)
CHARSETS = ["utf-8", "UTF-8", "utf-16", "utf-16-le", "latin-1", "iso-8859-1", "cp1252", "ascii", "utf-7", "shift_jis",
            "utf-32", "rot13", "base64", "hex", "unicode-escape", "idna", "punycode", "nope", ""]
MEDIA = ["application/json", "text/plain", "", "application/x-www-form-urlencoded", "text/html", "image/png",
         "Application/JSON", "text/plain;", "multipart/form-data"]
CONTENT_TYPE = st.one_of(
    st.builds(lambda m, c: f"{m}; charset={c}" if c else m, st.sampled_from(MEDIA), st.sampled_from(CHARSETS)),
    st.text(ANY_CHAR, max_size=30))


@st.composite
def body(draw):
    """What TorchServe may hand over under "body"/"data": bytes in some encoding, a decoded str, or parsed JSON."""
    value = draw(st.one_of(FORM_BODY, JSON_VALUE))
    how = draw(st.sampled_from(["parsed", "json-bytes", "json-str", "raw-bytes", "raw-text", "none"]))
    if how == "parsed":
        return value
    if how in ("json-bytes", "json-str"):
        text = json.dumps(value, ensure_ascii=draw(st.booleans()))
        if how == "json-str":
            return text
        encoding = draw(st.sampled_from(["utf-8", "utf-16", "latin-1", "utf-8-sig"]))
        return text.encode(encoding, "surrogatepass" if encoding.startswith("utf") else "replace")
    if how == "raw-bytes":
        return draw(st.binary(max_size=80))
    if how == "raw-text":
        return draw(TEXT)
    return None


@st.composite
def row(draw):
    kind = draw(st.sampled_from(["body", "data", "both", "form", "empty"]))
    if kind == "form":
        return {draw(st.sampled_from(["text", "txt"])): draw(st.one_of(TEXT, st.binary(max_size=30)))}
    if kind == "empty":
        return {}
    if kind == "both":
        return {"data": draw(st.one_of(st.none(), body())), "body": draw(body())}
    return {kind: draw(body())}


def assert_accepted_or_refused(outcome):
    if isinstance(outcome, RequestError):
        assert 400 <= outcome.status < 500, outcome.status
        assert str(outcome) and len(str(outcome)) < 600
        return
    assert isinstance(outcome, Request)
    assert 1 <= len(outcome.texts) <= LIMITS.max_texts and 1 <= outcome.top_k <= len(LABELS)
    for text in outcome.texts:
        assert isinstance(text, str) and 0 < len(text) <= LIMITS.max_chars
        text.encode("utf-8")   # no lone surrogates got through


def parse(r, content_type, explain):
    try:
        return parse_request(r, content_type, LABELS, 2, LIMITS, explain)
    except RequestError as e:
        return e


@FUZZ
@given(row(), CONTENT_TYPE, st.booleans())
def test_parse_request_answers_or_refuses_anything(r, content_type, explain):
    assert_accepted_or_refused(parse(r, content_type, explain))


@pytest.fixture(scope="module")
def tokenizers(minilm_dir):
    return [HFTokenizer.load(minilm_dir), WordTokenizer(["play", "jazz", "é"])]


@FUZZ
@given(st.lists(TEXT, min_size=1, max_size=6))
def test_whatever_validation_accepts_both_tokenizers_encode(tokenizers, texts):
    accepted = [t for t in texts if not isinstance(parse({"body": {"text": t}}, "application/json", False),
                                                   RequestError)]
    for tokenizer in tokenizers:
        for batch in ([t] for t in accepted) if accepted else ():
            enc = tokenizer.encode(batch, 32)
            assert enc["input_ids"].shape == enc["attention_mask"].shape and enc["input_ids"].shape[1] <= 32
        if accepted:
            enc = tokenizer.encode(accepted, 32)
            assert enc["input_ids"].shape[0] == len(accepted)


@pytest.fixture(scope="module")
def served(tiny_ckpt):
    from test_handler import start
    return start(tiny_ckpt, max_chars=300, max_texts=8, max_total_chars=800, explain_max_words=16)


@FUZZ
@given(st.lists(st.tuples(row(), CONTENT_TYPE, st.sampled_from(["True", "False"])), min_size=1, max_size=6))
def test_the_handler_answers_every_request_of_any_batch(served, batch):
    from test_handler import handle
    handler, context = served
    answers = handle(handler, context, [(r, {"body": {"content-type": ct}, "data": {"content-type": ct},
                                             "Content-Type": ct, "explain": explain})
                                        for r, ct, explain in batch])
    for idx, answer in enumerate(answers):
        if idx in context.statuses:
            status, phrase = context.statuses[idx]
            assert 400 <= status < 500 or status == 503, answer   # a 500 would be a bug found
            assert answer["status"] == status and answer["error"] and phrase == HTTPStatus(status).phrase
            assert answer["error_type"] == ("overload" if status == 503 else "validation")
        else:
            assert {"label", "predictions", "outputs", "explanations"} & set(answer), answer
