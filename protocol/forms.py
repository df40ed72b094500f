"""The request forms as they travel: pydantic models of every body the handler takes, for the JSON Schema
(python -m protocol.schema) and for readers. requests.parse_request checks bodies by hand against the same rules,
so that every refusal names the field as the client wrote it ('inputs'[0].data[3] is empty) and carries its
status (400, 413 or 415); tests/test_protocol.py holds the two to each other.
"""
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel
from typing_extensions import TypeAliasType

V2_OUTPUTS = ("label", "score", "out_of_scope", "selected")   # selected: multi-label models

Text = Annotated[str, Field(min_length=1, description="a text to classify: UTF-8, at least one visible character, "
                            "no control characters except tab, CR and LF; at most handler.max_chars characters")]
TopK = Annotated[int, Field(ge=1, description="labels to return per text, 1 to the model's number of labels "
                            "(default: handler.top_k)")]
Label = Annotated[str, Field(description="one of the model's labels (labels.json)")]
NestedTexts = TypeAliasType("NestedTexts", str | list["NestedTexts"])


class _Form(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PlainText(RootModel[str]):
    """`Content-Type: text/plain` (charset optional, default UTF-8): the whole body is one text."""


class FormText(_Form):
    """`Content-Type: application/x-www-form-urlencoded` (curl --data-urlencode text=...): one text."""
    text: Text


class OneText(_Form):
    """One text, `Content-Type: application/json`."""
    text: Text
    top_k: TopK = None


class ManyTexts(_Form):
    """Many texts in one request, answered in order."""
    texts: list[Text] = Field(min_length=1, description="at most handler.max_texts texts, "
                              "handler.max_total_chars characters in all")
    top_k: TopK = None


class V1TextInstance(_Form):
    text: Text


class V1DataInstance(_Form):
    data: Text


class V1Request(_Form):
    """KServe v1: POST /v1/models/NAME:predict (or /predictions/NAME)."""
    instances: list[Text | V1TextInstance | V1DataInstance] = Field(min_length=1)
    top_k: TopK = None


class ExplainText(_Form):
    """POST /explanations/NAME: one text (or a text/plain body); label: the one to explain (default: the
    predicted label; a multi-label model explains each predicted label)."""
    text: Text
    label: Label = None


class ExplainInstances(_Form):
    """POST /v1/models/NAME:explain (KServe v1): a few texts, at most handler.explain_max_words words in all."""
    instances: list[Text | V1TextInstance | V1DataInstance] = Field(min_length=1)
    label: Label = None


Shape = Annotated[list[Annotated[int, Field(ge=0)]], Field(
    min_length=1, max_length=8, description="its element count (the product) is the number of texts, e.g. [2]")]


class V2InputParameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    top_k: TopK = None


class V2BinaryInputParameters(V2InputParameters):
    binary_data_size: int = Field(ge=0, description="bytes of this input's raw data after the JSON header: each "
                                  "text a 4-byte little-endian length and its UTF-8 bytes, row-major")


class V2Input(_Form):
    """An input tensor with its texts in "data" (a flat or nested array of strings, row-major)."""
    name: str = Field(description="any name; the model has one input (metadata calls it \"text\")")
    shape: Shape
    datatype: Literal["BYTES"]
    data: NestedTexts
    parameters: V2InputParameters = None


class V2BinaryInput(_Form):
    """An input tensor whose texts follow the JSON header (binary tensor data extension)."""
    name: str
    shape: Shape
    datatype: Literal["BYTES"]
    parameters: V2BinaryInputParameters


class V2OutputParameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    binary_data: bool = Field(None, description="this output as raw data after the JSON header (default: the "
                              "request's parameters.binary_data_output); classification and shared memory are "
                              "not supported")


class V2RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: Literal[V2_OUTPUTS] = Field(description="selected: multi-label models only")
    parameters: V2OutputParameters = None


class V2Parameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    top_k: TopK = Field(None, description="label and score become [n, top_k]; without it single-label models "
                        "answer [n] (the best label), multi-label ones [n, labels]")
    binary_data_output: bool = Field(None, description="every output as raw data after the JSON header")


class V2Request(_Form):
    """Open Inference Protocol v2: POST /v2/models/NAME/infer (or /predictions/NAME). As JSON
    (`Content-Type: application/json`), or as this JSON header followed by the input's raw data
    (binary tensor data extension; `Content-Type: application/octet-stream` and the request header
    `Inference-Header-Content-Length: <bytes of the JSON header>`)."""
    id: str = Field(None, description="echoed in the answer")
    inputs: list[V2Input | V2BinaryInput] = Field(min_length=1, max_length=1)
    outputs: list[V2RequestedOutput] = Field(None, description="the outputs to return, in this order (default: "
                                             "label, score, and out_of_scope or selected where the model has them)")
    parameters: V2Parameters = None


class MetadataRequest(_Form):
    """An empty body with the request header `X-Textclf-Request: metadata` (the proxy's rewrite of
    GET /v2/models/NAME and GET /v2/models/NAME/ready): answered with the model's metadata."""
