"""Training's data policy: the splits of a data folder, a seeded valid split when there is none, and labels
checked across splits. Reading the files (the data format) is textclf.data's.
"""
import dataclasses
import random
from collections import Counter

from textclf.data import find_split, read_examples
from textclf.errors import DataError


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
