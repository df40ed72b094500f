"""TextClassifier: embedding -> encoder -> dropout -> linear -> logits."""
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

    @classmethod
    def for_words(cls, config, frozen_rows=None):
        return cls(config, WordEmbedding(config.vocab_size, config.embedding_dim, frozen_rows))

    def forward(self, input_ids, attention_mask):
        states = self.embedding(input_ids, attention_mask)        # (B, T, D)
        features = self.encoder(states, attention_mask)          # (B, F)
        return self.classifier(self.dropout(features))           # (B, num_labels) logits
