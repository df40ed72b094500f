"""Every answer the handler gives, as typed models, and how each goes on the wire (Reply).

JSON answers are compact (no spaces), UTF-8 with non-ASCII kept, keys in the models' order; numbers as Python's
json writes them (pydantic's own JSON writer spells exponents differently: 1e-5, not 1e-05). A v2 answer asked for
in binary (binary.py) is its JSON header followed by the raw data of its binary outputs.
"""
import dataclasses
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from . import binary
from .forms import V2_OUTPUTS

JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"
INPUT_NAME = "text"
EXPLAIN_METHOD = "occlusion, log-odds"


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Scored(_Answer):
    label: str
    score: float


class Prediction(_Answer):
    """One text's answer from a single-label model: the best label, its score, and the top_k ranked."""
    label: str | None = Field(description="the best label; null (or handler.fallback_label) when out of scope")
    score: float
    top_k: list[Scored]
    out_of_scope: bool = Field(None, description="present when the model has an out-of-scope threshold")


class LabelSet(_Answer):
    """One text's answer from a multi-label model: every label at or over its threshold (maybe none)."""
    labels: list[Scored]
    top_k: list[Scored]


class Predictions(_Answer):
    """Many texts, KServe v1: one answer per text, in request order."""
    predictions: list[Prediction] | list[LabelSet]


class WordImportance(_Answer):
    word: str
    start: int
    end: int
    importance: float = Field(description="the label's log-odds with the text minus without the word (nats)")


class Explanation(_Answer):
    """/explanations of one text: the explained label's score and each word's importance."""
    label: str
    score: float
    method: Literal[EXPLAIN_METHOD]
    words: list[WordImportance]


class LabelExplanation(_Answer):
    label: str
    score: float
    words: list[WordImportance]


class LabelSetExplanation(_Answer):
    """/explanations of one text by a multi-label model, no label named: each predicted label (the top one when
    none is predicted)."""
    labels: list[LabelExplanation]
    method: Literal[EXPLAIN_METHOD]


class Explanations(_Answer):
    """KServe v1 :explain: one explanation per instance."""
    explanations: list[Explanation | LabelSetExplanation]


Datatype = Literal["BYTES", "FP32", "BOOL"]


class V2Output(_Answer):
    """An output tensor with its data in JSON, row-major. label: BYTES, the labels ranked by score (also for a
    text out of scope), score: FP32, out_of_scope and selected: BOOL."""
    name: Literal[V2_OUTPUTS]
    shape: list[int]
    datatype: Datatype
    data: list[str] | list[float] | list[bool]


class BinaryDataSize(_Answer):
    binary_data_size: int = Field(ge=0, description="bytes of this output's raw data after the JSON header")


class V2BinaryOutput(_Answer):
    """An output tensor whose data follows the JSON header (binary tensor data extension). BYTES: a 4-byte
    little-endian length and the UTF-8 bytes per element; FP32: 4-byte little-endian floats; BOOL: one byte
    each."""
    name: Literal[V2_OUTPUTS]
    shape: list[int]
    datatype: Datatype
    parameters: BinaryDataSize


class V2Answer(_Answer):
    """Open Inference Protocol v2 inference answer. Single-label: label and score of shape [n] (the best label),
    or [n, top_k] when parameters.top_k was given; out_of_scope [n] where the model has a threshold.
    Multi-label: label, score and selected of shape [n, k] (k: every label, or top_k when given)."""
    model_name: str
    model_version: str
    id: str = Field(None, description="the request's id, when it had one")
    outputs: list[V2Output | V2BinaryOutput]
    _raw: list = PrivateAttr(default_factory=list)   # the binary outputs' raw data, in output order


class MetadataTensor(_Answer):
    name: str
    datatype: Datatype
    shape: list[int] = Field(description="-1: any size")


class ModelMetadata(_Answer):
    """Open Inference Protocol model metadata: the answer to a metadata request. outputs: those an inference
    answers with when it names none."""
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class ErrorAnswer(_Answer):
    """A refusal (4xx), the server's failure (500) or overload (503), for the request at fault only."""
    error: str = Field(description="what is wrong, naming the field as the client sent it")
    error_type: Literal["validation", "internal", "overload"]
    status: int


class ModelInfo(BaseModel):
    """What the answers need to know about the served model."""
    name: str
    version: str
    labels: list[str]
    multi_label: bool = False
    out_of_scope: bool = False   # the model has an out-of-scope threshold
    platform: str = "pytorch_torchserve"


@dataclasses.dataclass
class Reply:
    """One answer as it goes on the wire: body (str: JSON, UTF-8; bytes: binary v2), status, headers."""
    body: str | bytes
    status: int = 200
    content_type: str = JSON_TYPE
    headers: dict = dataclasses.field(default_factory=dict)

    @property
    def size(self):
        return len(self.body.encode("utf-8") if isinstance(self.body, str) else self.body)


def labels_to_rank(request, model):
    """How many labels the Predictor ranks per text: top_k, or every label for a multi-label v2 answer that was
    not given a top_k (it is a fixed [n, labels] table, flagged where predicted)."""
    if request.form == "v2" and model.multi_label and not request.top_k_asked:
        return len(model.labels)
    return request.top_k


def prediction(request, predictions, model):
    """The typed answer to a classified request, from Predictor.answers() of its texts."""
    kind = LabelSet if model.multi_label else Prediction
    if request.form == "one":
        return kind.model_validate(predictions[0])
    if request.form in ("many", "v1"):
        return Predictions(predictions=[kind.model_validate(p) for p in predictions])
    return _v2_multi_label(request, predictions, model) if model.multi_label else _v2(request, predictions, model)


def explanation(request, results):
    """The typed answer to an explanation request, from textclf.explain.explain() of each text."""
    items = [(LabelSetExplanation if "labels" in r else Explanation).model_validate(r) for r in results]
    return items[0] if request.form == "one" else Explanations(explanations=items)


def metadata(model):
    if model.multi_label:
        shape, names = [-1, len(model.labels)], ("label", "score", "selected")
    else:
        shape, names = [-1], ("label", "score") + (("out_of_scope",) if model.out_of_scope else ())
    types = {"label": "BYTES", "score": "FP32", "out_of_scope": "BOOL", "selected": "BOOL"}
    return ModelMetadata(name=model.name, versions=[model.version], platform=model.platform,
                         inputs=[MetadataTensor(name=INPUT_NAME, datatype="BYTES", shape=[-1])],
                         outputs=[MetadataTensor(name=n, datatype=types[n], shape=[-1] if n == "out_of_scope" else shape)
                                  for n in names])


def error(message, status):
    kind = {500: "internal", 503: "overload"}.get(status, "validation")
    return ErrorAnswer(error=message, error_type=kind, status=status)


def _v2(request, predictions, model):
    n, k = len(predictions), request.top_k if request.top_k_asked else 1
    ranked = [p["top_k"][:k] for p in predictions]
    shape = [n, k] if request.top_k_asked else [n]
    columns = {
        "label": ("BYTES", shape, [x["label"] for row in ranked for x in row]),
        "score": ("FP32", shape, [x["score"] for row in ranked for x in row]),
        # per text: below the reject threshold (its label and score columns still rank the labels)
        "out_of_scope": ("BOOL", [n], [p.get("out_of_scope", False) for p in predictions]),
    }
    names = request.outputs or (("label", "score") + (("out_of_scope",) if model.out_of_scope else ()))
    return _v2_answer(request, model, columns, names)   # "selected": multi-label only


def _v2_multi_label(request, predictions, model):
    """Labels ranked per text, shape [n, k] (k: top_k if asked, else every label), with "selected" marking
    the labels at or over their thresholds: a fixed-shape tensor for label sets of any size."""
    n, k = len(predictions), len(predictions[0]["top_k"]) if predictions else 0
    chosen = [{x["label"] for x in p["labels"]} for p in predictions]
    cells = [(x, i) for i, p in enumerate(predictions) for x in p["top_k"]]
    columns = {
        "label": ("BYTES", [n, k], [x["label"] for x, _ in cells]),
        "score": ("FP32", [n, k], [x["score"] for x, _ in cells]),
        "selected": ("BOOL", [n, k], [x["label"] in chosen[i] for x, i in cells]),
    }
    return _v2_answer(request, model, columns, request.outputs or ("label", "score", "selected"))


def _v2_answer(request, model, columns, names):
    outputs, raw = [], []
    for name in names:
        if name not in columns:
            continue
        datatype, shape, data = columns[name]
        if name in request.binary_outputs:
            raw.append(binary.raw_data(datatype, data))
            outputs.append(V2BinaryOutput(name=name, shape=shape, datatype=datatype,
                                          parameters=BinaryDataSize(binary_data_size=len(raw[-1]))))
        else:
            outputs.append(V2Output(name=name, shape=shape, datatype=datatype, data=data))
    fields = {"id": request.id} if request.id is not None else {}
    answer = V2Answer(model_name=model.name, model_version=model.version, **fields, outputs=outputs)
    answer._raw = raw
    return answer


def _json(answer):
    return json.dumps(answer.model_dump(exclude_unset=True), ensure_ascii=False, separators=(",", ":"))


def reply(answer, status=200):
    """The wire form of a typed answer: compact JSON, or for a v2 answer with binary outputs the JSON header
    and their raw data, with the header's length in Inference-Header-Content-Length."""
    body = _json(answer)
    raw = getattr(answer, "_raw", None)
    if not raw:
        return Reply(body, status)
    header = body.encode("utf-8")
    return Reply(header + b"".join(raw), status, BINARY_TYPE, {binary.HEADER: str(len(header))})
