"""What a text must be, and how a body's bytes become text: charsets, byte-order marks, JSON types in messages.

Whatever check_text passes can be tokenized: a str that encodes to UTF-8 (no lone surrogates), holds no control
characters and at least one visible character.
"""
import codecs
import re

from .errors import RequestError

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Characters that show nothing: whitespace, and Unicode's default-ignorable code points (zero-width spaces and
# joiners, bidi marks, word joiners, soft hyphen, byte-order marks, variation selectors, Hangul fillers, tags).
_INVISIBLE = re.compile(
    "[\\s\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f"
    "\u3164\ufe00-\ufe0f\ufeff\uffa0\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]")
# Python text codecs that are no charset a client would declare: escape decoders, and punycode/idna, which
# take seconds on a large body (quadratic) before any limit is checked.
_NOT_CHARSETS = ("unicode-escape", "raw-unicode-escape", "punycode", "idna", "undefined", "utf-7")


def shown(value, limit=40):
    """repr() of a client-supplied name, cut to `limit` characters: messages go back to the client and into
    the log at INFO, so they must not carry (much of) the request itself."""
    value = str(value)
    return repr(value) if len(value) <= limit else repr(value[:limit]) + f"... ({len(value)} characters)"


def json_type(value):
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def check_text(text, max_chars, name="'text'"):
    """The text itself, or RequestError naming `name` (e.g. 'texts'[3]) and what is wrong with it."""
    if not isinstance(text, str):
        raise RequestError(f"{name} must be a string, got {json_type(text)}")
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


def media_type(content_type):
    """-> (media type, charset or None) of a Content-Type header value."""
    parts = (content_type or "").split(";")
    charset = None
    for param in parts[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').strip() or None
    return parts[0].strip().lower(), charset


def codec(charset):
    """The Python codec name for a declared charset; 415 for one that is unknown or not a text encoding."""
    if charset is None:
        return "utf-8"
    try:
        info = codecs.lookup(charset)
    except (LookupError, ValueError):
        info = None
    if info is None or not getattr(info, "_is_text_encoding", True) or info.name in _NOT_CHARSETS:
        raise RequestError(f"unsupported charset {shown(charset)}: send UTF-8 (or another text encoding "
                           "such as ISO-8859-1, UTF-16)", 415)
    return info.name


def decode(raw, charset):
    """bytes -> str in the declared charset (default UTF-8); a leading byte-order mark is dropped."""
    name = codec(charset)
    if name == "utf-8":
        name = "utf-8-sig"
    try:
        text = bytes(raw).decode(name)
    except UnicodeDecodeError as e:
        raise RequestError(f"the body is not valid {shown(charset) if charset else 'UTF-8'} (byte {e.start})") from None
    except (UnicodeError, ValueError):   # codecs such as punycode and idna raise these (found by tests/test_fuzz.py)
        raise RequestError(f"the body is not valid {shown(charset)}") from None
    return text.removeprefix("\ufeff")


def as_text(body, charset):
    if isinstance(body, str):
        # the worker already read a text/* body as UTF-8; another declared charset is applied to the bytes
        if codec(charset) != "utf-8":
            return decode(body.encode("utf-8", "surrogatepass"), charset)
        return body.removeprefix("\ufeff")
    return decode(body, charset)


def ascii_only(value, depth=0):
    """No non-ASCII character in any string of a parsed JSON value."""
    if depth > 64:
        raise RequestError("the JSON body is nested too deeply")
    if isinstance(value, str):
        return value.isascii()
    if isinstance(value, dict):
        return all(ascii_only(k, depth + 1) and ascii_only(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return all(ascii_only(v, depth + 1) for v in value)
    return True
