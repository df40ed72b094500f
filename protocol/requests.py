"""Validate one inference request as TorchServe hands it over -> Request, or raise RequestError naming the problem.

TorchServe delivers a request as a dict: the body under "data" or "body" (bytes; or a str for text/* bodies the
worker could read as UTF-8; or the parsed value for Content-Type exactly application/json), or form fields by
name when the client sent application/x-www-form-urlencoded (curl -d without -H). Its headers come separately.

The forms are the pydantic models of forms.py (their JSON Schema: python -m protocol.schema); the checks here are
written out by hand so that every refusal names the field as the client wrote it ('inputs'[0].data[3] is empty)
and carries its status (400, 413 or 415).
"""
import dataclasses
import json
import math
from typing import Literal

from pydantic import BaseModel

from textclf.explain import words

from . import binary
from .errors import RequestError
from .forms import V2_OUTPUTS
from .text import as_text, ascii_only, check_text, codec, decode, json_type, media_type, shown

TEXT_TYPES = ("", "text/plain")
JSON_TYPES = ("application/json",)
BINARY_TYPES = ("application/octet-stream", "application/json", "")
FORMS = ("one", "many", "v1", "v2", "metadata")
REQUEST_KIND_HEADER = "X-Textclf-Request"   # "metadata": the proxy's rewrite of GET /v2/models/NAME[/ready]
HOW = ("send the text as the body with Content-Type: text/plain, or JSON with Content-Type: application/json: "
       "{\"text\": \"...\"}, {\"texts\": [...]}, {\"instances\": [...]} (KServe v1) or {\"inputs\": [...]} (v2)")


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


class Request(BaseModel):
    """One validated request: its texts, and how its answer is shaped."""
    texts: list[str]                              # validated texts (none for a metadata request)
    top_k: int                                    # how many labels to return for each text
    form: Literal[FORMS]                          # the shape the answer takes
    top_k_asked: bool = False                     # the client named top_k (v2 returns the top-k outputs only then)
    id: str | None = None                         # v2 request id, echoed
    outputs: tuple[str, ...] | None = None        # v2 outputs to return (None: the model's default outputs)
    binary_outputs: frozenset[str] = frozenset()  # v2 outputs to send as raw data after the JSON header
    label: str | None = None                      # explanations: the label to explain (default: the predicted one)
    explain: bool = False                         # /explanations or :explain


# ---- the checks

def _check_top_k(value, num_labels, name="'top_k'"):
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{name} must be an integer, got {json_type(value)}")
    if not 1 <= value <= num_labels:
        raise RequestError(f"{name} must be between 1 and {num_labels}, got {value}")
    return value


def _check_fields(obj, allowed, what):
    unknown = sorted(set(obj) - set(allowed), key=str)
    if unknown:
        raise RequestError(f"unknown field {shown(unknown[0])} in {what}; allowed fields: {', '.join(allowed)}")


def _check_count(count, limits, name):
    if count > limits.max_texts:
        raise RequestError(f"{name} has {count} texts; the limit is {limits.max_texts} per request", 413)


def _check_texts(values, limits, name):
    """name: how the client's field is shown, e.g. 'texts'; each text is shown as 'texts'[i]."""
    if not isinstance(values, list):
        raise RequestError(f"{name} must be an array of strings, got {json_type(values)}")
    if not values:
        raise RequestError(f"{name} is empty")
    _check_count(len(values), limits, name)
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
        named = shown(value) if isinstance(value, str) else json_type(value)
        raise RequestError(f"'label' must be one of the model's labels ({', '.join(labels[:10])}"
                           f"{', ...' if len(labels) > 10 else ''}), got {named}")
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
        raise RequestError(f"{name} must be an array of strings, got {json_type(data)}")
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
        raise RequestError(f"'parameters' must be an object, got {json_type(params)}")
    if "top_k" not in params:
        return default, False
    return _check_top_k(params["top_k"], num_labels, "'parameters'.top_k"), True


def _v2_binary_texts(tensor, raw, limits):
    """The texts of an input sent as raw data after the JSON header (binary tensor data extension)."""
    if "data" in tensor:
        raise RequestError("'inputs'[0] has both \"data\" and parameters.binary_data_size: send its texts one way")
    size = tensor["parameters"]["binary_data_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        got = size if isinstance(size, int) and not isinstance(size, bool) else json_type(size)
        raise RequestError(f"'inputs'[0].parameters.binary_data_size must be a number of bytes, got {got}")
    if raw is None:
        raise RequestError(f"'inputs'[0].parameters.binary_data_size needs the binary form: the JSON header, then the "
                           f"tensor's bytes, with an {binary.HEADER} request header")
    if size != len(raw):
        raise RequestError(f"'inputs'[0].parameters.binary_data_size is {size}, but {len(raw)} bytes follow the "
                           "JSON header")
    count = math.prod(tensor["shape"])
    _check_count(count, limits, "'inputs'[0]")
    strings = []
    for i, element in enumerate(binary.read_bytes(raw, count, "the binary data of 'inputs'[0]")):
        try:
            strings.append(element.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise RequestError(f"'inputs'[0].data[{i}] is not valid UTF-8 (byte {e.start})") from None
    return strings


def _v2_outputs(obj, binary_output):
    """-> (the outputs asked for or None, those to send as raw data)."""
    if "outputs" not in obj:
        return None, frozenset(V2_OUTPUTS if binary_output else ())
    wanted = obj["outputs"]
    if not isinstance(wanted, list) or not all(isinstance(o, dict) and o.get("name") in V2_OUTPUTS for o in wanted):
        raise RequestError("'outputs' must be an array of objects whose \"name\" is \"label\", \"score\", "
                           "\"out_of_scope\" or \"selected\"")
    as_raw = set()
    for i, output in enumerate(wanted):
        params = output.get("parameters", {})
        if not isinstance(params, dict):
            raise RequestError(f"'outputs'[{i}].parameters must be an object, got {json_type(params)}")
        unsupported = [k for k in ("classification", "shared_memory_region") if k in params]
        if unsupported:
            raise RequestError(f"'outputs'[{i}].parameters.{unsupported[0]} is not supported here"
                               + (": ask for labels with 'parameters'.top_k" if unsupported[0] == "classification"
                                  else ""))
        raw = params.get("binary_data", binary_output)
        if not isinstance(raw, bool):
            raise RequestError(f"'outputs'[{i}].parameters.binary_data must be true or false, got {json_type(raw)}")
        if raw:
            as_raw.add(output["name"])
    return tuple(dict.fromkeys(o["name"] for o in wanted)) or None, frozenset(as_raw)


def _from_v2(obj, labels, top_k, limits, raw=None):
    """raw: the bytes after the JSON header of a binary request (None: a JSON request)."""
    _check_fields(obj, ("id", "inputs", "outputs", "parameters"), "the v2 request")
    request_id = obj.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError(f"'id' must be a string, got {json_type(request_id)}")
    inputs = obj["inputs"]
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise RequestError("'inputs' must be an array of exactly one input tensor object "
                           "({\"name\", \"shape\", \"datatype\": \"BYTES\", \"data\"})")
    tensor = inputs[0]
    _check_fields(tensor, ("name", "shape", "datatype", "data", "parameters"), "'inputs'[0]")
    in_binary = isinstance(tensor.get("parameters"), dict) and "binary_data_size" in tensor["parameters"]
    missing = [k for k in ("name", "shape", "datatype") + (() if in_binary else ("data",)) if k not in tensor]
    if missing:
        raise RequestError(f"'inputs'[0] has no {shown(missing[0])} field")
    if not isinstance(tensor["name"], str):
        raise RequestError(f"'inputs'[0].name must be a string, got {json_type(tensor['name'])}")
    if tensor["datatype"] != "BYTES":
        named = shown(tensor["datatype"]) if isinstance(tensor["datatype"], str) else json_type(tensor["datatype"])
        raise RequestError(f"'inputs'[0].datatype must be \"BYTES\" (texts), got {named}")
    shape = tensor["shape"]
    if not (isinstance(shape, list) and 0 < len(shape) <= 8
            and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= limits.max_texts for d in shape)):
        raise RequestError("'inputs'[0].shape must be an array of 1 to 8 integers from 0 to "
                           f"{limits.max_texts}, e.g. [2] for two texts")
    if in_binary:
        strings = _v2_binary_texts(tensor, raw, limits)
    else:
        if raw:
            raise RequestError(f"{len(raw)} bytes follow the JSON header, but 'inputs'[0] has no "
                               "parameters.binary_data_size")
        strings = _v2_strings(tensor["data"], "'inputs'[0].data")
        if math.prod(shape) != len(strings):   # at most max_texts ** 8: a number of 20 digits at most
            raise RequestError(f"'inputs'[0].shape holds {math.prod(shape)} elements, 'inputs'[0].data has "
                               f"{len(strings)}")
    texts = _check_texts(strings, limits, "'inputs'[0].data")
    params = obj.get("parameters")
    k, asked = _v2_top_k(params, len(labels), top_k)
    if "parameters" in tensor and not asked:
        k, asked = _v2_top_k(tensor["parameters"], len(labels), top_k)
    binary_output = params.get("binary_data_output", False) if params is not None else False
    if not isinstance(binary_output, bool):
        raise RequestError(f"'parameters'.binary_data_output must be true or false, got {json_type(binary_output)}")
    outputs, as_raw = _v2_outputs(obj, binary_output)
    return Request(texts=texts, top_k=k, form="v2", top_k_asked=asked, id=request_id, outputs=outputs,
                   binary_outputs=as_raw)


def _from_json(obj, labels, top_k, limits, explain):
    if not isinstance(obj, dict):
        raise RequestError("the JSON body must be an object like {\"text\": \"...\"} or {\"texts\": [...]}, "
                           f"got {json_type(obj)}")
    if "inputs" in obj:
        return _from_v2(obj, labels, top_k, limits)
    num_labels = len(labels)
    k = _check_top_k(obj["top_k"], num_labels) if "top_k" in obj else top_k
    asked = "top_k" in obj
    if "instances" in obj:
        _check_fields(obj, ("instances", "label") if explain else ("instances", "top_k"), "the v1 request")
        values = obj["instances"]
        if isinstance(values, list):
            values = [_v1_instance(v, i) for i, v in enumerate(values)]
        texts = _check_texts(values, limits, "'instances'")
        return Request(texts=texts, top_k=k, form="v1", top_k_asked=asked, label=_label(obj, labels))
    if "texts" in obj:
        _check_fields(obj, ("texts", "top_k"), "the JSON body")
        return Request(texts=_check_texts(obj["texts"], limits, "'texts'"), top_k=k, form="many", top_k_asked=asked)
    _check_fields(obj, ("text", "label") if explain else ("text", "top_k"), "the JSON body")
    if "text" not in obj:
        raise RequestError("the JSON body has no 'text' field (or 'texts', 'instances', 'inputs')")
    text = check_text(obj["text"], limits.max_chars)
    return Request(texts=[text], top_k=k, form="one", top_k_asked=asked, label=_label(obj, labels))


def _looks_like_json(body):
    """A body sent without Content-Type that is a JSON object in one of our forms."""
    if not isinstance(body, (bytes, bytearray)) or body[:1] != b"{":
        return False
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and bool({"text", "texts", "instances", "inputs"} & set(obj))


def _load_json(text, what="the body", nested="the JSON body"):
    try:
        return json.loads(text)
    except RecursionError:
        raise RequestError(f"{nested} is nested too deeply") from None
    except ValueError as e:
        raise RequestError(f"{what} is not valid JSON: {e}") from None


def _from_binary(body, length_header, media, labels, top_k, limits):
    """A v2 request in the binary tensor data extension: JSON header of length_header bytes, then raw data."""
    if media not in BINARY_TYPES:
        raise RequestError(f"a request with an {binary.HEADER} header (Open Inference Protocol, binary data) is sent "
                           f"with Content-Type: application/octet-stream, not {shown(media)}", 415)
    if isinstance(body, dict):   # the whole body was JSON and the worker parsed it: no raw data follows
        binary.header_length(length_header, math.inf)
        obj, raw = body, b""
    elif isinstance(body, (bytes, bytearray, str)):
        data = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else bytes(body)
        length = binary.header_length(length_header, len(data))
        try:
            text = data[:length].decode("utf-8")
        except UnicodeDecodeError as e:
            raise RequestError(f"the JSON header (the first {length} bytes) is not valid UTF-8 (byte {e.start})") from None
        what = f"the JSON header (the first {length} bytes)"
        obj, raw = _load_json(text, what, what), data[length:]
    else:
        raise RequestError(f"the body of a request with an {binary.HEADER} header must be its JSON header and raw "
                           f"data, got {json_type(body)}")
    if not isinstance(obj, dict) or "inputs" not in obj:
        raise RequestError(f"a request with an {binary.HEADER} header must be an Open Inference Protocol v2 request: "
                           "its JSON header has no 'inputs' field")
    return _from_v2(obj, labels, top_k, limits, raw)


def _header(headers, name):
    """A request header's value, whatever the case of its name."""
    name = name.lower()
    return next((v for k, v in (headers or {}).items() if k.lower() == name and isinstance(v, str)), None)


def _metadata(row, kind, top_k):
    if kind.strip().lower() != "metadata":
        raise RequestError(f"unknown {REQUEST_KIND_HEADER} {shown(kind)}: the one value is 'metadata'")
    if any(v not in (None, b"", "", {}) for v in row.values()):   # bytearray() == b"" too
        raise RequestError(f"a metadata request ({REQUEST_KIND_HEADER}: metadata) has no body")
    return Request(texts=[], top_k=top_k, form="metadata")


def parse_request(row, content_type, labels, top_k=1, limits=None, explain=False, headers=None):
    """-> Request. content_type: the body's Content-Type as the client sent it; labels: the model's labels;
    explain: the request came to /explanations (or :explain), which takes a "label" and one or a few texts;
    headers: the request's headers (names in any case): Inference-Header-Content-Length makes it a binary v2
    request, X-Textclf-Request: metadata a metadata request.

    TorchServe has already decoded a text/* body to str and parsed an application/json body
    (leaving bytes where that failed); either may also arrive as raw bytes.
    """
    limits = limits or Limits()
    kind = _header(headers, REQUEST_KIND_HEADER)
    if kind is not None:
        return _metadata(row, kind, top_k)
    media, charset = media_type(content_type)
    present = [k for k in ("data", "body") if k in row]
    key = next((k for k in present if row[k] is not None), present[0] if present else None)
    if key is None:
        if "text" in row:   # a form field named text (curl --data-urlencode text=...)
            value = row["text"]
            text = decode(value, None) if isinstance(value, (bytes, bytearray)) else value
            return _checked(Request(texts=[check_text(text, limits.max_chars)], top_k=top_k, form="one"), limits,
                            explain)
        raise RequestError(f"no text found in the request (a form-encoded body without a 'text' field?): {HOW}")
    body = row[key]
    length_header = _header(headers, binary.HEADER)
    if length_header is not None:
        return _checked(_from_binary(body, length_header, media, labels, top_k, limits), limits, explain)
    if media == "" and _looks_like_json(body):   # KServe's wrapper sends :explain bodies with no Content-Type
        media = "application/json"
    if media in JSON_TYPES:
        if isinstance(body, (bytes, bytearray)):   # a str is a JSON string the worker already parsed
            body = _load_json(as_text(body, charset))
        elif codec(charset) != "utf-8" and not ascii_only(body):
            # TorchServe read this body as UTF-8 (it drops the charset); bytes valid in both cannot be told apart
            raise RequestError(f"a JSON body with charset {shown(charset)} and non-ASCII text that is also valid "
                               "UTF-8 cannot be read here: send it as UTF-8 (or escape non-ASCII as \\uXXXX)", 415)
        request = _from_json(body, labels, top_k, limits, explain)
    elif media in TEXT_TYPES:
        if not isinstance(body, (str, bytes, bytearray)):
            raise RequestError(f"the body could not be read as text: {HOW}")
        request = Request(texts=[check_text(as_text(body, charset), limits.max_chars)], top_k=top_k, form="one")
    elif media == "application/octet-stream":
        raise RequestError(f"unsupported Content-Type 'application/octet-stream' without an {binary.HEADER} header "
                           f"(binary v2): {HOW}", 415)
    else:
        raise RequestError(f"unsupported Content-Type {shown(media)}: {HOW}", 415)
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
