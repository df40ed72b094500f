"""PNG plots: training curves and confusion matrices (matplotlib, imported only here)."""
import json
from pathlib import Path


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(plt, fig, png):
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def plot_curves(metrics_jsonl, png):
    rows = [json.loads(line) for line in Path(metrics_jsonl).read_text().splitlines() if line.strip()]
    if not rows:
        return None
    plt = _pyplot()
    epochs = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(epochs, [r["train_loss"] for r in rows], "o-", color="tab:red", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("train loss", color="tab:red")
    ax2 = ax.twinx()
    ax2.plot(epochs, [r["valid_accuracy"] for r in rows], "s-", color="tab:blue", label="valid accuracy")
    ax2.set_ylabel("valid accuracy", color="tab:blue")
    ax.set_title(f"{Path(metrics_jsonl).parent.name}: loss and accuracy per epoch")
    return _save(plt, fig, png)


def plot_confusion(matrix, labels, png, title="confusion matrix"):
    import numpy as np
    plt = _pyplot()
    m = np.asarray(matrix)
    size = max(5, 0.5 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    if len(labels) <= 20:
        for i in range(len(labels)):
            for j in range(len(labels)):
                if m[i, j]:
                    ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set_title(title)
    return _save(plt, fig, png)


def plot_reliability(before, after, png, title="reliability"):
    """Reliability diagram: accuracy against confidence per bin, before and after temperature scaling.
    before/after: (ece, [(low, high, count, accuracy, confidence)]) from train.calibration.ece."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], ":", color="gray", label="perfect calibration")
    for (value, table), name, style in ((before, "T = 1", "o--"), (after, "calibrated", "s-")):
        if table:
            conf = [row[4] for row in table]
            acc = [row[3] for row in table]
            line, = ax.plot(conf, acc, style[1:], label=f"{name}: ECE {value:.4f}")
            # marker area ~ texts in the bin: most sit in the top bin, the others hold a handful each
            ax.scatter(conf, acc, s=[12 + 400 * row[2] / sum(r[2] for r in table) for row in table],
                       marker=style[0], color=line.get_color(), zorder=3)
    ax.set_xlabel("confidence (top probability, mean per bin)")
    ax.set_ylabel("accuracy in the bin (marker area: share of texts)")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="upper left")
    ax.set_title(title, fontsize=9)
    return _save(plt, fig, png)


def plot_per_label(per_class, png, title="per label"):
    """Precision, recall and F1 per label as grouped bars (multi-label evaluation), support in the tick labels."""
    import numpy as np
    plt = _pyplot()
    labels = list(per_class)
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(labels) + 2), 4.5))
    for k, (key, color) in enumerate((("precision", "tab:blue"), ("recall", "tab:orange"), ("f1", "tab:green"))):
        ax.bar(x + (k - 1) * 0.27, [per_class[lab][key] for lab in labels], 0.27, label=key, color=color)
    ax.set_xticks(x, [f"{lab} ({per_class[lab]['support']})" for lab in labels], rotation=45, ha="right", fontsize=8)
    ax.set_ylim(min(0.8, min(min(per_class[lab][k] for k in ("precision", "recall", "f1")) for lab in labels)) - 0.02,
                1.005)
    ax.set_ylabel("score (support in brackets)")
    ax.legend(loc="lower right")
    ax.set_title(title, fontsize=9)
    return _save(plt, fig, png)
