"""save_checkpoint() / load_checkpoint(): a self-contained folder of JSON, safetensors and tokenizer files.

Layout: config.json, labels.json, model.safetensors (or model.onnx for an ONNX export), tokenizer/,
transformer/config.json (transformer embeddings only), out_of_scope.safetensors (the Mahalanobis score's class
means and precision, when config.json's out_of_scope_score is mahalanobis), metrics.json and train_args.json
(for people).
Nothing is pickled, and loading checks every file it reads.
"""
import contextlib
import json
import logging
import os
import shutil
from pathlib import Path

import torch

from .config import ModelConfig, check_max_length, load_labels, read_json, save_labels
from .embeddings import TransformerEmbedding
from .errors import CheckpointError
from .model import SequenceClassifier, TextClassifier
from .tokenization import load_tokenizer

log = logging.getLogger(__name__)
WEIGHTS, ONNX_GRAPH = "model.safetensors", "model.onnx"
STATS_FILE = "out_of_scope.safetensors"   # the Mahalanobis out-of-scope score's statistics (textclf/mahalanobis.py)


def required_files(config):
    files = ["config.json", "labels.json", "tokenizer"]
    files.append(ONNX_GRAPH if config.runtime == "onnx" else WEIGHTS)
    if config.out_of_scope_score == "mahalanobis":
        files.append(STATS_FILE)
    if config.embedding == "transformer" and config.runtime != "onnx":
        files.append("transformer/config.json")
    return files


def check_folder(folder):
    """Read config.json and check that every file the model needs is present; returns the config."""
    folder = readable(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    config = ModelConfig.from_json_file(folder / "config.json")
    missing = [f for f in required_files(config) if not (folder / f).exists()]
    if missing:
        raise CheckpointError(f"checkpoint {folder} is incomplete: missing {', '.join(missing)}")
    backbone = folder / "transformer" / "config.json"
    if config.embedding == "transformer" and backbone.is_file():
        raw = read_json(backbone)
        if isinstance(raw, dict):
            check_max_length(config.max_length, raw, f"the backbone in {backbone}")
    return config


def _state_to_save(model):
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


def _load_state(model, state, path):
    expected = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected[:10])}{' ...' if len(unexpected) > 10 else ''}")
        raise CheckpointError(f"{path} does not match config.json ({'; '.join(parts)})")
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
             for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"{path} has tensors of the wrong shape: {'; '.join(wrong[:5])}")
    model.load_state_dict(state)


# ---- save / load
def save_checkpoint(folder, model, tokenizer, labels, metrics=None, train_args=None):
    """Write the checkpoint into a sibling folder (NAME.tmp), then swap it in: a crash at any point leaves a
    complete checkpoint under NAME (the old one or the new one), and a reader never sees half a folder."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    recover(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = model.config
    config.to_json_file(tmp / "config.json")
    save_labels(labels, tmp / "labels.json")
    tokenizer.save(tmp / "tokenizer")
    if config.embedding == "transformer":
        backbone_config = model.model.config if config.encoder == "head" else model.backbone.config
        if config.encoder == "head":   # the head's label names follow labels.json, the one source of them
            backbone_config.id2label = dict(enumerate(labels))
            backbone_config.label2id = {label: i for i, label in enumerate(labels)}
        backbone_config.save_pretrained(str(tmp / "transformer"))
    from safetensors.torch import save_file
    save_file(_state_to_save(model), str(tmp / WEIGHTS), metadata={"format": "pt"})
    for name, obj in (("metrics.json", metrics), ("train_args.json", train_args)):
        if obj is not None:
            (tmp / name).write_text(json.dumps(obj, indent=2, default=str) + "\n", encoding="utf-8")
    _swap_in(tmp, folder)
    shutil.rmtree(tmp, ignore_errors=True)   # now the old checkpoint, if there was one
    return folder


def _exchange(a, b):
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE). False where the system cannot."""
    import ctypes
    try:
        libc = ctypes.CDLL(None)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    done = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return done == 0


def _swap_in(tmp, folder):
    """tmp becomes folder; the old folder, if any, ends up at tmp."""
    if not folder.exists():
        tmp.rename(folder)
    elif not _exchange(tmp, folder):
        # two renames: between them NAME is missing and NAME.old holds the complete old checkpoint, which
        # loading reads (readable()) and the next save puts back (recover())
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        try:
            folder.rename(old)
        except OSError:   # a file system that cannot rename this folder: replace it as before
            shutil.rmtree(folder)
            tmp.rename(folder)
            return
        tmp.rename(folder)
        old.rename(tmp)


@contextlib.contextmanager
def built_beside(out, suffix):
    """A fresh folder OUT<suffix> to build a result in; when the block ends without an error it is swapped in as
    out (its parent made if needed); in any case the stage is gone afterwards (after a swap it holds the folder
    out replaced). A failure therefore leaves out as it was, never half built."""
    out = Path(out)
    stage = out.with_name(out.name + suffix)
    shutil.rmtree(stage, ignore_errors=True)
    try:
        yield stage
        out.parent.mkdir(parents=True, exist_ok=True)
        _swap_in(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def recover(folder):
    """For the writer: finish what a save that crashed between its two renames left (NAME missing, NAME.old
    complete) by putting NAME.old back."""
    folder = Path(folder)
    old = folder.with_name(folder.name + ".old")
    if not folder.exists() and old.is_dir():
        log.warning("%s was missing after an interrupted save; restoring it from %s", folder, old.name)
        old.rename(folder)


def readable(folder):
    """For readers: the folder, or NAME.old while a save is between its two renames (or crashed there).
    Readers never rename anything, so they cannot race a writer."""
    folder = Path(folder)
    old = folder.with_name(folder.name + ".old")
    if not folder.exists() and old.is_dir():
        log.warning("%s is missing (a save was interrupted); reading %s", folder, old.name)
        return old
    return folder


def build_model(folder, config):
    """An untrained model of the checkpoint's architecture (weights still to load)."""
    if config.encoder == "head":
        return SequenceClassifier.from_config_dir(config, Path(folder) / "transformer")
    if config.embedding == "transformer":
        embedding = TransformerEmbedding.from_config_dir(Path(folder) / "transformer", config.freeze_transformer)
        model = TextClassifier(config, embedding)
    else:
        model = TextClassifier.for_words(config)
    return model


def read_weights(path):
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None


def load_checkpoint(folder, device="cpu"):
    """-> (model in eval mode on device, tokenizer, labels). ONNX checkpoints are loaded by Predictor."""
    folder = readable(folder)
    config = check_folder(folder)
    if config.runtime == "onnx":
        raise CheckpointError(f"{folder} is an ONNX export; load it with textclf.Predictor")
    labels = load_labels(folder / "labels.json")
    if len(labels) != config.num_labels:
        raise CheckpointError(f"labels.json has {len(labels)} labels, config.json says num_labels={config.num_labels}")
    tokenizer = load_tokenizer(folder / "tokenizer", config.embedding, config.normalization)
    if config.embedding != "transformer" and len(tokenizer) != config.vocab_size:
        raise CheckpointError(f"tokenizer/vocab.txt has {len(tokenizer)} words, config.json says vocab_size={config.vocab_size}")
    model = build_model(folder, config)
    _load_state(model, read_weights(folder / WEIGHTS), folder / WEIGHTS)
    return model.to(device).eval(), tokenizer, labels
