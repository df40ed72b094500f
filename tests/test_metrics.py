"""train.metrics.scores (scikit-learn) reproduces the scores published in results/: each stored evaluation's
confusion matrix is turned back into gold and predicted ids and scored again."""
import json

import numpy as np
import pytest

from conftest import ROOT
from train.metrics import scores

STORED = sorted((ROOT / "results").rglob("eval-*-test.json"))


def unconfuse(matrix):
    """Gold and predicted ids with exactly this confusion matrix (rows gold, columns predicted)."""
    m = np.asarray(matrix)
    gold = np.repeat(np.arange(m.size) // m.shape[1], m.ravel())
    pred = np.repeat(np.arange(m.size) % m.shape[1], m.ravel())
    return gold, pred


def test_there_are_stored_evaluations():
    assert len(STORED) >= 3, STORED


@pytest.mark.parametrize("path", STORED, ids=lambda p: p.parent.name)
def test_scores_reproduce_the_published_numbers(path):
    stored = json.loads(path.read_text())
    labels = list(stored["per_class"])
    result = scores(*unconfuse(stored["confusion"]), labels)
    assert result["confusion"] == stored["confusion"]
    assert (result["correct"], result["total"]) == (stored["correct"], stored["total"])
    assert result["accuracy"] == pytest.approx(stored["accuracy"], abs=1e-12)
    assert result["macro_f1"] == pytest.approx(stored["macro_f1"], abs=1e-12)
    for label in labels:
        assert result["per_class"][label] == pytest.approx(stored["per_class"][label], abs=1e-12), label


def test_labels_absent_from_gold_do_not_count_in_macro_f1():
    # label 2 never occurs in gold and is never predicted: F1 0 there, left out of the macro average
    result = scores([0, 0, 1, 1], [0, 1, 1, 1], ["a", "b", "c"])
    assert result["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert result["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
