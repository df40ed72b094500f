"""The data format: labelled text files, one example a line (or a CSV record), single- or multi-label.

By extension: `.jsonl`/`.ndjson` (one JSON object a line: {"text": ..., "label": "A"} or {"text": ..., "labels":
["A", "B"]}), `.csv` (a header row naming a `text` column and a `label` or `labels` column, other columns ignored)
and anything else (`.txt`, `.tsv`) TSV: text and label tab-separated, in either order (detected, or `columns`).
Multi-label: the label field (a JSON "label" string, the CSV cell, the TSV field) holds the labels joined by a
separator ("," by default; a JSON "labels" list is taken as it is). A CSV `labels` cell is split on the separator
single-label too, where it must then hold one label; single-label, a `label` field is kept whole, commas and all.
Handles a UTF-8 BOM, CRLF line ends and blank lines; anything else malformed stops with file:line (DataError).
A line with a label but no text stops too, unless skip_empty drops such lines (with a warning naming them).
Standard library only: training, the load test and the benchmarks read files through here without torch.
Training's own policy (a valid split held out of train, labels checked across splits) is train.data's.
"""
import csv
import dataclasses
import json
import logging
from pathlib import Path

from .errors import DataError

COLUMNS = ("auto", "text-label", "label-text")
FORMATS = {".jsonl": "json", ".ndjson": "json", ".csv": "csv"}   # any other extension: TSV
SPLIT_SUFFIXES = (".txt", ".tsv", ".jsonl", ".ndjson", ".csv")
BOM = b"\xef\xbb\xbf"
NO_LABEL = "the label is empty (--allow-no-label keeps such lines as examples with no label)"
JSON_TYPES = {"str": "string", "int": "number", "float": "number", "bool": "boolean", "NoneType": "null",
              "list": "array", "dict": "object"}
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Example:
    """One example. label: a str when read single-label; when read multi-label, a tuple of label strings, sorted
    and without duplicates (the empty tuple for a line kept with no label). line: 1-based, of the file it came from
    (a CSV record's first line)."""
    text: str
    label: str | tuple
    line: int


def label_set(example):
    """The labels of an example as a tuple, whether it was read single-label (one) or multi-label (any number)."""
    return example.label if isinstance(example.label, tuple) else (example.label,)


def _lines(path):
    """(line number, line without its line end) for every line of a UTF-8 file, a leading BOM dropped."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(path, None, f"cannot read: {e.strerror}") from None
    raw = raw.removeprefix(BOM)
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            yield number, line.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as e:
            raise DataError(path, number, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None


def _rows(path):
    """(line number, [field, field]) for each non-blank line of a TSV file."""
    rows = []
    for number, line in _lines(path):
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


def _json_type(value):
    return JSON_TYPES.get(type(value).__name__, type(value).__name__)


def json_objects(path, lines, type_name=_json_type):
    """(line number, object) per non-blank line of JSON Lines. lines: (number, line) pairs, every line of the
    file in order (with or without line ends); type_name names what a line held that was not an object."""
    for number, line in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(path, number, f"not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(path, number, f"expected a JSON object, found {type_name(obj)}")
        yield number, obj


def csv_rows(path, lines):
    """(line number of a record's first line, cells) per non-blank CSV record. lines: (number, line) pairs, every
    line of the file in order (with or without line ends), so that the reader's count of lines read is the file
    line number; a record (quoted cells may hold line breaks) starts on the line after the previous one's last."""
    reader = csv.reader((line if line.endswith("\n") else line + "\n" for _, line in lines), strict=True)
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader, None)
        except csv.Error as e:
            raise DataError(path, start, f"malformed CSV record ({e})") from None
        if row is None:
            return
        if any(cell.strip() for cell in row):
            yield start, row


def _json_records(path):
    """(line number, text, label) per non-blank line; label: the "label" string or the "labels" list."""
    for number, obj in json_objects(path, _lines(path)):
        text = obj.get("text")
        if text is None:
            raise DataError(path, number, "no 'text' field")
        if not isinstance(text, str):
            raise DataError(path, number, f"'text' is not a string but {_json_type(text)}")
        if "label" in obj and "labels" in obj:
            raise DataError(path, number, "both 'label' and 'labels': give one")
        if "label" in obj:
            label = obj["label"]
            if not isinstance(label, str):
                raise DataError(path, number, f"'label' is not a string but {_json_type(label)}")
        elif "labels" in obj:
            label = obj["labels"]
            if not isinstance(label, list) or not all(isinstance(x, str) for x in label):
                raise DataError(path, number, "'labels' is not a list of strings")
        else:
            raise DataError(path, number, "no 'label' or 'labels' field")
        yield number, text, label


def _csv_header(path, number, row):
    names = [name.strip() for name in row]
    shown = ", ".join(repr(n) for n in names)
    for name in ("text", "label", "labels"):
        if names.count(name) > 1:
            raise DataError(path, number, f"the header names the column {name!r} more than once")
    if "text" not in names:
        raise DataError(path, number, f"the header has no 'text' column (columns: {shown}); "
                        "the first row must name a 'text' and a 'label' or 'labels' column")
    if "label" in names and "labels" in names:
        raise DataError(path, number, "the header has both a 'label' and a 'labels' column: keep one")
    if "label" not in names and "labels" not in names:
        raise DataError(path, number, f"the header has no 'label' or 'labels' column (columns: {shown})")
    return names.index("text"), names.index("label" if "label" in names else "labels"), len(names)


def _csv_records(path, separator):
    """(line number of the record's first line, text, label) per record after the header; label: the "label"
    cell, or the "labels" cell split on separator (a list, as a JSON "labels")."""
    header = None
    for start, row in csv_rows(path, _lines(path)):
        if header is None:
            header = ti, li, width = _csv_header(path, start, row)
            plural = row[li].strip() == "labels"
        elif len(row) != width:
            raise DataError(path, start,
                            f"expected {width} comma-separated fields (as in the header), found {len(row)}")
        else:
            yield start, row[ti], row[li].split(separator) if plural else row[li]


def _label(path, number, raw, multi_label, separator, allow_no_label):
    """The label (str) or, multi-label, the labels (sorted tuple) of a raw label field or JSON "labels" list."""
    if isinstance(raw, list):
        pieces = raw
    elif multi_label:
        pieces = raw.split(separator)
    else:
        pieces = [raw]
    labels = tuple(sorted({p.strip() for p in pieces} - {""}))
    if multi_label:
        if not labels and not allow_no_label:
            raise DataError(path, number, NO_LABEL)
        return labels
    if not labels:
        raise DataError(path, number, "the label is empty")
    if len(labels) > 1:
        raise DataError(path, number, f"several labels: train with --multi-label ({', '.join(map(repr, labels))})")
    return labels[0]


def read_examples(path, columns="auto", skip_empty=False, multi_label=False, separator=",", allow_no_label=False):
    """-> (examples, column order used). The format follows the extension (see the module's docstring); columns
    applies to TSV only (JSON Lines and CSV name their fields, and get `columns` back unchanged).
    skip_empty: drop lines whose text is empty instead of stopping.
    multi_label: each Example.label is a sorted tuple of labels, the label field split on separator.
    allow_no_label (multi-label only): a line with an empty label field is an example with no label (())."""
    if columns not in COLUMNS:
        raise ValueError(f"columns must be one of {', '.join(COLUMNS)}, got {columns!r}")
    if not isinstance(separator, str) or not separator:
        raise ValueError(f"separator must be a non-empty string, got {separator!r}")
    if allow_no_label and not multi_label:
        raise ValueError("allow_no_label applies to multi-label data only (multi_label=True)")
    kind = FORMATS.get(Path(path).suffix.lower(), "tsv")
    if kind == "tsv":
        rows = _rows(path)
        if columns == "auto":
            columns = detect_columns(path, rows)
        ti, li = (0, 1) if columns == "text-label" else (1, 0)
        records = ((number, fields[ti], fields[li]) for number, fields in rows)
    else:
        records = _json_records(path) if kind == "json" else _csv_records(path, separator)
    examples, skipped, seen = [], [], False
    for number, text, label in records:
        seen, text = True, text.strip()
        if not text and skip_empty:
            skipped.append(number)
            continue
        if not text:
            raise DataError(path, number, "the text is empty (--skip-empty drops such lines)")
        examples.append(Example(text, _label(path, number, label, multi_label, separator, allow_no_label), number))
    if not seen:
        raise DataError(path, None, "holds no examples")
    if skipped:
        shown = ", ".join(map(str, skipped[:10])) + (", ..." if len(skipped) > 10 else "")
        log.warning("%s: skipped %d line(s) with an empty text (line %s)", path, len(skipped), shown)
    if not examples:
        raise DataError(path, None, "holds no examples with a text")
    return examples, columns


def find_split(folder, name, required):
    """The one NAME.txt|tsv|jsonl|ndjson|csv of a folder; None when there is none and it is not required."""
    folder = Path(folder)
    found = sorted(p for p in folder.glob(f"{name}.*") if p.suffix in SPLIT_SUFFIXES)
    if len(found) > 1:
        raise DataError(folder, None, f"more than one {name} file: {', '.join(p.name for p in found)}")
    if not found and required:
        raise DataError(folder, None, f"no {name}.txt or {name}.tsv here "
                        f"(nor {name}.jsonl, {name}.ndjson or {name}.csv)")
    return found[0] if found else None
