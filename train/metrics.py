"""Classification scores from gold and predicted label ids, computed by scikit-learn."""
import numpy as np
from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, hamming_loss, precision_recall_fscore_support,
                             roc_auc_score)


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


def multilabel_scores(gold, probs, thresholds, labels):
    """Multi-label scores of (N, C) 0/1 gold label sets and (N, C) probabilities at per-label thresholds:
    micro- and macro-F1 (macro over the labels that occur in gold), subset accuracy ("accuracy": every label of a
    text right), Hamming loss, mean ROC-AUC over the labels with both classes in gold, per-label precision /
    recall / F1 / support."""
    gold = np.asarray(gold, dtype=np.int64)
    pred = (np.asarray(probs) >= np.asarray(thresholds)[None, :]).astype(np.int64)
    precision, recall, f1, support = precision_recall_fscore_support(gold, pred, zero_division=0)
    present = [j for j in range(len(labels)) if gold[:, j].any()]
    both = [j for j in range(len(labels)) if 0 < gold[:, j].sum() < len(gold)]
    correct = int((pred == gold).all(axis=1).sum())
    return {
        "accuracy": correct / len(gold) if len(gold) else 0.0,
        "correct": correct,
        "total": int(len(gold)),
        "micro_f1": float(f1_score(gold, pred, average="micro", zero_division=0)),
        "macro_f1": float(np.mean([f1[j] for j in present])) if present else 0.0,
        "hamming_loss": float(hamming_loss(gold, pred)),
        "subset_accuracy": float(accuracy_score(gold, pred)),
        "mean_roc_auc": float(np.mean([roc_auc_score(gold[:, j], np.asarray(probs)[:, j]) for j in both]))
        if both else None,
        "per_class": {lab: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                            "support": int(support[i])} for i, lab in enumerate(labels)},
    }
