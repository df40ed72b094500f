"""Two tokenizers behind one encode(): a word tokenizer (vocab.txt) and a Hugging Face tokenizer.

encode(texts, max_length) -> {"input_ids": (B, T) int64, "attention_mask": (B, T) int64}, padded to the
longest text in the batch (never to max_length) and truncated to max_length.
"""
import re
import unicodedata
from collections import Counter
from pathlib import Path

import torch

from .errors import CheckpointError

PAD, UNK = "[PAD]", "[UNK]"
_WORD = re.compile(r"[^\W_]+")   # runs of letters and digits; punctuation and apostrophes split


def normalize(texts, form):
    """Texts in Unicode normal form `form` (NFKC: full-width and compatibility characters as their plain
    letters); form "" leaves them as they are."""
    return [unicodedata.normalize(form, t) for t in texts] if form else list(texts)


def split_words(text):
    return _WORD.findall(text.lower())


def _pad(rows, pad_id=0):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask}


class WordTokenizer:
    """Lower-cased word tokenizer; id 0 is [PAD], id 1 is [UNK]."""

    normalization = ""   # set from config.json by load_tokenizer (and by training for a new model)

    def __init__(self, words):
        words = list(words)
        if words[:2] != [PAD, UNK]:
            words = [PAD, UNK] + [w for w in words if w not in (PAD, UNK)]
        self.words = words
        self.index = {w: i for i, w in enumerate(words)}
        if len(self.index) != len(words):
            raise CheckpointError("word vocabulary has duplicate entries")

    @classmethod
    def from_texts(cls, texts, min_count=1, keep=None):
        """Vocabulary from training texts: words seen min_count times, plus any word in `keep`."""
        counts = Counter(w for t in texts for w in split_words(t))
        words = [w for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
                 if c >= min_count or (keep is not None and w in keep)]
        return cls(words)

    def __len__(self):
        return len(self.words)

    def tokenize(self, text, max_length):
        ids = [self.index.get(w, 1) for w in split_words(text)][:max_length]
        return ids or [1]   # a text with no word still gets one position

    def encode(self, texts, max_length):
        return _pad([self.tokenize(t, max_length) for t in normalize(texts, self.normalization)])

    def save(self, folder):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "vocab.txt").write_text("\n".join(self.words) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder):
        path = Path(folder) / "vocab.txt"
        if not path.is_file():
            raise CheckpointError(f"{path} is missing")
        return cls(path.read_text(encoding="utf-8").rstrip("\n").split("\n"))


class HFTokenizer:
    """A Hugging Face fast tokenizer loaded from a local folder only."""
    normalization = ""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    @classmethod
    def load(cls, folder):
        from transformers import AutoTokenizer
        folder = Path(folder)
        if not (folder / "tokenizer_config.json").is_file():
            raise CheckpointError(f"{folder} holds no tokenizer (tokenizer_config.json is missing)")
        return cls(AutoTokenizer.from_pretrained(str(folder), local_files_only=True))

    def __len__(self):
        return len(self.tokenizer)

    def encode(self, texts, max_length):
        # right padding always: Predictor cuts a pass's columns at its longest text
        enc = self.tokenizer(normalize(texts, self.normalization), padding="longest", truncation=True, max_length=max_length,
                             return_tensors="pt", return_token_type_ids=False, padding_side="right")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def save(self, folder):
        self.tokenizer.save_pretrained(str(folder))


def load_tokenizer(folder, embedding, normalization=""):
    tokenizer = HFTokenizer.load(folder) if embedding == "transformer" else WordTokenizer.load(folder)
    tokenizer.normalization = normalization
    return tokenizer
