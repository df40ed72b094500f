"""Build data/mixsnips, a MixSNIPS-style multi-intent data set, from data/snips (standard library only).

The recipe of MixSNIPS (Qin et al. 2020, "AGIF: An Adaptive Graph-Interactive Framework for Joint Multiple Intent
Detection and Slot Filling"): join two or three utterances of different intents with " and " or ", ". For each
split, with random.Random(f"mixsnips-{split}"): N examples, each 2 or 3 (even odds) distinct intents, one utterance
of each drawn from the same Snips split, joined with a connector drawn for each gap (" and " or ", "); the label
field is the intents sorted and joined with ",". Writes `text<TAB>label1,label2` lines, UTF-8, LF line ends.

    python data/build_mixsnips.py [--train 6000] [--valid 500] [--test 700] [--src data/snips] [--dst data/mixsnips]
"""
import argparse
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPLITS = ("train", "valid", "test")
SIZES = {"train": 6000, "valid": 500, "test": 700}
CONNECTORS = (" and ", ", ")


def read_snips(path):
    """{intent: [utterance, ...]} in file order; CRLF, a BOM and the spaces before the tab stripped."""
    by_intent = {}
    for number, line in enumerate(Path(path).read_bytes().decode("utf-8-sig").split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split("\t")]
        if len(fields) != 2 or not all(fields):
            raise ValueError(f"{path}:{number}: expected `utterance<TAB>intent`")
        by_intent.setdefault(fields[1], []).append(fields[0])
    return by_intent


def mix(by_intent, n, rng):
    """n examples as (text, sorted intents, ((intent, utterance), ...) in text order)."""
    intents = sorted(by_intent)
    examples = []
    for _ in range(n):
        chosen = rng.sample(intents, rng.choice((2, 3)))
        parts = tuple((intent, rng.choice(by_intent[intent])) for intent in chosen)
        text = parts[0][1]
        for _, utterance in parts[1:]:
            text += rng.choice(CONNECTORS) + utterance
        examples.append((text, tuple(sorted(chosen)), parts))
    return examples


def build(src, dst, sizes=SIZES):
    """Write dst/{split}.txt for each split in sizes from src/{split}.txt -> {split: examples as mix() returns}."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    built = {}
    for split, n in sizes.items():
        examples = mix(read_snips(Path(src) / f"{split}.txt"), n, random.Random(f"mixsnips-{split}"))
        lines = "".join(f"{text}\t{','.join(labels)}\n" for text, labels, _ in examples)
        (dst / f"{split}.txt").write_bytes(lines.encode("utf-8"))
        built[split] = examples
    return built


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", type=Path, default=HERE / "snips", help="Snips folder with train/valid/test.txt")
    p.add_argument("--dst", type=Path, default=HERE / "mixsnips", help="output folder")
    for split in SPLITS:
        p.add_argument(f"--{split}", type=int, default=SIZES[split], metavar="N", help=f"{split} examples")
    args = p.parse_args(argv)
    built = build(args.src, args.dst, {split: getattr(args, split) for split in SPLITS})
    for split, examples in built.items():
        print(f"{args.dst / f'{split}.txt'}: {len(examples)} examples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
