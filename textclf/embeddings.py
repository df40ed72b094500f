"""Token embeddings: word vectors (GloVe-initialised or random) or a BERT-family transformer."""
import torch
from torch import nn

from .errors import CheckpointError


class WordEmbedding(nn.Module):
    """Word vectors; with freeze, rows that came pretrained stay fixed while the others learn."""

    def __init__(self, vocab_size, dim, frozen_rows=None):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.output_dim = dim
        # a persistent buffer, so a reloaded checkpoint freezes the same rows when fine-tuned again
        rows = torch.zeros(vocab_size, dtype=torch.bool) if frozen_rows is None else frozen_rows
        self.register_buffer("frozen_rows", rows)
        self.embed.weight.register_hook(self._mask_grad)

    def _mask_grad(self, grad):
        return grad.masked_fill(self.frozen_rows.unsqueeze(1), 0.0)

    def forward(self, input_ids, attention_mask):
        return self.embed(input_ids)  # (B, T, D)


def _layer_list(model):
    """The ModuleList of encoder layers of a BERT-family model, and the config field counting them."""
    for path, field in (("encoder.layer", "num_hidden_layers"), ("transformer.layer", "n_layers"),
                        ("encoder.layers", "num_hidden_layers"), ("layers", "num_hidden_layers")):
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, nn.ModuleList):
            return path, obj, field
    raise CheckpointError(
        f"cannot remove layers from {type(model).__name__}: it has no separate list of encoder layers "
        "(ALBERT shares one layer across depth); supported: BERT, RoBERTa, ELECTRA, DistilBERT, MiniLM")


def remove_layers(model, indices):
    """Drop encoder layers by index (0-based, as iclassifier's --bert_remove_layers) in place."""
    path, layers, field = _layer_list(model)
    bad = [i for i in indices if not 0 <= i < len(layers)]
    if bad:
        raise CheckpointError(f"cannot remove layers {bad}: the model has layers 0..{len(layers) - 1}")
    drop = set(indices)
    kept = nn.ModuleList(layer for i, layer in enumerate(layers) if i not in drop)
    if not len(kept):
        raise CheckpointError("removing every layer leaves nothing to run")
    parent = model
    for part in path.split(".")[:-1]:
        parent = getattr(parent, part)
    setattr(parent, path.split(".")[-1], kept)
    setattr(model.config, field, len(kept))
    return model


class TransformerEmbedding(nn.Module):
    """Token states of a Hugging Face encoder; frozen means feature-based (no gradients, no dropout)."""

    def __init__(self, model, frozen=False):
        super().__init__()
        self.model = model
        self.frozen = frozen
        self.output_dim = model.config.hidden_size
        if frozen:
            self.model.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, folder, removed_layers=(), frozen=False):
        from transformers import AutoModel
        model = AutoModel.from_pretrained(str(folder), local_files_only=True)
        if removed_layers:
            remove_layers(model, removed_layers)
        return cls(model, frozen)

    @classmethod
    def from_config_dir(cls, folder, frozen=False):
        from transformers import AutoConfig, AutoModel
        try:
            config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{folder}/config.json could not be read as a transformer config: {e}") from None
        return cls(AutoModel.from_config(config), frozen)

    def train(self, mode=True):
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def forward(self, input_ids, attention_mask):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state  # (B, T, H)
