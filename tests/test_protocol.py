"""protocol/: the Open Inference Protocol as tritonclient.http speaks it by default (binary tensor data both ways),
model metadata, and the JSON Schema generated from the pydantic models.

Requests are built and answers read by tritonclient itself; the handler runs in-process with test_handler's fake
TorchServe context, fed the way the worker feeds it (an application/octet-stream body arrives as bytes, the
request headers by name as the client wrote them)."""
import json
import struct
from http import HTTPStatus

import jsonschema
import numpy as np
import pytest
import tritonclient.http as th
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_handler import JSON, PLAIN, handle, start

from protocol import Limits, RequestError, parse_request
from protocol import schema as protocol_schema
from protocol.binary import HEADER
from textclf.predict import Predictor

OCTET = "application/octet-stream"
TEXTS = ["will it rain tomorrow", "play some jazz on the guitar", "bake a pizza with cheese, señor"]


@pytest.fixture(scope="module")
def served(tiny_ckpt):
    return start(tiny_ckpt)


@pytest.fixture(scope="module")
def predictor(tiny_ckpt):
    return Predictor.from_checkpoint(tiny_ckpt)


def infer_body(texts, binary=True, outputs=None, **kw):
    """-> (body, JSON header size or None) as tritonclient.http sends it."""
    tensor = th.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=object), binary_data=binary)
    return th.InferenceServerClient.generate_request_body([tensor], outputs=outputs, **kw)


def as_sent(body, size, content_type=OCTET, header=HEADER):
    """(row, headers) as TorchServe's worker hands over a request: a binary one as bytes with its headers; one
    without a binary part as application/json, which the worker parses."""
    if size is None:
        return {"body": json.loads(body)}, {"body": {"content-type": "application/json"},
                                            "Content-Type": "application/json"}
    return {"body": body}, {"body": {"content-type": content_type}, "Content-Type": content_type, header: str(size)}


def send(handler, context, requests):
    """[(row, headers)] -> the frontend's view of each answer: (status, content type, headers, body bytes)."""
    context.new_batch([h for _, h in requests])
    bodies = handler.handle([row for row, _ in requests], context)
    assert len(bodies) == len(requests)
    return [(context.statuses.get(i, (200, "OK"))[0], context.content_types[i], context.response_headers.get(i, {}),
             b.encode("utf-8") if isinstance(b, str) else b) for i, b in enumerate(bodies)]


def result(answer):
    """tritonclient's InferResult of one answer, read as InferenceServerClient.infer reads a response."""
    status, _, headers, body = answer
    assert status == 200, body
    return th.InferenceServerClient.parse_response_body(body, header_length=headers.get(HEADER))


def labels_and_scores(predictor, texts, k=1):
    expected = predictor.predict(texts, top_k=k)
    return ([[x["label"] for x in e["top_k"]] for e in expected],
            np.array([[x["score"] for x in e["top_k"]] for e in expected], dtype=np.float32))


# ---- tritonclient's defaults: binary texts in, binary outputs back

@pytest.mark.parametrize("texts", [TEXTS[:1], TEXTS])
def test_tritonclient_defaults_binary_both_ways(served, predictor, texts):
    handler, context = served
    [answer] = send(handler, context, [as_sent(*infer_body(texts))])
    _status, content_type, headers, body = answer
    assert content_type == OCTET and int(headers[HEADER]) < len(body)
    header = json.loads(body[:int(headers[HEADER])])
    assert all("data" not in o and o["parameters"]["binary_data_size"] > 0 for o in header["outputs"])
    got = result(answer)
    labels, scores = labels_and_scores(predictor, texts)
    assert got.as_numpy("label").tolist() == [row[0].encode() for row in labels]
    assert np.allclose(got.as_numpy("score"), scores[:, 0], atol=1e-6)
    assert got.as_numpy("label").shape == (len(texts),) and got.as_numpy("out_of_scope") is None
    assert got.get_response()["model_name"] == "tinytest"


def test_top_k_id_and_outputs_chosen_one_by_one(served, predictor):
    handler, context = served
    outputs = [th.InferRequestedOutput("score", binary_data=True), th.InferRequestedOutput("label", binary_data=False)]
    answers = send(handler, context, [
        as_sent(*infer_body(TEXTS, request_id="r-7", parameters={"top_k": 2})),
        as_sent(*infer_body(TEXTS, outputs=outputs)),
        as_sent(*infer_body(TEXTS, binary=False)),                        # JSON texts, binary outputs asked
        as_sent(*infer_body(TEXTS, binary=False, outputs=[th.InferRequestedOutput("label", binary_data=False)])),
    ])
    ranked, top_k, mixed, json_only = answers
    labels, scores = labels_and_scores(predictor, TEXTS, 2)
    got = result(ranked)
    assert got.get_response()["id"] == "r-7"
    assert got.as_numpy("label").tolist() == [[x.encode() for x in row] for row in labels]
    assert np.allclose(got.as_numpy("score"), scores, atol=1e-6) and got.as_numpy("score").dtype == np.float32
    got = result(top_k)
    assert [o["name"] for o in got.get_response()["outputs"]] == ["score", "label"]
    assert "data" in got.get_output("label") and "data" not in got.get_output("score")
    assert got.as_numpy("label").tolist() == [row[0] for row in labels]   # JSON: str, as tritonclient reads it
    assert np.allclose(got.as_numpy("score"), scores[:, 0], atol=1e-6)
    assert mixed[2][HEADER] and result(mixed).as_numpy("label").tolist() == [row[0].encode() for row in labels]
    assert json_only[1] == "application/json" and HEADER not in json_only[2]
    assert json.loads(json_only[3])["outputs"][0]["data"] == [row[0] for row in labels]


def test_out_of_scope_is_a_bool_output_and_labels_stay_ranked(tiny_ckpt, predictor):
    # a threshold above every probability: every text out of scope; v2's label column still ranks the labels
    handler, context = start(tiny_ckpt, out_of_scope_threshold=1.5)
    binary, plain = send(handler, context, [as_sent(*infer_body(TEXTS[:2])),
                                            as_sent(*infer_body(TEXTS[:2], binary=False, outputs=[
                                                th.InferRequestedOutput("out_of_scope", binary_data=False),
                                                th.InferRequestedOutput("label", binary_data=True)]))])
    labels, _ = labels_and_scores(predictor, TEXTS[:2])
    got = result(binary)
    assert got.as_numpy("out_of_scope").tolist() == [True, True] and got.as_numpy("out_of_scope").dtype == bool
    assert got.as_numpy("label").tolist() == [row[0].encode() for row in labels]
    got = result(plain)
    assert got.get_output("out_of_scope")["data"] == [True, True] and got.as_numpy("out_of_scope").tolist() == [
        True, True]
    assert got.as_numpy("label").tolist() == [row[0].encode() for row in labels]


def test_the_header_name_in_any_case_and_a_batch_of_every_kind(served, predictor):
    handler, context = served
    answers = send(handler, context, [
        as_sent(*infer_body(TEXTS[:2]), header=HEADER.lower()),
        ({"body": {"text": TEXTS[0]}}, {"body": JSON}),
        ({"body": b"\x00\x00"}, {"body": {"content-type": OCTET}, "Content-Type": OCTET, HEADER: "1"}),
        ({"body": TEXTS[1].encode()}, {"body": PLAIN}),
    ])
    assert [a[0] for a in answers] == [200, 200, 400, 200]
    labels, _ = labels_and_scores(predictor, TEXTS[:2])
    assert result(answers[0]).as_numpy("label").tolist() == [row[0].encode() for row in labels]
    assert json.loads(answers[1][3])["label"] == labels[0][0]


# ---- malformed binary bodies: 400 (or 415) and a JSON error naming the problem

def raw_request(elements, shape=None, size=None, header=None, extra=b"", tensor=None):
    """A binary v2 body written by hand: elements (bytes) each with its 4-byte length, unless given raw."""
    raw = elements if isinstance(elements, bytes) else b"".join(struct.pack("<I", len(e)) + e for e in elements)
    tensor = tensor or {"name": "text", "shape": shape or [len(elements)], "datatype": "BYTES",
                        "parameters": {"binary_data_size": len(raw) if size is None else size}}
    head = json.dumps(header or {"inputs": [tensor]}).encode()
    return head + raw + extra, len(head)


GOOD, GOOD_SIZE = infer_body(["rain"])
MALFORMED = [
    ((GOOD, "9999"), 400, f"the {HEADER} header says the JSON header has 9999 bytes; the body has only {len(GOOD)}"),
    ((GOOD, "12abc"), 400, f"the {HEADER} header must be the JSON header's length in bytes, got '12abc'"),
    ((GOOD, "0"), 400, f"the {HEADER} header is 0"),
    ((GOOD, str(GOOD_SIZE - 3)), 400, f"the JSON header (the first {GOOD_SIZE - 3} bytes) is not valid JSON"),
    ((GOOD + b"!", str(GOOD_SIZE)), 400, "'inputs'[0].parameters.binary_data_size is 8, but 9 bytes follow"),
    (raw_request(struct.pack("<I", 100) + b"rain", shape=[1]), 400,
     "the binary data of 'inputs'[0] is truncated: element 0 says 100 bytes at byte 4, 4 are left"),
    (raw_request(struct.pack("<I", 4) + b"rain\x01\x00", shape=[2]), 400,
     "the binary data of 'inputs'[0] is truncated: element 1 needs a 4-byte length at byte 8, 2 bytes are left"),
    (raw_request([b"rain", b"snow"], shape=[1]), 400,
     "the binary data of 'inputs'[0] has 8 bytes after its 1 elements (the count its shape gives)"),
    (raw_request([b"rain"], shape=[1], size=3), 400, "binary_data_size is 3, but 8 bytes follow the JSON header"),
    (raw_request([b"rain"], size=-1), 400, "binary_data_size must be a number of bytes, got -1"),
    (raw_request([b"caf\xe9"]), 400, "'inputs'[0].data[0] is not valid UTF-8 (byte 3)"),
    (raw_request([b"rain", b"snow\x07"]), 400, "'inputs'[0].data[1] holds a control character (U+0007 at position 4)"),
    (raw_request([b"rain", b""]), 400, "'inputs'[0].data[1] is empty"),
    (raw_request([b"rain"], shape=[0]), 400, "has 8 bytes after its 0 elements"),
    (raw_request([b"rain"], shape=[2, 2]), 400, "element 1 needs a 4-byte length at byte 8, 0 bytes are left"),
    (raw_request([b"rain"], tensor={"name": "t", "shape": [1], "datatype": "BYTES", "data": ["rain"],
                                    "parameters": {"binary_data_size": 8}}), 400, "send its texts one way"),
    (raw_request([b"rain"], tensor={"name": "t", "shape": [1], "datatype": "BYTES", "data": ["rain"]}), 400,
     "8 bytes follow the JSON header, but 'inputs'[0] has no parameters.binary_data_size"),
    (raw_request([b"rain"], tensor={"name": "t", "shape": [1], "datatype": "FP32",
                                    "parameters": {"binary_data_size": 8}}), 400, "datatype must be \"BYTES\""),
    (raw_request([b"rain"], header={"text": "rain"}), 400, "must be an Open Inference Protocol v2 request"),
    (raw_request([b"rain"], header={"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                                "parameters": {"binary_data_size": 8}}],
                                    "outputs": [{"name": "label", "parameters": {"classification": 2}}]}),
     400, "'outputs'[0].parameters.classification is not supported"),
    (raw_request([b"rain"], header={"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                                "parameters": {"binary_data_size": 8}}],
                                    "parameters": {"binary_data_output": "yes"}}),
     400, "'parameters'.binary_data_output must be true or false, got string"),
]


def test_malformed_binary_bodies_get_a_json_error_alone(served, predictor):
    handler, context = served
    requests = [({"body": body}, {"body": {"content-type": OCTET}, "Content-Type": OCTET, HEADER: str(size)})
                for (body, size), _, _ in MALFORMED]
    answers = send(handler, context, requests + [as_sent(*infer_body(["rain"]))])
    for idx, ((status, content_type, headers, body), (_, want, words)) in enumerate(zip(answers, MALFORMED)):
        error = json.loads(body)
        assert (status, content_type, error["status"], error["error_type"]) == (want, "application/json", want,
                                                                                "validation"), error
        assert words in error["error"], error
        assert HEADER not in headers and context.statuses[idx] == (want, HTTPStatus(want).phrase)
    assert result(answers[-1]).as_numpy("label").tolist() == [predictor.predict(["rain"])[0]["label"].encode()]


def refused(row, content_type, headers, status=400):
    with pytest.raises(RequestError) as err:
        parse_request(row, content_type, ["food", "music", "weather"], 1, Limits(max_texts=4), False, headers)
    assert err.value.status == status
    return str(err.value)


def test_content_types_and_limits_of_the_binary_form():
    body, size = infer_body(["rain"])
    assert "is sent with Content-Type: application/octet-stream, not 'text/html'" in refused(
        {"body": body}, "text/html", {HEADER: str(size)}, 415)
    assert f"'application/octet-stream' without an {HEADER} header" in refused({"body": body}, OCTET, {}, 415)
    tensor = th.InferInput("text", [2, 3], "BYTES")   # every dimension within max_texts, 6 texts in all
    tensor.set_data_from_numpy(np.array([["a"] * 3] * 2, dtype=object))
    body, size = th.InferenceServerClient.generate_request_body([tensor])
    assert "'inputs'[0] has 6 texts; the limit is 4 per request" in refused({"body": body}, OCTET,
                                                                           {HEADER: str(size)}, 413)
    body, _ = infer_body(["rain"])
    tensor = json.loads(body[:GOOD_SIZE])
    assert "binary_data_size needs the binary form" in refused({"body": tensor}, "application/json", {})
    # a JSON v2 body sent in binary framing with nothing after it is read like the JSON form
    body, _ = infer_body(["rain", "snow"], binary=False)
    request = parse_request({"body": body}, OCTET, ["a", "b"], 1, None, False, {HEADER: str(len(body))})
    assert request.texts == ["rain", "snow"] and request.binary_outputs == {"label", "score", "out_of_scope",
                                                                           "selected"}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=12), max_size=5), st.lists(st.integers(0, 6), min_size=1, max_size=3),
       st.one_of(st.none(), st.integers(-2, 80)), st.binary(max_size=12), st.integers(-3, 3), st.booleans())
def test_any_binary_body_is_answered_or_refused_with_4xx(elements, shape, size, junk, skew, raw_tail):
    """Element bytes, shapes, sizes and header lengths that disagree in every way: a Request or a RequestError."""
    body, length = raw_request(elements, shape=shape, size=size)
    body = body + junk if raw_tail else body
    try:
        request = parse_request({"body": body}, OCTET, ["a", "b"], 1, Limits(max_texts=4), False,
                                {HEADER: str(length + skew)})
    except RequestError as e:
        assert 400 <= e.status < 500 and len(str(e)) < 400
        return
    assert request.texts == [e.decode() for e in elements] and len(request.texts) <= 4


# ---- model metadata

def metadata_of(handler, context, row, header="X-Textclf-Request", value="metadata"):
    [answer] = send(handler, context, [(row, {header: value})])
    return answer[0], json.loads(answer[3])


def test_metadata_request(served):
    handler, context = served
    want = {"name": "tinytest", "versions": ["1.0"], "platform": "pytorch_torchserve",
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                        {"name": "score", "datatype": "FP32", "shape": [-1]}]}
    for row in ({}, {"body": b""}, {"body": None}, {"data": bytearray()}):
        assert metadata_of(handler, context, row) == (200, want)
    assert metadata_of(handler, context, {}, "x-textclf-request", "Metadata") == (200, want)
    status, error = metadata_of(handler, context, {}, value="stats")
    assert status == 400 and "unknown X-Textclf-Request 'stats': the one value is 'metadata'" in error["error"]
    status, error = metadata_of(handler, context, {"body": b"play jazz"})
    assert status == 400 and "a metadata request (X-Textclf-Request: metadata) has no body" in error["error"]
    # in a batch with a prediction: not classified, not counted as a text
    texts = context.metrics.counters.get(("textclf_texts_total", ()), 0)
    answers = send(handler, context, [({}, {"X-Textclf-Request": "metadata"}), ({"body": b"rain"}, {"body": PLAIN})])
    assert json.loads(answers[0][3]) == want and json.loads(answers[1][3])["label"]
    assert context.metrics.counters[("textclf_texts_total", ())] - texts == 1


def test_metadata_lists_out_of_scope_where_the_model_has_a_threshold(tiny_ckpt):
    handler, context = start(tiny_ckpt, out_of_scope_threshold=0.5)
    _, metadata = metadata_of(handler, context, {})
    assert metadata["outputs"][-1] == {"name": "out_of_scope", "datatype": "BOOL", "shape": [-1]}
    [answer] = send(handler, context, [as_sent(*infer_body(TEXTS))])
    assert [o["name"] for o in result(answer).get_response()["outputs"]] == [o["name"] for o in metadata["outputs"]]


# ---- the JSON Schema

def test_the_committed_schema_and_readme_tables_are_what_the_models_give():
    committed = protocol_schema.SCHEMA_FILE.read_text(encoding="utf-8")
    assert committed == protocol_schema.schema_text(), "run: .venv/bin/python -m protocol.schema"
    readme = protocol_schema.README.read_text(encoding="utf-8")
    assert protocol_schema.readme_section() in readme, "run: .venv/bin/python -m protocol.schema"
    assert protocol_schema.main(["--check"]) == 0


@pytest.fixture(scope="module")
def validate():
    document = json.loads(protocol_schema.SCHEMA_FILE.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(document)

    def check(name, value):
        schema = {"$ref": f"#/$defs/{name}", "$defs": document["$defs"]}
        return jsonschema.Draft202012Validator(schema).is_valid(value)
    return check


def v2(texts, **extra):
    return {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}], **extra}


ACCEPTED = [("OneText", {"text": "rain", "top_k": 2}), ("ManyTexts", {"texts": ["rain", "jazz"]}),
            ("V1Request", {"instances": ["rain", {"data": "jazz"}, {"text": "soup"}], "top_k": 1}),
            ("V2Request", v2(["rain"], id="x", parameters={"top_k": 2}, outputs=[{"name": "score"}])),
            ("V2Request", v2([["a"], ["b"]])), ("V2Request", json.loads(GOOD[:GOOD_SIZE])),
            ("ExplainText", {"text": "rain", "label": "music"}), ("ExplainInstances", {"instances": ["rain"]}),
            ("PlainText", "play jazz"), ("MetadataRequest", {})]
REFUSED = [("OneText", {"text": "rain", "top_k": 0}), ("OneText", {"text": ""}), ("OneText", {"text": "a", "k": 1}),
           ("ManyTexts", {"texts": []}), ("V1Request", {"instances": [{"data": "a", "x": 1}]}),
           ("V2Request", v2(["a"], model_name="x")), ("V2Request", {"inputs": []}),
           ("V2Request", {"inputs": [{"name": "t", "shape": [1], "datatype": "FP32", "data": [1.0]}]}),
           ("V2Request", v2(["a"], outputs=[{"name": "logits"}])), ("MetadataRequest", {"text": "a"})]


@pytest.mark.parametrize("name, body", ACCEPTED)
def test_bodies_the_parser_accepts_fit_the_schema(name, body, validate):
    assert validate(name, body)
    if name in ("PlainText", "MetadataRequest"):
        return
    row, content_type, headers = {"body": body}, "application/json", {}
    if "inputs" in body and "data" not in body["inputs"][0]:   # the JSON header of a binary request: parsed with its data
        row, content_type, headers = {"body": GOOD}, OCTET, {HEADER: str(GOOD_SIZE)}
    parse_request(row, content_type, ["food", "music", "weather"], 1, None, name.startswith("Explain"), headers)


@pytest.mark.parametrize("name, body", REFUSED)
def test_bodies_the_parser_refuses_do_not_fit_the_schema(name, body, validate):
    assert not validate(name, body)
    if name != "MetadataRequest":
        with pytest.raises(RequestError):
            parse_request({"body": body}, "application/json", ["food", "music", "weather"], 1, None, False)


def test_every_answer_fits_the_schema(tiny_ckpt, validate):
    handler, context = start(tiny_ckpt, out_of_scope_threshold=0.6)
    answers = handle(handler, context, [
        ({"body": {"text": "rain"}}, {"body": JSON}), ({"body": {"texts": ["rain", "jazz"]}}, {"body": JSON}),
        ({"body": v2(["rain", "jazz"], id="a", parameters={"top_k": 2})}, {"body": JSON}),
        ({"body": {"text": "rain and snow"}}, {"body": JSON, "explain": "True"}),
        ({"body": {"instances": ["rain", "jazz guitar"]}}, {"body": JSON, "explain": "True"}),
        ({}, {"X-Textclf-Request": "metadata"}), ({"body": b""}, {"body": PLAIN}),
    ])
    kinds = ["Prediction", "Predictions", "V2Answer", "Explanation", "Explanations", "ModelMetadata", "ErrorAnswer"]
    for kind, answer in zip(kinds, answers):
        assert validate(kind, answer), (kind, answer)
    [binary] = send(handler, context, [as_sent(*infer_body(["rain"]))])
    assert validate("V2Answer", json.loads(binary[3][:int(binary[2][HEADER])]))
    assert not validate("Prediction", {"label": "rain", "score": 1.0, "top_k": [], "extra": 1})
