"""python -m train.predict --checkpoint CKPT [TEXT ...]: label and score per text.

Without texts it reads lines from standard input until EOF and prints the top 3 for each.
"""
import argparse
import json
import sys

from textclf.errors import CheckpointError
from textclf.predict import Predictor


def main(argv=None):
    p = argparse.ArgumentParser(description="Classify texts with a checkpoint.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--top-k", type=int, default=None, help="labels to show per text (default 1, or 3 interactively)")
    p.add_argument("--json", action="store_true", help="print one JSON object per text")
    p.add_argument("texts", nargs="*")
    args = p.parse_args(argv)
    try:
        predictor = Predictor.from_checkpoint(args.checkpoint, args.device)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def show(texts, k):
        for text, result in zip(texts, predictor.predict(texts, top_k=k)):
            if args.json:
                print(json.dumps({"text": text, **result}, ensure_ascii=False))
            elif k == 1:
                print(f"{result['label']}\t{result['score']:.4f}\t{text}")
            else:
                ranked = "  ".join(f"{r['label']} {r['score']:.4f}" for r in result["top_k"])
                print(f"{text}\n  {ranked}")
        sys.stdout.flush()

    if args.texts:
        show(args.texts, args.top_k or 1)
        return 0
    if sys.stdin.isatty():
        print("type a sentence and press Enter (Ctrl-D to quit)", file=sys.stderr)
    for line in sys.stdin:
        text = line.strip()
        if text:
            show([text], args.top_k or 3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
