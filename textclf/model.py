"""TextClassifier: embedding -> encoder -> dropout -> linear -> logits; SequenceClassifier: a Hugging Face
*ForSequenceClassification model with its own pooler and head (imported, or trained with --encoder head)."""
from torch import nn

from .config import check_max_length
from .embeddings import WordEmbedding
from .encoders import ENCODERS


class TextClassifier(nn.Module):
    def __init__(self, config, embedding):
        super().__init__()
        self.config = config
        self.embedding = embedding
        backbone = getattr(embedding, "model", None)
        if backbone is not None:   # a transformer: texts are truncated to max_length, which it must take
            check_max_length(config.max_length, backbone.config.to_dict())
        self.encoder = ENCODERS[config.encoder](embedding.output_dim, config)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(self.encoder.output_dim, config.num_labels)

    @property
    def backbone(self):
        """The transformer (a Hugging Face base model), or None for word embeddings."""
        return getattr(self.embedding, "model", None)

    @classmethod
    def for_words(cls, config, frozen_rows=None):
        return cls(config, WordEmbedding(config.vocab_size, config.embedding_dim, frozen_rows))

    def forward(self, input_ids, attention_mask, return_features=False):
        """Logits (B, num_labels); with return_features, (logits, the classifier layer's input (B, F))."""
        states = self.embedding(input_ids, attention_mask)        # (B, T, D)
        features = self.encoder(states, attention_mask)          # (B, F)
        logits = self.classifier(self.dropout(features))         # (B, num_labels)
        return (logits, features) if return_features else logits


class SequenceClassifier(nn.Module):
    """A Hugging Face *ForSequenceClassification model, called like TextClassifier: (input_ids, attention_mask)
    -> logits. Its pooler and head are the architecture's own (BERT's tanh pooler, RoBERTa's dense head,
    DistilBERT's pre_classifier, ...), so its probabilities are exactly those transformers computes."""

    def __init__(self, config, model):
        super().__init__()
        self.config = config
        self.model = model
        check_max_length(config.max_length, model.config.to_dict())

    @property
    def backbone(self):
        return self.model.base_model

    @classmethod
    def from_config_dir(cls, config, folder):
        """An untrained model of the architecture described by folder/config.json (weights still to load)."""
        from transformers import AutoConfig, AutoModelForSequenceClassification
        from .errors import CheckpointError
        try:
            hf_config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
            model = AutoModelForSequenceClassification.from_config(hf_config)
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"{folder}/config.json does not describe a sequence classifier: {e}") from None
        if hf_config.num_labels != config.num_labels:
            raise CheckpointError(f"{folder}/config.json has {hf_config.num_labels} labels, the checkpoint's "
                                  f"config.json says num_labels={config.num_labels}")
        return cls(config, model)

    def head_layer(self):
        """The last linear layer of the head (the one that writes the logits): its input are the features. Found
        once, then looked up by name."""
        name = getattr(self, "_head_name", None)
        if name is None:
            names = [n for n, m in self.model.named_modules()
                     if isinstance(m, nn.Linear) and m.out_features == self.config.num_labels]
            if not names:
                from .errors import CheckpointError
                raise CheckpointError(f"{type(self.model).__name__} has no linear layer with {self.config.num_labels} "
                                      "outputs to read features from")
            name = self._head_name = names[-1]
        return self.model.get_submodule(name)

    def forward(self, input_ids, attention_mask, return_features=False):
        """Logits (B, num_labels); with return_features, (logits, the input of the head's last linear layer)."""
        if not return_features:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        seen = []
        hook = self.head_layer().register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
        try:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        finally:
            hook.remove()
        return logits, seen[-1]
