"""python -m benchmarks.exports CKPT --data DIR [--out results/exports]: export CKPT as int8, ONNX and with
layers removed, evaluate each on the test split in one run (accuracy, ms/example at batch 1, examples/s at
batch 32, size), and write exports.json and exports.md.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--data", default="data/snips")
    p.add_argument("--out", default="results/exports")
    p.add_argument("--remove-layers", default="2,3,4,5", help="layers dropped for the layer-removal variant")
    p.add_argument("--int8-scheme", choices=("per-channel", "per-tensor"), default="per-channel",
                   help="int8 weight scales: one per output row (default) or one per matrix")
    args = p.parse_args(argv)
    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    src = Path(args.checkpoint).resolve()
    variants = {"original": None, f"int8 {args.int8_scheme}": ["--int8", "--int8-scheme", args.int8_scheme],
                "onnx": ["--onnx"],
                f"removed {args.remove_layers}": ["--remove-layers", args.remove_layers]}
    rows = []
    for name, flags in variants.items():
        ckpt = src
        if flags:
            ckpt = out / name.replace(" ", "-").replace(",", "")
            subprocess.run([sys.executable, "-m", "train.export", "--checkpoint", str(src), "--out", str(ckpt),
                            *flags], cwd=ROOT, check=True)
        subprocess.run([sys.executable, "-m", "train.evaluate", "--checkpoint", str(ckpt), "--data", args.data,
                        "--out", str(out / "eval" / name.replace(" ", "-").replace(",", ""))], cwd=ROOT, check=True)
        ev = json.loads(next((out / "eval" / name.replace(" ", "-").replace(",", "")).glob("eval-*.json")).read_text())
        size = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file()
                   and f.name in ("model.safetensors", "model.onnx"))
        rows.append({"variant": name, "accuracy": ev["accuracy"], "macro_f1": ev["macro_f1"],
                     "ms_per_example_batch1": ev["ms_per_example_batch1"],
                     "examples_per_second_batch32": ev["examples_per_second_batch32"], "weights_mb": size / 1e6})
    (out / "exports.json").write_text(json.dumps({"checkpoint": str(src), "rows": rows}, indent=2) + "\n")
    lines = ["| variant | test accuracy | macro-F1 | ms/example, batch 1 | examples/s, batch 32 | weights MB |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['variant']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {r['ms_per_example_batch1']:.1f} | "
              f"{r['examples_per_second_batch32']:.1f} | {r['weights_mb']:.1f} |" for r in rows]
    (out / "exports.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
