"""Checkpoints <-> Hugging Face *ForSequenceClassification folders: what import and export share.

Export (`python -m train.export --checkpoint CKPT --hf DIR`) writes a folder that
AutoModelForSequenceClassification.from_pretrained(DIR) loads with the same probabilities:
- encoder "head" (imported, or trained with --encoder head): the model as it is;
- encoder "cls" on a BERT backbone (MiniLM included): BertForSequenceClassification whose pooler is a
  near-identity, tanh(eps * x) / eps with eps = POOLER_EPS, and whose classifier is ours scaled by 1 / eps;
  the probabilities differ from ours by less than PARITY. Fine-tuning such a folder further starts from that
  unusual pooler: train with --encoder head for a plain one;
- anything else (word embeddings, CNN and DenseNet encoders, CLS on other backbones) is refused by name.
The checkpoint's temperature is folded into the last linear layer (logits / T) and its NFKC normalisation into
the tokenizer's normalizer, so transformers gives the same probabilities; an out-of-scope threshold has no
Hugging Face form and stays behind (a warning says so).
"""
import copy
import logging
from pathlib import Path

import numpy as np
import torch

from textclf.checkpoint import built_beside, check_folder, load_checkpoint, readable
from textclf.errors import CheckpointError
from textclf.predict import Predictor

log = logging.getLogger(__name__)
CHECK_TEXTS = ["play some jazz by miles davis", "what will the weather be like tomorrow in paris",
               "book a table for two", "x", "rate this book five stars out of six " * 8]
PARITY = 1e-5       # largest probability difference allowed between a checkpoint and transformers (fp32)
POOLER_EPS = 1e-4   # tanh(eps x) / eps = x (1 - (eps x)^2 / 3 + ...): relative error ~3e-7 for |x| <= 10


@torch.inference_mode()
def reference_probabilities(model, tokenizer, texts, max_length, multi_label=False):
    """transformers' own answer, one text at a time (no padding): softmax of the logits (sigmoid for a
    multi-label model), float32 numpy."""
    rows = []
    for text in texts:
        enc = tokenizer([text], truncation=True, max_length=max_length, return_tensors="pt")
        logits = model(**enc).logits.float()[0]
        rows.append((logits.sigmoid() if multi_label else logits.softmax(-1)).numpy())
    return np.stack(rows)


def _bert_with_identity_pooler(model, labels):
    """Our [CLS] -> linear head on a BERT backbone as a BertForSequenceClassification (see the module doc)."""
    from transformers import BertForSequenceClassification
    backbone = model.backbone
    if backbone.config.model_type != "bert" or getattr(backbone, "pooler", None) is None:
        raise CheckpointError(
            f"encoder 'cls' exports to Hugging Face only on a BERT backbone with a pooler (this one is "
            f"{backbone.config.model_type!r}); train with --encoder head to export any backbone")
    config = copy.deepcopy(backbone.config)
    config.num_labels = len(labels)
    config.architectures = ["BertForSequenceClassification"]
    hf = BertForSequenceClassification(config).eval()
    state = {k: v for k, v in backbone.state_dict().items()}
    hidden = config.hidden_size
    state["pooler.dense.weight"] = torch.eye(hidden) * POOLER_EPS
    state["pooler.dense.bias"] = torch.zeros(hidden)
    hf.bert.load_state_dict(state)
    hf.classifier.weight.data.copy_(model.classifier.weight.data / POOLER_EPS)
    hf.classifier.bias.data.copy_(model.classifier.bias.data)
    return hf


def _fold_temperature(hf, num_labels, temperature):
    """logits / T, exactly: the head's last linear layer (the one with num_labels outputs) divided by T."""
    last = [m for m in hf.modules() if isinstance(m, torch.nn.Linear) and m.out_features == num_labels][-1]
    with torch.no_grad():
        last.weight.div_(temperature)
        if last.bias is not None:
            last.bias.div_(temperature)


def _fold_normalization(tokenizer, form):
    """The checkpoint's Unicode normalisation ahead of the tokenizer's own normalizer (tokenizer.json)."""
    from tokenizers import normalizers
    backend = tokenizer.backend_tokenizer
    steps = [getattr(normalizers, form)()] + ([backend.normalizer] if backend.normalizer is not None else [])
    backend.normalizer = normalizers.Sequence(steps)


def to_hf_model(model, labels):
    """A transformers *ForSequenceClassification equal to model (a loaded checkpoint), labels named."""
    config = model.config
    if config.embedding != "transformer":
        raise CheckpointError(f"a {config.embedding} + {config.encoder} checkpoint has no Hugging Face "
                              "form: only transformer checkpoints (encoder head, or cls on BERT) export with --hf")
    if config.encoder == "head":
        hf = copy.deepcopy(model.model)
    elif config.encoder == "cls":
        hf = _bert_with_identity_pooler(model, labels)
    else:
        raise CheckpointError(f"encoder {config.encoder!r} has no Hugging Face head to map to: only encoders "
                              "head and cls (on BERT) export with --hf")
    hf.config.id2label = dict(enumerate(labels))
    hf.config.label2id = {label: i for i, label in enumerate(labels)}
    hf.config.problem_type = "multi_label_classification" if config.multi_label else "single_label_classification"
    if config.temperature != 1.0 and not config.multi_label:
        _fold_temperature(hf, len(labels), config.temperature)
    return hf


def export_hf(checkpoint, out):
    """Write checkpoint as a Hugging Face folder at out; checked by loading it back with transformers."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    src, out = readable(checkpoint), Path(out)
    config = check_folder(src)
    if config.runtime != "torch" or config.precision != "fp32":
        raise CheckpointError(f"{src} is an export ({config.runtime}, {config.precision}); export the float "
                              "checkpoint to Hugging Face")
    model, tokenizer, labels = load_checkpoint(src)
    hf = to_hf_model(model, labels)
    ours = Predictor(model, tokenizer, labels, config.max_length, config=config).predict_proba(CHECK_TEXTS)
    if config.out_of_scope_threshold is not None:
        log.warning("%s has an out-of-scope threshold (%s on %s): transformers has no such rule, so the Hugging "
                    "Face folder answers every text with a label", src, config.out_of_scope_threshold,
                    config.out_of_scope_score)
    with built_beside(out, ".export") as stage:
        hf.save_pretrained(str(stage))
        tokenizer.tokenizer.model_max_length = config.max_length   # transformers then truncates where we do
        if config.normalization:
            _fold_normalization(tokenizer.tokenizer, config.normalization)
        tokenizer.save(stage)
        loaded = AutoModelForSequenceClassification.from_pretrained(str(stage), local_files_only=True).eval()
        theirs = reference_probabilities(loaded, AutoTokenizer.from_pretrained(str(stage), local_files_only=True),
                                         CHECK_TEXTS, config.max_length, config.multi_label)
        diff = float(np.abs(theirs - ours).max())
        if diff > PARITY:
            raise CheckpointError(f"the Hugging Face folder disagrees with the checkpoint (max probability "
                                  f"difference {diff:.1e} > {PARITY:.0e})")
    print(f"{out}: {type(hf).__name__}, {len(labels)} labels, max probability difference vs the checkpoint "
          f"{diff:.1e}; load it with AutoModelForSequenceClassification.from_pretrained({str(out)!r})")
    return 0
