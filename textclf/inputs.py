"""Validate one inference request as TorchServe hands it over; raise InputError naming the problem.

TorchServe delivers a request as a dict: the body under "data" or "body" (bytes; or, for
Content-Type application/json that parsed, the parsed value), or form fields by name when the
client sent application/x-www-form-urlencoded (curl -d without -H).
"""
import json
import re

from .errors import InputError

TEXT_TYPES = ("", "text/plain")
JSON_TYPES = ("application/json",)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
HOW = "send the text as the body with Content-Type: text/plain, or {\"text\": \"...\"} with Content-Type: application/json"


class RequestError(InputError):
    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


def _shown(value, limit=40):
    """repr() of a client-supplied name, cut to `limit` characters: messages go back to the client and into
    the log at INFO, so they must not carry (much of) the request itself."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + f"... ({len(value)} characters)"


def _json_type(value):
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _check_text(text, max_chars):
    if not isinstance(text, str):
        raise RequestError(f"'text' must be a string, got {_json_type(text)}")
    if not text.strip():
        raise RequestError("'text' is empty")
    if len(text) > max_chars:
        raise RequestError(f"'text' has {len(text)} characters; the limit is {max_chars}", 413)
    bad = _CONTROL.search(text)
    if bad:
        raise RequestError(f"'text' holds a control character (U+{ord(bad.group()):04X} at position {bad.start()})")
    return text


def _check_top_k(value, num_labels):
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"'top_k' must be an integer, got {_json_type(value)}")
    if not 1 <= value <= num_labels:
        raise RequestError(f"'top_k' must be between 1 and {num_labels}, got {value}")
    return value


def _from_json(obj, num_labels, top_k, max_chars):
    if not isinstance(obj, dict):
        raise RequestError(f"the JSON body must be an object like {{\"text\": \"...\"}}, got {_json_type(obj)}")
    unknown = sorted(set(obj) - {"text", "top_k"})
    if unknown:
        raise RequestError(f"unknown field {_shown(unknown[0])}; allowed fields: text, top_k")
    if "text" not in obj:
        raise RequestError("the JSON body has no 'text' field")
    text = _check_text(obj["text"], max_chars)
    return text, _check_top_k(obj["top_k"], num_labels) if "top_k" in obj else top_k


def _decode(raw):
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(f"the body is not valid UTF-8 (byte {e.start})") from None


def parse_request(row, content_type, num_labels, top_k=1, max_chars=20000):
    """-> (text, top_k). content_type: the body's media type as the client sent it.

    TorchServe has already decoded a text/* body to str and parsed an application/json body
    (leaving bytes where that failed); either may also arrive as raw bytes.
    """
    media = (content_type or "").split(";")[0].strip().lower()
    present = [k for k in ("data", "body") if k in row]
    key = next((k for k in present if row[k] is not None), present[0] if present else None)
    if key is None:
        if "text" in row:   # a form field named text (curl --data-urlencode text=...)
            value = row["text"]
            return _check_text(_decode(value) if isinstance(value, (bytes, bytearray)) else value, max_chars), top_k
        raise RequestError(f"no text found in the request (a form-encoded body without a 'text' field?): {HOW}")
    body = row[key]
    if media in JSON_TYPES:
        if isinstance(body, (bytes, bytearray)):
            try:
                body = json.loads(_decode(body))
            except RecursionError:
                raise RequestError("the JSON body is nested too deeply") from None
            except ValueError as e:
                raise RequestError(f"the body is not valid JSON: {e}") from None
        return _from_json(body, num_labels, top_k, max_chars)
    if media in TEXT_TYPES:
        if not isinstance(body, (str, bytes, bytearray)):
            raise RequestError(f"the body could not be read as text: {HOW}")
        return _check_text(body if isinstance(body, str) else _decode(body), max_chars), top_k
    raise RequestError(f"unsupported Content-Type {_shown(media)}: {HOW}", 415)
