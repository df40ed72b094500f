"""protocol.parse_request: one request as TorchServe hands it over -> Request or RequestError."""
import json

import pytest

from protocol import Limits, RequestError, parse_request

LABELS = ["food", "music", "weather"]
JSON, TEXT, FORM = "application/json", "text/plain", "application/x-www-form-urlencoded"


def request(row, content_type, top_k=1, explain=False, **limits):
    return parse_request(row, content_type, LABELS, top_k, Limits(**{"max_chars": 100, **limits}), explain)


def parse(row, content_type, top_k=1, max_chars=100):
    """-> (text, top_k) of a one-text request."""
    r = request(row, content_type, top_k, max_chars=max_chars)
    assert r.form == "one" and len(r.texts) == 1
    return r.texts[0], r.top_k


def refused(row, content_type, status=400, **kw):
    with pytest.raises(RequestError) as err:
        request(row, content_type, **kw)
    assert err.value.status == status
    assert isinstance(err.value, ValueError)
    return str(err.value)


# ---- accepted

@pytest.mark.parametrize("row", [{"body": "play jazz"}, {"body": b"play jazz"}, {"data": bytearray(b"play jazz")},
                                 {"data": "play jazz"}, {"data": None, "body": b"play jazz"}])
@pytest.mark.parametrize("content_type", [TEXT, "text/plain; charset=utf-8", "Text/Plain", ""])
def test_plain_text(row, content_type):
    assert parse(row, content_type, top_k=2) == ("play jazz", 2)


def test_plain_text_keeps_unicode_tabs_and_newlines():
    text = "añade clásicos\tà ma playlist\r\nplease 🎵"
    assert parse({"body": text.encode("utf-8")}, TEXT) == (text, 1)


@pytest.mark.parametrize("body", [{"text": "play jazz"}, b'{"text": "play jazz"}', bytearray(b'{"text":"play jazz"}'),
                                  '{"text": "play jazz"}'.encode("utf-8")])
def test_json_parsed_or_bytes(body):
    assert parse({"body": body}, JSON, top_k=3) == ("play jazz", 3)


def test_json_with_charset_parameter_arrives_as_bytes():
    assert parse({"body": b'{"text": "caf\\u00e9", "top_k": 2}'}, "application/json; charset=utf-8") == ("café", 2)


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_json_top_k(top_k):
    assert parse({"body": {"text": "play jazz", "top_k": top_k}}, JSON) == ("play jazz", top_k)
    assert parse({"body": f'{{"text": "play jazz", "top_k": {top_k}}}'.encode()}, JSON) == ("play jazz", top_k)


@pytest.mark.parametrize("field", ["play jazz", b"play jazz"])
def test_form_field_named_text(field):
    assert parse({"text": field}, FORM) == ("play jazz", 1)


def test_text_of_exactly_max_chars_is_accepted():
    assert parse({"body": "x" * 100}, TEXT, max_chars=100)[0] == "x" * 100


# ---- refused, each with a status and a message that names the problem

@pytest.mark.parametrize("row, content_type", [
    ({"body": ""}, TEXT), ({"body": b""}, TEXT), ({"body": b"   \n\t  "}, TEXT), ({"body": "\r\n"}, TEXT),
    ({"body": {"text": ""}}, JSON), ({"body": {"text": "  \t "}}, JSON), ({"body": b'{"text": " "}'}, JSON),
    ({"text": ""}, FORM),
])
def test_empty_text(row, content_type):
    assert "'text' is empty" in refused(row, content_type)


@pytest.mark.parametrize("content_type", [TEXT, JSON, ""])
def test_invalid_utf8(content_type):
    message = refused({"body": b"play \xff\xfe jazz"}, content_type)
    assert "not valid UTF-8" in message and "byte 5" in message


def test_invalid_utf8_form_field():
    assert "not valid UTF-8" in refused({"text": b"\xc3\x28"}, FORM)


@pytest.mark.parametrize("body", [b'{"text": "play jazz"', b"{'text': 'play jazz'}", b"play jazz", b"{}}", b"\x00"])
def test_malformed_json_bytes(body):
    assert "not valid JSON" in refused({"body": body}, JSON)


def test_deeply_nested_json():
    message = refused({"body": b"[" * 100000 + b"]" * 100000}, JSON)
    assert "JSON" in message


@pytest.mark.parametrize("body, kind", [
    (["play jazz"], "array"), ("play jazz", "string"), (7, "number"), (2.5, "number"), (True, "boolean"),
    (b'["play jazz"]', "array"), (b'"play jazz"', "string"), (b"42", "number"), (b"null", "null"), (None, "null"),
])
def test_json_that_is_not_an_object(body, kind):
    message = refused({"body": body}, JSON)
    assert "must be an object" in message and message.endswith(f"got {kind}")


@pytest.mark.parametrize("body", [{}, {"top_k": 2}, b"{}", b'{"top_k": 1}'])
def test_json_without_text(body):
    message = refused({"body": body}, JSON)
    assert "no 'text' field" in message and "'texts'" in message


@pytest.mark.parametrize("value, kind", [(5, "number"), (None, "null"), (["play"], "array"), ({"t": 1}, "object"),
                                         (True, "boolean"), (1.5, "number")])
def test_text_not_a_string(value, kind):
    assert f"'text' must be a string, got {kind}" in refused({"body": {"text": value}}, JSON)


@pytest.mark.parametrize("body, field", [({"text": "a", "label": "music"}, "'label'"), ({"txt": "a"}, "'txt'"),
                                         ({"text": "a", "top_k": 1, "k": 2}, "'k'")])
def test_unknown_field(body, field):
    message = refused({"body": body}, JSON)
    assert f"unknown field {field}" in message and "allowed fields: text, top_k" in message


@pytest.mark.parametrize("top_k, problem", [
    (0, "between 1 and 3, got 0"), (4, "between 1 and 3, got 4"), (-1, "between 1 and 3, got -1"),
    (True, "must be an integer, got boolean"), (False, "must be an integer, got bool"),
    ("2", "must be an integer, got string"), (2.0, "must be an integer, got number"), (None, "must be an integer"),
])
def test_bad_top_k(top_k, problem):
    message = refused({"body": {"text": "play jazz", "top_k": top_k}}, JSON)
    assert "'top_k'" in message and problem in message


@pytest.mark.parametrize("text, code, position", [("play\x00jazz", "0000", 4), ("\x1b[31mred", "001B", 0),
                                                  ("bell\x07", "0007", 4), ("del\x7f", "007F", 3),
                                                  ("a\x0bb", "000B", 1), ("a\x0cb", "000C", 1)])
@pytest.mark.parametrize("how", ["plain", "json"])
def test_control_characters(text, code, position, how):
    row = {"body": text.encode("utf-8")} if how == "plain" else {"body": {"text": text}}
    message = refused(row, TEXT if how == "plain" else JSON)
    assert f"control character (U+{code} at position {position})" in message


@pytest.mark.parametrize("content_type", ["image/png", "application/octet-stream", "multipart/form-data",
                                          "text/html", "application/xml"])
def test_unsupported_content_type(content_type):
    message = refused({"body": b"play jazz"}, content_type, status=415)
    assert f"unsupported Content-Type '{content_type}'" in message
    assert "text/plain" in message and "application/json" in message


def test_form_without_text_field():
    # curl -d 'play jazz' without -H: the frontend parses a form and the text is gone.
    message = refused({}, FORM)
    assert "no text found" in message and "Content-Type: text/plain" in message


def test_form_with_other_fields_only():
    assert "no text found" in refused({"play jazz": ""}, FORM)


@pytest.mark.parametrize("row, content_type", [({"body": "x" * 101}, TEXT), ({"body": {"text": "y" * 500}}, JSON),
                                               ({"text": "z" * 101}, FORM)])
def test_text_over_max_chars(row, content_type):
    message = refused(row, content_type, status=413)
    assert "the limit is 100" in message


def test_client_supplied_names_are_cut_in_messages():
    # Messages go back to the client and into the worker log at INFO: a 60,000-character field name or
    # content type must not travel with them.
    message = refused({"body": {"k" * 60000: 1}}, JSON)
    assert "unknown field 'kkkk" in message and "(60000 characters)" in message and len(message) < 200
    message = refused({"body": b"play jazz"}, "application/" + "x" * 5000, status=415)
    assert "unsupported Content-Type 'application/xxx" in message and "(5012 characters)" in message
    assert len(message) < 350


# ---- what the tokenizers cannot take, refused here

@pytest.mark.parametrize("text, position", [("hello \ud800 world", 6), ("\udfff", 0), ("ok \ud83d", 3)])
@pytest.mark.parametrize("how", ["parsed", "bytes"])
def test_lone_surrogates(text, position, how):
    # valid JSON: the escape "\ud800" parses to a str the tokenizers cannot encode
    body = {"text": text} if how == "parsed" else json.dumps({"text": text}).encode("ascii")
    message = refused({"body": body}, JSON)
    assert f"unpaired surrogate (U+{ord(text[position]):04X} at position {position})" in message


def test_a_surrogate_pair_escape_is_one_character():
    assert parse({"body": b'{"text": "jazz \\ud83c\\udfb5"}'}, JSON) == ("jazz \U0001f3b5", 1)


@pytest.mark.parametrize("text", ["\u200b", "\u200b\u200c\u200d", " \ufeff\u2060 ", "\u00ad", "\u3164\ufe0f",
                                  "\u202e\u200e\t"])
def test_only_invisible_characters_count_as_empty(text):
    message = refused({"body": {"text": text}}, JSON)
    assert "'text' is empty" in message and "invisible" in message


def test_visible_text_with_zero_width_characters_is_kept():
    assert parse({"body": {"text": "play\u200b jazz"}}, JSON) == ("play\u200b jazz", 1)


# ---- charsets and byte-order marks

@pytest.mark.parametrize("charset, text", [("iso-8859-1", "café crème"), ("latin-1", "añade"),
                                           ("utf-16", "play jazz ♪"), ("UTF-8", "naïve"), ("cp1252", "“quoted”")])
def test_declared_charset_is_honoured(charset, text):
    raw = text.encode(charset)
    assert parse({"body": raw}, f"text/plain; charset={charset}") == (text, 1)
    body = json.dumps({"text": text}, ensure_ascii=False).encode(charset)
    assert parse({"body": body}, f"application/json; charset=\"{charset}\"") == (text, 1)


def test_charset_applies_to_a_body_the_worker_already_read_as_utf8():
    # TorchServe decodes every text/* body as UTF-8 when it can; the declared charset still rules
    assert parse({"body": "caf\u00c3\u00a9"}, "text/plain; charset=iso-8859-1") == ("caf\u00c3\u0083\u00c2\u00a9", 1)
    assert parse({"body": "café"}, "text/plain; charset=utf-8") == ("café", 1)


@pytest.mark.parametrize("charset", ["klingon", "base64", "rot13", "zlib", "unicode-escape", "punycode", "idna",
                                     "x" * 80])
def test_unknown_or_non_text_charset_is_415(charset):
    message = refused({"body": b"play jazz"}, f"text/plain; charset={charset}", status=415)
    assert "unsupported charset" in message and charset[:30] in message and len(message) < 250


def test_bytes_invalid_in_the_declared_charset():
    message = refused({"body": b"\xff\xfe\xfd"}, "text/plain; charset=ascii")
    assert "not valid 'ascii' (byte 0)" in message


@pytest.mark.parametrize("content_type", [TEXT, JSON, ""])
def test_utf8_byte_order_mark_is_accepted(content_type):
    body = b"\xef\xbb\xbf" + (b'{"text": "play jazz"}' if content_type == JSON else b"play jazz")
    assert parse({"body": body}, content_type) == ("play jazz", 1)
    assert parse({"body": "\ufeffplay jazz"}, TEXT) == ("play jazz", 1)


def test_json_without_content_type_in_one_of_our_forms():
    # KServe's wrapper posts :explain bodies with no Content-Type
    assert request({"body": b'{"instances": ["play jazz"]}'}, "").texts == ["play jazz"]
    assert parse({"body": b"{not json} just text"}, "") == ("{not json} just text", 1)
    assert parse({"body": b'{"other": 1}'}, "") == ('{"other": 1}', 1)


# ---- many texts per request

def test_many_texts():
    r = request({"body": {"texts": ["play jazz", "rain?"], "top_k": 2}}, JSON)
    assert (r.form, r.texts, r.top_k, r.top_k_asked) == ("many", ["play jazz", "rain?"], 2, True)


@pytest.mark.parametrize("texts, index, problem", [
    (["ok", ""], 1, "is empty"), (["ok", "fine", 3], 2, "must be a string, got number"),
    (["\ud800"], 0, "holds an unpaired surrogate"), (["a", "b", "c\x00"], 2, "holds a control character"),
    (["a", "\u200b"], 1, "is empty"),
])
def test_a_bad_text_in_a_list_is_named_by_its_index(texts, index, problem):
    message = refused({"body": {"texts": texts}}, JSON)
    assert f"'texts'[{index}] {problem}" in message


@pytest.mark.parametrize("body, problem", [({"texts": []}, "'texts' is empty"),
                                           ({"texts": "play jazz"}, "must be an array of strings, got string"),
                                           ({"texts": ["a"], "text": "b"}, "unknown field 'text'"),
                                           ({"texts": ["a"], "top_k": 9}, "between 1 and 3")])
def test_bad_texts_field(body, problem):
    assert problem in refused({"body": body}, JSON)


def test_limits_on_texts_and_characters_are_413():
    assert "'texts' has 5 texts; the limit is 4" in refused({"body": {"texts": ["a"] * 5}}, JSON, status=413,
                                                            max_texts=4)
    assert request({"body": {"texts": ["a"] * 4}}, JSON, max_texts=4).texts == ["a"] * 4
    message = refused({"body": {"texts": ["x" * 60, "y" * 60]}}, JSON, status=413, max_total_chars=100)
    assert "120 characters in all; the limit is 100" in message
    assert "'texts'[1] has 101 characters" in refused({"body": {"texts": ["a", "b" * 101]}}, JSON, status=413)


# ---- KServe v1 and Open Inference Protocol v2

def test_v1_instances():
    r = request({"body": {"instances": ["play jazz", {"data": "rain?"}, {"text": "soup"}], "top_k": 3}}, JSON)
    assert (r.form, r.texts, r.top_k) == ("v1", ["play jazz", "rain?", "soup"], 3)


@pytest.mark.parametrize("body, problem", [
    ({"instances": []}, "'instances' is empty"), ({"instances": {"text": "a"}}, "must be an array"),
    ({"instances": ["a", {"data": "b", "x": 1}]}, "'instances'[1] must be a string or an object"),
    ({"instances": ["a", {"data": 5}]}, "'instances'[1] must be a string, got number"),
    ({"instances": ["a"], "signature_name": "x"}, "unknown field 'signature_name'"),
])
def test_bad_v1(body, problem):
    assert problem in refused({"body": body}, JSON)


def v2(data, shape=None, **extra):
    tensor = {"name": "text", "shape": shape if shape is not None else [len(data)], "datatype": "BYTES",
              "data": data}
    return {"inputs": [tensor], **extra}


def test_v2_inputs():
    r = request({"body": v2(["play jazz", "rain?"], id="req-7", parameters={"top_k": 2})}, JSON)
    assert (r.form, r.texts, r.id, r.top_k, r.top_k_asked) == ("v2", ["play jazz", "rain?"], "req-7", 2, True)
    r = request({"body": v2([["a"], ["b"]], shape=[2, 1])}, JSON, top_k=3)
    assert (r.texts, r.id, r.top_k, r.top_k_asked, r.outputs) == (["a", "b"], None, 3, False, None)   # None: the default outputs
    r = request({"body": v2("one text", shape=[1], outputs=[{"name": "score"}])}, JSON)
    assert (r.texts, r.outputs) == (["one text"], ("score",))


@pytest.mark.parametrize("body, problem", [
    ({"inputs": []}, "exactly one input"),
    ({"inputs": [v2(["a"])["inputs"][0]] * 2}, "exactly one input"),
    (v2(["a", "b"], shape=[3]), "'inputs'[0].shape holds 3 elements, 'inputs'[0].data has 2"),
    (v2(["a"], shape=[-1]), "1 to 8 integers from 0 to 256"),
    (v2(["a"], shape=[1] * 9), "1 to 8 integers"),
    (v2(["a"], shape=[10 ** 240, 0]), "1 to 8 integers from 0 to 256"),
    ({"inputs": [{"name": "t", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, 'must be "BYTES"'),
    ({"inputs": [{"name": "t", "shape": [1], "datatype": "BYTES"}]}, "has no 'data' field"),
    (v2(["a", 7]), "'inputs'[0].data[1] must be a string, got number"),
    (v2(["a", ""]), "'inputs'[0].data[1] is empty"),
    (v2(["a"], id=5), "'id' must be a string"),
    (v2(["a"], parameters={"top_k": 0}), "'parameters'.top_k must be between 1 and 3"),
    (v2(["a"], outputs=[{"name": "logits"}]), "'outputs' must be an array"),
    (v2(["a"], model_name="x"), "unknown field 'model_name'"),
    (v2([[[[[[[[[[["a"]]]]]]]]]]], shape=[1]), "nested too deeply"),
])
def test_bad_v2(body, problem):
    assert problem in refused({"body": body}, JSON)


# ---- explanations

def test_explanations_take_a_label_and_one_text_or_v1():
    r = request({"body": {"text": "play jazz", "label": "music"}}, JSON, explain=True)
    assert (r.texts, r.label, r.explain) == (["play jazz"], "music", True)
    assert request({"body": b"play jazz"}, TEXT, explain=True).label is None
    assert request({"body": {"instances": ["a", "b"]}}, JSON, explain=True).texts == ["a", "b"]


@pytest.mark.parametrize("body, status, problem", [
    ({"text": "play jazz", "label": "rock"}, 400, "'label' must be one of the model's labels (food, music, weather)"),
    ({"text": "play jazz", "label": 1}, 400, "got number"),
    ({"texts": ["a", "b"]}, 400, "explanations take one text"),
    (v2(["a"]), 400, "explanations take one text"),
    ({"text": "play jazz", "top_k": 2}, 400, "unknown field 'top_k'"),
    ({"text": " ".join(["word"] * 9)}, 413, "the request has 9 words to explain; the limit is 8 per request"),
    ({"instances": ["a b c d", "e f g h", "i"]}, 413, "the request has 9 words to explain; the limit is 8"),
])
def test_bad_explanation_requests(body, status, problem):
    assert problem in refused({"body": body}, JSON, status=status, explain=True, explain_max_words=8)


def test_codecs_that_raise_their_own_errors():
    # found by tests/test_fuzz.py: the CJK decoders raise UnicodeDecodeError, but some codecs raise other errors
    assert "not valid 'shift_jis'" in refused({"body": b"\x81"}, "text/plain; charset=shift_jis")


def test_json_the_worker_read_as_utf8_with_another_charset():
    # TorchServe drops the charset and parses application/json as UTF-8: ASCII reads the same in any
    # ASCII-based charset; anything else cannot be told apart and is refused
    assert parse({"body": {"text": "play jazz"}}, "application/json; charset=iso-8859-1") == ("play jazz", 1)
    assert parse({"body": {"text": "café"}}, "application/json; charset=utf-8") == ("café", 1)
    message = refused({"body": {"text": "caf\u00e9"}}, "application/json; charset=iso-8859-1", status=415)
    assert "send it as UTF-8" in message
