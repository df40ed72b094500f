"""The data format: labelled text files, one example a line, text and label tab-separated, in either order.

Handles a UTF-8 BOM, CRLF line ends and blank lines; anything else malformed stops with file:line (DataError).
A line with a label but no text stops too, unless skip_empty drops such lines (with a warning naming them).
Standard library only: training, the load test and the benchmarks read files through here without torch.
Training's own policy (a valid split held out of train, labels checked across splits) is train.data's.
"""
import dataclasses
import logging
from pathlib import Path

from .errors import DataError

COLUMNS = ("auto", "text-label", "label-text")
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Example:
    text: str
    label: str
    line: int


def _rows(path):
    """(line number, [field, field]) for each non-blank line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(path, None, f"cannot read: {e.strerror}") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    rows = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            line = line.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as e:
            raise DataError(path, number, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise DataError(path, number, f"expected 2 tab-separated fields (text and label), found {len(fields)}")
        rows.append((number, [f.strip() for f in fields]))
    if not rows:
        raise DataError(path, None, "holds no examples")
    return rows


def detect_columns(path, rows):
    """The label column is the one with fewer distinct values (labels repeat, texts rarely do)."""
    distinct = [len({r[1][i] for r in rows}) for i in (0, 1)]
    if distinct[0] == distinct[1]:
        raise DataError(path, None, "cannot tell the text column from the label column; "
                        "pass --columns text-label or --columns label-text")
    return "text-label" if distinct[1] < distinct[0] else "label-text"


def read_examples(path, columns="auto", skip_empty=False):
    """-> (examples, column order used). skip_empty: drop lines whose text is empty instead of stopping."""
    if columns not in COLUMNS:
        raise ValueError(f"columns must be one of {', '.join(COLUMNS)}, got {columns!r}")
    rows = _rows(path)
    if columns == "auto":
        columns = detect_columns(path, rows)
    ti, li = (0, 1) if columns == "text-label" else (1, 0)
    examples, skipped = [], []
    for number, fields in rows:
        text, label = fields[ti], fields[li]
        if not text and skip_empty:
            skipped.append(number)
            continue
        if not text:
            raise DataError(path, number, "the text is empty (--skip-empty drops such lines)")
        if not label:
            raise DataError(path, number, "the label is empty")
        examples.append(Example(text, label, number))
    if skipped:
        shown = ", ".join(map(str, skipped[:10])) + (", ..." if len(skipped) > 10 else "")
        log.warning("%s: skipped %d line(s) with an empty text (line %s)", path, len(skipped), shown)
    if not examples:
        raise DataError(path, None, "holds no examples with a text")
    return examples, columns


def find_split(folder, name, required):
    folder = Path(folder)
    found = sorted(p for p in folder.glob(f"{name}.*") if p.suffix in (".txt", ".tsv"))
    if len(found) > 1:
        raise DataError(folder, None, f"more than one {name} file: {', '.join(p.name for p in found)}")
    if not found and required:
        raise DataError(folder, None, f"no {name}.txt or {name}.tsv here")
    return found[0] if found else None
