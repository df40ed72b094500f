"""Training's data policy: the splits of a data folder, a seeded valid split when there is none, and labels
checked across splits. Reading the files (the data format) is textclf.data's.
"""
import dataclasses
import json
import logging
import random
from collections import Counter

from textclf.checkpoint import check_folder
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


# ---- the splits a trained checkpoint is measured, calibrated and fitted on (train.optimize, train.calibrate)

def _train_args(src):
    return json.loads((src / "train_args.json").read_text()) if (src / "train_args.json").is_file() else {}


def valid_split(data, split, columns, src):
    """(path, examples) of checkpoint src's split that accuracy is measured on. Without a SPLIT file in the data folder (data
    with no valid file), the valid examples training held out of train, rebuilt from train_args.json."""
    path = find_split(data, split, split != "valid")
    settings = _train_args(src)
    multi = {"multi_label": check_folder(src).multi_label, "separator": settings.get("label_separator", ","),
             "allow_no_label": settings.get("allow_no_label", False)}
    if path is not None:
        return path, read_examples(path, columns, **multi)[0]
    dataset = load_dataset(data, columns, settings.get("valid_fraction", 0.1), settings.get("seed", 42),
                           skip_empty=settings.get("skip_empty", False), **multi)
    path = find_split(data, "train", True)
    log.info("no valid file in %s: using the %d examples training held out of %s (valid_fraction %s, seed %s)",
             data, len(dataset.valid), path.name, settings.get("valid_fraction", 0.1), settings.get("seed", 42))
    return path, dataset.valid


def train_split(data, columns, src):
    """(path, examples) checkpoint src was trained on: the train file, less the valid examples training held out
    of it when the data folder has no valid file (rebuilt from train_args.json as in valid_split)."""
    settings = _train_args(src)
    dataset = load_dataset(data, columns, settings.get("valid_fraction", 0.1), settings.get("seed", 42),
                           skip_empty=settings.get("skip_empty", False))
    return find_split(data, "train", True), dataset.train
