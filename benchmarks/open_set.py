"""Open-set behaviour: how well a Snips classifier says "none of these", by score, for MiniLM CLS and GloVe CNN.

    python -m benchmarks.open_set [--leave-out A,B] [--pairs 1|N|all] [--far 700] --out results/open-set

Leave-two-intents-out (as in the open intent classification literature): two intents (default: drawn with a
fixed seed from the seven) are removed from train and valid; each model is trained on the five others
(python -m train, which also fits the temperature on valid); the test sentences of the two left out are the
near out-of-scope texts, and SST-2 and R52 test texts (the first --far of each) the far ones. One pair says
little about the rest, so --pairs N repeats the whole protocol for N pairs (the drawn one first, then others
drawn with the same seed; all: every pair, 21 of Snips' seven intents) and reports each pair and the mean. For each score
- msp: the top softmax probability at T = 1,
- calibrated: the top probability at the fitted temperature,
- energy: T * logsumexp(logits / T) (the negative free energy),
- mahalanobis: minus the squared Mahalanobis distance of the classifier layer's input to the nearest class mean
  (shared covariance; Lee et al., 2018), fitted on the training texts by train.calibrate's code and scored by
  the Predictor's, as served,
it reports AUROC (in-scope against out-of-scope), the share of out-of-scope texts accepted at the threshold that
keeps 95 % of the in-scope ones, and accuracy-at-coverage curves (a PNG per model; out-of-scope texts count as
errors when accepted). The cosine similarity to the 10th nearest of 4,000 training texts on the same features (Sun
et al., 2022) is measured beside them as a diagnostic (not served). Each checkpoint is calibrated again first
(train.calibrate's code as it stands); the score it serves by default (--score auto) is marked per model.
Writes OUT/open_set.json, OUT/open_set.md, OUT/coverage-MODEL.png (the first pair) and, for several pairs,
OUT/pairs.png (near AUROC per pair).
"""
import argparse
import itertools
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, git_commit, machine, machine_line, versions
from textclf.data import read_examples
from train.calibrate import auto_score, fit_mahalanobis
from train.calibration import coverage_curve, in_scope_score, open_set_metrics

SCORES = ("msp", "calibrated", "energy", "mahalanobis")
DIAGNOSTIC = ("knn",)   # a feature-space score measured here only
FEATURE_TEXTS = 4000
NAMES = {"probability": "calibrated", "energy": "energy", "mahalanobis": "mahalanobis"}   # config.json's -> here
MODELS = {   # name: python -m train flags (the quickstart's MiniLM recipe; the GloVe CNN of the accuracy table)
    "minilm-cls": ["--embedding", "minilm", "--encoder", "cls", "--epochs", "1", "--lr", "1e-4"],
    "glove-cnn": ["--embedding", "glove", "--encoder", "cnn", "--epochs", "2"],
}


def pair_count(value):
    """--pairs: a positive number, or "all" (None)."""
    if value == "all":
        return None
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: a number of pairs (1 or more), or all")
    return int(value)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT / "data" / "snips")
    p.add_argument("--leave-out", default="", help="two intents to leave out (default: drawn with --seed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pairs", type=pair_count, default=1, help="how many pairs to leave out in turn (N or all); "
                   "default 1")
    p.add_argument("--far", type=int, default=700, help="SST-2 and R52 test texts used as far out-of-scope, each")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "open-set")
    p.add_argument("--retrain", action="store_true", help="train again even where a run exists")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "open-set")
    return p.parse_args(argv)


def split_data(data, leave_out, folder):
    """folder/{train,valid,test}.txt without the left-out intents -> the left-out test texts (near out-of-scope)."""
    folder.mkdir(parents=True, exist_ok=True)
    near = []
    for split in ("train", "valid", "test"):
        examples, _ = read_examples(next(data.glob(f"{split}.*")))
        kept = [e for e in examples if e.label not in leave_out]
        near += [e.text for e in examples if e.label in leave_out and split == "test"]
        (folder / f"{split}.txt").write_text("".join(f"{e.text}\t{e.label}\n" for e in kept), encoding="utf-8")
    return near


def far_texts(n):
    texts = {}
    for name in ("sst2", "r52"):
        path = next((ROOT / "data" / name).glob("test.*"))
        texts[name] = [e.text for e in read_examples(path)[0][:n]]
    return texts


def train(name, data, runs, retrain):
    run = runs / name
    if retrain or not (run / "checkpoint-best" / "config.json").is_file():
        command = [sys.executable, "-m", "train", "--data", str(data), "--out", str(run), "--seed", "42",
                   *MODELS[name]]
        print("training:", " ".join(command[1:]), flush=True)
        subprocess.run(command, cwd=ROOT, check=True)
    return run / "checkpoint-best"


def knn_scores(predictor, train_examples, features):
    """{set: cosine similarity to the 10th nearest of FEATURE_TEXTS training texts} (higher = more in scope)."""
    sample = random.Random(0).sample(train_examples, min(FEATURE_TEXTS, len(train_examples)))
    x = predictor.predict_logits([e.text for e in sample], features=True)[1]
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    return {k: np.sort((f / np.linalg.norm(f, axis=1, keepdims=True)) @ unit.T, axis=1)[:, -10]
            for k, f in features.items()}


def served_scores(predictor, logits, features):
    """{set: the score as the Predictor computes it when serving} for the Mahalanobis score."""
    predictor.out_of_scope_score = "mahalanobis"
    return {k: predictor.in_scope(logits[k], features[k]) for k in logits}


def evaluate(ckpt, in_examples, near, far, train_examples):
    from textclf.checkpoint import check_folder
    from textclf.predict import Predictor
    predictor = Predictor.from_checkpoint(ckpt)
    predictor.mahalanobis = fit_mahalanobis(predictor, train_examples)   # as train.calibrate fits it
    index = {label: i for i, label in enumerate(predictor.labels)}
    gold = np.array([index[e.label] for e in in_examples])
    texts = {"in": [e.text for e in in_examples], "near": near, **{f"far-{k}": v for k, v in far.items()}}
    outputs = {k: predictor.predict_logits(v, features=True) for k, v in texts.items()}
    logits, features = {k: v[0] for k, v in outputs.items()}, {k: v[1] for k, v in outputs.items()}
    t = predictor.temperature
    right = logits["in"].argmax(1) == gold
    result = {"temperature": t, "in_scope_accuracy": float(right.mean()),
              "served_score": NAMES[auto_score(check_folder(ckpt))], "scores": {}}
    curves = {}
    feature_based = {"mahalanobis": served_scores(predictor, logits, features),
                     "knn": knn_scores(predictor, train_examples, features)}
    for score in SCORES + DIAGNOSTIC:
        s = feature_based[score] if score in feature_based else {k: in_scope_score(v, score, t) for k, v in logits.items()}
        far_all = np.concatenate([s[k] for k in s if k.startswith("far-")])
        result["scores"][score] = {
            "near": open_set_metrics(s["in"], s["near"]),
            "far": open_set_metrics(s["in"], far_all),
            **{k: open_set_metrics(s["in"], s[k]) for k in s if k.startswith("far-")}}
        both = np.concatenate([s["in"], s["near"]])
        correct = np.concatenate([right, np.zeros(len(s["near"]), dtype=bool)])
        curves[score] = coverage_curve(both, correct)
    result["coverage_curves"] = curves
    return result


def plot(name, result, png, leave_out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for score, points in result["coverage_curves"].items():
        near = result["scores"][score]["near"]
        ax.plot([c for c, _ in points], [a for _, a in points], label=f"{score} (near AUROC {near['auroc']:.3f})")
    ax.set_xlabel("coverage (share of in-scope + left-out test texts answered)")
    ax.set_ylabel("accuracy of the answered (left-out ones count as wrong)")
    ax.set_title(f"{name}, Snips without {' and '.join(leave_out)}", fontsize=9)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def choose_pairs(labels, args):
    """The pairs to leave out in turn: --leave-out (or the one drawn with --seed) first, then --pairs - 1 more
    drawn with --seed from the rest."""
    first = args.leave_out.split(",") if args.leave_out else sorted(random.Random(args.seed).sample(labels, 2))
    assert len(first) == 2 and set(first) <= set(labels), first
    rest = [list(p) for p in itertools.combinations(sorted(labels), 2) if set(p) != set(first)]
    n = len(rest) + 1 if args.pairs is None else args.pairs
    if n > len(rest) + 1:
        raise SystemExit(f"--pairs: between 1 and {len(rest) + 1}, or all")
    random.Random(args.seed).shuffle(rest)   # one order for every N: --pairs N runs the first N of --pairs all
    return [sorted(first)] + rest[:n - 1]


def pair_name(leave_out):
    return "+".join(leave_out)


def summary(per_pair):
    """{model: {score: {mean/min near AUROC, mean near FPR@95, mean far AUROC, worst pair}}} over the pairs."""
    out = {}
    for name in next(iter(per_pair.values())):
        out[name] = {}
        for score in SCORES + DIAGNOSTIC:
            near = {p: r[name]["scores"][score]["near"] for p, r in per_pair.items()}
            far = [r[name]["scores"][score]["far"]["auroc"] for r in per_pair.values()]
            worst = min(near, key=lambda p: near[p]["auroc"])
            out[name][score] = {"near_auroc_mean": float(np.mean([m["auroc"] for m in near.values()])),
                                "near_fpr_at_95_tpr_mean": float(np.mean([m["fpr_at_95_tpr"] for m in near.values()])),
                                "far_auroc_mean": float(np.mean(far)),
                                "near_auroc_min": near[worst]["auroc"], "worst_pair": worst}
    return out


def pairs_table(per_pair, means, possible):
    names = list(next(iter(per_pair.values())))
    lines = ["", f"## Pair by pair ({len(per_pair)} of the {possible} pairs)", "",
             "Near AUROC and near FPR@95 of the score train.calibrate serves by default (--score auto: "
             + ", ".join(f"{n}: {served(per_pair, n)}" for n in names) + ") for each pair left out, then the mean "
             "over the pairs for every score.", "",
             "| left out | " + " | ".join(f"{n} near AUROC | {n} near FPR@95" for n in names) + " |",
             "| --- |" + " ---: | ---: |" * len(names)]
    for pair, r in per_pair.items():
        cells = [f"{r[n]['scores'][served(per_pair, n)]['near']['auroc']:.4f} | "
                 f"{r[n]['scores'][served(per_pair, n)]['near']['fpr_at_95_tpr']:.3f}" for n in names]
        lines.append(f"| {pair.replace('+', ' + ')} | " + " | ".join(cells) + " |")
    lines += ["", "| model | score | mean near AUROC | mean near FPR@95 | mean far AUROC | worst pair (near AUROC) |",
              "| --- | --- | ---: | ---: | ---: | --- |"]
    for name, by_score in means.items():
        for score, m in by_score.items():
            lines.append(f"| {name} | {score}{mark(score, served(per_pair, name))} | {m['near_auroc_mean']:.4f} | "
                         f"{m['near_fpr_at_95_tpr_mean']:.3f} | {m['far_auroc_mean']:.4f} | "
                         f"{m['worst_pair'].replace('+', ' + ')} ({m['near_auroc_min']:.4f}) |")
    return "\n".join(lines) + "\n"


def served(per_pair, name):
    """The score train.calibrate serves by default for model `name` (as this benchmark names it)."""
    return next(iter(per_pair.values()))[name]["served_score"]


def mark(score, served_score):
    return " (diagnostic)" if score in DIAGNOSTIC else " (served)" if score == served_score else ""


def plot_pairs(per_pair, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(next(iter(per_pair.values())))
    pairs = list(per_pair)
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(pairs) + 2), 4.5))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        score = served(per_pair, name)
        ax.bar(np.arange(len(pairs)) + i * width, [per_pair[p][name]["scores"][score]["near"]["auroc"] for p in pairs],
               width, label=f"{name} ({score})")
    ax.axhline(0.95, color="k", lw=0.8, ls="--", label="target 0.95")
    ax.set_xticks(np.arange(len(pairs)) + 0.4 - width / 2)
    ax.set_xticklabels([p.replace("+", "\n+ ") for p in pairs], rotation=90, fontsize=6)
    ax.set_ylim(0.5, 1.0)
    ax.set_ylabel("near out-of-scope AUROC")
    ax.set_title("Snips, two intents left out of training in turn", fontsize=9)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def table(results, leave_out, args):
    lines = [f"# Open-set: Snips without {' and '.join(leave_out)}", "",
             f"`{' '.join(['python -m benchmarks.open_set'] + sys.argv[1:])}`; {machine_line()}.", "",
             "Near: the test sentences of the two intents left out of training; far: SST-2 and R52 test texts "
             f"({args.far} each). FPR@95: out-of-scope texts accepted at the threshold keeping 95 % of in-scope ones.",
             "", "| model | score | near AUROC | near FPR@95 | far AUROC | far FPR@95 |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name, r in results.items():
        for score in SCORES + DIAGNOSTIC:
            s = r["scores"][score]
            lines.append(f"| {name} | {score}{mark(score, r['served_score'])} | {s['near']['auroc']:.4f} | {s['near']['fpr_at_95_tpr']:.3f} | "
                         f"{s['far']['auroc']:.4f} | {s['far']['fpr_at_95_tpr']:.3f} |")
    lines.append("")
    for name, r in results.items():
        lines.append(f"- {name}: in-scope test accuracy {r['in_scope_accuracy']:.4f} (5 intents), temperature "
                     f"{r['temperature']:.3f}")
    return "\n".join(lines) + "\n"


def run_pair(args, leave_out, far, runs):
    """Train (where no run exists) and evaluate every model with leave_out left out -> (results, near texts,
    in-scope test examples)."""
    data = runs / "data"
    near = split_data(args.data, set(leave_out), data)
    in_examples, _ = read_examples(data / "test.txt")
    from train.calibrate import calibrate
    train_examples = read_examples(data / "train.txt")[0]
    results = {}
    for name in args.models.split(","):
        ckpt = train(name, data, runs, args.retrain)
        calibrate(ckpt, read_examples(data / "valid.txt")[0])
        results[name] = evaluate(ckpt, in_examples, near, far, train_examples)
        print(pair_name(leave_out), name, json.dumps({s: round(v["near"]["auroc"], 4)
                                                      for s, v in results[name]["scores"].items()}), flush=True)
    return results, near, in_examples


def main(argv=None):
    args = parse_args(argv)
    started = time.time()
    examples, _ = read_examples(next(args.data.glob("train.*")))
    labels = sorted({e.label for e in examples})
    pairs = choose_pairs(labels, args)
    far = far_texts(args.far)
    per_pair = {}
    for i, leave_out in enumerate(pairs):
        # the first pair keeps the folder it always had; the others get one each
        runs = args.runs if i == 0 else args.runs / "pairs" / pair_name(leave_out)
        results, near, in_examples = run_pair(args, leave_out, far, runs)
        per_pair[pair_name(leave_out)] = results
        if i == 0:
            first, first_near, first_in = results, near, in_examples
    args.out.mkdir(parents=True, exist_ok=True)
    for name, r in first.items():
        plot(name, r, args.out / f"coverage-{name}.png", pairs[0])
    record = {"command": " ".join(["python -m benchmarks.open_set"] + sys.argv[1:]), "leave_out": pairs[0],
              "near_texts": len(first_near), "in_scope_texts": len(first_in), "far_texts": {k: len(v) for k, v in far.items()},
              "machine": machine(), "versions": versions(), "commit": git_commit(),
              "seconds": round(time.time() - started, 1), "results": first}
    text = table(first, pairs[0], args)
    if len(pairs) > 1:
        per_pair = {p: {n: {k: v for k, v in m.items() if k != "coverage_curves"} for n, m in r.items()}
                    for p, r in per_pair.items()}
        record["pairs"] = {"per_pair": per_pair, "mean": summary(per_pair)}
        text += pairs_table(per_pair, record["pairs"]["mean"], len(labels) * (len(labels) - 1) // 2)
        plot_pairs(per_pair, args.out / "pairs.png")
        text += "\n![near AUROC per pair](pairs.png)\n"
    (args.out / "open_set.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    (args.out / "open_set.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
