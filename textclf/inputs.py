"""Validate one inference request as TorchServe hands it over -> Request, or raise RequestError naming the problem.

TorchServe delivers a request as a dict: the body under "data" or "body" (bytes; or a str for text/* bodies the
worker could read as UTF-8; or the parsed value for Content-Type exactly application/json), or form fields by
name when the client sent application/x-www-form-urlencoded (curl -d without -H).

The forms, each answered in its own shape by the handler (README "Request and response contract"):
    text/plain body, {"text": "...", "top_k": N}, form field text=...     one text   -> {"label", "score", "top_k"}
    {"texts": ["...", ...], "top_k": N}                                   many       -> {"predictions": [...]}
    {"instances": ["..." | {"text"|"data": "..."}, ...], "top_k": N}      KServe v1  -> {"predictions": [...]}
    {"id", "inputs": [{"name", "shape", "datatype": "BYTES", "data"}], "parameters": {"top_k": N}}
                                                                          Open Inference Protocol v2
Explanations take the one-text forms and v1 instances, plus an optional "label" to explain.

Whatever passes here can be tokenized: text is a str that encodes to UTF-8 (no lone surrogates), holds no
control characters and at least one visible character.
"""
import codecs
import dataclasses
import json
import math
import re

from .errors import InputError
from .explain import words

TEXT_TYPES = ("", "text/plain")
JSON_TYPES = ("application/json",)
FORMS = ("one", "many", "v1", "v2")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Characters that show nothing: whitespace, and Unicode's default-ignorable code points (zero-width spaces and
# joiners, bidi marks, word joiners, soft hyphen, byte-order marks, variation selectors, Hangul fillers, tags).
_INVISIBLE = re.compile(
    "[\\s\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f"
    "\u3164\ufe00-\ufe0f\ufeff\uffa0\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]")
HOW = ("send the text as the body with Content-Type: text/plain, or JSON with Content-Type: application/json: "
       "{\"text\": \"...\"}, {\"texts\": [...]}, {\"instances\": [...]} (KServe v1) or {\"inputs\": [...]} (v2)")


class RequestError(InputError):
    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


class Failure(RequestError):
    """The server's fault, not the request's: answered with 500 and the same JSON shape."""

    def __init__(self, message):
        super().__init__(message, 500)


@dataclasses.dataclass(frozen=True)
class Limits:
    """Per-request bounds, from the handler section of model-config.yaml. Past them: 413."""
    max_chars: int = 20000          # characters in one text
    max_texts: int = 256            # texts in one request
    max_total_chars: int = 200000   # characters over all texts of one request
    explain_max_words: int = 64     # words to explain in one request, over all its texts (a forward pass each)

    @classmethod
    def from_settings(cls, settings):
        return cls(**{f.name: int(settings.get(f.name, f.default)) for f in dataclasses.fields(cls)})


V2_OUTPUTS = ("label", "score", "out_of_scope", "selected")   # selected: multi-label models


@dataclasses.dataclass
class Request:
    texts: list                 # one or more validated texts
    top_k: int                  # how many labels to return for each text
    form: str                   # one of FORMS: the shape the answer takes
    top_k_asked: bool = False   # the client named top_k (v2 returns the top-k outputs only then)
    id: str = None              # v2 request id, echoed
    outputs: tuple = None       # v2 outputs to return (None: label, score, and out_of_scope where the model
                                # has a reject threshold)
    label: str = None           # explanations: the label to explain (default: the predicted one)
    explain: bool = False       # set by the handler: /explanations or :explain


def _shown(value, limit=40):
    """repr() of a client-supplied name, cut to `limit` characters: messages go back to the client and into
    the log at INFO, so they must not carry (much of) the request itself."""
    value = str(value)
    return repr(value) if len(value) <= limit else repr(value[:limit]) + f"... ({len(value)} characters)"


def _json_type(value):
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def check_text(text, max_chars, name="'text'"):
    """The text itself, or RequestError naming `name` (e.g. 'texts'[3]) and what is wrong with it."""
    if not isinstance(text, str):
        raise RequestError(f"{name} must be a string, got {_json_type(text)}")
    if len(text) > max_chars:
        raise RequestError(f"{name} has {len(text)} characters; the limit is {max_chars}", 413)
    if not _INVISIBLE.sub("", text):
        raise RequestError(f"{name} is empty" + (" (it holds only invisible characters)" if text.strip() else ""))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:   # a lone surrogate, e.g. from the JSON escape "\ud800"
        raise RequestError(f"{name} holds an unpaired surrogate (U+{ord(text[e.start]):04X} at position "
                           f"{e.start}), which is not a character") from None
    bad = _CONTROL.search(text)
    if bad:
        raise RequestError(f"{name} holds a control character (U+{ord(bad.group()):04X} at position {bad.start()})")
    return text


def _check_top_k(value, num_labels, name="'top_k'"):
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{name} must be an integer, got {_json_type(value)}")
    if not 1 <= value <= num_labels:
        raise RequestError(f"{name} must be between 1 and {num_labels}, got {value}")
    return value


def _check_fields(obj, allowed, what):
    unknown = sorted(set(obj) - set(allowed), key=str)
    if unknown:
        raise RequestError(f"unknown field {_shown(unknown[0])} in {what}; allowed fields: {', '.join(allowed)}")


def _check_texts(values, limits, name):
    """name: how the client's field is shown, e.g. 'texts'; each text is shown as 'texts'[i]."""
    if not isinstance(values, list):
        raise RequestError(f"{name} must be an array of strings, got {_json_type(values)}")
    if not values:
        raise RequestError(f"{name} is empty")
    if len(values) > limits.max_texts:
        raise RequestError(f"{name} has {len(values)} texts; the limit is {limits.max_texts} per request", 413)
    texts = [check_text(v, limits.max_chars, f"{name}[{i}]") for i, v in enumerate(values)]
    total = sum(len(t) for t in texts)
    if total > limits.max_total_chars:
        raise RequestError(f"{name} has {total} characters in all; the limit is {limits.max_total_chars} "
                           "per request", 413)
    return texts


def _label(obj, labels):
    if "label" not in obj:
        return None
    value = obj["label"]
    if not isinstance(value, str) or value not in labels:
        shown = _shown(value) if isinstance(value, str) else _json_type(value)
        raise RequestError(f"'label' must be one of the model's labels ({', '.join(labels[:10])}"
                           f"{', ...' if len(labels) > 10 else ''}), got {shown}")
    return value


def _v1_instance(value, i):
    if isinstance(value, dict):
        keys = [k for k in ("text", "data") if k in value]
        if len(keys) != 1 or len(value) != 1:
            raise RequestError(f"'instances'[{i}] must be a string or an object with one field, "
                               "\"text\" or \"data\"")
        return value[keys[0]]
    return value


def _v2_strings(data, name):
    """The v2 BYTES tensor's elements, row-major: a flat or nested array of strings, or one string."""
    if isinstance(data, str):
        return [data]
    if not isinstance(data, list):
        raise RequestError(f"{name} must be an array of strings, got {_json_type(data)}")
    flat, stack = [], [iter(data)]
    while stack:   # iterative, so that deep nesting cannot exhaust the stack
        item = next(stack[-1], StopIteration)
        if item is StopIteration:
            stack.pop()
        elif isinstance(item, list):
            if len(stack) > 8:
                raise RequestError(f"{name} is nested too deeply")
            stack.append(iter(item))
        else:
            flat.append(item)
    return flat


def _v2_top_k(params, num_labels, default):
    if params is None:
        return default, False
    if not isinstance(params, dict):
        raise RequestError(f"'parameters' must be an object, got {_json_type(params)}")
    if "top_k" not in params:
        return default, False
    return _check_top_k(params["top_k"], num_labels, "'parameters'.top_k"), True


def _from_v2(obj, labels, top_k, limits):
    _check_fields(obj, ("id", "inputs", "outputs", "parameters"), "the v2 request")
    request_id = obj.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError(f"'id' must be a string, got {_json_type(request_id)}")
    inputs = obj["inputs"]
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise RequestError("'inputs' must be an array of exactly one input tensor object "
                           "({\"name\", \"shape\", \"datatype\": \"BYTES\", \"data\"})")
    tensor = inputs[0]
    _check_fields(tensor, ("name", "shape", "datatype", "data", "parameters"), "'inputs'[0]")
    missing = [k for k in ("name", "shape", "datatype", "data") if k not in tensor]
    if missing:
        raise RequestError(f"'inputs'[0] has no {_shown(missing[0])} field")
    if not isinstance(tensor["name"], str):
        raise RequestError(f"'inputs'[0].name must be a string, got {_json_type(tensor['name'])}")
    if tensor["datatype"] != "BYTES":
        shown = _shown(tensor["datatype"]) if isinstance(tensor["datatype"], str) else _json_type(tensor["datatype"])
        raise RequestError(f"'inputs'[0].datatype must be \"BYTES\" (texts), got {shown}")
    shape = tensor["shape"]
    if not (isinstance(shape, list) and 0 < len(shape) <= 8
            and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= limits.max_texts for d in shape)):
        raise RequestError("'inputs'[0].shape must be an array of 1 to 8 integers from 0 to "
                           f"{limits.max_texts}, e.g. [2] for two texts")
    strings = _v2_strings(tensor["data"], "'inputs'[0].data")
    if math.prod(shape) != len(strings):   # at most max_texts ** 8: a number of 20 digits at most
        raise RequestError(f"'inputs'[0].shape holds {math.prod(shape)} elements, 'inputs'[0].data has "
                           f"{len(strings)}")
    texts = _check_texts(strings, limits, "'inputs'[0].data")
    k, asked = _v2_top_k(obj.get("parameters"), len(labels), top_k)
    if "parameters" in tensor and not asked:
        k, asked = _v2_top_k(tensor["parameters"], len(labels), top_k)
    outputs = None
    if "outputs" in obj:
        wanted = obj["outputs"]
        if not isinstance(wanted, list) or not all(isinstance(o, dict) and o.get("name") in V2_OUTPUTS for o in wanted):
            raise RequestError("'outputs' must be an array of objects whose \"name\" is \"label\", \"score\", "
                               "\"out_of_scope\" or \"selected\"")
        outputs = tuple(dict.fromkeys(o["name"] for o in wanted)) or None
    return Request(texts, k, "v2", asked, request_id, outputs)


def _from_json(obj, labels, top_k, limits, explain):
    if not isinstance(obj, dict):
        raise RequestError("the JSON body must be an object like {\"text\": \"...\"} or {\"texts\": [...]}, "
                           f"got {_json_type(obj)}")
    if "inputs" in obj:
        return _from_v2(obj, labels, top_k, limits)
    num_labels = len(labels)
    k = _check_top_k(obj["top_k"], num_labels) if "top_k" in obj else top_k
    if "instances" in obj:
        _check_fields(obj, ("instances", "label") if explain else ("instances", "top_k"), "the v1 request")
        values = obj["instances"]
        if isinstance(values, list):
            values = [_v1_instance(v, i) for i, v in enumerate(values)]
        texts = _check_texts(values, limits, "'instances'")
        return Request(texts, k, "v1", "top_k" in obj, label=_label(obj, labels))
    if "texts" in obj:
        _check_fields(obj, ("texts", "top_k"), "the JSON body")
        return Request(_check_texts(obj["texts"], limits, "'texts'"), k, "many", "top_k" in obj)
    _check_fields(obj, ("text", "label") if explain else ("text", "top_k"), "the JSON body")
    if "text" not in obj:
        raise RequestError("the JSON body has no 'text' field (or 'texts', 'instances', 'inputs')")
    text = check_text(obj["text"], limits.max_chars)
    return Request([text], k, "one", "top_k" in obj, label=_label(obj, labels))


def _media(content_type):
    """-> (media type, charset or None) of a Content-Type header value."""
    parts = (content_type or "").split(";")
    charset = None
    for param in parts[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').strip() or None
    return parts[0].strip().lower(), charset


# Python text codecs that are no charset a client would declare: escape decoders, and punycode/idna, which
# take seconds on a large body (quadratic) before any limit is checked.
_NOT_CHARSETS = ("unicode-escape", "raw-unicode-escape", "punycode", "idna", "undefined", "utf-7")


def _codec(charset):
    """The Python codec name for a declared charset; 415 for one that is unknown or not a text encoding."""
    if charset is None:
        return "utf-8"
    try:
        info = codecs.lookup(charset)
    except (LookupError, ValueError):
        info = None
    if info is None or not getattr(info, "_is_text_encoding", True) or info.name in _NOT_CHARSETS:
        raise RequestError(f"unsupported charset {_shown(charset)}: send UTF-8 (or another text encoding "
                           "such as ISO-8859-1, UTF-16)", 415)
    return info.name


def _decode(raw, charset):
    """bytes -> str in the declared charset (default UTF-8); a leading byte-order mark is dropped."""
    codec = _codec(charset)
    if codec == "utf-8":
        codec = "utf-8-sig"
    try:
        text = bytes(raw).decode(codec)
    except UnicodeDecodeError as e:
        raise RequestError(f"the body is not valid {_shown(charset) if charset else 'UTF-8'} (byte {e.start})") from None
    except (UnicodeError, ValueError):   # codecs such as punycode and idna raise these (found by tests/test_fuzz.py)
        raise RequestError(f"the body is not valid {_shown(charset)}") from None
    return text[1:] if text.startswith("\ufeff") else text


def _as_text(body, charset):
    if isinstance(body, str):
        # the worker already read a text/* body as UTF-8; another declared charset is applied to the bytes
        if _codec(charset) != "utf-8":
            return _decode(body.encode("utf-8", "surrogatepass"), charset)
        return body[1:] if body.startswith("\ufeff") else body
    return _decode(body, charset)


def _ascii_only(value, depth=0):
    """No non-ASCII character in any string of a parsed JSON value."""
    if depth > 64:
        raise RequestError("the JSON body is nested too deeply")
    if isinstance(value, str):
        return value.isascii()
    if isinstance(value, dict):
        return all(_ascii_only(k, depth + 1) and _ascii_only(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return all(_ascii_only(v, depth + 1) for v in value)
    return True


def _looks_like_json(body):
    """A body sent without Content-Type that is a JSON object in one of our forms."""
    if not isinstance(body, (bytes, bytearray)) or body[:1] != b"{":
        return False
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and bool({"text", "texts", "instances", "inputs"} & set(obj))


def parse_request(row, content_type, labels, top_k=1, limits=None, explain=False):
    """-> Request. content_type: the body's Content-Type as the client sent it; labels: the model's labels;
    explain: the request came to /explanations (or :explain), which takes a "label" and one or a few texts.

    TorchServe has already decoded a text/* body to str and parsed an application/json body
    (leaving bytes where that failed); either may also arrive as raw bytes.
    """
    limits = limits or Limits()
    media, charset = _media(content_type)
    present = [k for k in ("data", "body") if k in row]
    key = next((k for k in present if row[k] is not None), present[0] if present else None)
    if key is None:
        if "text" in row:   # a form field named text (curl --data-urlencode text=...)
            value = row["text"]
            text = _decode(value, None) if isinstance(value, (bytes, bytearray)) else value
            return _checked(Request([check_text(text, limits.max_chars)], top_k, "one"), limits, explain)
        raise RequestError(f"no text found in the request (a form-encoded body without a 'text' field?): {HOW}")
    body = row[key]
    if media == "" and _looks_like_json(body):   # KServe's wrapper sends :explain bodies with no Content-Type
        media = "application/json"
    if media in JSON_TYPES:
        if isinstance(body, (bytes, bytearray)):   # a str is a JSON string the worker already parsed
            text = _as_text(body, charset)
            try:
                body = json.loads(text)
            except RecursionError:
                raise RequestError("the JSON body is nested too deeply") from None
            except ValueError as e:
                raise RequestError(f"the body is not valid JSON: {e}") from None
        elif _codec(charset) != "utf-8" and not _ascii_only(body):
            # TorchServe read this body as UTF-8 (it drops the charset); bytes valid in both cannot be told apart
            raise RequestError(f"a JSON body with charset {_shown(charset)} and non-ASCII text that is also valid "
                               "UTF-8 cannot be read here: send it as UTF-8 (or escape non-ASCII as \\uXXXX)", 415)
        request = _from_json(body, labels, top_k, limits, explain)
    elif media in TEXT_TYPES:
        if not isinstance(body, (str, bytes, bytearray)):
            raise RequestError(f"the body could not be read as text: {HOW}")
        request = Request([check_text(_as_text(body, charset), limits.max_chars)], top_k, "one")
    else:
        raise RequestError(f"unsupported Content-Type {_shown(media)}: {HOW}", 415)
    return _checked(request, limits, explain)


def _checked(request, limits, explain):
    """What only explanations need: a form they take, and texts short enough to occlude word by word."""
    request.explain = explain
    if explain:
        if request.form not in ("one", "v1"):
            raise RequestError("explanations take one text (text/plain, or {\"text\": \"...\", \"label\": \"...\"} "
                               "as JSON) or KServe v1 {\"instances\": [...]}")
        count = sum(len(words(text)) for text in request.texts)
        if count > limits.explain_max_words:
            raise RequestError(f"the request has {count} words to explain; the limit is {limits.explain_max_words} "
                               "per request (one forward pass per word)", 413)
    return request
