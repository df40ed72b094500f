"""textclf.inputs.parse_request: one request as TorchServe hands it over -> (text, top_k) or RequestError."""
import pytest

from textclf.errors import InputError
from textclf.inputs import RequestError, parse_request

NUM_LABELS = 3
JSON, TEXT, FORM = "application/json", "text/plain", "application/x-www-form-urlencoded"


def parse(row, content_type, top_k=1, max_chars=100):
    return parse_request(row, content_type, NUM_LABELS, top_k, max_chars)


def refused(row, content_type, status=400, **kw):
    with pytest.raises(RequestError) as err:
        parse(row, content_type, **kw)
    assert err.value.status == status
    assert isinstance(err.value, InputError)
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
    assert "no 'text' field" in refused({"body": body}, JSON)


@pytest.mark.parametrize("value, kind", [(5, "number"), (None, "null"), (["play"], "array"), ({"t": 1}, "object"),
                                         (True, "boolean"), (1.5, "number")])
def test_text_not_a_string(value, kind):
    assert f"'text' must be a string, got {kind}" in refused({"body": {"text": value}}, JSON)


@pytest.mark.parametrize("body, field", [({"text": "a", "label": "x"}, "'label'"), ({"txt": "a"}, "'txt'"),
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
    message = refused(row, content_type, status=413, max_chars=100)
    assert "the limit is 100" in message


def test_client_supplied_names_are_cut_in_messages():
    # Messages go back to the client and into the worker log at INFO: a 60,000-character field name or
    # content type must not travel with them.
    message = refused({"body": {"k" * 60000: 1}}, JSON)
    assert "unknown field 'kkkk" in message and "(60000 characters)" in message and len(message) < 200
    message = refused({"body": b"play jazz"}, "application/" + "x" * 5000, status=415)
    assert "unsupported Content-Type 'application/xxx" in message and "(5012 characters)" in message
    assert len(message) < 250
