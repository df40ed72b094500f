"""Calibration and open-set scores from logits: temperature scaling fitted by NLL, expected calibration error,
in-scope scores (max softmax, energy), the reject threshold for a target precision, and open-set metrics.

The serving side applies what is fitted here (textclf.predict: logits / temperature, then the score and the
threshold stored in config.json); this module only chooses them."""
import numpy as np
import torch
from sklearn.metrics import roc_auc_score

ECE_BINS = 15
# the temperatures fit_temperature may return: on a valid split with no (or almost no) errors the NLL keeps
# falling as T -> 0, and such a fit would only make every answer certain
T_RANGE = (0.05, 20.0)
MIN_ERRORS = 5   # fewer wrong valid answers than this: the fit may soften (T > 1), never sharpen


def softmax(logits, temperature=1.0):
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits, gold, temperature=1.0):
    """Mean negative log-likelihood of the gold labels."""
    p = softmax(logits, temperature)[np.arange(len(gold)), np.asarray(gold)]
    return float(-np.log(np.clip(p, 1e-12, None)).mean())


def fit_temperature(logits, gold):
    """The temperature T minimising the NLL of softmax(logits / T) (Guo et al., 2017), by L-BFGS on log T,
    within T_RANGE."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(gold), dtype=torch.long)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss
    opt.step(closure)
    t = float(log_t.detach().exp())
    if not np.isfinite(t):
        return 1.0
    errors = int((np.asarray(logits).argmax(axis=1) != np.asarray(gold)).sum())
    low = 1.0 if errors < MIN_ERRORS else T_RANGE[0]   # with (almost) no errors the NLL falls as T -> 0: no signal
    return min(max(t, low), T_RANGE[1])


def ece(probs, gold, bins=ECE_BINS):
    """Expected calibration error of the top label over equal-width confidence bins (|accuracy - confidence|
    weighted by the share of examples in the bin) -> (ece, [(bin low, bin high, count, accuracy, confidence)])."""
    probs, gold = np.asarray(probs), np.asarray(gold)
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    correct = (pred == gold).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    total, table = 0.0, []
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        inside = (conf > lo) & (conf <= hi) if i else (conf >= lo) & (conf <= hi)
        n = int(inside.sum())
        if n:
            acc, mean_conf = float(correct[inside].mean()), float(conf[inside].mean())
            total += n / len(conf) * abs(acc - mean_conf)
            table.append((float(lo), float(hi), n, acc, mean_conf))
    return total, table


def in_scope_score(logits, kind, temperature=1.0):
    """Higher = more in scope. msp: max softmax at T = 1; calibrated: max softmax at the temperature; energy:
    T * logsumexp(logits / T) (Liu et al., 2020: the negative free energy)."""
    if kind == "msp":
        return softmax(logits).max(axis=1)
    if kind == "calibrated":
        return softmax(logits, temperature).max(axis=1)
    if kind == "energy":
        z = np.asarray(logits, dtype=np.float64) / temperature
        top = z.max(axis=1)
        return temperature * (top + np.log(np.exp(z - top[:, None]).sum(axis=1)))
    raise ValueError(f"unknown score {kind!r}")


def threshold_for_precision(score, correct, target):
    """The lowest threshold t such that the in-scope examples scoring >= t are predicted right at least `target`
    of the time (precision over the accepted), or None when no threshold reaches it."""
    score, correct = np.asarray(score, dtype=np.float64), np.asarray(correct, dtype=bool)
    order = np.argsort(-score, kind="stable")
    hits = np.cumsum(correct[order])
    precision = hits / np.arange(1, len(order) + 1)
    # accepting the k highest: only cut between distinct scores
    distinct = np.r_[score[order][1:] < score[order][:-1], True]
    ok = np.nonzero((precision >= target) & distinct)[0]
    return float(score[order][ok.max()]) if len(ok) else None


def open_set_metrics(in_score, out_score, recall=0.95):
    """AUROC of telling in-scope (positive) from out-of-scope texts by score, and the share of out-of-scope texts
    accepted at the threshold that keeps `recall` of the in-scope ones (FPR at 95 % TPR)."""
    in_score, out_score = np.asarray(in_score), np.asarray(out_score)
    y = np.r_[np.ones(len(in_score)), np.zeros(len(out_score))]
    auroc = float(roc_auc_score(y, np.r_[in_score, out_score]))
    cut = float(np.quantile(in_score, 1 - recall, method="lower"))
    return {"auroc": auroc, f"fpr_at_{int(recall * 100)}_tpr": float((out_score >= cut).mean()),
            "threshold_at_95_tpr": cut}


def coverage_curve(score, correct, points=50):
    """[(coverage, accuracy of the accepted)] as the threshold rises: the accuracy-at-coverage curve."""
    order = np.argsort(-np.asarray(score), kind="stable")
    hits = np.cumsum(np.asarray(correct, dtype=np.float64)[order])
    n = len(order)
    ks = sorted({max(1, int(round(n * c))) for c in np.linspace(0.02, 1.0, points)})
    return [(k / n, float(hits[k - 1] / k)) for k in ks]


def best_f1_threshold(probs, gold, default=0.5):
    """The decision threshold (one of the probabilities, or default) that maximises F1 of one label; among
    ties the one closest to default. default where the examples never hold the label."""
    probs, gold = np.asarray(probs, dtype=np.float64), np.asarray(gold, dtype=bool)
    if not gold.any():
        return default
    order = np.argsort(-probs, kind="stable")
    hits = np.cumsum(gold[order])
    k = np.arange(1, len(order) + 1)
    f1 = 2 * hits / (k + gold.sum())
    distinct = np.r_[probs[order][1:] < probs[order][:-1], True]   # cut only between different probabilities
    f1 = np.where(distinct, f1, -1.0)
    best = f1.max()
    candidates = probs[order][f1 >= best - 1e-12]
    # halfway to the next lower probability would generalise better, but the threshold must stay in the data's
    # terms: take the candidate nearest the default
    return float(candidates[np.argmin(np.abs(candidates - default))])
