"""Classification scores from gold and predicted label ids, computed by scikit-learn."""
import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support


def scores(gold, pred, labels):
    """accuracy, correct/total, macro-F1 over the labels that occur in gold, per-class precision/recall/F1/support
    and the confusion matrix (rows: gold, columns: predicted) for label ids 0..len(labels)-1."""
    ids = list(range(len(labels)))
    gold, pred = np.asarray(gold, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    m = confusion_matrix(gold, pred, labels=ids)
    precision, recall, f1, support = precision_recall_fscore_support(gold, pred, labels=ids, zero_division=0)
    present = sorted(set(gold.tolist()))
    correct, total = int(np.trace(m)), int(m.sum())
    return {
        "accuracy": correct / total if total else 0.0,
        "correct": correct,
        "total": total,
        "macro_f1": float(f1_score(gold, pred, labels=present, average="macro", zero_division=0)) if present else 0.0,
        "per_class": {lab: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                            "support": int(support[i])} for i, lab in enumerate(labels)},
        "confusion": m.tolist(),
    }
