"""python -m train.export --checkpoint CKPT --out DIR [--remove-layers 4,5] [--int8 | --onnx]

Every export is another checkpoint folder that archive.sh and the handler serve as they are; its
config.json records what was done (removed_layers, quantization, runtime).
"""
import argparse
import copy
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from textclf.checkpoint import load_checkpoint, quantize, save_checkpoint
from textclf.embeddings import remove_layers
from textclf.errors import CheckpointError
from textclf.predict import Predictor

log = logging.getLogger("train.export")
CHECK_TEXTS = ["play some jazz by miles davis", "what will the weather be like tomorrow in paris",
               "book a table for two", "x", "rate this book five stars out of six " * 8]


def layer_list(text):
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def parse_args(argv):
    p = argparse.ArgumentParser(description="Write a lighter variant of a checkpoint.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="new checkpoint folder")
    p.add_argument("--remove-layers", type=layer_list, default=[],
                   help="comma-separated transformer layer indices to drop")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--int8", action="store_true", help="dynamic int8 quantization of the Linear layers (CPU)")
    p.add_argument("--int8-scheme", choices=("per-channel", "per-tensor"), default="per-channel",
                   help="--int8: one scale per output row (default; keeps accuracy better) or one per matrix")
    kind.add_argument("--onnx", action="store_true", help="an ONNX graph run by onnxruntime")
    p.add_argument("--opset", type=int, default=17)
    return p.parse_args(argv)


def export_onnx(model, tokenizer, out, opset):
    """Trace the model to out/model.onnx with dynamic batch and sequence axes."""
    import warnings
    enc = tokenizer.encode(CHECK_TEXTS[:2], model.config.max_length)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (enc["input_ids"], enc["attention_mask"]), str(out / "model.onnx"), dynamo=False,
            input_names=["input_ids", "attention_mask"], output_names=["logits"], opset_version=opset,
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                          "logits": {0: "batch"}})


def run(args):
    src = Path(args.checkpoint)
    out = Path(args.out)
    if out.resolve() == src.resolve():
        raise CheckpointError("--out must differ from --checkpoint")
    model, tokenizer, labels = load_checkpoint(src)
    if model.config.quantization:
        raise CheckpointError(f"{src} is already quantized; export from the float checkpoint")
    reference = Predictor(model, tokenizer, labels, model.config.max_length).predict_proba(CHECK_TEXTS)
    config = copy.deepcopy(model.config)
    drop = args.remove_layers
    if drop:
        if config.embedding != "transformer":
            raise CheckpointError("--remove-layers needs a transformer checkpoint")
        # record indices of the original model: map the current positions back through earlier removals
        before = model.embedding.model.config.num_hidden_layers + len(config.removed_layers)
        kept = [i for i in range(before) if i not in set(config.removed_layers)]
        remove_layers(model.embedding.model, drop)
        config.removed_layers = sorted(config.removed_layers + [kept[i] for i in drop])
    if args.int8:
        config.quantization = "dynamic-int8-per-channel" if args.int8_scheme == "per-channel" else "dynamic-int8"
        model = quantize(model, config.quantization)
    model.config = config
    meta = json.loads((src / "metrics.json").read_text()) if (src / "metrics.json").is_file() else {}
    meta = {"exported_from": str(src), "source_metrics": meta}
    save_checkpoint(out, model, tokenizer, labels, meta)
    if args.onnx:
        config.runtime = "onnx"
        config.to_json_file(out / "config.json")
        export_onnx(model.eval(), tokenizer, out, args.opset)
        (out / "model.safetensors").unlink()
        shutil.rmtree(out / "transformer", ignore_errors=True)
    exported = Predictor.from_checkpoint(out).predict_proba(CHECK_TEXTS)
    diff = float(np.abs(exported - reference).max())
    meta["max_probability_difference_vs_source"] = diff
    (out / "metrics.json").write_text(json.dumps(meta, indent=2) + "\n")
    if (args.onnx or not (args.int8 or drop)) and diff > 1e-4:
        raise CheckpointError(f"the export disagrees with the source model (max probability difference {diff:.2e})")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {size / 1e6:.1f} MB, max probability difference vs source {diff:.2e}")
    return 0


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        return run(args)
    except CheckpointError as e:
        log.error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
