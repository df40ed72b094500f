"""The Open Inference Protocol's binary tensor data extension, the form tritonclient.http uses by default.

Request: the body is a JSON header of exactly `Inference-Header-Content-Length` bytes (a request header), then the
raw data of the input whose parameters give its `binary_data_size` (and which has no "data"). A BYTES tensor's raw
data is its elements in row-major order, each a 4-byte little-endian length and that many bytes.

Answer, where the request asks for it (parameters.binary_data_output, or an output's parameters.binary_data): the
JSON header, whose binary outputs carry parameters.binary_data_size instead of "data", then each binary output's
raw data in output order; the answer's `Inference-Header-Content-Length` header says where the JSON ends.
FP32 is 4-byte little-endian IEEE 754, BOOL one byte (0 or 1) per element.
"""
import re
import struct

from .errors import RequestError
from .text import shown

HEADER = "Inference-Header-Content-Length"
_LENGTH = re.compile(r"[0-9]{1,12}")
_FIXED = {"FP32": "f", "BOOL": "?"}


def header_length(value, body_size):
    """The JSON header's length in bytes from the request header's value, checked against the body's size."""
    text = value.strip() if isinstance(value, str) else ""
    if not _LENGTH.fullmatch(text):
        raise RequestError(f"the {HEADER} header must be the JSON header's length in bytes, got {shown(value)}")
    length = int(text)
    if length == 0:
        raise RequestError(f"the {HEADER} header is 0: the body must start with the JSON header of the request")
    if length > body_size:
        raise RequestError(f"the {HEADER} header says the JSON header has {length} bytes; the body has only "
                           f"{body_size}")
    return length


def read_bytes(raw, count, name):
    """-> the `count` elements (bytes) of a BYTES tensor's raw data; every byte must belong to one of them."""
    elements, offset, size = [], 0, len(raw)
    for i in range(count):
        if size - offset < 4:
            raise RequestError(f"{name} is truncated: element {i} needs a 4-byte length at byte {offset}, "
                               f"{size - offset} bytes are left")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if length > size - offset:
            raise RequestError(f"{name} is truncated: element {i} says {length} bytes at byte {offset}, "
                               f"{size - offset} are left")
        elements.append(bytes(raw[offset:offset + length]))
        offset += length
    if offset != size:
        raise RequestError(f"{name} has {size - offset} bytes after its {count} elements (the count its shape "
                           "gives)")
    return elements


def raw_data(datatype, values):
    """A tensor's values (row-major) -> its raw data."""
    if datatype == "BYTES":
        encoded = [v.encode("utf-8") for v in values]
        return b"".join(struct.pack("<I", len(e)) + e for e in encoded)
    return struct.pack(f"<{len(values)}{_FIXED[datatype]}", *values)
