"""protocol: the request protocol of the served model, apart from the model itself (textclf/).

What a client may send, how each form is read and checked, and how each answer is shaped and encoded:

    text/plain body, {"text": "...", "top_k": N}, form field text=...     one text   -> Prediction | LabelSet
    {"texts": ["...", ...], "top_k": N}                                   many       -> Predictions
    {"instances": ["..." | {"text"|"data": "..."}, ...], "top_k": N}      KServe v1  -> Predictions
    {"id", "inputs": [{"name", "shape", "datatype": "BYTES", "data"}], "outputs", "parameters": {"top_k": N}}
        Open Inference Protocol v2, as JSON or with the binary tensor data extension (binary.py) -> V2Answer
    /explanations: one text (+ "label"), or v1 instances                  -> Explanation | Explanations
    an empty body with X-Textclf-Request: metadata                        -> ModelMetadata (OIP)
    any refusal or failure, for the request at fault only                 -> ErrorAnswer

forms.py: the request forms (pydantic models); requests.py: parse_request() -> Request; answers.py: the answers
(pydantic models) and their wire encoding (Reply); binary.py: the OIP binary data extension; text.py: charsets
and what a text may hold; schema.py: `python -m protocol.schema` writes docs/protocol.schema.json and the README's section from them.

Shipped inside every .mar beside textclf/ (archive.sh); imports pydantic and textclf.explain, never torch or ts.
"""
from .answers import ModelInfo, Reply, error, explanation, labels_to_rank, metadata, prediction, reply
from .errors import Failure, RequestError
from .requests import Limits, Request, parse_request

__all__ = ["Failure", "Limits", "ModelInfo", "Reply", "Request", "RequestError", "error", "explanation",
           "labels_to_rank", "metadata", "parse_request", "prediction", "reply"]
