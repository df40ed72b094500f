"""The Mahalanobis out-of-scope score: how far a text's features (the input of the classifier layer) lie from the
nearest class mean, under one covariance shared by the classes (Lee et al., 2018). Higher = more in scope: the
score is minus the smallest squared distance.

train.calibrate fits it on the training texts (Mahalanobis.fit) and stores it beside the weights as
out_of_scope.safetensors (class means and the shared precision matrix); the Predictor loads it and scores the
features every runtime returns beside the logits. Over Snips' 21 leave-two-out pairs it tells unseen intents
from seen ones better than any score of the logits for transformer checkpoints (results/open-set/).
"""
import os
from pathlib import Path

import numpy as np
import torch

from .checkpoint import read_weights
from .errors import CheckpointError

RIDGE = 1e-6   # added to the covariance's diagonal: features that never vary still give a finite precision


class Mahalanobis:
    def __init__(self, means, precision):
        means = np.asarray(means, dtype=np.float64)
        precision = np.asarray(precision, dtype=np.float64)
        # d_c(f) = (f - m_c)^T P (f - m_c) = |f L - m_c L|^2 with P = L L^T (P is symmetric, positive semi-definite)
        values, vectors = np.linalg.eigh((precision + precision.T) / 2)
        self.means, self.precision = means, precision
        # Scored by torch on one thread: numpy's BLAS threads (or torch's pool) spinning after the product took the
        # cores from the model's next forward pass. In float32 (the features' type): one text then costs well under
        # 0.1 ms, a batch of 16 well under a millisecond. The distance is taken as |g - m_c|^2, not
        # expanded, so float32 loses nothing to cancellation.
        factor = vectors * np.sqrt(np.clip(values, 0, None))                            # (F, F)
        self.factor = torch.from_numpy(factor).float()
        self._means_projected = torch.from_numpy(means @ factor).float()               # (C, F)

    @property
    def dim(self):
        return self.means.shape[1]

    @classmethod
    def fit(cls, features, labels, num_labels):
        """Class means and the precision (pseudo-inverse) of the covariance of the features around their class
        means; labels are class indices. Every class needs at least one text."""
        x = np.asarray(features, dtype=np.float64)
        y = np.asarray(labels)
        missing = [c for c in range(num_labels) if not (y == c).any()]
        if missing:
            raise ValueError(f"no fitting text for classes {missing}")
        means = np.stack([x[y == c].mean(axis=0) for c in range(num_labels)])
        centred = x - means[y]
        covariance = centred.T @ centred / len(x) + RIDGE * np.eye(x.shape[1])
        return cls(means, np.linalg.pinv(covariance, hermitian=True))

    def distances(self, features, rows=1024):
        """Squared Mahalanobis distance of each row of features to each class mean (N, C), `rows` at a time."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            g = torch.as_tensor(np.asarray(features), dtype=torch.float32) @ self.factor
            d = [(block[:, None, :] - self._means_projected[None]).square().sum(dim=-1) for block in g.split(rows)]
            return torch.cat(d).numpy() if d else np.empty((0, len(self.means)), dtype=np.float32)
        finally:
            torch.set_num_threads(threads)

    def score(self, features):
        """Minus the squared distance to the nearest class mean (N,): higher = more in scope."""
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features of shape {features.shape}; the fitted means have {self.dim} columns")
        return -self.distances(features).min(axis=1)

    def save(self, path):
        """Written beside and renamed into place: a reader sees the old file or the new one."""
        from safetensors.torch import save_file
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        save_file({"means": torch.from_numpy(self.means.copy()), "precision": torch.from_numpy(self.precision.copy())},
                  str(tmp), metadata={"format": "pt", "score": "mahalanobis"})
        os.replace(tmp, path)

    @classmethod
    def load(cls, path, num_labels):
        tensors = read_weights(path)
        if set(tensors) != {"means", "precision"}:
            raise CheckpointError(f"{path} must hold exactly the tensors 'means' and 'precision', got "
                                  f"{', '.join(sorted(tensors)) or 'none'}")
        means, precision = tensors["means"].double().numpy(), tensors["precision"].double().numpy()
        if means.ndim != 2 or means.shape[0] != num_labels:
            raise CheckpointError(f"{path}: 'means' has shape {tuple(means.shape)}, expected ({num_labels}, features)")
        if precision.shape != (means.shape[1], means.shape[1]):
            raise CheckpointError(f"{path}: 'precision' has shape {tuple(precision.shape)}, expected "
                                  f"({means.shape[1]}, {means.shape[1]})")
        if not (np.isfinite(means).all() and np.isfinite(precision).all()):
            raise CheckpointError(f"{path} holds values that are not finite numbers")
        return cls(means, precision)
