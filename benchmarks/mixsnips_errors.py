"""Where a multi-label MixSNIPS model goes wrong, utterance by utterance, beside a single-label Snips model.

    python -m benchmarks.mixsnips_errors --multi runs/mixsnips-minilm-cls-e3/checkpoint-best \\
        --single runs/snips-minilm-cls/checkpoint-best --out results/mixsnips-errors

data/mixsnips/test.txt joins two or three Snips test utterances; data/build_mixsnips.py rebuilds which ones (the
same seeded draw; checked against the file, text by text). The multi-label model labels each joined text (at its
per-label thresholds) and the single-label model each utterance alone. Each wrong text is counted as missed (a
gold intent left out), extra (one added) or swapped (both), and as "single-label wrong too" where the
single-label model also gets one of its utterances wrong: those errors are in the utterances themselves (Snips'
own ambiguities, e.g. "play the song X" filed under SearchCreativeWork), the rest come from reading several
intents at once. The single-label equivalent: the subset accuracy of a model that errs exactly where the
single-label model does (on every text holding an utterance it gets wrong, and nowhere else). It is not a ceiling:
the multi-label model gets some of those texts right.
Writes OUT/errors.json and OUT/errors.md.
"""
import argparse
import importlib.util
import json
import random
import sys
import time
from pathlib import Path

from benchmarks.common import ROOT, git_commit, machine, machine_line, versions


def _builder():
    """data/build_mixsnips.py (a script beside the data, standard library only) as a module."""
    spec = importlib.util.spec_from_file_location("build_mixsnips", ROOT / "data" / "build_mixsnips.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_mixsnips = _builder()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--multi", type=Path, required=True, help="a multi-label checkpoint trained on data/mixsnips")
    p.add_argument("--single", type=Path, required=True, help="a single-label checkpoint trained on data/snips")
    p.add_argument("--snips", type=Path, default=ROOT / "data" / "snips")
    p.add_argument("--mixsnips", type=Path, default=ROOT / "data" / "mixsnips")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "mixsnips-errors")
    return p.parse_args(argv)


def read_test_mixes(snips, mixsnips):
    """The test mixes as build_mixsnips makes them, after checking they are data/mixsnips/test.txt's lines."""
    lines = (mixsnips / "test.txt").read_text(encoding="utf-8").splitlines()
    mixes = build_mixsnips.mix(build_mixsnips.read_snips(snips / "test.txt"), len(lines),
                               random.Random("mixsnips-test"))
    for number, (line, (text, labels, _)) in enumerate(zip(lines, mixes), start=1):
        if line != f"{text}\t{','.join(labels)}":
            raise SystemExit(f"{mixsnips / 'test.txt'}:{number}: not what data/build_mixsnips.py builds from "
                             f"{snips / 'test.txt'}; rebuild it first")
    return mixes


def analyse(multi, single, mixes):
    """-> (summary dict, [wrong text records])."""
    answers = multi.predict([text for text, _, _ in mixes], top_k=len(multi.labels))   # every score
    utterances = sorted({u for _, _, parts in mixes for _, u in parts})
    alone = dict(zip(utterances, (a["label"] for a in single.predict(utterances))))
    wrong, kinds = [], {"missed": 0, "extra": 0, "swapped": 0}
    in_utterance = 0
    for (text, gold, parts), answer in zip(mixes, answers):
        predicted = {x["label"] for x in answer["labels"]}
        if predicted == set(gold):
            continue
        missed, extra = sorted(set(gold) - predicted), sorted(predicted - set(gold))
        kind = "swapped" if missed and extra else ("missed" if missed else "extra")
        kinds[kind] += 1
        bad = [{"utterance": u, "intent": i, "single_label_answer": alone[u]} for i, u in parts if alone[u] != i]
        in_utterance += bool(bad)
        wrong.append({"text": text, "gold": list(gold), "predicted": sorted(predicted), "kind": kind,
                      "scores": {x["label"]: round(x["score"], 3) for x in answer["top_k"] if x["score"] >= 0.05},
                      "single_label_wrong": bad})
    texts_with_bad = sum(any(alone[u] != i for i, u in parts) for _, _, parts in mixes)
    drawn = [alone[u] == i for _, _, parts in mixes for i, u in parts]
    n = len(mixes)
    summary = {"texts": n, "subset_accuracy": 1 - len(wrong) / n, "wrong": len(wrong), **kinds,
               "wrong_with_a_single_label_error": in_utterance,
               "wrong_from_reading_several_intents": len(wrong) - in_utterance,
               "texts_holding_a_single_label_error": texts_with_bad,
               "single_label_equivalent_subset_accuracy": 1 - texts_with_bad / n,
               "distinct_utterances": len(utterances),
               "single_label_accuracy_on_drawn_utterances": sum(drawn) / len(drawn),
               "single_label_accuracy_on_distinct_utterances":
                   sum(alone[u] == i for u, i in {u: i for _, _, p in mixes for i, u in p}.items()) / len(utterances)}
    return summary, wrong


def table(summary, wrong, args):
    s = summary
    lines = [f"# Where {args.multi} goes wrong on MixSNIPS test", "",
             f"`{' '.join(['python -m benchmarks.mixsnips_errors'] + sys.argv[1:])}`; {machine_line()}.", "",
             f"Single-label model: `{args.single}`, on each utterance alone.", "",
             "| | texts |", "| --- | ---: |",
             f"| test texts | {s['texts']} |",
             f"| right (every intent) | {s['texts'] - s['wrong']} ({s['subset_accuracy']:.4f}) |",
             f"| wrong | {s['wrong']}: {s['missed']} missed an intent, {s['extra']} added one, {s['swapped']} swapped one |",
             f"| wrong, and the single-label model gets one of its utterances wrong too | {s['wrong_with_a_single_label_error']} |",
             f"| wrong from reading several intents at once (each utterance right alone) | {s['wrong_from_reading_several_intents']} |",
             f"| texts holding an utterance the single-label model gets wrong | {s['texts_holding_a_single_label_error']} |",
             f"| single-label equivalent: subset accuracy if exactly those were wrong | {s['single_label_equivalent_subset_accuracy']:.4f} |", "",
             f"The single-label model is right on {s['single_label_accuracy_on_distinct_utterances']:.4f} of the "
             f"{s['distinct_utterances']} distinct test utterances the mixes use "
             f"({s['single_label_accuracy_on_drawn_utterances']:.4f} counting each draw).", "",
             "## The wrong texts", "", "Scores of 0.05 and over.", "",
             "| text | kind | gold | predicted | scores | single-label wrong on |", "| --- | --- | --- | --- | --- | --- |"]
    for w in wrong:
        bad = "; ".join(f"\"{b['utterance']}\" ({b['intent']} read as {b['single_label_answer']})"
                        for b in w["single_label_wrong"]) or "-"
        scores = ", ".join(f"{k} {v}" for k, v in w["scores"].items())
        lines.append(f"| {w['text']} | {w['kind']} | {', '.join(w['gold'])} | {', '.join(w['predicted'])} | {scores} | {bad} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    started = time.time()
    from textclf.predict import Predictor
    multi, single = Predictor.from_checkpoint(args.multi), Predictor.from_checkpoint(args.single)
    if not multi.multi_label or single.multi_label:
        raise SystemExit("--multi takes a multi-label checkpoint and --single a single-label one")
    summary, wrong = analyse(multi, single, read_test_mixes(args.snips, args.mixsnips))
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"command": " ".join(["python -m benchmarks.mixsnips_errors"] + sys.argv[1:]),
              "multi": str(args.multi), "single": str(args.single), "summary": summary, "wrong": wrong,
              "machine": machine(), "versions": versions(), "commit": git_commit(),
              "seconds": round(time.time() - started, 1)}
    (args.out / "errors.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    (args.out / "errors.md").write_text(table(summary, wrong, args), encoding="utf-8")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
