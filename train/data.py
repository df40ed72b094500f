"""Read labelled text files: one example a line, text and label tab-separated, in either order.

Handles a UTF-8 BOM, CRLF line ends and blank lines; anything else malformed stops with file:line.
A line with a label but no text stops too, unless skip_empty drops such lines (with a warning naming them).
"""
import dataclasses
import logging
import random
from collections import Counter
from pathlib import Path

from textclf.errors import DataError

COLUMNS = ("auto", "text-label", "label-text")
log = logging.getLogger("train.data")


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


@dataclasses.dataclass
class Dataset:
    train: list
    valid: list
    test: list
    labels: list
    columns: str
    valid_from_train: bool = False


def load_dataset(folder, columns="auto", valid_fraction=0.1, seed=42, limit=None, skip_empty=False):
    """train.* (required), valid.* (else a seeded split of train), test.* (optional) from a folder."""
    train_path = find_split(folder, "train", True)
    train, columns = read_examples(train_path, columns, skip_empty)
    labels = sorted({e.label for e in train})
    if len(labels) < 2:
        raise DataError(train_path, None, f"needs at least 2 labels, found {len(labels)}")
    splits = {}
    for name in ("valid", "test"):
        path = find_split(folder, name, False)
        examples = read_examples(path, columns, skip_empty)[0] if path else []
        for e in examples:
            if e.label not in labels:
                raise DataError(path, e.line, f"label {e.label!r} never occurs in {train_path.name}")
        splits[name] = examples
    from_train = not splits["valid"]
    if from_train:
        shuffled = train[:]
        random.Random(seed).shuffle(shuffled)
        n = max(1, int(len(shuffled) * valid_fraction))
        splits["valid"], train = shuffled[:n], shuffled[n:]
    if limit:
        train = train[:limit]
    return Dataset(train, splits["valid"], splits["test"], labels, columns, from_train)


def label_counts(examples):
    return Counter(e.label for e in examples)
