"""Word importances by occlusion: how much the evidence for a label falls when one word is left out.

Occlusion needs only forward passes, so it explains every variant the Predictor serves (PyTorch, int8,
ONNX) and both embedding kinds alike: words are cut from the text before tokenization, so a transformer's
word pieces count together as their word. The cost is one forward pass per word plus one, batched.

Importance is measured in log-odds of the label, log(p / (1 - p)) with 1 - p summed from the other labels'
probabilities: a confident model's probability barely moves when one of several telling words goes (0.9999
to 0.998), while its log-odds fall by several nats, so the ranking stays readable.
"""
import re

import numpy as np

_WORD = re.compile(r"[^\W_]+")   # the word tokenizer's words: runs of letters and digits
_TINY = 1e-30


def words(text):
    """[(word, start, end)] in text order."""
    return [(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]


def log_odds(probs, target, multi_label=False):
    """log(p_target / sum of the other probabilities) for each row of (N, num_labels) probabilities; for a
    multi-label model's independent probabilities, log(p / (1 - p))."""
    probs = np.asarray(probs, dtype=np.float64)
    others = 1 - probs[:, target] if multi_label else np.delete(probs, target, axis=1).sum(axis=1)
    return np.log(np.maximum(probs[:, target], _TINY)) - np.log(np.maximum(others, _TINY))


def explain(predictor, text, label=None, batch_size=64, stats=None):
    """-> {"label", "score", "method", "words": [{"word", "start", "end", "importance"}]} for `label` (a name;
    default the predicted label). importance: the label's log-odds with the text minus without the word
    (positive: the word speaks for the label). stats: as Predictor.predict_proba's.
    A multi-label model without a named label: {"labels": [the same for each predicted label, highest first;
    the top-scoring label when none is predicted], "method"}."""
    spans = words(text)
    variants = [text] + [text[:start] + " " + text[end:] for _, start, end in spans]
    probs = predictor.predict_proba(variants, batch_size, stats)   # (1 + W, num_labels)
    if label is not None:
        return _explained(predictor, spans, probs, predictor.labels.index(label))
    if not predictor.multi_label:
        return _explained(predictor, spans, probs, int(probs[0].argmax()))
    chosen = [j for j in np.argsort(-probs[0], kind="stable") if probs[0, j] >= predictor.thresholds[j]]
    targets = chosen or [int(probs[0].argmax())]
    return {"labels": [{k: v for k, v in _explained(predictor, spans, probs, j).items() if k != "method"}
                       for j in targets], "method": "occlusion, log-odds"}


def _explained(predictor, spans, probs, target):
    odds = log_odds(probs, target, predictor.multi_label)
    return {
        "label": predictor.labels[target],
        "score": float(probs[0, target]),
        "method": "occlusion, log-odds",
        "words": [{"word": w, "start": start, "end": end, "importance": round(float(odds[0] - odds[1 + i]), 4)}
                  for i, (w, start, end) in enumerate(spans)],
    }
