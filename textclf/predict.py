"""Predictor: the one prediction path (tokenize, forward, softmax) for the CLIs, benchmarks and handler."""
import logging
import time

import numpy as np
import torch

from .checkpoint import ONNX_GRAPH, check_folder, load_checkpoint, readable
from .config import load_labels
from .errors import CheckpointError
from .tokenization import load_tokenizer

log = logging.getLogger(__name__)


class _OnnxModel:
    """Runs model.onnx with onnxruntime; same call shape as the torch model, returns logits."""

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

    def __call__(self, input_ids, attention_mask):
        feed = {"input_ids": input_ids.cpu().numpy(), "attention_mask": attention_mask.cpu().numpy()}
        return torch.from_numpy(self.session.run(["logits"], feed)[0])


class Predictor:
    def __init__(self, model, tokenizer, labels, max_length, device="cpu", precision="fp32"):
        self.model, self.tokenizer, self.labels = model, tokenizer, labels
        self.max_length, self.device = max_length, torch.device(device)
        # bf16: matrix products in bfloat16 (autocast keeps softmax and layer norms in float32); pays on
        # CPUs with AVX-512 BF16 or AMX, and on GPUs
        self.precision = precision

    @classmethod
    def from_checkpoint(cls, folder, device="cpu", threads=None):
        folder = readable(folder)
        config = check_folder(folder)
        if config.runtime == "onnx":
            labels = load_labels(folder / "labels.json")
            if len(labels) != config.num_labels:
                raise CheckpointError(f"labels.json has {len(labels)} labels, config.json says {config.num_labels}")
            model = _OnnxModel(folder / ONNX_GRAPH, device, threads)
            tokenizer = load_tokenizer(folder / "tokenizer", config.embedding)
            return cls(model, tokenizer, labels, config.max_length, "cpu")
        model, tokenizer, labels = load_checkpoint(folder, device)
        return cls(model, tokenizer, labels, config.max_length, device, config.precision)

    def forward(self, inputs):
        """Logits for encoded inputs, in this checkpoint's precision."""
        if self.precision == "bf16":
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                return self.model(**inputs)
        return self.model(**inputs)

    def encode(self, texts):
        return {k: v.to(self.device) for k, v in self.tokenizer.encode(texts, self.max_length).items()}

    @torch.inference_mode()
    def predict_proba(self, texts, batch_size=64, stats=None):
        """Softmax probabilities (N, num_labels) as float32 numpy. Texts are batched in length order, so that
        texts of very different lengths do not pad each other. stats, a dict, gets the work added to it:
        forward_passes, texts, tokens (not counting padding), tokenize_ms, forward_ms."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            idx = order[start: start + batch_size]
            started = time.perf_counter()
            inputs = self.encode([texts[i] for i in idx])
            encoded = time.perf_counter()
            logits = self.forward(inputs)
            out[idx] = logits.float().softmax(dim=-1).cpu().numpy()
            if stats is not None:
                for key, value in (("forward_passes", 1), ("texts", len(idx)),
                                   ("tokens", int(inputs["attention_mask"].sum())),
                                   ("tokenize_ms", (encoded - started) * 1e3),
                                   ("forward_ms", (time.perf_counter() - encoded) * 1e3)):
                    stats[key] = stats.get(key, 0) + value
        return out

    def top_k(self, probs, k):
        """[{label, score, top_k: [{label, score}, ...]}] for each row of probabilities."""
        k = max(1, min(int(k), len(self.labels)))
        results = []
        for row in probs:
            best = np.argsort(-row, kind="stable")[:k]
            ranked = [{"label": self.labels[j], "score": float(row[j])} for j in best]
            results.append({"label": ranked[0]["label"], "score": ranked[0]["score"], "top_k": ranked})
        return results

    def predict(self, texts, top_k=1, batch_size=64):
        return self.top_k(self.predict_proba(texts, batch_size), top_k)
