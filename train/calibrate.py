"""python -m train.calibrate --checkpoint CKPT --data DIR [--target-precision P | --threshold X | --no-threshold]

Fits the temperature that makes the checkpoint's probabilities mean what they say (softmax(logits / T), T
minimising the negative log-likelihood on the valid split) and, optionally, the out-of-scope threshold: below
it an answer says "out_of_scope" (label null) instead of naming a class. Both are written into the
checkpoint's config.json, which every variant and the handler read. Training runs this on checkpoint-best.

--target-precision P: the lowest threshold whose in-scope precision on valid (the accuracy of the answers it
accepts) reaches P. --threshold X sets one by hand, --no-threshold removes it; --score chooses what is
thresholded (probability: the calibrated top probability; energy: T * logsumexp(logits / T); mahalanobis: minus
the squared Mahalanobis distance of the classifier layer's input to the nearest class mean, fitted on up to
--fit-texts texts of DIR's train split and stored as out_of_scope.safetensors; auto: mahalanobis for transformer
checkpoints, energy for word-embedding ones).
Without a valid file in DIR, the examples training held out of train are used (as train.optimize does), and
the Mahalanobis score is fitted on the rest.
A multi-label checkpoint gets per-label decision thresholds instead (each label's best F1 on valid, or
--threshold for all): they are its reject rule, a text over none of them has no label.
"""
import argparse
import json
import logging
import os
import random
import sys
from pathlib import Path

import numpy as np

from textclf.checkpoint import STATS_FILE, check_folder, readable
from textclf.config import OUT_OF_SCOPE_SCORES, ModelConfig
from textclf.data import COLUMNS, label_set
from textclf.errors import CheckpointError, DataError
from textclf.mahalanobis import Mahalanobis
from textclf.predict import Predictor

from .calibration import ece, fit_temperature, nll, softmax, threshold_for_precision

log = logging.getLogger("train.calibrate")
# --score auto, by embedding: the best served score in benchmarks/open_set.py (mean near and far AUROC and near
# FPR@95 over the 21 leave-two-out pairs of Snips, results/open-set/): Mahalanobis for MiniLM, energy for the GloVe
# CNN (whose Mahalanobis score is far worse)
AUTO_SCORES = {"transformer": "mahalanobis", "glove": "energy", "random": "energy"}
FIT_TEXTS = 20000   # training texts (a seeded sample of them beyond this) the Mahalanobis score is fitted on


def auto_score(config):
    return AUTO_SCORES[config.embedding]


def parse_args(argv):
    p = argparse.ArgumentParser(description="Fit the temperature and the out-of-scope threshold of a checkpoint.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="data folder whose valid split is fitted on")
    p.add_argument("--split", default="valid")
    p.add_argument("--columns", default="auto", choices=COLUMNS)
    p.add_argument("--device", default="cpu")
    rule = p.add_mutually_exclusive_group()
    rule.add_argument("--target-precision", type=float, help="choose the threshold for this in-scope precision")
    rule.add_argument("--threshold", type=float, help="set the threshold by hand (on the --score scale)")
    rule.add_argument("--no-threshold", action="store_true", help="remove the threshold: every answer in scope")
    p.add_argument("--score", choices=("auto",) + OUT_OF_SCOPE_SCORES, default="auto",
                   help="what the threshold applies to; auto: mahalanobis for transformer checkpoints, energy for "
                        "word-embedding ones (the best for each over results/open-set's 21 leave-two-out pairs)")
    p.add_argument("--fit-texts", type=int, default=FIT_TEXTS,
                   help="--score mahalanobis: at most this many training texts (a seeded sample) to fit it on")
    p.add_argument("--keep-temperature", action="store_true", help="fit nothing; only set the threshold")
    args = p.parse_args(argv)
    if args.target_precision is not None and not 0 < args.target_precision <= 1:
        p.error("--target-precision must be in (0, 1]")
    if args.fit_texts < 1:
        p.error("--fit-texts must be at least 1")
    return args


def calibrate(folder, examples, device="cpu", target_precision=None, score="auto", threshold=None,
              keep_threshold=True, fit=True, fit_examples=None, fit_texts=FIT_TEXTS):
    """Fit the temperature (fit) and choose the threshold on `examples`, write them into folder/config.json
    -> a summary {temperature, nll/ece before and after, threshold, coverage, ...}. fit_examples: the training
    examples a Mahalanobis score is fitted on (at most fit_texts of them)."""
    folder = readable(folder)
    config = check_folder(folder)
    if config.multi_label:
        return tune_thresholds(folder, config, examples, device, threshold)
    score = auto_score(config) if score == "auto" else score
    setting = target_precision is not None or threshold is not None
    predictor = Predictor.from_checkpoint(folder, device, cuda_precision="fp32")
    index = {label: i for i, label in enumerate(predictor.labels)}
    if setting and score == "mahalanobis":
        if not fit_examples:
            raise ValueError("the mahalanobis score is fitted on training examples: pass fit_examples")
        predictor.mahalanobis = fit_mahalanobis(predictor, fit_examples, fit_texts)
        predictor.mahalanobis.save(folder / STATS_FILE)
    gold = np.array([index[e.label] for e in examples])
    with_features = (setting and score == "mahalanobis") or config.out_of_scope_score == "mahalanobis"
    logits, features = predictor.predict_logits([e.text for e in examples], features=True) if with_features \
        else (predictor.predict_logits([e.text for e in examples]), None)
    temperature = fit_temperature(logits, gold) if fit else config.temperature
    predictor.temperature = temperature
    probs = predictor.probabilities(logits)
    summary = {"examples": len(examples), "temperature": temperature,
               "nll_before": nll(logits, gold), "nll_after": nll(logits, gold, temperature),
               "ece_before": ece(softmax(logits), gold)[0],
               "ece_after": ece(probs, gold)[0]}
    config.temperature = temperature
    if target_precision is not None:
        predictor.out_of_scope_score = score
        threshold = threshold_for_precision(predictor.in_scope(logits, features), probs.argmax(1) == gold,
                                            target_precision)
        if threshold is None:
            log.warning("no threshold reaches precision %s on these %d examples: none set", target_precision,
                        len(examples))
        summary["target_precision"] = target_precision
    if setting:
        config.out_of_scope_score, config.out_of_scope_threshold = score, threshold
    elif not keep_threshold:
        config.out_of_scope_threshold = None
    if config.out_of_scope_threshold is not None:
        predictor.out_of_scope_score = config.out_of_scope_score
        predictor.out_of_scope_threshold = config.out_of_scope_threshold
        accepted = predictor.in_scope(logits, features) >= config.out_of_scope_threshold
        right = probs.argmax(1) == gold
        summary.update(coverage=float(accepted.mean()),
                       accepted_precision=float(right[accepted].mean()) if accepted.any() else None)
    summary.update(out_of_scope_score=config.out_of_scope_score, out_of_scope_threshold=config.out_of_scope_threshold)
    write_config(folder, config)
    log.info("calibrated %s on %d examples: temperature %.3f, NLL %.4f -> %.4f, ECE %.4f -> %.4f; out-of-scope "
             "threshold %s", folder, len(examples), temperature, summary["nll_before"], summary["nll_after"],
             summary["ece_before"], summary["ece_after"], config.out_of_scope_threshold)
    return summary


def fit_mahalanobis(predictor, examples, limit=FIT_TEXTS):
    """The Mahalanobis score fitted on the features of (a seeded sample of at most `limit` of) examples."""
    if len(examples) > limit:
        examples = random.Random(0).sample(list(examples), limit)
    index = {label: i for i, label in enumerate(predictor.labels)}
    _, features = predictor.predict_logits([e.text for e in examples], features=True)
    try:
        stats = Mahalanobis.fit(features, [index[e.label] for e in examples], len(predictor.labels))
    except ValueError as e:
        raise CheckpointError(f"cannot fit the mahalanobis score: {e} among the {len(examples)} training texts") from None
    log.info("fitted the mahalanobis score on %d training texts (%d features)", len(examples), stats.dim)
    return stats


def tune_thresholds(folder, config, examples, device="cpu", threshold=None):
    """Multi-label: per-label decision thresholds that maximise each label's F1 on `examples` (0.5 for a label
    they never hold), or `threshold` for every label; written into config.json. They are also the reject rule:
    a text over none of them gets no label."""
    from .calibration import best_f1_threshold
    from .loop import multi_hot
    from .metrics import multilabel_scores
    predictor = Predictor.from_checkpoint(folder, device, cuda_precision="fp32")
    index = {label: i for i, label in enumerate(predictor.labels)}
    gold = multi_hot(examples, index)
    probs = predictor.predict_proba([e.text for e in examples])
    before = multilabel_scores(gold, probs, predictor.thresholds, predictor.labels)
    if threshold is not None:
        thresholds = [float(threshold)] * len(predictor.labels)
    else:
        thresholds = [best_f1_threshold(probs[:, j], gold[:, j]) for j in range(len(predictor.labels))]
    config.thresholds = thresholds
    write_config(folder, config)
    after = multilabel_scores(gold, probs, thresholds, predictor.labels)
    log.info("thresholds of %s on %d examples: %s; valid micro-F1 %.4f -> %.4f", folder, len(examples),
             ", ".join(f"{label} {t:.3f}" for label, t in zip(predictor.labels, thresholds)),
             before["micro_f1"], after["micro_f1"])
    return {"examples": len(examples), "thresholds": dict(zip(predictor.labels, thresholds)),
            "micro_f1_before": before["micro_f1"], "micro_f1_after": after["micro_f1"],
            "subset_accuracy_after": after["accuracy"]}


def write_config(folder, config):
    """config.json replaced in one rename: a reader sees the old file or the new one."""
    tmp = Path(folder) / "config.json.tmp"
    config.to_json_file(tmp)
    ModelConfig.from_json_file(tmp)   # what is written must read back
    os.replace(tmp, Path(folder) / "config.json")


def check_labels(path, examples, labels):
    for e in examples:
        for label in label_set(e):
            if label not in labels:
                raise DataError(path, e.line, f"label {label!r} is not one of the checkpoint's labels")


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    from .data import train_split, valid_split
    try:
        folder = readable(args.checkpoint)
        config = check_folder(folder)
        path, examples = valid_split(args.data, args.split, args.columns, folder)
        labels = set(json.loads((folder / "labels.json").read_text(encoding="utf-8")))
        check_labels(path, examples, labels)
        fit_examples = None
        score = auto_score(config) if args.score == "auto" else args.score
        if not config.multi_label and score == "mahalanobis" and (args.target_precision is not None
                                                                  or args.threshold is not None):
            fit_path, fit_examples = train_split(args.data, args.columns, folder)
            check_labels(fit_path, fit_examples, labels)
        summary = calibrate(folder, examples, args.device, args.target_precision, args.score,
                            args.threshold, keep_threshold=not args.no_threshold, fit=not args.keep_temperature,
                            fit_examples=fit_examples, fit_texts=args.fit_texts)
    except (DataError, CheckpointError) as e:
        log.error("%s", e)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
