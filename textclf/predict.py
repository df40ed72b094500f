"""Predictor: the one prediction path (tokenize, forward, softmax) for the CLIs, benchmarks and handler."""
import logging
import math
import os
import time

import numpy as np
import torch

from .checkpoint import ONNX_GRAPH, STATS_FILE, check_folder, load_checkpoint, readable
from .config import load_labels
from .errors import CheckpointError
from .mahalanobis import Mahalanobis
from .tokenization import load_tokenizer

log = logging.getLogger(__name__)
TOKENIZE_CHUNK = 1024   # texts tokenized in one call (bounds the padded id matrix of a large evaluation)
# What one more forward pass costs, in padded token positions: a pass is split where the padding that the
# next (longer) text adds to the texts before it would cost more than that. 0: split by count only.
PASS_OVERHEAD_TOKENS = 64


CGROUP_ROOT = "/sys/fs/cgroup"


def cpu_quota(root=CGROUP_ROOT):
    """CPUs the container's CFS quota allows (rounded up), or None: cgroup v2 cpu.max, else v1 cfs_quota_us."""
    try:
        with open(f"{root}/cpu.max", encoding="ascii") as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    for folder in (f"{root}/cpu", f"{root}/cpu,cpuacct"):
        try:
            with open(f"{folder}/cpu.cfs_quota_us", encoding="ascii") as f:
                quota = int(f.read())
            with open(f"{folder}/cpu.cfs_period_us", encoding="ascii") as f:
                period = int(f.read())
            return None if quota <= 0 or period <= 0 else max(1, math.ceil(quota / period))
        except (OSError, ValueError):
            continue
    return None


def worker_threads(torch_threads, workers):
    """Torch threads of one TorchServe worker: handler.torch_threads, or its share of the usable cores."""
    return int(torch_threads or 0) or max(1, usable_cores() // max(1, int(workers or 1)))


def usable_cores():
    """The cores this process may run on: its CPU affinity, bounded by the container's CPU quota (cgroup v2 or
    v1), so that a pod limited to 2 CPUs on a 16-core node runs 2 threads, not 16."""
    cores = len(os.sched_getaffinity(0))
    quota = cpu_quota()
    return cores if quota is None else min(cores, quota)


def passes(lengths, max_texts, overhead_tokens=PASS_OVERHEAD_TOKENS):
    """Split ascending token lengths into runs of at most max_texts: [[0, 1, 2], [3], ...] (positions).

    A run closes when it is full, or when the next text would pad the k texts before it by more than
    overhead_tokens in all (k * (next length - current length)): a separate pass is then cheaper than the
    padding. With texts of similar length this is one run per max_texts texts, as before."""
    runs, current = [], []
    for i, length in enumerate(lengths):
        if current and (len(current) >= max_texts or
                        (overhead_tokens and len(current) * (length - lengths[current[-1]]) > overhead_tokens)):
            runs.append(current)
            current = []
        current.append(i)
    if current:
        runs.append(current)
    return runs


class _OnnxModel:
    """Runs model.onnx with onnxruntime; same call shape as the torch model: logits, or with return_features
    (logits, features) from the graph's second output."""

    def __init__(self, path, device, threads=None):
        import onnxruntime as ort
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": torch.device(device).index or 0}))
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for unreadable graphs
            raise CheckpointError(f"{path} is not a loadable ONNX graph ({e})") from None
        self.path = path
        self.outputs = {o.name for o in self.session.get_outputs()}
        if "logits" not in self.outputs:
            raise CheckpointError(f"{path} has no output named 'logits'")

    def __call__(self, input_ids, attention_mask, return_features=False):
        feed = {"input_ids": input_ids.cpu().numpy(), "attention_mask": attention_mask.cpu().numpy()}
        if not return_features:
            return torch.from_numpy(self.session.run(["logits"], feed)[0])
        if "features" not in self.outputs:
            raise CheckpointError(f"{self.path} has no 'features' output (an export made before this version): "
                                  "export it again from the float checkpoint")
        logits, features = self.session.run(["logits", "features"], feed)
        return torch.from_numpy(logits), torch.from_numpy(features)


class Predictor:
    def __init__(self, model, tokenizer, labels, max_length, device="cpu", precision="fp32", config=None):
        self.model, self.tokenizer, self.labels = model, tokenizer, labels
        self.max_length, self.device = max_length, torch.device(device)
        self.pass_overhead_tokens = PASS_OVERHEAD_TOKENS
        # bf16: matrix products in bfloat16 (autocast keeps softmax and layer norms in float32); pays on
        # CPUs with AVX-512 BF16 or AMX, and on GPUs
        self.precision = precision
        self.autocast = precision == "bf16"
        # scores (config.json, from train.calibrate): probabilities = softmax(logits / temperature); a text whose
        # in-scope score is below out_of_scope_threshold is answered "out of scope" (label None, or fallback_label)
        self.temperature = float(getattr(config, "temperature", 1.0))
        self.out_of_scope_score = getattr(config, "out_of_scope_score", "probability")
        self.out_of_scope_threshold = getattr(config, "out_of_scope_threshold", None)
        self.fallback_label = None
        self.mahalanobis = None   # the fitted Mahalanobis score (out_of_scope_score "mahalanobis"), set by _load
        # multi-label: sigmoid probabilities, and every label at or over its threshold is predicted
        self.multi_label = bool(getattr(config, "multi_label", False))
        thresholds = getattr(config, "thresholds", None)
        self.thresholds = np.asarray(thresholds if thresholds is not None else [0.5] * len(labels), dtype=np.float32)

    @classmethod
    def from_checkpoint(cls, folder, device="cpu", threads=None, cuda_precision="fp16"):
        """cuda_precision (fp16 | bf16 | fp32): on a CUDA device, the weights of a PyTorch checkpoint in that
        type (cast()), fp16 unless told; ignored elsewhere and for ONNX checkpoints."""
        predictor = cls._load(folder, device, threads)
        if predictor.device.type == "cuda" and isinstance(predictor.model, torch.nn.Module):
            predictor.cast(cuda_precision)
        return predictor

    def cast(self, precision):
        """Run the model with fp16 or bf16 weights and products (a GPU's fast path; softmax and everything
        after the logits stay float32); "fp32" keeps the weights as they are."""
        dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}
        if precision not in dtypes:
            raise CheckpointError(f"unknown precision {precision!r}; choose one of {', '.join(dtypes)}")
        if dtypes[precision] is not None:
            self.model.to(dtypes[precision])
            self.precision, self.autocast = precision, False
        return self

    @classmethod
    def _load(cls, folder, device="cpu", threads=None):
        folder = readable(folder)
        config = check_folder(folder)
        if config.runtime == "onnx":
            labels = load_labels(folder / "labels.json")
            if len(labels) != config.num_labels:
                raise CheckpointError(f"labels.json has {len(labels)} labels, config.json says {config.num_labels}")
            model = _OnnxModel(folder / ONNX_GRAPH, device, threads)
            tokenizer = load_tokenizer(folder / "tokenizer", config.embedding, config.normalization)
            predictor = cls(model, tokenizer, labels, config.max_length, "cpu", config=config)
        else:
            model, tokenizer, labels = load_checkpoint(folder, device)
            predictor = cls(model, tokenizer, labels, config.max_length, device, config.precision, config)
        if config.out_of_scope_score == "mahalanobis":
            predictor.mahalanobis = Mahalanobis.load(folder / STATS_FILE, config.num_labels)
        return predictor

    @property
    def needs_features(self):
        """Whether the in-scope scores need the features beside the logits: a threshold is set on a score that
        reads them."""
        return (self.out_of_scope_threshold is not None and self.out_of_scope_score == "mahalanobis"
                and not self.multi_label)

    def forward(self, inputs, return_features=False):
        """Logits for encoded inputs, in this checkpoint's precision; with return_features, (logits, features)."""
        extra = {"return_features": True} if return_features else {}
        if self.autocast:
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                return self.model(**inputs, **extra)
        return self.model(**inputs, **extra)

    def encode(self, texts):
        return {k: v.to(self.device) for k, v in self.tokenizer.encode(texts, self.max_length).items()}

    def predict_proba(self, texts, batch_size=64, stats=None):
        """Softmax probabilities (N, num_labels) as float32 numpy, at the checkpoint's temperature."""
        return self.probabilities(self.predict_logits(texts, batch_size, stats))

    def probabilities(self, logits):
        """softmax(logits / temperature) in float32 (N, num_labels); multi-label: sigmoid(logits) per label."""
        z = torch.as_tensor(logits, dtype=torch.float32)
        if self.multi_label:
            return z.sigmoid().numpy()
        return (z / self.temperature).softmax(dim=-1).numpy()

    def in_scope(self, logits, features=None):
        """The score the reject option thresholds (higher = more in scope), one per row of logits; the
        Mahalanobis score reads the features (predict_logits(..., features=True)) instead."""
        if self.out_of_scope_score == "mahalanobis":
            if features is None or self.mahalanobis is None:
                raise ValueError("the mahalanobis score needs the fitted statistics and the features of the texts "
                                 "(predict_logits(..., features=True), or scored_logits())")
            return self.mahalanobis.score(features).astype(np.float32)
        z = torch.as_tensor(logits, dtype=torch.float32) / self.temperature
        if self.out_of_scope_score == "energy":
            return (self.temperature * torch.logsumexp(z, dim=-1)).numpy()
        return z.softmax(dim=-1).max(dim=-1).values.numpy()

    @torch.inference_mode()
    def predict_logits(self, texts, batch_size=64, stats=None, features=False):
        """Logits (N, num_labels) as float32 numpy; with features, (logits, features (N, F)): the input of the
        classifier layer, which the Mahalanobis score reads.

        Texts are tokenized together (in chunks of TOKENIZE_CHUNK, by character length), then forwarded in
        passes of at most batch_size texts of similar token length (passes()), so that a long text does not
        pad short ones up to its length. stats, a dict, gets the work added to it: forward_passes, texts,
        tokens (not counting padding), padded_tokens (counting it), tokenize_ms, forward_ms."""
        texts = list(texts)
        out = _Outputs(len(texts), len(self.labels), features)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(texts), TOKENIZE_CHUNK):
            chunk = order[start: start + TOKENIZE_CHUNK]
            started = time.perf_counter()
            encoded = self.tokenizer.encode([texts[i] for i in chunk], self.max_length)
            self._add(stats, tokenize_ms=(time.perf_counter() - started) * 1e3)
            out.put(chunk, self.predict_encoded(encoded, batch_size, stats, features))
        return out.result(self.feature_dim)

    @property
    def feature_dim(self):
        """Width of the features, where known without a forward pass (from the fitted score), else None."""
        return None if self.mahalanobis is None else self.mahalanobis.dim

    @torch.inference_mode()
    def predict_encoded(self, encoded, batch_size=64, stats=None, features=False):
        """Logits (B, num_labels), float32 numpy, of texts already tokenized: encoded is tokenizer.encode()
        output ({"input_ids", "attention_mask"}: (B, T), right-padded); with features, (logits, features).
        Rows are forwarded in passes of similar token length as in predict_logits (which calls this); stats as
        there."""
        lengths = encoded["attention_mask"].sum(dim=1).tolist()
        by_length = sorted(range(len(lengths)), key=lengths.__getitem__)
        out = _Outputs(len(lengths), len(self.labels), features)
        for group in passes([lengths[i] for i in by_length], batch_size, self.pass_overhead_tokens):
            rows = [by_length[i] for i in group]
            width = max(lengths[i] for i in rows)
            inputs = {k: v[rows, :width].to(self.device) for k, v in encoded.items()}   # (b, width)
            started = time.perf_counter()
            result = self.forward(inputs, features)
            out.put(rows, tuple(r.float().cpu().numpy() for r in result) if features else result.float().cpu().numpy())
            self._add(stats, forward_passes=1, texts=len(rows), tokens=sum(lengths[i] for i in rows),
                      padded_tokens=width * len(rows), forward_ms=(time.perf_counter() - started) * 1e3)
        return out.result(self.feature_dim)

    @staticmethod
    def _add(stats, **work):
        if stats is not None:
            for key, value in work.items():
                stats[key] = stats.get(key, 0) + value

    def top_k(self, probs, k):
        """[{label, score, top_k: [{label, score}, ...]}] for each row of probabilities."""
        k = max(1, min(int(k), len(self.labels)))
        results = []
        for row in probs:
            best = np.argsort(-row, kind="stable")[:k]
            ranked = [{"label": self.labels[j], "score": float(row[j])} for j in best]
            results.append({"label": ranked[0]["label"], "score": ranked[0]["score"], "top_k": ranked})
        return results

    def scored_logits(self, texts, batch_size=64, stats=None):
        """(logits, reject_scores()) of texts: what answers() needs, from one run, scored for all texts at once."""
        if self.needs_features:
            logits, features = self.predict_logits(texts, batch_size, stats, features=True)
            return logits, self.reject_scores(logits, features)
        logits = self.predict_logits(texts, batch_size, stats)
        return logits, self.reject_scores(logits)

    def reject_scores(self, logits, features=None):
        """The in-scope scores (in_scope()) where the reject option is on (a threshold, single-label), else None."""
        if self.out_of_scope_threshold is None or self.multi_label:
            return None
        return self.in_scope(logits, features)

    def answers(self, logits, k, scores=None):
        """top_k() of the logits' probabilities, with the reject option: where a threshold is set every answer
        says "out_of_scope", and one below it has label None (or fallback_label) and keeps its scores. scores:
        the texts' in-scope scores (scored_logits()); needed for a score that reads the features, else computed
        from the logits.
        Multi-label: {"labels": [{label, score}, ...] (every label at or over its threshold, highest first; maybe
        none), "top_k": [...]} per text."""
        if self.multi_label:
            return self.label_sets(self.probabilities(logits), k)
        results = self.top_k(self.probabilities(logits), k)
        if self.out_of_scope_threshold is None:
            return results
        for result, score in zip(results, self.in_scope(logits) if scores is None else scores):
            result["out_of_scope"] = bool(score < self.out_of_scope_threshold)
            if result["out_of_scope"]:
                result["label"] = self.fallback_label
        return results

    def label_sets(self, probs, k):
        results = []
        for row, ranked in zip(probs, self.top_k(probs, k)):
            chosen = np.flatnonzero(row >= self.thresholds)
            chosen = chosen[np.argsort(-row[chosen], kind="stable")]
            results.append({"labels": [{"label": self.labels[j], "score": float(row[j])} for j in chosen],
                            "top_k": ranked["top_k"]})
        return results

    def predict(self, texts, top_k=1, batch_size=64):
        logits, scores = self.scored_logits(texts, batch_size)
        return self.answers(logits, top_k, scores)


class _Outputs:
    """Rows of logits (and, when asked, of features) filled in any order; the features' width is learnt from the
    first rows put."""

    def __init__(self, n, num_labels, features):
        self.logits = np.empty((n, num_labels), dtype=np.float32)
        self.with_features = bool(features)
        self.features = None

    def put(self, rows, result):
        if not self.with_features:
            self.logits[rows] = result
            return
        logits, features = result
        self.logits[rows] = logits
        if self.features is None:
            self.features = np.empty((len(self.logits), features.shape[1]), dtype=np.float32)
        self.features[rows] = features

    def result(self, dim=None):
        if not self.with_features:
            return self.logits
        if self.features is None:   # no rows at all
            self.features = np.empty((0, dim or 0), dtype=np.float32)
        return self.logits, self.features
