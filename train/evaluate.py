"""python -m train.evaluate --checkpoint CKPT --data DIR: accuracy, per-class scores, speed, confusion PNG."""
import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from textclf.errors import CheckpointError, DataError
from textclf.predict import Predictor

from textclf.data import COLUMNS, find_split, label_set, read_examples
from .metrics import scores

log = logging.getLogger("train.evaluate")


def parse_args(argv):
    p = argparse.ArgumentParser(description="Evaluate a checkpoint on a labelled split.")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder")
    p.add_argument("--data", required=True, help="data folder holding SPLIT.txt or SPLIT.tsv")
    p.add_argument("--split", default="test", help="which file of the data folder (default: test)")
    p.add_argument("--columns", default="auto", choices=COLUMNS)
    p.add_argument("--skip-empty", action="store_true", help="drop lines whose text is empty instead of stopping")
    p.add_argument("--label-separator", default=",", help="multi-label checkpoints: what separates a line's labels")
    p.add_argument("--out", help="folder for evaluation JSON, confusion PNG and errors (default: beside the checkpoint)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--cuda-precision", choices=("fp16", "bf16", "fp32"), default="fp16",
                   help="on a CUDA device: the weights' type, as the GPU handler runs them (default fp16)")
    p.add_argument("--latency-examples", type=int, default=200, help="examples timed one at a time")
    p.add_argument("--worst", type=int, default=50, help="how many of the most confident errors to list")
    return p.parse_args(argv)


def measure_speed(predictor, texts, latency_examples=200, batch_size=32):
    """ms/example at batch 1 (median of single calls) and examples/s at batch_size, tokenization included."""
    sample = texts[:latency_examples]
    predictor.predict_proba(sample[:8], batch_size=1)   # warm-up
    times = []
    for t in sample:
        started = time.perf_counter()
        predictor.predict_proba([t], batch_size=1)
        times.append(time.perf_counter() - started)
    # batches in random order, as a server sees them (predict_proba alone would sort by length)
    shuffled = list(texts)
    np.random.default_rng(0).shuffle(shuffled)
    predictor.predict_proba(shuffled[:batch_size], batch_size=batch_size)
    started = time.perf_counter()
    for start in range(0, len(shuffled), batch_size):
        predictor.predict_proba(shuffled[start: start + batch_size], batch_size=batch_size)
    elapsed = time.perf_counter() - started
    return {"ms_per_example_batch1": 1000 * float(np.median(times)),
            "ms_per_example_batch1_mean": 1000 * float(np.mean(times)),
            f"examples_per_second_batch{batch_size}": len(texts) / elapsed}


def evaluate(predictor, examples, path):
    index = {lab: i for i, lab in enumerate(predictor.labels)}
    for e in examples:
        for label in label_set(e):
            if label not in index:
                raise DataError(path, e.line, f"label {label!r} is not one of the checkpoint's labels")
    if predictor.multi_label:
        return evaluate_multi_label(predictor, examples, index)
    logits, in_scope = predictor.scored_logits([e.text for e in examples])
    probs = predictor.probabilities(logits)
    pred = probs.argmax(axis=1)
    gold = [index[e.label] for e in examples]
    result = scores(gold, pred, predictor.labels)
    result["calibration"] = calibration_scores(predictor, logits, gold, in_scope)
    wrong = [i for i, e in enumerate(examples) if pred[i] != index[e.label]]
    wrong.sort(key=lambda i: -probs[i, pred[i]])
    errors = [{"line": examples[i].line, "text": examples[i].text, "gold": examples[i].label,
               "predicted": predictor.labels[pred[i]], "score": float(probs[i, pred[i]])} for i in wrong]
    return result, errors


def evaluate_multi_label(predictor, examples, index):
    """Multi-label scores at the checkpoint's thresholds, and the most confident false positives and negatives."""
    from .loop import multi_hot
    from .metrics import multilabel_scores
    gold = multi_hot(examples, index)
    probs = predictor.predict_proba([e.text for e in examples])
    result = multilabel_scores(gold, probs, predictor.thresholds, predictor.labels)
    pred = probs >= predictor.thresholds[None, :]
    errors = []
    for i, j in zip(*np.nonzero(pred != gold.astype(bool))):
        kind = "false positive" if pred[i, j] else "false negative"
        errors.append({"line": examples[i].line, "text": examples[i].text, "gold": list(examples[i].label),
                       "label": predictor.labels[j], "error": kind, "score": float(probs[i, j]),
                       "threshold": float(predictor.thresholds[j]),
                       # how confident the mistake was: the distance from the threshold, on the wrong side
                       "confidence": float(abs(probs[i, j] - predictor.thresholds[j]))})
    errors.sort(key=lambda e: -e["confidence"])
    return result, errors


def calibration_scores(predictor, logits, gold, in_scope):
    """ECE (15 bins) and NLL at T = 1 and at the checkpoint's temperature; with a reject threshold, the share
    of texts answered (coverage) and the accuracy of those answers (in_scope: their Predictor.reject_scores)."""
    from .calibration import ece, nll, softmax
    before, after = ece(softmax(logits), gold), ece(predictor.probabilities(logits), gold)
    out = {"temperature": predictor.temperature, "ece_before": before[0], "ece_after": after[0],
           "nll_before": nll(logits, gold), "nll_after": nll(logits, gold, predictor.temperature),
           "bins_before": before[1], "bins_after": after[1]}
    if predictor.out_of_scope_threshold is not None:
        accepted = in_scope >= predictor.out_of_scope_threshold
        right = predictor.probabilities(logits).argmax(1) == np.asarray(gold)
        out.update(out_of_scope_score=predictor.out_of_scope_score,
                   out_of_scope_threshold=predictor.out_of_scope_threshold, coverage=float(accepted.mean()),
                   accepted_accuracy=float(right[accepted].mean()) if accepted.any() else None)
    return out


def report(result, speed, labels):
    if "micro_f1" in result:
        auc = result["mean_roc_auc"]
        lines = [f"micro-F1 {result['micro_f1']:.4f}", f"macro-F1 {result['macro_f1']:.4f}",
                 f"subset accuracy {result['accuracy']:.4f} ({result['correct']}/{result['total']})",
                 f"Hamming loss {result['hamming_loss']:.4f}",
                 f"mean ROC-AUC {auc:.4f}" if auc is not None else "mean ROC-AUC -",
                 f"{'label':<28} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}"]
        for lab in labels:
            c = result["per_class"][lab]
            lines.append(f"{lab:<28} {c['precision']:>9.4f} {c['recall']:>9.4f} {c['f1']:>9.4f} {c['support']:>8}")
        lines.append(f"{speed['ms_per_example_batch1']:.2f} ms/example at batch 1 (median), "
                     f"{speed['examples_per_second_batch32']:.1f} examples/s at batch 32")
        return "\n".join(lines)
    lines = [f"accuracy {result['accuracy']:.4f} ({result['correct']}/{result['total']})",
             f"macro-F1 {result['macro_f1']:.4f}",
             f"{'label':<28} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}"]
    for lab in labels:
        c = result["per_class"][lab]
        lines.append(f"{lab:<28} {c['precision']:>9.4f} {c['recall']:>9.4f} {c['f1']:>9.4f} {c['support']:>8}")
    c = result["calibration"]
    lines.append(f"ECE (15 bins) {c['ece_before']:.4f} at T = 1 -> {c['ece_after']:.4f} at T = {c['temperature']:.3f}; "
                 f"NLL {c['nll_before']:.4f} -> {c['nll_after']:.4f}")
    if "coverage" in c:
        lines.append(f"out-of-scope threshold {c['out_of_scope_threshold']:.4f} ({c['out_of_scope_score']}): "
                     f"{c['coverage']:.1%} of texts answered, "
                     f"accuracy of those {c['accepted_accuracy']:.4f}")
    lines.append(f"{speed['ms_per_example_batch1']:.2f} ms/example at batch 1 (median), "
                 f"{speed['examples_per_second_batch32']:.1f} examples/s at batch 32")
    return "\n".join(lines)


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        path = find_split(args.data, args.split, True)
        predictor = Predictor.from_checkpoint(args.checkpoint, args.device, args.threads or None,
                                              args.cuda_precision)
        examples, _ = read_examples(path, args.columns, args.skip_empty, predictor.multi_label,
                                    args.label_separator, allow_no_label=predictor.multi_label)
        result, errors = evaluate(predictor, examples, path)
    except (DataError, CheckpointError) as e:
        log.error("%s", e)
        return 2
    speed = measure_speed(predictor, [e.text for e in examples], args.latency_examples)
    print(report(result, speed, predictor.labels))
    ckpt = Path(args.checkpoint)
    out = Path(args.out) if args.out else ckpt.parent
    out.mkdir(parents=True, exist_ok=True)
    stem = f"eval-{ckpt.name}-{args.split}"
    summary = {"checkpoint": str(ckpt), "data": str(path), "device": args.device, "precision": predictor.precision,
               "threads": torch.get_num_threads(), **result, **speed}
    (out / f"{stem}.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / f"{stem}-errors.jsonl").write_text(
        "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in errors[: args.worst]), encoding="utf-8")
    if predictor.multi_label:
        from .plots import plot_per_label
        plot_per_label(result["per_class"], out / f"{stem}-per-label.png",
                       f"{ckpt.parent.name}/{ckpt.name}, {path.name}: micro-F1 {result['micro_f1']:.4f}")
        print(f"wrote {out / (stem + '.json')}, {stem}-per-label.png, {stem}-errors.jsonl")
        return 0
    from .plots import plot_confusion, plot_reliability
    plot_confusion(result["confusion"], predictor.labels, out / f"{stem}-confusion.png",
                   f"{ckpt.parent.name}/{ckpt.name}\n{path.name}: accuracy {result['accuracy']:.4f}")
    c = result["calibration"]
    plot_reliability((c["ece_before"], c["bins_before"]), (c["ece_after"], c["bins_after"]),
                     out / f"{stem}-reliability.png", f"{ckpt.parent.name}/{ckpt.name}, {path.name}: "
                     f"temperature {c['temperature']:.3f}")
    print(f"wrote {out / (stem + '.json')}, {stem}-confusion.png, {stem}-reliability.png, {stem}-errors.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
