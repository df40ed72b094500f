"""Classification scores from gold and predicted label ids (numpy only)."""
import numpy as np


def confusion(gold, pred, n):
    m = np.zeros((n, n), dtype=np.int64)
    np.add.at(m, (np.asarray(gold), np.asarray(pred)), 1)
    return m  # rows: gold, columns: predicted


def scores(gold, pred, labels):
    m = confusion(gold, pred, len(labels))
    tp = np.diag(m).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.nan_to_num(tp / m.sum(axis=0))
        recall = np.nan_to_num(tp / m.sum(axis=1))
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    correct, total = int(tp.sum()), int(m.sum())
    per_class = {lab: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                       "support": int(m[i].sum())} for i, lab in enumerate(labels)}
    present = m.sum(axis=1) > 0
    return {
        "accuracy": correct / total if total else 0.0,
        "correct": correct,
        "total": total,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": per_class,
        "confusion": m.tolist(),
    }
