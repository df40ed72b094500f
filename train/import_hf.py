"""python -m train.import_hf --model HF_FOLDER --out CKPT: a Hugging Face *ForSequenceClassification folder
(fine-tuned with Trainer, AutoTrain, or saved from the Hub) as a checkpoint folder of this project.

The model keeps its own pooler and head (encoder "head"), so train.evaluate, train.predict, train.export,
train.optimize, archive.sh and the handler serve it unchanged, with the probabilities transformers computes.
Labels come from id2label; safetensors only. `python -m train.export --hf OUT` writes it back.
"""
import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from textclf.checkpoint import built_beside, save_checkpoint
from textclf.config import ModelConfig, position_limit
from textclf.errors import CheckpointError
from textclf.model import SequenceClassifier
from textclf.predict import Predictor
from textclf.tokenization import HFTokenizer

from .hf import CHECK_TEXTS, PARITY, reference_probabilities

log = logging.getLogger("train.import_hf")
CONVERT = ('python -c "from transformers import AutoModelForSequenceClassification as M; '
           "M.from_pretrained('{0}').save_pretrained('{0}')\"")


def parse_args(argv):
    p = argparse.ArgumentParser(description="Import a Hugging Face sequence classifier as a checkpoint folder.")
    p.add_argument("--model", required=True, help="local folder holding config.json, model.safetensors and a tokenizer")
    p.add_argument("--out", required=True, help="new checkpoint folder")
    p.add_argument("--max-length", type=int, default=0,
                   help="tokens per text (default: the tokenizer's model_max_length, at most 512 and the "
                        "model's position embeddings)")
    return p.parse_args(argv)


def check_weights(folder):
    """Safetensors only: a folder holding only PyTorch pickles is refused with the command that converts it."""
    if (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file():
        return
    pickled = sorted(p.name for p in folder.glob("pytorch_model*.bin"))
    if pickled:
        raise CheckpointError(
            f"{folder} holds only {', '.join(pickled)} (a pickle, which this project never loads). To fix, convert "
            f"it once with transformers, in an environment you trust: {CONVERT.format(folder)}")
    raise CheckpointError(f"{folder} holds no model.safetensors")


def check_config(folder, hf_config):
    """Refuse what is not a single-label sequence classifier, naming what it is."""
    architectures = getattr(hf_config, "architectures", None) or []
    if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise CheckpointError(f"{folder} is a {', '.join(architectures)}, not a *ForSequenceClassification model")
    problem = getattr(hf_config, "problem_type", None)
    if problem == "regression" or hf_config.num_labels == 1:
        raise CheckpointError(f"{folder} is a regression model (problem_type {problem!r}, {hf_config.num_labels} "
                              "output); this project serves classifiers only")


def labels_of(folder, hf_config):
    id2label = {int(k): str(v) for k, v in (hf_config.id2label or {}).items()}
    if sorted(id2label) != list(range(hf_config.num_labels)):
        raise CheckpointError(f"{folder}/config.json: id2label must name every id 0..{hf_config.num_labels - 1}")
    labels = [id2label[i].strip() for i in range(hf_config.num_labels)]
    if not all(labels) or len(set(labels)) != len(labels):
        raise CheckpointError(f"{folder}/config.json: id2label has empty or duplicate names: {labels}")
    if all(label == f"LABEL_{i}" for i, label in enumerate(labels)):
        log.warning("%s names its labels LABEL_0..LABEL_%d (transformers' defaults): set id2label to serve names",
                    folder, len(labels) - 1)
    return labels


def max_length_for(args, tokenizer, hf_config):
    limit = position_limit(hf_config.to_dict())
    if args.max_length:
        return args.max_length   # checked against the positions when the model is built
    candidates = [512, tokenizer.tokenizer.model_max_length, limit]
    return min(int(c) for c in candidates if c and c < 1e9)


def load(folder):
    """-> (the transformers model in eval mode, its config); missing or unexpected weights are refused."""
    from transformers import AutoConfig, AutoModelForSequenceClassification
    try:
        hf_config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{folder}/config.json could not be read by transformers: {e}") from None
    check_config(folder, hf_config)
    check_weights(folder)
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True, output_loading_info=True)
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"transformers could not load {folder}: {e}") from None
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise CheckpointError(f"{folder} lacks trained weights for {', '.join(missing[:6])}"
                              f"{' ...' if len(missing) > 6 else ''}: it is not a fine-tuned classifier")
    return model.float().eval(), hf_config


def run(args):
    folder, out = Path(args.model), Path(args.out)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder} holds no config.json (a Hugging Face model folder is expected)")
    if out.resolve() == folder.resolve():
        raise CheckpointError("--out must differ from --model")
    model, hf_config = load(folder)
    labels = labels_of(folder, hf_config)
    tokenizer = HFTokenizer.load(folder)
    multi_label = getattr(hf_config, "problem_type", None) == "multi_label_classification"
    config = ModelConfig(embedding="transformer", encoder="head", num_labels=len(labels),
                         max_length=max_length_for(args, tokenizer, hf_config), dropout=0.0,
                         normalization="", multi_label=multi_label).validate()   # texts as transformers reads them
    classifier = SequenceClassifier(config, model)
    reference = reference_probabilities(model, tokenizer.tokenizer, CHECK_TEXTS, config.max_length, multi_label)
    # built beside --out and swapped in only once it answers as transformers does
    with built_beside(out, ".import") as stage:
        save_checkpoint(stage, classifier, tokenizer, labels, metrics={"imported_from": str(folder.resolve())},
                        train_args={"import_hf": {"model": str(folder.resolve()), "max_length": config.max_length,
                                                  "architectures": hf_config.architectures}})
        diff = float(np.abs(Predictor.from_checkpoint(stage).predict_proba(CHECK_TEXTS) - reference).max())
        if diff > PARITY:
            raise CheckpointError(f"the imported checkpoint disagrees with transformers (max probability "
                                  f"difference {diff:.1e} > {PARITY:.0e}); please report this model")
    print(f"{out}: {type(model).__name__}, {len(labels)} labels, max_length {config.max_length}, "
          f"max probability difference vs transformers {diff:.1e}")
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
