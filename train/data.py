"""Training's data policy: the splits of a data folder, a seeded valid split when there is none, and labels
checked across splits. Reading the files (the data format) is textclf.data's.
"""
import dataclasses
import logging
import random
from collections import Counter

from textclf.data import find_split, label_set, read_examples
from textclf.errors import DataError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Dataset:
    train: list
    valid: list
    test: list
    labels: list
    columns: str
    valid_from_train: bool = False
    multi_label: bool = False


def load_dataset(folder, columns="auto", valid_fraction=0.1, seed=42, limit=None, skip_empty=False,
                 multi_label=False, separator=",", allow_no_label=False):
    """train.* (required), valid.* (else a seeded split of train), test.* (optional) from a folder.
    labels: sorted, of train (multi-label: the union of its label sets); a label of valid or test that train
    never had is an error. multi_label, separator, allow_no_label: as textclf.data.read_examples."""
    def read(path, columns):
        examples, columns = read_examples(path, columns, skip_empty, multi_label, separator, allow_no_label)
        if not multi_label:
            _warn_if_joined(path, examples, separator)
        return examples, columns

    train_path = find_split(folder, "train", True)
    train, columns = read(train_path, columns)
    labels = sorted({label for e in train for label in label_set(e)})
    if len(labels) < 2:
        raise DataError(train_path, None, f"needs at least 2 labels, found {len(labels)}")
    known = set(labels)
    splits = {}
    for name in ("valid", "test"):
        path = find_split(folder, name, False)
        examples = read(path, columns)[0] if path else []
        for e in examples:
            for label in label_set(e):
                if label not in known:
                    raise DataError(path, e.line, f"label {label!r} never occurs in {train_path.name}")
        splits[name] = examples
    from_train = not splits["valid"]
    if from_train:
        shuffled = train[:]
        random.Random(seed).shuffle(shuffled)
        n = max(1, int(len(shuffled) * valid_fraction))
        splits["valid"], train = shuffled[:n], shuffled[n:]
    if limit:
        train = train[:limit]
    return Dataset(train, splits["valid"], splits["test"], labels, columns, from_train, multi_label)


def _warn_if_joined(path, examples, separator):
    """Single-label labels may hold the separator; say once per file that it looks like multi-label data."""
    joined = next((e.label for e in examples if separator in e.label), None)
    if joined is not None:
        log.warning("%s: labels such as %r look like several labels: pass --multi-label to train a multi-label "
                    "model", path, joined)


def label_counts(examples):
    """Examples per label; a multi-label example counts once for each of its labels."""
    return Counter(label for e in examples for label in label_set(e))
