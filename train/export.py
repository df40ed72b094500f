"""python -m train.export --checkpoint CKPT --out DIR [--remove-layers 4,5] [--onnx] [--fuse] [--int8] [--bf16]
python -m train.export --checkpoint CKPT --hf DIR

--hf writes a Hugging Face folder that AutoModelForSequenceClassification.from_pretrained loads (train/hf.py).

Every export is another checkpoint folder that archive.sh and the handler serve as they are; its
config.json records what was done (removed_layers, runtime, onnx_fusions, quantization, precision).
--fuse and --int8 imply --onnx: int8 is ONNX Runtime's dynamic quantization of the graph's matrix products.
`python -m train.optimize` builds these variants, measures them on this CPU and keeps the fastest.
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

from textclf.checkpoint import (ONNX_GRAPH, STATS_FILE, WEIGHTS, built_beside, check_folder, load_checkpoint, readable,
                                save_checkpoint)
from textclf.embeddings import remove_layers
from textclf.errors import CheckpointError
from textclf.machine import cpu_flags
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
    p.add_argument("--out", help="new checkpoint folder")
    p.add_argument("--hf", metavar="DIR",
                   help="instead: a Hugging Face *ForSequenceClassification folder, for transformers' own tools")
    p.add_argument("--remove-layers", type=layer_list, default=[],
                   help="comma-separated transformer layer indices to drop")
    p.add_argument("--onnx", action="store_true", help="an ONNX graph run by onnxruntime")
    p.add_argument("--fuse", action="store_true",
                   help="transformers: ONNX Runtime's graph fusions (attention, layer norm, GELU); implies --onnx")
    p.add_argument("--int8", action="store_true",
                   help="ONNX Runtime dynamic int8 of the matrix products (CPU); implies --onnx")
    p.add_argument("--int8-scheme", choices=("per-channel", "per-tensor"), default="per-channel",
                   help="--int8: one scale per output row (default; keeps accuracy better) or one per matrix")
    p.add_argument("--int8-weights", choices=("auto", "8bit", "7bit"), default="auto",
                   help="--int8: 7-bit weights avoid the overflow of AVX2's int8 kernels; auto: 7 bit where "
                        "this CPU has no VNNI")
    p.add_argument("--bf16", action="store_true",
                   help="run the PyTorch model under bfloat16 autocast (fast on CPUs with AVX-512 BF16 or AMX)")
    p.add_argument("--opset", type=int, default=17)
    args = p.parse_args(argv)
    if bool(args.out) == bool(args.hf):
        p.error("give either --out (a lighter checkpoint) or --hf (a Hugging Face folder)")
    if args.hf and (args.remove_layers or args.onnx or args.fuse or args.int8 or args.bf16):
        p.error("--hf writes the checkpoint as it is: export lighter variants with --out")
    args.onnx = args.onnx or args.fuse or args.int8
    if args.bf16 and args.onnx:
        p.error("--bf16 applies to the PyTorch runtime; it does not combine with --onnx, --fuse or --int8")
    return args


def has_vnni(flags=None):
    flags = cpu_flags() if flags is None else flags
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


def has_bf16(flags=None):
    flags = cpu_flags() if flags is None else flags
    return bool(flags & {"avx512_bf16", "amx_bf16"})


class _WithFeatures(torch.nn.Module):
    """The model with two outputs, logits and the classifier layer's input: what the graph returns."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids, attention_mask, return_features=True)


def export_onnx(model, tokenizer, out, opset):
    """Trace the model to out/model.onnx with dynamic batch and sequence axes; outputs logits and features (the
    classifier layer's input, which the Mahalanobis out-of-scope score reads)."""
    import warnings
    enc = tokenizer.encode(CHECK_TEXTS[:2], model.config.max_length)
    if model.config.embedding == "transformer":
        # the plain attention ops trace into the pattern ONNX Runtime's attention fusion recognises; the
        # result is the same as with scaled_dot_product_attention
        model.backbone.set_attn_implementation("eager")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _WithFeatures(model), (enc["input_ids"], enc["attention_mask"]), str(out / "model.onnx"), dynamo=False,
            input_names=["input_ids", "attention_mask"], output_names=["logits", "features"], opset_version=opset,
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                          "logits": {0: "batch"}, "features": {0: "batch"}})


class quiet_logs:
    """ONNX Runtime's optimizer and quantizer log every step at INFO, some on the root logger."""

    def __enter__(self):
        self.levels = {name: logging.getLogger(name).level for name in ("", "onnx_model", "onnx_model_bert",
                                                                          "fusion_utils")}
        for name in self.levels:
            logging.getLogger(name).setLevel(logging.ERROR)

    def __exit__(self, *exc):
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)


def fuse_onnx(path, backbone):
    """Rewrite path with ONNX Runtime's transformer fusions -> {fused op: count}."""
    from onnxruntime.transformers.optimizer import optimize_model
    with quiet_logs():
        optimized = optimize_model(str(path), model_type="bert", num_heads=backbone.num_attention_heads,
                                   hidden_size=backbone.hidden_size)
        optimized.save_model_to_file(str(path))
        return {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}


def quantize_onnx(path, per_channel=True, reduce_range=False):
    """Rewrite path with ONNX Runtime's dynamic int8 quantization of MatMul, Attention and Gather weights."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    tmp = path.with_name(path.stem + ".int8.onnx")
    with quiet_logs():
        quantize_dynamic(str(path), str(tmp), per_channel=per_channel, reduce_range=reduce_range,
                         weight_type=QuantType.QInt8, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    tmp.replace(path)


def onnx_step(what, step, *args):
    """An ONNX Runtime graph step; its failure becomes a CheckpointError naming the step."""
    try:
        return step(*args)
    except (CheckpointError, KeyboardInterrupt):
        raise
    except Exception as e:   # onnxruntime's optimizer and quantizer raise many types of their own
        raise CheckpointError(f"ONNX Runtime could not {what} the graph: {type(e).__name__}: {e}") from None


def quantization_name(args):
    seven = args.int8_weights == "7bit" or (args.int8_weights == "auto" and not has_vnni())
    return "ort-dynamic-int8" + ("-per-channel" if args.int8_scheme == "per-channel" else "") + ("-7bit" if seven else "")


def run(args):
    src = Path(args.checkpoint)
    out = Path(args.out)
    if out.resolve() == src.resolve():
        raise CheckpointError("--out must differ from --checkpoint")
    source_config = check_folder(readable(src))
    if source_config.runtime != "torch":
        raise CheckpointError(f"{src} is already an export ({source_config.runtime}"
                              f"{', ' + source_config.quantization if source_config.quantization else ''}); "
                              "export from the float checkpoint")
    model, tokenizer, labels = load_checkpoint(src)
    if model.config.precision != "fp32":
        raise CheckpointError(f"{src} is a {model.config.precision} export; export from the float checkpoint")
    if args.fuse and model.config.embedding != "transformer":
        raise CheckpointError("--fuse needs a transformer checkpoint (word-embedding models have nothing to fuse)")
    reference = Predictor(model, tokenizer, labels, model.config.max_length, config=model.config).predict_proba(
        CHECK_TEXTS)
    config = copy.deepcopy(model.config)
    drop = args.remove_layers
    if drop:
        if config.embedding != "transformer":
            raise CheckpointError("--remove-layers needs a transformer checkpoint")
        # record indices of the original model: map the current positions back through earlier removals
        before = model.backbone.config.num_hidden_layers + len(config.removed_layers)
        kept = [i for i in range(before) if i not in set(config.removed_layers)]
        remove_layers(model.backbone, drop)
        config.removed_layers = sorted(config.removed_layers + [kept[i] for i in drop])
        if config.out_of_scope_score == "mahalanobis":
            # the Mahalanobis score was fitted on the features of all the layers: it does not hold for fewer
            log.warning("removing layers changes the features %s's mahalanobis out-of-scope score was fitted on: "
                        "the export has no out-of-scope threshold. Fit one on it with `python -m train.calibrate "
                        "--checkpoint %s --data DIR --target-precision P`", src, out)
            config.out_of_scope_score, config.out_of_scope_threshold = "probability", None
    if args.bf16:
        if not has_bf16():
            log.warning("this CPU has no AVX-512 BF16 or AMX: bf16 runs emulated here, likely slower than fp32")
        config.precision = "bf16"
    model.config = config
    meta = json.loads((src / "metrics.json").read_text()) if (src / "metrics.json").is_file() else {}
    meta = {"exported_from": str(src), "source_metrics": meta}
    # built beside --out and swapped in only when complete and checked: a failure leaves no half export
    with built_beside(out, ".export") as stage:
        save_checkpoint(stage, model, tokenizer, labels, meta)
        if config.out_of_scope_score == "mahalanobis":   # the fitted score travels with the model it was fitted on
            shutil.copyfile(readable(src) / STATS_FILE, stage / STATS_FILE)
        if args.onnx:
            export_onnx(model.eval(), tokenizer, stage, args.opset)
            if args.fuse:
                meta["onnx_fused_ops"] = onnx_step("fuse", fuse_onnx, stage / ONNX_GRAPH, model.backbone.config)
                config.onnx_fusions = True
            if args.int8:
                config.quantization = quantization_name(args)
                if config.out_of_scope_score == "mahalanobis" and config.out_of_scope_threshold is not None:
                    log.warning("int8 moves the features the mahalanobis out-of-scope score reads: with the "
                                "statistics of %s the threshold answers fewer texts here (README). To fit them on "
                                "this variant's own features and keep the threshold: `python -m train.calibrate "
                                "--checkpoint %s --data DIR --score mahalanobis --threshold %s --keep-temperature` "
                                "(train.optimize does this for the variant it chooses)", src, out,
                                config.out_of_scope_threshold)
                onnx_step("quantize", quantize_onnx, stage / ONNX_GRAPH, args.int8_scheme == "per-channel",
                          config.quantization.endswith("-7bit"))
            config.runtime = "onnx"
            config.to_json_file(stage / "config.json")
            (stage / WEIGHTS).unlink()
            shutil.rmtree(stage / "transformer", ignore_errors=True)
        exported = Predictor.from_checkpoint(stage).predict_proba(CHECK_TEXTS)
        diff = float(np.abs(exported - reference).max())
        meta["max_probability_difference_vs_source"] = diff
        (stage / "metrics.json").write_text(json.dumps(meta, indent=2) + "\n")
        if not (args.int8 or args.bf16 or drop) and diff > 1e-4:
            raise CheckpointError(f"the export disagrees with the source model (max probability difference {diff:.2e})")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {size / 1e6:.1f} MB, max probability difference vs source {diff:.2e}")
    return 0


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        if args.hf:
            from .hf import export_hf
            return export_hf(args.checkpoint, args.hf)
        return run(args)
    except CheckpointError as e:
        log.error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
